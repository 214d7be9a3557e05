//! Quarry producer SDK: how a plugin hands extraction jobs to the fleet.
//!
//! - [`Client::connect`]: one AMQP connection, a confirm-mode publishing channel, and a
//!   private reply queue for single calls.
//! - [`Client::extract`]: publish one job (confirmed, mandatory) and await its result.
//! - [`Client::stream`]: the same, with the answer as it is written: deltas (and the
//!   partial object in JSON mode), resets, then the result ([`StreamEvent`]).
//! - [`Client::run_batch`]: many jobs with bounded in-flight, results streamed as they
//!   arrive from a durable per-batch reply queue (a producer restart loses nothing).
//! - [`DeadLetters`]: the fleet's dead letters, listed and re-driven (an operator's tool).
//! - [`Error`]: typed errors. A failed *extraction* is a [`JobResult`] with an `error`;
//!   an [`Error`] is always about transport or an invalid job.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quarry_producer::Error> {
//! use quarry_producer::{CallOptions, Client, InputPart, Job, JsonSchema, new_job_id};
//! let client = Client::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! // Build the schema once: jobs share its text, and cloning it is a reference count.
//! let schema = JsonSchema::from(serde_json::json!({
//!     "type": "object",
//!     "required": ["total"],
//!     "properties": {"total": {"type": "number"}}
//! }));
//! let mut job = Job::new(new_job_id(), vec![InputPart::Text { text: "Coffee 3.50 EUR".into() }]);
//! job.json_schema = Some(schema.clone());
//! let result = client.extract(job, CallOptions::default()).await?;
//! println!("{:?} {:?}", result.status, result.parsed);
//! # Ok(()) }
//! ```

mod batch;
mod client;
mod dead_letters;
mod error;
mod publish;
mod stream;
mod trace;

pub use batch::{BatchItem, BatchOptions, BatchStream};
pub use client::{
    BatchStatus, CallOptions, Client, ClientOptions, DEFAULT_WORKER_USER, bind_reply_queue,
};
pub use dead_letters::{DeadLetter, DeadLetters, Redriven};
pub use error::Error;
pub use quarry_schemas::ResetReason;
pub use quarry_schemas::control::Description;
pub use quarry_schemas::wire::Lane;
pub use quarry_schemas::{
    ErrorCode, ErrorInfo, FinishReason, ImagePart, InputPart, Job, JobResult, JsonSchema, Metadata,
    Status, Usage,
};
pub use stream::{JobStream, StreamEvent};
pub use trace::TraceContext;

/// A fresh job id: a UUID v7 (time-ordered, unique).
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
