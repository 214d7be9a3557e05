//! `[plugins.NAME]`: who may publish jobs, their policies and quotas.

use super::{
    Config, ConfigError, DEFAULT_PROFILE, DEVELOPMENT_PLUGIN, Limits, is_plugin_name,
    is_profile_name,
};
use serde::Deserialize;

/// `[plugins.NAME]`: one plugin (an AMQP user), its policy and its quotas. A job from a user
/// that is not listed here ends `NOT_AUTHORIZED`. Every refusal of the policy is
/// `NOT_AUTHORIZED` with `error.details.policy` naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Its fleet-wide quotas, written beside the policy (`requests_per_minute`,
    /// `tokens_per_minute`, `daily_tokens`): every job of the plugin, whatever its provider,
    /// counts against them.
    #[serde(flatten)]
    pub limits: Limits,
    /// Alias used when a job names none (default: `routing.default_alias`).
    pub default_model: Option<String>,
    /// Whether a job may choose what it runs on: an alias other than `default_model`, or a
    /// target `allowed_models` lists. Off unless granted.
    pub model_override: bool,
    /// `provider/model` targets this plugin's jobs may be dispatched to, checked on each
    /// target actually called (after alias resolution and fallback); `provider/*` allows a
    /// provider's every model an alias routes to. With `model_override`, the exact
    /// `provider/model` entries are also the targets a job may name. Unset: every configured
    /// target through an alias, and none by name.
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
    /// Whether a job may name the agent it runs for (`agent_id`). Off unless granted.
    pub agent_id_override: bool,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            default_model: None,
            model_override: false,
            allowed_models: None,
            default_profile: DEFAULT_PROFILE.to_owned(),
            profiles: Vec::new(),
            max_input_bytes: None,
            max_images: None,
            max_tokens: None,
            agent_id_override: false,
        }
    }
}

impl PluginConfig {
    /// Its own checks (`name`: its `[plugins.NAME]`), against the rest of `config`.
    pub fn check(&self, name: &str, config: &Config) -> Result<(), ConfigError> {
        let key = |field: &str| format!("plugins.{name}.{field}");
        // Names become broker user names, reply-queue prefixes and Redis key parts.
        if !is_plugin_name(name) {
            return Err(ConfigError::invalid(
                format!("plugins.{name}"),
                "a plugin name is its AMQP user and must match ^[A-Za-z0-9_-]{1,64}$",
            ));
        }
        // A plugin's header on a worker's own message is trusted: the worker's user cannot
        // also be a plugin, except in the development setup where `guest` is both and the
        // only plugin.
        let worker_user = config.amqp.user();
        let development = config.plugins.len() == 1
            && config.plugins.contains_key(DEVELOPMENT_PLUGIN)
            && worker_user.as_deref() == Some(DEVELOPMENT_PLUGIN);
        if worker_user.as_deref() == Some(name) && !development {
            return Err(ConfigError::invalid(
                format!("plugins.{name}"),
                "is the worker's own AMQP user (amqp.url): give the workers a user of their \
                 own (deploy/rabbitmq/quarry-user worker NAME)",
            ));
        }
        self.limits
            .check_no_concurrent(&format!("plugins.{name}"))?;
        if let Some(alias) = &self.default_model
            && !config.routing.aliases.contains_key(alias)
        {
            return Err(ConfigError::invalid(
                key("default_model"),
                format!("`{alias}` is not in routing.aliases"),
            ));
        }
        for profile in self.profiles.iter().chain([&self.default_profile]) {
            if !is_profile_name(profile) {
                return Err(ConfigError::invalid(
                    key("profiles"),
                    format!("`{profile}` does not match ^[A-Za-z0-9_:-]{{1,64}}$"),
                ));
            }
        }
        for pattern in self.allowed_models.iter().flatten() {
            let well_formed = pattern
                .split_once('/')
                .is_some_and(|(p, m)| !m.is_empty() && config.providers.contains_key(p));
            if !well_formed {
                return Err(ConfigError::invalid(
                    key("allowed_models"),
                    format!(
                        "`{pattern}` is not `provider/model` or `provider/*` of a configured provider"
                    ),
                ));
            }
        }
        Ok(())
    }
}
