//! Delivery guarantees against the real RabbitMQ and Redis: the idempotency claim and
//! graceful shutdown. Broker and Redis restarts are in the chaos suite (`quarry-chaos`), which
//! cannot share the services with tests running in parallel.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics, unique, within};
use quarry_producer::{
    BatchOptions, ErrorCode, InputPart, Job, JobResult, Lane, Status, new_job_id,
};
use quarry_worker::amqp::publisher::header_text;
use std::collections::HashMap;
use std::time::Duration;

fn text_job(n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!("note {n}: call the customer back on Tuesday"),
        }],
    );
    job.custom_id = Some(format!("job-{n:05}"));
    job
}

/// Provider limits that never bind: with them, a job's claim travels with its first limiter
/// reservation (one round trip) instead of going on its own.
fn with_limits(config: &mut quarry_worker::config::Config) {
    if let Some(fake) = config.providers.get_mut("fake") {
        fake.limits = quarry_worker::config::Limits {
            requests_per_minute: Some(100_000),
            tokens_per_minute: Some(100_000_000),
            ..Default::default()
        };
    }
}

/// Round trips the claim made, on its own and with a reservation.
async fn claim_trips(worker: std::net::SocketAddr) -> (f64, f64) {
    let metrics = parse_metrics(&http_get(worker, "/metrics").await.1);
    let trips = |op: &str| {
        counter_sum(
            &metrics,
            "quarry_redis_round_trips_total",
            &[("operation", op)],
        )
    };
    (trips("claim"), trips("claim_and_reserve"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_twice_at_once_is_paid_for_once() {
    delivered_twice(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_twice_at_once_is_paid_for_once_when_its_claim_rides_a_reservation() {
    delivered_twice(true).await;
}

async fn delivered_twice(limited: bool) {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(1500),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    config.limits.delay_steps_secs = vec![1];
    if limited {
        with_limits(&mut config);
    }
    let worker = fleet.spawn_task_worker(config).await;
    let topology = fleet.topology();
    let replies = fleet.reply_queue().await;
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();

    // The same job twice, back to back, as a producer retrying an unconfirmed publish would.
    let job = text_job(1);
    let body = serde_json::to_vec(&job).unwrap();
    for copy in 0..2 {
        let properties = BasicProperties::default()
            .with_message_id(job.id.as_str().into())
            .with_user_id("guest".into())
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(format!("copy-{copy}").as_str().into());
        let confirm =
            quarry_integration::publish_raw(&channel, &topology, "batch", &body, properties).await;
        assert!(confirm.is_ack());
    }

    // Both copies are answered, with the same result; the provider was called once.
    let answers = fleet.take(&replies, 2, 60).await;
    let results: Vec<JobResult> = answers
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    assert!(results.iter().all(|r| r.status == Status::Ok));
    assert_eq!(results[0], results[1], "the second copy replays the first");
    assert_eq!(fleet.fake.stats.snapshot().requests, 1);
    let metrics = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert!(counter_sum(&metrics, "quarry_claim_conflicts_total", &[]) >= 1.0);
    assert!(counter_sum(&metrics, "quarry_result_replays_total", &[]) >= 1.0);
    // Each delivery claimed once at least (the deferred copy again when it came back), by
    // the path the configuration implies.
    let (alone, with_reservation) = claim_trips(worker.http).await;
    if limited {
        assert!(
            with_reservation >= 2.0 && alone == 0.0,
            "{alone} {with_reservation}"
        );
    } else {
        assert!(
            alone >= 2.0 && with_reservation == 0.0,
            "{alone} {with_reservation}"
        );
    }
    worker.stop().await.unwrap();
    fleet.teardown(&[replies]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_jobs_in_flight_and_exits_zero() {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(1500),
        ..FakeConfig::default()
    })
    .await;
    let mut first = fleet.spawn_process_worker().await;
    let client = fleet.client().await;
    let jobs = 600;
    let batch_id = unique("sigterm");
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: jobs,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let mut stream = client
        .run_batch(
            &batch_id,
            (0..jobs).map(text_job).collect::<Vec<_>>(),
            options,
        )
        .await
        .unwrap();

    // Wait until the worker has provider calls in flight, then ask it to stop.
    within(30, "provider calls in flight", async {
        let mut results = Vec::new();
        loop {
            if fleet.fake.stats.snapshot().requests >= 100 {
                break;
            }
            // Results arriving meanwhile are kept, not lost.
            tokio::select! {
                item = stream.next() => results.push(item.expect("stream open").expect("item")),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        assert!(
            results.is_empty(),
            "no call finishes within its 1.5 s latency"
        );
    })
    .await;
    let in_flight_at_term = fleet.fake.stats.snapshot().requests;
    let status = first.terminate(40).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // Every call in flight at SIGTERM was answered before the exit; the rest waits for the
    // next worker, which runs each remaining job once.
    let second = fleet.spawn_process_worker().await;
    let mut by_custom_id: HashMap<String, JobResult> = HashMap::new();
    within(90, "every result", async {
        while by_custom_id.len() < jobs {
            let item = stream.next().await.expect("stream open").expect("item");
            let custom_id = item.result.custom_id.clone().unwrap();
            assert!(
                by_custom_id
                    .insert(custom_id.clone(), item.result.clone())
                    .is_none(),
                "{custom_id} delivered twice"
            );
            item.ack().await.unwrap();
        }
    })
    .await;
    assert!(by_custom_id.values().all(|r| r.status == Status::Ok));
    let calls = fleet.fake.stats.snapshot().requests;
    eprintln!("{in_flight_at_term} calls in flight at SIGTERM; {calls} calls for {jobs} jobs");
    assert_eq!(calls, jobs as u64, "no job was paid for twice");
    stream.finish().await.unwrap();
    drop(second);
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delivery_limit_a_job_is_dead_lettered_with_the_reason() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    // A worker declares the topology (delivery limit 2) and is stopped: the test plays a
    // worker that crashes on this job every time.
    let mut config = fleet.worker_config();
    config.amqp.delivery_limit = 2;
    fleet.spawn_task_worker(config).await.stop().await.unwrap();
    let topology = fleet.topology();
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let job = text_job(7);
    quarry_integration::publish_raw(
        &channel,
        &topology,
        "batch",
        &serde_json::to_vec(&job).unwrap(),
        BasicProperties::default().with_message_id(job.id.as_str().into()),
    )
    .await;
    let crashing = fleet.channel().await;
    let mut consumer = crashing
        .basic_consume(
            topology.lane_queue(Lane::Batch).as_str().into(),
            unique("crash").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead_queue = topology.dead_queue();
    let dead = fleet.take(&dead_queue, 1, 60);
    let crash_loop = async {
        while let Some(Ok(delivery)) = consumer.next().await {
            delivery
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    let dead = tokio::select! {
        dead = dead => dead,
        () = crash_loop => panic!("the consumer ended"),
    };
    let reason = header_text(dead[0].properties.headers(), "x-first-death-reason");
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
    let _ = crashing.close(200, "done".into()).await;
    let _ = dead[0].ack(BasicAckOptions::default()).await;
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_batch_gets_every_result_once_and_pays_once() {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let jobs: Vec<Job> = (0..300).map(text_job).collect();
    let batch_id = unique("resume");
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 100,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };

    // A producer takes 80 results, then loses its connection (here: closes it) with jobs
    // published but unanswered and jobs not yet published.
    let first = fleet.client().await;
    let mut stream = first
        .run_batch(&batch_id, jobs.clone(), options)
        .await
        .unwrap();
    let mut answered = std::collections::HashSet::new();
    within(60, "80 results", async {
        while answered.len() < 80 {
            let item = stream.next().await.unwrap().unwrap();
            answered.insert(item.result.job_id.clone());
            item.ack().await.unwrap();
        }
    })
    .await;
    drop(stream);
    first.close().await.unwrap();

    // A new connection resumes with the jobs it has no result for.
    let second = fleet.client().await;
    let unanswered: Vec<Job> = jobs
        .iter()
        .filter(|j| !answered.contains(&j.id))
        .cloned()
        .collect();
    let mut stream = second
        .resume_batch(&batch_id, unanswered, answered.clone(), options)
        .await
        .unwrap();
    within(90, "the rest of the results", async {
        while answered.len() < jobs.len() {
            let item = stream.next().await.unwrap().unwrap();
            assert!(
                answered.insert(item.result.job_id.clone()),
                "{} handed over twice",
                item.result.job_id
            );
            assert_eq!(item.result.status, Status::Ok);
            item.ack().await.unwrap();
        }
    })
    .await;
    // Jobs published twice (before and after the resume) ran once.
    assert_eq!(fleet.fake.stats.snapshot().requests, jobs.len() as u64);
    stream.finish().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_ends_its_unstarted_jobs_cancelled_and_finishes_the_rest() {
    cancelled_batch(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_ends_its_unstarted_jobs_cancelled_when_claims_ride_reservations() {
    cancelled_batch(true).await;
}

async fn cancelled_batch(limited: bool) {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(300),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    config.worker.concurrency = 16;
    if limited {
        with_limits(&mut config);
    }
    let worker = fleet.spawn_task_worker(config).await;
    let jobs: Vec<Job> = (0..300).map(text_job).collect();
    let batch_id = unique("cancel");
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 300,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let client = fleet.client().await;
    let mut stream = client
        .run_batch(&batch_id, jobs.clone(), options)
        .await
        .unwrap();
    let mut results: HashMap<String, JobResult> = HashMap::new();
    let mut take = async |stream: &mut quarry_producer::BatchStream, until: usize| {
        while results.len() < until {
            let item = stream.next().await.unwrap().unwrap();
            let id = item.result.job_id.clone();
            assert!(
                results.insert(id.clone(), item.result.clone()).is_none(),
                "{id} answered twice"
            );
            item.ack().await.unwrap();
        }
    };
    within(60, "30 results", take(&mut stream, 30)).await;
    client
        .cancel_batch(&batch_id, Duration::from_secs(30))
        .await
        .expect("the fleet applies the cancellation");
    let calls_at_cancel = fleet.fake.stats.snapshot().requests;
    within(60, "every result", take(&mut stream, jobs.len())).await;

    let ok = results.values().filter(|r| r.status == Status::Ok).count();
    let cancelled = results
        .values()
        .filter(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::Cancelled)
        })
        .count();
    assert_eq!(ok + cancelled, jobs.len(), "every job ends ok or CANCELLED");
    assert!(ok >= 30, "jobs finished before the cancel stay ok: {ok}");
    assert!(
        cancelled > 200,
        "most of the batch was not started: {cancelled}"
    );
    let calls = fleet.fake.stats.snapshot().requests;
    assert_eq!(calls, ok as u64, "a cancelled job makes no provider call");
    assert!(
        calls <= calls_at_cancel + 16,
        "no job starts after the cancel is applied, beyond those already in flight ({calls_at_cancel} → {calls})"
    );
    for result in results.values().filter(|r| r.status != Status::Ok) {
        assert_eq!(result.batch_id.as_deref(), Some(batch_id.as_str()));
        assert!(result.custom_id.is_some());
    }
    let (alone, with_reservation) = claim_trips(worker.http).await;
    let claims = if limited { with_reservation } else { alone };
    assert!(
        claims >= jobs.len() as f64,
        "every job was claimed by the configured path: {alone} alone, {with_reservation} with a reservation"
    );
    stream.finish().await.unwrap();
    let _ = client.close().await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_expires_in_its_queue_ends_deadline_exceeded_without_a_call() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    // The worker consumes the interactive lane only: batch jobs wait in their queue.
    let mut config = fleet.worker_config();
    config.amqp.lanes = vec![Lane::Interactive];
    let worker = fleet.spawn_task_worker(config).await;
    let topology = fleet.topology();
    let replies = fleet.reply_queue().await;
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let jobs: Vec<Job> = (0..5).map(text_job).collect();
    for job in &jobs {
        let properties = BasicProperties::default()
            .with_message_id(job.id.as_str().into())
            .with_user_id("guest".into())
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(job.id.as_str().into())
            .with_expiration("200".into());
        quarry_integration::publish_raw(
            &channel,
            &topology,
            "batch",
            &serde_json::to_vec(job).unwrap(),
            properties,
        )
        .await;
    }
    let answers = fleet.take(&replies, jobs.len(), 60).await;
    let mut answered = std::collections::HashSet::new();
    for delivery in &answers {
        let result: JobResult = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(
            result.error.as_ref().map(|e| e.code),
            Some(ErrorCode::DeadlineExceeded),
            "{result:?}"
        );
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some(result.job_id.as_str())
        );
        assert!(answered.insert(result.job_id));
    }
    assert_eq!(answered.len(), jobs.len());
    assert_eq!(fleet.fake.stats.snapshot().requests, 0, "no provider call");
    // The operators still see them in the dead-letter queue, with the broker's reason.
    let dead = fleet.take(&topology.dead_queue(), jobs.len(), 30).await;
    for letter in &dead {
        assert_eq!(
            header_text(letter.properties.headers(), "x-first-death-reason").as_deref(),
            Some("expired")
        );
    }
    let metrics = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert!(counter_sum(&metrics, "quarry_jobs_expired_total", &[]) >= jobs.len() as f64);
    worker.stop().await.unwrap();
    fleet.teardown(&[replies]).await;
}

/// The fleet's topology, declared as a worker declares it, and a channel to publish on.
async fn declared(fleet: &Fleet) -> (quarry_schemas::wire::Topology, lapin::Channel) {
    let topology = fleet.topology();
    let channel = fleet.channel().await;
    quarry_worker::amqp::topology::declare(
        &channel,
        &topology,
        quarry_worker::config::AmqpConfig::default().delivery_limit,
        &[5],
    )
    .await
    .expect("declare the topology");
    (topology, channel)
}

/// lapin hands a `basic.return` to whichever confirm on the channel completes next, not to
/// the returned publish's own: with results to missing reply queues, results to a live one
/// and dead letters all in flight on one channel, every returned result must still be
/// dead-lettered, none dropped by the confirm that happened to carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_returned_result_is_dead_lettered_whichever_confirm_carries_it() {
    const LIVE: usize = 300;
    const MISSING: usize = 100;
    const LETTERS: usize = 100;
    let fleet = Fleet::start(FakeConfig::default()).await;
    let (topology, channel) = declared(&fleet).await;
    channel.confirm_select(Default::default()).await.unwrap();
    let publisher = quarry_worker::amqp::Publisher::new(
        channel,
        &topology,
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    let replies = fleet.reply_queue().await;
    let missing = unique(&topology.reply_prefix("guest"));

    // Each publish from its own task, so that the runtime's threads publish at once.
    let publishes = (0..LIVE + MISSING + LETTERS).map(|n| {
        let (publisher, replies, missing) = (publisher.clone(), replies.clone(), missing.clone());
        tokio::spawn(async move {
            let id = format!("m-{n:04}");
            if n % 5 == 0 && n / 5 < MISSING {
                let queue = format!("{missing}-{n}");
                publisher
                    .reply(&queue, Some(&id), id.as_bytes())
                    .await
                    .map(drop)
            } else if n % 5 == 1 && n / 5 < LETTERS {
                let letter = quarry_worker::amqp::DeadLetter {
                    reason: "undecodable",
                    detail: "a test letter",
                    queue: "a-queue",
                    body: id.as_bytes(),
                    properties: &BasicProperties::default(),
                    plugin: None,
                };
                publisher.dead_letter(&letter).await
            } else {
                publisher
                    .reply(&replies, Some(&id), id.as_bytes())
                    .await
                    .map(drop)
            }
        })
    });
    let publishes: Vec<_> = publishes.collect();
    for outcome in within(
        60,
        "every publish confirmed",
        futures::future::join_all(publishes),
    )
    .await
    {
        outcome.expect("the task").expect("confirmed");
    }

    let dead = fleet
        .take(&topology.dead_queue(), MISSING + LETTERS, 60)
        .await;
    let mut reasons: HashMap<String, usize> = HashMap::new();
    let mut returned = Vec::new();
    for letter in &dead {
        let reason = header_text(letter.properties.headers(), "x-quarry-dead-reason").unwrap();
        if reason == "reply_queue_missing" {
            returned.push(String::from_utf8(letter.data.clone()).unwrap());
        }
        *reasons.entry(reason).or_default() += 1;
    }
    assert_eq!(
        reasons.get("reply_queue_missing"),
        Some(&MISSING),
        "{reasons:?}"
    );
    assert_eq!(reasons.get("undecodable"), Some(&LETTERS), "{reasons:?}");
    returned.sort();
    let expected: Vec<String> = (0..MISSING).map(|i| format!("m-{:04}", i * 5)).collect();
    assert_eq!(
        returned, expected,
        "each returned result once, with its own body"
    );
    let live = fleet.take(&replies, LIVE, 60).await;
    assert_eq!(live.len(), LIVE);
    fleet.teardown(&[replies]).await;
}

/// Publishes from many threads on one channel: each confirm is its own publish's (lapin
/// numbers a publish and queues its frames in two steps, and two threads can interleave
/// them). A reply queue that takes 4,000 messages and nacks the rest (`reject-publish`) shows
/// it: the results reported confirmed are exactly the ones in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_confirm_is_its_own_publishes() {
    const PUBLISHES: usize = 8000;
    const ROOM: usize = 4000;
    let fleet = Fleet::start(FakeConfig::default()).await;
    let (topology, channel) = declared(&fleet).await;
    let replies = unique(&topology.reply_prefix("guest"));
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongInt(4000),
    );
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(replies.as_str().into(), Default::default(), arguments)
        .await
        .expect("declare the bounded reply queue");
    quarry_integration::bind_to_results(&channel, &topology, &replies).await;
    channel.confirm_select(Default::default()).await.unwrap();
    let publisher = quarry_worker::amqp::Publisher::new(
        channel,
        &topology,
        None,
        tokio_util::sync::CancellationToken::new(),
    );

    let publishes: Vec<_> = (0..PUBLISHES)
        .map(|n| {
            let (publisher, replies) = (publisher.clone(), replies.clone());
            tokio::spawn(async move {
                let id = format!("m-{n:04}");
                let outcome = publisher.reply(&replies, Some(&id), id.as_bytes()).await;
                (id, outcome.map(drop))
            })
        })
        .collect();
    let mut confirmed = Vec::new();
    for outcome in within(
        60,
        "every publish settled",
        futures::future::join_all(publishes),
    )
    .await
    {
        let (id, outcome) = outcome.expect("the task");
        match outcome {
            Ok(()) => confirmed.push(id),
            Err(quarry_worker::amqp::PublishError::Nacked) => {}
            Err(other) => panic!("{id}: {other}"),
        }
    }
    assert_eq!(
        confirmed.len(),
        ROOM,
        "the queue took {ROOM}, the rest were nacked"
    );
    let mut queued: Vec<String> = fleet
        .take(&replies, ROOM, 60)
        .await
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    queued.sort();
    confirmed.sort();
    let wrong: Vec<_> = confirmed
        .iter()
        .filter(|id| queued.binary_search(id).is_err())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} results reported confirmed were nacked (their confirms went to others): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    fleet.teardown(&[replies]).await;
}
