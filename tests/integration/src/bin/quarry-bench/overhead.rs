//! `overhead`: the worker's own time per job at a fixed offered load.

use crate::common::{Interval, LIMITS, between, open_loop, read, receipt_job, write_json};
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
    let (sent, achieved) = open_loop(&fleet, &client, rate, seconds, receipt_job).await;
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
    let report = json!({
        "scenario": "overhead", "offered_jobs_per_s": rate, "achieved_jobs_per_s": achieved,
        "seconds": seconds, "jobs": sent, "worker": w,
        "met": {
            "overhead_p99_under_1ms": w.overhead_share_within_1ms >= 0.99,
            "redis_round_trips_at_most_2": w.redis_round_trips_per_job <= 2.0 + 1e-9,
        },
    });
    write_json(json_path, &report);
    report
}
