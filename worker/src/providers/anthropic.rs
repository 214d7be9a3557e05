//! Anthropic messages (`POST {base_url}/messages`, `x-api-key`, `anthropic-version`).
//!
//! JSON mode forces a tool: `tools: [{name, description, input_schema}]` with
//! `tool_choice: {type: "tool", name}`, and the answer is the tool call's `input`. The tool's
//! `input_schema` must be an object, so other roots are wrapped in `{"value": ...}` and
//! unwrapped from the answer. The system prompt goes in `system`; `max_tokens` is always set
//! (the job's, else `default_max_tokens`). Overload (529) counts as `MODEL_UNAVAILABLE`, so an
//! alias falls back to its next target.

use super::http::{
    Auth, HttpClient, RawResponse, body_text, endpoint, failure, malformed, stream_cut,
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
use serde_json::{Value, json};

const IMAGE_MIMES: &[ImageMime] = &[
    ImageMime::Png,
    ImageMime::Jpeg,
    ImageMime::Webp,
    ImageMime::Gif,
];
const WRAPPED: &str = "value";

/// `[providers.NAME]` settings of kind `anthropic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `anthropic_version`: the `anthropic-version` header.
    pub version: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: "2023-06-01".to_owned(),
        }
    }
}

/// Anthropic.
pub struct Anthropic {
    http: HttpClient,
    url: reqwest::Url,
}

impl Anthropic {
    /// Builds the client once.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        settings: &Settings,
    ) -> Result<Self, BuildError> {
        let version = [("anthropic-version", settings.version.as_str())];
        Ok(Self {
            http: HttpClient::new(name, config, Auth::Header("x-api-key"), &version)?,
            url: endpoint(name, &format!("{}/messages", config.base_url()))?,
        })
    }

    /// The wire request; `tool_schema` is the (object-rooted) schema of the forced tool.
    fn body<'a>(
        &self,
        request: &'a ProviderRequest<'a>,
        tool_schema: Option<SentSchema<'a>>,
        thinking: Option<Value>,
    ) -> MessagesRequest<'a> {
        let mut messages = Vec::with_capacity(1 + 2 * request.repairs.len());
        messages.push(Message {
            role: "user",
            content: Content::Blocks(request.input.iter().map(Block::from).collect()),
        });
        for repair in request.repairs {
            messages.push(Message {
                role: "assistant",
                content: Content::Text(repair.answer.clone()),
            });
            messages.push(Message {
                role: "user",
                content: Content::Text(repair.instruction()),
            });
        }
        let (tools, tool_choice) = match (request.json_schema, tool_schema) {
            (Some((name, _)), Some(input_schema)) => (
                Some(vec![Tool {
                    name,
                    description: "Record the extracted data. Its input is the answer.",
                    input_schema,
                }]),
                // Thinking cannot go with a forced tool: the model is asked to use it.
                Some(match thinking_on(thinking.as_ref()) {
                    true => json!({"type": "auto"}),
                    false => json!({"type": "tool", "name": name}),
                }),
            ),
            _ => (None, None),
        };
        MessagesRequest {
            model: request.model,
            max_tokens: request.max_tokens,
            system: request.instructions,
            messages,
            tools,
            tool_choice,
            temperature: request.temperature,
            stop_sequences: request.stop,
            thinking,
            stream: request.sink.is_some(),
        }
    }

    async fn call_inner(
        &self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        let schema = request.json_schema.map(|(_, s)| s);
        let wrapped =
            schema.is_some_and(|s| s.get("type").and_then(Value::as_str) != Some("object"));
        let wrapper;
        let tool_schema = match schema {
            Some(s) if wrapped => {
                wrapper =
                    json!({"type": "object", "properties": {WRAPPED: s}, "required": [WRAPPED]});
                Some(SentSchema::Tree(&wrapper))
            }
            _ => SentSchema::unchanged(request),
        };
        let thinking = request
            .reasoning
            .map(|r| thinking(r, request.max_tokens, request.temperature))
            .transpose()?;
        let body = serde_json::to_vec(&self.body(request, tool_schema, thinking))
            .map_err(|e| ProviderError::permanent(ErrorCode::Internal, e.to_string()))?;
        if let Some(sink) = request.sink {
            return self.streamed(request, body, sink, wrapped).await;
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
        let answer: MessagesResponse =
            serde_json::from_slice(&raw.body).map_err(|e| malformed("messages response", e))?;
        if answer.stop_reason.as_deref() == Some("refusal") {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                "the model refused to answer",
            ));
        }
        let text = match request.json_schema {
            Some((name, _)) => {
                let input = answer
                    .content
                    .iter()
                    .find_map(|block| match block {
                        ContentBlock::ToolUse { name: used, input } if used == name => Some(input),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        ProviderError::retry(
                            ErrorCode::OutputInvalid,
                            None,
                            "the model did not call the extraction tool",
                        )
                    })?;
                match (wrapped, input) {
                    (true, Value::Object(map)) => {
                        map.get(WRAPPED).cloned().unwrap_or(Value::Null).to_string()
                    }
                    _ => input.to_string(),
                }
            }
            None => answer
                .content
                .iter()
                .filter_map(|block| match block {
                    ContentBlock::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        };
        Ok(ProviderResponse {
            text,
            usage: answer.usage.map(Usage::from).unwrap_or_default(),
            model: answer.model.unwrap_or_else(|| request.model.to_owned()),
            finish_reason: finish_reason(answer.stop_reason.as_deref()),
        })
    }

    /// One attempt streamed (message events): in JSON mode the forced tool's partial JSON is
    /// the answer's text, otherwise the text blocks'.
    async fn streamed(
        &self,
        request: &ProviderRequest<'_>,
        body: Vec<u8>,
        sink: &ChunkSink,
        wrapped: bool,
    ) -> Result<ProviderResponse, ProviderError> {
        let mut events = self
            .http
            .post_stream(self.url.clone(), body, request, |raw| {
                self.classify(raw, request.api_key)
            })
            .await?;
        let mut answer = MessageStream::new(request.json_schema.map(|(name, _)| name));
        while let Some(event) = events.next().await {
            let event = event?;
            if answer.event(&event.event, &event.data, sink)? {
                return answer.finish(request, wrapped);
            }
        }
        Err(stream_cut())
    }

    /// Every HTTP failure maps to a code and a disposition here, and only here.
    fn classify(&self, raw: &RawResponse, key: Option<&SecretString>) -> ProviderError {
        let detail = serde_json::from_slice::<ErrorEnvelope>(&raw.body)
            .ok()
            .map(|e| e.error);
        let kind = detail
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .unwrap_or("");
        let text = detail
            .as_ref()
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| body_text(&raw.body));
        let after = retry_hint::retry_after(&raw.headers);
        let (code, disposition) = status::classify(raw.status.as_u16(), said(kind), after);
        failure(raw.status, code, disposition, &text, key)
    }
}

/// What Anthropic's error `type` says ([`status`]'s shared words). Only the API's own type
/// condemns a key: a 401 page from a proxy or a gateway in between has none.
pub fn said(kind: &str) -> Option<Said> {
    Some(match kind {
        "authentication_error" | "permission_error" => Said::KeyRejected,
        "billing_error" => Said::QuotaSpent,
        "not_found_error" => Said::NotFound,
        "rate_limit_error" => Said::RateLimited,
        "overloaded_error" => Said::Overloaded,
        "timeout_error" => Said::TimedOut,
        "invalid_request_error" | "request_too_large" => Said::Invalid,
        "api_error" => Said::ServerError,
        _ => return None,
    })
}

impl Provider for Anthropic {
    fn kind(&self) -> &'static str {
        "anthropic"
    }

    fn image_mimes(&self) -> &'static [ImageMime] {
        IMAGE_MIMES
    }

    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        Box::pin(self.call_inner(request))
    }
}

// ---- wire types ----

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

/// `thinking` of a reasoning effort: disabled, or enabled with a budget (1024, 4096 or 16384
/// tokens, kept below `max_tokens` as the API requires). Refused where the API would refuse
/// it: a budget under its minimum of 1024, or a temperature beside thinking.
pub(crate) fn thinking(
    reasoning: Reasoning,
    max_tokens: u32,
    temperature: Option<f64>,
) -> Result<Value, ProviderError> {
    let wanted: u32 = match reasoning {
        Reasoning::Off => return Ok(json!({"type": "disabled"})),
        Reasoning::Low => 1_024,
        Reasoning::Medium => 4_096,
        Reasoning::High => 16_384,
    };
    let budget = wanted.min(max_tokens.saturating_sub(1));
    if budget < 1_024 {
        return Err(ProviderError::permanent(
            ErrorCode::InvalidRequest,
            format!(
                "reasoning `{}` on Anthropic needs max_tokens above 1024 (its thinking budget \
                 is at least 1024 tokens, within max_tokens); this job has {max_tokens}",
                reasoning.as_str()
            ),
        ));
    }
    if temperature.is_some() {
        return Err(ProviderError::permanent(
            ErrorCode::InvalidRequest,
            "Anthropic takes no temperature beside reasoning: leave temperature unset",
        ));
    }
    Ok(json!({"type": "enabled", "budget_tokens": budget}))
}

fn thinking_on(thinking: Option<&Value>) -> bool {
    thinking.is_some_and(|t| t["type"] == "enabled")
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Content<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Blocks(Vec<Block<'a>>),
    Text(String),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    Image { source: ImageSource<'a> },
}

#[derive(Serialize)]
struct ImageSource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    media_type: &'static str,
    data: &'a str,
}

impl<'a> From<&'a InputPart> for Block<'a> {
    fn from(part: &'a InputPart) -> Self {
        match part {
            InputPart::Text { text } => Block::Text { text },
            InputPart::Image(image) => Block::Image {
                source: ImageSource {
                    kind: "base64",
                    media_type: image.mime.as_str(),
                    data: &image.data,
                },
            },
        }
    }
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'static str,
    input_schema: SentSchema<'a>,
}

#[derive(Deserialize)]
struct MessagesResponse {
    model: Option<String>,
    /// Required: a 2xx body without it is no message at all (`PROVIDER_ERROR`), not a model
    /// that skipped the tool.
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// A streamed message as its events arrive.
pub(crate) struct MessageStream<'a> {
    /// JSON mode: the forced tool's name.
    tool: Option<&'a str>,
    /// Whether the block being streamed is the answer's (the tool's input in JSON mode, a
    /// text block otherwise).
    in_answer: bool,
    text: String,
    /// JSON mode: the tool was called.
    called: bool,
    model: Option<String>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        content_block: StartedBlock,
    },
    ContentBlockDelta {
        delta: BlockDelta,
    },
    ContentBlockStop,
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartedMessage {
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartedBlock {
    Text,
    ToolUse {
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct DeltaUsage {
    output_tokens: Option<u64>,
}

impl<'a> MessageStream<'a> {
    pub(crate) fn new(tool: Option<&'a str>) -> Self {
        Self {
            tool,
            in_answer: false,
            text: String::new(),
            called: false,
            model: None,
            stop_reason: None,
            usage: None,
        }
    }

    /// One event; `true` at `message_stop`.
    pub(crate) fn event(
        &mut self,
        _name: &str,
        data: &str,
        sink: &ChunkSink,
    ) -> Result<bool, ProviderError> {
        let event: StreamEvent =
            serde_json::from_str(data).map_err(|e| malformed("message event", e))?;
        match event {
            StreamEvent::MessageStart { message } => {
                self.model = message.model;
                self.usage = message.usage;
            }
            StreamEvent::ContentBlockStart { content_block } => {
                self.in_answer = match (content_block, self.tool) {
                    (StartedBlock::ToolUse { name }, Some(tool)) => name == tool,
                    (StartedBlock::Text, None) => true,
                    _ => false,
                };
                self.called |= self.in_answer && self.tool.is_some();
            }
            StreamEvent::ContentBlockDelta { delta } => {
                let piece = match (delta, self.tool) {
                    (BlockDelta::InputJsonDelta { partial_json }, Some(_)) => partial_json,
                    (BlockDelta::TextDelta { text }, None) => text,
                    _ => return Ok(false),
                };
                if self.in_answer {
                    sink.delta(&piece);
                    self.text.push_str(&piece);
                }
            }
            StreamEvent::ContentBlockStop => self.in_answer = false,
            StreamEvent::MessageDelta { delta, usage } => {
                self.stop_reason = delta.stop_reason.or(self.stop_reason.take());
                if let (Some(total), Some(usage)) =
                    (usage.and_then(|u| u.output_tokens), self.usage.as_mut())
                {
                    usage.output_tokens = total;
                }
            }
            StreamEvent::MessageStop => return Ok(true),
            StreamEvent::Error { error } => {
                let kind = error.kind.as_deref().unwrap_or("");
                // The HTTP status the same error has outside a stream.
                let status = match said(kind) {
                    Some(Said::Overloaded) => 529,
                    Some(Said::RateLimited) => 429,
                    _ => 500,
                };
                let (code, disposition) = status::classify(status, said(kind), None);
                let text = error.message.unwrap_or_default();
                return Err(ProviderError {
                    code,
                    disposition,
                    message: format!("the stream failed: {}", super::http::scrub(&text, None)),
                });
            }
            StreamEvent::Ping | StreamEvent::Other => {}
        }
        Ok(false)
    }

    /// The whole answer, refused or tool-less as unstreamed.
    pub(crate) fn finish(
        self,
        request: &ProviderRequest<'_>,
        wrapped: bool,
    ) -> Result<ProviderResponse, ProviderError> {
        if self.stop_reason.as_deref() == Some("refusal") {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                "the model refused to answer",
            ));
        }
        let text = match self.tool {
            Some(_) if !self.called => {
                return Err(ProviderError::retry(
                    ErrorCode::OutputInvalid,
                    None,
                    "the model did not call the extraction tool",
                ));
            }
            // A tool called without input streams none: its input is `{}`.
            Some(_) if self.text.trim().is_empty() => "{}".to_owned(),
            Some(_) if wrapped => match serde_json::from_str::<Value>(&self.text) {
                Ok(Value::Object(map)) => {
                    map.get(WRAPPED).cloned().unwrap_or(Value::Null).to_string()
                }
                _ => self.text,
            },
            _ => self.text,
        };
        Ok(ProviderResponse {
            text,
            usage: self.usage.map(Usage::from).unwrap_or_default(),
            model: self.model.unwrap_or_else(|| request.model.to_owned()),
            finish_reason: finish_reason(self.stop_reason.as_deref()),
        })
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        // Anthropic's input_tokens excludes cache reads and writes; ours includes them.
        let input = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
        Usage {
            input_tokens: input,
            cached_input_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_creation_input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: input + u.output_tokens,
        }
    }
}

/// `stop_reason` in the contract's words (a forced tool's `tool_use` is the answer ending).
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> FinishReason {
    match stop_reason {
        Some("end_turn" | "tool_use") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("stop_sequence") => FinishReason::StopSequence,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reads_and_writes_are_reported_inside_the_input() {
        let usage: WireUsage = serde_json::from_value(json!({
            "input_tokens": 20, "output_tokens": 7,
            "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300
        }))
        .unwrap();
        assert_eq!(
            Usage::from(usage),
            Usage {
                input_tokens: 1320,
                cached_input_tokens: 1000,
                cache_write_tokens: 300,
                output_tokens: 7,
                total_tokens: 1327,
            }
        );
    }

    #[test]
    fn stop_reasons_in_the_contracts_words() {
        for (word, reason) in [
            ("end_turn", FinishReason::Stop),
            ("tool_use", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("stop_sequence", FinishReason::StopSequence),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other),
        ] {
            assert_eq!(finish_reason(Some(word)), reason, "{word}");
        }
        assert_eq!(finish_reason(None), FinishReason::Other);
    }
}
