//! `[limits]`: how the limiter waits and defers.

use super::ConfigError;
use serde::Deserialize;

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
            window_margin_ms: 250,
            delay_steps_secs: vec![5, 30, 120, 600],
            max_deferrals: 30,
        }
    }
}

impl LimiterConfig {
    /// Its own checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.delay_steps_secs.is_empty() || self.delay_steps_secs.contains(&0) {
            return Err(ConfigError::invalid(
                "limits.delay_steps_secs",
                "must list delays of at least 1 second",
            ));
        }
        Ok(())
    }
}
