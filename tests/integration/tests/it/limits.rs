//! The Redis limiter against the real Redis of this machine, with several clients at once.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_integration::{redis_url, unique, within};
use quarry_worker::limits::{Bucket, Candidate, Charge, Decision, Limiter, Unit};
use std::time::Duration;

async fn limiter(prefix: &str) -> Limiter {
    let client = redis::Client::open(redis_url()).unwrap();
    let redis = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is not reachable at {} ({e}). Run scripts/test, which starts it.",
                redis_url()
            )
        });
    Limiter::new(redis, prefix)
}

async fn cleanup(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// A requests bucket: `limit` in any `window`, `burst` of them at once.
fn requests(name: &str, limit: u64, window: Duration, burst: u64) -> Charge {
    Charge {
        bucket: Bucket::Window {
            name: name.into(),
            unit: Unit::Requests,
            limit,
            window,
            burst,
        },
        cost: 1,
    }
}

fn key(name: &str, charges: Vec<Charge>) -> Candidate {
    Candidate {
        name: name.into(),
        charges,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_limit_holds_exactly_across_parallel_clients() {
    let prefix = unique("qt-lim");
    let (limit, window, run) = (
        20u64,
        Duration::from_millis(1500),
        Duration::from_millis(4500),
    );
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for client in 0..6 {
        let limiter = limiter(&prefix).await;
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut n = 0;
            while started.elapsed() < run {
                n += 1;
                // A burst of 2 lets a client that comes back a little late (a sleep's wake-up,
                // a round trip) still take its turn, so the pace is the limit's.
                let candidates = [key("k", vec![requests("rpm", limit, window, 2)])];
                match limiter
                    .reserve(&format!("c{client}-{n}"), &[], &candidates)
                    .await
                    .unwrap()
                {
                    Decision::Granted { at_ms, .. } => granted.push(at_ms),
                    // Waiting as the limiter says is the scenario under test.
                    Decision::Wait { wait } => {
                        tokio::time::sleep(wait.min(run.saturating_sub(started.elapsed()))).await
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            granted
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for task in tasks {
        all.extend(within(30, "a limiter client", task).await.unwrap());
    }
    all.sort_unstable();
    let window_ms = window.as_millis() as u64;
    for (i, start) in all.iter().enumerate() {
        let inside = all[i..]
            .iter()
            .take_while(|t| **t < start + window_ms)
            .count() as u64;
        assert!(
            inside <= limit,
            "{inside} grants within {window_ms} ms of {start}"
        );
    }
    let possible = limit * (run.as_millis() as u64 / window_ms);
    eprintln!(
        "{} grants of {possible} possible in {run:?} by 6 clients",
        all.len()
    );
    assert!(
        all.len() as u64 * 100 >= possible * 95,
        "utilisation: {} of {possible}",
        all.len()
    );
    cleanup(&prefix).await;
}

/// A backlog against a requests limit, scaled down (60 in 3 s: a minute's 60 a second become
/// one every 50 ms): over two windows at least 95% of what the limit allows goes out, and no
/// slice of 1/60 of the window (the minute's second) carries more than its share plus the
/// burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_uses_its_budget_evenly_spaced() {
    let prefix = unique("qt-lim");
    let (limit, burst, window) = (60u64, 2u64, Duration::from_secs(3));
    let run = window * 2;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for client in 0..6 {
        let limiter = limiter(&prefix).await;
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut n = 0;
            loop {
                n += 1;
                let candidates = [key("k", vec![requests("rpm", limit, window, burst)])];
                match limiter
                    .reserve(&format!("c{client}-{n}"), &[], &candidates)
                    .await
                    .unwrap()
                {
                    Decision::Granted { at_ms, .. } => granted.push(at_ms),
                    // Waiting as the limiter says is the scenario under test.
                    Decision::Wait { wait } => {
                        let left = run.saturating_sub(started.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        tokio::time::sleep(wait.min(left)).await
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            granted
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for task in tasks {
        all.extend(within(30, "a limiter client", task).await.unwrap());
    }
    all.sort_unstable();
    let (first, window_ms) = (all[0], window.as_millis() as u64);
    // Two windows from the first grant.
    let made = all.iter().filter(|t| **t < first + 2 * window_ms).count() as u64;
    let slice_ms = window_ms / 60;
    let busiest_slice = (0..all.len())
        .map(|i| {
            all[i..]
                .iter()
                .take_while(|t| **t < all[i] + slice_ms)
                .count() as u64
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "{made} of {} allowed in two windows; busiest {slice_ms} ms slice: {busiest_slice} (share 1 + burst {burst})",
        2 * limit
    );
    assert!(made * 100 >= 2 * limit * 95, "{made} of {}", 2 * limit);
    assert!(
        busiest_slice <= 1 + burst,
        "a slice carried {busiest_slice}"
    );
    cleanup(&prefix).await;
}

/// One granted call of the property test: when (Redis time), through which key, what it
/// cost in the end (tokens after the refund).
struct Grant {
    at_ms: u64,
    key: usize,
    tokens: u64,
}

/// The most any window of `window_ms` holds, of `cost` over `grants` (sorted by time).
fn busiest_window(grants: &[&Grant], window_ms: u64, cost: impl Fn(&Grant) -> u64) -> u64 {
    let mut busiest = 0;
    for (i, start) in grants.iter().enumerate() {
        let inside: u64 = grants[i..]
            .iter()
            .take_while(|g| g.at_ms < start.at_ms + window_ms)
            .map(|g| cost(g))
            .sum();
        busiest = busiest.max(inside);
    }
    busiest
}

/// The limiter's promise as a property: for random limits, bursts, windows, token costs and
/// refunds, with parallel clients and three keys under one shared quota, no window of any
/// bucket ever holds more than its budget, counted in Redis time. Each round prints its seed; set
/// `QUARRY_PROPERTY_SEED` to replay one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sliding_window_of_any_bucket_holds_more_than_its_budget() {
    const CLIENTS: usize = 6;
    const KEYS: usize = 3;
    let seed = std::env::var("QUARRY_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..3 {
        let prefix = unique("qt-prop");
        let window = Duration::from_millis(rng.u64(400..=900));
        let window_ms = window.as_millis() as u64;
        let run = window * 2 + window / 2;
        let key_requests: Vec<u64> = (0..KEYS).map(|_| rng.u64(3..=25)).collect();
        let key_tokens: Vec<u64> = (0..KEYS).map(|_| rng.u64(200..=2000)).collect();
        let quota_tokens = rng.u64(500..=4000);
        let most = key_tokens.iter().copied().min().unwrap_or(200) / 3;
        let request_bursts: Vec<u64> = key_requests.iter().map(|l| rng.u64(1..=*l)).collect();
        let token_bursts: Vec<u64> = key_tokens.iter().map(|l| rng.u64(most..=*l)).collect();
        let quota_burst = rng.u64(most..=quota_tokens);
        eprintln!(
            "seed {seed} round {round}: window {window_ms} ms, keys' requests {key_requests:?}, \
             keys' tokens {key_tokens:?}, quota {quota_tokens} tokens, costs 1..={most}, \
             bursts {request_bursts:?} requests, {token_bursts:?} tokens, {quota_burst} quota"
        );
        let window_charge = move |name: String, unit, limit, burst, cost| Charge {
            bucket: Bucket::Window {
                name: name.into(),
                unit,
                limit,
                window,
                burst,
            },
            cost,
        };
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let limiter = limiter(&prefix).await;
            let mut rng = fastrand::Rng::with_seed(rng.u64(..));
            let (key_requests, key_tokens) = (key_requests.clone(), key_tokens.clone());
            let (request_bursts, token_bursts) = (request_bursts.clone(), token_bursts.clone());
            tasks.push(tokio::spawn(async move {
                let mut granted = Vec::new();
                let mut n = 0;
                while started.elapsed() < run {
                    n += 1;
                    let estimate = rng.u64(1..=most);
                    let shared = [window_charge(
                        "quota".into(),
                        Unit::Tokens,
                        quota_tokens,
                        quota_burst,
                        estimate,
                    )];
                    let candidates: Vec<Candidate> = (0..KEYS)
                        .map(|k| {
                            key(
                                &format!("k{k}"),
                                vec![
                                    window_charge(
                                        format!("k{k}-rpm"),
                                        Unit::Requests,
                                        key_requests[k],
                                        request_bursts[k],
                                        1,
                                    ),
                                    window_charge(
                                        format!("k{k}-tpm"),
                                        Unit::Tokens,
                                        key_tokens[k],
                                        token_bursts[k],
                                        estimate,
                                    ),
                                ],
                            )
                        })
                        .collect();
                    let id = format!("c{client}-{n}");
                    match limiter.reserve(&id, &shared, &candidates).await.unwrap() {
                        Decision::Granted {
                            candidate,
                            reservation,
                            at_ms,
                        } => {
                            // The call used less than its estimate: the rest is refunded.
                            let actual = rng.u64(0..=estimate);
                            limiter.finish(&reservation, Some(actual)).await.unwrap();
                            granted.push(Grant {
                                at_ms,
                                key: candidate,
                                tokens: actual,
                            });
                        }
                        // Waiting as the limiter says is the scenario under test.
                        Decision::Wait { wait } => {
                            tokio::time::sleep(wait.min(run.saturating_sub(started.elapsed())))
                                .await
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                granted
            }));
        }
        let mut grants: Vec<Grant> = Vec::new();
        for task in tasks {
            grants.extend(within(30, "a limiter client", task).await.unwrap());
        }
        grants.sort_by_key(|g| g.at_ms);
        let all: Vec<&Grant> = grants.iter().collect();
        let quota = busiest_window(&all, window_ms, |g| g.tokens);
        assert!(
            quota <= quota_tokens,
            "seed {seed} round {round}: the quota's busiest window held {quota} of {quota_tokens} tokens"
        );
        for k in 0..KEYS {
            let mine: Vec<&Grant> = grants.iter().filter(|g| g.key == k).collect();
            let requests = busiest_window(&mine, window_ms, |_| 1);
            let tokens = busiest_window(&mine, window_ms, |g| g.tokens);
            assert!(
                requests <= key_requests[k],
                "seed {seed} round {round}: key {k}'s busiest window held {requests} of {} requests",
                key_requests[k]
            );
            assert!(
                tokens <= key_tokens[k],
                "seed {seed} round {round}: key {k}'s busiest window held {tokens} of {} tokens",
                key_tokens[k]
            );
        }
        assert!(
            grants.len() >= KEYS,
            "seed {seed} round {round}: only {} grants: the property was not exercised",
            grants.len()
        );
        cleanup(&prefix).await;
    }
}

/// A reservation refunded to nothing (a call that used no tokens) leaves its window
/// cleanly: pruning it once it expires is no error (Lua wrote the freed `-0` as "-0", which
/// `HINCRBY` refuses, and every decision on the bucket failed as it expired).
#[tokio::test]
async fn a_reservation_refunded_to_nothing_expires_without_an_error() {
    let prefix = unique("qt-lim");
    let limiter = limiter(&prefix).await;
    let window = Duration::from_millis(30);
    let tokens = |cost| Charge {
        bucket: Bucket::Window {
            name: "tpm".into(),
            unit: Unit::Tokens,
            limit: 100,
            window,
            burst: 100,
        },
        cost,
    };
    let Decision::Granted {
        reservation,
        at_ms: first,
        ..
    } = limiter
        .reserve("a", &[], &[key("k", vec![tokens(10)])])
        .await
        .unwrap()
    else {
        panic!("10 of 100 fits")
    };
    limiter.finish(&reservation, Some(0)).await.unwrap();
    // Decide, in Redis time, until the first reservation has left its window.
    let mut n = 0;
    let last = within(10, "the window to pass", async {
        loop {
            n += 1;
            let decided = limiter
                .reserve(&format!("b{n}"), &[], &[key("k", vec![tokens(1)])])
                .await
                .expect("a decision, not an error");
            if let Decision::Granted {
                at_ms, reservation, ..
            } = decided
            {
                limiter.finish(&reservation, Some(1)).await.unwrap();
                if at_ms > first + 2 * window.as_millis() as u64 {
                    break at_ms;
                }
            }
        }
    })
    .await;
    assert!(last > first);
    cleanup(&prefix).await;
}

#[tokio::test]
async fn tokens_are_reconciled_with_refunds_and_debts() {
    let prefix = unique("qt-lim");
    let limiter = limiter(&prefix).await;
    let tokens = |cost| Charge {
        bucket: Bucket::Window {
            name: "tpm".into(),
            unit: Unit::Tokens,
            limit: 1000,
            window: Duration::from_secs(60),
            burst: 1000,
        },
        cost,
    };
    let reserve = |id: &'static str, cost| {
        let limiter = limiter.clone();
        async move {
            limiter
                .reserve(id, &[], &[key("k", vec![tokens(cost)])])
                .await
                .unwrap()
        }
    };
    let Decision::Granted {
        reservation: first, ..
    } = reserve("a", 600).await
    else {
        panic!("600 of 1000 fits")
    };
    assert!(
        matches!(reserve("b", 500).await, Decision::Wait { .. }),
        "600 + 500 > 1000"
    );
    limiter.finish(&first, Some(200)).await.unwrap(); // refund 400
    let Decision::Granted {
        reservation: second,
        ..
    } = reserve("c", 700).await
    else {
        panic!("200 + 700 fits")
    };
    limiter.finish(&second, Some(900)).await.unwrap(); // debt 200: 1100 in the window
    match reserve("d", 1).await {
        Decision::Wait { wait } => assert!(wait > Duration::from_secs(50), "{wait:?}"),
        other => panic!("over the limit after a debt, got {other:?}"),
    }
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let total: u64 = redis::cmd("HGET")
        .arg(format!("{prefix}:{{lim}}:tpm:w"))
        .arg("n")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(total, 1100, "the window holds the actual usage: 200 + 900");
    cleanup(&prefix).await;
}

#[tokio::test]
async fn keys_take_turns_and_cooling_or_disabled_keys_are_skipped() {
    let prefix = unique("qt-lim");
    let limiter = limiter(&prefix).await;
    let keys: Vec<Candidate> = (0..3)
        .map(|i| {
            key(
                &format!("key{i}"),
                vec![requests(
                    &format!("key{i}/rpm"),
                    5,
                    Duration::from_secs(60),
                    5,
                )],
            )
        })
        .collect();
    let mut served = [0; 3];
    for n in 0..15 {
        match limiter.reserve(&format!("r{n}"), &[], &keys).await.unwrap() {
            Decision::Granted { candidate, .. } => served[candidate] += 1,
            other => panic!("15 fit in 3 × 5, got {other:?} at {n}"),
        }
    }
    assert_eq!(served, [5, 5, 5], "the keys take turns");
    assert!(matches!(
        limiter.reserve("r15", &[], &keys).await.unwrap(),
        Decision::Wait { .. }
    ));

    let fresh: Vec<Candidate> = (0..3)
        .map(|i| {
            key(
                &format!("fresh{i}"),
                vec![requests(
                    &format!("fresh{i}/rpm"),
                    100,
                    Duration::from_secs(60),
                    100,
                )],
            )
        })
        .collect();
    limiter
        .cool_down("fresh0", Duration::from_secs(30))
        .await
        .unwrap();
    limiter
        .disable("fresh1", Duration::from_secs(3600))
        .await
        .unwrap();
    for n in 0..5 {
        match limiter
            .reserve(&format!("f{n}"), &[], &fresh)
            .await
            .unwrap()
        {
            Decision::Granted { candidate, .. } => {
                assert_eq!(candidate, 2, "only fresh2 may serve")
            }
            other => panic!("{other:?}"),
        }
    }
    limiter
        .disable("fresh2", Duration::from_secs(3600))
        .await
        .unwrap();
    match limiter.reserve("f9", &[], &fresh).await.unwrap() {
        Decision::Wait { wait } => assert!(
            wait > Duration::from_secs(25),
            "the cooling key is the way out: {wait:?}"
        ),
        other => panic!("{other:?}"),
    }
    limiter
        .disable("fresh0", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        limiter.reserve("f10", &[], &fresh).await.unwrap(),
        Decision::Exhausted
    );
    cleanup(&prefix).await;
}

#[tokio::test]
async fn a_crashed_holders_lease_expires_and_budgets_stop_spending() {
    let prefix = unique("qt-lim");
    let limiter = limiter(&prefix).await;
    let lease = Duration::from_millis(300);
    let conc = vec![Charge {
        bucket: Bucket::Concurrency {
            name: "conc".into(),
            limit: 1,
            lease,
        },
        cost: 1,
    }];
    let candidates = [key("k", conc)];
    let Decision::Granted { reservation, .. } =
        limiter.reserve("a", &[], &candidates).await.unwrap()
    else {
        panic!()
    };
    limiter.finish(&reservation, None).await.unwrap();
    let Decision::Granted { .. } = limiter.reserve("b", &[], &candidates).await.unwrap() else {
        panic!("released")
    };
    // "b" is never finished: its holder crashed. The lease frees itself.
    let wait = match limiter.reserve("c", &[], &candidates).await.unwrap() {
        Decision::Wait { wait } => wait,
        other => panic!("{other:?}"),
    };
    assert!(wait <= lease, "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(20)).await; // the scenario: waiting out the lease
    assert!(matches!(
        limiter.reserve("c", &[], &candidates).await.unwrap(),
        Decision::Granted { .. }
    ));

    // A plugin's daily token budget, shared by every key.
    let budget = |cost| Charge {
        bucket: Bucket::Day {
            name: "plugin-a/day".into(),
            limit: 100,
        },
        cost,
    };
    let any_key = [key("k2", vec![])];
    assert!(matches!(
        limiter
            .reserve("d1", &[budget(60)], &any_key)
            .await
            .unwrap(),
        Decision::Granted { .. }
    ));
    assert_eq!(
        limiter
            .reserve("d2", &[budget(60)], &any_key)
            .await
            .unwrap(),
        Decision::BudgetSpent
    );
    cleanup(&prefix).await;
}

// ---- the limiter inside the fleet ----

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, PrivateRedis, counter_sum, http_get, key_config, parse_metrics};
use quarry_producer::{ErrorCode, InputPart, Job, JobResult, Lane, Status, new_job_id};
use quarry_worker::config::{Limits, PluginConfig};
use secrecy::SecretString;

fn text_jobs(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let mut job = Job::new(
                new_job_id(),
                vec![InputPart::Text {
                    text: format!("note {i}"),
                }],
            );
            job.custom_id = Some(format!("n{i}"));
            job.max_tokens = Some(50);
            job
        })
        .collect()
}

async fn run_all(fleet: &Fleet, jobs: Vec<Job>) -> Vec<JobResult> {
    let client = fleet.client().await;
    let results = quarry_integration::batch_results(&client, jobs, 100, 120).await;
    client.close().await.unwrap();
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_limit_holds_across_two_workers() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    config.limits.max_inline_wait_ms = 0;
    config.limits.max_deferrals = 0;
    if let Some(fake) = config.providers.get_mut("fake") {
        // All 20 at once: the jobs that do not fit end at once (no deferrals), so the
        // limit is what is served.
        fake.limits = Limits {
            requests_per_minute: Some(20),
            requests_burst: Some(20),
            ..Limits::default()
        };
    }
    let a = fleet.spawn_task_worker(config.clone()).await;
    let b = fleet.spawn_task_worker(config).await;
    let results = run_all(&fleet, text_jobs(50)).await;
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    let limited: Vec<&JobResult> = results.iter().filter(|r| r.status != Status::Ok).collect();
    assert_eq!(
        ok, 20,
        "exactly the limit is served in the window, fleet-wide"
    );
    assert_eq!(limited.len(), 30);
    for result in limited {
        let error = result.error.as_ref().unwrap();
        assert_eq!(error.code, ErrorCode::RateLimited);
        assert!(error.retryable);
        assert_eq!(result.attempts, 0, "no provider call without a reservation");
    }
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        20,
        "the provider saw exactly the limit"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_leaves_rotation_and_the_others_serve() {
    let fleet = Fleet::start(FakeConfig {
        api_key: Some("sk-good".into()),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    if let Some(fake) = config.providers.get_mut("fake") {
        fake.keys = vec![
            key_config("revoked", "sk-revoked"),
            key_config("good", "sk-good"),
        ];
    }
    let worker = fleet.spawn_task_worker(config).await;
    let results = run_all(&fleet, text_jobs(40)).await;
    assert!(
        results.iter().all(|r| r.status == Status::Ok),
        "{:?}",
        results.iter().find(|r| r.status != Status::Ok)
    );
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    let disabled = counter_sum(&scrape, "quarry_key_disabled_total", &[("key", "revoked")]);
    assert!(disabled >= 1.0, "the revoked key was taken out of rotation");
    let rejected = fleet.fake.stats.snapshot().rejected;
    assert!(
        rejected <= 40,
        "after the first 401s the revoked key is not used: {rejected} rejections"
    );
    assert!(
        !http_get(worker.http, "/metrics")
            .await
            .1
            .contains("sk-revoked"),
        "no secret in metrics"
    );
    // The key-state gauges catch up within a reporting period (5 s).
    within(20, "the revoked key to show as disabled", async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
            let disabled = counter_sum(
                &scrape,
                "quarry_key_state",
                &[("key", "revoked"), ("state", "disabled")],
            );
            let good = counter_sum(
                &scrape,
                "quarry_key_state",
                &[("key", "good"), ("state", "available")],
            );
            if disabled == 1.0 && good == 1.0 {
                break;
            }
        }
    })
    .await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_rejected_ends_credentials_exhausted() {
    let fleet = Fleet::start(FakeConfig {
        api_key: Some("sk-good".into()),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    if let Some(fake) = config.providers.get_mut("fake") {
        fake.keys = vec![key_config("old1", "sk-old1"), key_config("old2", "sk-old2")];
    }
    // Each refusal takes its key out at once (the threshold has its own test).
    config.limits.disable_key_after = 1;
    let worker = fleet.spawn_task_worker(config).await;
    let results = run_all(&fleet, text_jobs(10)).await;
    for result in &results {
        let code = result.error.as_ref().unwrap().code;
        assert!(
            matches!(
                code,
                ErrorCode::AuthFailed | ErrorCode::CredentialsExhausted
            ),
            "{code}"
        );
    }
    assert!(
        results
            .iter()
            .any(|r| r.error.as_ref().unwrap().code == ErrorCode::CredentialsExhausted)
    );
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_daily_budget_ends_jobs_budget_exceeded() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    // Each job reserves about 53 tokens (a few characters and max_tokens 50).
    config.plugins.insert(
        "guest".into(),
        PluginConfig {
            limits: Limits {
                daily_tokens: Some(500),
                ..Limits::default()
            },
            ..PluginConfig::default()
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let results = run_all(&fleet, text_jobs(30)).await;
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    let over: Vec<&JobResult> = results.iter().filter(|r| r.status != Status::Ok).collect();
    assert!(ok > 0 && ok < 30, "some served, then the budget ends: {ok}");
    assert!(
        over.iter()
            .all(|r| r.error.as_ref().unwrap().code == ErrorCode::BudgetExceeded)
    );
    let served_tokens: u64 = results.iter().map(|r| r.usage.total_tokens).sum();
    assert!(
        served_tokens <= 500 + 60,
        "the budget holds after reconciliation: {served_tokens}"
    );
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_costs_two_redis_round_trips_per_job() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    if let Some(fake) = config.providers.get_mut("fake") {
        fake.limits = Limits {
            requests_per_minute: Some(10_000),
            tokens_per_minute: Some(10_000_000),
            concurrent: Some(500),
            ..Limits::default()
        };
        fake.keys = vec![key_config("a", "sk-a"), key_config("b", "sk-b")];
    }
    config.plugins.insert(
        "guest".into(),
        PluginConfig {
            limits: Limits {
                requests_per_minute: Some(10_000),
                tokens_per_minute: Some(10_000_000),
                daily_tokens: Some(100_000_000),
                ..Limits::default()
            },
            ..PluginConfig::default()
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let before = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    let jobs = 200;
    let results = run_all(&fleet, text_jobs(jobs)).await;
    assert!(results.iter().all(|r| r.status == Status::Ok));
    let after = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    // Metrics are process-wide and tests share the process: count this worker's operations
    // by difference, and only those of the job path.
    let trips = |s: &prometheus_parse::Scrape| {
        use quarry_worker::telemetry::RedisOp;
        [
            RedisOp::Claim,
            RedisOp::ClaimAndReserve,
            RedisOp::LimiterReserve,
            RedisOp::LimiterFinish,
            RedisOp::StoreResult,
            RedisOp::LimiterKeyState,
        ]
        .iter()
        .map(|op| {
            counter_sum(
                s,
                "quarry_redis_round_trips_total",
                &[("operation", op.as_str())],
            )
        })
        .sum::<f64>()
    };
    let per_job = (trips(&after) - trips(&before)) / jobs as f64;
    eprintln!("Redis round trips per job with limits, quotas and two keys: {per_job:.2}");
    // The idempotency claim with the one reservation, the result's write with the settlement.
    assert!(per_job <= 2.0, "{per_job} round trips per job");
    let claimed_with_reservation = counter_sum(
        &after,
        "quarry_redis_round_trips_total",
        &[("operation", "claim_and_reserve")],
    ) - counter_sum(
        &before,
        "quarry_redis_round_trips_total",
        &[("operation", "claim_and_reserve")],
    );
    assert_eq!(claimed_with_reservation, jobs as f64);
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

/// The fleet's worker configuration on a private Redis, with a request limit: every job
/// needs the limiter.
fn limited_on(fleet: &Fleet, redis: &PrivateRedis) -> quarry_worker::config::Config {
    let mut config = fleet.worker_config();
    config.redis.url = SecretString::from(redis.url());
    if let Some(fake) = config.providers.get_mut("fake") {
        fake.limits = Limits {
            requests_per_minute: Some(1000),
            ..Limits::default()
        };
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_nothing_is_spent_and_jobs_wait_in_their_queue() {
    let redis = PrivateRedis::start().await;
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(limited_on(&fleet, &redis)).await;
    let client = std::sync::Arc::new(fleet.client().await);
    let options = quarry_producer::CallOptions {
        lane: Lane::Interactive,
        timeout: Duration::from_secs(60),
        trace: None,
    };

    let first = client
        .extract(text_jobs(1).remove(0), options)
        .await
        .unwrap();
    assert_eq!(first.status, Status::Ok);
    assert_eq!(fleet.fake.stats.snapshot().requests, 1);

    // Redis goes away. A job arrives: its limits cannot be checked, so it is not sent.
    let port = redis.stop().await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.extract(text_jobs(1).remove(0), options).await })
    };
    within(30, "the worker to meet the unavailable limiter", async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
            if counter_sum(
                &scrape,
                "quarry_limiter_decisions_total",
                &[("decision", "unavailable")],
            ) >= 2.0
            {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        1,
        "nothing was spent without a limit check"
    );
    assert_eq!(
        http_get(worker.http, "/readyz").await.0,
        503,
        "not ready without Redis"
    );

    // Redis comes back: the job, requeued meanwhile, goes through.
    let _redis = PrivateRedis::start_on(port).await;
    let second = within(60, "the waiting job", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.status, Status::Ok, "{:?}", second.error);
    assert_eq!(fleet.fake.stats.snapshot().requests, 2);
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_goes_through_the_delay_queue_not_a_held_delivery() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    config.limits.max_inline_wait_ms = 0;
    config.limits.delay_steps_secs = vec![1];
    config.limits.max_deferrals = 3;
    config.plugins.insert(
        "guest".into(),
        PluginConfig {
            limits: Limits {
                requests_per_minute: Some(2),
                requests_burst: Some(2),
                ..Limits::default()
            },
            ..PluginConfig::default()
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let started = std::time::Instant::now();
    let results = run_all(&fleet, text_jobs(3)).await;
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    assert_eq!(ok, 2, "the quota serves two");
    let limited = results.iter().find(|r| r.status != Status::Ok).unwrap();
    let error = limited.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert!(
        error.message.contains("after 3 deferrals"),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "three 1 s stays in the delay queue"
    );
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert_eq!(
        counter_sum(&scrape, "quarry_jobs_deferred_total", &[("lane", "batch")]),
        3.0
    );
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        2,
        "the deferred job never reached the provider"
    );
    worker.stop().await.unwrap();
    let topology = fleet.topology();
    let delay_queues: Vec<String> = [Lane::Interactive, Lane::Batch]
        .iter()
        .map(|&l| topology.delay_queue(l, 1))
        .collect();
    fleet.teardown(&delay_queues).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_of_a_minute_loses_no_job() {
    let redis = PrivateRedis::start().await;
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(limited_on(&fleet, &redis)).await;
    let client = fleet.client().await;
    let jobs = text_jobs(20);
    let ids: std::collections::BTreeSet<String> = jobs.iter().map(|j| j.id.clone()).collect();

    // Redis is down before the batch arrives and stays down for a minute: every job meets
    // the unavailable limiter, again and again, far past the lane's delivery limit (5) had
    // it been requeued. They wait in the delay queue instead, and all run once it is back.
    let port = redis.stop().await;
    let batch = tokio::spawn(async move {
        let options = quarry_producer::BatchOptions {
            idle_timeout: None,
            ..quarry_producer::BatchOptions::default()
        };
        let mut stream = client
            .run_batch(&new_job_id(), jobs, options)
            .await
            .unwrap();
        let mut results = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            results.push(item.result.clone());
            item.ack().await.unwrap();
        }
        stream.finish().await.unwrap();
        (client, results)
    });
    tokio::time::sleep(Duration::from_secs(60)).await; // the outage itself
    assert_eq!(
        fleet.fake.stats.snapshot().requests,
        0,
        "nothing was spent without a limit check"
    );
    let _redis = PrivateRedis::start_on(port).await;
    let (client, results) = within(180, "the batch after the outage", batch)
        .await
        .unwrap();
    let answered: std::collections::BTreeSet<String> =
        results.iter().map(|r| r.job_id.clone()).collect();
    assert_eq!(answered, ids, "every job exactly one result");
    assert_eq!(results.len(), 20);
    for result in &results {
        assert_eq!(result.status, Status::Ok, "{:?}", result.error);
    }
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert!(
        counter_sum(&scrape, "quarry_jobs_deferred_total", &[]) >= 20.0,
        "the jobs waited in the delay queue"
    );
    assert_eq!(
        counter_sum(&scrape, "quarry_dead_letters_total", &[]),
        0.0,
        "none was dead-lettered"
    );
    let _ = client.close().await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

/// A Redis that restarts without persistence forgets the worker's functions: the next call
/// loads them again, on its own and pipelined behind a job's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_functions_gets_them_back_on_the_next_call() {
    let redis = quarry_integration::PrivateRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let limiter = Limiter::new(manager.clone(), "qt-fn");
    let flush = || async {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    let shared = [requests("fn-shared", 100, Duration::from_secs(60), 100)];
    let candidates = [key(
        "fn-key",
        vec![requests("fn-k", 100, Duration::from_secs(60), 100)],
    )];
    // Never loaded: the first call loads the library.
    let first = limiter.reserve("r1", &shared, &candidates).await.unwrap();
    assert!(matches!(first, Decision::Granted { .. }), "{first:?}");
    flush().await;
    let again = limiter.reserve("r2", &shared, &candidates).await.unwrap();
    assert!(matches!(again, Decision::Granted { .. }), "{again:?}");
    // Pipelined behind another command: the reservation goes again on its own.
    flush().await;
    let (ping, decided) = limiter
        .reserve_after(redis::cmd("PING"), "r3", &shared, &candidates)
        .await;
    assert_eq!(ping.unwrap(), redis::Value::SimpleString("PONG".into()));
    assert!(matches!(decided.unwrap(), Decision::Granted { .. }));
}
