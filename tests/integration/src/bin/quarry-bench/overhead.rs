//! `overhead`: the worker's own time per job at a fixed offered load.

use crate::common::{
    Interval, LIMITS, between, open_loop, publish_persistent, read, receipt_job,
    reply_queue_consumer, write_json,
};
use quarry_fake_provider::FakeConfig;
use quarry_integration::Fleet;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// One worker process (limits configured, never binding), the zero-latency fake provider,
/// receipt jobs offered at `rate` per second for `seconds` after a warm-up of `warmup`
/// seconds at the same rate. The worker's overhead histogram, its CPU time and its Redis
/// round trips are read just before and just after the measured run.
pub async fn overhead(rate: f64, seconds: f64, warmup: f64, json_path: &Path) -> Value {
    println!(
        "quarry-bench overhead: {rate} jobs/s offered for {seconds} s (after {warmup} s of warm-up)"
    );
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut worker = fleet.spawn_process_worker_with(LIMITS).await;
    let client = Arc::new(fleet.client().await);
    open_loop(&fleet, &client, rate, warmup, receipt_job).await;
    let before = read(&worker).await;
    let ((sent, achieved), bare) = tokio::join!(
        open_loop(&fleet, &client, rate, seconds, receipt_job),
        bare_waits(&fleet, rate / 10.0, seconds),
    );
    let after = read(&worker).await;
    let w: Interval = between(&before, &after);
    assert_eq!(
        w.jobs as usize, sent,
        "the worker finished every measured job"
    );
    let _ = client.close().await;
    assert!(worker.terminate(60).await.success());
    fleet.teardown(&[]).await;
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| offered load (achieved by the publisher) | {achieved:.0} jobs/s | 1,000 |");
    println!("| jobs measured | {sent} | |");
    println!(
        "| overhead p50 / p99 / p99.9 | {:.0} / {:.0} / {:.0} µs | p99 < 1,000 µs |",
        w.overhead_p50_us, w.overhead_p99_us, w.overhead_p999_us
    );
    println!(
        "| jobs with overhead ≤ 1 ms | {:.2}% | ≥ 99% |",
        w.overhead_share_within_1ms * 100.0
    );
    println!("| worker CPU per job | {:.0} µs | |", w.cpu_us_per_job);
    println!(
        "| of which waiting: Redis round trip p50 / p99 | {:.0} / {:.0} µs | |",
        w.redis_round_trip_p50_us, w.redis_round_trip_p99_us
    );
    println!(
        "| of which waiting: result publish until confirmed p50 / p99 | {:.0} / {:.0} µs | |",
        w.result_confirm_p50_us, w.result_confirm_p99_us
    );
    println!(
        "| Redis round trips per job | {:.2} | ≤ 2 |",
        w.redis_round_trips_per_job
    );
    println!(
        "| the same waits bare, meanwhile (2 Redis PINGs, 1 confirmed publish; no work): p50 / p99 / p99.9 | {:.0} / {:.0} / {:.0} µs | |",
        bare.total_p50_us, bare.total_p99_us, bare.total_p999_us
    );
    println!(
        "| … bare waits within 1 ms | {:.2}% | |",
        bare.total_share_within_1ms * 100.0
    );
    println!(
        "| … bare: Redis PING p50 / p99, publish until confirmed p50 / p99 | {:.0} / {:.0}, {:.0} / {:.0} µs | |",
        bare.redis_p50_us, bare.redis_p99_us, bare.confirm_p50_us, bare.confirm_p99_us
    );
    let report = json!({
        "scenario": "overhead", "offered_jobs_per_s": rate, "achieved_jobs_per_s": achieved,
        "seconds": seconds, "jobs": sent, "worker": w, "bare_waits": bare,
        "met": {
            "overhead_p99_under_1ms": w.overhead_share_within_1ms >= 0.99,
            "redis_round_trips_at_most_2": w.redis_round_trips_per_job <= 2.0 + 1e-9,
        },
    });
    write_json(json_path, &report);
    report
}

/// The waits every job's overhead contains, timed bare: no work around them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BareWaits {
    /// Ticks timed.
    pub ticks: usize,
    /// Two Redis round trips and one confirmed publish, one after the other, per tick: exact
    /// quantiles in microseconds.
    pub total_p50_us: f64,
    /// p99.
    pub total_p99_us: f64,
    /// p99.9.
    pub total_p999_us: f64,
    /// Share of ticks whose waits took at most 1 ms.
    pub total_share_within_1ms: f64,
    /// One Redis `PING`: p50 and p99 in microseconds.
    pub redis_p50_us: f64,
    /// p99.
    pub redis_p99_us: f64,
    /// One publish until its confirm: p50 and p99 in microseconds.
    pub confirm_p50_us: f64,
    /// p99.
    pub confirm_p99_us: f64,
}

/// The waits a job's overhead contains, timed bare on the same broker and Redis during the
/// worker's measured run (so under the same load): `rate` times a second, two Redis round
/// trips (`PING`, cheaper than the worker's scripts) and then one result-like publish
/// (persistent, mandatory, a receipt job's bytes, to a queue declared as the bench's reply
/// queue) until its confirm, with nothing between them. The publishes are drained as the
/// bench drains results. It tells how much of the overhead's tail this machine gives any
/// client of these two servers, whatever the worker does.
async fn bare_waits(fleet: &Fleet, rate: f64, seconds: f64) -> BareWaits {
    use futures::StreamExt;
    use std::time::{Duration, Instant};

    let redis = redis::Client::open(quarry_integration::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (queue, drain, mut replies) = reply_queue_consumer(fleet, "bare-waits").await;
    let drained = tokio::spawn(async move { while let Some(Ok(_)) = replies.next().await {} });
    let publish = Arc::new(fleet.channel().await);
    publish.confirm_select(Default::default()).await.unwrap();
    let body: Arc<[u8]> = serde_json::to_vec(&receipt_job(0)).unwrap().into();
    let total = (rate * seconds).round() as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut timed = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticks.tick().await;
        let (mut redis, publish, queue, body) =
            (redis.clone(), publish.clone(), queue.clone(), body.clone());
        timed.spawn(async move {
            let started = Instant::now();
            let mut pings = [Duration::ZERO; 2];
            for ping in &mut pings {
                let at = Instant::now();
                let _: String = redis::cmd("PING").query_async(&mut redis).await.unwrap();
                *ping = at.elapsed();
            }
            let at = Instant::now();
            publish_persistent(&publish, &queue, &body, None)
                .await
                .await
                .unwrap();
            (started.elapsed(), pings, at.elapsed())
        });
    }
    let (mut totals, mut pings, mut confirms) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(tick) = timed.join_next().await {
        let (all, two, confirm) = tick.unwrap();
        totals.push(all);
        pings.extend(two);
        confirms.push(confirm);
    }
    drained.abort();
    let _ = drain
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let within_1ms = totals
        .iter()
        .filter(|t| **t <= Duration::from_millis(1))
        .count();
    BareWaits {
        ticks: totals.len(),
        total_p50_us: exact_quantile(&mut totals, 0.5),
        total_p99_us: exact_quantile(&mut totals, 0.99),
        total_p999_us: exact_quantile(&mut totals, 0.999),
        total_share_within_1ms: within_1ms as f64 / totals.len().max(1) as f64,
        redis_p50_us: exact_quantile(&mut pings, 0.5),
        redis_p99_us: exact_quantile(&mut pings, 0.99),
        confirm_p50_us: exact_quantile(&mut confirms, 0.5),
        confirm_p99_us: exact_quantile(&mut confirms, 0.99),
    }
}

/// The `q` quantile of `samples` (nearest rank), in microseconds.
fn exact_quantile(samples: &mut [std::time::Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1e6
}
