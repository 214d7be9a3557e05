//! LLM providers behind one small trait, registered in one place ([`build`]).
//!
//! A provider turns a [`ProviderRequest`] into its native wire request, and its answer (or
//! failure) back into a [`ProviderResponse`] or a classified [`ProviderError`]. The retry loop
//! in the pipeline acts on the error's [`Disposition`] only; it never inspects HTTP itself.

pub mod openai_compatible;

use crate::config::{ProviderConfig, ProviderKind};
use futures::future::BoxFuture;
use quarry_schemas::{ErrorCode, InputPart, Usage};
use serde_json::Value;
use std::time::Duration;

/// What the pipeline asks of a provider for one attempt. Borrows from the job.
#[derive(Debug, Clone, Copy)]
pub struct ProviderRequest<'a> {
    /// The provider's model id.
    pub model: &'a str,
    /// System instructions.
    pub instructions: Option<&'a str>,
    /// Content parts, in order.
    pub input: &'a [InputPart],
    /// JSON mode: the schema the answer must satisfy, and its name.
    pub json_schema: Option<(&'a str, &'a Value)>,
    /// Output token bound.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Stop sequences.
    pub stop: Option<&'a [String]>,
    /// Timeout of this attempt.
    pub timeout: Duration,
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
}

/// What the retry loop should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again, after at least `after` when the provider said so.
    Retry {
        /// The provider's requested wait (Retry-After).
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

/// One provider: a bounded label and one call.
pub trait Provider: Send + Sync {
    /// Bounded metrics label of the wire format (`openai_compatible`, ...).
    fn kind(&self) -> &'static str;
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

/// Builds the provider a config section describes. The only match on [`ProviderKind`].
pub fn build(name: &str, config: &ProviderConfig) -> Result<Box<dyn Provider>, BuildError> {
    match config.kind {
        ProviderKind::OpenaiCompatible => Ok(Box::new(openai_compatible::OpenAiCompatible::new(
            name, config,
        )?)),
    }
}

/// Parses a `Retry-After` header value given in seconds (HTTP dates are not used by LLM APIs).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    }
}
