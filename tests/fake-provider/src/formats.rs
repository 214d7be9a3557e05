//! The three wire formats: reading a request into [`Parsed`], writing answers and errors the
//! way each real API does.

use crate::faults::Fault;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::{Value, json};

/// Which API a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `POST /v1/chat/completions`
    OpenAi,
    /// `POST /v1/messages`
    Anthropic,
    /// `POST /v1beta/models/{model}:generateContent`
    Gemini,
}

/// What the fake needs from a request, whatever its format.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// The model asked for.
    pub model: String,
    /// Every text of the request (system, user), for markers and token counts.
    pub text: String,
    /// Images in the request.
    pub images: u64,
    /// The schema of the structured answer, if any.
    pub schema: Option<Value>,
    /// OpenAI `json_object` mode: any JSON object.
    pub json_object: bool,
    /// Anthropic: the forced tool's name.
    pub tool: Option<String>,
    /// No earlier model turn in the conversation.
    pub first_answer: bool,
    /// The output bound asked for (`max_tokens`, `max_completion_tokens`, `maxOutputTokens`):
    /// a longer answer is cut there, as a real model's is.
    pub max_tokens: Option<u64>,
    /// Stop sequences: the answer ends before the first one it contains.
    pub stop: Vec<String>,
    /// Anthropic extended thinking is on: the answer starts with a thinking block.
    pub thinking: bool,
}

/// What the answer carries.
pub struct Answer {
    /// Text, or JSON text in JSON mode.
    pub content: String,
    /// The value of an Anthropic tool call (JSON mode).
    pub tool_input: Option<Value>,
    /// Cut short (`length`, `max_tokens`, `MAX_TOKENS`).
    pub truncated: bool,
    /// Ended by this stop sequence (Anthropic names it; the others say `stop`).
    pub stopped_by: Option<String>,
    /// Prompt and completion tokens.
    pub usage: (u64, u64),
}

fn bad(message: &str) -> String {
    message.to_owned()
}

impl Format {
    /// Whether the request carries the expected key in this format's header.
    pub fn authorised(self, headers: &HeaderMap, query_key: Option<&str>, key: &str) -> bool {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Format::OpenAi => {
                header("authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key)
            }
            Format::Anthropic => header("x-api-key") == Some(key),
            Format::Gemini => header("x-goog-api-key") == Some(key) || query_key == Some(key),
        }
    }

    /// Reads a request body. `path_model` is Gemini's model from the URL.
    pub fn parse(self, request: &Value, path_model: Option<&str>) -> Result<Parsed, String> {
        match self {
            Format::OpenAi => parse_openai(request),
            Format::Anthropic => parse_anthropic(request),
            Format::Gemini => parse_gemini(request, path_model.unwrap_or_default()),
        }
    }

    /// A successful answer.
    pub fn answer(self, parsed: &Parsed, answer: &Answer, id: u64, refusal: bool) -> Value {
        let (prompt, completion) = answer.usage;
        match self {
            Format::OpenAi => json!({
                "id": format!("chatcmpl-fake-{id:016x}"),
                "object": "chat.completion",
                "created": now_secs(),
                "model": parsed.model,
                "choices": [{
                    "index": 0,
                    "message": if refusal {
                        json!({"role": "assistant", "content": null, "refusal": "I'm sorry, I can't help with that."})
                    } else {
                        json!({"role": "assistant", "content": answer.content, "refusal": null})
                    },
                    "logprobs": null,
                    "finish_reason": if answer.truncated { "length" } else { "stop" }
                }],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": {"cached_tokens": 0}
                }
            }),
            Format::Anthropic => {
                let mut content = match (&parsed.tool, &answer.tool_input, refusal) {
                    (_, _, true) => json!([]),
                    (Some(tool), Some(input), false) => json!([{
                        "type": "tool_use", "id": format!("toolu_fake_{id:016x}"), "name": tool, "input": input
                    }]),
                    _ => json!([{"type": "text", "text": answer.content}]),
                };
                if parsed.thinking
                    && let Some(blocks) = content.as_array_mut()
                {
                    blocks.insert(
                        0,
                        json!({
                            "type": "thinking", "thinking": "Let me look at the input.",
                            "signature": format!("sig-fake-{id:016x}")
                        }),
                    );
                }
                let stop_reason = anthropic_stop_reason(parsed, answer, refusal);
                json!({
                    "id": format!("msg_fake_{id:016x}"),
                    "type": "message",
                    "role": "assistant",
                    "model": parsed.model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": answer.stopped_by,
                    "usage": {
                        "input_tokens": prompt,
                        "output_tokens": completion,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0
                    }
                })
            }
            Format::Gemini => {
                let candidate = if refusal {
                    json!({"finishReason": "SAFETY", "index": 0,
                           "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]})
                } else {
                    json!({"content": {"role": "model", "parts": [{"text": answer.content}]},
                           "finishReason": if answer.truncated { "MAX_TOKENS" } else { "STOP" }, "index": 0})
                };
                json!({
                    "candidates": [candidate],
                    "usageMetadata": {
                        "promptTokenCount": prompt,
                        "candidatesTokenCount": completion,
                        "totalTokenCount": prompt + completion
                    },
                    "modelVersion": parsed.model,
                    "responseId": format!("fake-{id:016x}")
                })
            }
        }
    }

    /// An error answer as the real API sends it.
    pub fn error(self, fault: Fault) -> (StatusCode, HeaderMap, Value) {
        let mut headers = HeaderMap::new();
        let (status, kind, message) = match fault {
            Fault::RateLimit => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit",
                "Rate limit reached. Please try again in 1s.",
            ),
            Fault::Auth => (
                StatusCode::UNAUTHORIZED,
                "auth",
                "Invalid API key provided.",
            ),
            // A proxy's page, the same in every format: not the API's error object.
            Fault::ProxyAuth => {
                let page = "<html><body><h1>401 Authorization Required</h1></body></html>";
                return (
                    StatusCode::UNAUTHORIZED,
                    headers,
                    Value::String(page.into()),
                );
            }
            Fault::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server",
                "The server had an error.",
            ),
            Fault::Overloaded if self == Format::Anthropic => (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded",
                "Overloaded",
            ),
            Fault::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "The model is overloaded.",
            ),
            Fault::BadRequest => (
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid value for 'messages': the request is malformed.",
            ),
            Fault::PaymentRequired => (
                StatusCode::PAYMENT_REQUIRED,
                "billing",
                "You exceeded your current quota, please check your plan and billing details.",
            ),
            Fault::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "The model does not exist or you do not have access to it.",
            ),
            // A gateway's or a broken server's 200: not the format's answer.
            Fault::Malformed => {
                return (
                    StatusCode::OK,
                    headers,
                    json!({"status": "ok", "data": [1, 2, 3]}),
                );
            }
            // Not errors: answered in the body. Reaching here is a bug in the caller.
            Fault::Timeout
            | Fault::InvalidJson
            | Fault::Truncated
            | Fault::SchemaInvalid
            | Fault::Refusal
            | Fault::StreamDrop
            | Fault::StreamStall => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server",
                "unexpected fault",
            ),
        };
        if fault == Fault::RateLimit {
            headers.insert(
                HeaderName::from_static("retry-after"),
                HeaderValue::from_static("1"),
            );
        }
        let body = match self {
            Format::OpenAi => {
                let (kind, code) = match kind {
                    "rate_limit" => ("requests", "rate_limit_exceeded"),
                    "auth" => ("invalid_request_error", "invalid_api_key"),
                    "invalid" => ("invalid_request_error", "invalid_value"),
                    "billing" => ("insufficient_quota", "insufficient_quota"),
                    "not_found" => ("invalid_request_error", "model_not_found"),
                    _ => ("server_error", "server_error"),
                };
                if fault == Fault::RateLimit {
                    headers.insert(
                        HeaderName::from_static("x-ratelimit-reset-requests"),
                        HeaderValue::from_static("1s"),
                    );
                }
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Format::Anthropic => {
                let kind = match kind {
                    "rate_limit" => "rate_limit_error",
                    "auth" => "authentication_error",
                    "overloaded" => "overloaded_error",
                    "invalid" => "invalid_request_error",
                    "billing" => "billing_error",
                    "not_found" => "not_found_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Format::Gemini => {
                let status_text = match kind {
                    "rate_limit" => "RESOURCE_EXHAUSTED",
                    "auth" => "UNAUTHENTICATED",
                    "overloaded" => "UNAVAILABLE",
                    "invalid" => "INVALID_ARGUMENT",
                    // Google has no status of its own for billing; the HTTP status says it.
                    "billing" => "",
                    "not_found" => "NOT_FOUND",
                    _ => "INTERNAL",
                };
                let details = if fault == Fault::RateLimit {
                    json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}])
                } else {
                    json!([])
                };
                json!({"error": {"code": status.as_u16(), "message": message, "status": status_text, "details": details}})
            }
        };
        (status, headers, body)
    }

    /// A 400 for a request the real API would refuse.
    pub fn invalid_request(self, message: &str) -> (StatusCode, Value) {
        let body = match self {
            Format::OpenAi => {
                json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
            }
            Format::Anthropic => {
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
            }
            Format::Gemini => {
                json!({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})
            }
        };
        (StatusCode::BAD_REQUEST, body)
    }

    /// The 401 for a missing or wrong key.
    pub fn unauthorised(self) -> (StatusCode, HeaderMap, Value) {
        self.error(Fault::Auth)
    }
}

/// Anthropic's `stop_reason` for an answer, streamed or not.
pub(crate) fn anthropic_stop_reason(
    parsed: &Parsed,
    answer: &Answer,
    refusal: bool,
) -> &'static str {
    if refusal {
        "refusal"
    } else if answer.truncated {
        "max_tokens"
    } else if answer.stopped_by.is_some() {
        "stop_sequence"
    } else if parsed.tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn push_text(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(text);
}

fn parse_openai(request: &Value) -> Result<Parsed, String> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("you must provide a model parameter"))?;
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("'messages' must be a non-empty array"))?;
    let mut parsed = Parsed {
        model: model.to_owned(),
        first_answer: true,
        ..Parsed::default()
    };
    for message in messages {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("each message needs a 'role'"))?;
        if role == "assistant" {
            parsed.first_answer = false;
            continue;
        }
        match message.get("content") {
            Some(Value::String(s)) => push_text(&mut parsed.text, s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => push_text(
                            &mut parsed.text,
                            part.get("text").and_then(Value::as_str).unwrap_or_default(),
                        ),
                        Some("image_url") => {
                            let url = part
                                .pointer("/image_url/url")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            if !url.starts_with("data:image/") && !url.starts_with("https://") {
                                return Err(bad(
                                    "image_url.url must be a data: URL or an https URL",
                                ));
                            }
                            parsed.images += 1;
                        }
                        _ => return Err(bad("unknown content part type")),
                    }
                }
            }
            _ => return Err(bad("each message needs 'content'")),
        }
    }
    match request
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        Some("json_schema") => {
            let schema = request
                .pointer("/response_format/json_schema/schema")
                .ok_or_else(|| {
                    bad("Missing required parameter: 'response_format.json_schema.schema'.")
                })?;
            match request
                .pointer("/response_format/json_schema/name")
                .and_then(Value::as_str)
            {
                None => {
                    return Err(bad(
                        "Missing required parameter: 'response_format.json_schema.name'.",
                    ));
                }
                Some(name) if !api_name(name) => {
                    return Err(bad(
                        "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    ));
                }
                Some(_) => {}
            }
            parsed.schema = Some(schema.clone());
        }
        Some("json_object") => parsed.json_object = true,
        Some("text") | None => {}
        Some(other) => {
            return Err(format!(
                "Invalid value for 'response_format.type': '{other}'"
            ));
        }
    }
    parsed.max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64);
    parsed.stop = strings(request.get("stop"));
    match request.get("reasoning_effort") {
        None => {}
        Some(Value::String(e)) if ["minimal", "low", "medium", "high"].contains(&e.as_str()) => {}
        Some(other) => {
            return Err(format!(
                "Invalid value for 'reasoning_effort': {other}. Supported values are: 'minimal', 'low', 'medium', and 'high'."
            ));
        }
    }
    Ok(parsed)
}

/// A schema or tool name as OpenAI and Anthropic take it: `^[a-zA-Z0-9_-]{1,64}$`.
fn api_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A string or an array of strings (`stop`, `stop_sequences`, `stopSequences`).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_anthropic(request: &Value) -> Result<Parsed, String> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("model: Field required"))?;
    let Some(max_tokens) = request.get("max_tokens").and_then(Value::as_u64) else {
        return Err(bad("max_tokens: Field required"));
    };
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages: Field required"))?;
    let mut parsed = Parsed {
        model: model.to_owned(),
        first_answer: true,
        max_tokens: Some(max_tokens),
        stop: strings(request.get("stop_sequences")),
        ..Parsed::default()
    };
    if let Some(system) = request.get("system").and_then(Value::as_str) {
        push_text(&mut parsed.text, system);
    }
    for message in messages {
        match message.get("role").and_then(Value::as_str) {
            Some("assistant") => {
                parsed.first_answer = false;
                continue;
            }
            Some("user") => {}
            _ => return Err(bad("messages: roles must be 'user' or 'assistant'")),
        }
        match message.get("content") {
            Some(Value::String(s)) => push_text(&mut parsed.text, s),
            Some(Value::Array(blocks)) => {
                for block in blocks {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => push_text(
                            &mut parsed.text,
                            block
                                .get("text")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        ),
                        Some("image") => {
                            if block.pointer("/source/type").and_then(Value::as_str)
                                != Some("base64")
                                || block
                                    .pointer("/source/media_type")
                                    .and_then(Value::as_str)
                                    .is_none()
                            {
                                return Err(bad(
                                    "image.source must be {type: base64, media_type, data}",
                                ));
                            }
                            parsed.images += 1;
                        }
                        _ => return Err(bad("unknown content block type")),
                    }
                }
            }
            _ => return Err(bad("messages: content required")),
        }
    }
    let choice = request.pointer("/tool_choice/type").and_then(Value::as_str);
    match request.pointer("/thinking/type").and_then(Value::as_str) {
        None | Some("disabled") => {}
        Some("enabled") => {
            let budget = request
                .pointer("/thinking/budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("thinking.enabled.budget_tokens: Field required"))?;
            if budget < 1024 {
                return Err(bad(
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
                ));
            }
            if budget >= max_tokens {
                return Err(bad(
                    "`max_tokens` must be greater than `thinking.budget_tokens`",
                ));
            }
            if matches!(choice, Some("tool" | "any")) {
                return Err(bad(
                    "Thinking may not be enabled when tool_choice forces tool use.",
                ));
            }
            if request
                .get("temperature")
                .and_then(Value::as_f64)
                .is_some_and(|t| t != 1.0)
            {
                return Err(bad(
                    "`temperature` may only be set to 1 when thinking is enabled.",
                ));
            }
            parsed.thinking = true;
        }
        Some(_) => {
            return Err(bad(
                "thinking.type: Input tag does not match 'enabled', 'disabled'",
            ));
        }
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        // Forced, or offered with the model left to choose (it takes the one tool asked of
        // it).
        let forced = match choice {
            Some("tool") => request.pointer("/tool_choice/name").and_then(Value::as_str),
            Some("auto") if tools.len() == 1 => tools[0].get("name").and_then(Value::as_str),
            _ => None,
        };
        if forced.is_some() {
            let tool = tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == forced)
                .ok_or_else(|| bad("tool_choice names a tool that is not in tools"))?;
            if !forced.is_some_and(api_name) {
                return Err(bad(
                    "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
                ));
            }
            let schema = tool
                .get("input_schema")
                .ok_or_else(|| bad("tools.0.input_schema: Field required"))?;
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(bad("tools.0.input_schema.type: Input should be 'object'"));
            }
            parsed.schema = Some(schema.clone());
            parsed.tool = forced.map(str::to_owned);
        }
    }
    Ok(parsed)
}

fn parse_gemini(request: &Value, model: &str) -> Result<Parsed, String> {
    let contents = request
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("* GenerateContentRequest.contents: contents is not specified"))?;
    let mut parsed = Parsed {
        model: model.to_owned(),
        first_answer: true,
        max_tokens: request
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64),
        stop: strings(request.pointer("/generationConfig/stopSequences")),
        ..Parsed::default()
    };
    if let Some(parts) = request
        .pointer("/systemInstruction/parts")
        .and_then(Value::as_array)
    {
        for part in parts {
            push_text(
                &mut parsed.text,
                part.get("text").and_then(Value::as_str).unwrap_or_default(),
            );
        }
    }
    for content in contents {
        if content.get("role").and_then(Value::as_str) == Some("model") {
            parsed.first_answer = false;
            continue;
        }
        for part in content
            .get("parts")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("contents.parts is required"))?
        {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                push_text(&mut parsed.text, text);
            } else if part.get("inlineData").is_some() {
                if part
                    .pointer("/inlineData/mimeType")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    return Err(bad("inlineData.mimeType is required"));
                }
                parsed.images += 1;
            } else {
                return Err(bad("unknown part"));
            }
        }
    }
    let config = request.get("generationConfig");
    if let Some(budget) = config.and_then(|c| c.pointer("/thinkingConfig/thinkingBudget"))
        && !budget
            .as_i64()
            .is_some_and(|b| b == -1 || (0..=24_576).contains(&b))
    {
        return Err(bad(
            "* GenerateContentRequest.generation_config.thinking_config.thinking_budget: must be -1 or between 0 and 24576",
        ));
    }
    let json_mime = config
        .and_then(|c| c.get("responseMimeType"))
        .and_then(Value::as_str)
        == Some("application/json");
    if json_mime && config.and_then(|c| c.get("responseSchema")).is_none() {
        parsed.json_object = true;
    }
    if let Some(schema) = config.and_then(|c| c.get("responseSchema")) {
        if config
            .and_then(|c| c.get("responseMimeType"))
            .and_then(Value::as_str)
            != Some("application/json")
        {
            return Err(bad(
                "responseSchema requires responseMimeType application/json",
            ));
        }
        for keyword in [
            "additionalProperties",
            "$schema",
            "$ref",
            "$defs",
            "const",
            "oneOf",
            "allOf",
            "pattern",
        ] {
            if contains_key(schema, keyword) {
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{keyword}\" at 'generation_config.response_schema'"
                ));
            }
        }
        if let Some(format) = formats(schema)
            .into_iter()
            .find(|f| *f != "enum" && *f != "date-time")
        {
            return Err(format!(
                "Invalid format \"{format}\" at 'generation_config.response_schema': only enum and date-time are supported"
            ));
        }
        parsed.schema = Some(schema.clone());
    }
    Ok(parsed)
}

/// Every `format` value in a schema.
fn formats(schema: &Value) -> Vec<&str> {
    match schema {
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v) {
                ("format", Value::String(f)) => vec![f.as_str()],
                ("properties", Value::Object(props)) => props.values().flat_map(formats).collect(),
                (_, v) => formats(v),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(formats).collect(),
        _ => Vec::new(),
    }
}

/// Whether a schema uses `keyword` anywhere (property *names* are not keywords).
fn contains_key(schema: &Value, keyword: &str) -> bool {
    match schema {
        Value::Object(map) => map.iter().any(|(k, v)| match k.as_str() {
            "properties" => v
                .as_object()
                .is_some_and(|props| props.values().any(|p| contains_key(p, keyword))),
            k => k == keyword || contains_key(v, keyword),
        }),
        Value::Array(items) => items.iter().any(|v| contains_key(v, keyword)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasoning controls are checked as the real APIs check them.
    #[test]
    fn reasoning_controls_out_of_range_are_refused() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let openai = |effort: Value| {
            parse_openai(&json!({"model": "m", "messages": user, "reasoning_effort": effort}))
        };
        assert!(openai(json!("high")).is_ok());
        assert!(openai(json!("extreme")).is_err());
        let anthropic = |extra: Value| {
            let mut body = json!({"model": "m", "max_tokens": 2000, "messages": user});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            parse_anthropic(&body)
        };
        let thinking = |budget: u64| json!({"type": "enabled", "budget_tokens": budget});
        assert!(anthropic(json!({"thinking": thinking(1024)})).is_ok_and(|p| p.thinking));
        assert!(anthropic(json!({"thinking": {"type": "disabled"}})).is_ok_and(|p| !p.thinking));
        for refused in [
            json!({"thinking": thinking(500)}),
            json!({"thinking": thinking(4096)}),
            json!({"thinking": thinking(1024), "temperature": 0.2}),
            json!({
                "thinking": thinking(1024),
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "t"}
            }),
        ] {
            assert!(anthropic(refused.clone()).is_err(), "{refused}");
        }
        let gemini = |budget: i64| {
            parse_gemini(
                &json!({
                    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                    "generationConfig": {"thinkingConfig": {"thinkingBudget": budget}}
                }),
                "m",
            )
        };
        assert!(gemini(0).is_ok() && gemini(-1).is_ok() && gemini(24_576).is_ok());
        assert!(gemini(24_577).is_err() && gemini(-2).is_err());
    }
}
