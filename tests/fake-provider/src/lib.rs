//! `quarry-fake-provider`: an HTTP server that speaks the OpenAI chat-completions wire format
//! and answers with content generated from the requested JSON Schema, so a fleet can be tested
//! and demonstrated with no network and no key.
//!
//! - [`generate`]: a deterministic JSON value that satisfies a JSON Schema.
//! - [`FakeConfig`], [`serve`], [`spawn`]: the server, as a library (tests) or a process (`main`).
//!
//! Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /healthz`, and
//! `GET /_fake/stats` (requests received, by outcome) for tests that count provider calls.
//! It depends on no Quarry crate: it knows only the providers' public wire format.

pub mod generate;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How the fake provider behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeConfig {
    /// Base latency of every completion.
    pub latency: Duration,
    /// Extra latency, uniform in `0..=jitter`, deterministic per request.
    pub jitter: Duration,
    /// When set, requests must carry `Authorization: Bearer <key>`; others get 401.
    pub api_key: Option<String>,
}

/// Counters of what the server received.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    completions: AtomicU64,
    rejected: AtomicU64,
    in_progress: AtomicU64,
    peak_in_progress: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Chat-completion requests received.
    pub requests: u64,
    /// Answered with 200.
    pub completions: u64,
    /// Answered with a 4xx.
    pub rejected: u64,
    /// Most requests ever being served at the same moment: how much a client keeps in flight.
    pub peak_in_progress: u64,
}

impl Stats {
    /// Current counts.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            peak_in_progress: self.peak_in_progress.load(Ordering::Relaxed),
        }
    }
}

struct AppState {
    config: FakeConfig,
    stats: Arc<Stats>,
}

/// The router, for embedding.
pub fn router(config: FakeConfig, stats: Arc<Stats>) -> Router {
    let state = Arc::new(AppState { config, stats });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/_fake/stats", get(stats_handler))
        .with_state(state)
}

/// Serves on `listener` until the future completes (never, unless the listener fails).
pub async fn serve(
    listener: TcpListener,
    config: FakeConfig,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    axum::serve(listener, router(config, stats)).await
}

/// A server running in the background of the current tokio runtime.
pub struct FakeProvider {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProvider {
    /// `http://addr/v1`, the base URL an OpenAI-compatible client wants.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on 127.0.0.1 with an OS-chosen port.
pub async fn spawn(config: FakeConfig) -> std::io::Result<FakeProvider> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let server_stats = stats.clone();
    let task = tokio::spawn(async move {
        if let Err(error) = serve(listener, config, server_stats).await {
            tracing::error!(%error, "fake provider stopped");
        }
    });
    Ok(FakeProvider { addr, stats, task })
}

/// Counts a request as in progress until dropped, and keeps the peak.
struct InProgress<'a>(&'a Stats);

impl<'a> InProgress<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_in_progress.fetch_max(now, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn stats_handler(State(state): State<Arc<AppState>>) -> Json<StatsSnapshot> {
    Json(state.stats.snapshot())
}

async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [
            {"id": "fake-large", "object": "model", "owned_by": "quarry-fake-provider"},
            {"id": "fake-mini", "object": "model", "owned_by": "quarry-fake-provider"}
        ]
    }))
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, Json(body)).into_response()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_progress = InProgress::enter(&state.stats);
    if let Some(expected) = &state.config.api_key {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            state.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return openai_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect API key provided.",
            );
        }
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            state.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("We could not parse the JSON body of your request: {e}"),
            );
        }
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        state.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "you must provide a model parameter",
        );
    };
    let Some(messages) = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        state.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "'messages' must be a non-empty array",
        );
    };

    let seed = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        h.finish()
    };
    let mut rng = generate::Rng::new(seed);
    let content = match request
        .pointer("/response_format/type")
        .and_then(Value::as_str)
    {
        Some("json_schema") => {
            let Some(schema) = request.pointer("/response_format/json_schema/schema") else {
                state.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return openai_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "Missing required parameter: 'response_format.json_schema.schema'.",
                );
            };
            generate::generate(schema, &mut rng).to_string()
        }
        Some("json_object") => json!({"answer": first_words(messages, 8)}).to_string(),
        _ => format!("Extracted: {}", first_words(messages, 12)),
    };

    let jitter_ms = state.config.jitter.as_millis() as u64;
    let delay = state.config.latency
        + Duration::from_millis(if jitter_ms > 0 {
            rng.below(jitter_ms + 1)
        } else {
            0
        });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let prompt_tokens = prompt_tokens(messages);
    let completion_tokens = (content.len() as u64).div_ceil(4);
    state.stats.completions.fetch_add(1, Ordering::Relaxed);
    Json(json!({
        "id": format!("chatcmpl-fake-{seed:016x}"),
        "object": "chat.completion",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
    .into_response()
}

/// Roughly 4 characters a token for text, 85 tokens an image (OpenAI's low-detail cost).
fn prompt_tokens(messages: &[Value]) -> u64 {
    let mut chars = 0u64;
    let mut images = 0u64;
    for message in messages {
        match message.get("content") {
            Some(Value::String(s)) => chars += s.len() as u64,
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            chars += part
                                .get("text")
                                .and_then(Value::as_str)
                                .map_or(0, |t| t.len() as u64)
                        }
                        Some("image_url") => images += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    chars.div_ceil(4) + 85 * images + 3 * messages.len() as u64
}

fn first_words(messages: &[Value], n: usize) -> String {
    let text = messages
        .iter()
        .rev()
        .find_map(|m| match m.get("content") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts)) => parts
                .iter()
                .find_map(|p| p.get("text").and_then(Value::as_str).map(str::to_owned)),
            _ => None,
        })
        .unwrap_or_default();
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}
