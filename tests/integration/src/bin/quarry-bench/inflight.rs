//! `in-flight`: one worker process keeping thousands of slow provider calls open.

use crate::common::{
    LIMITS, between, closed_loop, peak_rss_mb, read, receipt_job, sustained_rate, write_json,
};
use quarry_fake_provider::FakeConfig;
use quarry_integration::Fleet;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// One worker process with `concurrency` = `in_flight` (limits configured, never binding), a
/// provider answering after `latency_ms`, and a closed loop of `jobs` keeping a little more
/// than `in_flight` outstanding so the worker is never starved. Sustained jobs/s is counted
/// after the first `latency_ms` × 2 of results (the ramp).
pub async fn in_flight(in_flight: usize, latency_ms: u64, jobs: usize, json_path: &Path) -> Value {
    println!(
        "quarry-bench in-flight: {in_flight} in flight, provider latency {latency_ms} ms, {jobs} jobs"
    );
    let latency = Duration::from_millis(latency_ms);
    let fleet = Fleet::start(FakeConfig {
        latency,
        ..FakeConfig::default()
    })
    .await;
    let concurrency = in_flight.to_string();
    let mut worker = fleet
        .spawn_process_worker_env(LIMITS, &[("QUARRY__WORKER__CONCURRENCY", &concurrency)])
        .await;
    let pid = worker.child.id().unwrap();
    let client = fleet.client().await;
    let before = read(&worker).await;
    let batch = (0..jobs).map(receipt_job).collect();
    let outstanding = in_flight + in_flight / 10;
    let (arrivals, reply_queue) = closed_loop(&client, batch, outstanding).await;
    let after = read(&worker).await;
    let rss = peak_rss_mb(pid);
    let peak_provider = fleet.fake.stats.snapshot().peak_in_progress;
    let w = between(&before, &after);
    let sustained = sustained_rate(&arrivals, latency * 2);
    let _ = client.close().await;
    assert!(worker.terminate(60).await.success());
    fleet.teardown(&[reply_queue]).await;
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| sustained throughput | {sustained:.0} jobs/s | ≥ 1,900 |");
    println!("| most provider calls open at once | {peak_provider} | |");
    println!("| worker peak RSS | {rss:.0} MB | < 300 MB |");
    println!(
        "| overhead p50 / p99 | {:.0} / {:.0} µs | |",
        w.overhead_p50_us, w.overhead_p99_us
    );
    println!(
        "| Redis round trip p50 / p99 | {:.0} / {:.0} µs | |",
        w.redis_round_trip_p50_us, w.redis_round_trip_p99_us
    );
    println!(
        "| result publish until confirmed p50 / p99 | {:.0} / {:.0} µs | |",
        w.result_confirm_p50_us, w.result_confirm_p99_us
    );
    println!("| worker CPU per job | {:.0} µs | |", w.cpu_us_per_job);
    let report = json!({
        "scenario": "in_flight", "in_flight": in_flight, "provider_latency_ms": latency_ms,
        "jobs": jobs, "sustained_jobs_per_s": sustained, "peak_provider_calls_open": peak_provider,
        "worker_peak_rss_mb": rss, "worker": w,
        "met": { "sustained_1900": sustained >= 1900.0, "rss_under_300mb": rss < 300.0 },
    });
    write_json(json_path, &report);
    report
}
