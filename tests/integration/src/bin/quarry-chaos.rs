//! `quarry-chaos`: the delivery guarantees under failure. Each scenario runs a batch through
//! three supervised `quarry-worker` processes, the machine's RabbitMQ, a private Redis and the
//! fake provider, injects its fault, and checks at the end that every custom id has exactly
//! one result. Prints a report (and writes it as JSON); exits 1 when a target is missed.
//!
//! ```text
//! cargo build --bins && target/debug/quarry-chaos --jobs 5000
//! target/debug/quarry-chaos --scenario broker-restart --jobs 2000
//! ```
//!
//! The broker restart scenario runs `rabbitmqctl stop_app` / `start_app` on this machine's
//! RabbitMQ: run it as root (or a user rabbitmqctl accepts), and not while other tests use
//! the broker. Redis is a private `redis-server` on a free port, restarted at will.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test program fails loudly"
)]

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{PrivateRedis, amqp_url, binary, unique};
use quarry_producer::{
    BatchOptions, Client, ClientOptions, ErrorCode, InputPart, Job, JobResult, Lane, new_job_id,
};
use quarry_schemas::wire::{HEADER_DEAD_REASON, Topology};
use quarry_worker::amqp::publisher::header_text;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
#[command(about = "Delivery guarantees under failure, with a report")]
struct Cli {
    /// Jobs per scenario.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Scenarios to run, in order (default: all).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "target/chaos/report.json")]
    json: PathBuf,
    /// Longest a scenario may take, seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// kill -9 a random worker every few seconds; a supervisor restarts it.
    Kill,
    /// Restart RabbitMQ mid-batch.
    BrokerRestart,
    /// Restart Redis mid-batch.
    RedisRestart,
    /// 30% 429 with Retry-After, 10% 500, 5% timeouts, 5% invalid JSON.
    FaultStorm,
    /// SIGTERM every worker mid-batch, then start new ones.
    Sigterm,
    /// Malformed and forbidden jobs mixed into a normal batch.
    BadInput,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Kill,
        Scenario::BrokerRestart,
        Scenario::RedisRestart,
        Scenario::FaultStorm,
        Scenario::Sigterm,
        Scenario::BadInput,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill -9 every few seconds",
            Scenario::BrokerRestart => "RabbitMQ restart",
            Scenario::RedisRestart => "Redis restart",
            Scenario::FaultStorm => "provider fault storm",
            Scenario::Sigterm => "SIGTERM all workers",
            Scenario::BadInput => "bad-input corpus",
        }
    }

    /// Whether workers die with jobs in flight (a crash window where a provider call may be
    /// repeated for the jobs that were in flight).
    fn crashes(self) -> bool {
        matches!(self, Scenario::Kill)
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    scenario: String,
    expected: usize,
    delivered: usize,
    duplicates_delivered: usize,
    duplicates_dropped_by_sdk: u64,
    producer_reconnects: usize,
    lost: usize,
    ok: usize,
    errors_by_code: BTreeMap<String, usize>,
    provider_calls: u64,
    calls_per_job_mean: f64,
    calls_per_job_max: u32,
    unexplained_repeat_calls: u64,
    faults_injected: u64,
    fault_events: usize,
    longest_stall_secs: f64,
    worker_crashes: usize,
    unclean_exits: usize,
    bad_inputs: usize,
    bad_inputs_handled: usize,
    bad_input_misses: Vec<String>,
    wall_secs: f64,
    passed: bool,
    failures: Vec<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios.clone()
    };
    let mut reports = Vec::new();
    for scenario in scenarios {
        eprintln!("== {} ({} jobs)", scenario.name(), cli.jobs);
        let report =
            tokio::time::timeout(Duration::from_secs(cli.timeout_secs), run(scenario, &cli))
                .await
                .unwrap_or_else(|_| Report {
                    scenario: scenario.name().into(),
                    failures: vec![format!("did not finish within {} s", cli.timeout_secs)],
                    ..Report::default()
                });
        print_report(&report);
        reports.push(report);
    }
    println!();
    println!(
        "| scenario | delivered / expected | duplicates delivered | lost | calls per job (mean / max) | repeat calls | longest stall | crashes | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} / {} | {} | {} | {:.3} / {} | {} | {:.1} s | {} | {} |",
            r.scenario,
            r.delivered,
            r.expected,
            r.duplicates_delivered,
            r.lost,
            r.calls_per_job_mean,
            r.calls_per_job_max,
            r.unexplained_repeat_calls,
            r.longest_stall_secs,
            r.worker_crashes,
            if r.passed { "pass" } else { "FAIL" }
        );
    }
    if let Some(dir) = cli.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&reports).unwrap()).unwrap();
    eprintln!("report written to {}", cli.json.display());
    if reports.iter().any(|r| !r.passed) {
        std::process::exit(1);
    }
}

fn print_report(r: &Report) {
    eprintln!(
        "   delivered {}/{} (ok {}, errors {:?}), duplicates delivered {}, dropped by the SDK {}, lost {}, producer reconnections {}",
        r.delivered,
        r.expected,
        r.ok,
        r.errors_by_code,
        r.duplicates_delivered,
        r.duplicates_dropped_by_sdk,
        r.lost,
        r.producer_reconnects
    );
    eprintln!(
        "   provider calls {} (mean {:.3}/job, max {}), repeats not explained by a retried fault {}, faults injected {}",
        r.provider_calls,
        r.calls_per_job_mean,
        r.calls_per_job_max,
        r.unexplained_repeat_calls,
        r.faults_injected
    );
    eprintln!(
        "   fault events {}, longest stall {:.1} s, worker crashes {}, unclean exits {}, bad inputs handled {}/{}, {:.1} s",
        r.fault_events,
        r.longest_stall_secs,
        r.worker_crashes,
        r.unclean_exits,
        r.bad_inputs_handled,
        r.bad_inputs,
        r.wall_secs
    );
    for miss in &r.bad_input_misses {
        eprintln!("   bad input not handled: {miss}");
    }
    for failure in &r.failures {
        eprintln!("   FAIL: {failure}");
    }
}

async fn run(scenario: Scenario, cli: &Cli) -> Report {
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
async fn producer(namespace: &str) -> Client {
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
async fn declare_topology(namespace: &str) {
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

/// The fault of a scenario; returns how many fault events it caused, and the private Redis
/// (restarted by the Redis scenario). The sleeps here are the faults' own timing: the cadence
/// of the kills and how long the broker or Redis stays down.
async fn inject(
    scenario: Scenario,
    total: usize,
    progress: &mut tokio::sync::watch::Receiver<usize>,
    fleet: &Supervisor,
    redis: PrivateRedis,
) -> (usize, PrivateRedis) {
    // Waits until that fraction of the batch has its results (the batch may end first).
    async fn reached(progress: &mut tokio::sync::watch::Receiver<usize>, target: usize) {
        let _ = progress.wait_for(|n| *n >= target).await;
    }
    let at = |fraction: f64| (total as f64 * fraction) as usize;
    let events = match scenario {
        Scenario::Kill => {
            let mut kills = 0;
            reached(progress, at(0.05)).await;
            while *progress.borrow() < total * 9 / 10 {
                fleet.kill_random(kills).await;
                kills += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            kills
        }
        Scenario::BrokerRestart => {
            reached(progress, at(0.2)).await;
            run_command("rabbitmqctl", &["stop_app"]).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            run_command("rabbitmqctl", &["start_app"]).await;
            1
        }
        Scenario::RedisRestart => {
            reached(progress, at(0.2)).await;
            let restarted = redis.restart(Duration::from_secs(2)).await;
            return (1, restarted);
        }
        Scenario::Sigterm => {
            reached(progress, at(0.3)).await;
            fleet.terminate_all().await;
            1
        }
        Scenario::FaultStorm | Scenario::BadInput => 0,
    };
    (events, redis)
}

async fn run_command(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn chaos_job(scenario: Scenario, n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!(
                "{scenario:?} item {n}: Dana from Acme asked for a call back on Tuesday about the renewal."
            ),
        }],
    );
    job.custom_id = Some(format!("item-{n:06}"));
    job.instructions = Some("Extract the CRM note.".into());
    job.json_schema =
        Some(quarry_schemas::JsonSchema::from_json(quarry_schemas::examples::CRM_NOTE).unwrap());
    job.schema_name = Some("crm_note".into());
    job
}

fn worker_toml(namespace: &str, redis: &str, fake: &str) -> String {
    format!(
        r#"[amqp]
url = "{amqp}"
namespace = "{namespace}"
[redis]
url = "{redis}"
prefix = "chaos"
result_ttl_secs = 3600
[http]
listen = "127.0.0.1:0"
[log]
format = "json"
filter = "info"
[worker]
concurrency = 128
max_attempts = 8
retry_base_ms = 50
retry_max_ms = 2000
shutdown_grace_secs = 20
max_image_bytes = 2048
[limits]
delay_steps_secs = {delay_steps:?}
[providers.fake]
base_url = "{fake}"
timeout_ms = 5000
[plugins.guest]
requests_per_minute = 10000000
allowed_models = ["fake/fake-large"]
max_tokens = 4096
"#,
        amqp = amqp_url(),
        delay_steps = DELAY_STEPS_SECS,
    )
}

/// The workers' delay queues, seconds.
const DELAY_STEPS_SECS: [u64; 3] = [1, 5, 30];

/// Worker processes kept running by a supervisor task per slot.
#[derive(Clone)]
struct Supervisor {
    slots: Arc<Vec<Slot>>,
    stopping: Arc<AtomicBool>,
    exits: Arc<Mutex<Exits>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

struct Slot {
    pid: AtomicU32,
    /// Set before this program kills or terminates the worker: that exit is expected.
    expected: AtomicBool,
    /// Set with `expected` for SIGTERM: the exit must be 0.
    terminated: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Exits {
    crashes: usize,
    unclean_terminations: usize,
}

impl Supervisor {
    async fn start(workers: usize, config: PathBuf, logs: PathBuf) -> Self {
        let supervisor = Self {
            slots: Arc::new(
                (0..workers)
                    .map(|_| Slot {
                        pid: AtomicU32::new(0),
                        expected: AtomicBool::new(false),
                        terminated: AtomicBool::new(false),
                    })
                    .collect(),
            ),
            stopping: Arc::new(AtomicBool::new(false)),
            exits: Arc::default(),
            tasks: Arc::default(),
        };
        for i in 0..workers {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let this = supervisor.clone();
            let (config, log) = (config.clone(), logs.join(format!("worker-{i}.log")));
            let task =
                tokio::spawn(async move { this.keep_running(i, config, log, started_tx).await });
            supervisor.tasks.lock().unwrap().push(task);
            let _ = started_rx.await;
        }
        supervisor
    }

    async fn keep_running(
        &self,
        i: usize,
        config: PathBuf,
        log: PathBuf,
        started: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut started = Some(started);
        while !self.stopping.load(Ordering::SeqCst) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut child: Child = Command::new(binary("quarry-worker"))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .expect("spawn quarry-worker");
            let slot = &self.slots[i];
            slot.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
            let status = child.wait().await.expect("wait for the worker");
            let expected = slot.expected.swap(false, Ordering::SeqCst);
            let terminated = slot.terminated.swap(false, Ordering::SeqCst);
            let mut exits = self.exits.lock().unwrap();
            if terminated && !status.success() {
                exits.unclean_terminations += 1;
                eprintln!(
                    "   worker {i} exited {status} after SIGTERM (see {})",
                    log.display()
                );
            } else if !expected && !self.stopping.load(Ordering::SeqCst) {
                exits.crashes += 1;
                eprintln!("   worker {i} crashed: {status} (see {})", log.display());
            }
        }
    }

    async fn signal(&self, i: usize, signal: &str, terminated: bool) {
        let slot = &self.slots[i];
        slot.expected.store(true, Ordering::SeqCst);
        slot.terminated.store(terminated, Ordering::SeqCst);
        let pid = slot.pid.load(Ordering::SeqCst);
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await;
    }

    async fn kill_random(&self, n: usize) {
        // A fixed walk over the slots: reproducible, and every worker is hit.
        let i = (n * 7 + 3) % self.slots.len();
        self.signal(i, "-KILL", false).await;
    }

    async fn terminate_all(&self) {
        for i in 0..self.slots.len() {
            self.signal(i, "-TERM", true).await;
        }
    }

    async fn stop(&self) -> Exits {
        self.stopping.store(true, Ordering::SeqCst);
        self.terminate_all().await;
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
        *self.exits.lock().unwrap()
    }
}

/// What a bad input must end as.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A result with this code.
    Code(ErrorCode),
    /// A dead letter with this reason, and no result.
    Dead(&'static str),
    /// Both.
    CodeAndDead(ErrorCode, &'static str),
}

struct BadInputs {
    /// correlation id → what it must end as.
    expected: BTreeMap<String, Expect>,
    replies: String,
}

impl BadInputs {
    async fn publish(namespace: &str) -> Self {
        let topology = Topology::new(namespace);
        let replies = topology.batch_reply_queue("guest", "chaos-bad");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                replies.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Results reach a queue bound to the results exchange, as the SDK binds its own.
        quarry_integration::bind_to_results(&channel, &topology, &replies).await;
        channel.confirm_select(Default::default()).await.unwrap();
        let valid = |n: usize| chaos_job(Scenario::BadInput, 1_000_000 + n);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut expected = BTreeMap::new();
        for n in 0..10 {
            let mut cases: Vec<(&str, Vec<u8>, bool, Expect)> = Vec::new();
            cases.push((
                "malformed-json",
                b"{\"version\":\"job.v1\",".to_vec(),
                true,
                Expect::CodeAndDead(ErrorCode::InvalidRequest, "undecodable"),
            ));
            cases.push((
                "wrong-types",
                serde_json::to_vec(&json!({"version": "job.v1", "id": 42, "input": "text"}))
                    .unwrap(),
                true,
                Expect::CodeAndDead(ErrorCode::InvalidRequest, "undecodable"),
            ));
            let mut image = valid(n * 10 + 1);
            image
                .input
                .push(InputPart::Image(quarry_schemas::job::ImagePart {
                    mime: quarry_schemas::job::ImageMime::Png,
                    data: "A".repeat(8192),
                }));
            cases.push((
                "oversized-image",
                serde_json::to_vec(&image).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut schema = valid(n * 10 + 2);
            schema.json_schema = Some(json!({"type": "no-such-type"}).into());
            cases.push((
                "invalid-schema",
                serde_json::to_vec(&schema).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut alias = valid(n * 10 + 3);
            alias.model = Some("no-such-alias".into());
            cases.push((
                "unknown-alias",
                serde_json::to_vec(&alias).unwrap(),
                true,
                Expect::Code(ErrorCode::ModelUnresolved),
            ));
            let mut expired = valid(n * 10 + 4);
            expired.deadline_ms = Some(now_ms.saturating_sub(60_000));
            cases.push((
                "expired-deadline",
                serde_json::to_vec(&expired).unwrap(),
                true,
                Expect::Code(ErrorCode::DeadlineExceeded),
            ));
            cases.push((
                "missing-reply-to",
                serde_json::to_vec(&valid(n * 10 + 5)).unwrap(),
                false,
                Expect::Dead("missing_reply_to"),
            ));
            // The plugin (guest) may not reach another model than fake-large, use another
            // credential profile or ask for more than 4096 output tokens, however it asks.
            let mut overriding = valid(n * 10 + 6);
            overriding.model = Some("fast".into());
            cases.push((
                "forbidden-model",
                serde_json::to_vec(&overriding).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut suffix = valid(n * 10 + 7);
            suffix.model = Some("default@premium".into());
            cases.push((
                "model-at-profile-bypass",
                serde_json::to_vec(&suffix).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut field = valid(n * 10 + 8);
            field.profile = Some("premium".into());
            cases.push((
                "forbidden-profile",
                serde_json::to_vec(&field).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut conflict = valid(n * 10 + 9);
            conflict.model = Some("default@default".into());
            conflict.profile = Some("premium".into());
            cases.push((
                "conflicting-profiles",
                serde_json::to_vec(&conflict).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut greedy = valid(n * 10 + 10_000);
            greedy.max_tokens = Some(100_000);
            cases.push((
                "max-tokens-over-ceiling",
                serde_json::to_vec(&greedy).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            // Nothing vouches for who sent it: not answered, not even with a refusal.
            cases.push((
                "no-user-id",
                serde_json::to_vec(&valid(n * 10 + 20_000)).unwrap(),
                true,
                Expect::Dead("no_user_id"),
            ));
            // Results go only to the sender's own reply queues.
            cases.push((
                "foreign-reply-to",
                serde_json::to_vec(&valid(n * 10 + 30_000)).unwrap(),
                true,
                Expect::Dead("reply_to_refused"),
            ));
            let mut metadata = valid(n * 10 + 40_000);
            metadata.metadata = Some(json!({"blob": "m".repeat(20_000)}));
            cases.push((
                "huge-metadata",
                serde_json::to_vec(&metadata).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut big_schema = valid(n * 10 + 50_000);
            big_schema.json_schema =
                Some(json!({"type": "object", "description": "s".repeat(70_000)}).into());
            cases.push((
                "huge-schema",
                serde_json::to_vec(&big_schema).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            for (kind, body, with_reply, expect) in cases {
                let correlation = format!("bad-{kind}-{n}");
                let mut properties = BasicProperties::default()
                    .with_message_id(correlation.as_str().into())
                    .with_correlation_id(correlation.as_str().into());
                if kind != "no-user-id" {
                    properties = properties.with_user_id("guest".into());
                }
                if kind == "foreign-reply-to" {
                    let foreign = topology.batch_reply_queue("someone-else", "chaos-bad");
                    properties = properties.with_reply_to(foreign.as_str().into());
                } else if with_reply {
                    properties = properties.with_reply_to(replies.as_str().into());
                }
                let confirm = channel
                    .basic_publish(
                        topology.jobs_exchange().as_str().into(),
                        "batch".into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack(), "bad input {correlation} published");
                expected.insert(correlation, expect);
            }
        }
        let _ = connection.close(200, "bad inputs published".into()).await;
        Self { expected, replies }
    }

    /// Reads the answers and the dead letters; returns how many inputs ended as expected,
    /// and a line for each that did not.
    async fn check(&self, namespace: &str) -> (usize, Vec<String>) {
        let topology = Topology::new(namespace);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let want_codes = self
            .expected
            .values()
            .filter(|e| matches!(e, Expect::Code(_) | Expect::CodeAndDead(..)))
            .count();
        let want_dead = self
            .expected
            .values()
            .filter(|e| matches!(e, Expect::Dead(_) | Expect::CodeAndDead(..)))
            .count();
        let codes = drain(&connection, &self.replies, want_codes, |d| {
            let id = d.properties.correlation_id().as_ref()?.as_str().to_owned();
            let result: JobResult = serde_json::from_slice(&d.data).ok()?;
            Some((
                id,
                result
                    .error
                    .map_or("ok".into(), |e| e.code.as_str().to_owned()),
            ))
        })
        .await;
        let dead = drain(&connection, &topology.dead_queue(), want_dead, |d| {
            let id = d.properties.correlation_id().as_ref()?.as_str().to_owned();
            Some((id, header_text(d.properties.headers(), HEADER_DEAD_REASON)?))
        })
        .await;
        let _ = connection.close(200, "checked".into()).await;
        let mut handled = 0;
        let mut misses = Vec::new();
        for (id, expect) in &self.expected {
            let code = codes.get(id);
            let reason = dead.get(id);
            let ok = match expect {
                Expect::Code(c) => code.map(String::as_str) == Some(c.as_str()),
                Expect::Dead(r) => reason.map(String::as_str) == Some(*r) && code.is_none(),
                Expect::CodeAndDead(c, r) => {
                    code.map(String::as_str) == Some(c.as_str())
                        && reason.map(String::as_str) == Some(*r)
                }
            };
            if ok {
                handled += 1;
            } else {
                misses.push(format!(
                    "{id}: expected {expect:?}, got result {code:?}, dead letter {reason:?}"
                ));
            }
        }
        (handled, misses)
    }
}

/// Consumes `want` messages (or whatever arrives within 30 s) from `queue`.
async fn drain(
    connection: &Connection,
    queue: &str,
    want: usize,
    read: impl Fn(&lapin::message::Delivery) -> Option<(String, String)>,
) -> HashMap<String, String> {
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique("drain").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = HashMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while out.len() < want {
        tokio::select! {
            () = &mut deadline => break,
            next = consumer.next() => {
                let Some(Ok(delivery)) = next else { break };
                if let Some((id, value)) = read(&delivery) {
                    out.insert(id, value);
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    out
}

/// Deletes the scenario's queues and exchanges.
async fn cleanup(namespace: &str, batch_id: &str) {
    let topology = Topology::new(namespace);
    let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = Lane::ALL.iter().map(|&l| topology.lane_queue(l)).collect();
    queues.push(topology.dead_queue());
    queues.push(topology.control_queue());
    queues.push(topology.expired_queue());
    queues.push(topology.batch_reply_queue("guest", batch_id));
    queues.push(topology.batch_reply_queue("guest", "chaos-bad"));
    for lane in Lane::ALL {
        for secs in DELAY_STEPS_SECS {
            queues.push(topology.delay_queue(lane, secs));
        }
    }
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [
        topology.jobs_exchange(),
        topology.dead_exchange(),
        topology.control_exchange(),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "cleaned up".into()).await;
}
