//! Names shared by every producer and worker: exchanges, queues, lanes, headers.
//!
//! All names hang off a *namespace* (default `quarry`), so several fleets, or parallel tests,
//! can share one broker without seeing each other's messages.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "quarry";

/// Whether `namespace` can prefix the topology's names: 1 to 100 ASCII letters, digits, `_`,
/// `-` and `.`, not starting with `amq.` (RabbitMQ's own). No `*` or `#`: a reply queue's name
/// is also its binding key on a topic exchange.
pub fn is_namespace(namespace: &str) -> bool {
    (1..=100).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !namespace.starts_with("amq.")
}

/// Header on a dead-lettered message: why Quarry dead-lettered it (a short, stable reason code).
pub const HEADER_DEAD_REASON: &str = "x-quarry-dead-reason";
/// Header on a dead-lettered message: human-readable detail of the reason.
pub const HEADER_DEAD_DETAIL: &str = "x-quarry-dead-detail";
/// Header on a dead-lettered message: the queue it was taken from.
pub const HEADER_DEAD_QUEUE: &str = "x-quarry-dead-queue";

/// Header on a dead-lettered message: the AMQP `user_id` (plugin) that published it.
pub const HEADER_DEAD_USER: &str = "x-quarry-dead-user";

/// Header on a job a worker deferred through a delay queue: the plugin that published it
/// (trusted only when the message's `user_id` is the worker's own).
pub const HEADER_PLUGIN: &str = "x-quarry-plugin";
/// Header on a deferred job: how many times it was deferred.
pub const HEADER_DEFERRALS: &str = "x-quarry-deferrals";

/// Headers a plugin may set on a job, and the only headers of the original that a worker
/// carries onto a message it republishes (a deferral, a dead letter). Every other header of a
/// plugin's message is ignored: `CC`/`BCC` (which RabbitMQ routes a copy by) and the
/// `x-quarry-*` headers workers write never cross into a message the worker publishes.
pub const PLUGIN_HEADERS: [&str; 3] = [HEADER_PUBLISHED_MS, HEADER_TRACEPARENT, HEADER_TRACESTATE];

/// Header on a job: when the producer published it, Unix epoch milliseconds (the SDK sets
/// it; workers measure end-to-end latency from it).
pub const HEADER_PUBLISHED_MS: &str = "x-quarry-published-ms";

/// Header on a job: its W3C Trace Context parent (`00-<trace id>-<span id>-<flags>`). Workers
/// continue the trace into provider requests.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Header on a job: W3C Trace Context vendor state, passed on unchanged.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// The fields of a W3C `traceparent` header (<https://www.w3.org/TR/trace-context/>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceparentFields {
    /// The trace id (not zero).
    pub trace_id: u128,
    /// The parent span id (not zero).
    pub parent_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Parses a `traceparent` value: version `00` with exactly four lower-case hex fields; a later
/// version by its first four fields, as the specification asks; `ff`, zero ids and anything
/// malformed are `None`.
pub fn parse_traceparent(value: &str) -> Option<TraceparentFields> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let well_formed = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2);
    if !well_formed {
        return None;
    }
    Some(TraceparentFields {
        trace_id: u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?,
        parent_id: u64::from_str_radix(parent, 16).ok().filter(|p| *p != 0)?,
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

/// `content_type` property of jobs and results.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `type` property of a job message.
pub const MESSAGE_TYPE_JOB: &str = "quarry.job.v1";
/// `type` property of a result message.
pub const MESSAGE_TYPE_RESULT: &str = "quarry.result.v1";
/// `type` property of a chunk of a streamed answer.
pub const MESSAGE_TYPE_CHUNK: &str = "quarry.chunk.v1";
/// `type` property of a control request and of its reply.
pub const MESSAGE_TYPE_CONTROL: &str = "quarry.control.v1";

/// A work lane: its own queue, so interactive calls are not stuck behind a large batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Latency-sensitive single calls.
    Interactive,
    /// Bulk work.
    Batch,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Batch];

    /// The lane's routing key and metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Batch => "batch",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown lane name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLane(pub String);

impl fmt::Display for UnknownLane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown lane `{}` (expected `interactive` or `batch`)",
            self.0
        )
    }
}

impl std::error::Error for UnknownLane {}

impl FromStr for Lane {
    type Err = UnknownLane;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Lane::Interactive),
            "batch" => Ok(Lane::Batch),
            other => Err(UnknownLane(other.to_owned())),
        }
    }
}

/// The names of one namespace's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    namespace: String,
}

impl Topology {
    /// Names under `namespace` (e.g. `quarry`).
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Direct exchange that jobs are published to; the routing key is the lane.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// The durable quorum queue of a lane.
    pub fn lane_queue(&self, lane: Lane) -> String {
        format!("{}.jobs.{}", self.namespace, lane.as_str())
    }

    /// Fanout exchange for dead letters.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The queue that keeps dead letters for inspection.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// Fanout exchange that plugins publish control requests (`control.v1`) to.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.namespace)
    }

    /// The quorum queue of control requests, consumed by every worker.
    pub fn control_queue(&self) -> String {
        format!("{}.control", self.namespace)
    }

    /// The quorum queue that receives a copy of every dead letter, where workers answer
    /// jobs that expired in their lane (AMQP `expiration`) with `DEADLINE_EXCEEDED`.
    pub fn expired_queue(&self) -> String {
        format!("{}.expired", self.namespace)
    }

    /// A lane's delay queue of `secs` seconds: messages wait there, then return to the lane.
    pub fn delay_queue(&self, lane: Lane, secs: u64) -> String {
        format!("{}.delay.{}.{}s", self.namespace, lane.as_str(), secs)
    }

    /// Topic exchange that workers publish results and control replies to, with the
    /// `reply_to` queue name as routing key. A reply queue receives them once bound with its
    /// own name (the SDKs do it); broker topic permissions let a plugin bind only keys under
    /// its own [`Topology::reply_prefix`], and give plugins no write on it.
    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.namespace)
    }

    /// Direct exchange of the delay queues (routing key: the delay queue's name): workers
    /// defer jobs through it, so they need no write on the default exchange.
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.namespace)
    }

    /// The prefix of every reply queue of `user`: a job's `reply_to` must start with its
    /// plugin's prefix, or the worker refuses to answer it there.
    pub fn reply_prefix(&self, user: &str) -> String {
        format!("{}.replies.{user}.", self.namespace)
    }

    /// Whether `queue` is a reply queue of `user` (starts with [`Topology::reply_prefix`] and
    /// has a name after it).
    pub fn is_reply_queue_of(&self, queue: &str, user: &str) -> bool {
        queue
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix(".replies."))
            .and_then(|rest| rest.strip_prefix(user))
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|name| !name.is_empty())
    }

    /// The durable reply queue of a batch of `user` (the publishing AMQP user): the user is
    /// in the name so that broker permissions can give each plugin only its own queues.
    pub fn batch_reply_queue(&self, user: &str, batch_id: &str) -> String {
        format!("{}.replies.{user}.{batch_id}", self.namespace)
    }

    /// The private (exclusive) reply queue of one client connection of `user`.
    pub fn private_reply_queue(&self, user: &str, connection_id: &str) -> String {
        format!("{}.replies.{user}.rpc-{connection_id}", self.namespace)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_that_would_break_the_names_are_refused() {
        for good in ["quarry", "qt-1a2b", "team_a.prod"] {
            assert!(is_namespace(good), "{good}");
        }
        let long = "x".repeat(101);
        for bad in ["", "a*b", "prod.#", "amq.gen", "sp ace", long.as_str()] {
            assert!(!is_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn a_reply_queue_belongs_to_exactly_one_plugin() {
        let t = Topology::new("quarry");
        assert!(t.is_reply_queue_of("quarry.replies.a.batch-1", "a"));
        assert!(t.is_reply_queue_of(&t.batch_reply_queue("a", "b1"), "a"));
        assert!(t.is_reply_queue_of(&t.private_reply_queue("a", "x"), "a"));
        for queue in [
            "quarry.replies.a.",
            "quarry.replies.ab.x",
            "quarry.replies.a-b.x",
            "quarry.replies.b.x",
            "quarry.replies.a",
            "other.replies.a.x",
            "quarry.jobs.batch",
            "quarryXreplies.a.x",
        ] {
            assert!(!t.is_reply_queue_of(queue, "a"), "{queue}");
        }
    }
}
