//! `[redis]`: the Redis connection, key prefix and lifetimes.

use secrecy::SecretString;
use serde::Deserialize;

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
