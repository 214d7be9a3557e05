//! HTTP plumbing every provider shares: one pooled client per provider, the credential
//! header (marked sensitive), transport errors without URLs, and scrubbing of provider text.

use super::{BuildError, ProviderError};
use crate::config::ProviderConfig;
use bytes::Bytes;
use quarry_schemas::ErrorCode;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// Longest provider error text copied into a result.
pub const MAX_ERROR_TEXT: usize = 500;

/// How a provider wants its key.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and compatible servers).
    Bearer,
    /// The key as the value of a named header (`x-api-key`, `x-goog-api-key`).
    Header(&'static str),
}

/// A provider's HTTP client. The credential comes with each request (keys rotate).
pub struct HttpClient {
    client: reqwest::Client,
    auth: Auth,
}

/// A provider's answer before interpretation.
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (rate-limit hints).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// A provider's fixed endpoint, parsed once when the provider is built.
pub fn endpoint(name: &str, url: &str) -> Result<reqwest::Url, BuildError> {
    reqwest::Url::parse(url).map_err(|e| BuildError {
        name: name.to_owned(),
        reason: format!("endpoint `{url}`: {e}"),
    })
}

impl HttpClient {
    /// Builds the client once; `extra` headers are added to every request.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        auth: Auth,
        extra: &[(&'static str, &str)],
    ) -> Result<Self, BuildError> {
        let error = |reason: String| BuildError {
            name: name.to_owned(),
            reason,
        };
        register_secrets(config.key_pool().iter().filter_map(|k| k.secret.as_ref()));
        register_secrets(config.headers.values());
        let mut headers = HeaderMap::new();
        let configured = config
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()));
        for (key, value) in extra.iter().copied().chain(configured) {
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
        Ok(Self { client, auth })
    }

    /// POSTs a JSON body with `key` and reads the whole answer, within `timeout`. A fixed
    /// endpoint is best passed as a [`reqwest::Url`] parsed once ([`endpoint`]): a `&str` is
    /// parsed again for every request.
    pub async fn post_json(
        &self,
        url: impl reqwest::IntoUrl,
        body: Vec<u8>,
        timeout: Duration,
        key: Option<&SecretString>,
        trace: Option<&(crate::trace::TraceParent, Option<&str>)>,
    ) -> Result<RawResponse, ProviderError> {
        let response = self
            .request(url, body, timeout, key, trace)?
            .send()
            .await
            .map_err(transport_error)?;
        read_whole(response).await
    }

    /// POSTs a JSON body asking for a streamed answer (server-sent events), with the
    /// attempt's timeout, key and trace. A success is the stream of its events, read as they
    /// arrive; the whole stream must end within the timeout (a stalled stream times out like a
    /// slow answer). A failure is read whole and turned into the provider's error by
    /// `classify`.
    pub async fn post_stream(
        &self,
        url: impl reqwest::IntoUrl,
        body: Vec<u8>,
        attempt: &super::ProviderRequest<'_>,
        classify: impl FnOnce(&RawResponse) -> ProviderError,
    ) -> Result<Events, ProviderError> {
        let response = self
            .request(
                url,
                body,
                attempt.timeout,
                attempt.api_key,
                attempt.trace.as_ref(),
            )?
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(classify(&read_whole(response).await?));
        }
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let events = response.bytes_stream().eventsource().map(|event| {
            event.map_err(|error| match error {
                eventsource_stream::EventStreamError::Transport(e) => transport_error(e),
                other => malformed("event stream", other),
            })
        });
        Ok(Box::pin(events))
    }

    fn request(
        &self,
        url: impl reqwest::IntoUrl,
        body: Vec<u8>,
        timeout: Duration,
        key: Option<&SecretString>,
        trace: Option<&(crate::trace::TraceParent, Option<&str>)>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut request = self
            .client
            .post(url)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some((parent, state)) = trace {
            request = request.header("traceparent", parent.as_str().to_owned());
            if let Some(state) = state {
                request = request.header("tracestate", *state);
            }
        }
        if let Some(key) = key {
            let (name, text) = match self.auth {
                Auth::Bearer => (AUTHORIZATION, format!("Bearer {}", key.expose_secret())),
                Auth::Header(name) => (
                    HeaderName::from_static(name),
                    key.expose_secret().to_owned(),
                ),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ProviderError::permanent(
                    ErrorCode::AuthFailed,
                    "the API key is not a valid HTTP header value",
                )
            })?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// A streamed answer's server-sent events; a transport failure mid-stream is its error.
pub type Events = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, ProviderError>> + Send>,
>;

/// A stream that ended before its answer did (the connection closed without the format's
/// last event): retried like a dropped connection.
pub fn stream_cut() -> ProviderError {
    ProviderError::retry(
        ErrorCode::ProviderError,
        None,
        "the provider's stream ended before the answer did",
    )
}

async fn read_whole(response: reqwest::Response) -> Result<RawResponse, ProviderError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport_error)?;
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Every secret this process holds for providers (each key of each pool, each configured
/// header value), registered when providers are built: provider text is scrubbed of all of
/// them, not only of the attempt's own key (a gateway may echo any credential it saw).
static SECRETS: std::sync::RwLock<Vec<SecretString>> = std::sync::RwLock::new(Vec::new());

/// Adds secrets to what [`scrub`] removes. Idempotent for a secret already held.
pub fn register_secrets<'a>(secrets: impl IntoIterator<Item = &'a SecretString>) {
    let mut held = SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for secret in secrets {
        let text = secret.expose_secret();
        if !text.is_empty() && !held.iter().any(|h| h.expose_secret() == text) {
            held.push(secret.clone());
        }
    }
}

/// Removes every secret (the attempt's `key` and all [`register_secrets`] holds) from
/// provider-supplied text, should a provider echo one, and then bounds it: redacting first,
/// so that no key cut at the bound leaves its prefix behind.
pub fn scrub(text: &str, key: Option<&SecretString>) -> String {
    let mut out = text.to_owned();
    let held = SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for secret in key.into_iter().chain(held.iter()) {
        let secret = secret.expose_secret();
        if !secret.is_empty() && out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    truncate(&out, MAX_ERROR_TEXT).to_owned()
}

/// The error for a classified failure answer. A credential failure's text is not copied
/// (providers quote parts of keys there); any other text is scrubbed and bounded.
pub fn failure(
    status: StatusCode,
    code: ErrorCode,
    disposition: super::Disposition,
    text: &str,
    key: Option<&SecretString>,
) -> ProviderError {
    let message = match code {
        ErrorCode::AuthFailed => format!(
            "HTTP {}: the provider rejected the credential",
            status.as_u16()
        ),
        _ => format!("HTTP {}: {}", status.as_u16(), scrub(text, key)),
    };
    ProviderError {
        code,
        disposition,
        message,
    }
}

/// A failure to reach the provider or to read its answer.
pub fn transport_error(error: reqwest::Error) -> ProviderError {
    let code = if error.is_timeout() {
        ErrorCode::Timeout
    } else {
        ErrorCode::ProviderError
    };
    // Without the URL: some providers carry credentials in the query string.
    ProviderError::retry(code, None, error.without_url().to_string())
}

/// A 2xx answer whose body is not what the wire format promises. The parser's text may
/// quote the body: it is scrubbed like any provider text.
pub fn malformed(what: &str, error: impl std::fmt::Display) -> ProviderError {
    ProviderError::retry(
        ErrorCode::ProviderError,
        None,
        scrub(&format!("malformed {what}: {error}"), None),
    )
}

/// The first `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Text for an error answer when it has no structured message.
pub fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT * 4)]).into_owned()
}
