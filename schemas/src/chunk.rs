//! The chunk message (`chunk.v1`): part of a streamed answer, published to a streaming job's
//! `reply_to` before its result.
//!
//! A consumer keeps, per job, the text of the deltas it has seen since the last reset: a
//! `delta` appends its `text`, a `reset` drops everything shown so far (the attempt failed,
//! its answer went to the repair loop, or another delivery of the job starts over). Chunks are
//! ordered by `seq` within one delivery of the job; a redelivery starts again at 0 with a
//! reset. The final `result.v1` is authoritative: its `text` equals the deltas concatenated
//! since the last reset.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Wire version tag of a chunk message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkVersion {
    /// `chunk.v1`
    #[default]
    #[serde(rename = "chunk.v1")]
    V1,
}

/// What a chunk does to what the consumer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkKind {
    /// Append `text`.
    Delta,
    /// Drop everything shown so far; the deltas that follow start the answer again.
    Reset,
}

/// Why a reset was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// The attempt failed mid-stream (or before it ended); the next one starts over.
    Retry,
    /// The answer was invalid; the repair request's answer follows.
    Repair,
    /// Another delivery of the job (a worker was lost mid-stream) starts over.
    Redelivered,
    /// The worker maps the provider's answer to the job's schema (OpenAI's strict or wrapped
    /// schemas): the final text follows as one delta.
    Rewritten,
    /// A reason a newer worker added.
    #[serde(other)]
    Other,
}

/// One chunk of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Always `chunk.v1`.
    pub version: ChunkVersion,
    /// The job's `id`.
    pub job_id: String,
    /// Position in this delivery's stream, from 0, without gaps.
    pub seq: u64,
    /// What the chunk does.
    pub kind: ChunkKind,
    /// A delta's text (several provider deltas coalesced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// JSON mode: the best-effort parse of the answer so far (an unfinished string, array or
    /// object closed where it stops); absent while nothing parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Value>,
    /// A reset's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ResetReason>,
}

impl Chunk {
    /// A delta chunk.
    pub fn delta(job_id: &str, seq: u64, text: String, partial: Option<Value>) -> Self {
        Self {
            version: ChunkVersion::V1,
            job_id: job_id.to_owned(),
            seq,
            kind: ChunkKind::Delta,
            text: Some(text),
            partial,
            reason: None,
        }
    }

    /// A reset chunk.
    pub fn reset(job_id: &str, seq: u64, reason: ResetReason) -> Self {
        Self {
            version: ChunkVersion::V1,
            job_id: job_id.to_owned(),
            seq,
            kind: ChunkKind::Reset,
            text: None,
            partial: None,
            reason: Some(reason),
        }
    }
}
