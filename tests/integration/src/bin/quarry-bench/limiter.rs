//! `limiter`: the Redis limiter on its own, against this machine's Redis — decisions per
//! second, Redis CPU per decision (from `INFO commandstats` and from the process), Redis
//! memory per bucket at a steady rate, and what a refusal costs beside a grant.
//!
//! The decisions are the worker's: a plugin's quotas (requests and tokens per minute, tokens
//! per day) shared, and a pool of keys each with requests and tokens per minute and a
//! concurrency bucket; every grant is settled with its real usage, as a job's is.
//!
//! Every figure is taken twice in one run: for the limiter before issue 23 (v1, sliding logs;
//! `limiter_v1.rs`) and for the current one (v2, slots and a pacer).

use crate::common::{cpu_of_comm, write_json};
use crate::limiter_v1::V1;
use quarry_integration::{redis_url, unique};
use quarry_worker::limits::{Bucket, Candidate, Charge, Decision, Limiter, Unit};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn window(name: &str, unit: Unit, limit: u64, cost: u64) -> Charge {
    Charge {
        bucket: Bucket::Window {
            name: name.into(),
            unit,
            limit,
            window: Duration::from_secs(60),
            // Never paced: the bench measures what a decision costs, not the spacing.
            burst: limit,
        },
        cost,
    }
}

/// The plugin's quotas and a pool of `keys` keys, limits far above what the run reaches
/// (`limit`: requests a minute of each bucket).
fn decision_shape(keys: usize, limit: u64) -> (Vec<Charge>, Vec<Candidate>) {
    let shared = vec![
        window("plugin/rpm", Unit::Requests, limit, 1),
        window("plugin/tpm", Unit::Tokens, limit * 1_000, 300),
        Charge {
            bucket: Bucket::Day {
                name: "plugin/day".into(),
                limit: u64::MAX / 4,
            },
            cost: 300,
        },
    ];
    let candidates = (0..keys)
        .map(|k| Candidate {
            name: format!("fake/key{k}").into(),
            charges: vec![
                window(&format!("fake/key{k}/rpm"), Unit::Requests, limit, 1),
                window(
                    &format!("fake/key{k}/tpm"),
                    Unit::Tokens,
                    limit * 1_000,
                    300,
                ),
                Charge {
                    bucket: Bucket::Concurrency {
                        name: format!("fake/key{k}/concurrent").into(),
                        limit: 100_000,
                        lease: Duration::from_secs(60),
                    },
                    cost: 1,
                },
            ],
        })
        .collect();
    (shared, candidates)
}

async fn connection() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis_url()).unwrap();
    // Reading the size of, and deleting, a bucket of 300,000 entries takes Redis a while.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(60)));
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("Redis is reachable (scripts/test starts it)")
}

/// Which limiter a measurement runs.
#[derive(Clone)]
enum Side {
    /// Before issue 23: sliding logs, scripts by `EVALSHA`.
    V1(V1),
    /// The worker's: slots and a pacer, functions by `FCALL`.
    V2(Limiter),
}

impl Side {
    async fn new(v2: bool, prefix: &str) -> Self {
        if v2 {
            Side::V2(Limiter::new(connection().await, prefix))
        } else {
            Side::V1(V1::new(connection().await, prefix.to_owned()))
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Side::V1(_) => "v1",
            Side::V2(_) => "v2",
        }
    }

    /// The commands its scripts run as, in `INFO commandstats`.
    fn commands(&self) -> &'static [&'static str] {
        match self {
            Side::V1(_) => &["cmdstat_evalsha:", "cmdstat_eval:"],
            Side::V2(_) => &["cmdstat_fcall:"],
        }
    }

    /// One decision, and its settlement when granted (250 tokens used); `true` when granted.
    async fn decide(&self, shared: &[Charge], candidates: &[Candidate], n: u64) -> bool {
        let id = format!("r{n}");
        match self {
            Side::V1(v1) => match v1.reserve(&id, shared, candidates).await {
                Some(granted) => {
                    v1.finish(&granted, 250).await;
                    true
                }
                None => false,
            },
            Side::V2(limiter) => decide(limiter, shared, candidates, n).await,
        }
    }

    /// One decision, never settled; `true` when granted.
    async fn reserve(&self, id: &str, candidates: &[Candidate]) -> bool {
        match self {
            Side::V1(v1) => v1.reserve(id, &[], candidates).await.is_some(),
            Side::V2(limiter) => matches!(
                limiter.reserve(id, &[], candidates).await.unwrap(),
                Decision::Granted { .. }
            ),
        }
    }
}

/// Script calls and microseconds so far for `commands` (`INFO commandstats`).
async fn script_stats(redis: &mut redis::aio::ConnectionManager, commands: &[&str]) -> (f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    let (mut calls, mut usec) = (0.0, 0.0);
    for line in info
        .lines()
        .filter(|l| commands.iter().any(|c| l.starts_with(c)))
    {
        let field = |name: &str| {
            line.split([':', ','])
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        calls += field("calls");
        usec += field("usec");
    }
    (calls, usec)
}

/// Bytes Redis holds for every key under `prefix` (`MEMORY USAGE`, all samples).
async fn memory_under(redis: &mut redis::aio::ConnectionManager, prefix: &str) -> (usize, u64) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(redis)
        .await
        .unwrap();
    let mut bytes = 0;
    for key in &keys {
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(redis)
            .await
            .unwrap();
        bytes += used.unwrap_or(0);
    }
    (keys.len(), bytes)
}

async fn cleanup(redis: &mut redis::aio::ConnectionManager, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(redis)
        .await
        .unwrap();
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(redis)
            .await
            .unwrap();
    }
}

/// One decision and its settlement; `true` when granted.
async fn decide(limiter: &Limiter, shared: &[Charge], candidates: &[Candidate], n: u64) -> bool {
    let id = format!("r{n}");
    match limiter.reserve(&id, shared, candidates).await.unwrap() {
        Decision::Granted { reservation, .. } => {
            limiter.finish(&reservation, Some(250)).await.unwrap();
            true
        }
        Decision::Wait { .. } | Decision::Exhausted | Decision::BudgetSpent => false,
    }
}

/// Closed loop: `tasks` clients deciding as fast as Redis answers, for `seconds`.
async fn throughput(v2: bool, keys: usize, tasks: usize, seconds: f64) -> Value {
    let prefix = unique("qb-lim");
    let limiter = Side::new(v2, &prefix).await;
    let (shared, candidates) = decision_shape(keys, 1_000_000_000);
    let (shared, candidates) = (Arc::new(shared), Arc::new(candidates));
    let mut redis = connection().await;
    let (calls0, usec0) = script_stats(&mut redis, limiter.commands()).await;
    let cpu0 = cpu_of_comm("redis-server");
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let clients: Vec<_> = (0..tasks)
        .map(|_| {
            let (limiter, shared, candidates, counter) = (
                limiter.clone(),
                shared.clone(),
                candidates.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    assert!(limiter.decide(&shared, &candidates, n).await, "granted");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let wall = started.elapsed().as_secs_f64();
    let decisions = counter.load(Ordering::Relaxed) as f64;
    let (calls1, usec1) = script_stats(&mut redis, limiter.commands()).await;
    let cpu = (cpu_of_comm("redis-server") - cpu0) * 1e6;
    let (_, bytes) = memory_under(&mut redis, &prefix).await;
    cleanup(&mut redis, &prefix).await;
    json!({
        "limiter": limiter.name(), "keys": keys, "decisions": decisions,
        "decisions_per_s": decisions / wall,
        "script_calls_per_decision": (calls1 - calls0) / decisions,
        "redis_script_us_per_decision": (usec1 - usec0) / decisions,
        "redis_process_cpu_us_per_decision": cpu / decisions,
        "redis_bytes_after": bytes,
    })
}

/// Open loop at `rate` decisions a second for `seconds` on one key: the memory the buckets
/// hold at that rate (a full 60 s window when `seconds` ≥ 60).
async fn memory(v2: bool, rate: f64, seconds: f64) -> Value {
    let prefix = unique("qb-lim-mem");
    let limiter = Side::new(v2, &prefix).await;
    let (shared, candidates) = decision_shape(1, 1_000_000_000);
    let (shared, candidates) = (Arc::new(shared), Arc::new(candidates));
    let started = Instant::now();
    let total = (rate * seconds) as u64;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let at = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (limiter, shared, candidates) = (limiter.clone(), shared.clone(), candidates.clone());
        tasks.push(tokio::spawn(async move {
            let granted = limiter.decide(&shared, &candidates, n).await;
            drop(permit);
            granted
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap(), "granted");
    }
    let wall = started.elapsed().as_secs_f64();
    let mut redis = connection().await;
    let (keys, bytes) = memory_under(&mut redis, &prefix).await;
    cleanup(&mut redis, &prefix).await;
    // Buckets: the plugin's rpm, tpm and day, the key's rpm, tpm and concurrency.
    let buckets = 6.0;
    json!({
        "limiter": limiter.name(), "rate_asked": rate, "rate_reached": total as f64 / wall, "seconds": seconds,
        "redis_keys": keys, "redis_bytes": bytes, "bytes_per_bucket": bytes as f64 / buckets,
    })
}

/// A full requests bucket of `limit` entries, then refusals: Redis time per refusal beside
/// per grant.
async fn refusal(v2: bool, limit: u64, refusals: u64) -> Value {
    let prefix = unique("qb-lim-ref");
    let limiter = Side::new(v2, &prefix).await;
    // One key whose requests bucket fills (a decision needs a candidate to grant).
    let key = [Candidate {
        name: "fake/key0".into(),
        charges: vec![window("fake/key0/rpm", Unit::Requests, limit, 1)],
    }];
    let mut redis = connection().await;
    let phase = async |name: &str, n: u64| {
        let mut outcomes = Vec::with_capacity(n as usize);
        for i in 0..n {
            outcomes.push(limiter.reserve(&format!("{name}{i}"), &key).await);
        }
        outcomes
    };
    let (c0, cpu0, t0) = (
        script_stats(&mut redis, limiter.commands()).await,
        cpu_of_comm("redis-server"),
        Instant::now(),
    );
    let grants = phase("g", limit).await;
    let (c1, cpu1, t1) = (
        script_stats(&mut redis, limiter.commands()).await,
        cpu_of_comm("redis-server"),
        Instant::now(),
    );
    let refused = phase("x", refusals).await;
    let (c2, cpu2, t2) = (
        script_stats(&mut redis, limiter.commands()).await,
        cpu_of_comm("redis-server"),
        Instant::now(),
    );
    cleanup(&mut redis, &prefix).await;
    let granted = grants.iter().filter(|g| **g).count() as u64;
    let waited = refused.iter().filter(|g| !**g).count() as u64;
    assert_eq!(granted, limit, "the bucket fills");
    assert_eq!(waited, refusals, "a full bucket refuses");
    let per = |calls: f64, x: f64| x / calls;
    json!({
        "limiter": limiter.name(), "bucket_limit": limit, "grants": granted, "refusals": waited,
        "redis_script_us_per_grant": per(c1.0 - c0.0, c1.1 - c0.1),
        "redis_script_us_per_refusal": per(c2.0 - c1.0, c2.1 - c1.1),
        "redis_cpu_us_per_grant": per(limit as f64, (cpu1 - cpu0) * 1e6),
        "redis_cpu_us_per_refusal": per(refusals as f64, (cpu2 - cpu1) * 1e6),
        "wall_us_per_grant": per(limit as f64, (t1 - t0).as_secs_f64() * 1e6),
        "wall_us_per_refusal": per(refusals as f64, (t2 - t1).as_secs_f64() * 1e6),
    })
}

pub async fn limiter(
    seconds: f64,
    memory_seconds: f64,
    rate: f64,
    refusal_limit: u64,
    json_path: &Path,
) -> Value {
    println!(
        "quarry-bench limiter: v1 (sliding logs, before issue 23) and v2 (slots and a pacer, the worker's) against this machine's Redis"
    );
    let mut pools = Vec::new();
    for keys in [1usize, 3, 16] {
        for v2 in [false, true] {
            let figures = throughput(v2, keys, 64, seconds).await;
            println!(
                "  {} {keys:>2} keys: {:.0} decisions/s, {:.1} µs of script and {:.1} µs of Redis CPU a decision (reserve + settle)",
                figures["limiter"].as_str().unwrap(),
                figures["decisions_per_s"].as_f64().unwrap(),
                figures["redis_script_us_per_decision"].as_f64().unwrap(),
                figures["redis_process_cpu_us_per_decision"]
                    .as_f64()
                    .unwrap(),
            );
            pools.push(figures);
        }
    }
    let mut memories = Vec::new();
    for v2 in [false, true] {
        let memory = memory(v2, rate, memory_seconds).await;
        println!(
            "  {} memory at {:.0} decisions/s (asked {rate:.0}) for {memory_seconds:.0} s: {} bytes in {} Redis keys, {:.0} bytes a bucket",
            memory["limiter"].as_str().unwrap(),
            memory["rate_reached"].as_f64().unwrap(),
            memory["redis_bytes"],
            memory["redis_keys"],
            memory["bytes_per_bucket"].as_f64().unwrap(),
        );
        memories.push(memory);
    }
    let mut refusals = Vec::new();
    for v2 in [false, true] {
        let refusal = refusal(v2, refusal_limit, 1_000).await;
        println!(
            "  {} a full bucket of {refusal_limit}: Redis CPU {:.1} µs a grant, {:.1} µs a refusal (script {:.1} / {:.1} µs; wall {:.0} / {:.0} µs)",
            refusal["limiter"].as_str().unwrap(),
            refusal["redis_cpu_us_per_grant"].as_f64().unwrap(),
            refusal["redis_cpu_us_per_refusal"].as_f64().unwrap(),
            refusal["redis_script_us_per_grant"].as_f64().unwrap(),
            refusal["redis_script_us_per_refusal"].as_f64().unwrap(),
            refusal["wall_us_per_grant"].as_f64().unwrap(),
            refusal["wall_us_per_refusal"].as_f64().unwrap(),
        );
        refusals.push(refusal);
    }
    let report = json!({
        "scenario": "limiter",
        "limiters": {"v1": "sliding logs (sorted set + hash per window bucket)", "v2": "60 slots + pacer in one hash per window bucket"},
        "pools": pools, "memory": memories, "refusal": refusals,
    });
    write_json(json_path, &report);
    report
}
