//! The sink and the pump without a broker: coalescing under paused time, resets, order.

#![allow(clippy::unwrap_used, reason = "tests fail by panicking")]

use super::*;
use quarry_schemas::ChunkKind;
use serde_json::json;
use std::time::Duration;

/// Records every chunk; each publish takes `confirm` (paused time).
struct Recorder {
    chunks: Mutex<Vec<(Instant, Chunk)>>,
    confirm: Duration,
}

impl Recorder {
    fn new(confirm: Duration) -> Self {
        Self {
            chunks: Mutex::new(Vec::new()),
            confirm,
        }
    }

    fn chunks(&self) -> Vec<(Instant, Chunk)> {
        self.chunks.lock().unwrap().clone()
    }
}

impl ChunkOut for Recorder {
    fn publish<'a>(&'a self, body: Vec<u8>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            tokio::time::sleep(self.confirm).await;
            let chunk: Chunk = serde_json::from_slice(&body).unwrap();
            self.chunks.lock().unwrap().push((Instant::now(), chunk));
            Ok(())
        })
    }
}

const COALESCE: Coalescing = Coalescing {
    interval: Duration::from_millis(40),
    max_bytes: 64,
};

/// What a consumer shows after these chunks: deltas since the last reset.
fn shown(chunks: &[(Instant, Chunk)]) -> String {
    let mut text = String::new();
    for (i, (_, chunk)) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64, "seq without gaps");
        match chunk.kind {
            ChunkKind::Delta => text.push_str(chunk.text.as_deref().unwrap()),
            ChunkKind::Reset => text.clear(),
        }
    }
    text
}

#[tokio::test(start_paused = true)]
async fn the_first_delta_goes_at_once_and_the_rest_are_coalesced_by_time() {
    let sink = ChunkSink::new(false, false);
    let out = Recorder::new(Duration::from_millis(1));
    let start = Instant::now();
    let model = async {
        // A token every 5 ms for 200 ms.
        for i in 0..40 {
            sink.delta(&format!("t{i} "));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.close();
    };
    let (pumped, ()) = tokio::join!(pump(&sink, &out, "j", COALESCE, start), model);
    let chunks = out.chunks();
    assert_eq!(chunks[0].1.text.as_deref(), Some("t0 "));
    assert_eq!(
        chunks[0].0 - start,
        Duration::from_millis(1),
        "first chunk at once"
    );
    // 200 ms of tokens at one chunk per 40 ms (+ confirm): 6 or 7 chunks, not 40.
    assert!((5..=8).contains(&chunks.len()), "{} chunks", chunks.len());
    // The last goes at once, on close.
    for pair in chunks[..chunks.len() - 1].windows(2) {
        assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(40));
    }
    let all: String = (0..40).map(|i| format!("t{i} ")).collect();
    assert_eq!(shown(&chunks), all);
    assert_eq!(pumped.chunks, chunks.len() as u64);
    assert_eq!(pumped.bytes, all.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_chunk_goes_early_once_its_text_reaches_max_bytes() {
    let sink = ChunkSink::new(false, false);
    let out = Recorder::new(Duration::from_millis(1));
    let start = Instant::now();
    let model = async {
        sink.delta("a");
        tokio::time::sleep(Duration::from_millis(2)).await;
        sink.delta(&"b".repeat(100));
        tokio::time::sleep(Duration::from_millis(2)).await;
        sink.close();
    };
    tokio::join!(pump(&sink, &out, "j", COALESCE, start), model);
    let chunks = out.chunks();
    assert_eq!(chunks.len(), 2);
    // The second went at 2 ms (its 100 bytes pass 64), not at the 40 ms interval.
    assert!(chunks[1].0 - start < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn a_slow_confirm_coalesces_instead_of_queueing() {
    let sink = ChunkSink::new(false, false);
    // A broker that takes 500 ms per confirm: deltas merge into the next chunk.
    let out = Recorder::new(Duration::from_millis(500));
    let start = Instant::now();
    let model = async {
        for _ in 0..100 {
            sink.delta("x");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.close();
    };
    tokio::join!(pump(&sink, &out, "j", COALESCE, start), model);
    let chunks = out.chunks();
    assert!(chunks.len() <= 4, "{} chunks", chunks.len());
    assert_eq!(shown(&chunks), "x".repeat(100));
}

#[tokio::test(start_paused = true)]
async fn a_reset_drops_what_was_shown_and_pending_text_needs_none() {
    let sink = ChunkSink::new(false, false);
    let out = Recorder::new(Duration::from_millis(1));
    let start = Instant::now();
    let attempts = async {
        sink.delta("first try");
        tokio::time::sleep(Duration::from_millis(5)).await;
        sink.delta(" is cut");
        sink.reset(ResetReason::Retry);
        sink.delta("second");
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Never published: dropped without a reset.
        sink.reset(ResetReason::Repair);
        sink.delta("third");
        sink.close();
    };
    tokio::join!(pump(&sink, &out, "j", COALESCE, start), attempts);
    let chunks = out.chunks();
    let kinds: Vec<_> = chunks
        .iter()
        .map(|(_, c)| (c.kind, c.reason, c.text.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ChunkKind::Delta, None, Some("first try".into())),
            (ChunkKind::Reset, Some(ResetReason::Retry), None),
            (ChunkKind::Delta, None, Some("second".into())),
            (ChunkKind::Reset, Some(ResetReason::Repair), None),
            (ChunkKind::Delta, None, Some("third".into())),
        ]
    );
    assert_eq!(shown(&chunks), "third");
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_starts_with_a_reset_and_a_rewritten_answer_follows_one() {
    let sink = ChunkSink::new(true, true);
    let out = Recorder::new(Duration::from_millis(1));
    let start = Instant::now();
    let job = async {
        sink.delta(r#"{"value":[1,"#);
        tokio::time::sleep(Duration::from_millis(5)).await;
        sink.delta("2]}");
        // The worker unwraps `{"value": ...}`: the result's text is not what streamed.
        sink.settle("[1,2]");
        sink.close();
    };
    tokio::join!(pump(&sink, &out, "j", COALESCE, start), job);
    let chunks = out.chunks();
    assert_eq!(chunks[0].1.reason, Some(ResetReason::Redelivered));
    assert_eq!(chunks[1].1.partial, Some(json!({"value": [1]})));
    let last_reset = chunks.iter().rposition(|(_, c)| c.kind == ChunkKind::Reset);
    assert_eq!(
        chunks[last_reset.unwrap()].1.reason,
        Some(ResetReason::Rewritten)
    );
    assert_eq!(shown(&chunks), "[1,2]");
    // An answer that is what streamed needs nothing more.
    let sink = ChunkSink::new(false, false);
    sink.delta("same");
    sink.settle("same");
    assert_eq!(sink.attempt_text(), "same");
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_that_streams_nothing_sends_no_reset() {
    let sink = ChunkSink::new(false, true);
    let out = Recorder::new(Duration::from_millis(1));
    sink.close();
    pump(&sink, &out, "j", COALESCE, Instant::now()).await;
    assert!(out.chunks().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stopped_stream_publishes_nothing_more() {
    let sink = ChunkSink::new(false, false);
    let out = Recorder::new(Duration::from_millis(1));
    let start = Instant::now();
    let job = async {
        sink.delta("shown");
        tokio::time::sleep(Duration::from_millis(5)).await;
        sink.delta("never");
        sink.stop();
        sink.delta("after");
        sink.close();
    };
    tokio::join!(pump(&sink, &out, "j", COALESCE, start), job);
    assert_eq!(shown(&out.chunks()), "shown");
}

#[test]
fn partial_json_closes_what_is_open() {
    assert_eq!(partial_json(""), None);
    assert_eq!(partial_json("Sure! {"), None);
    assert_eq!(
        partial_json(r#"{"merchant": "Caf"#),
        Some(json!({"merchant": "Caf"}))
    );
    assert_eq!(
        partial_json(r#"{"items": [{"name": "tea", "price": 3"#),
        Some(json!({"items": [{"name": "tea", "price": 3}]}))
    );
    assert_eq!(partial_json(r#"{"a": 1, "b"#), Some(json!({"a": 1})));
    assert_eq!(partial_json(r#"{"a": 1}"#), Some(json!({"a": 1})));
}
