//! The job message (`job.v1`): what a plugin asks for.

use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::json_schema::JsonSchema;

/// Wire version tag of a job message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobVersion {
    /// `job.v1`
    #[default]
    #[serde(rename = "job.v1")]
    V1,
}

/// One structured-extraction job. Mirrors `json/job.v1.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Always [`JobVersion::V1`].
    pub version: JobVersion,
    /// Unique job id chosen by the producer: the idempotency and deduplication key.
    pub id: String,
    /// The plugin's own id for this item; echoed on the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// Groups jobs submitted together; echoed on the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// System instructions for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// The content to extract from, in order. Never empty.
    pub input: Vec<InputPart>,
    /// JSON Schema the answer must satisfy; its presence turns on JSON mode. Kept as JSON
    /// text ([`JsonSchema`]): build it with `json!({...}).into()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchema>,
    /// JSON mode without a schema: `true` asks for any JSON object, parsed and returned
    /// (the repair loop included). Implied by `json_schema`; `false` with one is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_mode: Option<bool>,
    /// Stream the answer: the worker publishes `chunk.v1` messages (text deltas, and in JSON
    /// mode the partial object) to `reply_to` before the final `result.v1`, which is
    /// unchanged and authoritative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Name of the schema for providers that want one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_name: Option<String>,
    /// What to run the job on: a model alias from the worker configuration (`fast`), or a
    /// `provider/model` target (`openai/gpt-4.1-mini`) the plugin's policy grants, either
    /// optionally with a credential profile after `@` (`fast@premium`). With `provider` set,
    /// the provider's own model id, taken as it is (no `@` suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A configured provider (`[providers.NAME]`) to call `model` on directly, for model ids
    /// that `provider/model` cannot carry (an `@` in them). Needs `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Credential profile: which of the provider's keys serve the job. The plugin's policy
    /// must allow it. Must agree with a profile given as a `model@profile` suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Upper bound on output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// How much the model reasons before it answers, mapped to each provider's own control
    /// (`docs/providers.md`). Absent: the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Stop sequences (at most 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// Timeout of one provider attempt, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Absolute deadline, Unix epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// What the extraction is for: in the job's span and log lines and echoed on its result
    /// (never a metric label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The agent the plugin runs the job for, when the plugin's policy lets it say
    /// (`agent_id_override`): in the job's span and log lines and echoed on its result
    /// (never a metric label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Opaque value echoed back on the result, byte for byte ([`Metadata`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::Metadata>,
}

/// A reasoning effort, in the contract's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reasoning {
    /// As little as the model allows.
    Off,
    /// A little.
    Low,
    /// More.
    Medium,
    /// The most.
    High,
}

impl Reasoning {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// One piece of input content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, base64-encoded.
    Image(ImagePart),
}

/// An image input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePart {
    /// Its media type.
    pub mime: ImageMime,
    /// Standard base64 (with padding) of the image bytes.
    pub data: String,
}

/// Image media types Quarry accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageMime {
    /// `image/png`
    #[serde(rename = "image/png")]
    Png,
    /// `image/jpeg`
    #[serde(rename = "image/jpeg")]
    Jpeg,
    /// `image/webp`
    #[serde(rename = "image/webp")]
    Webp,
    /// `image/gif`
    #[serde(rename = "image/gif")]
    Gif,
}

impl ImageMime {
    /// The media type string.
    pub const fn as_str(self) -> &'static str {
        match self {
            ImageMime::Png => "image/png",
            ImageMime::Jpeg => "image/jpeg",
            ImageMime::Webp => "image/webp",
            ImageMime::Gif => "image/gif",
        }
    }
}

/// Limits of the wire contract (the JSON Schema states the same numbers).
pub mod limits {
    /// Longest `id`.
    pub const MAX_ID_LEN: usize = 128;
    /// Longest `custom_id`.
    pub const MAX_CUSTOM_ID_LEN: usize = 256;
    /// Longest `batch_id`.
    pub const MAX_BATCH_ID_LEN: usize = 128;
    /// Longest `model`.
    pub const MAX_MODEL_LEN: usize = 128;
    /// Longest `profile`.
    pub const MAX_PROFILE_LEN: usize = 64;
    /// Longest `purpose`.
    pub const MAX_PURPOSE_LEN: usize = 128;
    /// Most stop sequences.
    pub const MAX_STOP: usize = 4;
    /// Largest `max_tokens`.
    pub const MAX_MAX_TOKENS: u32 = 1_000_000;
    /// Longest `agent_id`.
    pub const MAX_AGENT_ID_LEN: usize = 128;
    /// Longest `provider`.
    pub const MAX_PROVIDER_LEN: usize = 64;
    /// Smallest `timeout_ms`: a provider bills an attempt it started whether or not the
    /// caller waits, so attempts cut shorter than any model can answer only spend.
    pub const MIN_TIMEOUT_MS: u64 = 1_000;
    /// Largest `metadata`, as JSON text: it is echoed on every result and stored with it.
    pub const MAX_METADATA_BYTES: usize = 16 * 1024;
    /// Largest `timeout_ms` (one hour).
    pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
}

/// Why a decoded job breaks the contract. Each names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInvalid {
    /// JSON pointer-like path of the field, e.g. `/input/2/data`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for JobInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for JobInvalid {}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> JobInvalid {
    JobInvalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Job {
    /// A job with the given id and input and every option unset.
    pub fn new(id: impl Into<String>, input: Vec<InputPart>) -> Self {
        Self {
            version: JobVersion::V1,
            id: id.into(),
            custom_id: None,
            batch_id: None,
            instructions: None,
            input,
            json_schema: None,
            json_mode: None,
            stream: None,
            schema_name: None,
            model: None,
            provider: None,
            profile: None,
            max_tokens: None,
            reasoning: None,
            temperature: None,
            stop: None,
            timeout_ms: None,
            deadline_ms: None,
            purpose: None,
            agent_id: None,
            metadata: None,
        }
    }

    /// Checks what serde's types cannot: lengths, ranges, non-empty input, base64 and schema
    /// shape. Serde already rejected unknown fields and wrong types. Whether `json_schema` is a
    /// *valid* JSON Schema is left to the worker, which compiles it.
    pub fn check(&self) -> Result<(), JobInvalid> {
        check_len("/id", &self.id, 1, limits::MAX_ID_LEN)?;
        if let Some(c) = &self.custom_id {
            check_len("/custom_id", c, 0, limits::MAX_CUSTOM_ID_LEN)?;
        }
        if let Some(b) = &self.batch_id {
            check_len("/batch_id", b, 0, limits::MAX_BATCH_ID_LEN)?;
            // A batch's reply queue carries results only: its collectors count them.
            if self.streams() {
                return Err(invalid("/stream", "a batch job cannot stream"));
            }
        }
        if let Some(m) = &self.model {
            check_len("/model", m, 1, limits::MAX_MODEL_LEN)?;
        }
        if let Some(p) = &self.provider {
            check_len("/provider", p, 1, limits::MAX_PROVIDER_LEN)?;
            if self.model.is_none() {
                return Err(invalid("/model", "is required with `provider`"));
            }
        }
        if let Some(p) = &self.profile
            && !is_profile_name(p)
        {
            return Err(invalid("/profile", "must match ^[A-Za-z0-9_:-]{1,64}$"));
        }
        if let Some(p) = &self.purpose {
            check_len("/purpose", p, 0, limits::MAX_PURPOSE_LEN)?;
        }
        if let Some(a) = &self.agent_id {
            check_len("/agent_id", a, 1, limits::MAX_AGENT_ID_LEN)?;
        }
        if self.input.is_empty() {
            return Err(invalid("/input", "must contain at least one part"));
        }
        for (i, part) in self.input.iter().enumerate() {
            if let InputPart::Image(image) = part
                && !is_base64(&image.data)
            {
                return Err(invalid(
                    format!("/input/{i}/data"),
                    "is not non-empty standard base64 (RFC 4648 `+` `/` alphabet, padded with `=`, \
                     no line breaks, no `data:` prefix)",
                ));
            }
        }
        if let Some(schema) = &self.json_schema
            && !schema.is_object()
        {
            return Err(invalid("/json_schema", "must be a JSON object"));
        }
        if self.json_mode == Some(false) && self.json_schema.is_some() {
            return Err(invalid(
                "/json_mode",
                "is false, but json_schema asks for JSON output",
            ));
        }
        if let Some(name) = &self.schema_name
            && !is_schema_name(name)
        {
            return Err(invalid("/schema_name", "must match ^[A-Za-z0-9_.-]{1,64}$"));
        }
        if let Some(n) = self.max_tokens
            && !(1..=limits::MAX_MAX_TOKENS).contains(&n)
        {
            return Err(invalid("/max_tokens", "must be between 1 and 1000000"));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(invalid("/temperature", "must be between 0 and 2"));
        }
        if let Some(stop) = &self.stop {
            if stop.len() > limits::MAX_STOP {
                return Err(invalid("/stop", "at most 4 stop sequences"));
            }
            if stop.iter().any(String::is_empty) {
                return Err(invalid("/stop", "stop sequences must not be empty"));
            }
        }
        if let Some(t) = self.timeout_ms
            && !(limits::MIN_TIMEOUT_MS..=limits::MAX_TIMEOUT_MS).contains(&t)
        {
            return Err(invalid("/timeout_ms", "must be between 1000 and 3600000"));
        }
        if let Some(metadata) = &self.metadata {
            let bytes = metadata.as_str().len();
            if bytes > limits::MAX_METADATA_BYTES {
                return Err(invalid(
                    "/metadata",
                    format!(
                        "is {bytes} bytes as JSON; at most {} are allowed",
                        limits::MAX_METADATA_BYTES
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the job asks for its answer streamed (`chunk.v1` before the result).
    pub fn streams(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether the job asks for JSON output: a schema, or `json_mode`.
    pub fn json_mode(&self) -> bool {
        self.json_schema.is_some() || self.json_mode == Some(true)
    }
}

fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), JobInvalid> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(invalid(
            field,
            format!("length {n} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

/// 1 to `max` ASCII letters, digits, `_`, `-` and the bytes of `also`.
fn is_name(s: &str, max: usize, also: &[u8]) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || also.contains(&b))
}

/// A credential profile name, `^[A-Za-z0-9_:-]{1,64}$` (`openai-codex:work`). It has no `@`,
/// so the profile of `model@profile` is what follows the last `@`.
pub fn is_profile_name(s: &str) -> bool {
    is_name(s, limits::MAX_PROFILE_LEN, b":")
}

/// A schema name, `^[A-Za-z0-9_.-]{1,64}$` (`receipt.evidence`). Providers that restrict
/// names further get it with `.` as `_`.
pub fn is_schema_name(s: &str) -> bool {
    is_name(s, 64, b".")
}

/// Standard alphabet, padded, non-empty. A scan, not a decode: images pass through undecoded.
fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return false;
    }
    let body_end = b.len() - b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    // Images are megabytes: test a chunk at a time without branching per byte, which the
    // compiler turns into vector compares (an order of magnitude faster than `all`).
    b[..body_end].chunks(64).all(|chunk| {
        chunk.iter().fold(true, |ok, &c| {
            ok & ((c.wrapping_sub(b'A') < 26)
                | (c.wrapping_sub(b'a') < 26)
                | (c.wrapping_sub(b'0') < 10)
                | (c == b'+')
                | (c == b'/'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_scan_accepts_padded_and_rejects_garbage() {
        assert!(is_base64("aGVsbG8="));
        assert!(is_base64("aGVsbG8h"));
        assert!(is_base64("aGk="));
        assert!(is_base64("aA=="));
        assert!(!is_base64(""));
        assert!(!is_base64("aGVsbG8"));
        assert!(!is_base64("aGV=bG8h"));
        assert!(!is_base64("a==="));
        assert!(!is_base64("aGVsbG8*"));
        // Long inputs, with the bad byte in every position of a 64-byte chunk.
        let long = "QUJD".repeat(64);
        assert!(is_base64(&long));
        for at in 0..long.len() {
            let mut bad = long.clone().into_bytes();
            bad[at] = b'-';
            assert!(!is_base64(std::str::from_utf8(&bad).unwrap()), "{at}");
        }
    }

    #[test]
    fn check_names_the_field() {
        let mut job = Job::new("j1", vec![]);
        assert_eq!(job.check().map_err(|e| e.field), Err("/input".to_owned()));
        job.input.push(InputPart::Image(ImagePart {
            mime: ImageMime::Png,
            data: "%%%".into(),
        }));
        assert_eq!(
            job.check().map_err(|e| e.field),
            Err("/input/0/data".to_owned())
        );
        job.input[0] = InputPart::Text { text: "hi".into() };
        job.temperature = Some(3.0);
        assert_eq!(
            job.check().map_err(|e| e.field),
            Err("/temperature".to_owned())
        );
        job.temperature = None;
        job.json_schema = Some(serde_json::json!([1]).into());
        assert_eq!(
            job.check().map_err(|e| e.field),
            Err("/json_schema".to_owned())
        );
        job.json_schema = Some(serde_json::json!({"type": "object"}).into());
        assert_eq!(job.check(), Ok(()));
    }
}
