//! `limits`: fleet-wide limits and the key pool under saturation.

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics};
use quarry_producer::{BatchOptions, InputPart, Job, Lane, Status, new_job_id};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

struct Scenario {
    keys: usize,
    max_per_window: u64,
    /// The most one key carried in any 1 s, and what the provider allowed there.
    max_per_second: u64,
    per_second_limit: u64,
    /// Requests made over the whole run against what the limit allowed in it.
    run_utilisation: f64,
    provider_429: u64,
    first_window: u64,
    utilisation: f64,
    throughput: f64,
    round_trips_per_job: f64,
    jobs_ok: f64,
}

pub async fn limits(
    workers: usize,
    rpm: u64,
    seconds: u64,
    key_counts: &[usize],
    json_path: &Path,
) {
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
        "| keys | limit/key/60s | max seen/key/60s | max seen/key/1s (provider's slice) | provider 429s | utilisation (first 60 s) | utilisation (whole run) | throughput req/s | × 1 key | Redis trips/job |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        println!(
            "| {} | {rpm} | {} | {} ({}) | {} | {:.1}% | {:.1}% | {:.2} | {:.2} | {:.2} |",
            s.keys,
            s.max_per_window,
            s.max_per_second,
            s.per_second_limit,
            s.provider_429,
            s.utilisation * 100.0,
            s.run_utilisation * 100.0,
            s.throughput,
            s.throughput / base,
            s.round_trips_per_job
        );
    }
    let report = json!({
        "workers": workers, "rpm_per_key": rpm, "seconds": seconds,
        "scenarios": scenarios.iter().map(|s| json!({
            "keys": s.keys, "max_requests_per_key_per_60s": s.max_per_window, "provider_429": s.provider_429,
            "max_requests_per_key_per_1s": s.max_per_second, "provider_per_second_limit": s.per_second_limit,
            "run_utilisation": s.run_utilisation,
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
    // The provider enforces per-second slices of its minute: its share of a second plus the
    // burst Quarry is configured with (the worker's default, 2% of the limit).
    let burst = (rpm / 50).max(1);
    let per_second_limit = rpm.div_ceil(60) + burst;
    let fleet = Fleet::start(FakeConfig {
        latency: Duration::from_millis(50),
        key_rpm: Some(rpm),
        key_per_second: Some(per_second_limit),
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
    let mut max_per_second = 0u64;
    let mut first_window = 0u64;
    let first = arrivals.values().flatten().min().copied();
    for times in arrivals.values() {
        for (i, t) in times.iter().enumerate() {
            let inside = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < window)
                .count() as u64;
            max_per_window = max_per_window.max(inside);
            let in_second = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count() as u64;
            max_per_second = max_per_second.max(in_second);
        }
        if let Some(first) = first {
            first_window += times
                .iter()
                .filter(|t| t.duration_since(first) < window)
                .count() as u64;
        }
    }
    let utilisation = first_window as f64 / (rpm * keys as u64) as f64;
    // Over the whole run from the first request: what the limit allowed in that time.
    let made: u64 = arrivals.values().map(|t| t.len() as u64).sum();
    let span = first
        .map_or(0.0, |f| f.elapsed().as_secs_f64())
        .min(seconds as f64);
    let run_utilisation = made as f64 / (rpm as f64 * keys as f64 * span / 60.0).max(1.0);
    let throughput = first_window as f64 / window.as_secs_f64();
    println!(
        "{keys} key(s): {} requests reached the provider in {:.0} s; max {max_per_window}/key in any 60 s (limit {rpm}), {max_per_second}/key in any 1 s (the provider's slice {per_second_limit}); {} provider 429s",
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
        max_per_second,
        per_second_limit,
        run_utilisation,
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
