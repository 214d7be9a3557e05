//! `scaling`: 1, 2 and 4 worker processes on the same machine against a slow provider.

use crate::common::{LIMITS, between, closed_loop, read, receipt_job, sustained_rate, write_json};
use quarry_fake_provider::FakeConfig;
use quarry_integration::Fleet;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// For each worker count: that many worker processes (default concurrency 256 each, limits
/// configured), a provider answering after `latency_ms`, a closed loop of `jobs` with 1.1 ×
/// the fleet's slots outstanding. Sustained jobs/s skips the first 2 × latency of results.
pub async fn scaling(counts: &[usize], latency_ms: u64, jobs: usize, json_path: &Path) -> Value {
    println!(
        "quarry-bench scaling: {counts:?} worker processes, provider latency {latency_ms} ms, {jobs} jobs each"
    );
    let latency = Duration::from_millis(latency_ms);
    let slots_per_worker = 256usize;
    let mut rows = Vec::new();
    for &count in counts {
        let fleet = Fleet::start(FakeConfig {
            latency,
            ..FakeConfig::default()
        })
        .await;
        let mut workers = Vec::new();
        for _ in 0..count {
            workers.push(fleet.spawn_process_worker_with(LIMITS).await);
        }
        let client = fleet.client().await;
        let mut before = Vec::new();
        for w in &workers {
            before.push(read(w).await);
        }
        let batch = (0..jobs).map(receipt_job).collect();
        let slots = slots_per_worker * count;
        let (arrivals, reply_queue) = closed_loop(&client, batch, slots + slots / 10).await;
        let mut cpu_us = 0.0;
        for (w, b) in workers.iter().zip(&before) {
            let interval = between(b, &read(w).await);
            cpu_us += interval.cpu_us_per_job * interval.jobs;
        }
        let rate = sustained_rate(&arrivals, latency * 2);
        let bound = slots as f64 / latency.as_secs_f64();
        println!("{count} worker(s): {rate:.0} jobs/s (slots allow {bound:.0})");
        rows.push((count, rate, bound, cpu_us / jobs as f64));
        let _ = client.close().await;
        for mut w in workers {
            assert!(w.terminate(60).await.success());
        }
        fleet.teardown(&[reply_queue]).await;
    }
    let base = rows.first().map_or(1.0, |r| r.1);
    println!();
    println!(
        "| workers | jobs/s | × 1 worker | bound by slots (256 each / latency) | workers' CPU µs/job |"
    );
    println!("|---|---|---|---|---|");
    for (count, rate, bound, cpu) in &rows {
        println!(
            "| {count} | {rate:.0} | {:.2} | {bound:.0} | {cpu:.0} |",
            rate / base
        );
    }
    let report = json!({
        "scenario": "scaling", "provider_latency_ms": latency_ms, "jobs": jobs,
        "runs": rows.iter().map(|(count, rate, bound, cpu)| json!({
            "workers": count, "jobs_per_s": rate, "speedup": rate / base,
            "slot_bound_jobs_per_s": bound, "workers_cpu_us_per_job": cpu,
        })).collect::<Vec<_>>(),
    });
    write_json(json_path, &report);
    report
}
