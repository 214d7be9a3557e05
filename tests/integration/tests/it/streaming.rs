//! Streamed calls through the fleet: order and reassembly for every provider kind, resets on
//! retry and repair, cancel and abort, limits reconciled with the streamed usage, and a
//! worker killed mid-stream.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use futures::StreamExt;
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics, within};
use quarry_producer::{
    CallOptions, Client, ErrorCode, InputPart, Job, JobResult, JobStream, JsonSchema, ResetReason,
    Status, StreamEvent, new_job_id,
};
use quarry_worker::config::{Limits, PluginConfig};
use serde_json::Value;
use std::time::Duration;

fn receipt_schema() -> JsonSchema {
    JsonSchema::from(serde_json::from_str::<Value>(quarry_schemas::examples::RECEIPT).unwrap())
}

fn job(text: &str, schema: Option<&JsonSchema>, model: Option<&str>) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: text.to_owned(),
        }],
    );
    job.json_schema = schema.cloned();
    job.model = model.map(str::to_owned);
    job
}

fn call() -> CallOptions {
    CallOptions {
        timeout: Duration::from_secs(60),
        ..CallOptions::default()
    }
}

/// Everything a stream said, and what a consumer following it would show at the end.
#[derive(Debug, Default)]
struct Watched {
    events: Vec<StreamEvent>,
    deltas: usize,
    resets: Vec<ResetReason>,
    shown: String,
    last_partial: Option<Value>,
    result: Option<JobResult>,
}

async fn watch(mut stream: JobStream) -> Watched {
    let mut watched = Watched::default();
    while let Some(event) = stream.next().await {
        let event = event.expect("stream event");
        match &event {
            StreamEvent::Delta(text) => {
                watched.deltas += 1;
                watched.shown.push_str(text);
            }
            StreamEvent::Partial(value) => watched.last_partial = Some(value.clone()),
            StreamEvent::Reset(reason) => {
                watched.resets.push(*reason);
                watched.shown.clear();
                watched.last_partial = None;
            }
            StreamEvent::Final(result) => watched.result = Some(*result.clone()),
        }
        watched.events.push(event);
    }
    assert!(
        matches!(watched.events.last(), Some(StreamEvent::Final(_))),
        "the stream ends with its result"
    );
    watched
}

/// The value of a sample without labels (a histogram's `_count` or `_sum`).
fn unlabelled(metrics: &str, name: &str) -> f64 {
    parse_metrics(metrics);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name}"))
        .trim()
        .parse()
        .unwrap()
}

/// A streaming fleet: the fake streams a piece every `pace`, workers coalesce every 5 ms.
async fn streaming_fleet(pace: Duration) -> Fleet {
    Fleet::start(FakeConfig {
        stream_chunk_delay: pace,
        ..FakeConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_kind_streams_in_order_and_the_deltas_make_the_result() {
    let fleet = streaming_fleet(Duration::from_millis(3)).await;
    let mut config = super::providers::every_kind(&fleet);
    config.worker.stream_chunk_ms = 5;
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let schema = receipt_schema();
    for (alias, _) in super::providers::KINDS {
        // JSON mode: deltas, partial objects, a validated result.
        let stream = client
            .stream(
                job(
                    "Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR",
                    Some(&schema),
                    Some(alias),
                ),
                call(),
            )
            .await
            .unwrap();
        let watched = within(60, "the streamed receipt", watch(stream)).await;
        let result = watched.result.as_ref().unwrap();
        assert_eq!(result.status, Status::Ok, "{alias}: {result:?}");
        assert!(watched.deltas >= 3, "{alias}: {} deltas", watched.deltas);
        assert_eq!(
            watched.shown,
            result.text.clone().unwrap(),
            "{alias}: the deltas since the last reset are the result's text"
        );
        assert_eq!(
            watched.last_partial.as_ref(),
            result.parsed.as_ref(),
            "{alias}: the last partial is the whole object"
        );
        // A partial before the end already holds some of the fields.
        let first_partial = watched.events.iter().find_map(|e| match e {
            StreamEvent::Partial(v) => Some(v.clone()),
            _ => None,
        });
        assert!(first_partial.is_some_and(|v| v.is_object()), "{alias}");
        assert!(
            result.usage.output_tokens > 0,
            "{alias}: usage from the stream"
        );
        // Only OpenAI's strict rewrite may end with a rewritten reset; nothing else resets.
        assert!(
            watched.resets.iter().all(|r| *r == ResetReason::Rewritten),
            "{alias}: {:?}",
            watched.resets
        );

        // Text.
        let stream = client
            .stream(job("Summarise: all went well", None, Some(alias)), call())
            .await
            .unwrap();
        let watched = within(60, "the streamed text", watch(stream)).await;
        let result = watched.result.unwrap();
        assert_eq!(watched.shown, result.text.unwrap(), "{alias}");
        assert!(watched.resets.is_empty() && watched.last_partial.is_none());
    }
    let metrics = http_get(worker.http, "/metrics").await.1;
    assert_eq!(
        unlabelled(&metrics, "quarry_stream_first_chunk_added_seconds_count"),
        8.0,
        "one first chunk per streamed job"
    );
    assert_eq!(unlabelled(&metrics, "quarry_stream_chunks_count"), 8.0);
    assert!(unlabelled(&metrics, "quarry_stream_chunks_sum") >= 24.0);
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resets_and_retries_and_an_invalid_answer_resets_for_its_repair() {
    let fleet = streaming_fleet(Duration::from_millis(2)).await;
    let mut config = fleet.worker_config();
    config.worker.stream_chunk_ms = 2;
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let schema = receipt_schema();
    for (fault, reason) in [
        ("stream_drop", ResetReason::Retry),
        ("invalid_json", ResetReason::Repair),
    ] {
        let stream = client
            .stream(
                job(
                    &format!("[[fake:{fault}]] Cafe Luna TOTAL 5.60 EUR"),
                    Some(&schema),
                    None,
                ),
                call(),
            )
            .await
            .unwrap();
        let watched = within(60, "the retried stream", watch(stream)).await;
        let result = watched.result.as_ref().unwrap();
        assert_eq!(result.status, Status::Ok, "{fault}: {result:?}");
        assert_eq!(watched.resets, vec![reason], "{fault}");
        assert_eq!(result.attempts, 2, "{fault}");
        // Something was shown before the reset, and the rest is the second attempt's.
        let reset_at = watched
            .events
            .iter()
            .position(|e| matches!(e, StreamEvent::Reset(_)))
            .unwrap();
        assert!(
            watched.events[..reset_at]
                .iter()
                .any(|e| matches!(e, StreamEvent::Delta(_))),
            "{fault}: deltas before the reset"
        );
        assert_eq!(watched.shown, result.text.clone().unwrap(), "{fault}");
    }
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    for reason in ["retry", "repair"] {
        assert_eq!(
            counter_sum(&scrape, "quarry_stream_resets_total", &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

/// A job whose stream lasts about 12 s at a piece every 500 ms.
fn slow_job() -> Job {
    job(
        "Write a long summary of this receipt: Cafe Luna, 2 x espresso 2.80, TOTAL 5.60 EUR",
        None,
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_abort_stop_the_provider_stream_and_the_chunks() {
    let fleet = streaming_fleet(Duration::from_millis(500)).await;
    let mut config = fleet.worker_config();
    config.worker.claim_ttl_secs = 3;
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;

    // Cancel: the stream ends CANCELLED long before the provider's stream would have.
    let slow = slow_job();
    let id = slow.id.clone();
    let mut stream = client.stream(slow, call()).await.unwrap();
    let first = within(30, "the first delta", stream.next()).await;
    assert!(
        matches!(first, Some(Ok(StreamEvent::Delta(_)))),
        "{first:?}"
    );
    client
        .cancel(&id, None, Duration::from_secs(30))
        .await
        .unwrap();
    let watched = within(30, "the cancelled stream's end", watch(stream)).await;
    let result = watched.result.unwrap();
    assert_eq!(
        result.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{result:?}"
    );
    assert!(
        result.latency_ms < 6_000,
        "cancelled mid-stream: {} ms",
        result.latency_ms
    );

    // Abort: dropping the stream cancels the job; the same job published again is answered
    // from its stored (cancelled) result.
    let slow = slow_job();
    let again = slow.clone();
    let mut stream = client.stream(slow, call()).await.unwrap();
    let first = within(30, "the first delta", stream.next()).await;
    assert!(
        matches!(first, Some(Ok(StreamEvent::Delta(_)))),
        "{first:?}"
    );
    drop(stream);
    let replayed = within(
        60,
        "the aborted job's result",
        client.extract(again, call()),
    )
    .await
    .unwrap();
    assert_eq!(
        replayed.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{replayed:?}"
    );
    assert!(replayed.latency_ms < 6_000, "{} ms", replayed.latency_ms);
    assert_eq!(fleet.fake.stats.snapshot().requests, 2, "one call per job");
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_job_answered_from_the_store_streams_its_stored_answer() {
    let fleet = streaming_fleet(Duration::from_millis(1)).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let client = fleet.client().await;
    let first = job("Cafe Luna TOTAL 5.60 EUR", Some(&receipt_schema()), None);
    let again = first.clone();
    let stream = client.stream(first, call()).await.unwrap();
    let original = within(60, "the stream", watch(stream))
        .await
        .result
        .unwrap();
    // The same job again (a redelivery after its worker was lost looks the same): no call,
    // and what the consumer shows ends as the stored answer.
    let stream = client.stream(again, call()).await.unwrap();
    let replayed = within(60, "the replayed stream", watch(stream)).await;
    assert_eq!(replayed.resets, vec![ResetReason::Redelivered]);
    assert_eq!(Some(replayed.shown.clone()), original.text);
    assert_eq!(replayed.last_partial, original.parsed);
    assert_eq!(replayed.result.unwrap().text, original.text);
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        1,
        "answered from the store"
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_reconciled_with_the_streamed_usage() {
    let fleet = streaming_fleet(Duration::from_millis(1)).await;
    let mut config = fleet.worker_config();
    let daily = 1_000_000;
    config.plugins.insert(
        "guest".into(),
        PluginConfig {
            limits: Limits {
                daily_tokens: Some(daily),
                ..Limits::default()
            },
            ..PluginConfig::default()
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let mut spent = 0;
    for _ in 0..3 {
        let mut streamed = job("Cafe Luna TOTAL 5.60 EUR", Some(&receipt_schema()), None);
        streamed.max_tokens = Some(2_000);
        let stream = client.stream(streamed, call()).await.unwrap();
        let result = within(60, "the stream", watch(stream))
            .await
            .result
            .unwrap();
        assert_eq!(result.status, Status::Ok);
        assert!(result.usage.total_tokens > 0);
        spent += result.usage.total_tokens;
    }
    let description = client.describe(Duration::from_secs(30)).await.unwrap();
    let quota = description
        .quotas
        .iter()
        .find(|q| q.name == "daily_tokens")
        .expect("the daily quota");
    // Each job reserved its 2,000-token bound; what is spent is what the streams reported.
    assert_eq!(quota.remaining, Some(daily - spent), "{quota:?}");
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_is_reset_and_the_job_finishes_elsewhere() {
    let fleet = streaming_fleet(Duration::from_millis(100)).await;
    let env = [
        ("QUARRY__WORKER__CLAIM_TTL_SECS", "3"),
        ("QUARRY__WORKER__STREAM_CHUNK_MS", "10"),
    ];
    let mut a = fleet.spawn_process_worker_env("", &env).await;
    let mut b = fleet.spawn_process_worker_env("", &env).await;
    let client: Client = fleet.client().await;
    let mut stream = client.stream(slow_job(), call()).await.unwrap();
    let first = within(30, "the first delta", stream.next()).await;
    assert!(
        matches!(first, Some(Ok(StreamEvent::Delta(_)))),
        "{first:?}"
    );
    // Kill the worker streaming it.
    let busy = |addr| async move {
        let scrape = parse_metrics(&http_get(addr, "/metrics").await.1);
        counter_sum(&scrape, "quarry_jobs_in_flight", &[]) > 0.0
    };
    if busy(a.http).await {
        a.kill_9().await;
    } else {
        assert!(busy(b.http).await, "one of the workers streams the job");
        b.kill_9().await;
    }
    let watched = within(90, "the job finished by the survivor", async {
        let mut rest = watch(stream).await;
        rest.events.insert(0, first.unwrap().unwrap());
        rest
    })
    .await;
    let result = watched.result.as_ref().unwrap();
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(
        watched.resets,
        vec![ResetReason::Redelivered],
        "the survivor starts over with a reset"
    );
    assert_eq!(watched.shown, result.text.clone().unwrap());
    assert_eq!(
        watched
            .events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Final(_)))
            .count(),
        1
    );
    assert_eq!(fleet.fake.stats.snapshot().requests, 2, "called again once");
    client.close().await.unwrap();
    drop((a, b));
    fleet.teardown(&[]).await;
}
