//! `quarry-fake-provider`: an HTTP server that speaks the wire formats of OpenAI chat
//! completions, Anthropic messages and Gemini `generateContent`, answers with content
//! generated from the requested schema, and injects faults on demand, so a fleet can be
//! tested and demonstrated with no network and no key.
//!
//! - [`generate`]: a deterministic JSON value that satisfies a JSON Schema.
//! - [`faults`]: the faults, per-request markers and probability profiles.
//! - [`formats`]: reading each format's requests, writing its answers and errors.
//! - [`FakeConfig`], [`serve`], [`spawn`]: the server, as a library (tests) or a process.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/messages`,
//! `POST /v1beta/models/{model}:generateContent`, `GET /v1/models`, `GET /healthz`,
//! `GET /_fake/stats` (counts) and `GET /_fake/requests` (the last requests received, for
//! tests that assert on the exact request sent). It depends on no Quarry crate: it knows
//! only the providers' public wire formats.

pub mod faults;
pub mod formats;
pub mod generate;
pub mod stream;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use faults::{Fault, Profile};
use formats::{Answer, Format, Parsed};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Requests kept for `/_fake/requests`.
const RECORDED: usize = 256;

/// How the fake provider behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeConfig {
    /// Base latency of every answer.
    pub latency: Duration,
    /// Extra latency, uniform in `0..=jitter`, deterministic per request.
    pub jitter: Duration,
    /// When set, requests must carry this key (in their format's header); others get 401.
    pub api_key: Option<String>,
    /// Faults drawn for every request.
    pub profile: Profile,
    /// How long a `timeout` fault holds the request (default 5 minutes).
    pub hang: Option<Duration>,
    /// The provider's own limit: requests per API key in any 60 s. Past it: 429 with the
    /// Retry-After the real APIs send.
    pub key_rpm: Option<u64>,
    /// The provider's per-second slice of its limit, as some enforce: requests per API key in
    /// any 1 s (429 past it). Counted with `key_rpm`'s arrivals, so it needs `key_rpm`.
    pub key_per_second: Option<u64>,
    /// Error messages quote the presented API key in full, as a careless server might: for
    /// tests that the client keeps keys out of everything it reports.
    pub echo_key: bool,
    /// Pause before each event of a streamed answer (the model's pace).
    pub stream_chunk_delay: Duration,
}

/// Counters of what the server received.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    completions: AtomicU64,
    rejected: AtomicU64,
    faults: AtomicU64,
    in_progress: AtomicU64,
    peak_in_progress: AtomicU64,
    /// The last requests as received: turned into [`Recorded`] only when asked for, so that
    /// recording costs a server under load two reference counts, not a copy of every body.
    recorded: Mutex<VecDeque<Received>>,
    /// Per request body: times seen, and whether the last answer was a fault the client
    /// retries (429, 5xx, 401, a hang).
    sightings: Mutex<HashMap<u64, (u32, bool)>>,
    /// Requests repeating a body whose last answer was a success or an output fault: a job
    /// paid for twice (a retry after a transport fault is not counted).
    unexplained_repeats: AtomicU64,
    /// Per API key: when each accepted request arrived.
    arrivals: Mutex<HashMap<String, Vec<std::time::Instant>>>,
    limited: AtomicU64,
    /// Woken at every generation request, for [`Stats::requests_reach`].
    arrived: tokio::sync::Notify,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Generation requests received.
    pub requests: u64,
    /// Answered with 200.
    pub completions: u64,
    /// Refused as malformed or unauthorised.
    pub rejected: u64,
    /// Faults injected.
    pub faults: u64,
    /// 429s sent because a key passed `key_rpm`.
    pub rate_limited: u64,
    /// Most requests ever being served at the same moment: how much a client keeps in flight.
    pub peak_in_progress: u64,
    /// Repeats of a request body whose last answer was not a retried fault: paid twice.
    pub unexplained_repeats: u64,
}

/// One request as it arrived.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
}

impl Received {
    fn recorded(&self) -> Recorded {
        Recorded {
            path: self.path.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        v.to_str().unwrap_or("<binary>").to_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(&self.body).unwrap_or(Value::Null),
        }
    }
}

/// One received request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (or `null` when it was not JSON).
    pub body: Value,
}

impl Stats {
    /// Current counts.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            rate_limited: self.limited.load(Ordering::Relaxed),
            peak_in_progress: self.peak_in_progress.load(Ordering::Relaxed),
            unexplained_repeats: self.unexplained_repeats.load(Ordering::Relaxed),
        }
    }

    /// Returns once `n` generation requests have arrived (an event to wait on, not a poll).
    pub async fn requests_reach(&self, n: u64) {
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.requests.load(Ordering::Relaxed) >= n {
                return;
            }
            notified.await;
        }
    }

    /// When each request accepted under `key_rpm` arrived, by API key (in order).
    pub fn arrivals(&self) -> HashMap<String, Vec<std::time::Instant>> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Admits a request of `key` under `rpm` (sliding 60 s), or says how long until it could.
    fn admit(&self, key: &str, rpm: u64, per_second: Option<u64>) -> Result<(), Duration> {
        let Ok(mut arrivals) = self.arrivals.lock() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let times = arrivals.entry(key.to_owned()).or_default();
        let within = |period: Duration| {
            times
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < period)
                .count()
        };
        let (minute, second) = (Duration::from_secs(60), Duration::from_secs(1));
        let recent = within(minute);
        if recent as u64 >= rpm {
            let oldest_in_window = times[times.len() - recent];
            return Err(minute.saturating_sub(now.duration_since(oldest_in_window)));
        }
        if let Some(limit) = per_second {
            let this_second = within(second);
            if this_second as u64 >= limit {
                let oldest = times[times.len() - this_second];
                return Err(second.saturating_sub(now.duration_since(oldest)));
            }
        }
        times.push(now);
        Ok(())
    }

    /// The last requests received, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .map(|r| r.iter().map(Received::recorded).collect())
            .unwrap_or_default()
    }

    fn record(&self, entry: Received) {
        if let Ok(mut recorded) = self.recorded.lock() {
            if recorded.len() == RECORDED {
                recorded.pop_front();
            }
            recorded.push_back(entry);
        }
    }

    /// How many times this request body has been seen, this one included.
    fn sighting(&self, hash: u64) -> u32 {
        let Ok(mut seen) = self.sightings.lock() else {
            return 1;
        };
        if seen.len() > 1_000_000 {
            seen.clear();
        }
        let entry = seen.entry(hash).or_insert((0, false));
        if entry.0 > 0 && !entry.1 {
            self.unexplained_repeats.fetch_add(1, Ordering::Relaxed);
        }
        entry.0 += 1;
        entry.0
    }

    /// Records whether a repeat of this body would be a client retry (`true`: its answer is a
    /// fault the client retries, or still pending) or a second payment (`false`: answered).
    fn answered(&self, hash: u64, retried_fault: bool) {
        if let Ok(mut seen) = self.sightings.lock()
            && let Some(entry) = seen.get_mut(&hash)
        {
            entry.1 = retried_fault;
        }
    }

    /// Distinct request bodies, and the most times one was received.
    pub fn call_profile(&self) -> (u64, u32) {
        self.sightings
            .lock()
            .map(|seen| {
                (
                    seen.len() as u64,
                    seen.values().map(|(n, _)| *n).max().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
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
        .route("/v1/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .route("/v1beta/models/{model}", post(gemini))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/_fake/stats", get(stats_handler))
        .route("/_fake/requests", get(requests_handler))
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
    /// `http://addr/v1`: the base URL of the OpenAI and Anthropic formats.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://addr/v1beta`: the base URL of the Gemini format.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
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

async fn requests_handler(State(state): State<Arc<AppState>>) -> Json<Vec<Recorded>> {
    Json(state.stats.requests())
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

async fn openai(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(
        &state,
        Format::OpenAi,
        "/v1/chat/completions".into(),
        &headers,
        None,
        None,
        &body,
    )
    .await
}

async fn anthropic(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    handle(
        &state,
        Format::Anthropic,
        "/v1/messages".into(),
        &headers,
        None,
        None,
        &body,
    )
    .await
}

async fn gemini(
    State(state): State<Arc<AppState>>,
    Path(model_action): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/v1beta/models/{model_action}");
    let (model, streaming) = match (
        model_action.strip_suffix(":generateContent"),
        model_action.strip_suffix(":streamGenerateContent"),
    ) {
        (Some(model), _) => (model, false),
        // The real API streams a JSON array without `alt=sse`; this fake streams events only.
        (_, Some(model)) if query.get("alt").map(String::as_str) == Some("sse") => (model, true),
        (_, Some(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": 400, "message": "the fake provider streams only with alt=sse", "status": "INVALID_ARGUMENT"}})),
            )
                .into_response();
        }
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(
                    json!({"error": {"code": 404, "message": "unknown method", "status": "NOT_FOUND"}}),
                ),
            )
                .into_response();
        }
    };
    let key = query.get("key").map(String::as_str);
    handle(
        &state,
        Format::Gemini,
        path,
        &headers,
        Some((model, streaming)),
        key,
        &body,
    )
    .await
}

/// The API key a request presents, in whichever header its format uses.
fn presented_key(headers: &HeaderMap, query_key: Option<&str>) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
        .or(query_key)
        .unwrap_or("")
        .to_owned()
}

/// An error answer; with `echo`, its message quotes that key (see [`FakeConfig::echo_key`]).
fn error_reply(
    status: StatusCode,
    headers: HeaderMap,
    mut body: Value,
    echo: Option<&str>,
) -> Response {
    if let Some(key) = echo
        && let Some(message) = body
            .pointer_mut("/error/message")
            .and_then(|m| m.as_str().map(str::to_owned))
    {
        body["error"]["message"] = Value::String(format!("{message} (API key: {key})"));
    }
    (status, headers, Json(body)).into_response()
}

async fn handle(
    state: &AppState,
    format: Format,
    path: String,
    headers: &HeaderMap,
    // Gemini: the model from the URL, and whether it is the streaming endpoint.
    gemini: Option<(&str, bool)>,
    query_key: Option<&str>,
    body: &axum::body::Bytes,
) -> Response {
    let path_model = gemini.map(|(model, _)| model);
    let gemini_stream = gemini.is_some_and(|(_, stream)| stream);
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    stats.arrived.notify_waiters();
    let echo = state
        .config
        .echo_key
        .then(|| presented_key(headers, query_key));
    let reply = |status: StatusCode, headers: HeaderMap, body: Value| {
        error_reply(status, headers, body, echo.as_deref())
    };
    let _in_progress = InProgress::enter(stats);
    let request: Option<Value> = serde_json::from_slice(body).ok();
    stats.record(Received {
        path,
        headers: headers.clone(),
        body: body.clone(),
    });
    if let Some(key) = &state.config.api_key
        && !format.authorised(headers, query_key, key)
    {
        stats.rejected.fetch_add(1, Ordering::Relaxed);
        let (status, headers, body) = format.unauthorised();
        return reply(status, headers, body);
    }
    if let Some(rpm) = state.config.key_rpm {
        let key = presented_key(headers, query_key);
        if let Err(wait) = stats.admit(&key, rpm, state.config.key_per_second) {
            stats.limited.fetch_add(1, Ordering::Relaxed);
            let (status, mut headers, body) = format.error(Fault::RateLimit);
            if let Ok(value) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string())
            {
                headers.insert("retry-after", value);
            }
            return reply(status, headers, body);
        }
    }
    let parsed = match request.as_ref().map(|r| format.parse(r, path_model)) {
        Some(Ok(parsed)) => parsed,
        Some(Err(message)) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            let (status, body) = format.invalid_request(&message);
            return reply(status, HeaderMap::new(), body);
        }
        None => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            let (status, body) = format.invalid_request("the body is not JSON");
            return reply(status, HeaderMap::new(), body);
        }
    };

    let hash = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        h.finish()
    };
    let sighting = stats.sighting(hash);
    let mut rng = generate::Rng::new(hash ^ u64::from(sighting).rotate_left(32));
    // OpenAI and Anthropic stream on `"stream": true`; Gemini by its endpoint.
    let streaming = gemini_stream
        || (format != Format::Gemini
            && request.as_ref().and_then(|r| r.get("stream")) == Some(&Value::Bool(true)));
    let include_usage = request
        .as_ref()
        .and_then(|r| r.pointer("/stream_options/include_usage"))
        == Some(&Value::Bool(true));
    let fault = faults::decide(
        &state.config.profile,
        &parsed.text,
        rng.unit(),
        sighting,
        parsed.first_answer,
    )
    .filter(|f| streaming || !f.is_mid_stream());
    if fault.is_some() {
        stats.faults.fetch_add(1, Ordering::Relaxed);
    }
    // Until the answer is complete, a repeat of this body is a client retry (it gave up
    // waiting: the handler is dropped with the connection and the mark stays).
    stats.answered(hash, true);
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

    match fault {
        Some(Fault::Timeout) => {
            tokio::time::sleep(state.config.hang.unwrap_or(Duration::from_secs(300))).await;
        }
        Some(
            f @ (Fault::RateLimit
            | Fault::Auth
            | Fault::ProxyAuth
            | Fault::ServerError
            | Fault::Overloaded
            | Fault::BadRequest
            | Fault::PaymentRequired
            | Fault::NotFound
            | Fault::Malformed),
        ) => {
            let (status, headers, body) = format.error(f);
            return reply(status, headers, body);
        }
        _ => {}
    }
    let answer = compose(&parsed, fault, &mut rng);
    let refusal = fault == Some(Fault::Refusal);
    if streaming {
        let events = stream::events(format, &parsed, &answer, hash, refusal, include_usage);
        let mid_stream = fault.filter(|f| f.is_mid_stream());
        // A stream cut short is a fault the client retries: its repeat is explained.
        if mid_stream.is_none() {
            stats.completions.fetch_add(1, Ordering::Relaxed);
            stats.answered(hash, false);
        }
        return streamed(
            events,
            mid_stream,
            state.config.stream_chunk_delay,
            state.config.hang.unwrap_or(Duration::from_secs(300)),
        );
    }
    stats.completions.fetch_add(1, Ordering::Relaxed);
    stats.answered(hash, false);
    let body = format.answer(&parsed, &answer, hash, refusal);
    (StatusCode::OK, Json(body)).into_response()
}

/// A `text/event-stream` response of `events`, one every `delay`; a mid-stream fault cuts it
/// after half of them: `stream_drop` drops the connection, `stream_stall` sends nothing more
/// for `hang`, then drops it.
fn streamed(
    events: Vec<String>,
    fault: Option<Fault>,
    delay: Duration,
    hang: Duration,
) -> Response {
    use futures::StreamExt;
    enum Step {
        Event(String),
        Drop,
        Stall,
    }
    let mut steps: Vec<Step> = events.into_iter().map(Step::Event).collect();
    match fault {
        Some(Fault::StreamDrop) => {
            steps.truncate(steps.len() / 2);
            steps.push(Step::Drop);
        }
        Some(Fault::StreamStall) => {
            steps.truncate(steps.len() / 2);
            steps.push(Step::Stall);
        }
        _ => {}
    }
    let body = futures::stream::iter(steps).then(move |step| async move {
        match step {
            Step::Event(event) => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(axum::body::Bytes::from(event))
            }
            Step::Drop => {
                // What was sent reaches the client first, as on a real connection that breaks.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(std::io::Error::other(
                    "the fake provider dropped the stream",
                ))
            }
            Step::Stall => {
                tokio::time::sleep(hang).await;
                Err(std::io::Error::other(
                    "the fake provider's stalled stream ends",
                ))
            }
        }
    });
    (
        StatusCode::OK,
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// The answer's content, with any output fault applied.
fn compose(parsed: &Parsed, fault: Option<Fault>, rng: &mut generate::Rng) -> Answer {
    let (content, tool_input) = match (&parsed.schema, parsed.json_object) {
        (Some(schema), _) => {
            let value = match fault {
                Some(Fault::SchemaInvalid) => break_schema(schema),
                _ => generate::generate(schema, rng),
            };
            (value.to_string(), Some(value))
        }
        (None, true) => {
            let value = json!({"answer": first_words(&parsed.text, 8)});
            (value.to_string(), Some(value))
        }
        (None, false) => (
            format!("Extracted: {}", first_words(&parsed.text, 12)),
            None,
        ),
    };
    let (content, tool_input, truncated) = match fault {
        Some(Fault::InvalidJson) => (
            format!("Sure! Here is the data you asked for: {content}"),
            None,
            false,
        ),
        Some(Fault::Truncated) => {
            let cut: String = content.chars().take(content.chars().count() / 2).collect();
            (cut, None, true)
        }
        _ => (content, tool_input, false),
    };
    // A stop sequence ends the answer before it; the output bound cuts it (about 4
    // characters a token, like the counts below).
    let (content, tool_input, stopped_by) = match parsed
        .stop
        .iter()
        .filter_map(|s| content.find(s.as_str()).map(|at| (at, s)))
        .min()
    {
        Some((at, stop)) => (content[..at].to_owned(), None, Some(stop.clone())),
        None => (content, tool_input, None),
    };
    let bound = parsed.max_tokens.map_or(usize::MAX, |n| {
        usize::try_from(n.saturating_mul(4)).unwrap_or(usize::MAX)
    });
    let (content, tool_input, truncated) = if content.chars().count() > bound {
        let cut: String = content.chars().take(bound).collect();
        (cut, None, true)
    } else {
        (content, tool_input, truncated)
    };
    // Anthropic's tool input is parsed JSON: a broken answer travels as text instead.
    let tool_input = tool_input.or_else(|| {
        parsed
            .tool
            .as_ref()
            .map(|_| json!({"value": Value::String(content.clone())}))
    });
    let prompt = parsed.text.len().div_ceil(4) as u64 + 85 * parsed.images + 8;
    let completion = content.len().div_ceil(4) as u64;
    Answer {
        content,
        tool_input,
        truncated,
        stopped_by,
        usage: (prompt, completion),
    }
}

/// A value of the wrong type for the schema's root.
fn break_schema(schema: &Value) -> Value {
    let root = schema
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match root.as_deref() {
        Some("array") => json!({"not": "an array"}),
        Some("string") => json!(12345),
        _ => json!(["not", "an", "object"]),
    }
}

fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}
