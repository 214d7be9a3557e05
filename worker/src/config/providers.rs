//! `[providers.NAME]`: providers, their key pools and limits.

use super::{ConfigError, DEFAULT_PROFILE, is_profile_name};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[providers.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ProviderFile")]
pub struct ProviderConfig {
    /// The wire format and the settings only it has.
    pub settings: ProviderSettings,
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
    /// `max_tokens` for a job that sets none, on this provider (default:
    /// `worker.default_max_tokens`).
    pub default_max_tokens: Option<u32>,
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

/// A provider's kind with the settings only that kind has; each variant's settings live
/// beside their provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSettings {
    /// OpenAI chat completions with structured outputs.
    Openai(crate::providers::openai::Settings),
    /// Anthropic messages; structured output through a forced tool.
    Anthropic(crate::providers::anthropic::Settings),
    /// Google Gemini `generateContent` with `responseSchema`.
    Gemini,
    /// Servers that speak OpenAI chat completions (vLLM, llama.cpp, Ollama, ...).
    OpenaiCompatible(crate::providers::openai_compatible::Settings),
}

impl ProviderSettings {
    /// The kind's settings, each at its default.
    pub fn of(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Openai => Self::Openai(Default::default()),
            ProviderKind::Anthropic => Self::Anthropic(Default::default()),
            ProviderKind::Gemini => Self::Gemini,
            ProviderKind::OpenaiCompatible => Self::OpenaiCompatible(Default::default()),
        }
    }

    /// The wire format.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Self::Openai(_) => ProviderKind::Openai,
            Self::Anthropic(_) => ProviderKind::Anthropic,
            Self::Gemini => ProviderKind::Gemini,
            Self::OpenaiCompatible(_) => ProviderKind::OpenaiCompatible,
        }
    }
}

/// `[providers.NAME]` as it is written: the settings of every kind side by side, each
/// accepted only on its own kind.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProviderFile {
    kind: ProviderKind,
    base_url: Option<String>,
    api_key: Option<SecretString>,
    api_key_file: Option<PathBuf>,
    timeout_ms: u64,
    /// `openai_compatible`.
    native_json_schema: Option<bool>,
    /// `openai`.
    strict: Option<bool>,
    /// `anthropic`.
    anthropic_version: Option<String>,
    default_max_tokens: Option<u32>,
    headers: BTreeMap<String, SecretString>,
    keys: Vec<KeyConfig>,
    limits: Limits,
    model_limits: Vec<ModelLimits>,
}

impl Default for ProviderFile {
    fn default() -> Self {
        let defaults = ProviderConfig::default();
        Self {
            kind: defaults.kind(),
            base_url: None,
            api_key: None,
            api_key_file: None,
            timeout_ms: defaults.timeout_ms,
            native_json_schema: None,
            strict: None,
            anthropic_version: None,
            default_max_tokens: None,
            headers: BTreeMap::new(),
            keys: Vec::new(),
            limits: Limits::default(),
            model_limits: Vec::new(),
        }
    }
}

impl TryFrom<ProviderFile> for ProviderConfig {
    type Error = String;

    fn try_from(file: ProviderFile) -> Result<Self, String> {
        let kind = file.kind;
        // A setting of another kind would be silently ignored: refused, naming its kind.
        let foreign = [
            (
                "native_json_schema",
                file.native_json_schema.is_some(),
                ProviderKind::OpenaiCompatible,
            ),
            ("strict", file.strict.is_some(), ProviderKind::Openai),
            (
                "anthropic_version",
                file.anthropic_version.is_some(),
                ProviderKind::Anthropic,
            ),
        ];
        if let Some((field, _, owner)) = foreign
            .iter()
            .find(|(_, set, owner)| *set && *owner != kind)
        {
            return Err(format!(
                "`{field}` is a setting of kind `{}`; this provider is kind `{}`",
                owner.as_str(),
                kind.as_str()
            ));
        }
        let settings = match (ProviderSettings::of(kind), &file) {
            (ProviderSettings::Openai(mut openai), file) => {
                openai.strict = file.strict.unwrap_or(openai.strict);
                ProviderSettings::Openai(openai)
            }
            (ProviderSettings::Anthropic(mut anthropic), file) => {
                if let Some(version) = &file.anthropic_version {
                    anthropic.version.clone_from(version);
                }
                ProviderSettings::Anthropic(anthropic)
            }
            (ProviderSettings::Gemini, _) => ProviderSettings::Gemini,
            (ProviderSettings::OpenaiCompatible(mut compatible), file) => {
                compatible.native_json_schema = file
                    .native_json_schema
                    .unwrap_or(compatible.native_json_schema);
                ProviderSettings::OpenaiCompatible(compatible)
            }
        };
        Ok(Self {
            settings,
            base_url: file.base_url,
            api_key: file.api_key,
            api_key_file: file.api_key_file,
            timeout_ms: file.timeout_ms,
            default_max_tokens: file.default_max_tokens,
            headers: file.headers,
            keys: file.keys,
            limits: file.limits,
            model_limits: file.model_limits,
        })
    }
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
    /// This key's own limits, written beside its name (`requests_per_minute = 60`); each unset
    /// one is the provider's `limits`.
    #[serde(flatten)]
    pub limits: Limits,
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

/// Limits, wherever they are written: a provider's `limits` table, a key, a model's limits, a
/// plugin (`[plugins.NAME]`). Unset means unlimited. Daily budgets are kept per plugin only,
/// concurrent calls per key only: each is refused where it is not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests in any 60 s.
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output) in any 60 s.
    pub tokens_per_minute: Option<u64>,
    /// Calls at once (keys only: a provider's `limits` and `model_limits` apply per key).
    pub concurrent: Option<u64>,
    /// Tokens per UTC day (plugins only); past it jobs end `BUDGET_EXCEEDED`.
    pub daily_tokens: Option<u64>,
    /// Requests that may start at once beyond the even pace of `requests_per_minute`
    /// (default: 2% of it, at least 1).
    pub requests_burst: Option<u64>,
    /// Tokens that may be reserved at once beyond the even pace of `tokens_per_minute`
    /// (default: all of it, i.e. tokens are not paced, only limited).
    pub tokens_burst: Option<u64>,
}

impl Limits {
    /// `self`, with unset values taken from `fallback`.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(fallback.tokens_per_minute),
            concurrent: self.concurrent.or(fallback.concurrent),
            daily_tokens: self.daily_tokens.or(fallback.daily_tokens),
            requests_burst: self.requests_burst.or(fallback.requests_burst),
            tokens_burst: self.tokens_burst.or(fallback.tokens_burst),
        }
    }

    /// The burst of a `requests_per_minute` of `limit`: the configured one, or 2% of the
    /// limit (at least 1); never above the limit.
    pub fn requests_burst_of(&self, limit: u64) -> u64 {
        self.requests_burst
            .unwrap_or(limit / 50)
            .clamp(1, limit.max(1))
    }

    /// The burst of a `tokens_per_minute` of `limit`: the configured one, or the limit.
    pub fn tokens_burst_of(&self, limit: u64) -> u64 {
        self.tokens_burst.unwrap_or(limit).clamp(1, limit.max(1))
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != Limits::default()
    }

    /// Refuses a daily budget where only plugins keep one (`at`: the table these limits are
    /// written in).
    pub(super) fn check_no_daily(&self, at: &str) -> Result<(), ConfigError> {
        match self.daily_tokens {
            Some(_) => Err(ConfigError::invalid(
                format!("{at}.daily_tokens"),
                "a daily budget is a plugin's ([plugins.NAME]); a provider, key or model has none",
            )),
            None => Ok(()),
        }
    }

    /// Refuses a bound on calls at once where only keys keep one.
    pub(super) fn check_no_concurrent(&self, at: &str) -> Result<(), ConfigError> {
        match self.concurrent {
            Some(_) => Err(ConfigError::invalid(
                format!("{at}.concurrent"),
                "calls at once are bounded per key ([providers.NAME] limits, keys, model_limits); a plugin has no such quota",
            )),
            None => Ok(()),
        }
    }
}

/// `[[providers.NAME.model_limits]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// The provider's model id.
    pub model: String,
    /// Its limits per key (in addition to the key's own), written beside `model`.
    #[serde(flatten)]
    pub limits: Limits,
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
                limits: k.limits.or(self.limits),
                profile: k.profile.clone(),
            })
            .collect()
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            settings: ProviderSettings::of(ProviderKind::OpenaiCompatible),
            base_url: None,
            api_key: None,
            api_key_file: None,
            timeout_ms: 60_000,
            default_max_tokens: None,
            headers: BTreeMap::new(),
            keys: Vec::new(),
            limits: Limits::default(),
            model_limits: Vec::new(),
        }
    }
}

impl ProviderConfig {
    /// The wire format.
    pub fn kind(&self) -> ProviderKind {
        self.settings.kind()
    }

    /// The configured base URL, or the kind's default, without a trailing slash.
    pub fn base_url(&self) -> String {
        let url = self.base_url.as_deref().unwrap_or(match self.kind() {
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

impl ProviderKind {
    /// The name in configuration (`kind = "..."`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::OpenaiCompatible => "openai_compatible",
        }
    }
}

impl ProviderConfig {
    /// Its own checks (`name`: its `[providers.NAME]`).
    pub fn check(&self, name: &str) -> Result<(), ConfigError> {
        let url = self.base_url();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                format!("providers.{name}.base_url"),
                "must be an http(s) URL",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                format!("providers.{name}.timeout_ms"),
                "must be at least 1",
            ));
        }
        if let Some(n) = self.default_max_tokens
            && !(1..=quarry_schemas::job::limits::MAX_MAX_TOKENS).contains(&n)
        {
            return Err(ConfigError::invalid(
                format!("providers.{name}.default_max_tokens"),
                "must be between 1 and 1000000",
            ));
        }
        self.limits
            .check_no_daily(&format!("providers.{name}.limits"))?;
        for (i, model) in self.model_limits.iter().enumerate() {
            model
                .limits
                .check_no_daily(&format!("providers.{name}.model_limits[{i}]"))?;
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.limits
                .check_no_daily(&format!("providers.{name}.keys[{i}]"))?;
        }
        Ok(())
    }

    /// The key pool's checks: unique names, profile names, keys that are valid headers.
    pub fn check_keys(&self, name: &str) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, key) in self.key_pool().iter().enumerate() {
            if key.name.is_empty() || !seen.insert(key.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("providers.{name}.keys[{i}].name"),
                    "key names must be unique and not empty",
                ));
            }
            if !is_profile_name(&key.profile) {
                return Err(ConfigError::invalid(
                    format!("providers.{name}.keys[{i}].profile"),
                    "must match ^[A-Za-z0-9_:-]{1,64}$",
                ));
            }
            if let Some(secret) = &key.secret
                && reqwest::header::HeaderValue::from_str(secrecy::ExposeSecret::expose_secret(
                    secret,
                ))
                .is_err()
            {
                return Err(ConfigError::invalid(
                    format!("providers.{name}.keys[{i}]"),
                    "the API key is not a valid HTTP header value",
                ));
            }
        }
        Ok(())
    }

    /// Reads the secrets named by `api_key_file`, `keys[].api_key_env` and
    /// `keys[].api_key_file` (`name`: its `[providers.NAME]`).
    pub fn resolve_secret_files(&mut self, name: &str) -> Result<(), ConfigError> {
        if self.api_key.is_none()
            && let Some(path) = &self.api_key_file
        {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                key: format!("providers.{name}.api_key_file"),
                path: path.clone(),
                source,
            })?;
            self.api_key = Some(SecretString::from(text.trim().to_owned()));
        }
        for (i, key) in self.keys.iter_mut().enumerate() {
            if key.api_key.is_some() {
                continue;
            }
            if let Some(var) = &key.api_key_env {
                let value = std::env::var(var).map_err(|_| {
                    ConfigError::invalid(
                        format!("providers.{name}.keys[{i}].api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    )
                })?;
                key.api_key = Some(SecretString::from(value));
            } else if let Some(path) = &key.api_key_file {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                        key: format!("providers.{name}.keys[{i}].api_key_file"),
                        path: path.clone(),
                        source,
                    })?;
                key.api_key = Some(SecretString::from(text.trim().to_owned()));
            }
        }
        Ok(())
    }
}
