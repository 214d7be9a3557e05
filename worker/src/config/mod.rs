//! Worker configuration: one TOML file, then `QUARRY__SECTION__KEY` environment overrides.
//!
//! Every field has a default, so a worker with no file at all runs against the local
//! RabbitMQ, Redis and a fake provider on 127.0.0.1:8089. The reference for every key is
//! `docs/configuration.md`; keep the two in step.
//!
//! One file per section, each section checking itself (`check`); [`Config::check`] runs them
//! and the checks across sections.

mod amqp;
mod limits;
mod plugins;
mod prices;
mod providers;
mod redis;
mod routing;
mod worker;

pub use amqp::AmqpConfig;
pub use limits::LimiterConfig;
pub use plugins::PluginConfig;
pub use prices::Price;
pub use providers::{
    KeyConfig, Limits, ModelLimits, PoolKey, ProviderConfig, ProviderKind, ProviderSettings,
};
pub use redis::RedisConfig;
pub use routing::{Route, RoutingConfig, Target};
pub use worker::{HttpConfig, LogConfig, LogFormat, WorkerConfig};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole worker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ connection and topology.
    pub amqp: AmqpConfig,
    /// Redis connection and key prefix.
    pub redis: RedisConfig,
    /// Concurrency, retries, shutdown.
    pub worker: WorkerConfig,
    /// Metrics and health endpoints.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Model aliases.
    pub routing: RoutingConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Prices of models, for `cost_usd`.
    pub prices: Vec<Price>,
    /// Plugins (AMQP users) allowed to publish jobs, with their policy and quotas. Absent:
    /// only [`DEVELOPMENT_PLUGIN`], unrestricted.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// How the limiter waits.
    pub limits: LimiterConfig,
    /// Where this configuration came from, for a reload.
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// Where a [`Config`] was loaded from, and a fingerprint of each top-level section as
/// written, so that a reload can say which sections changed. Fingerprints, not values: the
/// sections hold secrets.
#[derive(Clone, Default)]
pub(crate) struct Origin {
    /// The file, when one was given.
    pub(crate) path: Option<PathBuf>,
    /// The environment given in place of the process's (tests); `None`: the process's.
    pub(crate) env: Option<config::Map<String, String>>,
    /// Section name → fingerprint of its merged file and environment values.
    pub(crate) sections: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The environment may hold keys: only its size is shown.
        f.debug_struct("Origin")
            .field("path", &self.path)
            .field("env", &self.env.as_ref().map(config::Map::len))
            .field("sections", &self.sections.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A hash of `value` that does not depend on the order of map keys.
fn fingerprint(value: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(value: &serde_json::Value, hasher: &mut std::hash::DefaultHasher) {
        match value {
            serde_json::Value::Null => 0u8.hash(hasher),
            serde_json::Value::Bool(b) => (1u8, b).hash(hasher),
            serde_json::Value::Number(n) => (2u8, n.to_string()).hash(hasher),
            serde_json::Value::String(s) => (3u8, s).hash(hasher),
            serde_json::Value::Array(items) => {
                (4u8, items.len()).hash(hasher);
                for item in items {
                    feed(item, hasher);
                }
            }
            serde_json::Value::Object(map) => {
                (5u8, map.len()).hash(hasher);
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                for key in keys {
                    key.hash(hasher);
                    feed(&map[key], hasher);
                }
            }
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    feed(value, &mut hasher);
    hasher.finish()
}

impl Default for Config {
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert("fake".to_owned(), ProviderConfig::default());
        Self {
            amqp: AmqpConfig::default(),
            redis: RedisConfig::default(),
            worker: WorkerConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            routing: RoutingConfig::default(),
            providers,
            prices: Vec::new(),
            // The development setup's plugin chooses its aliases and names its agents; like
            // any plugin, it names `provider/model` targets only as `allowed_models` lists
            // them.
            plugins: BTreeMap::from([(
                DEVELOPMENT_PLUGIN.to_owned(),
                PluginConfig {
                    model_override: true,
                    agent_id_override: true,
                    ..PluginConfig::default()
                },
            )]),
            limits: LimiterConfig::default(),
            origin: Origin::default(),
        }
    }
}

/// Profile of a key that names none, and of a job that asks for none.
pub const DEFAULT_PROFILE: &str = "default";

/// The plugin a worker without a `[plugins]` table accepts: RabbitMQ's own `guest` user, which
/// the broker admits from localhost only. Any `[plugins.NAME]` table replaces it.
pub const DEVELOPMENT_PLUGIN: &str = "guest";

/// Configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not match the types.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// Values that parse but do not fit together.
    #[error("configuration: {key}: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret file could not be read.
    #[error("configuration: {key}: cannot read {path}: {source}")]
    SecretFile {
        /// Dotted key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Loads `path` (when given; it must exist) and then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// Like [`Config::load`], with the environment given as a map (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let environment = config::Environment::with_prefix("QUARRY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("amqp.lanes")
            .source(env.clone());
        let merged = builder.add_source(environment).build()?;
        let sections = match merged.clone().try_deserialize::<serde_json::Value>()? {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(name, value)| (name.clone(), fingerprint(value)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut config: Config = merged.try_deserialize()?;
        config.origin = Origin {
            path: path.map(Path::to_path_buf),
            env,
            sections,
        };
        config.resolve_secret_files()?;
        config.check()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        for (name, provider) in &mut self.providers {
            provider.resolve_secret_files(name)?;
        }
        Ok(())
    }

    /// Every section's checks, then the ones across sections (aliases name providers,
    /// plugins name aliases and providers, prices name providers).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.worker.check()?;
        self.limits.check()?;
        self.amqp.check()?;
        self.routing.check(&self.providers)?;
        for (name, provider) in &self.providers {
            provider.check(name)?;
        }
        for (name, provider) in &self.providers {
            provider.check_keys(name)?;
        }
        for (name, plugin) in &self.plugins {
            plugin.check(name, self)?;
        }
        for (i, price) in self.prices.iter().enumerate() {
            price.check(i, &self.providers)?;
        }
        Ok(())
    }
}
pub use quarry_schemas::job::is_profile_name;

/// A plugin name (its AMQP user, reply-queue prefix and Redis key part): 1 to 64 ASCII
/// letters, digits, `_` and `-`.
pub fn is_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_schemas::wire::Lane;
    use secrecy::ExposeSecret;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Option<config::Map<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(config.amqp.namespace, "quarry");
        assert_eq!(config.amqp.lanes, vec![Lane::Interactive, Lane::Batch]);
        assert_eq!(config.routing.aliases["default"].provider, "fake");
    }

    #[test]
    fn file_then_environment() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            r#"
[amqp]
namespace = "from-file"
[worker]
concurrency = 8
[providers.openai]
base_url = "https://api.openai.com/v1"
[routing]
default_alias = "smart"
[routing.aliases.smart]
provider = "openai"
model = "gpt-4o"
"#
        )
        .expect("write");
        let config = Config::load_with_env(
            Some(file.path()),
            env(&[
                ("QUARRY__WORKER__CONCURRENCY", "32"),
                ("QUARRY__AMQP__LANES", "batch"),
                ("QUARRY__PROVIDERS__OPENAI__API_KEY", "sk-test-123"),
            ]),
        )
        .expect("load");
        assert_eq!(config.amqp.namespace, "from-file");
        assert_eq!(config.worker.concurrency, 32);
        assert_eq!(config.amqp.lanes, vec![Lane::Batch]);
        let key = config.providers["openai"]
            .api_key
            .as_ref()
            .expect("key from env");
        assert_eq!(key.expose_secret(), "sk-test-123");
        assert!(
            !format!("{config:?}").contains("sk-test-123"),
            "Debug must not print secrets"
        );
    }

    #[test]
    fn api_key_file_is_read_and_trimmed() {
        let mut key = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(key, "sk-from-file").expect("write");
        let path = key.path().to_str().expect("utf-8 path").to_owned();
        let config = Config::load_with_env(
            None,
            env(&[("QUARRY__PROVIDERS__FAKE__API_KEY_FILE", &path)]),
        )
        .expect("load");
        let secret = config.providers["fake"].api_key.as_ref().expect("key");
        assert_eq!(secret.expose_secret(), "sk-from-file");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::load_with_env(None, env(&[("QUARRY__ROUTING__DEFAULT_ALIAS", "nope")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("routing.default_alias"), "{err}");
        let err = Config::load_with_env(None, env(&[("QUARRY__WORKER__CONCURRENCY", "0")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
        let err = Config::load_with_env(None, env(&[("QUARRY__AMQP__LANES", "urgent")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("urgent"), "{err}");
    }

    #[test]
    fn a_setting_of_another_provider_kind_is_refused() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("QUARRY__PROVIDERS__FAKE__KIND", "anthropic"),
                ("QUARRY__PROVIDERS__FAKE__STRICT", "true"),
            ]),
        )
        .expect_err("strict is OpenAI's");
        let text = err.to_string();
        assert!(
            text.contains("`strict` is a setting of kind `openai`"),
            "{text}"
        );
        assert!(text.contains("kind `anthropic`"), "{text}");
        let config = Config::load_with_env(
            None,
            env(&[
                ("QUARRY__PROVIDERS__FAKE__KIND", "anthropic"),
                ("QUARRY__PROVIDERS__FAKE__ANTHROPIC_VERSION", "2024-01-01"),
                ("QUARRY__PROVIDERS__FAKE__DEFAULT_MAX_TOKENS", "512"),
            ]),
        )
        .expect("its own setting, and one of every kind");
        match &config.providers["fake"].settings {
            ProviderSettings::Anthropic(settings) => {
                assert_eq!(settings.version, "2024-01-01");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.providers["fake"].default_max_tokens, Some(512));
    }

    #[test]
    fn a_namespace_is_a_safe_name_prefix() {
        for good in ["quarry", "qt-1a2b", "team_a.prod"] {
            let loaded = Config::load_with_env(None, env(&[("QUARRY__AMQP__NAMESPACE", good)]));
            assert!(loaded.is_ok(), "{good}: {loaded:?}");
        }
        for bad in ["a*b", "prod.#", "amq.gen", "sp ace"] {
            let err = Config::load_with_env(None, env(&[("QUARRY__AMQP__NAMESPACE", bad)]))
                .expect_err(bad);
            assert!(err.to_string().contains("amqp.namespace"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(file, "[worker]\nconcurency = 4\n").expect("write");
        let err = Config::load_with_env(Some(file.path()), env(&[])).expect_err("typo must fail");
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn limits_are_one_type_written_beside_what_they_limit() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            r#"
[providers.fake]
limits = {{ requests_per_minute = 100, concurrent = 5 }}
[[providers.fake.keys]]
name = "a"
api_key = "sk-a"
tokens_per_minute = 9000
[[providers.fake.model_limits]]
model = "m"
requests_per_minute = 7
[plugins.guest]
daily_tokens = 500
"#
        )
        .expect("write");
        let config = Config::load_with_env(
            Some(file.path()),
            env(&[("QUARRY__PLUGINS__GUEST__REQUESTS_PER_MINUTE", "30")]),
        )
        .expect("load");
        let fake = &config.providers["fake"];
        let pool = fake.key_pool();
        assert_eq!(
            pool[0].limits,
            Limits {
                requests_per_minute: Some(100),
                tokens_per_minute: Some(9000),
                concurrent: Some(5),
                daily_tokens: None,
                ..Limits::default()
            }
        );
        assert_eq!(fake.model_limits[0].limits.requests_per_minute, Some(7));
        assert_eq!(
            config.plugins["guest"].limits,
            Limits {
                requests_per_minute: Some(30),
                tokens_per_minute: None,
                concurrent: None,
                daily_tokens: Some(500),
                ..Limits::default()
            }
        );

        // A typo beside a flattened limit is still refused, by name; so is a limit where it
        // is not kept.
        for (toml, named) in [
            (
                "[plugins.guest]\nrequests_per_minut = 1\n",
                "requests_per_minut",
            ),
            (
                "[[providers.fake.keys]]\nname = \"a\"\ntokens_per_minit = 1\n",
                "tokens_per_minit",
            ),
            (
                "[[providers.fake.model_limits]]\nmodel = \"m\"\nconcurent = 1\n",
                "concurent",
            ),
            (
                "[[providers.fake.keys]]\nname = \"a\"\ndaily_tokens = 1\n",
                "providers.fake.keys[0].daily_tokens",
            ),
            (
                "[providers.fake.limits]\ndaily_tokens = 1\n",
                "providers.fake.limits.daily_tokens",
            ),
            (
                "[plugins.guest]\nconcurrent = 1\n",
                "plugins.guest.concurrent",
            ),
        ] {
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            write!(file, "{toml}").expect("write");
            let err =
                Config::load_with_env(Some(file.path()), env(&[])).expect_err("must be refused");
            assert!(err.to_string().contains(named), "{toml}: {err}");
        }
    }

    #[test]
    fn fallbacks_prices_and_provider_kinds() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            r#"
[routing]
default_alias = "smart"
[routing.aliases.smart]
provider = "anthropic"
model = "claude-sonnet-4-5"
fallbacks = [{{ provider = "openai", model = "gpt-4.1", images = false }}]
[providers.anthropic]
kind = "anthropic"
[providers.openai]
kind = "openai"
strict = true
[[prices]]
provider = "openai"
model = "gpt-4.1"
input_per_mtok = 2.0
output_per_mtok = 8.0
"#
        )
        .expect("write");
        let config = Config::load_with_env(Some(file.path()), env(&[])).expect("load");
        let targets = config.routing.aliases["smart"].targets();
        assert_eq!(targets.len(), 2);
        assert_eq!(
            (targets[1].model.as_str(), targets[1].images),
            ("gpt-4.1", false)
        );
        assert_eq!(config.prices[0].model, "gpt-4.1");
        assert_eq!(
            config.providers["anthropic"].base_url(),
            "https://api.anthropic.com/v1"
        );
        assert_eq!(config.providers["openai"].kind(), ProviderKind::Openai);
    }

    #[test]
    fn a_fallback_to_an_unknown_provider_names_its_key() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            "[routing.aliases.default]\nprovider = \"fake\"\nmodel = \"m\"\nfallbacks = [{{ provider = \"nope\", model = \"x\" }}]\n"
        )
        .expect("write");
        let err = Config::load_with_env(Some(file.path()), env(&[])).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("routing.aliases.default.fallbacks[0].provider"),
            "{err}"
        );
    }

    #[test]
    fn plugin_policies_and_key_profiles_load_and_are_checked() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            r#"
[plugins.receipts]
default_model = "fast"
model_override = false
allowed_models = ["fake/fake-mini", "fake/*"]
profiles = ["team-a"]
max_tokens = 300
[[providers.fake.keys]]
name = "a"
api_key = "sk-a"
profile = "team-a"
[[providers.fake.keys]]
name = "b"
api_key = "sk-b"
"#
        )
        .expect("write");
        let config = Config::load_with_env(Some(file.path()), env(&[])).expect("load");
        assert_eq!(
            config.plugins.keys().collect::<Vec<_>>(),
            ["receipts"],
            "a [plugins] table replaces the development default"
        );
        let plugin = &config.plugins["receipts"];
        assert!(!plugin.model_override);
        assert_eq!(plugin.default_profile, "default");
        let profiles: Vec<String> = config.providers["fake"]
            .key_pool()
            .into_iter()
            .map(|k| k.profile)
            .collect();
        assert_eq!(profiles, ["team-a", "default"]);

        for (bad, key) in [
            (
                "QUARRY__PLUGINS__X__DEFAULT_MODEL",
                "plugins.x.default_model",
            ),
            (
                "QUARRY__PLUGINS__X__ALLOWED_MODELS",
                "plugins.x.allowed_models",
            ),
            ("QUARRY__PLUGINS__X__DEFAULT_PROFILE", "plugins.x.profiles"),
        ] {
            let value = match key {
                "plugins.x.allowed_models" => "nowhere/model",
                "plugins.x.profiles" => "has space",
                _ => "no-such-alias",
            };
            let err = Config::load_with_env(None, env(&[(bad, value)])).expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            "[routing.aliases.default]\nprovider = \"fake\"\nmodel = \"m\"\n[routing.aliases.\"a@b\"]\nprovider = \"fake\"\nmodel = \"m\"\n"
        )
        .expect("write");
        let err = Config::load_with_env(Some(file.path()), env(&[])).expect_err("@ in alias");
        assert!(err.to_string().contains("routing.aliases.a@b"), "{err}");
    }
}
