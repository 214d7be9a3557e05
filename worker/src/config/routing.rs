//! `[routing]`: model aliases, their targets and fallbacks.

use super::{ConfigError, ProviderConfig};
use serde::Deserialize;
use std::collections::BTreeMap;

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

impl RoutingConfig {
    /// Its own checks: the default alias exists, every alias names a configured provider.
    pub fn check(&self, providers: &BTreeMap<String, ProviderConfig>) -> Result<(), ConfigError> {
        if !self.aliases.contains_key(&self.default_alias) {
            return Err(ConfigError::invalid(
                "routing.default_alias",
                format!("`{}` is not in routing.aliases", self.default_alias),
            ));
        }
        for (alias, route) in &self.aliases {
            if alias.is_empty() || alias.contains('@') || alias.contains('/') {
                return Err(ConfigError::invalid(
                    format!("routing.aliases.{alias}"),
                    "an alias name is not empty and has no `@` (it separates a profile) or `/` \
                     (it names a provider/model target)",
                ));
            }
            for (i, target) in route.targets().iter().enumerate() {
                if !providers.contains_key(&target.provider) {
                    let key = match i {
                        0 => format!("routing.aliases.{alias}.provider"),
                        n => format!("routing.aliases.{alias}.fallbacks[{}].provider", n - 1),
                    };
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{}` is not a configured provider", target.provider),
                    ));
                }
            }
        }
        Ok(())
    }
}
