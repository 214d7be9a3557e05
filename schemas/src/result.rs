//! The result message (`result.v1`): what a worker answers.

use crate::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Wire version tag of a result message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultVersion {
    /// `result.v1`
    #[default]
    #[serde(rename = "result.v1")]
    V1,
}

/// Whether the job succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The answer is in `text` (and `parsed` in JSON mode).
    Ok,
    /// The reason is in `error`.
    Error,
}

/// Media type of a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentType {
    /// JSON mode: `parsed` holds the value.
    #[serde(rename = "application/json")]
    Json,
    /// Free text.
    #[serde(rename = "text/plain")]
    Text,
}

/// Why the model's answer ended, the same words for every provider kind.
///
/// | finish_reason | OpenAI and compatible | Anthropic | Gemini |
/// |---|---|---|---|
/// | `stop` | `stop` | `end_turn`, `tool_use` | `STOP` |
/// | `length` | `length` | `max_tokens` | `MAX_TOKENS` |
/// | `stop_sequence` | (reported as `stop`) | `stop_sequence` | (reported as `STOP`) |
/// | `content_filter` | `content_filter` | `refusal` | `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII` |
/// | `other` | anything else | anything else | anything else |
///
/// A reader meeting a word a newer worker added reads `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its answer by itself.
    Stop,
    /// Cut at the output bound (`max_tokens`): the text is incomplete.
    Length,
    /// One of the job's `stop` sequences ended it (where the provider says so).
    StopSequence,
    /// The provider's safety system withheld or cut the answer.
    ContentFilter,
    /// Another reason, or one this version does not know.
    #[serde(other)]
    Other,
}

impl FinishReason {
    /// Every reason, in the schema's order.
    pub const ALL: [FinishReason; 5] = [
        Self::Stop,
        Self::Length,
        Self::StopSequence,
        Self::ContentFilter,
        Self::Other,
    ];

    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::StopSequence => "stop_sequence",
            Self::ContentFilter => "content_filter",
            Self::Other => "other",
        }
    }
}

/// Token usage summed over every provider attempt of the job. Like every result-side type, it
/// ignores fields a newer worker adds (`docs/wire-contract.md`, "Compatibility").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, including cached ones.
    pub input_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache (a part of `input_tokens`):
    /// OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`, Gemini
    /// `cachedContentTokenCount`.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (a part of `input_tokens`):
    /// Anthropic `cache_creation_input_tokens`; 0 where the provider reports none.
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Their sum as the provider reported it.
    pub total_tokens: u64,
}

impl Usage {
    /// Adds another attempt's usage.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WireError", into = "WireError")]
pub struct ErrorInfo {
    /// Stable code; [`ErrorCode::Unknown`] for a code this version does not know.
    pub code: ErrorCode,
    /// Human-readable explanation. Never contains a secret.
    pub message: String,
    /// Whether the same job submitted again may succeed.
    pub retryable: bool,
    /// Structured detail, e.g. validation errors.
    pub details: Option<Value>,
    /// The wire text of an [`ErrorCode::Unknown`] code, kept as it came.
    pub unknown_code: Option<String>,
}

impl ErrorInfo {
    /// An error with the code's default `retryable`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.default_retryable(),
            details: None,
            unknown_code: None,
        }
    }

    /// The code as it came on the wire: a known code's string, or an unknown one's text.
    pub fn code_text(&self) -> &str {
        match (self.code, &self.unknown_code) {
            (ErrorCode::Unknown, Some(text)) => text,
            (code, _) => code.as_str(),
        }
    }
}

/// [`ErrorInfo`] as it is written: the code as text, so that an unknown one survives a
/// round trip.
#[derive(Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
    retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

impl From<WireError> for ErrorInfo {
    fn from(wire: WireError) -> Self {
        let known = ErrorCode::ALL.into_iter().find(|c| c.as_str() == wire.code);
        Self {
            code: known.unwrap_or(ErrorCode::Unknown),
            unknown_code: known.is_none().then_some(wire.code),
            message: wire.message,
            retryable: wire.retryable,
            details: wire.details,
        }
    }
}

impl From<ErrorInfo> for WireError {
    fn from(error: ErrorInfo) -> Self {
        Self {
            code: error.code_text().to_owned(),
            message: error.message,
            retryable: error.retryable,
            details: error.details,
        }
    }
}

/// The outcome of one job. Mirrors `json/result.v1.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Always [`ResultVersion::V1`].
    pub version: ResultVersion,
    /// The job's id.
    pub job_id: String,
    /// The job's `custom_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// The job's `batch_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Success or failure.
    pub status: Status,
    /// The answer as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The answer as JSON, valid against the job's schema (JSON mode, success only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsed: Option<Value>,
    /// Media type of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
    /// Configured provider name that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Provider model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Why the last answer the model gave ended (absent when no answer came back). A text
    /// answer cut at `max_tokens` is `ok` with `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Tokens over all attempts.
    pub usage: Usage,
    /// Cost of every attempt in US dollars (absent without a price for the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Time in the worker, milliseconds.
    pub latency_ms: u64,
    /// Time from the producer's publish (`x-quarry-published-ms`) to the worker's start,
    /// milliseconds, by the two hosts' clocks (absent without that header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// Provider calls made.
    pub attempts: u32,
    /// The job's `purpose`, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The job's `agent_id`, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The job's metadata, byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::Metadata>,
    /// Why it failed (`status == error` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl JobResult {
    /// A failed result for a job id, with nothing else known.
    pub fn failed(job_id: impl Into<String>, error: ErrorInfo) -> Self {
        Self {
            version: ResultVersion::V1,
            job_id: job_id.into(),
            custom_id: None,
            batch_id: None,
            status: Status::Error,
            text: None,
            parsed: None,
            content_type: None,
            provider: None,
            model: None,
            finish_reason: None,
            usage: Usage::default(),
            cost_usd: None,
            latency_ms: 0,
            queue_ms: None,
            attempts: 0,
            purpose: None,
            agent_id: None,
            metadata: None,
            error: Some(error),
        }
    }

    /// Whether the job succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}
