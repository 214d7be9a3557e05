//! Quarry's wire contract.
//!
//! - [`job`]: the job message a plugin publishes (`job.v1`).
//! - [`result`]: the result message a worker publishes to the job's `reply_to` (`result.v1`).
//! - [`chunk`]: part of a streamed answer, published before the result (`chunk.v1`).
//! - [`control`]: control messages (`control.v1`: cancel a batch) and their replies.
//! - [`ErrorCode`]: the stable error vocabulary carried by failed results.
//! - [`wire`]: exchange, queue, lane and header names shared by producers and workers.
//! - [`JOB_V1_SCHEMA`], [`RESULT_V1_SCHEMA`]: the JSON Schema files these types mirror, and
//!   [`examples`]: example extraction schemas (receipt, support ticket, CRM note).
//!
//! - [`ordered`] (feature `amqp`): a confirm-mode channel whose confirms each reach their own
//!   publish, for producers and workers alike.
//!
//! The Rust types and the JSON Schemas are kept in step by the tests in `tests/contract.rs`.

pub mod chunk;
pub mod control;
pub mod error_code;
pub mod job;
mod json_schema;
mod metadata;
#[cfg(feature = "amqp")]
pub mod ordered;
pub mod result;
pub mod wire;

pub use chunk::{Chunk, ChunkKind, ResetReason};
pub use error_code::ErrorCode;
pub use job::{ImagePart, InputPart, Job, JsonSchema, Reasoning};
pub use metadata::Metadata;
pub use result::{ErrorInfo, FinishReason, JobResult, Status, Usage};

/// JSON Schema of the job message, version 1.
pub const JOB_V1_SCHEMA: &str = include_str!("../json/job.v1.schema.json");
/// JSON Schema of the control request, version 1.
pub const CONTROL_V1_SCHEMA: &str = include_str!("../json/control.v1.schema.json");
/// JSON Schema of the control reply, version 1.
pub const CONTROL_REPLY_V1_SCHEMA: &str = include_str!("../json/control-reply.v1.schema.json");
/// JSON Schema of the chunk message (part of a streamed answer), version 1.
pub const CHUNK_V1_SCHEMA: &str = include_str!("../json/chunk.v1.schema.json");
/// JSON Schema of the result message, version 1.
pub const RESULT_V1_SCHEMA: &str = include_str!("../json/result.v1.schema.json");

/// Example extraction schemas, as `(name, JSON Schema text)`.
pub mod examples {
    /// Expense record from a receipt.
    pub const RECEIPT: &str = include_str!("../examples/receipt.schema.json");
    /// Support ticket from a customer message.
    pub const SUPPORT_TICKET: &str = include_str!("../examples/support_ticket.schema.json");
    /// CRM note from an email thread.
    pub const CRM_NOTE: &str = include_str!("../examples/crm_note.schema.json");
    /// All of them, by schema name.
    pub const ALL: [(&str, &str); 3] = [
        ("receipt", RECEIPT),
        ("support_ticket", SUPPORT_TICKET),
        ("crm_note", CRM_NOTE),
    ];
}
