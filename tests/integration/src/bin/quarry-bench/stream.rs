//! `stream`: streamed calls through Quarry beside a direct streaming HTTP client reading the
//! same fake provider, in one run. Per stream: time to the first delta from the call's start,
//! and whether the deltas make the final text; over the run: content bytes and chunks per
//! second. The worker's added latency to the first chunk (the provider's first delta to that
//! chunk's publish confirm) comes from its `quarry_stream_first_chunk_added_seconds`.

use crate::common::{MachineCpu, cpu_seconds, histogram, minus, quantile, write_json};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, ProcessWorker, http_get, parse_metrics};
use quarry_producer::{CallOptions, Client, InputPart, Job, StreamEvent, new_job_id};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Twelve words: the fake's text answer is `Extracted: ` and them, about 20 pieces.
const PROMPT: &str =
    "Summarise the receipt from Cafe Luna with two espressos and a total of 5.60 EUR today";

/// One side's figures for a round.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Round {
    streams: usize,
    first_p50_ms: f64,
    first_p99_ms: f64,
    /// Content bytes per second over the round's wall time.
    bytes_per_s: f64,
    /// Messages (SSE events with content, or chunk deltas) per second.
    chunks_per_s: f64,
    chunks_per_stream: f64,
    /// Streams whose deltas did not make the final text (Quarry only).
    mismatches: usize,
    wall_s: f64,
}

fn summarise(firsts: &mut [Duration], bytes: usize, chunks: usize, wall: Duration) -> Round {
    firsts.sort();
    let at = |q: f64| {
        let i = ((firsts.len() as f64 * q).ceil() as usize).clamp(1, firsts.len()) - 1;
        firsts[i].as_secs_f64() * 1e3
    };
    let secs = wall.as_secs_f64();
    Round {
        streams: firsts.len(),
        first_p50_ms: at(0.5),
        first_p99_ms: at(0.99),
        bytes_per_s: bytes as f64 / secs,
        chunks_per_s: chunks as f64 / secs,
        chunks_per_stream: chunks as f64 / firsts.len() as f64,
        mismatches: 0,
        wall_s: secs,
    }
}

/// When the `i`th of `n` streams starts: spread evenly over `ramp` (all at once for zero).
fn start_of(i: usize, n: usize, ramp: Duration) -> Duration {
    ramp.mul_f64(i as f64 / n as f64)
}

/// `n` streams straight from the fake provider, as the worker asks for them, started over
/// `ramp`; `http` keeps its connections from one round to the next.
async fn direct(http: &reqwest::Client, fleet: &Fleet, n: usize, ramp: Duration) -> Round {
    let url = format!("{}/chat/completions", fleet.fake.base_url());
    let body = json!({
        "model": "fake-large", "max_tokens": 1024, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep(start_of(i, n, ramp)).await;
                let began = Instant::now();
                let response = http.post(url).json(&body).send().await.unwrap();
                let mut events = response.bytes_stream().eventsource();
                let (mut first, mut bytes, mut chunks) = (None, 0, 0);
                while let Some(event) = events.next().await {
                    let event = event.unwrap();
                    if event.data == "[DONE]" {
                        break;
                    }
                    let chunk: Value = serde_json::from_str(&event.data).unwrap();
                    if let Some(text) = chunk
                        .pointer("/choices/0/delta/content")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        first.get_or_insert_with(|| began.elapsed());
                        bytes += text.len();
                        chunks += 1;
                    }
                }
                (first.unwrap(), bytes, chunks)
            })
        })
        .collect();
    let (mut firsts, mut bytes, mut chunks) = (Vec::new(), 0, 0);
    for task in tasks {
        let (first, b, c) = task.await.unwrap();
        firsts.push(first);
        bytes += b;
        chunks += c;
    }
    summarise(&mut firsts, bytes, chunks, started.elapsed())
}

/// `n` streamed calls through the fleet, started over `ramp`.
async fn quarry(client: &Arc<Client>, n: usize, ramp: Duration) -> Round {
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(start_of(i, n, ramp)).await;
                let job = Job::new(
                    new_job_id(),
                    vec![InputPart::Text {
                        text: PROMPT.to_owned(),
                    }],
                );
                let began = Instant::now();
                let mut events = client.stream(job, CallOptions::default()).await.unwrap();
                let (mut first, mut shown, mut bytes, mut chunks) = (None, String::new(), 0, 0);
                while let Some(event) = events.next().await {
                    match event.unwrap() {
                        StreamEvent::Delta(text) => {
                            first.get_or_insert_with(|| began.elapsed());
                            bytes += text.len();
                            chunks += 1;
                            shown.push_str(&text);
                        }
                        StreamEvent::Reset(_) => shown.clear(),
                        StreamEvent::Partial(_) => {}
                        StreamEvent::Final(result) => {
                            let matched = result.text.as_deref() == Some(shown.as_str());
                            return (first.unwrap(), bytes, chunks, matched);
                        }
                    }
                }
                panic!("a stream ended without its result");
            })
        })
        .collect();
    let (mut firsts, mut bytes, mut chunks, mut mismatches) = (Vec::new(), 0, 0, 0);
    for task in tasks {
        let (first, b, c, matched) = task.await.unwrap();
        firsts.push(first);
        bytes += b;
        chunks += c;
        mismatches += usize::from(!matched);
    }
    let mut round = summarise(&mut firsts, bytes, chunks, started.elapsed());
    round.mismatches = mismatches;
    round
}

/// The worker's added latency to first chunks, and its chunk publishes until confirmed.
async fn added_latency(worker: &ProcessWorker) -> (Vec<(f64, f64)>, Vec<(f64, f64)>) {
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    (
        histogram(&scrape, "quarry_stream_first_chunk_added_seconds", None),
        histogram(
            &scrape,
            "quarry_amqp_operation_duration_seconds",
            Some(("operation", "publish_chunk")),
        ),
    )
}

/// One phase's rounds: direct and Quarry alternating, the worker's figures read around each
/// Quarry round.
struct Phase {
    directs: Vec<Round>,
    quarries: Vec<Round>,
    /// The worker's added latency to the first chunk, (p50, p99) in ms, per round.
    added: Vec<(f64, f64)>,
    /// Share of first chunks within 5 ms of their first delta (exact: 5 ms is a bucket bound).
    within_5ms: Vec<f64>,
    /// A chunk's publish until confirmed, (p50, p99) in ms, per round.
    confirms: Vec<(f64, f64)>,
    cpu_us_per_stream: Vec<f64>,
    /// Cores busy during each Quarry round: the broker, Redis, this process (the SDK and the
    /// fake provider) and the worker, over the round's wall time.
    cores_busy: Vec<f64>,
    /// CPU microseconds per stream of the broker, Redis and this process, per round.
    cpu_per_stream: Vec<Value>,
}

async fn phase(
    fleet: &Fleet,
    worker: &ProcessWorker,
    client: &Arc<Client>,
    http: &reqwest::Client,
    (streams, rounds, ramp): (usize, usize, Duration),
) -> Phase {
    let pid = worker.child.id().unwrap();
    let mut out = Phase {
        directs: Vec::new(),
        quarries: Vec::new(),
        added: Vec::new(),
        within_5ms: Vec::new(),
        confirms: Vec::new(),
        cpu_us_per_stream: Vec::new(),
        cores_busy: Vec::new(),
        cpu_per_stream: Vec::new(),
    };
    for round in 0..rounds {
        let d = direct(http, fleet, streams, ramp).await;
        let before = added_latency(worker).await;
        let cpu = cpu_seconds(pid);
        let machine = MachineCpu::now();
        let q = quarry(client, streams, ramp).await;
        let worker_cpu = cpu_seconds(pid) - cpu;
        let now = MachineCpu::now();
        let others = now.total_per_job_since(&machine, 1) / 1e6;
        let per_stream = now.per_job_since(&machine, streams);
        println!(
            "    CPU µs a stream: worker {:.0}, {per_stream}",
            worker_cpu * 1e6 / streams as f64
        );
        out.cpu_per_stream.push(per_stream);
        out.cores_busy.push((worker_cpu + others) / q.wall_s);
        out.cpu_us_per_stream
            .push(worker_cpu * 1e6 / streams as f64);
        let after = added_latency(worker).await;
        let added = minus(&after.0, &before.0);
        let confirms = minus(&after.1, &before.1);
        let ms = |b: &[(f64, f64)]| (quantile(b, 0.5) * 1e3, quantile(b, 0.99) * 1e3);
        let total = added.last().map_or(0.0, |(_, c)| *c);
        let within = added
            .iter()
            .find(|(le, _)| (*le - 0.005).abs() < 1e-12)
            .map_or(0.0, |(_, c)| *c);
        out.within_5ms
            .push(if total > 0.0 { within / total } else { 0.0 });
        let (added, confirm) = (ms(&added), ms(&confirms));
        println!(
            "  round {}: direct first byte p50 {:.1} ms p99 {:.1} ms; Quarry first delta p50 {:.1} ms p99 {:.1} ms, {:.1} chunks a stream; added to the first chunk p50 {:.2} ms p99 {:.2} ms ({:.1}% within 5 ms); a chunk's confirm p50 {:.2} ms p99 {:.2} ms; {:.2} of 2 cores busy; {} mismatches",
            round + 1,
            d.first_p50_ms,
            d.first_p99_ms,
            q.first_p50_ms,
            q.first_p99_ms,
            q.chunks_per_stream,
            added.0,
            added.1,
            out.within_5ms[round] * 100.0,
            confirm.0,
            confirm.1,
            out.cores_busy[round],
            q.mismatches
        );
        out.directs.push(d);
        out.quarries.push(q);
        out.added.push(added);
        out.confirms.push(confirm);
    }
    out
}

impl Phase {
    /// The median round by p99 added latency (the tail is noisy on a shared machine: neither
    /// the best nor the worst round stands for the run).
    fn median(&self) -> usize {
        let mut rounds: Vec<usize> = (0..self.added.len()).collect();
        rounds.sort_by(|&a, &b| self.added[a].1.total_cmp(&self.added[b].1));
        rounds[rounds.len() / 2]
    }

    fn table(&self, title: &str) {
        let b = self.median();
        let (d, q) = (&self.directs[b], &self.quarries[b]);
        println!("median round of {}:", self.added.len());
        println!(
            "| {title} | first delta p50 | p99 | content B/s | messages/s | messages a stream |"
        );
        println!("|---|---|---|---|---|---|");
        for (name, r) in [("direct HTTP", d), ("Quarry", q)] {
            println!(
                "| {name} | {:.1} ms | {:.1} ms | {:.0} | {:.0} | {:.1} |",
                r.first_p50_ms, r.first_p99_ms, r.bytes_per_s, r.chunks_per_s, r.chunks_per_stream
            );
        }
        let (p50, p99) = self.added[b];
        println!(
            "worker's added latency to the first chunk: p50 {p50:.2} ms, p99 {p99:.2} ms, {:.1}% within 5 ms (target p99 < 5 ms: {}); a chunk's confirm p50 {:.2} ms, p99 {:.2} ms; worker CPU {:.0} µs a stream",
            self.within_5ms[b] * 100.0,
            if self.within_5ms[b] >= 0.99 {
                "met"
            } else {
                "NOT met"
            },
            self.confirms[b].0,
            self.confirms[b].1,
            self.cpu_us_per_stream[b],
        );
    }

    fn json(&self) -> Value {
        let pairs = |v: &[(f64, f64)]| {
            v.iter()
                .map(|(a, b)| json!({"p50": a, "p99": b}))
                .collect::<Vec<_>>()
        };
        json!({
            "direct": self.directs, "quarry": self.quarries,
            "added_first_chunk_ms": pairs(&self.added),
            "first_chunks_within_5ms": self.within_5ms,
            "chunk_confirm_ms": pairs(&self.confirms),
            "worker_cpu_us_per_stream": self.cpu_us_per_stream,
            "cores_busy": self.cores_busy,
            "cpu_us_per_stream": self.cpu_per_stream,
        })
    }
}

pub async fn stream(
    streams: usize,
    pace_ms: u64,
    rounds: usize,
    ramp_ms: u64,
    chunk_ms: u64,
    json_path: &Path,
) -> Value {
    println!(
        "quarry-bench stream: {streams} streams, a provider event every {pace_ms} ms, chunks every {chunk_ms} ms, {rounds} rounds each side; all at once, then started over {ramp_ms} ms"
    );
    let fleet = Fleet::start(FakeConfig {
        stream_chunk_delay: Duration::from_millis(pace_ms),
        ..FakeConfig::default()
    })
    .await;
    let concurrency = streams.max(256).to_string();
    let chunk = chunk_ms.to_string();
    let env = [
        ("QUARRY__WORKER__CONCURRENCY", concurrency.as_str()),
        ("QUARRY__WORKER__STREAM_CHUNK_MS", chunk.as_str()),
    ];
    let mut worker = fleet.spawn_process_worker_env("", &env).await;
    let client = Arc::new(fleet.client().await);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(streams)
        .build()
        .unwrap();
    // Warm-up: both sides' connections to the provider, the worker's pools.
    direct(&http, &fleet, streams, Duration::ZERO).await;
    quarry(&client, streams, Duration::ZERO).await;
    println!("all {streams} at once:");
    let burst = phase(
        &fleet,
        &worker,
        &client,
        &http,
        (streams, rounds, Duration::ZERO),
    )
    .await;
    let ramp = Duration::from_millis(ramp_ms);
    println!("started over {ramp_ms} ms:");
    let ramped = phase(&fleet, &worker, &client, &http, (streams, rounds, ramp)).await;
    Arc::into_inner(client).unwrap().close().await.unwrap();
    assert!(worker.terminate(60).await.success());
    fleet.teardown(&[]).await;

    let mismatches: usize = burst
        .quarries
        .iter()
        .chain(&ramped.quarries)
        .map(|q| q.mismatches)
        .sum();
    println!();
    burst.table(&format!("{streams} streams at once"));
    println!();
    ramped.table(&format!("{streams} streams over {ramp_ms} ms"));
    println!(
        "streams whose deltas were not the final text: {mismatches} (target 0: {})",
        if mismatches == 0 { "met" } else { "NOT met" },
    );
    let report = json!({
        "scenario": "stream", "streams": streams, "pace_ms": pace_ms, "rounds": rounds,
        "chunk_ms": chunk_ms,
        "ramp_ms": ramp_ms, "at_once": burst.json(), "ramped": ramped.json(),
        "mismatches": mismatches,
    });
    write_json(json_path, &report);
    report
}
