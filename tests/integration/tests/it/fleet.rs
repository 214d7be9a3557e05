//! The fleet end to end against the real RabbitMQ and Redis of this machine.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics, within};
use quarry_producer::{
    BatchOptions, CallOptions, Client, ErrorCode, InputPart, Job, JobResult, Lane, Status,
    new_job_id,
};
use quarry_schemas::job::{ImageMime, ImagePart};
use quarry_schemas::wire::{HEADER_DEAD_DETAIL, HEADER_DEAD_REASON, HEADER_DEAD_USER};
use quarry_worker::amqp::publisher::header_text;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

fn receipt_schema() -> Value {
    serde_json::from_str(quarry_schemas::examples::RECEIPT).unwrap()
}

fn receipt_job(n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!("Cafe Luna\n{n} x espresso 2.80\nTOTAL 5.60 EUR"),
        }],
    );
    job.custom_id = Some(format!("receipt-{n:05}"));
    job.instructions = Some("Extract the expense record.".into());
    job.json_schema = Some(receipt_schema().into());
    job.schema_name = Some("receipt".into());
    job
}

/// Collects a whole batch, acking each result; returns results by custom id (panics on a
/// custom id seen twice) and the SDK's count of dropped duplicate deliveries.
async fn collect(client: &Client, jobs: Vec<Job>, secs: u64) -> (HashMap<String, JobResult>, u64) {
    let expected = jobs.len();
    let batch_id = new_job_id();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 300,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let mut stream = client
        .run_batch(&batch_id, jobs, options)
        .await
        .expect("batch starts");
    let mut by_custom_id = HashMap::new();
    within(secs, &format!("{expected} results"), async {
        while let Some(item) = stream.next().await {
            let item = item.expect("batch item");
            let custom_id = item.result.custom_id.clone().expect("custom id echoed");
            assert_eq!(item.result.batch_id.as_deref(), Some(batch_id.as_str()));
            let previous = by_custom_id.insert(custom_id.clone(), item.result.clone());
            assert!(previous.is_none(), "custom id {custom_id} delivered twice");
            item.ack().await.expect("ack");
        }
    })
    .await;
    let duplicates = stream.duplicates();
    stream.finish().await.expect("reply queue deleted");
    (by_custom_id, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_end_to_end_and_typed_failures() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let client = fleet.client().await;

    let mut job = receipt_job(1);
    job.input.push(InputPart::Image(ImagePart {
        mime: ImageMime::Png,
        data: "iVBORw0KGgoAAAANSUhEUg==".into(),
    }));
    // Exactly as written: a number past f64, an exponent, keys out of order.
    let metadata = r#"{"row": 1180591620717411303424, "scale": 1E2, "source": "test", "a": 0}"#;
    job.metadata = Some(quarry_producer::Metadata::from_json(metadata).unwrap());
    let job_id = job.id.clone();
    let result = client
        .extract(job, CallOptions::default())
        .await
        .expect("result");
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.job_id, job_id);
    assert_eq!(result.custom_id.as_deref(), Some("receipt-00001"));
    assert_eq!(result.provider.as_deref(), Some("fake"));
    assert_eq!(result.model.as_deref(), Some("fake-large"));
    assert_eq!(result.attempts, 1);
    assert_eq!(
        result.metadata.as_ref().map(|m| m.as_str()),
        Some(metadata),
        "metadata comes back byte for byte"
    );
    assert!(result.finish_reason.is_some(), "{result:?}");
    assert!(
        result.usage.input_tokens > 85,
        "text plus one image: {:?}",
        result.usage
    );
    assert!(result.usage.output_tokens > 0);
    let parsed = result.parsed.expect("JSON mode gives parsed");
    assert!(jsonschema::is_valid(&receipt_schema(), &parsed), "{parsed}");
    assert_eq!(
        serde_json::from_str::<Value>(result.text.as_deref().unwrap()).unwrap(),
        parsed
    );

    // Text mode: no schema, no parsed.
    let text_job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "Summarise: all good".into(),
        }],
    );
    let result = client
        .extract(text_job, CallOptions::default())
        .await
        .expect("result");
    assert_eq!(result.status, Status::Ok);
    assert!(result.parsed.is_none());
    assert!(result.text.unwrap().starts_with("Extracted:"));

    // Well-formed jobs that fail get error results with stable codes, before any provider call.
    let calls_before = fleet.fake.stats.snapshot().requests;
    let mut unknown_alias = receipt_job(2);
    unknown_alias.model = Some("no-such-alias".into());
    let mut bad_schema = receipt_job(3);
    bad_schema.json_schema = Some(json!({"type": "objekt"}).into());
    let mut remote_ref = receipt_job(4);
    remote_ref.json_schema = Some(json!({"$ref": "https://example.com/evil.json"}).into());
    let mut expired = receipt_job(5);
    expired.deadline_ms = Some(1_000);
    for (job, code) in [
        (unknown_alias, ErrorCode::ModelUnresolved),
        (bad_schema, ErrorCode::InvalidRequest),
        (remote_ref, ErrorCode::InvalidRequest),
        (expired, ErrorCode::DeadlineExceeded),
    ] {
        let result = client
            .extract(job, CallOptions::default())
            .await
            .expect("result");
        assert_eq!(result.status, Status::Error);
        let error = result.error.expect("error");
        assert_eq!(error.code, code, "{}", error.message);
        assert!(!error.retryable);
        assert_eq!(result.attempts, 0);
    }
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        calls_before,
        "failed jobs must not reach the provider"
    );

    // An invalid job never leaves the SDK.
    let invalid = Job::new("", vec![]);
    let err = client
        .extract(invalid, CallOptions::default())
        .await
        .expect_err("must be refused");
    assert!(!err.is_transport(), "{err}");

    // Metrics parse as Prometheus text and count what happened; health endpoints answer.
    let (status, body) = http_get(worker.http, "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse_metrics(&body);
    assert!(
        counter_sum(&scrape, "quarry_jobs_total", &[("outcome", "ok")]) >= 2.0,
        "{body}"
    );
    assert!(
        counter_sum(
            &scrape,
            "quarry_jobs_total",
            &[("outcome", "MODEL_UNRESOLVED")]
        ) >= 1.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "quarry_provider_request_duration_seconds")
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "quarry_worker_overhead_seconds")
    );
    assert_eq!(http_get(worker.http, "/healthz").await.0, 200);
    assert_eq!(http_get(worker.http, "/readyz").await.0, 200);

    client.close().await.expect("close");
    worker.stop().await.expect("worker stops cleanly");
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_through_two_worker_processes() {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(5),
        ..FakeConfig::default()
    })
    .await;
    let a = fleet.spawn_process_worker().await;
    let b = fleet.spawn_process_worker().await;
    let client = fleet.client().await;

    let jobs: Vec<Job> = (0..1000).map(receipt_job).collect();
    let (results, _duplicates) = collect(&client, jobs, 240).await;
    assert_eq!(results.len(), 1000);
    let validator = jsonschema::validator_for(&receipt_schema()).unwrap();
    for n in 0..1000 {
        let result = results
            .get(&format!("receipt-{n:05}"))
            .unwrap_or_else(|| panic!("receipt-{n:05} missing"));
        assert_eq!(result.status, Status::Ok, "{result:?}");
        assert!(
            validator.is_valid(result.parsed.as_ref().expect("parsed")),
            "receipt-{n:05} invalid"
        );
    }
    // Both workers took part.
    for (name, worker) in [("a", &a), ("b", &b)] {
        let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
        let done = counter_sum(&scrape, "quarry_jobs_total", &[("outcome", "ok")]);
        assert!(done > 0.0, "worker {name} processed nothing");
    }
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        1000,
        "one provider call per job"
    );
    client.close().await.expect("close");
    drop((a, b));
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_batch_loses_nothing() {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(200),
        ..FakeConfig::default()
    })
    .await;
    let mut victim = fleet.spawn_process_worker().await;
    let survivor = fleet.spawn_process_worker().await;
    let client = fleet.client().await;
    let total = 1000;

    let batch_id = new_job_id();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 400,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let mut stream = client
        .run_batch(
            &batch_id,
            (0..total).map(receipt_job).collect::<Vec<_>>(),
            options,
        )
        .await
        .unwrap();
    let mut seen: HashMap<String, Status> = HashMap::new();
    let mut killed_at = 0;
    within(300, "all results despite the kill", async {
        let mut killed = false;
        while let Some(item) = stream.next().await {
            let item = item.expect("batch item");
            let custom_id = item.result.custom_id.clone().unwrap();
            assert!(
                seen.insert(custom_id.clone(), item.result.status).is_none(),
                "{custom_id} delivered twice"
            );
            item.ack().await.unwrap();
            // Kill the victim mid-batch, at a moment it is working on jobs.
            if !killed && seen.len() >= 150 {
                let scrape = parse_metrics(&http_get(victim.http, "/metrics").await.1);
                if counter_sum(&scrape, "quarry_jobs_in_flight", &[]) > 0.0 {
                    victim.kill_9().await;
                    killed = true;
                    killed_at = seen.len();
                }
            }
        }
        assert!(
            killed,
            "the victim never had a job in flight after the first 150 results"
        );
    })
    .await;
    let duplicates = stream.duplicates();
    stream.finish().await.unwrap();

    assert_eq!(seen.len(), total, "every job has exactly one result");
    assert!(seen.values().all(|s| *s == Status::Ok));
    let calls = fleet.fake.stats.snapshot().requests as usize;
    // Only the victim's unacknowledged jobs (at most its prefetch, 256) may be called twice.
    assert!(
        calls >= total && calls <= total + 256,
        "provider calls {calls}"
    );
    assert!(killed_at < total, "killed mid-batch");
    eprintln!(
        "kill -9 after {killed_at} results: {total} results, {} provider calls, {duplicates} duplicate deliveries dropped",
        calls
    );
    let scrape = parse_metrics(&http_get(survivor.http, "/metrics").await.1);
    assert!(counter_sum(&scrape, "quarry_jobs_total", &[]) > 0.0);
    client.close().await.unwrap();
    drop(survivor);
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_reach_the_dead_letter_queue() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let topology = fleet.topology();
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let replies = fleet.reply_queue().await;

    let publish = |body: Vec<u8>, properties: BasicProperties| {
        let channel = channel.clone();
        let exchange = topology.jobs_exchange();
        async move {
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "interactive".into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    };
    let base = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_user_id("guest".into())
    };
    let valid_job = |id: &str| {
        serde_json::to_vec(&Job::new(id, vec![InputPart::Text { text: "x".into() }])).unwrap()
    };

    // 1. Not JSON, but with a reply address: dead-lettered and answered INVALID_REQUEST.
    publish(
        b"{not json".to_vec(),
        base("m-garbage")
            .with_reply_to(replies.as_str().into())
            .with_correlation_id("c-garbage".into()),
    )
    .await;
    // 2. JSON of the wrong shape, no reply address: dead-lettered only.
    publish(
        br#"{"version": "job.v1", "id": 5, "input": "text"}"#.to_vec(),
        base("m-types"),
    )
    .await;
    // 3. A valid job without reply_to: its result would have nowhere to go.
    publish(valid_job("m-noreply"), base("m-noreply")).await;
    // 4. A valid job whose reply queue does not exist: the result itself is dead-lettered.
    let gone = format!("{}no-such-queue", topology.reply_prefix("guest"));
    publish(
        valid_job("m-gone"),
        base("m-gone")
            .with_reply_to(gone.as_str().into())
            .with_correlation_id("m-gone".into()),
    )
    .await;
    // 5. A valid job whose reply_to is not one of its plugin's reply queues: refused,
    //    nothing published there.
    publish(
        valid_job("m-foreign"),
        base("m-foreign")
            .with_reply_to("no-such-queue-anywhere".into())
            .with_correlation_id("m-foreign".into()),
    )
    .await;
    // 6, 7. A valid job body under properties that say it is something else: refused with
    //    the property named, not decoded anyway.
    for (id, properties) in [
        (
            "m-text",
            base("m-text").with_content_type("text/plain".into()),
        ),
        (
            "m-gzip",
            base("m-gzip")
                .with_content_type("application/json".into())
                .with_content_encoding("gzip".into()),
        ),
    ] {
        publish(
            valid_job(id),
            properties
                .with_reply_to(replies.as_str().into())
                .with_correlation_id(id.into()),
        )
        .await;
    }

    let letters = fleet.take(&topology.dead_queue(), 7, 30).await;
    let mut reasons: HashMap<String, String> = HashMap::new();
    for letter in &letters {
        let id = letter
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let reason =
            header_text(letter.properties.headers(), HEADER_DEAD_REASON).expect("reason header");
        reasons.insert(id, reason);
    }
    // The dead-lettered result of case 4 carries no message id of its own; key it by its reason.
    assert_eq!(
        reasons.get("m-garbage").map(String::as_str),
        Some("undecodable"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("m-types").map(String::as_str),
        Some("undecodable"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("m-noreply").map(String::as_str),
        Some("missing_reply_to"),
        "{reasons:?}"
    );
    assert!(
        reasons.values().any(|r| r == "reply_queue_missing"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.get("m-foreign").map(String::as_str),
        Some("reply_to_refused"),
        "{reasons:?}"
    );
    let garbage = letters
        .iter()
        .find(|l| l.properties.message_id().as_ref().map(|s| s.as_str()) == Some("m-garbage"))
        .unwrap();
    assert_eq!(garbage.data, b"{not json", "the original body is kept");
    assert_eq!(
        header_text(garbage.properties.headers(), HEADER_DEAD_USER).as_deref(),
        Some("guest")
    );

    for (id, property) in [("m-text", "content_type"), ("m-gzip", "content_encoding")] {
        assert_eq!(
            reasons.get(id).map(String::as_str),
            Some("undecodable"),
            "{reasons:?}"
        );
        let letter = letters
            .iter()
            .find(|l| l.properties.message_id().as_ref().map(|s| s.as_str()) == Some(id))
            .unwrap();
        let detail = header_text(letter.properties.headers(), HEADER_DEAD_DETAIL).unwrap();
        assert!(detail.starts_with(property), "{detail}");
    }

    let mut answered = fleet.take(&replies, 3, 30).await;
    answered.sort_by_key(|d| {
        d.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string())
    });
    for (delivery, id, property) in [
        (&answered[1], "m-gzip", "content_encoding `gzip`"),
        (&answered[2], "m-text", "content_type `text/plain`"),
    ] {
        let result: JobResult = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(result.job_id, id);
        let error = result.error.unwrap();
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains(property), "{}", error.message);
    }
    let result: JobResult = serde_json::from_slice(&answered[0].data).unwrap();
    assert_eq!(result.job_id, "m-garbage");
    assert_eq!(result.error.unwrap().code, ErrorCode::InvalidRequest);
    assert_eq!(
        answered[0]
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-garbage")
    );

    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert!(
        counter_sum(
            &scrape,
            "quarry_dead_letters_total",
            &[("reason", "undecodable")]
        ) >= 2.0
    );
    worker.stop().await.unwrap();
    fleet.teardown(&[replies]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publishing_channel_stops_the_worker_and_keeps_the_job() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let topology = fleet.topology();
    let channel = fleet.channel().await;
    // An operator deletes the dead-letter exchange: the next dead letter closes the worker's
    // publishing channel (404), and every later publish would fail the same way.
    channel
        .exchange_delete(topology.dead_exchange().as_str().into(), Default::default())
        .await
        .unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let confirm = quarry_integration::publish_raw(
        &channel,
        &topology,
        "batch",
        b"not a job",
        BasicProperties::default().with_message_id("m-poison".into()),
    )
    .await;
    assert!(confirm.is_ack());

    let outcome = worker.stopped(30).await;
    let error = outcome.expect_err("the worker must stop with an error, not spin");
    assert!(
        format!("{error:#}").contains("publishing channel failed"),
        "{error:#}"
    );
    // The message was not acknowledged: it is back in its queue for the next worker.
    let back = fleet.take(&topology.lane_queue(Lane::Batch), 1, 30).await;
    assert_eq!(back[0].data, b"not a job");
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_hundreds_of_provider_calls_in_flight() {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(1500),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    config.worker.concurrency = 256;
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let (results, _) = collect(&client, (0..400).map(receipt_job).collect(), 120).await;
    assert_eq!(results.len(), 400);
    let peak = fleet.fake.stats.snapshot().peak_in_progress;
    eprintln!("peak provider calls in flight from one worker: {peak}");
    assert!(
        peak >= 200,
        "only {peak} provider calls were in flight at once"
    );
    assert!(
        peak <= 256,
        "{peak} calls in flight exceed worker.concurrency = 256"
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_producer_collects_the_rest_of_its_batch() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let batch_id = new_job_id();
    let jobs: Vec<Job> = (0..200).map(receipt_job).collect();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();

    // First producer: opens the batch's durable reply queue, publishes everything, stores and
    // acknowledges 50 results, then goes away without a word.
    let first = fleet.client().await;
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 50,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let mut stream = first
        .attach_batch(&batch_id, ids.clone(), options)
        .await
        .unwrap();
    let reply_queue = stream.reply_queue().to_owned();
    within(60, "200 confirmed publishes", async {
        for mut job in jobs {
            job.batch_id = Some(batch_id.clone());
            first
                .publish(&job, Lane::Batch, &reply_queue)
                .await
                .unwrap();
        }
    })
    .await;
    let mut stored: HashMap<String, JobResult> = HashMap::new();
    within(60, "the first 50 results", async {
        while stored.len() < 50 {
            let item = stream.next().await.unwrap().unwrap();
            stored.insert(item.result.job_id.clone(), item.result.clone());
            item.ack().await.unwrap();
        }
    })
    .await;
    drop(stream);
    within(30, "the first producer to close", first.close())
        .await
        .unwrap();

    // Second producer: attaches to the same batch with what is still missing.
    let second = fleet.client().await;
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .cloned()
        .collect();
    let mut stream = second
        .attach_batch(&batch_id, missing.clone(), options)
        .await
        .unwrap();
    within(60, "the other 150 results", async {
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            let id = item.result.job_id.clone();
            assert!(
                stored.insert(id.clone(), item.result.clone()).is_none(),
                "{id} handed over twice"
            );
            item.ack().await.unwrap();
        }
    })
    .await;
    stream.finish().await.unwrap();
    assert_eq!(stored.len(), 200, "every job's result, across the restart");
    assert!(ids.iter().all(|id| stored[id].status == Status::Ok));
    second.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_caller_gave_up_on_is_not_worked_on_after() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let client = fleet.client().await;
    // A second queue on the client's reply routing key sees the result the client, having
    // given up, no longer waits for.
    let channel = fleet.channel().await;
    let watch = quarry_integration::unique("qt-watch");
    channel
        .queue_declare(
            watch.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            watch.as_str().into(),
            fleet.topology().results_exchange().as_str().into(),
            client.reply_queue().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    // The provider never answers; the worker would retry for the fleet's 30 s budget.
    let job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "[[fake:timeout*9]] receipt, total 6".into(),
        }],
    );
    let options = CallOptions {
        timeout: Duration::from_secs(2),
        ..CallOptions::default()
    };
    // The call's timeout and the job's deadline are the same instant: either the client gives
    // up first, or the worker's DEADLINE_EXCEEDED reaches it just before.
    match client.extract(job, options).await {
        Err(quarry_producer::Error::Timeout { .. }) => {}
        Ok(result)
            if result.error.as_ref().map(|e| e.code) == Some(ErrorCode::DeadlineExceeded) => {}
        other => panic!("neither a timeout nor DEADLINE_EXCEEDED: {other:?}"),
    }
    let seen = fleet.take(&watch, 1, 10).await;
    let result: JobResult = serde_json::from_slice(&seen[0].data).unwrap();
    let code = result.error.as_ref().map(|e| e.code);
    assert_eq!(code, Some(ErrorCode::DeadlineExceeded), "{result:?}");
    assert_eq!(
        result.attempts, 1,
        "the one attempt was cut at the call's timeout, and none followed"
    );
    assert!(
        result.latency_ms < 3_000,
        "the worker stopped with the caller: {} ms",
        result.latency_ms
    );
    assert!(result.queue_ms.is_some(), "the SDK stamps the publish time");
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[watch]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_learns_what_it_may_use_and_what_is_left_of_its_quotas() {
    use quarry_worker::config::{Limits, PluginConfig};
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    config.plugins.insert(
        "guest".into(),
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec!["fake/fake-large".into(), "fake/fake-xl".into()]),
            max_tokens: Some(2048),
            limits: Limits {
                requests_per_minute: Some(100),
                daily_tokens: Some(1_000_000),
                ..Limits::default()
            },
            ..PluginConfig::default()
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let timeout = Duration::from_secs(30);
    let before = client.describe(timeout).await.unwrap();
    assert_eq!(before.plugin, "guest");
    assert_eq!(before.default_model, "default");
    assert!(before.model_override && !before.agent_id_override);
    // `fast` routes to fake-mini, which allowed_models leaves out: not offered.
    let aliases: Vec<(&str, Vec<&str>)> = before
        .aliases
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.targets.iter().map(|t| t.model.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(aliases, [("default", vec!["fake-large"])]);
    let named: Vec<&str> = before.targets.iter().map(|t| t.model.as_str()).collect();
    assert_eq!(named, ["fake-large", "fake-xl"]);
    assert_eq!(
        (
            before.max_tokens_ceiling,
            before.default_max_tokens,
            before.job_budget_ms
        ),
        (Some(2048), 1024, 30_000)
    );
    assert!(before.contract.contains(&"job.v1".to_owned()));
    assert!(before.capabilities.contains(&"describe".to_owned()));
    let remaining = |d: &quarry_schemas::control::Description, name: &str| {
        d.quotas
            .iter()
            .find(|q| q.name == name)
            .and_then(|q| q.remaining)
    };
    assert_eq!(remaining(&before, "requests_per_minute"), Some(100));
    assert_eq!(remaining(&before, "daily_tokens"), Some(1_000_000));

    let result = client
        .extract(receipt_job(1), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(result.status, Status::Ok, "{result:?}");
    let after = client.describe(timeout).await.unwrap();
    assert_eq!(remaining(&after, "requests_per_minute"), Some(99));
    assert_eq!(
        remaining(&after, "daily_tokens"),
        Some(1_000_000 - result.usage.total_tokens),
        "the day's tokens, reconciled with the real usage"
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

/// A fleet whose provider hangs for a minute on `[[fake:timeout]]`, one task worker (with
/// `concurrency` job permits when given) whose claims are extended, and cancellations in
/// flight noticed, every second, and a shared client.
async fn hanging_fleet(
    concurrency: Option<u16>,
) -> (
    Fleet,
    quarry_integration::TaskWorker,
    std::sync::Arc<Client>,
) {
    let fleet = Fleet::start(FakeConfig {
        hang: Some(Duration::from_secs(60)),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    if let Some(permits) = concurrency {
        config.worker.concurrency = permits;
    }
    config.worker.claim_ttl_secs = 3;
    let worker = fleet.spawn_task_worker(config).await;
    let client = std::sync::Arc::new(fleet.client().await);
    (fleet, worker, client)
}

/// Publishes a job whose provider call hangs for the fake's `hang`, and returns its id, the
/// call's task, once the call is at the provider (the `n`th request).
async fn hanging_call(
    fleet: &Fleet,
    client: &std::sync::Arc<Client>,
    call: CallOptions,
    n: u64,
) -> (
    String,
    tokio::task::JoinHandle<Result<JobResult, quarry_producer::Error>>,
) {
    let hanging = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "[[fake:timeout]] receipt, total 1".to_owned(),
        }],
    );
    let id = hanging.id.clone();
    let task = tokio::spawn({
        let client = client.clone();
        async move { client.extract(hanging, call).await }
    });
    within(
        30,
        "the call at the provider",
        fleet.fake.stats.requests_reach(n),
    )
    .await;
    (id, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_cancelled_in_flight_or_before_it_starts() {
    let (fleet, worker, client) = hanging_fleet(None).await;
    let text = |t: &str| Job::new(new_job_id(), vec![InputPart::Text { text: t.to_owned() }]);
    let timeout = Duration::from_secs(30);
    let call = CallOptions {
        timeout: Duration::from_secs(60),
        ..CallOptions::default()
    };
    // Cancelled before it starts: answered CANCELLED, never called.
    let early = text("receipt, total 2");
    client.cancel(&early.id, None, timeout).await.unwrap();
    let early = client.extract(early, call).await.unwrap();
    assert_eq!(
        early.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{early:?}"
    );
    assert_eq!(early.attempts, 0, "never called");
    assert_eq!(fleet.fake.stats.snapshot().requests, 0);

    // Cancelled in flight: the provider call (which would hang for a minute) is dropped.
    let (hanging_id, first) = hanging_call(&fleet, &client, call, 1).await;
    client.cancel(&hanging_id, None, timeout).await.unwrap();
    let first = within(30, "the in-flight job's result", first)
        .await
        .unwrap()
        .unwrap();
    let error = first.error.as_ref().expect("cancelled");
    assert_eq!(error.code, ErrorCode::Cancelled, "{first:?}");
    assert!(error.message.contains("in flight"), "{error:?}");
    assert!(
        first.latency_ms < 10_000,
        "dropped long before the provider's 60 s hang: {} ms",
        first.latency_ms
    );
    assert_eq!(first.attempts, 1);
    std::sync::Arc::into_inner(client)
        .expect("one client")
        .close()
        .await
        .unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_are_answered_while_every_job_permit_is_taken() {
    let (fleet, worker, client) = hanging_fleet(Some(1)).await;
    let text = |t: &str| Job::new(new_job_id(), vec![InputPart::Text { text: t.to_owned() }]);
    let call = CallOptions {
        timeout: Duration::from_secs(60),
        ..CallOptions::default()
    };
    // The one permit is taken by a call that would hang for a minute, and a second job
    // waits behind it.
    let (hanging_id, first) = hanging_call(&fleet, &client, call, 1).await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.extract(text("receipt, total 2"), call).await }
    });

    // Control requests do not queue behind them: describe answers, and the cancel reaches
    // the job in flight, which frees the permit for the second.
    let short = Duration::from_secs(10);
    let description = client.describe(short).await.expect("describe while busy");
    assert!(!description.aliases.is_empty(), "{description:?}");
    client
        .cancel(&hanging_id, None, short)
        .await
        .expect("cancel while busy");
    let first = within(30, "the cancelled job", first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "{first:?}"
    );
    let second = within(30, "the job behind it", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.status, Status::Ok, "{second:?}");
    assert_eq!(fleet.fake.stats.snapshot().peak_in_progress, 1);
    std::sync::Arc::into_inner(client)
        .expect("one client")
        .close()
        .await
        .unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}
