//! One scenario, start to end: the fleet, the batch, the fault, the counts.

use crate::prelude::*;
use lapin::{Connection, ConnectionProperties};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{PrivateRedis, amqp_url, unique};
use quarry_producer::{BatchOptions, Client, ClientOptions, Job, JobResult, Lane, new_job_id};
use quarry_schemas::wire::Topology;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) async fn run(scenario: Scenario, cli: &Cli) -> Report {
    let started = Instant::now();
    let fake = quarry_fake_provider::spawn(FakeConfig {
        latency: Duration::from_millis(100),
        jitter: Duration::from_millis(100),
        profile: if scenario == Scenario::FaultStorm {
            "rate_limit=0.3,server_error=0.1,timeout=0.05,invalid_json=0.05"
                .parse()
                .unwrap()
        } else {
            Default::default()
        },
        hang: Some(Duration::from_secs(10)),
        ..FakeConfig::default()
    })
    .await
    .expect("fake provider");
    let redis = PrivateRedis::start().await;
    let namespace = unique("chaos");
    // Worker configuration and logs stay for a look after the run.
    let dir = PathBuf::from("target/chaos").join(format!("{scenario:?}").to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        worker_toml(&namespace, &redis.url(), &fake.base_url()),
    )
    .unwrap();
    let fleet = Supervisor::start(cli.workers, config, dir.clone()).await;

    // The producer needs the topology the workers declare as they start: declare it here
    // first, with the workers' arguments (declaring is idempotent).
    declare_topology(&namespace).await;
    let batch_id = new_job_id();
    let jobs: Vec<Job> = (0..cli.jobs).map(|n| chaos_job(scenario, n)).collect();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 1000,
        idle_timeout: Some(Duration::from_secs(cli.timeout_secs)),
        trace: None,
    };
    let mut client = producer(&namespace).await;
    let mut stream = client
        .run_batch(&batch_id, jobs.clone(), options)
        .await
        .expect("batch starts");

    let (received, progress) = tokio::sync::watch::channel(0_usize);
    let bad = if scenario == Scenario::BadInput {
        Some(BadInputs::publish(&namespace).await)
    } else {
        None
    };

    // The fault, on its own task, keyed to the batch's progress.
    let faults = {
        let mut progress = progress.clone();
        let fleet = fleet.clone();
        let total = cli.jobs;
        tokio::spawn(async move { inject(scenario, total, &mut progress, &fleet, redis).await })
    };

    let mut by_custom_id: HashMap<String, (u32, JobResult)> = HashMap::new();
    let mut last = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let mut failures = Vec::new();
    let mut duplicates_dropped_by_sdk = 0;
    let mut producer_reconnects = 0;
    while by_custom_id.len() < cli.jobs {
        let lost = match stream.next().await {
            Some(Ok(item)) => {
                longest_stall = longest_stall.max(last.elapsed());
                last = Instant::now();
                let custom_id = item.result.custom_id.clone().unwrap_or_default();
                let entry = by_custom_id
                    .entry(custom_id)
                    .or_insert((0, item.result.clone()));
                entry.0 += 1;
                received.send_replace(by_custom_id.len());
                item.ack().await.err()
            }
            Some(Err(error)) => Some(error),
            None => Some(quarry_producer::Error::Closed),
        };
        let Some(error) = lost else { continue };
        if !error.is_transport() || producer_reconnects >= 10 {
            failures.push(format!("the batch stream failed: {error}"));
            break;
        }
        // The producer's side of a broker outage: a new connection, and the batch resumed
        // with the jobs whose results it does not have yet.
        eprintln!("   producer: {error}; reconnecting and resuming the batch");
        producer_reconnects += 1;
        duplicates_dropped_by_sdk += stream.duplicates();
        drop(stream);
        client = producer(&namespace).await;
        let answered: std::collections::HashSet<String> = by_custom_id
            .values()
            .map(|(_, r)| r.job_id.clone())
            .collect();
        let unanswered: Vec<Job> = jobs
            .iter()
            .filter(|j| !answered.contains(&j.id))
            .cloned()
            .collect();
        stream = client
            .resume_batch(&batch_id, unanswered, answered, options)
            .await
            .expect("batch resumes");
    }
    // The fault task owns the private Redis (it restarts it) and hands it back when done.
    let (fault_events, redis) = match faults.await {
        Ok((events, redis)) => (events, Some(redis)),
        Err(_) => (0, None),
    };
    duplicates_dropped_by_sdk += stream.duplicates();
    let _ = stream.finish().await;
    let _ = client.close().await;

    let mut report = Report {
        scenario: scenario.name().into(),
        expected: cli.jobs,
        delivered: by_custom_id.len(),
        duplicates_delivered: by_custom_id.values().filter(|(n, _)| *n > 1).count(),
        duplicates_dropped_by_sdk,
        producer_reconnects,
        lost: cli.jobs.saturating_sub(by_custom_id.len()),
        fault_events,
        longest_stall_secs: longest_stall.as_secs_f64(),
        ..Report::default()
    };
    for (_, result) in by_custom_id.values() {
        match &result.error {
            None => report.ok += 1,
            Some(error) => {
                *report
                    .errors_by_code
                    .entry(error.code.as_str().to_owned())
                    .or_default() += 1
            }
        }
    }
    if let Some(bad) = bad {
        let (handled, misses) = bad.check(&namespace).await;
        report.bad_inputs = bad.expected.len();
        report.bad_inputs_handled = handled;
        report.bad_input_misses = misses;
    }
    let exits = fleet.stop().await;
    report.worker_crashes = exits.crashes;
    report.unclean_exits = exits.unclean_terminations;
    let stats = fake.stats.snapshot();
    let (_, max_calls) = fake.stats.call_profile();
    report.provider_calls = stats.requests;
    report.faults_injected = stats.faults;
    report.unexplained_repeat_calls = stats.unexplained_repeats;
    report.calls_per_job_max = max_calls;
    report.calls_per_job_mean = if cli.jobs > 0 {
        stats.requests as f64 / cli.jobs as f64
    } else {
        0.0
    };
    report.wall_secs = started.elapsed().as_secs_f64();

    // The targets.
    report.failures = failures;
    if report.lost > 0 {
        report.failures.push(format!("{} jobs lost", report.lost));
    }
    if report.duplicates_delivered > 0 {
        report.failures.push(format!(
            "{} results delivered twice",
            report.duplicates_delivered
        ));
    }
    if !scenario.crashes() && report.unexplained_repeat_calls > 0 {
        report.failures.push(format!(
            "{} provider calls repeated without a crash",
            report.unexplained_repeat_calls
        ));
    }
    if report.worker_crashes > 0 {
        report
            .failures
            .push(format!("{} worker crashes", report.worker_crashes));
    }
    if report.unclean_exits > 0 {
        report.failures.push(format!(
            "{} workers did not exit 0 on SIGTERM",
            report.unclean_exits
        ));
    }
    if !report.bad_input_misses.is_empty() {
        report.failures.push(format!(
            "{} bad inputs not handled",
            report.bad_input_misses.len()
        ));
    }
    if scenario != Scenario::BadInput && scenario != Scenario::FaultStorm && report.ok < cli.jobs {
        report.failures.push(format!(
            "{} jobs ended in an error: {:?}",
            cli.jobs - report.ok,
            report.errors_by_code
        ));
    }
    report.passed = report.failures.is_empty();
    cleanup(&namespace, &batch_id).await;
    drop(redis);
    report
}

/// A producer on the scenario's namespace; retried while the broker is away (up to 60 s).
pub(crate) async fn producer(namespace: &str) -> Client {
    let options = ClientOptions {
        namespace: namespace.to_owned(),
        connection_name: "quarry-chaos".into(),
        ..ClientOptions::default()
    };
    Client::connect_patiently(&amqp_url(), options, Duration::from_secs(60))
        .await
        .unwrap_or_else(|error| panic!("the producer cannot connect: {error}"))
}

/// Declares a scenario's topology as its workers do (default delivery limit, the delay steps
/// of [`worker_toml`]).
pub(crate) async fn declare_topology(namespace: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ is reachable");
    let channel = connection.create_channel().await.unwrap();
    quarry_worker::amqp::topology::declare(
        &channel,
        &Topology::new(namespace),
        quarry_worker::config::AmqpConfig::default().delivery_limit,
        &DELAY_STEPS_SECS,
    )
    .await
    .expect("declare the topology");
    let _ = connection.close(200, "topology declared".into()).await;
}
