//! OpenAI chat completions (`POST {base_url}/chat/completions`) as spoken by OpenAI-compatible
//! servers (vLLM, llama.cpp, Ollama, ...). The [`super::openai`] module reuses this wire code
//! with OpenAI's own options.
//!
//! JSON mode sends `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`
//! or, for servers without schema support (`native_json_schema = false`), `{type:
//! "json_object"}` with the schema appended to the system message. Images travel as
//! `image_url` parts with `data:` URLs; repairs as assistant + user turns.

use super::http::{
    Auth, HttpClient, RawResponse, body_text, endpoint, failure, malformed, scrub, stream_cut,
};
use super::status::{self, Said};
use super::{
    BuildError, Provider, ProviderError, ProviderRequest, ProviderResponse, SentSchema, retry_hint,
};
use crate::config::ProviderConfig;
use crate::stream::ChunkSink;
use futures::StreamExt;
use futures::future::BoxFuture;
use quarry_schemas::job::ImageMime;
use quarry_schemas::{ErrorCode, FinishReason, InputPart, Reasoning, Usage};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Image types OpenAI-style servers take.
const IMAGE_MIMES: &[ImageMime] = &[
    ImageMime::Png,
    ImageMime::Jpeg,
    ImageMime::Webp,
    ImageMime::Gif,
];

/// Dialect differences between OpenAI itself and compatible servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Generic server: `max_tokens`; JSON Schema natively or in the prompt.
    Compatible {
        /// `response_format: json_schema` (else `json_object`).
        native_json_schema: bool,
    },
    /// OpenAI: `max_completion_tokens`; `json_schema` with `strict` as configured.
    OpenAi {
        /// `json_schema.strict`.
        strict: bool,
    },
}

/// `[providers.NAME]` settings of kind `openai_compatible`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `native_json_schema`: send the schema as `response_format: json_schema` (else
    /// `json_object` with the schema in the system message).
    pub native_json_schema: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            native_json_schema: true,
        }
    }
}

/// An OpenAI-compatible provider.
pub struct OpenAiCompatible {
    http: HttpClient,
    url: reqwest::Url,
    flavor: Flavor,
}

impl OpenAiCompatible {
    /// A generic OpenAI-compatible server.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        settings: &Settings,
    ) -> Result<Self, BuildError> {
        let flavor = Flavor::Compatible {
            native_json_schema: settings.native_json_schema,
        };
        Self::with_flavor(name, config, flavor)
    }

    pub(crate) fn with_flavor(
        name: &str,
        config: &ProviderConfig,
        flavor: Flavor,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            http: HttpClient::new(name, config, Auth::Bearer, &[])?,
            url: endpoint(name, &format!("{}/chat/completions", config.base_url()))?,
            flavor,
        })
    }

    /// The wire request; `schema` is the schema to send (OpenAI may send a strict rewrite).
    pub(crate) fn body<'a>(
        &self,
        request: &'a ProviderRequest<'a>,
        schema: Option<SentSchema<'a>>,
    ) -> ChatRequest<'a> {
        let (native, strict) = match self.flavor {
            Flavor::Compatible { native_json_schema } => (native_json_schema, false),
            Flavor::OpenAi { strict } => (true, strict),
        };
        // JSON object mode (any object) names no schema; the system message says JSON, as
        // OpenAI requires of that mode.
        let schema_hint = if native && !request.any_object {
            None
        } else {
            schema
        };
        let mut messages = Vec::with_capacity(2 + 2 * request.repairs.len());
        if request.instructions.is_some() || schema_hint.is_some() {
            messages.push(Message::System(SystemContent {
                instructions: request.instructions,
                schema_hint,
            }));
        }
        messages.push(Message::User(UserContent::Parts(
            request.input.iter().map(ContentPart).collect(),
        )));
        for repair in request.repairs {
            messages.push(Message::Assistant(&repair.answer));
            messages.push(Message::User(UserContent::Text(repair.instruction())));
        }
        let response_format = match (request.json_schema, schema) {
            (Some(_), _) if request.any_object => Some(ResponseFormat::JsonObject),
            (Some((name, _)), Some(schema)) if native => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat {
                    name,
                    schema,
                    strict,
                },
            }),
            (Some(_), _) => Some(ResponseFormat::JsonObject),
            (None, _) => None,
        };
        let (max_tokens, max_completion_tokens) = match self.flavor {
            Flavor::Compatible { .. } => (Some(request.max_tokens), None),
            Flavor::OpenAi { .. } => (None, Some(request.max_tokens)),
        };
        ChatRequest {
            model: request.model,
            messages,
            max_tokens,
            max_completion_tokens,
            temperature: request.temperature,
            reasoning_effort: request.reasoning.map(reasoning_effort),
            stop: request.stop,
            response_format,
            stream: request.sink.is_some(),
            stream_options: request.sink.map(|_| StreamOptions {
                include_usage: true,
            }),
        }
    }

    /// One attempt, sending `schema` as the structured-output schema.
    pub(crate) async fn complete(
        &self,
        request: &ProviderRequest<'_>,
        schema: Option<SentSchema<'_>>,
    ) -> Result<ProviderResponse, ProviderError> {
        let body = serde_json::to_vec(&self.body(request, schema))
            .map_err(|e| ProviderError::permanent(ErrorCode::Internal, e.to_string()))?;
        if let Some(sink) = request.sink {
            return self.streamed(request, body, sink).await;
        }
        let raw = self
            .http
            .post_json(
                self.url.clone(),
                body,
                request.timeout,
                request.api_key,
                request.trace.as_ref(),
            )
            .await?;
        if !raw.status.is_success() {
            return Err(self.classify(&raw, request.api_key));
        }
        let answer: ChatResponse =
            serde_json::from_slice(&raw.body).map_err(|e| malformed("chat completion", e))?;
        let Some(choice) = answer.choices.into_iter().next() else {
            return Err(malformed("chat completion", "no choices"));
        };
        if let Some(refusal) = choice.message.refusal {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!("the model refused: {}", scrub(&refusal, request.api_key)),
            ));
        }
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                "the provider's content filter withheld the answer",
            ));
        }
        Ok(ProviderResponse {
            text: choice.message.content.unwrap_or_default(),
            usage: answer.usage.map(Usage::from).unwrap_or_default(),
            model: answer.model.unwrap_or_else(|| request.model.to_owned()),
            finish_reason: finish_reason(choice.finish_reason.as_deref()),
        })
    }

    /// One attempt streamed: each content delta goes to `sink` as it arrives; the answer is
    /// what they make, with the usage chunk's tokens.
    async fn streamed(
        &self,
        request: &ProviderRequest<'_>,
        body: Vec<u8>,
        sink: &ChunkSink,
    ) -> Result<ProviderResponse, ProviderError> {
        let mut events = self
            .http
            .post_stream(self.url.clone(), body, request, |raw| {
                self.classify(raw, request.api_key)
            })
            .await?;
        let mut answer = ChatStream::default();
        while let Some(event) = events.next().await {
            if answer.event(&event?.data, sink)? {
                return answer.finish(request);
            }
        }
        // Some servers end with the usage chunk and no `[DONE]`: the finish reason says the
        // answer is whole.
        if answer.finish_reason.is_some() {
            return answer.finish(request);
        }
        Err(stream_cut())
    }

    /// Every HTTP failure maps to a code and a disposition here, and only here.
    pub(crate) fn classify(&self, raw: &RawResponse, key: Option<&SecretString>) -> ProviderError {
        let detail = serde_json::from_slice::<ErrorEnvelope>(&raw.body)
            .ok()
            .map(|e| e.error);
        let text = detail
            .as_ref()
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| body_text(&raw.body));
        let code_field = detail
            .as_ref()
            .and_then(|e| e.code.as_ref())
            .and_then(Value::as_str);
        let after = retry_hint::retry_after(&raw.headers);
        // Only the API's own error object condemns the key: a 401 page from a proxy or a
        // gateway in between is retried with the key kept in rotation.
        let structured = detail
            .as_ref()
            .is_some_and(|e| e.code.is_some() || e.kind.is_some());
        let said = match (raw.status.as_u16(), code_field) {
            (401 | 403, _) if structured => Some(Said::KeyRejected),
            (_, Some("insufficient_quota")) => Some(Said::QuotaSpent),
            _ => None,
        };
        let (code, disposition) = status::classify(raw.status.as_u16(), said, after);
        // A provider's 401 text may quote part of the key; say nothing of it.
        failure(raw.status, code, disposition, &text, key)
    }
}

impl Provider for OpenAiCompatible {
    fn kind(&self) -> &'static str {
        "openai_compatible"
    }

    fn image_mimes(&self) -> &'static [ImageMime] {
        IMAGE_MIMES
    }

    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        Box::pin(self.complete(request, SentSchema::unchanged(request)))
    }
}

// ---- wire types (borrowing) ----

#[derive(Serialize)]
pub(crate) struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    /// A streamed answer, with the usage chunk at its end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", content = "content", rename_all = "snake_case")]
enum Message<'a> {
    System(SystemContent<'a>),
    User(UserContent<'a>),
    Assistant(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'a> {
    Parts(Vec<ContentPart<'a>>),
    Text(String),
}

/// The system message: the job's instructions, plus the schema when the server cannot take it
/// natively. Serialised as one string.
struct SystemContent<'a> {
    instructions: Option<&'a str>,
    schema_hint: Option<SentSchema<'a>>,
}

impl Serialize for SystemContent<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for SystemContent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(instructions) = self.instructions {
            f.write_str(instructions)?;
        }
        if let Some(schema) = self.schema_hint {
            if self.instructions.is_some() {
                f.write_str("\n\n")?;
            }
            write!(
                f,
                "Answer with a single JSON value that satisfies this JSON Schema:\n{schema}"
            )?;
        }
        Ok(())
    }
}

struct ContentPart<'a>(&'a InputPart);

impl Serialize for ContentPart<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        match self.0 {
            InputPart::Text { text } => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
            }
            InputPart::Image(image) => {
                map.serialize_entry("type", "image_url")?;
                map.serialize_entry(
                    "image_url",
                    &ImageUrl {
                        mime: image.mime.as_str(),
                        data: &image.data,
                    },
                )?;
            }
        }
        map.end()
    }
}

/// `{"url": "data:<mime>;base64,<data>"}`, written without building the URL in memory first.
struct ImageUrl<'a> {
    mime: &'a str,
    data: &'a str,
}

impl Serialize for ImageUrl<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct DataUrl<'a>(&'a ImageUrl<'a>);
        impl fmt::Display for DataUrl<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "data:{};base64,{}", self.0.mime, self.0.data)
            }
        }
        impl Serialize for DataUrl<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("url", &DataUrl(self))?;
        map.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchemaFormat<'a> },
    JsonObject,
}

#[derive(Serialize)]
struct JsonSchemaFormat<'a> {
    name: &'a str,
    schema: SentSchema<'a>,
    strict: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AssistantMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AssistantMessage {
    content: Option<String>,
    refusal: Option<String>,
}

/// A streamed chat completion as its chunks arrive.
#[derive(Default)]
pub(crate) struct ChatStream {
    text: String,
    refusal: String,
    model: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct StreamChunk {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<WireUsage>,
    /// Some servers report a failure mid-stream as an event of its own.
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: StreamDelta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct StreamDelta {
    content: Option<String>,
    refusal: Option<String>,
}

impl ChatStream {
    /// One event's data; `true` at `[DONE]`.
    pub(crate) fn event(&mut self, data: &str, sink: &ChunkSink) -> Result<bool, ProviderError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let chunk: StreamChunk =
            serde_json::from_str(data).map_err(|e| malformed("chat completion chunk", e))?;
        if let Some(error) = chunk.error {
            let text = error.message.unwrap_or_default();
            return Err(ProviderError::retry(
                ErrorCode::ProviderError,
                None,
                format!("the stream failed: {}", scrub(&text, None)),
            ));
        }
        if let Some(model) = chunk.model {
            self.model.get_or_insert(model);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage::from(usage));
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(content) = choice.delta.content {
                sink.delta(&content);
                self.text.push_str(&content);
            }
            if let Some(refusal) = choice.delta.refusal {
                self.refusal.push_str(&refusal);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(false)
    }

    /// The whole answer, refused or withheld as unstreamed.
    pub(crate) fn finish(
        self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        if !self.refusal.is_empty() {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!(
                    "the model refused: {}",
                    scrub(&self.refusal, request.api_key)
                ),
            ));
        }
        if self.finish_reason.as_deref() == Some("content_filter") {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                "the provider's content filter withheld the answer",
            ));
        }
        Ok(ProviderResponse {
            text: self.text,
            usage: self.usage.unwrap_or_default(),
            model: self.model.unwrap_or_else(|| request.model.to_owned()),
            finish_reason: finish_reason(self.finish_reason.as_deref()),
        })
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// `reasoning_effort` of a reasoning effort (the least a model allows is `minimal`).
pub(crate) fn reasoning_effort(reasoning: Reasoning) -> &'static str {
    match reasoning {
        Reasoning::Off => "minimal",
        Reasoning::Low => "low",
        Reasoning::Medium => "medium",
        Reasoning::High => "high",
    }
}

/// `finish_reason` in the contract's words (OpenAI reports a matched stop sequence as `stop`).
pub(crate) fn finish_reason(word: Option<&str>) -> FinishReason {
    match word {
        Some("stop" | "tool_calls" | "function_call") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            cached_input_tokens: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            cache_write_tokens: 0,
            output_tokens: u.completion_tokens,
            total_tokens: u
                .total_tokens
                .unwrap_or(u.prompt_tokens + u.completion_tokens),
        }
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    message: Option<String>,
    code: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Disposition, Repair};
    use quarry_schemas::job::ImagePart;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue};
    use secrecy::SecretString;
    use serde_json::json;
    use std::time::Duration;

    fn provider(native: bool, key: Option<&str>) -> OpenAiCompatible {
        let config = ProviderConfig {
            api_key: key.map(|k| SecretString::from(k.to_owned())),
            ..ProviderConfig::default()
        };
        let settings = Settings {
            native_json_schema: native,
        };
        OpenAiCompatible::new("test", &config, &settings).expect("build")
    }

    fn request<'a>(
        input: &'a [InputPart],
        schema: Option<(&'a str, &'a Value)>,
        repairs: &'a [Repair],
    ) -> ProviderRequest<'a> {
        ProviderRequest {
            model: "m",
            instructions: Some("Extract."),
            input,
            json_schema: schema,
            schema_text: None,
            max_tokens: 100,
            temperature: None,
            reasoning: None,
            stop: None,
            timeout: Duration::from_secs(1),
            api_key: None,
            repairs,
            any_object: false,
            trace: None,
            max_schema_nodes: 10_000,
            sink: None,
        }
    }

    #[test]
    fn native_json_schema_request_has_the_openai_shape() {
        let input = [
            InputPart::Text {
                text: "Coffee 3.50".into(),
            },
            InputPart::Image(ImagePart {
                mime: ImageMime::Png,
                data: "aGk=".into(),
            }),
        ];
        let schema = json!({"type": "object"});
        let p = provider(true, None);
        let req = request(&input, Some(("receipt", &schema)), &[]);
        let body =
            serde_json::to_value(p.body(&req, Some(SentSchema::Tree(&schema)))).expect("serialise");
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Extract."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Coffee 3.50"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
                    ]}
                ],
                "max_tokens": 100,
                "response_format": {"type": "json_schema", "json_schema": {"name": "receipt", "schema": {"type": "object"}, "strict": false}}
            })
        );
    }

    #[test]
    fn repairs_become_assistant_and_user_turns() {
        let input = [InputPart::Text { text: "x".into() }];
        let schema = json!({"type": "object"});
        let repairs = [Repair {
            answer: "{oops".into(),
            problem: "not JSON".into(),
        }];
        let p = provider(true, None);
        let req = request(&input, Some(("s", &schema)), &repairs);
        let body =
            serde_json::to_value(p.body(&req, Some(SentSchema::Tree(&schema)))).expect("serialise");
        let messages = body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 4);
        assert_eq!(
            messages[2],
            json!({"role": "assistant", "content": "{oops"})
        );
        assert_eq!(messages[3]["role"], "user");
        assert!(
            messages[3]["content"]
                .as_str()
                .expect("text")
                .contains("not JSON")
        );
    }

    #[test]
    fn json_object_mode_puts_the_schema_in_the_system_message() {
        let input = [InputPart::Text { text: "x".into() }];
        let schema = json!({"type": "object"});
        let p = provider(false, None);
        let req = request(&input, Some(("s", &schema)), &[]);
        let body =
            serde_json::to_value(p.body(&req, Some(SentSchema::Tree(&schema)))).expect("serialise");
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let system = body["messages"][0]["content"].as_str().expect("string");
        assert!(
            system.starts_with("Extract.\n\nAnswer with a single JSON value"),
            "{system}"
        );
        assert!(system.contains(r#"{"type":"object"}"#), "{system}");
    }

    #[test]
    fn the_schema_text_is_sent_as_the_tree_would_be() {
        let input = [InputPart::Text { text: "x".into() }];
        let schema = json!({"type": "object", "properties": {"total": {"type": "number"}}});
        let text = serde_json::value::to_raw_value(&schema).expect("text");
        for native in [true, false] {
            let p = provider(native, None);
            let tree = request(&input, Some(("s", &schema)), &[]);
            let with_text = ProviderRequest {
                schema_text: Some(&text),
                ..tree
            };
            assert!(matches!(
                SentSchema::unchanged(&with_text),
                Some(SentSchema::Text(_))
            ));
            assert!(matches!(
                SentSchema::unchanged(&tree),
                Some(SentSchema::Tree(_))
            ));
            let from_text =
                serde_json::to_vec(&p.body(&with_text, SentSchema::unchanged(&with_text)))
                    .expect("serialise");
            let from_tree = serde_json::to_vec(&p.body(&tree, SentSchema::unchanged(&tree)))
                .expect("serialise");
            assert_eq!(
                String::from_utf8(from_text).expect("utf-8"),
                String::from_utf8(from_tree).expect("utf-8"),
                "native_json_schema = {native}"
            );
        }
    }

    #[test]
    fn statuses_map_to_codes_and_dispositions() {
        let p = provider(true, Some("sk-secret-canary"));
        let canary = SecretString::from("sk-secret-canary".to_owned());
        let three = Some(Duration::from_secs(3));
        let cases = [
            (400, ErrorCode::InvalidRequest, Disposition::Permanent),
            (401, ErrorCode::AuthFailed, Disposition::RotateKey),
            (403, ErrorCode::AuthFailed, Disposition::RotateKey),
            (404, ErrorCode::ModelUnavailable, Disposition::Permanent),
            (
                429,
                ErrorCode::RateLimited,
                Disposition::Retry { after: three },
            ),
            (
                500,
                ErrorCode::ProviderError,
                Disposition::Retry { after: three },
            ),
            (
                503,
                ErrorCode::ModelUnavailable,
                Disposition::Retry { after: three },
            ),
            (
                529,
                ErrorCode::ModelUnavailable,
                Disposition::Retry { after: three },
            ),
            (418, ErrorCode::ProviderError, Disposition::Permanent),
        ];
        for (status, code, disposition) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from_static("3"));
            let raw = RawResponse {
                status: StatusCode::from_u16(status).expect("status"),
                headers,
                body: br#"{"error": {"message": "Incorrect API key provided: sk-secret-canary", "type": "x"}}"#
                    .to_vec()
                    .into(),
            };
            let e = p.classify(&raw, Some(&canary));
            assert_eq!(
                (e.code, e.disposition),
                (code, disposition),
                "status {status}"
            );
            assert!(
                !e.message.contains("sk-secret-canary"),
                "key leaked for {status}: {}",
                e.message
            );
        }
        let raw = RawResponse {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: HeaderMap::new(),
            body: br#"{"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}"#
                .to_vec()
                .into(),
        };
        let e = p.classify(&raw, Some(&canary));
        assert_eq!(
            (e.code, e.disposition),
            (ErrorCode::CredentialsExhausted, Disposition::RotateKey)
        );
    }

    #[test]
    fn only_the_apis_own_refusal_condemns_a_key() {
        let p = provider(true, Some("sk-secret-canary"));
        for (body, disposition) in [
            (
                &br#"{"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}"#[..],
                Disposition::RotateKey,
            ),
            // A proxy's page, or JSON without the API's error type: retried, key kept.
            (&b"<html><body>401 Authorization Required</body></html>"[..], Disposition::Retry { after: None }),
            (&br#"{"error": {"message": "unauthorised"}}"#[..], Disposition::Retry { after: None }),
        ] {
            let raw = RawResponse {
                status: StatusCode::UNAUTHORIZED,
                headers: HeaderMap::new(),
                body: body.to_vec().into(),
            };
            let e = p.classify(&raw, None);
            assert_eq!((e.code, e.disposition), (ErrorCode::AuthFailed, disposition));
        }
    }

    #[test]
    fn every_held_secret_is_redacted_before_the_text_is_cut() {
        let other = SecretString::from("sk-other-provider-canary".to_owned());
        crate::providers::http::register_secrets([&other]);
        // The key straddles the cut: redacting after cutting would leave its prefix.
        let text = format!("{}sk-other-provider-canary", "x".repeat(490));
        let scrubbed = crate::providers::http::scrub(&text, None);
        assert!(!scrubbed.contains("sk-other"), "{scrubbed}");
        assert!(!scrubbed.contains("sk-"), "{scrubbed}");
    }
}
