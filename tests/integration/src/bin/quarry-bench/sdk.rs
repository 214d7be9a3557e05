//! `sdk`: the TypeScript SDK against the Rust SDK on the same fleet and fake provider, side by
//! side in one run: jobs/s published and collected as a batch (rounds alternate, the best of
//! each is reported), and the TypeScript SDK's memory with thousands of calls outstanding.
//! The TypeScript side is `producer-sdk/typescript/bench/sdk.ts` (built by `npm run build`).

use crate::common::{receipt_job, write_json};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, amqp_url};
use quarry_producer::{BatchOptions, Lane};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn node_script() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("producer-sdk/typescript/dist/bench/sdk.js");
    assert!(
        script.exists(),
        "{} is missing: (cd producer-sdk/typescript && npm ci && npm run build)",
        script.display()
    );
    script
}

fn node(args: &[String]) -> Value {
    let output = std::process::Command::new("node")
        .arg("--expose-gc")
        .arg(node_script())
        .args(args)
        .output()
        .expect("run node (Node.js 20 or later)");
    assert!(
        output.status.success(),
        "the TypeScript bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).expect("one JSON line")
}

async fn rust_round(fleet: &Fleet, jobs: usize, in_flight: usize) -> f64 {
    let client = fleet.client().await;
    let batch: Vec<_> = (0..jobs).map(receipt_job).collect();
    let started = Instant::now();
    let id = format!("bench-rust-{}", quarry_integration::unique("b"));
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: in_flight,
        ..BatchOptions::default()
    };
    let mut stream = client.run_batch(&id, batch, options).await.unwrap();
    let mut received = 0;
    while let Some(item) = stream.next().await {
        item.unwrap().ack().await.unwrap();
        received += 1;
    }
    let rate = received as f64 / started.elapsed().as_secs_f64();
    stream.finish().await.unwrap();
    let _ = client.close().await;
    assert_eq!(received, jobs);
    rate
}

pub async fn sdk(
    jobs: usize,
    in_flight: usize,
    rounds: usize,
    outstanding: usize,
    json_path: &Path,
) -> Value {
    println!(
        "quarry-bench sdk: {jobs} jobs a round, {in_flight} in flight, {rounds} rounds each; then {outstanding} TypeScript calls outstanding"
    );
    let schema_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/examples/receipt.schema.json")
        .canonicalize()
        .unwrap();
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut workers = vec![
        fleet.spawn_process_worker().await,
        fleet.spawn_process_worker().await,
    ];
    let (mut rust, mut ts) = (Vec::new(), Vec::new());
    let mut ts_cpu = Vec::new();
    for round in 0..rounds {
        let r = rust_round(&fleet, jobs, in_flight).await;
        let t = node(&[
            "throughput".into(),
            amqp_url(),
            fleet.namespace.clone(),
            jobs.to_string(),
            in_flight.to_string(),
            schema_file.display().to_string(),
        ]);
        assert_eq!(t["jobs"].as_u64(), Some(jobs as u64), "{t}");
        assert_eq!(t["failed"].as_u64(), Some(0), "{t}");
        let t_rate = t["jobs_per_s"].as_f64().unwrap();
        println!(
            "round {}: Rust {r:.0} jobs/s, TypeScript {t_rate:.0} jobs/s",
            round + 1
        );
        rust.push(r);
        ts.push(t_rate);
        ts_cpu.push(t["cpu_us_per_job"].as_f64().unwrap());
    }
    for w in &mut workers {
        assert!(w.terminate(60).await.success());
    }
    fleet.teardown(&[]).await;

    // Memory: every call waits on a provider that answers after 3 s, in a worker that holds
    // them all.
    let slow = Fleet::start(FakeConfig {
        latency: Duration::from_secs(3),
        ..FakeConfig::default()
    })
    .await;
    let concurrency = outstanding.to_string();
    let mut worker = slow
        .spawn_process_worker_env("", &[("QUARRY__WORKER__CONCURRENCY", concurrency.as_str())])
        .await;
    let memory = node(&[
        "outstanding".into(),
        amqp_url(),
        slow.namespace.clone(),
        outstanding.to_string(),
    ]);
    assert_eq!(memory["ok"].as_u64(), Some(outstanding as u64), "{memory}");
    assert!(worker.terminate(60).await.success());
    slow.teardown(&[]).await;

    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (rust_best, ts_best) = (best(&rust), best(&ts));
    let ratio = ts_best / rust_best;
    let peak = memory["peak_rss_mib"].as_f64().unwrap();
    let base = memory["baseline_rss_mib"].as_f64().unwrap();
    println!();
    println!("| SDK | jobs/s (best of {rounds}) | × Rust |");
    println!("|---|---|---|");
    println!("| Rust | {rust_best:.0} | 1.00 |");
    println!("| TypeScript | {ts_best:.0} | {ratio:.2} |");
    println!(
        "TypeScript with {outstanding} calls outstanding: RSS {base:.0} → {peak:.0} MiB, heap {:.0} → {:.0} MiB (the Node process); target ≥ 0.5 × Rust: {}",
        memory["baseline_heap_mib"].as_f64().unwrap(),
        memory["peak_heap_mib"].as_f64().unwrap(),
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
    let report = json!({
        "scenario": "sdk", "jobs": jobs, "in_flight": in_flight, "rounds": rounds,
        "rust_jobs_per_s": rust, "typescript_jobs_per_s": ts,
        "typescript_cpu_us_per_job": ts_cpu,
        "best_ratio": ratio, "outstanding": memory,
    });
    write_json(json_path, &report);
    report
}
