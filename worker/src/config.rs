//! Worker configuration: one TOML file, then `QUARRY__SECTION__KEY` environment overrides.
//!
//! Every field has a default, so a worker with no file at all runs against the local
//! RabbitMQ, Redis and a fake provider on 127.0.0.1:8089. The reference for every key is
//! `docs/configuration.md`; keep the two in step.

use quarry_schemas::wire::Lane;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
            plugins: BTreeMap::from([(DEVELOPMENT_PLUGIN.to_owned(), PluginConfig::default())]),
            limits: LimiterConfig::default(),
        }
    }
}

/// `[amqp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL. Put the password in the environment (`QUARRY__AMQP__URL`), not in the file.
    pub url: SecretString,
    /// Prefix of every exchange and queue name.
    pub namespace: String,
    /// Lanes this worker consumes.
    pub lanes: Vec<Lane>,
    /// Deliveries of one job before the broker dead-letters it (quorum `x-delivery-limit`).
    pub delivery_limit: u32,
    /// At start, keep trying to reach the broker this long before giving up, seconds. Once
    /// connected, a lost connection is recovered without limit (consumers resume by
    /// themselves) while `/readyz` answers 503.
    pub connect_timeout_secs: u64,
}

impl AmqpConfig {
    /// The AMQP user of `url`: the worker's own identity, set as `user_id` on everything it
    /// publishes. `None` when the URL names none (or does not parse).
    pub fn user(&self) -> Option<String> {
        secrecy::ExposeSecret::expose_secret(&self.url)
            .parse::<lapin::uri::AMQPUri>()
            .ok()
            .map(|uri| uri.authority.userinfo.username)
            .filter(|u| !u.is_empty())
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            namespace: quarry_schemas::wire::DEFAULT_NAMESPACE.to_owned(),
            lanes: Lane::ALL.to_vec(),
            delivery_limit: 5,
            connect_timeout_secs: 60,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL (`redis://host:port/db`).
    pub url: SecretString,
    /// Prefix of every key.
    pub prefix: String,
    /// How long a finished job's result is kept for redeliveries, seconds.
    pub result_ttl_secs: u64,
    /// How long a batch cancellation holds, seconds: jobs of the batch that arrive later than
    /// this run again.
    pub cancel_ttl_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            prefix: "quarry".to_owned(),
            result_ttl_secs: 86_400,
            cancel_ttl_secs: 7 * 86_400,
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs in flight per worker process; also the prefetch of each lane's consumer.
    pub concurrency: u16,
    /// Provider attempts per job for retryable failures (1 = no retry).
    pub max_attempts: u32,
    /// First retry backoff, milliseconds (doubles each attempt, full jitter).
    pub retry_base_ms: u64,
    /// Longest single backoff, milliseconds.
    pub retry_max_ms: u64,
    /// On shutdown, how long in-flight jobs may take to finish, seconds.
    pub shutdown_grace_secs: u64,
    /// Lifetime of a job's claim in Redis, seconds. The holder extends it every third of this
    /// while it works; a crashed worker's jobs can start elsewhere once it lapses.
    pub claim_ttl_secs: u64,
    /// Repair requests after an answer that is not JSON or breaks the schema (0 = none).
    pub repair_attempts: u32,
    /// Largest image a job may carry, in decoded bytes.
    pub max_image_bytes: usize,
    /// Most images one job may carry.
    pub max_images: usize,
    /// Largest job message a worker decodes, in bytes; a larger one ends `INVALID_REQUEST`
    /// unread. Set the broker's `max_message_size` to the same value (deploy/ does): a worker
    /// holds at most `concurrency` messages, so this bounds its memory for messages.
    pub max_message_bytes: usize,
    /// Largest `json_schema` of a job, in bytes of JSON text.
    pub max_schema_bytes: usize,
    /// Most nodes (objects, arrays and values) a job's schema may have, counted after any
    /// provider's rewrite (Gemini inlines `$ref`s): past it the job ends `INVALID_REQUEST`.
    pub max_schema_nodes: usize,
    /// Memory for compiled schemas, in bytes (estimated from their text): the cache evicts
    /// the least used past it.
    pub schema_cache_bytes: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            max_attempts: 3,
            retry_base_ms: 200,
            retry_max_ms: 10_000,
            shutdown_grace_secs: 30,
            claim_ttl_secs: 15,
            repair_attempts: 2,
            max_image_bytes: 20 * 1024 * 1024,
            max_images: 16,
            max_message_bytes: 16 * 1024 * 1024,
            max_schema_bytes: 64 * 1024,
            max_schema_nodes: 10_000,
            schema_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl WorkerConfig {
    /// Grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `quarry_worker=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Alias used when a job names no model.
    pub default_alias: String,
    /// Alias → provider and model, with ordered fallbacks.
    pub aliases: BTreeMap<String, Route>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let fake = |model: &str| Route {
            provider: "fake".to_owned(),
            model: model.to_owned(),
            images: true,
            fallbacks: Vec::new(),
        };
        let aliases = BTreeMap::from([
            ("default".to_owned(), fake("fake-large")),
            ("fast".to_owned(), fake("fake-mini")),
        ]);
        Self {
            default_alias: "default".to_owned(),
            aliases,
        }
    }
}

/// Where an alias goes first, and where next when that model is unavailable or overloaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name of a `[providers.NAME]` section.
    pub provider: String,
    /// The provider's model id.
    pub model: String,
    /// Whether the model accepts image input.
    #[serde(default = "yes")]
    pub images: bool,
    /// Tried in order when the previous target answers `MODEL_UNAVAILABLE`.
    #[serde(default)]
    pub fallbacks: Vec<Target>,
}

/// One provider and model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Name of a `[providers.NAME]` section.
    pub provider: String,
    /// The provider's model id.
    pub model: String,
    /// Whether the model accepts image input.
    #[serde(default = "yes")]
    pub images: bool,
}

fn yes() -> bool {
    true
}

impl Route {
    /// The primary target, then the fallbacks.
    pub fn targets(&self) -> Vec<Target> {
        let primary = Target {
            provider: self.provider.clone(),
            model: self.model.clone(),
            images: self.images,
        };
        std::iter::once(primary)
            .chain(self.fallbacks.iter().cloned())
            .collect()
    }
}

/// `[[prices]]`: what a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Name of a `[providers.NAME]` section.
    pub provider: String,
    /// The provider's model id.
    pub model: String,
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million completion tokens.
    pub output_per_mtok: f64,
    /// Per million cached prompt tokens (default: the input price).
    pub cached_input_per_mtok: Option<f64>,
}

/// `[providers.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire format.
    pub kind: ProviderKind,
    /// Base URL. Default per kind: `openai` <https://api.openai.com/v1>, `anthropic`
    /// <https://api.anthropic.com/v1>, `gemini` <https://generativelanguage.googleapis.com/v1beta>,
    /// `openai_compatible` the local fake provider.
    pub base_url: Option<String>,
    /// API key. Set it through the environment (`QUARRY__PROVIDERS__NAME__API_KEY`) or
    /// `api_key_file`, never in a committed file.
    pub api_key: Option<SecretString>,
    /// File holding the API key (e.g. a mounted Kubernetes secret).
    pub api_key_file: Option<PathBuf>,
    /// Default timeout of one attempt, milliseconds (a job's `timeout_ms` overrides it).
    pub timeout_ms: u64,
    /// `openai_compatible`: send the schema as `response_format: json_schema` (else
    /// `json_object` with the schema in the system message).
    pub native_json_schema: bool,
    /// `openai`: strict structured outputs (the schema is made strict-compatible).
    pub strict: bool,
    /// `anthropic`: the `anthropic-version` header.
    pub anthropic_version: String,
    /// `anthropic`: `max_tokens` when the job sets none (the API requires one).
    pub default_max_tokens: u32,
    /// Extra HTTP headers sent with every request. Their values are secrets (gateways take
    /// credentials there): never logged, and scrubbed from provider text like keys.
    pub headers: BTreeMap<String, SecretString>,
    /// The key pool. Empty: one key named `default`, from `api_key` / `api_key_file`.
    pub keys: Vec<KeyConfig>,
    /// Limits of every key of this provider (a key's own values override them).
    pub limits: Limits,
    /// Limits of every key for one model (in addition to the key's own).
    pub model_limits: Vec<ModelLimits>,
}

/// `[[providers.NAME.keys]]`: one credential of the pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Name in logs and metrics (never the secret).
    pub name: String,
    /// The secret itself (prefer `api_key_env` or `api_key_file`).
    pub api_key: Option<SecretString>,
    /// Environment variable holding the secret.
    pub api_key_env: Option<String>,
    /// File holding the secret.
    pub api_key_file: Option<PathBuf>,
    /// Requests in any 60 s, for this key (default: the provider's `limits`).
    pub requests_per_minute: Option<u64>,
    /// Tokens in any 60 s, for this key.
    pub tokens_per_minute: Option<u64>,
    /// Calls at once, for this key.
    pub concurrent: Option<u64>,
    /// Credential profile of this key: a job is served by keys of its profile only.
    #[serde(default = "default_profile")]
    pub profile: String,
}

fn default_profile() -> String {
    DEFAULT_PROFILE.to_owned()
}

/// One key of a provider's pool, as the pipeline uses it.
#[derive(Debug, Clone)]
pub struct PoolKey {
    /// Name in logs and metrics.
    pub name: String,
    /// The secret.
    pub secret: Option<SecretString>,
    /// Its limits (the provider's where the key sets none).
    pub limits: Limits,
    /// Its credential profile.
    pub profile: String,
}

impl KeyConfig {
    /// This key's own limits.
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            concurrent: self.concurrent,
        }
    }
}

/// Requests, tokens and concurrent calls; unset means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests in any 60 s.
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output) in any 60 s.
    pub tokens_per_minute: Option<u64>,
    /// Calls at once.
    pub concurrent: Option<u64>,
}

impl Limits {
    /// `self`, with unset values taken from `fallback`.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(fallback.tokens_per_minute),
            concurrent: self.concurrent.or(fallback.concurrent),
        }
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.concurrent.is_some()
    }
}

/// `[[providers.NAME.model_limits]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// The provider's model id.
    pub model: String,
    /// Requests in any 60 s, per key.
    pub requests_per_minute: Option<u64>,
    /// Tokens in any 60 s, per key.
    pub tokens_per_minute: Option<u64>,
    /// Calls at once, per key.
    pub concurrent: Option<u64>,
}

impl ModelLimits {
    /// As [`Limits`].
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            concurrent: self.concurrent,
        }
    }
}

/// `[plugins.NAME]`: one plugin (an AMQP user), its policy and its quotas. A job from a user
/// that is not listed here ends `NOT_AUTHORIZED`. Every refusal of the policy is
/// `NOT_AUTHORIZED` with `error.details.policy` naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Requests in any 60 s.
    pub requests_per_minute: Option<u64>,
    /// Tokens in any 60 s.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day; past it jobs end `BUDGET_EXCEEDED`.
    pub daily_tokens: Option<u64>,
    /// Alias used when a job names none (default: `routing.default_alias`).
    pub default_model: Option<String>,
    /// Whether a job may name a model alias other than `default_model`.
    pub model_override: bool,
    /// `provider/model` targets this plugin's jobs may be dispatched to, checked on each
    /// target actually called (after alias resolution and fallback); `provider/*` allows a
    /// provider's every model. Unset: every configured target.
    pub allowed_models: Option<Vec<String>>,
    /// Credential profile used when a job asks for none.
    pub default_profile: String,
    /// Credential profiles a job may ask for (`profile`, or a `model@profile` suffix).
    /// Always includes `default_profile`.
    pub profiles: Vec<String>,
    /// Largest input, in bytes: instructions, text and decoded images together.
    pub max_input_bytes: Option<usize>,
    /// Most images one job may carry (at most `worker.max_images` anyway).
    pub max_images: Option<usize>,
    /// Ceiling of `max_tokens`: a job asking for more is refused, a job asking for none gets
    /// this bound.
    pub max_tokens: Option<u32>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            tokens_per_minute: None,
            daily_tokens: None,
            default_model: None,
            model_override: true,
            allowed_models: None,
            default_profile: DEFAULT_PROFILE.to_owned(),
            profiles: Vec::new(),
            max_input_bytes: None,
            max_images: None,
            max_tokens: None,
        }
    }
}

impl PluginConfig {
    /// Its fleet-wide quotas.
    pub fn quota(&self) -> PluginQuota {
        PluginQuota {
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            daily_tokens: self.daily_tokens,
        }
    }
}

/// The quotas of one plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginQuota {
    /// Requests in any 60 s.
    pub requests_per_minute: Option<u64>,
    /// Tokens in any 60 s.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    pub daily_tokens: Option<u64>,
}

/// Profile of a key that names none, and of a job that asks for none.
pub const DEFAULT_PROFILE: &str = "default";

/// The plugin a worker without a `[plugins]` table accepts: RabbitMQ's own `guest` user, which
/// the broker admits from localhost only. Any `[plugins.NAME]` table replaces it.
pub const DEVELOPMENT_PLUGIN: &str = "guest";

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimiterConfig {
    /// A job waits inside the worker for a limit at most this long per wait; longer waits end
    /// the job `RATE_LIMITED` (retryable).
    pub max_inline_wait_ms: u64,
    /// How long a key the provider rejected stays out of rotation, seconds.
    pub disable_key_secs: u64,
    /// Structured credential refusals of one key in a row (the provider's own 401/403
    /// error type, not a proxy's page) before a worker takes it out of rotation.
    pub disable_key_after: u32,
    /// Output tokens reserved for a job without `max_tokens`.
    pub default_output_tokens: u64,
    /// Per-minute windows last this much longer than 60 s, so that a request reserved at a
    /// window's edge does not reach the provider inside its own window (network and
    /// scheduling delay).
    pub window_margin_ms: u64,
    /// Delay queues, in seconds: a job whose limits are full for longer than
    /// `max_inline_wait_ms` waits in the shortest delay queue at least as long as the wait
    /// (or the longest), without holding a delivery, then comes back to its lane.
    pub delay_steps_secs: Vec<u64>,
    /// Deferrals of one job before it ends `RATE_LIMITED`.
    pub max_deferrals: u32,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            max_inline_wait_ms: 5_000,
            disable_key_secs: 3_600,
            disable_key_after: 3,
            default_output_tokens: 1_024,
            window_margin_ms: 250,
            delay_steps_secs: vec![5, 30, 120, 600],
            max_deferrals: 30,
        }
    }
}

impl ProviderConfig {
    /// The key pool: the configured keys, or one `default` key (profile `default`) from
    /// `api_key`.
    pub fn key_pool(&self) -> Vec<PoolKey> {
        if self.keys.is_empty() {
            return vec![PoolKey {
                name: "default".to_owned(),
                secret: self.api_key.clone(),
                limits: self.limits,
                profile: DEFAULT_PROFILE.to_owned(),
            }];
        }
        self.keys
            .iter()
            .map(|k| PoolKey {
                name: k.name.clone(),
                secret: k.api_key.clone(),
                limits: k.limits().or(self.limits),
                profile: k.profile.clone(),
            })
            .collect()
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::OpenaiCompatible,
            base_url: None,
            api_key: None,
            api_key_file: None,
            timeout_ms: 60_000,
            native_json_schema: true,
            strict: false,
            anthropic_version: "2023-06-01".to_owned(),
            default_max_tokens: 4096,
            headers: BTreeMap::new(),
            keys: Vec::new(),
            limits: Limits::default(),
            model_limits: Vec::new(),
        }
    }
}

impl ProviderConfig {
    /// The configured base URL, or the kind's default, without a trailing slash.
    pub fn base_url(&self) -> String {
        let url = self.base_url.as_deref().unwrap_or(match self.kind {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            ProviderKind::OpenaiCompatible => "http://127.0.0.1:8089/v1",
        });
        url.trim_end_matches('/').to_owned()
    }
}

/// Provider wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI chat completions with structured outputs.
    Openai,
    /// Anthropic messages; structured output through a forced tool.
    Anthropic,
    /// Google Gemini `generateContent` with `responseSchema`.
    Gemini,
    /// Servers that speak OpenAI chat completions (vLLM, llama.cpp, Ollama, ...).
    OpenaiCompatible,
}

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
            .source(env);
        let mut config: Config = builder.add_source(environment).build()?.try_deserialize()?;
        config.resolve_secret_files()?;
        config.check()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        for (name, provider) in &mut self.providers {
            if provider.api_key.is_none()
                && let Some(path) = &provider.api_key_file
            {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                        key: format!("providers.{name}.api_key_file"),
                        path: path.clone(),
                        source,
                    })?;
                provider.api_key = Some(SecretString::from(text.trim().to_owned()));
            }
            for (i, key) in provider.keys.iter_mut().enumerate() {
                if key.api_key.is_some() {
                    continue;
                }
                if let Some(var) = &key.api_key_env {
                    let value = std::env::var(var).map_err(|_| ConfigError::Invalid {
                        key: format!("providers.{name}.keys[{i}].api_key_env"),
                        reason: format!("environment variable `{var}` is not set"),
                    })?;
                    key.api_key = Some(SecretString::from(value));
                } else if let Some(path) = &key.api_key_file {
                    let text = std::fs::read_to_string(path).map_err(|source| {
                        ConfigError::SecretFile {
                            key: format!("providers.{name}.keys[{i}].api_key_file"),
                            path: path.clone(),
                            source,
                        }
                    })?;
                    key.api_key = Some(SecretString::from(text.trim().to_owned()));
                }
            }
        }
        Ok(())
    }

    /// Cross-field checks: every alias names a provider, numbers are in range.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be at least 1".into()));
        }
        if self.worker.max_attempts == 0 {
            return Err(invalid("worker.max_attempts", "must be at least 1".into()));
        }
        if self.worker.max_message_bytes == 0
            || self.worker.max_schema_bytes == 0
            || self.worker.max_schema_nodes == 0
        {
            return Err(invalid(
                "worker.max_message_bytes",
                "max_message_bytes, max_schema_bytes and max_schema_nodes must be at least 1"
                    .into(),
            ));
        }
        if self.limits.delay_steps_secs.is_empty() || self.limits.delay_steps_secs.contains(&0) {
            return Err(invalid(
                "limits.delay_steps_secs",
                "must list delays of at least 1 second".into(),
            ));
        }
        if self.amqp.lanes.is_empty() {
            return Err(invalid("amqp.lanes", "must name at least one lane".into()));
        }
        if self.amqp.namespace.is_empty() || self.amqp.namespace.len() > 100 {
            return Err(invalid(
                "amqp.namespace",
                "must be 1 to 100 characters".into(),
            ));
        }
        if !self
            .routing
            .aliases
            .contains_key(&self.routing.default_alias)
        {
            return Err(invalid(
                "routing.default_alias",
                format!("`{}` is not in routing.aliases", self.routing.default_alias),
            ));
        }
        for (alias, route) in &self.routing.aliases {
            if alias.is_empty() || alias.contains('@') {
                return Err(invalid(
                    &format!("routing.aliases.{alias}"),
                    "an alias name is not empty and has no `@` (it separates a profile)".into(),
                ));
            }
            for (i, target) in route.targets().iter().enumerate() {
                if !self.providers.contains_key(&target.provider) {
                    let key = match i {
                        0 => format!("routing.aliases.{alias}.provider"),
                        n => format!("routing.aliases.{alias}.fallbacks[{}].provider", n - 1),
                    };
                    return Err(invalid(
                        &key,
                        format!("`{}` is not a configured provider", target.provider),
                    ));
                }
            }
        }
        for (name, provider) in &self.providers {
            let url = provider.base_url();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    &format!("providers.{name}.base_url"),
                    "must be an http(s) URL".into(),
                ));
            }
            if provider.timeout_ms == 0 {
                return Err(invalid(
                    &format!("providers.{name}.timeout_ms"),
                    "must be at least 1".into(),
                ));
            }
        }
        for (name, provider) in &self.providers {
            let mut seen = std::collections::BTreeSet::new();
            for (i, key) in provider.key_pool().iter().enumerate() {
                if key.name.is_empty() || !seen.insert(key.name.clone()) {
                    return Err(invalid(
                        &format!("providers.{name}.keys[{i}].name"),
                        "key names must be unique and not empty".into(),
                    ));
                }
                if !is_profile_name(&key.profile) {
                    return Err(invalid(
                        &format!("providers.{name}.keys[{i}].profile"),
                        "must match ^[A-Za-z0-9_-]{1,64}$".into(),
                    ));
                }
                if let Some(secret) = &key.secret
                    && reqwest::header::HeaderValue::from_str(secrecy::ExposeSecret::expose_secret(
                        secret,
                    ))
                    .is_err()
                {
                    return Err(invalid(
                        &format!("providers.{name}.keys[{i}]"),
                        "the API key is not a valid HTTP header value".into(),
                    ));
                }
            }
        }
        let worker_user = self.amqp.user();
        let development = self.plugins.len() == 1
            && self.plugins.contains_key(DEVELOPMENT_PLUGIN)
            && worker_user.as_deref() == Some(DEVELOPMENT_PLUGIN);
        for (name, plugin) in &self.plugins {
            let key = |field: &str| format!("plugins.{name}.{field}");
            // Names become broker user names, reply-queue prefixes and Redis key parts.
            if !is_profile_name(name) {
                return Err(invalid(
                    &format!("plugins.{name}"),
                    "a plugin name is its AMQP user and must match ^[A-Za-z0-9_-]{1,64}$".into(),
                ));
            }
            // A plugin's header on a worker's own message is trusted: the worker's user
            // cannot also be a plugin, except in the development setup where `guest` is both
            // and the only plugin.
            if worker_user.as_deref() == Some(name.as_str()) && !development {
                return Err(invalid(
                    &format!("plugins.{name}"),
                    "is the worker's own AMQP user (amqp.url): give the workers a user of their \
                     own (deploy/rabbitmq/quarry-user worker NAME)"
                        .into(),
                ));
            }
            if let Some(alias) = &plugin.default_model
                && !self.routing.aliases.contains_key(alias)
            {
                return Err(invalid(
                    &key("default_model"),
                    format!("`{alias}` is not in routing.aliases"),
                ));
            }
            for profile in plugin.profiles.iter().chain([&plugin.default_profile]) {
                if !is_profile_name(profile) {
                    return Err(invalid(
                        &key("profiles"),
                        format!("`{profile}` does not match ^[A-Za-z0-9_-]{{1,64}}$"),
                    ));
                }
            }
            for pattern in plugin.allowed_models.iter().flatten() {
                let well_formed = pattern
                    .split_once('/')
                    .is_some_and(|(p, m)| !m.is_empty() && self.providers.contains_key(p));
                if !well_formed {
                    return Err(invalid(
                        &key("allowed_models"),
                        format!(
                            "`{pattern}` is not `provider/model` or `provider/*` of a configured provider"
                        ),
                    ));
                }
            }
        }
        for (i, price) in self.prices.iter().enumerate() {
            if !self.providers.contains_key(&price.provider) {
                return Err(invalid(
                    &format!("prices[{i}].provider"),
                    format!("`{}` is not a configured provider", price.provider),
                ));
            }
            let all = [
                price.input_per_mtok,
                price.output_per_mtok,
                price.cached_input_per_mtok.unwrap_or(0.0),
            ];
            if all.iter().any(|p| !p.is_finite() || *p < 0.0) {
                return Err(invalid(
                    &format!("prices[{i}]"),
                    "prices must be finite and not negative".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A credential profile name: 1 to 64 ASCII letters, digits, `_` and `-`.
pub fn is_profile_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn unknown_keys_are_rejected() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(file, "[worker]\nconcurency = 4\n").expect("write");
        let err = Config::load_with_env(Some(file.path()), env(&[])).expect_err("typo must fail");
        assert!(err.to_string().contains("concurency"), "{err}");
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
        assert_eq!(config.providers["openai"].kind, ProviderKind::Openai);
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
