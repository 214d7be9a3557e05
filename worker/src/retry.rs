//! The one retry policy: exponential backoff with full jitter, a cap, the provider's
//! Retry-After as a floor, and the job's deadline as a hard stop.

use crate::config::WorkerConfig;
use std::time::Duration;

/// How often and how long to retry a provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl RetryPolicy {
    /// From `[worker]`.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
        }
    }

    /// The wait before attempt `attempt + 1`, after `attempt` (1-based) failed. `hint` is the
    /// provider's Retry-After, honoured even above the cap; `unit` is a uniform draw in [0, 1).
    pub fn backoff(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1));
        let ceiling = self.base.saturating_mul(exp).min(self.max);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match hint {
            Some(hint) => hint.max(jittered),
            None => jittered,
        }
    }

    /// Whether another attempt is allowed after `attempt` attempts, given the time left
    /// before the deadline (None: no deadline) and the wait that would come first.
    pub fn may_retry(&self, attempt: u32, wait: Duration, remaining: Option<Duration>) -> bool {
        attempt < self.max_attempts && remaining.is_none_or(|left| wait < left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, None, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(2, None, 0.999_999).as_millis(), 199);
        assert_eq!(p.backoff(3, None, 0.999_999).as_millis(), 399);
        assert_eq!(p.backoff(10, None, 0.999_999).as_millis(), 999);
        assert_eq!(p.backoff(40, None, 0.5).as_millis(), 500);
        assert_eq!(p.backoff(3, None, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(5)), 0.5),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.backoff(4, Some(Duration::from_millis(10)), 0.5),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn attempts_and_deadline_bound_retries() {
        let p = policy();
        assert!(p.may_retry(1, Duration::from_millis(50), None));
        assert!(!p.may_retry(4, Duration::ZERO, None));
        assert!(!p.may_retry(
            1,
            Duration::from_millis(50),
            Some(Duration::from_millis(40))
        ));
        assert!(p.may_retry(
            1,
            Duration::from_millis(50),
            Some(Duration::from_millis(60))
        ));
    }
}
