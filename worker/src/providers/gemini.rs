//! Google Gemini (`POST {base_url}/models/{model}:generateContent`, `x-goog-api-key`).
//!
//! JSON mode sets `generationConfig.responseMimeType = "application/json"` and
//! `responseSchema` to the job's schema rewritten into the OpenAPI subset Gemini accepts
//! ([`gemini_schema`]): local `$ref`s inlined, `["T", "null"]` as `nullable`, `oneOf` as
//! `anyOf`, `const` as a one-value `enum`, and unsupported keywords (`additionalProperties`,
//! `pattern`, `minLength`, ...) dropped, the dropped constraints noted in the `description`
//! for the model to read. The answer is validated against the original schema.
//! Instructions go in `systemInstruction`; images as `inlineData`; repairs as `model` + `user`
//! turns. Rate-limit errors carry `RetryInfo.retryDelay`.

use super::http::{Auth, HttpClient, RawResponse, body_text, failure, malformed, stream_cut};
use super::status::{self, Said};
use super::{BuildError, Provider, ProviderError, ProviderRequest, ProviderResponse, retry_hint};
use crate::config::ProviderConfig;
use crate::stream::ChunkSink;
use futures::StreamExt;
use futures::future::BoxFuture;
use quarry_schemas::job::ImageMime;
use quarry_schemas::{ErrorCode, FinishReason, InputPart, Reasoning, Usage};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

const IMAGE_MIMES: &[ImageMime] = &[ImageMime::Png, ImageMime::Jpeg, ImageMime::Webp];
/// Keywords of the OpenAPI schema subset Gemini's `responseSchema` takes.
const KEPT: &[&str] = &[
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "items",
    "properties",
    "required",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "anyOf",
    "propertyOrdering",
];
/// Finish reasons that mean the answer was withheld.
const BLOCKED: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
];

/// Gemini.
pub struct Gemini {
    http: HttpClient,
    base_url: String,
}

impl Gemini {
    /// Builds the client once.
    pub fn new(name: &str, config: &ProviderConfig) -> Result<Self, BuildError> {
        Ok(Self {
            http: HttpClient::new(name, config, Auth::Header("x-goog-api-key"), &[])?,
            base_url: config.base_url(),
        })
    }

    fn body<'a>(
        &self,
        request: &'a ProviderRequest<'a>,
        schema: Option<Value>,
    ) -> GenerateRequest<'a> {
        let mut contents = Vec::with_capacity(1 + 2 * request.repairs.len());
        contents.push(Content {
            role: "user",
            parts: request.input.iter().map(Part::from).collect(),
        });
        for repair in request.repairs {
            contents.push(Content {
                role: "model",
                parts: vec![Part::Text {
                    text: repair.answer.clone().into(),
                }],
            });
            contents.push(Content {
                role: "user",
                parts: vec![Part::Text {
                    text: repair.instruction().into(),
                }],
            });
        }
        let json_mode = request.json_schema.is_some();
        GenerateRequest {
            system_instruction: request.instructions.map(|text| SystemInstruction {
                parts: [TextPart { text }],
            }),
            contents,
            generation_config: GenerationConfig {
                response_mime_type: json_mode.then_some("application/json"),
                response_schema: schema,
                max_output_tokens: Some(request.max_tokens),
                temperature: request.temperature,
                thinking_config: request.reasoning.map(|r| ThinkingConfig {
                    thinking_budget: thinking_budget(r),
                }),
                stop_sequences: request.stop,
            },
        }
    }

    async fn call_inner(
        &self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        // Any object: JSON output without a `responseSchema` (Gemini wants an OBJECT schema
        // to name its properties).
        let schema = request
            .json_schema
            .filter(|_| !request.any_object)
            .map(|(_, s)| gemini_schema(s, request.max_schema_nodes))
            .transpose()?;
        let body = serde_json::to_vec(&self.body(request, schema))
            .map_err(|e| ProviderError::permanent(ErrorCode::Internal, e.to_string()))?;
        if let Some(sink) = request.sink {
            let url = format!(
                "{}/models/{}:streamGenerateContent?alt=sse",
                self.base_url, request.model
            );
            return self.streamed(request, &url, body, sink).await;
        }
        let url = format!("{}/models/{}:generateContent", self.base_url, request.model);
        let raw = self
            .http
            .post_json(
                &url,
                body,
                request.timeout,
                request.api_key,
                request.trace.as_ref(),
            )
            .await?;
        if !raw.status.is_success() {
            return Err(self.classify(&raw, request.api_key));
        }
        let answer: GenerateResponse = serde_json::from_slice(&raw.body)
            .map_err(|e| malformed("generateContent response", e))?;
        if let Some(reason) = answer.prompt_feedback.and_then(|f| f.block_reason) {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!("the prompt was blocked: {reason}"),
            ));
        }
        let Some(candidate) = answer.candidates.into_iter().next() else {
            return Err(malformed("generateContent response", "no candidates"));
        };
        if let Some(reason) = candidate
            .finish_reason
            .as_deref()
            .filter(|r| BLOCKED.contains(r))
        {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!("the answer was withheld: {reason}"),
            ));
        }
        let text = candidate
            .content
            .map(|c| {
                c.parts
                    .into_iter()
                    .filter_map(|p| p.text)
                    .collect::<String>()
            })
            .unwrap_or_default();
        Ok(ProviderResponse {
            text,
            finish_reason: finish_reason(candidate.finish_reason.as_deref()),
            usage: answer.usage_metadata.map(Usage::from).unwrap_or_default(),
            model: answer
                .model_version
                .unwrap_or_else(|| request.model.to_owned()),
        })
    }

    /// One attempt streamed (`streamGenerateContent?alt=sse`): each event is a partial
    /// response whose text parts are the deltas; the last carries the finish reason and the
    /// usage.
    async fn streamed(
        &self,
        request: &ProviderRequest<'_>,
        url: &str,
        body: Vec<u8>,
        sink: &ChunkSink,
    ) -> Result<ProviderResponse, ProviderError> {
        let mut events = self
            .http
            .post_stream(url, body, request, |raw| {
                self.classify(raw, request.api_key)
            })
            .await?;
        let mut answer = GenerateStream::default();
        while let Some(event) = events.next().await {
            answer.event(&event?.data, sink)?;
        }
        answer.finish(request)
    }

    /// Every HTTP failure maps to a code and a disposition here, and only here.
    fn classify(&self, raw: &RawResponse, key: Option<&SecretString>) -> ProviderError {
        let error: Option<Value> = serde_json::from_slice::<Value>(&raw.body)
            .ok()
            .and_then(|v| v.get("error").cloned());
        let google_status = error
            .as_ref()
            .and_then(|e| e.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let text = error
            .as_ref()
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map_or_else(|| body_text(&raw.body), str::to_owned);
        // Google reports a bad key as 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
        let bad_key = error.as_ref().is_some_and(|e| {
            e.get("details")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
        let after = error
            .as_ref()
            .and_then(retry_hint::google_retry_info)
            .or_else(|| retry_hint::retry_after(&raw.headers));
        let said = if bad_key {
            Some(Said::KeyRejected)
        } else {
            said(google_status)
        };
        let (code, disposition) = status::classify(raw.status.as_u16(), said, after);
        failure(raw.status, code, disposition, &text, key)
    }
}

/// What Google's error `status` says ([`status`]'s shared words). Only the API's own status
/// condemns a key: a 401 page from a proxy or a gateway in between has none.
pub fn said(status: &str) -> Option<Said> {
    Some(match status {
        "UNAUTHENTICATED" | "PERMISSION_DENIED" => Said::KeyRejected,
        "NOT_FOUND" => Said::NotFound,
        "RESOURCE_EXHAUSTED" => Said::RateLimited,
        "UNAVAILABLE" => Said::Overloaded,
        "DEADLINE_EXCEEDED" => Said::TimedOut,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => Said::Invalid,
        "INTERNAL" | "UNKNOWN" => Said::ServerError,
        _ => return None,
    })
}

impl Provider for Gemini {
    fn kind(&self) -> &'static str {
        "gemini"
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

/// The job's JSON Schema rewritten into Gemini's `responseSchema` subset, in at most
/// `max_nodes` schema nodes: inlining `$ref`s can grow a small schema exponentially (ten
/// properties that each point back at the root, sixteen levels deep), so the rewrite stops
/// at the budget and the job ends `INVALID_REQUEST` instead of taking the worker's memory.
pub fn gemini_schema(schema: &Value, max_nodes: usize) -> Result<Value, ProviderError> {
    let budget = std::cell::Cell::new(max_nodes.saturating_add(1));
    let converted = convert(schema, schema, 0, &budget);
    if budget.get() == 0 {
        return Err(ProviderError::permanent(
            ErrorCode::InvalidRequest,
            format!(
                "json_schema grows past {max_nodes} schema nodes when its $refs are inlined \
                 for Gemini (worker.max_schema_nodes)"
            ),
        ));
    }
    Ok(converted)
}

fn convert(schema: &Value, root: &Value, depth: usize, budget: &std::cell::Cell<usize>) -> Value {
    // Every node spends one; a spent budget stops the rewrite (the caller refuses the job).
    match budget.get() {
        0 => return Value::Null,
        left => budget.set(left - 1),
    }
    let Some(map) = schema.as_object() else {
        return json!({"type": "string"});
    };
    if depth > 16 {
        return json!({"type": "object"});
    }
    if let Some(target) = map
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| root.pointer(p))
    {
        return convert(target, root, depth + 1, budget);
    }
    let mut merged = map.clone();
    if let Some(Value::Array(parts)) = map.get("allOf") {
        for part in parts {
            let resolved = convert(part, root, depth + 1, budget);
            if let Some(part) = resolved.as_object() {
                merge_into(&mut merged, part);
            }
        }
    }
    let mut out = Map::new();
    let mut nullable = false;
    // Constraints Gemini cannot take travel in the description, where the model reads them.
    let mut notes: Vec<String> = Vec::new();
    match merged.get("type") {
        Some(Value::Array(types)) => {
            nullable = types.iter().any(|t| t == "null");
            if let Some(first) = types.iter().find(|t| *t != "null") {
                out.insert("type".into(), first.clone());
            }
        }
        Some(Value::String(t)) if t == "null" => nullable = true,
        Some(t) => {
            out.insert("type".into(), t.clone());
        }
        None => {}
    }
    if let Some(c) = merged.get("const") {
        merged.insert("enum".into(), json!([c]));
    }
    if let Some(Value::Array(values)) = merged.get("enum") {
        nullable |= values.contains(&Value::Null);
        let strings: Vec<Value> = values.iter().filter(|v| v.is_string()).cloned().collect();
        if !strings.is_empty() && strings.len() == values.iter().filter(|v| !v.is_null()).count() {
            out.insert("type".into(), json!("string"));
            out.insert("format".into(), json!("enum"));
            out.insert("enum".into(), Value::Array(strings));
        }
    }
    for (key, value) in &merged {
        match key.as_str() {
            "properties" => {
                if let Some(props) = value.as_object() {
                    let converted: Map<String, Value> = props
                        .iter()
                        .map(|(k, v)| (k.clone(), convert(v, root, depth + 1, budget)))
                        .collect();
                    out.insert("properties".into(), Value::Object(converted));
                }
            }
            "items" => {
                out.insert("items".into(), convert(value, root, depth + 1, budget));
            }
            "anyOf" | "oneOf" => {
                if let Some(options) = value.as_array() {
                    let (nulls, others): (Vec<&Value>, Vec<&Value>) = options
                        .iter()
                        .partition(|o| o.get("type").and_then(Value::as_str) == Some("null"));
                    nullable |= !nulls.is_empty();
                    let converted: Vec<Value> = others
                        .iter()
                        .map(|o| convert(o, root, depth + 1, budget))
                        .collect();
                    match converted.len() {
                        0 => {}
                        1 => {
                            if let Some(only) = converted
                                .into_iter()
                                .next()
                                .and_then(|v| v.as_object().cloned())
                            {
                                for (k, v) in only {
                                    out.entry(k).or_insert(v);
                                }
                            }
                        }
                        _ => {
                            out.insert("anyOf".into(), Value::Array(converted));
                        }
                    }
                }
            }
            "format" => {
                // The Gemini API accepts only `enum` and `date-time` as formats.
                let kept = merged.get("type").and_then(Value::as_str) == Some("string")
                    && value.as_str() == Some("date-time");
                if kept {
                    out.insert("format".into(), value.clone());
                } else if let Some(format) = value.as_str() {
                    notes.push(format!("format: {format}"));
                }
            }
            "pattern" => {
                if let Some(pattern) = value.as_str() {
                    notes.push(format!("pattern: {pattern}"));
                }
            }
            "minLength" | "maxLength" => notes.push(format!("{key} {value}")),
            "uniqueItems" if value == &Value::Bool(true) => {
                notes.push("items must be unique".into());
            }
            "type" | "enum" => {}
            k if KEPT.contains(&k) => {
                out.entry(k.to_owned()).or_insert_with(|| value.clone());
            }
            _ => {}
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    if !notes.is_empty() {
        let note = format!("({})", notes.join("; "));
        let description = match out.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {note}"),
            None => note,
        };
        out.insert("description".into(), Value::String(description));
    }
    Value::Object(out)
}

fn merge_into(target: &mut Map<String, Value>, part: &Map<String, Value>) {
    for (key, value) in part {
        match (key.as_str(), target.get_mut(key)) {
            ("properties", Some(Value::Object(existing))) => {
                if let Some(more) = value.as_object() {
                    existing.extend(more.clone());
                }
            }
            ("required", Some(Value::Array(existing))) => {
                if let Some(more) = value.as_array() {
                    existing.extend(more.iter().cloned());
                }
            }
            (_, None) => {
                target.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

// ---- wire types ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    contents: Vec<Content<'a>>,
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: std::borrow::Cow<'a, str>,
    },
    #[serde(rename_all = "camelCase")]
    Image {
        inline_data: InlineData<'a>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InlineData<'a> {
    mime_type: &'static str,
    data: &'a str,
}

impl<'a> From<&'a InputPart> for Part<'a> {
    fn from(part: &'a InputPart) -> Self {
        match part {
            InputPart::Text { text } => Part::Text {
                text: text.as_str().into(),
            },
            InputPart::Image(image) => Part::Image {
                inline_data: InlineData {
                    mime_type: image.mime.as_str(),
                    data: &image.data,
                },
            },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u32,
}

/// `thinkingBudget` of a reasoning effort, in tokens (0 turns thinking off where the model
/// allows it).
pub(crate) fn thinking_budget(reasoning: Reasoning) -> u32 {
    match reasoning {
        Reasoning::Off => 0,
        Reasoning::Low => 1_024,
        Reasoning::Medium => 8_192,
        Reasoning::High => 24_576,
    }
}

/// A streamed answer as its partial responses arrive.
#[derive(Default)]
pub(crate) struct GenerateStream {
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    blocked: Option<String>,
}

impl GenerateStream {
    /// One partial response.
    pub(crate) fn event(&mut self, data: &str, sink: &ChunkSink) -> Result<(), ProviderError> {
        let part: GenerateResponse =
            serde_json::from_str(data).map_err(|e| malformed("streamGenerateContent event", e))?;
        if let Some(reason) = part.prompt_feedback.and_then(|f| f.block_reason) {
            self.blocked = Some(reason);
        }
        if let Some(usage) = part.usage_metadata {
            self.usage = Some(Usage::from(usage));
        }
        if let Some(model) = part.model_version {
            self.model.get_or_insert(model);
        }
        if let Some(candidate) = part.candidates.into_iter().next() {
            for text in candidate
                .content
                .into_iter()
                .flat_map(|c| c.parts)
                .filter_map(|p| p.text)
            {
                sink.delta(&text);
                self.text.push_str(&text);
            }
            if candidate.finish_reason.is_some() {
                self.finish_reason = candidate.finish_reason;
            }
        }
        Ok(())
    }

    /// The whole answer, blocked or withheld as unstreamed; a stream that ended without a
    /// finish reason was cut.
    pub(crate) fn finish(
        self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        if let Some(reason) = self.blocked {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!("the prompt was blocked: {reason}"),
            ));
        }
        let Some(word) = self.finish_reason else {
            return Err(stream_cut());
        };
        if BLOCKED.contains(&word.as_str()) {
            return Err(ProviderError::permanent(
                ErrorCode::OutputInvalid,
                format!("the answer was withheld: {word}"),
            ));
        }
        Ok(ProviderResponse {
            text: self.text,
            finish_reason: finish_reason(Some(&word)),
            usage: self.usage.unwrap_or_default(),
            model: self.model.unwrap_or_else(|| request.model.to_owned()),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<ResponsePart>,
}

#[derive(Deserialize)]
struct ResponsePart {
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    total_token_count: Option<u64>,
}

/// `finishReason` in the contract's words (Gemini reports a matched stop sequence as `STOP`).
pub(crate) fn finish_reason(word: Option<&str>) -> FinishReason {
    match word {
        Some("STOP") => FinishReason::Stop,
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(blocked) if BLOCKED.contains(&blocked) => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Self {
        let output = u.candidates_token_count + u.thoughts_token_count;
        Usage {
            input_tokens: u.prompt_token_count,
            cached_input_tokens: u.cached_content_token_count,
            cache_write_tokens: 0,
            output_tokens: output,
            total_tokens: u.total_token_count.unwrap_or(u.prompt_token_count + output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_rewritten_into_the_openapi_subset() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "required": ["kind", "total"],
            "properties": {
                "kind": {"enum": ["a", "b", null]},
                "total": {"type": ["number", "null"], "minimum": 0},
                "date": {"type": "string", "format": "date", "pattern": "^\\d"},
                "when": {"type": "string", "format": "date-time"},
                "tag": {"const": "x"},
                "point": {"$ref": "#/$defs/point"},
                "either": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                "list": {"type": "array", "items": {"type": "string", "minLength": 2}, "maxItems": 3, "uniqueItems": true}
            },
            "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}
        });
        let g = gemini_schema(&schema, 10_000).expect("within the budget");
        assert_eq!(
            g,
            json!({
                "type": "object",
                "required": ["kind", "total"],
                "properties": {
                    "kind": {"type": "string", "format": "enum", "enum": ["a", "b"], "nullable": true},
                    "total": {"type": "number", "minimum": 0, "nullable": true},
                    "date": {"type": "string", "description": "(format: date; pattern: ^\\d)"},
                    "when": {"type": "string", "format": "date-time"},
                    "tag": {"type": "string", "format": "enum", "enum": ["x"]},
                    "point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                    "either": {"type": "string", "nullable": true},
                    "list": {"type": "array", "items": {"type": "string", "description": "(minLength 2)"}, "maxItems": 3,
                             "description": "(items must be unique)"}
                }
            })
        );
    }

    #[test]
    fn a_schema_that_explodes_when_inlined_stops_at_the_node_budget() {
        let mut properties = serde_json::Map::new();
        for n in 0..10 {
            properties.insert(format!("p{n}"), json!({"$ref": "#"}));
        }
        let bomb = json!({"type": "object", "properties": properties});
        let error = gemini_schema(&bomb, 10_000).expect_err("past the budget");
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        // A schema within the budget converts whole.
        let fine = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert!(gemini_schema(&fine, 2).is_ok());
        assert!(gemini_schema(&fine, 1).is_err());
    }
}
