//! `[[prices]]`: what a model costs.

use super::{ConfigError, ProviderConfig};
use serde::Deserialize;
use std::collections::BTreeMap;

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

impl Price {
    /// Its own checks (`i`: its place in `[[prices]]`).
    pub fn check(
        &self,
        i: usize,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<(), ConfigError> {
        if !providers.contains_key(&self.provider) {
            return Err(ConfigError::invalid(
                format!("prices[{i}].provider"),
                format!("`{}` is not a configured provider", self.provider),
            ));
        }
        let all = [
            self.input_per_mtok,
            self.output_per_mtok,
            self.cached_input_per_mtok.unwrap_or(0.0),
        ];
        if all.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(ConfigError::invalid(
                format!("prices[{i}]"),
                "prices must be finite and not negative",
            ));
        }
        Ok(())
    }
}
