//! `quarry-bench limits`: several `quarry-worker` processes share a key pool against the fake
//! provider, which enforces the same per-key requests/min as Quarry's configuration. Prints,
//! for 1, 2 and 3 keys: the most requests the provider saw per key in any 60 s window against
//! the limit, the provider's 429s, utilisation of the limit under saturation, throughput, and
//! Redis round trips per job. Needs the local RabbitMQ and Redis (`scripts/test` sets them up)
//! and the release binaries (`cargo build --release --bins`).
//!
//! `quarry-bench ceiling`: the raw AMQP round trip (a minimal lapin echo responder on the same
//! broker, queue type, lane arguments, confirms and payload) against Quarry end to end
//! (SDK → one worker process → zero-latency fake provider → result), side by side in one run.
//!
//! ```text
//! cargo build --release --bins && target/release/quarry-bench limits --workers 4 --rpm 300
//! target/release/quarry-bench ceiling --jobs 20000 --in-flight 512
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a benchmark fails loudly"
)]

use clap::{Parser, Subcommand};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics};
use quarry_producer::{BatchOptions, InputPart, Job, Lane, Status, new_job_id};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The broker's ceiling (raw AMQP echo) against Quarry end to end, and their ratio.
    Ceiling {
        /// Jobs per measured run.
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// Jobs outstanding at once (producer side), for both.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
        /// Rounds: raw and Quarry alternate this many times; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/ceiling.json")]
        json: PathBuf,
    },
    /// Fleet-wide limits and the key pool under saturation.
    Limits {
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Requests per minute per key, in Quarry's configuration and at the provider.
        #[arg(long, default_value_t = 300)]
        rpm: u64,
        /// Seconds to run each scenario (at least one full 60 s window plus the next burst).
        #[arg(long, default_value_t = 65)]
        seconds: u64,
        /// Key counts to run, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        keys: Vec<usize>,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/limits.json")]
        json: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::Ceiling {
            jobs,
            in_flight,
            rounds,
            json,
        } => ceiling(jobs, in_flight, rounds, &json).await,
        Command::Limits {
            workers,
            rpm,
            seconds,
            keys,
            json,
        } => limits(workers, rpm, seconds, &keys, &json).await,
    }
}

struct Scenario {
    keys: usize,
    max_per_window: u64,
    provider_429: u64,
    first_window: u64,
    utilisation: f64,
    throughput: f64,
    round_trips_per_job: f64,
    jobs_ok: f64,
}

async fn limits(workers: usize, rpm: u64, seconds: u64, key_counts: &[usize], json_path: &PathBuf) {
    println!(
        "quarry-bench limits: {workers} worker processes, {rpm} requests/min per key, {seconds} s per scenario"
    );
    let mut scenarios = Vec::new();
    for &keys in key_counts {
        scenarios.push(scenario(workers, rpm, seconds, keys).await);
    }
    let base = scenarios
        .first()
        .map_or(1.0, |s| s.throughput / s.keys as f64);
    println!();
    println!(
        "| keys | limit/key/60s | max seen/key/60s | provider 429s | utilisation | throughput req/s | × 1 key | Redis trips/job |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        println!(
            "| {} | {rpm} | {} | {} | {:.1}% | {:.2} | {:.2} | {:.2} |",
            s.keys,
            s.max_per_window,
            s.provider_429,
            s.utilisation * 100.0,
            s.throughput,
            s.throughput / base,
            s.round_trips_per_job
        );
    }
    let report = json!({
        "workers": workers, "rpm_per_key": rpm, "seconds": seconds,
        "scenarios": scenarios.iter().map(|s| json!({
            "keys": s.keys, "max_requests_per_key_per_60s": s.max_per_window, "provider_429": s.provider_429,
            "requests_in_first_window": s.first_window, "utilisation": s.utilisation,
            "throughput_rps": s.throughput, "speedup_vs_one_key": s.throughput / base,
            "redis_round_trips_per_job": s.round_trips_per_job, "jobs_ok": s.jobs_ok,
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nfigures written to {}", json_path.display());
}

async fn scenario(workers: usize, rpm: u64, seconds: u64, keys: usize) -> Scenario {
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(50),
        key_rpm: Some(rpm),
        ..FakeConfig::default()
    })
    .await;
    let mut extra = format!(
        "[providers.fake.limits]\nrequests_per_minute = {rpm}\n[limits]\nmax_inline_wait_ms = 120000\n"
    );
    for k in 0..keys {
        extra.push_str(&format!(
            "[[providers.fake.keys]]\nname = \"key{k}\"\napi_key = \"sk-bench-{k}\"\n"
        ));
    }
    let mut fleet_workers = Vec::new();
    for _ in 0..workers {
        fleet_workers.push(fleet.spawn_process_worker_with(&extra).await);
    }
    let client = fleet.client().await;
    // Saturation: half a minute of work more than the keys may serve in the run.
    let capacity = rpm * keys as u64 * seconds.div_ceil(60);
    let total = (capacity + rpm * keys as u64 / 2) as usize;
    let jobs: Vec<Job> = (0..total)
        .map(|i| {
            let mut job = Job::new(
                new_job_id(),
                vec![InputPart::Text {
                    text: format!("bench item {i}"),
                }],
            );
            job.max_tokens = Some(64);
            job
        })
        .collect();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: total,
        idle_timeout: None,
        trace: None,
    };
    let mut stream = client
        .run_batch(&new_job_id(), jobs, options)
        .await
        .unwrap();
    let reply_queue = stream.reply_queue().to_owned();
    let started = Instant::now();
    let collector = tokio::spawn(async move {
        let mut ok = 0u64;
        while let Some(Ok(item)) = stream.next().await {
            ok += u64::from(item.result.status == Status::Ok);
            let _ = item.ack().await;
        }
        ok
    });
    tokio::time::sleep(Duration::from_secs(seconds)).await; // the measured run
    let stats = fleet.fake.stats.snapshot();
    let arrivals = fleet.fake.stats.arrivals();
    let mut round_trips = 0.0;
    let mut jobs_ok = 0.0;
    for worker in &fleet_workers {
        let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
        round_trips += counter_sum(&scrape, "quarry_redis_round_trips_total", &[]);
        jobs_ok += counter_sum(&scrape, "quarry_jobs_total", &[("outcome", "ok")]);
    }
    let window = Duration::from_secs(60);
    let mut max_per_window = 0u64;
    let mut first_window = 0u64;
    let first = arrivals.values().flatten().min().copied();
    for times in arrivals.values() {
        for (i, t) in times.iter().enumerate() {
            let inside = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < window)
                .count() as u64;
            max_per_window = max_per_window.max(inside);
        }
        if let Some(first) = first {
            first_window += times
                .iter()
                .filter(|t| t.duration_since(first) < window)
                .count() as u64;
        }
    }
    let utilisation = first_window as f64 / (rpm * keys as u64) as f64;
    let throughput = first_window as f64 / window.as_secs_f64();
    println!(
        "{keys} key(s): {} requests reached the provider in {:.0} s; max {max_per_window}/key in any 60 s (limit {rpm}); {} provider 429s",
        stats.requests,
        started.elapsed().as_secs_f64(),
        stats.rate_limited
    );
    collector.abort();
    drop(client);
    for mut worker in fleet_workers {
        worker.kill_9().await;
    }
    fleet.teardown(&[reply_queue]).await;
    Scenario {
        keys,
        max_per_window,
        provider_429: stats.rate_limited,
        first_window,
        utilisation,
        throughput,
        round_trips_per_job: if jobs_ok > 0.0 {
            round_trips / jobs_ok
        } else {
            0.0
        },
        jobs_ok,
    }
}

/// The job both sides carry: a receipt extraction with its schema, as plugins send.
fn ceiling_job(n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!(
                "Cafe Central, 2 coffees 7.00, 1 cake 4.50, TOTAL 11.50 EUR, receipt {n}"
            ),
        }],
    );
    job.custom_id = Some(format!("c{n}"));
    job.instructions = Some("Extract the expense record.".into());
    job.json_schema = Some(serde_json::from_str(quarry_schemas::examples::RECEIPT).unwrap());
    job.schema_name = Some("receipt".into());
    job
}

async fn ceiling(jobs: usize, in_flight: usize, rounds: usize, json_path: &PathBuf) {
    println!("quarry-bench ceiling: {jobs} jobs per run, {in_flight} in flight, {rounds} rounds");
    let (mut raw, mut quarry) = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let r = raw_round_trip(jobs, in_flight).await;
        println!("round {round}: raw AMQP echo     {r:>9.0} jobs/s");
        raw.push(r);
        let q = quarry_end_to_end(jobs, in_flight).await;
        println!("round {round}: Quarry end to end {q:>9.0} jobs/s");
        quarry.push(q);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (raw_best, quarry_best) = (best(&raw), best(&quarry));
    let ratio = quarry_best / raw_best;
    println!();
    println!("| measure | jobs/s (best of {rounds}) |");
    println!("|---|---|");
    println!("| raw AMQP round trip (echo responder) | {raw_best:.0} |");
    println!("| Quarry end to end (1 worker process) | {quarry_best:.0} |");
    println!("| ratio | {:.1}% (target ≥ 60%) |", ratio * 100.0);
    let report = json!({
        "jobs": jobs, "in_flight": in_flight, "rounds": rounds,
        "raw_jobs_per_s": raw, "quarry_jobs_per_s": quarry,
        "raw_best": raw_best, "quarry_best": quarry_best, "ratio": ratio,
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nfigures written to {}", json_path.display());
}

/// A lapin echo responder with the worker's shape: a quorum queue with the lane's arguments,
/// prefetch = the worker's default concurrency, each reply published persistent and mandatory
/// with a confirm, the job acked after the confirm. The producer publishes the same job bodies
/// with confirms, `in_flight` at a time. Returns jobs/s from first publish to last reply.
async fn raw_round_trip(jobs: usize, in_flight: usize) -> f64 {
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use std::sync::Arc;

    let url = quarry_integration::amqp_url();
    let queue = quarry_integration::unique("bench-raw.jobs");
    let replies = quarry_integration::unique("bench-raw.replies");
    let responder = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let setup = responder.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongInt(5));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    setup
        .queue_declare(queue.as_str().into(), durable, args)
        .await
        .unwrap();
    setup
        .queue_declare(replies.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();

    // The responder: consume, reply with a confirm, ack.
    let consume = responder.create_channel().await.unwrap();
    consume
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let publish = Arc::new(responder.create_channel().await.unwrap());
    publish.confirm_select(Default::default()).await.unwrap();
    let mut deliveries = consume
        .basic_consume(
            queue.as_str().into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let echo = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let publish = publish.clone();
            tokio::spawn(async move {
                let reply_to = delivery.properties.reply_to().clone().unwrap();
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                publish
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &delivery.data,
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            });
        }
    });

    // The producer: the same payloads, confirmed, `in_flight` outstanding.
    let producer = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let out = producer.create_channel().await.unwrap();
    out.confirm_select(Default::default()).await.unwrap();
    let inbox = producer.create_channel().await.unwrap();
    let mut answers = inbox
        .basic_consume(
            replies.as_str().into(),
            "answers".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let bodies: Vec<Vec<u8>> = (0..jobs)
        .map(|n| serde_json::to_vec(&ceiling_job(n)).unwrap())
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let publisher = {
        let (out, slots, replies) = (out.clone(), slots.clone(), replies.clone());
        tokio::spawn(async move {
            for body in bodies {
                slots.acquire().await.unwrap().forget();
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_reply_to(replies.as_str().into());
                let confirm = out
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        properties,
                    )
                    .await
                    .unwrap();
                tokio::spawn(async move { confirm.await.unwrap() });
            }
            queue
        })
    };
    for _ in 0..jobs {
        let answer = answers.next().await.unwrap().unwrap();
        answer.ack(BasicAckOptions::default()).await.unwrap();
        slots.add_permits(1);
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    let queue = publisher.await.unwrap();
    echo.abort();
    for name in [queue, replies] {
        let _ = setup
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = producer.close(200, "done".into()).await;
    let _ = responder.close(200, "done".into()).await;
    rate
}

/// SDK batch → one `quarry-worker` process → zero-latency fake provider → results. Returns
/// jobs/s from the first publish to the last result.
async fn quarry_end_to_end(jobs: usize, in_flight: usize) -> f64 {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut worker = fleet.spawn_process_worker().await;
    let client = fleet.client().await;
    let batch: Vec<Job> = (0..jobs).map(ceiling_job).collect();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: in_flight,
        idle_timeout: Some(Duration::from_secs(120)),
        trace: None,
    };
    let started = Instant::now();
    let mut stream = client
        .run_batch(&new_job_id(), batch, options)
        .await
        .unwrap();
    let reply_queue = stream.reply_queue().to_owned();
    let mut ok = 0usize;
    for _ in 0..jobs {
        let item = stream.next().await.unwrap().unwrap();
        ok += usize::from(item.result.status == Status::Ok);
        item.ack().await.unwrap();
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    assert_eq!(ok, jobs, "every job must succeed for the figure to count");
    stream.finish().await.unwrap();
    let _ = client.close().await;
    let status = worker.terminate(60).await;
    assert!(status.success());
    fleet.teardown(&[reply_queue]).await;
    rate
}
