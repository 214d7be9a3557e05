//! The scenarios and what each one injects.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// kill -9 a random worker every few seconds; a supervisor restarts it.
    Kill,
    /// Restart RabbitMQ mid-batch.
    BrokerRestart,
    /// Restart Redis mid-batch.
    RedisRestart,
    /// 30% 429 with Retry-After, 10% 500, 5% timeouts, 5% invalid JSON.
    FaultStorm,
    /// SIGTERM every worker mid-batch, then start new ones.
    Sigterm,
    /// Malformed and forbidden jobs mixed into a normal batch.
    BadInput,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 6] = [
        Scenario::Kill,
        Scenario::BrokerRestart,
        Scenario::RedisRestart,
        Scenario::FaultStorm,
        Scenario::Sigterm,
        Scenario::BadInput,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill -9 every few seconds",
            Scenario::BrokerRestart => "RabbitMQ restart",
            Scenario::RedisRestart => "Redis restart",
            Scenario::FaultStorm => "provider fault storm",
            Scenario::Sigterm => "SIGTERM all workers",
            Scenario::BadInput => "bad-input corpus",
        }
    }

    /// Whether workers die with jobs in flight (a crash window where a provider call may be
    /// repeated for the jobs that were in flight).
    pub(crate) fn crashes(self) -> bool {
        matches!(self, Scenario::Kill)
    }
}
