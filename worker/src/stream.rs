//! Streaming a job's answer as `chunk.v1` messages (docs/wire-contract.md, "Streaming").
//!
//! Two halves meet in a [`ChunkSink`]: the provider call appends the deltas it parses
//! ([`ChunkSink::delta`]) and the pipeline marks where an attempt's text is dropped
//! ([`ChunkSink::reset`]); [`pump`], running beside the job, publishes what accumulated, one
//! chunk at a time, each confirmed before the next. While a chunk waits for its confirm, the
//! deltas that arrive go into the next one: a stream holds at most its answer's text, however
//! slow the broker or the consumer.
//!
//! Coalescing: the first delta is published at once (time to first chunk is what a user
//! sees); after it, one chunk per [`Coalescing::interval`], or sooner when the text reaches
//! [`Coalescing::max_bytes`].

use futures::future::BoxFuture;
use quarry_schemas::{Chunk, ResetReason};
use serde_json::Value;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How deltas are coalesced into chunks (`worker.stream_chunk_ms`, `worker.stream_chunk_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// Least time between two chunks (after the first).
    pub interval: std::time::Duration,
    /// A chunk's text past which it goes before the interval ends.
    pub max_bytes: usize,
}

/// Where a streaming job's deltas and resets meet the publisher. Shared by reference between
/// the job's provider calls and its [`pump`].
pub struct ChunkSink {
    state: Mutex<State>,
    wake: Notify,
    /// JSON mode: chunks carry the partial parse.
    json: bool,
}

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSink")
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Text not yet published.
    pending: String,
    /// A reset to publish before `pending`.
    reset: Option<ResetReason>,
    /// The current attempt's text since the last reset, published or pending.
    attempt: String,
    /// Something of the current attempt was handed to the publisher: dropping it needs a
    /// reset chunk (pending text alone is just dropped).
    published: bool,
    /// When the provider's first delta arrived.
    first_delta: Option<Instant>,
    /// The job is over: publish what is left, then stop.
    closed: bool,
    /// The job was cancelled: publish nothing more.
    stopped: bool,
}

/// What [`pump`] takes to publish next.
struct Batch {
    reset: Option<ResetReason>,
    text: String,
    /// The attempt's text so far, for the partial parse (JSON mode).
    attempt: Option<String>,
}

impl ChunkSink {
    /// A sink for one delivery of a job; `redelivered`: the broker delivered the job before
    /// (a worker was lost mid-stream, perhaps), so the stream starts with a reset.
    pub fn new(json: bool, redelivered: bool) -> Self {
        Self {
            state: Mutex::new(State {
                reset: redelivered.then_some(ResetReason::Redelivered),
                ..State::default()
            }),
            wake: Notify::new(),
            json,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A delta of the current attempt's answer, as the provider streamed it.
    pub fn delta(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.stopped || state.closed {
            return;
        }
        state.first_delta.get_or_insert_with(Instant::now);
        state.pending.push_str(text);
        state.attempt.push_str(text);
        drop(state);
        self.wake.notify_one();
    }

    /// The current attempt's text is void (`reason`): the consumer drops what it was shown,
    /// and the next attempt streams from the start. Nothing is sent when nothing was shown.
    pub fn reset(&self, reason: ResetReason) {
        let mut state = self.lock();
        state.pending.clear();
        state.attempt.clear();
        if state.published {
            state.published = false;
            state.reset = Some(reason);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The answer the result will carry: when it is not the streamed text (the provider's
    /// answer was mapped to the job's schema), the stream is reset and the answer follows as
    /// one delta, so that the deltas since the last reset always make the result's text.
    pub fn settle(&self, answer: &str) {
        let rewritten = self.lock().attempt != answer;
        if rewritten {
            self.reset(ResetReason::Rewritten);
            self.delta(answer);
        }
    }

    /// The job was cancelled: nothing more is published.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.pending.clear();
        state.reset = None;
        drop(state);
        self.wake.notify_one();
    }

    /// The job is over: what is pending is published, then [`pump`] returns.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The text of the current attempt so far (what a consumer shows now, once published).
    pub fn attempt_text(&self) -> String {
        self.lock().attempt.clone()
    }

    /// Takes what is due: anything on the first chunk, on close, or past `max_bytes`;
    /// otherwise only once `due` has passed. `None` with the time to wait: nothing is due.
    fn take(&self, due: Option<Instant>, max_bytes: usize) -> Taken {
        let mut state = self.lock();
        if state.stopped {
            return Taken::Done;
        }
        // A redelivery's opening reset goes with its first delta: a delivery that streams
        // nothing (deferred, or answered from the store) sends none.
        let reset_due = match state.reset {
            Some(ResetReason::Redelivered) => !state.pending.is_empty(),
            Some(_) => true,
            None => false,
        };
        let has_work = reset_due || !state.pending.is_empty();
        if !has_work {
            return if state.closed {
                Taken::Done
            } else {
                Taken::Wait(None)
            };
        }
        let now = Instant::now();
        let ready = state.closed
            || reset_due
            || state.pending.len() >= max_bytes
            || due.is_none_or(|d| d <= now);
        if !ready {
            return Taken::Wait(due);
        }
        let text = std::mem::take(&mut state.pending);
        if !text.is_empty() {
            state.published = true;
        }
        let attempt = (self.json && !text.is_empty()).then(|| state.attempt.clone());
        Taken::Batch(Batch {
            reset: state.reset.take(),
            text,
            attempt,
        })
    }

    fn first_delta(&self) -> Option<Instant> {
        self.lock().first_delta
    }
}

enum Taken {
    Batch(Batch),
    /// Nothing is due: wait for a delta, or until this instant.
    Wait(Option<Instant>),
    Done,
}

/// Publishes one chunk's body and waits for its confirm.
pub trait ChunkOut: Sync {
    /// One chunk, confirmed.
    fn publish<'a>(&'a self, body: Vec<u8>) -> BoxFuture<'a, Result<(), String>>;
}

/// What a stream published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Chunks, resets included.
    pub chunks: u64,
    /// Delta text bytes.
    pub bytes: u64,
    /// Reset chunks.
    pub resets: u64,
}

/// Publishes `sink`'s chunks for job `job_id` through `out` until the sink is closed (or
/// stopped) and drained, or a publish fails (the stream ends there; the job's result still
/// goes out). `started`: the job's start, for the time to first chunk.
pub async fn pump(
    sink: &ChunkSink,
    out: &dyn ChunkOut,
    job_id: &str,
    coalescing: Coalescing,
    started: Instant,
) -> Pumped {
    let mut done = Pumped::default();
    let mut seq = 0u64;
    let mut due: Option<Instant> = None;
    loop {
        let batch = match sink.take(due, coalescing.max_bytes) {
            Taken::Batch(batch) => batch,
            Taken::Done => break,
            Taken::Wait(None) => {
                sink.wake.notified().await;
                continue;
            }
            Taken::Wait(Some(at)) => {
                tokio::select! {
                    () = sink.wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
                continue;
            }
        };
        if let Some(reason) = batch.reset {
            let chunk = Chunk::reset(job_id, seq, reason);
            if !send(out, &chunk).await {
                break;
            }
            seq += 1;
            done.chunks += 1;
            done.resets += 1;
            crate::telemetry::stream_reset(reset_label(reason));
        }
        if !batch.text.is_empty() {
            let partial = batch.attempt.as_deref().and_then(partial_json);
            let bytes = batch.text.len() as u64;
            let chunk = Chunk::delta(job_id, seq, batch.text, partial);
            if !send(out, &chunk).await {
                break;
            }
            if done.bytes == 0
                && let Some(first) = sink.first_delta()
            {
                let now = Instant::now();
                crate::telemetry::stream_first_chunk(now - started, now - first);
            }
            seq += 1;
            done.chunks += 1;
            done.bytes += bytes;
            due = Some(Instant::now() + coalescing.interval);
        }
    }
    if done.chunks > 0 {
        crate::telemetry::stream_finished(done.chunks, done.bytes);
    }
    done
}

async fn send(out: &dyn ChunkOut, chunk: &Chunk) -> bool {
    let body = match serde_json::to_vec(chunk) {
        Ok(body) => body,
        Err(error) => {
            tracing::warn!(%error, "a chunk could not be encoded; the stream ends");
            return false;
        }
    };
    match out.publish(body).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "a chunk could not be published; the stream ends, the result follows");
            false
        }
    }
}

/// Bounded metrics label of a reset's reason.
fn reset_label(reason: ResetReason) -> &'static str {
    match reason {
        ResetReason::Retry => "retry",
        ResetReason::Repair => "repair",
        ResetReason::Redelivered => "redelivered",
        ResetReason::Rewritten => "rewritten",
        ResetReason::Other => "other",
    }
}

/// The best-effort parse of an unfinished JSON answer (jiter's partial mode, unfinished
/// strings kept): what the fields hold so far. `None` while nothing parses (an answer that
/// does not begin as JSON, or only whitespace yet).
pub fn partial_json(text: &str) -> Option<Value> {
    let value = jiter::JsonValue::parse_with_config(
        text.as_bytes(),
        false,
        jiter::PartialMode::TrailingStrings,
    )
    .ok()?;
    Some(to_serde(&value))
}

fn to_serde(value: &jiter::JsonValue<'_>) -> Value {
    match value {
        jiter::JsonValue::Null => Value::Null,
        jiter::JsonValue::Bool(b) => Value::Bool(*b),
        jiter::JsonValue::Int(i) => Value::from(*i),
        jiter::JsonValue::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
        }
        jiter::JsonValue::Str(s) => Value::String(s.to_string()),
        jiter::JsonValue::Array(items) => Value::Array(items.iter().map(to_serde).collect()),
        jiter::JsonValue::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.to_string(), to_serde(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
