//! LLM providers behind one small trait, registered in one place ([`build`]).
//!
//! A provider turns a [`ProviderRequest`] into its native wire request, and its answer (or
//! failure) back into a [`ProviderResponse`] or a classified [`ProviderError`]. The pipeline
//! acts on the error's code and [`Disposition`] only; it never inspects HTTP itself.
//!
//! | kind | module | structured output |
//! |---|---|---|
//! | `openai` | [`openai`] | `response_format: json_schema`, strict-compatible schema when `strict` |
//! | `anthropic` | [`anthropic`] | a forced tool whose `input_schema` is the job's schema |
//! | `gemini` | [`gemini`] | `responseMimeType` + `responseSchema` (unsupported keywords stripped) |
//! | `openai_compatible` | [`openai_compatible`] | `json_schema`, or `json_object` + schema in the prompt |
//!
//! Shared plumbing: [`http`] (client, send, scrubbing), [`status`] (one classifier of
//! failures, with each provider's own error words), [`retry_hint`] (the retry hints in a provider's answer).

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod openai_compatible;
pub mod retry_hint;
pub mod status;

use crate::config::{ProviderConfig, ProviderSettings};
use futures::future::BoxFuture;
use quarry_schemas::job::ImageMime;
use quarry_schemas::{ErrorCode, FinishReason, InputPart, Usage};
use secrecy::SecretString;
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;
use std::time::Duration;

/// What the pipeline asks of a provider for one attempt. Borrows from the job and from its
/// compiled schema.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRequest<'a> {
    /// The provider's model id.
    pub model: &'a str,
    /// System instructions.
    pub instructions: Option<&'a str>,
    /// Content parts, in order.
    pub input: &'a [InputPart],
    /// JSON mode: the schema the answer must satisfy, and its name. The pipeline lends the
    /// tree it keeps per distinct schema.
    pub json_schema: Option<(&'a str, &'a Value)>,
    /// The same schema as compact JSON text, when the caller has it (the pipeline keeps it
    /// per distinct schema): a provider that sends the schema unchanged copies this instead
    /// of serialising the tree. `None`: the tree is serialised.
    pub schema_text: Option<&'a RawValue>,
    /// Output token bound: the job's, else its provider's or the fleet's default (always
    /// sent, whatever the kind).
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Reasoning effort, for the provider's own control.
    pub reasoning: Option<quarry_schemas::Reasoning>,
    /// Stop sequences.
    pub stop: Option<&'a [String]>,
    /// Timeout of this attempt.
    pub timeout: Duration,
    /// The credential for this attempt (the key pool picks it).
    pub api_key: Option<&'a SecretString>,
    /// Earlier answers of this job that were rejected, oldest first: each becomes an
    /// assistant turn followed by a user turn asking for a corrected answer.
    pub repairs: &'a [Repair],
    /// JSON mode without a schema of the job's own (`json_mode`): `json_schema` is the
    /// any-object schema, and a provider with a native JSON object mode uses that instead.
    pub any_object: bool,
    /// W3C trace context of this attempt: `traceparent` (a child span of the job's) and
    /// `tracestate`, sent as HTTP headers.
    pub trace: Option<(crate::trace::TraceParent, Option<&'a str>)>,
    /// Most schema nodes a provider's rewrite of `json_schema` may produce
    /// (`worker.max_schema_nodes`); past it the attempt fails `INVALID_REQUEST`.
    pub max_schema_nodes: usize,
    /// A streaming job's sink: the attempt streams from the provider and hands each delta of
    /// the answer to it (`None`: the answer is read whole).
    pub sink: Option<&'a crate::stream::ChunkSink>,
}

/// The schema a request carries: the job's own, as the text the pipeline keeps per distinct
/// schema (copied, not serialised), or a tree built for this request (OpenAI's rewrites).
#[derive(Debug, Clone, Copy)]
pub enum SentSchema<'a> {
    /// Copied as it is.
    Text(&'a RawValue),
    /// Serialised.
    Tree(&'a Value),
}

impl<'a> SentSchema<'a> {
    /// The request's schema as it is: its text when the caller has it, else its tree.
    pub fn unchanged(request: &ProviderRequest<'a>) -> Option<Self> {
        let (_, tree) = request.json_schema?;
        Some(request.schema_text.map_or(Self::Tree(tree), Self::Text))
    }
}

impl serde::Serialize for SentSchema<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(text) => text.serialize(serializer),
            Self::Tree(tree) => tree.serialize(serializer),
        }
    }
}

impl fmt::Display for SentSchema<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text.get()),
            Self::Tree(tree) => write!(f, "{tree}"),
        }
    }
}

/// A rejected answer and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The answer as the model gave it.
    pub answer: String,
    /// The parse error or the schema violations, as text.
    pub problem: String,
}

impl Repair {
    /// The user turn that asks for a corrected answer.
    pub fn instruction(&self) -> String {
        format!(
            "Your previous answer is not valid: {}\nReply again with only the corrected JSON value, \
             satisfying the JSON Schema, and nothing else.",
            self.problem
        )
    }
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderResponse {
    /// The answer text (JSON text in JSON mode).
    pub text: String,
    /// Tokens of this attempt.
    pub usage: Usage,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Why the answer ended, in the contract's words.
    pub finish_reason: FinishReason,
}

/// What the retry loop should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again, after at least `after` when the provider said so.
    Retry {
        /// The provider's requested wait (Retry-After and its relatives).
        after: Option<Duration>,
    },
    /// The credential is at fault: another key may succeed, this one will not.
    RotateKey,
    /// Trying again cannot help.
    Permanent,
}

/// A classified provider failure. Its message never contains a credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProviderError {
    /// The code the job fails with if this is the last attempt.
    pub code: ErrorCode,
    /// What the retry loop does next.
    pub disposition: Disposition,
    /// What happened, for the result and the logs.
    pub message: String,
}

impl ProviderError {
    /// An error that no retry can fix.
    pub fn permanent(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            disposition: Disposition::Permanent,
            message: message.into(),
        }
    }

    /// An error worth retrying.
    pub fn retry(code: ErrorCode, after: Option<Duration>, message: impl Into<String>) -> Self {
        Self {
            code,
            disposition: Disposition::Retry { after },
            message: message.into(),
        }
    }
}

/// One provider: a bounded label, what it accepts, and one call.
pub trait Provider: Send + Sync {
    /// Bounded metrics label of the wire format (`openai`, `anthropic`, ...).
    fn kind(&self) -> &'static str;
    /// Image types the provider accepts.
    fn image_mimes(&self) -> &'static [ImageMime];
    /// One attempt.
    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>>;
}

/// A provider could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("provider `{name}`: {reason}")]
pub struct BuildError {
    /// The provider's configured name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// Builds the provider a config section describes, with its kind's own settings. The only
/// match on [`ProviderSettings`].
pub fn build(name: &str, config: &ProviderConfig) -> Result<Box<dyn Provider>, BuildError> {
    Ok(match &config.settings {
        ProviderSettings::Openai(settings) => {
            Box::new(openai::OpenAi::new(name, config, settings)?)
        }
        ProviderSettings::Anthropic(settings) => {
            Box::new(anthropic::Anthropic::new(name, config, settings)?)
        }
        ProviderSettings::Gemini => Box::new(gemini::Gemini::new(name, config)?),
        ProviderSettings::OpenaiCompatible(settings) => Box::new(
            openai_compatible::OpenAiCompatible::new(name, config, settings)?,
        ),
    })
}
