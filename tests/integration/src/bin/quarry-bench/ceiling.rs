//! `ceiling`: the raw AMQP round trip against Quarry end to end, side by side.

use crate::common::{
    Interval, LIMITS, MachineCpu, between, closed_loop, publish_persistent, read, receipt_job,
    write_json,
};
use quarry_fake_provider::FakeConfig;
use quarry_integration::Fleet;
use quarry_producer::Job;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// Alternates the raw round trip and Quarry end to end `rounds` times on the same receipt
/// job bodies; reports the best of each and their ratio, and from every process's CPU per job
/// (mean of the rounds) the ratio that CPU predicts on saturated cores and the ratio if the
/// worker cost no CPU at all.
pub async fn ceiling(jobs: usize, in_flight: usize, rounds: usize, json_path: &Path) -> Value {
    println!("quarry-bench ceiling: {jobs} jobs per run, {in_flight} in flight, {rounds} rounds");
    let (mut raw, mut quarry, mut worker, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // CPU µs per job of every process: raw, Quarry, Quarry less the worker.
    let mut cpu_totals = Vec::new();
    for round in 0..rounds.max(1) {
        let bodies = (0..jobs)
            .map(|n| serde_json::to_vec(&receipt_job(n)).unwrap())
            .collect();
        let start = MachineCpu::now();
        let r = raw_round_trip(bodies, in_flight).await;
        let end = MachineCpu::now();
        let (raw_cpu, raw_us) = (
            end.per_job_since(&start, jobs),
            end.total_per_job_since(&start, jobs),
        );
        println!("round {round}: raw AMQP echo     {r:>9.0} jobs/s; CPU µs/job {raw_cpu}");
        raw.push(r);
        let batch = (0..jobs).map(receipt_job).collect();
        let start = MachineCpu::now();
        let (q, interval) = quarry_end_to_end(FakeConfig::default(), batch, in_flight).await;
        let end = MachineCpu::now();
        let (quarry_cpu, without_worker_us) = (
            end.per_job_since(&start, jobs),
            end.total_per_job_since(&start, jobs),
        );
        println!(
            "round {round}: Quarry end to end {q:>9.0} jobs/s; CPU µs/job {quarry_cpu}, worker {:.0}",
            interval.cpu_us_per_job
        );
        cpu_totals.push((
            raw_us,
            without_worker_us + interval.cpu_us_per_job,
            without_worker_us,
        ));
        quarry.push(q);
        worker.push(interval);
        cpu.push(json!({"raw": raw_cpu, "quarry": quarry_cpu}));
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
    let mean = |f: fn(&(f64, f64, f64)) -> f64| {
        cpu_totals.iter().map(f).sum::<f64>() / cpu_totals.len().max(1) as f64
    };
    let (raw_us, quarry_us, without_worker_us) = (mean(|t| t.0), mean(|t| t.1), mean(|t| t.2));
    let (cpu_ratio, cpu_ratio_free_worker) = (raw_us / quarry_us, raw_us / without_worker_us);
    println!();
    println!(
        "| CPU of every process per job (mean of {} rounds) | µs |",
        cpu_totals.len()
    );
    println!("|---|---|");
    println!("| raw round trip (broker, Redis, bench process) | {raw_us:.0} |");
    println!("| Quarry end to end (broker, Redis, bench process, worker) | {quarry_us:.0} |");
    println!("| … of which not the worker | {without_worker_us:.0} |");
    println!(
        "| ratio the CPU predicts on saturated cores (raw ÷ Quarry) | {:.1}% |",
        cpu_ratio * 100.0
    );
    println!(
        "| … if the worker cost no CPU at all (raw ÷ Quarry less the worker) | {:.1}% |",
        cpu_ratio_free_worker * 100.0
    );
    let report = json!({
        "scenario": "ceiling", "jobs": jobs, "in_flight": in_flight, "rounds": rounds,
        "raw_jobs_per_s": raw, "quarry_jobs_per_s": quarry, "quarry_worker": worker,
        "cpu_per_job": cpu,
        "raw_best": raw_best, "quarry_best": quarry_best, "ratio": ratio,
        "cpu_us_per_job_mean": {
            "raw": raw_us, "quarry": quarry_us, "quarry_without_worker": without_worker_us,
        },
        "cpu_ratio": cpu_ratio, "cpu_ratio_if_worker_free": cpu_ratio_free_worker,
        "target_ratio": 0.6, "met": ratio >= 0.6,
    });
    write_json(json_path, &report);
    report
}

/// A lapin echo responder with the worker's shape: a quorum queue with the lane's arguments,
/// prefetch = the worker's default concurrency, each reply published persistent and mandatory
/// with a confirm, the job acked after the confirm. The producer publishes the same job bodies
/// with confirms, `in_flight` at a time. Returns jobs/s from first publish to last reply.
pub async fn raw_round_trip(bodies: Vec<Vec<u8>>, in_flight: usize) -> f64 {
    let jobs = bodies.len();
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use lapin::{Connection, ConnectionProperties};
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
                publish_persistent(&publish, reply_to.as_str(), &delivery.data, None)
                    .await
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
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();
    let publisher = {
        let (out, slots, replies) = (out.clone(), slots.clone(), replies.clone());
        tokio::spawn(async move {
            for body in bodies {
                slots.acquire().await.unwrap().forget();
                let confirm = publish_persistent(&out, &queue, &body, Some(&replies)).await;
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

/// SDK batch (`in_flight` outstanding) → one `quarry-worker` process (with [`LIMITS`]) → the
/// fake provider → results. Returns jobs/s from the first publish to the last result, and what
/// the worker did meanwhile.
pub async fn quarry_end_to_end(
    fake: FakeConfig,
    jobs: Vec<Job>,
    in_flight: usize,
) -> (f64, Interval) {
    let total = jobs.len();
    let fleet = Fleet::start(fake).await;
    let mut worker = fleet.spawn_process_worker_with(LIMITS).await;
    let client = fleet.client().await;
    let before = read(&worker).await;
    let (arrivals, reply_queue) = closed_loop(&client, jobs, in_flight).await;
    let after = read(&worker).await;
    let elapsed = arrivals.last().copied().unwrap_or_default();
    let rate = total as f64 / elapsed.as_secs_f64();
    let _ = client.close().await;
    let status = worker.terminate(60).await;
    assert!(status.success());
    fleet.teardown(&[reply_queue]).await;
    (rate, between(&before, &after))
}
