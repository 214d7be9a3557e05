//! `[amqp]`: the broker connection and topology.

use super::ConfigError;
use quarry_schemas::wire::Lane;
use secrecy::SecretString;
use serde::Deserialize;

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

impl AmqpConfig {
    /// Its own checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.lanes.is_empty() {
            return Err(ConfigError::invalid(
                "amqp.lanes",
                "must name at least one lane",
            ));
        }
        if !quarry_schemas::wire::is_namespace(&self.namespace) {
            return Err(ConfigError::invalid(
                "amqp.namespace",
                "must be 1 to 100 ASCII letters, digits, `_`, `-` and `.`, not starting `amq.`",
            ));
        }
        Ok(())
    }
}
