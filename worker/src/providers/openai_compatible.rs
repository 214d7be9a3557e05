//! OpenAI chat completions (`POST {base_url}/chat/completions`) and servers that speak it.
//!
//! JSON mode sends `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`
//! or, for servers without schema support (`native_json_schema = false`),
//! `{type: "json_object"}` with the schema appended to the system message. Images travel as
//! `image_url` parts with `data:` URLs.

use super::{
    BuildError, Disposition, Provider, ProviderError, ProviderRequest, ProviderResponse,
    parse_retry_after,
};
use crate::config::ProviderConfig;
use futures::future::BoxFuture;
use quarry_schemas::{ErrorCode, InputPart, Usage};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Longest provider error text copied into a result.
const MAX_ERROR_TEXT: usize = 500;

/// An OpenAI-compatible provider.
pub struct OpenAiCompatible {
    client: reqwest::Client,
    url: String,
    api_key: Option<SecretString>,
    native_json_schema: bool,
    strict: bool,
}

impl OpenAiCompatible {
    /// Builds the client once; it is shared by every job.
    pub fn new(name: &str, config: &ProviderConfig) -> Result<Self, BuildError> {
        let error = |reason: String| BuildError {
            name: name.to_owned(),
            reason,
        };
        let mut headers = HeaderMap::new();
        for (key, value) in &config.headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|e| error(format!("header `{key}`: {e}")))?;
            let mut value =
                HeaderValue::from_str(value).map_err(|e| error(format!("header `{key}`: {e}")))?;
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| error(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            api_key: config.api_key.clone(),
            native_json_schema: config.native_json_schema,
            strict: config.strict,
        })
    }

    fn body<'a>(&self, request: &'a ProviderRequest<'a>) -> ChatRequest<'a> {
        let mut messages = Vec::with_capacity(2);
        let schema_hint = match (request.json_schema, self.native_json_schema) {
            (Some((_, schema)), false) => Some(schema),
            _ => None,
        };
        if request.instructions.is_some() || schema_hint.is_some() {
            messages.push(Message::System(SystemContent {
                instructions: request.instructions,
                schema_hint,
            }));
        }
        messages.push(Message::User(
            request.input.iter().map(ContentPart).collect(),
        ));
        let response_format = request.json_schema.map(|(name, schema)| {
            if self.native_json_schema {
                ResponseFormat::JsonSchema {
                    json_schema: JsonSchemaFormat {
                        name,
                        schema,
                        strict: self.strict,
                    },
                }
            } else {
                ResponseFormat::JsonObject
            }
        });
        ChatRequest {
            model: request.model,
            messages,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stop: request.stop,
            response_format,
        }
    }

    async fn call_inner(
        &self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        let body = serde_json::to_vec(&self.body(request)).map_err(|e| ProviderError {
            code: ErrorCode::Internal,
            disposition: Disposition::Permanent,
            message: format!("cannot encode the request: {e}"),
        })?;
        let mut http = self
            .client
            .post(&self.url)
            .timeout(request.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
                .map_err(|_| ProviderError {
                    code: ErrorCode::AuthFailed,
                    disposition: Disposition::RotateKey,
                    message: "the configured API key is not a valid header value".into(),
                })?;
            value.set_sensitive(true);
            http = http.header(AUTHORIZATION, value);
        }
        let response = http.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(self.classify(status, retry_after, &bytes));
        }
        let answer: ChatResponse = serde_json::from_slice(&bytes).map_err(|e| ProviderError {
            code: ErrorCode::ProviderError,
            disposition: Disposition::Retry { after: None },
            message: format!("the provider's answer is not a chat completion: {e}"),
        })?;
        let Some(choice) = answer.choices.into_iter().next() else {
            return Err(ProviderError {
                code: ErrorCode::ProviderError,
                disposition: Disposition::Retry { after: None },
                message: "the provider's answer has no choices".into(),
            });
        };
        if let Some(refusal) = choice.message.refusal {
            return Err(ProviderError {
                code: ErrorCode::OutputInvalid,
                disposition: Disposition::Permanent,
                message: format!("the model refused: {}", self.scrub(&refusal)),
            });
        }
        let usage = answer.usage.map(Usage::from).unwrap_or_default();
        Ok(ProviderResponse {
            text: choice.message.content.unwrap_or_default(),
            usage,
            model: answer.model.unwrap_or_else(|| request.model.to_owned()),
        })
    }

    /// Every HTTP failure status maps to a code and a disposition here, and only here.
    fn classify(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> ProviderError {
        let detail: Option<WireError> = serde_json::from_slice::<ErrorEnvelope>(body)
            .ok()
            .map(|e| e.error);
        let text = match &detail {
            Some(e) => e.message.clone().unwrap_or_default(),
            None => String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]).into_owned(),
        };
        let quota = detail
            .as_ref()
            .and_then(|e| e.code.as_ref())
            .and_then(Value::as_str)
            == Some("insufficient_quota");
        let (code, disposition) = match status.as_u16() {
            400 | 413 | 415 | 422 => (ErrorCode::InvalidRequest, Disposition::Permanent),
            401 | 403 => (ErrorCode::AuthFailed, Disposition::RotateKey),
            402 => (ErrorCode::CredentialsExhausted, Disposition::RotateKey),
            404 => (ErrorCode::ModelUnavailable, Disposition::Permanent),
            408 => (
                ErrorCode::Timeout,
                Disposition::Retry { after: retry_after },
            ),
            429 if quota => (ErrorCode::CredentialsExhausted, Disposition::RotateKey),
            429 => (
                ErrorCode::RateLimited,
                Disposition::Retry { after: retry_after },
            ),
            503 | 529 => (
                ErrorCode::ModelUnavailable,
                Disposition::Retry { after: retry_after },
            ),
            500..=599 => (
                ErrorCode::ProviderError,
                Disposition::Retry { after: retry_after },
            ),
            _ => (ErrorCode::ProviderError, Disposition::Permanent),
        };
        // A provider's 401 text may quote part of the key; say nothing of it.
        let message = match code {
            ErrorCode::AuthFailed => format!(
                "HTTP {}: the provider rejected the credential",
                status.as_u16()
            ),
            _ => format!(
                "HTTP {}: {}",
                status.as_u16(),
                truncate(&self.scrub(&text), MAX_ERROR_TEXT)
            ),
        };
        ProviderError {
            code,
            disposition,
            message,
        }
    }

    /// Removes the key from provider-supplied text, should a provider echo it.
    fn scrub(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if !key.expose_secret().is_empty() => {
                text.replace(key.expose_secret(), "[redacted]")
            }
            _ => text.to_owned(),
        }
    }
}

impl Provider for OpenAiCompatible {
    fn kind(&self) -> &'static str {
        "openai_compatible"
    }

    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        Box::pin(self.call_inner(request))
    }
}

fn transport_error(error: reqwest::Error) -> ProviderError {
    let code = if error.is_timeout() {
        ErrorCode::Timeout
    } else {
        ErrorCode::ProviderError
    };
    ProviderError {
        code,
        disposition: Disposition::Retry { after: None },
        // Without the URL: some providers carry credentials in the query string.
        message: error.without_url().to_string(),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

// ---- wire types (borrowing) ----

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "role", content = "content", rename_all = "snake_case")]
enum Message<'a> {
    System(SystemContent<'a>),
    User(Vec<ContentPart<'a>>),
}

/// The system message: the job's instructions, plus the schema when the server cannot take it
/// natively. Serialised as one string.
struct SystemContent<'a> {
    instructions: Option<&'a str>,
    schema_hint: Option<&'a Value>,
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
    schema: &'a Value,
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
}

#[derive(Deserialize)]
struct AssistantMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_schemas::job::{ImageMime, ImagePart};
    use serde_json::json;

    fn provider(native: bool, key: Option<&str>) -> OpenAiCompatible {
        let config = ProviderConfig {
            native_json_schema: native,
            api_key: key.map(|k| SecretString::from(k.to_owned())),
            ..ProviderConfig::default()
        };
        OpenAiCompatible::new("test", &config).expect("build")
    }

    fn request<'a>(
        input: &'a [InputPart],
        schema: Option<(&'a str, &'a Value)>,
    ) -> ProviderRequest<'a> {
        ProviderRequest {
            model: "m",
            instructions: Some("Extract."),
            input,
            json_schema: schema,
            max_tokens: Some(100),
            temperature: None,
            stop: None,
            timeout: Duration::from_secs(1),
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
        let req = request(&input, Some(("receipt", &schema)));
        let body = serde_json::to_value(p.body(&req)).expect("serialise");
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
    fn json_object_mode_puts_the_schema_in_the_system_message() {
        let input = [InputPart::Text { text: "x".into() }];
        let schema = json!({"type": "object"});
        let p = provider(false, None);
        let req = request(&input, Some(("s", &schema)));
        let body = serde_json::to_value(p.body(&req)).expect("serialise");
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        let system = body["messages"][0]["content"].as_str().expect("string");
        assert!(
            system.starts_with("Extract.\n\nAnswer with a single JSON value"),
            "{system}"
        );
        assert!(system.contains(r#"{"type":"object"}"#), "{system}");
    }

    #[test]
    fn statuses_map_to_codes_and_dispositions() {
        let p = provider(true, Some("sk-secret-canary"));
        let cases = [
            (400, ErrorCode::InvalidRequest, Disposition::Permanent),
            (401, ErrorCode::AuthFailed, Disposition::RotateKey),
            (403, ErrorCode::AuthFailed, Disposition::RotateKey),
            (404, ErrorCode::ModelUnavailable, Disposition::Permanent),
            (
                429,
                ErrorCode::RateLimited,
                Disposition::Retry {
                    after: Some(Duration::from_secs(3)),
                },
            ),
            (
                500,
                ErrorCode::ProviderError,
                Disposition::Retry {
                    after: Some(Duration::from_secs(3)),
                },
            ),
            (
                503,
                ErrorCode::ModelUnavailable,
                Disposition::Retry {
                    after: Some(Duration::from_secs(3)),
                },
            ),
            (
                529,
                ErrorCode::ModelUnavailable,
                Disposition::Retry {
                    after: Some(Duration::from_secs(3)),
                },
            ),
            (418, ErrorCode::ProviderError, Disposition::Permanent),
        ];
        for (status, code, disposition) in cases {
            let status = StatusCode::from_u16(status).expect("status");
            let body = br#"{"error": {"message": "Incorrect API key provided: sk-secret-canary", "type": "x"}}"#;
            let e = p.classify(status, Some(Duration::from_secs(3)), body);
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
        let quota = br#"{"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}"#;
        let e = p.classify(StatusCode::TOO_MANY_REQUESTS, None, quota);
        assert_eq!(
            (e.code, e.disposition),
            (ErrorCode::CredentialsExhausted, Disposition::RotateKey)
        );
    }
}
