//! The SDK's typed errors: a broken connection is never mistaken for a failed extraction
//! (which is a [`quarry_schemas::JobResult`] with an `error`, not an [`Error`]).

use quarry_schemas::job::JobInvalid;
use std::time::Duration;

/// Everything that can go wrong between a producer and the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    /// The AMQP URL does not parse.
    #[error("invalid AMQP URL: {0}")]
    Url(String),
    /// The namespace cannot prefix the fleet's names.
    #[error(
        "invalid namespace `{0}`: 1 to 100 ASCII letters, digits, `_`, `-` and `.`, not starting with `amq.`"
    )]
    Namespace(String),
    /// The namespace's work exchange does not exist: no worker has declared it yet.
    #[error(
        "namespace `{namespace}` has no work exchange `{exchange}`: start a quarry-worker first"
    )]
    TopologyMissing {
        /// The namespace.
        namespace: String,
        /// The missing exchange.
        exchange: String,
    },
    /// The job breaks the wire contract; it was not published.
    #[error("invalid job `{job_id}`: {source}")]
    InvalidJob {
        /// The job.
        job_id: String,
        /// What is wrong.
        #[source]
        source: JobInvalid,
    },
    /// No queue is bound for the lane, so the broker returned the job.
    #[error("job `{job_id}` is unroutable: no queue for lane `{lane}`")]
    Unroutable {
        /// The job.
        job_id: String,
        /// The lane.
        lane: String,
    },
    /// The broker refused to take the job (publisher nack).
    #[error("the broker refused job `{job_id}` (nack)")]
    Nacked {
        /// The job.
        job_id: String,
    },
    /// No result arrived in time. The job may still complete later.
    #[error("no result for job `{job_id}` within {timeout:?}")]
    Timeout {
        /// The job.
        job_id: String,
        /// The wait.
        timeout: Duration,
    },
    /// A batch saw no result for too long.
    #[error("no result for {idle:?} with {pending} jobs outstanding")]
    Idle {
        /// The wait.
        idle: Duration,
        /// Jobs still without a result.
        pending: usize,
    },
    /// The connection or channel failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker connection was lost. Connect a new client; a batch continues with
    /// [`Client::resume_batch`](crate::Client::resume_batch).
    #[error("the broker connection was lost")]
    ConnectionLost,
    /// The client shut down while a call was waiting.
    #[error("the client closed before the result arrived")]
    Closed,
    /// A worker refused a control request (e.g. `NOT_AUTHORIZED`: the login is not a
    /// configured plugin).
    #[error("the fleet refused the request: {}: {}", .0.code, .0.message)]
    Refused(quarry_schemas::ErrorInfo),
    /// The broker did not confirm closing the connection in time.
    #[error("the broker did not confirm closing the connection")]
    CloseTimeout,
    /// The namespace has no dead-letter queue: no worker has declared it yet.
    #[error("{queue} does not exist")]
    DeadQueueMissing {
        /// The queue.
        queue: String,
    },
    /// Re-driving dead letters needs the fleet's worker user.
    #[error(
        "dead-letters redrive must run as the fleet's worker user `{worker_user}` (the login is \
         `{login}`): workers take a re-driven job's plugin only from their own user's messages"
    )]
    NotWorkerUser {
        /// The login.
        login: String,
        /// The worker user.
        worker_user: String,
    },
    /// A worker's reply broke the contract (e.g. a `describe` reply without its
    /// description): a worker older or newer than this SDK's contract.
    #[error("a worker's reply broke the contract: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The broker did not take a re-driven job back; it stays dead-lettered.
    #[error("the broker did not take job {job_id} back ({detail}); it stays dead-lettered")]
    RedriveRefused {
        /// The job.
        job_id: String,
        /// The broker's answer.
        detail: String,
    },
}

impl Error {
    /// Whether this is a transport problem (connection, channel, broker refusal, timeout),
    /// as opposed to a job the SDK refused to send.
    pub fn is_transport(&self) -> bool {
        match self {
            Error::Connect(_)
            | Error::TopologyMissing { .. }
            | Error::Unroutable { .. }
            | Error::Nacked { .. }
            | Error::Timeout { .. }
            | Error::Idle { .. }
            | Error::Amqp(_)
            | Error::ConnectionLost
            | Error::Closed
            | Error::CloseTimeout
            | Error::DeadQueueMissing { .. }
            | Error::RedriveRefused { .. }
            | Error::Protocol { .. } => true,
            Error::Url(_)
            | Error::Namespace(_)
            | Error::InvalidJob { .. }
            | Error::Refused(_)
            | Error::NotWorkerUser { .. } => false,
        }
    }
}
