//! Helpers of the integration suite: a fleet (fake provider + workers, in-process or as real
//! processes) on the real RabbitMQ and Redis of this machine, isolated by a random namespace
//! and Redis prefix so that tests run in parallel.
//!
//! RabbitMQ and Redis are required: [`Fleet::start`] panics with what to run when they are
//! not reachable. `scripts/test` starts them.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test support: failing loudly is the point"
)]

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use quarry_fake_provider::{FakeConfig, FakeProvider};
use quarry_producer::{BatchOptions, Client, ClientOptions, Job, JobResult};
use quarry_schemas::wire::{Lane, Topology};
use quarry_worker::config::Config;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// RabbitMQ of this machine (override with `QUARRY_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("QUARRY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Redis of this machine (override with `QUARRY_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("QUARRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// [`amqp_url`] with another user and password.
pub fn amqp_url_as(user: &str, password: &str) -> String {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").expect("amqp URL has a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Runs `deploy/rabbitmq/quarry-user ROLE NAME --namespace NS` with `password` on standard
/// input (role `plugin` or `worker`), or `quarry-user delete NAME` (role `delete`).
/// The script drives `rabbitmqctl`, so it must be usable here (root on this machine).
pub async fn rabbitmq_user(role: &str, name: &str, namespace: &str, password: &str) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rabbitmq/quarry-user");
    let mut command = Command::new(&script);
    command.args([role, name]);
    if role != "delete" {
        command.args(["--namespace", namespace]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{password}\n").as_bytes())
        .await
        .expect("write the password");
    drop(stdin);
    let output = within(120, "quarry-user", child.wait_with_output())
        .await
        .expect("quarry-user runs");
    assert!(
        output.status.success(),
        "{} {role} {name} failed ({}): {}{}\nIt needs rabbitmqctl with access to the broker node (run the tests as root on the broker's machine).",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Waits for `future` at most `secs` seconds, failing the test with `what` otherwise.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

/// An in-process worker.
pub struct TaskWorker {
    /// Its metrics and health endpoint.
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TaskWorker {
    /// Waits for the worker to stop by itself; returns its outcome.
    pub async fn stopped(mut self, secs: u64) -> anyhow::Result<()> {
        within(secs, "the worker to stop by itself", &mut self.join)
            .await
            .expect("worker task panicked")
    }

    /// Graceful stop; returns the worker's own outcome.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(60, "the worker to stop", &mut self.join)
            .await
            .expect("worker task panicked")
    }
}

/// A worker running as its own process (`quarry-worker` binary).
pub struct ProcessWorker {
    /// The process.
    pub child: Child,
    /// Its metrics and health endpoint.
    pub http: SocketAddr,
    /// Every line it wrote to stderr (its log), so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The number of lines in `log`, announced as each arrives.
    pub lines: tokio::sync::watch::Receiver<usize>,
    /// Its configuration file (rewrite it to test a reload).
    pub config: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl ProcessWorker {
    /// SIGTERM, then waits up to `secs` for the process to exit; returns its exit status.
    pub async fn terminate(&mut self, secs: u64) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the worker is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        within(secs, "the terminated worker to exit", self.child.wait())
            .await
            .expect("wait")
    }

    /// Sends `signal` (a `kill` name: `HUP`, `TERM`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the worker is running");
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// How many log lines the process has written so far (for [`ProcessWorker::logged`]).
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits up to `secs` for a JSON log line after the first `from` whose `message` is
    /// `message`, and returns it.
    pub async fn logged(&self, from: usize, message: &str, secs: u64) -> serde_json::Value {
        let mut lines = self.lines.clone();
        within(secs, &format!("the worker to log {message:?}"), async {
            let mut next = from;
            loop {
                let found = {
                    let log = self.log.lock().unwrap();
                    let found = log[next.min(log.len())..]
                        .iter()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .find(|event| event["message"] == message);
                    next = log.len();
                    found
                };
                if let Some(event) = found {
                    return event;
                }
                lines.changed().await.expect("the worker's log ended");
            }
        })
        .await
    }

    /// SIGKILL: no cleanup, no graceful anything.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().expect("kill -9 the worker");
        let status = within(30, "the killed worker to exit", self.child.wait())
            .await
            .expect("wait");
        assert!(!status.success(), "a killed worker cannot exit cleanly");
    }
}

/// A fake provider plus the names of an isolated namespace.
pub struct Fleet {
    /// Broker namespace of this test.
    pub namespace: String,
    /// Redis prefix of this test.
    pub redis_prefix: String,
    /// The fake provider.
    pub fake: FakeProvider,
    /// Raw connection for tests that publish or inspect by hand.
    pub connection: Connection,
}

impl Fleet {
    /// Checks that RabbitMQ and Redis answer, and starts a fake provider.
    pub async fn start(fake: FakeConfig) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ is not reachable at {} ({e}). Run scripts/test, which starts it.",
                    amqp_url()
                )
            });
        let redis = redis::Client::open(redis_url()).expect("redis url");
        let mut conn = redis
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Redis is not reachable at {} ({e}). Run scripts/test, which starts it.",
                    redis_url()
                )
            });
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .expect("Redis PING");
        let fake = quarry_fake_provider::spawn(fake)
            .await
            .expect("start the fake provider");
        Self {
            namespace: unique("qt"),
            redis_prefix: unique("qt"),
            fake,
            connection,
        }
    }

    /// Names of this fleet's exchanges and queues.
    pub fn topology(&self) -> Topology {
        Topology::new(self.namespace.clone())
    }

    /// Worker configuration for this fleet.
    pub fn worker_config(&self) -> Config {
        let mut config = Config::default();
        config.amqp.url = SecretString::from(amqp_url());
        config.amqp.namespace = self.namespace.clone();
        config.redis.url = SecretString::from(redis_url());
        config.redis.prefix = self.redis_prefix.clone();
        config.redis.result_ttl_secs = 600;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.worker.retry_base_ms = 10;
        if let Some(fake) = config.providers.get_mut("fake") {
            fake.base_url = Some(self.fake.base_url());
        }
        config
    }

    /// Starts a worker inside this test process.
    pub async fn spawn_task_worker(&self, config: Config) -> TaskWorker {
        let worker = quarry_worker::Worker::start(config)
            .await
            .expect("worker starts");
        let http = worker.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        TaskWorker {
            http,
            stop: Some(stop),
            join,
        }
    }

    /// Starts a `quarry-worker` process and waits for its "worker started" log line.
    pub async fn spawn_process_worker(&self) -> ProcessWorker {
        self.spawn_process_worker_with("").await
    }

    /// Like [`Fleet::spawn_process_worker`], with `extra` TOML appended to the fleet's
    /// worker configuration (more tables, e.g. `[[providers.fake.keys]]`).
    pub async fn spawn_process_worker_with(&self, extra: &str) -> ProcessWorker {
        self.spawn_process_worker_env(extra, &[]).await
    }

    /// Like [`Fleet::spawn_process_worker_with`], with extra environment variables (e.g.
    /// `QUARRY__LOG__FILTER`).
    pub async fn spawn_process_worker_env(
        &self,
        extra: &str,
        env: &[(&str, &str)],
    ) -> ProcessWorker {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, format!("{}\n{extra}", self.worker_toml())).expect("write config");
        let mut child = Command::new(binary("quarry-worker"))
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn quarry-worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (started_tx, started_rx) = oneshot::channel::<SocketAddr>();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        let (count, lines_rx) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut started = Some(started_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let n = {
                    let mut kept = kept.lock().unwrap();
                    kept.push(line.clone());
                    kept.len()
                };
                count.send_replace(n);
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    eprintln!("[worker] {line}");
                    continue;
                };
                if event["message"] == "worker started"
                    && let Some(tx) = started.take()
                {
                    let url = event["metrics"].as_str().unwrap_or_default();
                    let addr = url
                        .trim_start_matches("http://")
                        .trim_end_matches("/metrics")
                        .parse()
                        .expect("metrics address");
                    let _ = tx.send(addr);
                } else if event["level"] != "INFO" {
                    eprintln!("[worker] {line}");
                }
            }
        });
        let http = within(30, "the worker process to start consuming", started_rx)
            .await
            .expect("the worker process exited before it started (see its log above)");
        ProcessWorker {
            child,
            http,
            log,
            lines: lines_rx,
            config: path,
            _config_dir: dir,
        }
    }

    fn worker_toml(&self) -> String {
        format!(
            r#"[amqp]
url = "{amqp}"
namespace = "{ns}"
[redis]
url = "{redis}"
prefix = "{prefix}"
result_ttl_secs = 600
[http]
listen = "127.0.0.1:0"
[log]
format = "json"
filter = "info"
[worker]
retry_base_ms = 10
[providers.fake]
base_url = "{fake}"
"#,
            amqp = amqp_url(),
            ns = self.namespace,
            redis = redis_url(),
            prefix = self.redis_prefix,
            fake = self.fake.base_url(),
        )
    }

    /// A producer client on this fleet's namespace.
    pub async fn client(&self) -> Client {
        let options = ClientOptions {
            namespace: self.namespace.clone(),
            connection_name: "quarry-test".into(),
            ..ClientOptions::default()
        };
        Client::connect_with(&amqp_url(), options)
            .await
            .expect("producer connects")
    }

    /// A fresh channel on the raw connection.
    pub async fn channel(&self) -> Channel {
        self.connection.create_channel().await.expect("channel")
    }

    /// Consumes `n` messages from `queue`, acking each, within `secs` seconds.
    pub async fn take(&self, queue: &str, n: usize, secs: u64) -> Vec<lapin::message::Delivery> {
        let channel = self.channel().await;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                unique("take").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        let taking = async {
            while out.len() < n {
                let delivery = consumer
                    .next()
                    .await
                    .expect("consumer open")
                    .expect("delivery");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                out.push(delivery);
            }
        };
        if tokio::time::timeout(Duration::from_secs(secs), taking)
            .await
            .is_err()
        {
            // Say what did arrive: which message is missing is the clue.
            let arrived: Vec<String> = out
                .iter()
                .map(|d| {
                    let id = d.properties.message_id().as_ref().map(|s| s.to_string());
                    let reason = quarry_worker::amqp::publisher::header_text(
                        d.properties.headers(),
                        quarry_schemas::wire::HEADER_DEAD_REASON,
                    );
                    format!("message_id {id:?} reason {reason:?}")
                })
                .collect();
            panic!(
                "timed out after {secs}s waiting for {n} messages on {queue}; {} arrived: {arrived:?}",
                out.len()
            );
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Declares a classic reply queue of `guest` (the plugin hand-made publishes are from)
    /// for hand-made publishes, bound to the results exchange as the SDKs bind theirs.
    pub async fn reply_queue(&self) -> String {
        let topology = self.topology();
        let name = unique(&topology.reply_prefix("guest"));
        bind_reply_queue(&self.channel().await, &topology, &name).await;
        name
    }

    /// Deletes every queue, exchange and Redis key of this fleet.
    pub async fn teardown(self, extra_queues: &[String]) {
        let channel = self.channel().await;
        let topology = self.topology();
        delete_topology(&channel, &topology, extra_queues).await;
        let redis = redis::Client::open(redis_url()).expect("redis url");
        if let Ok(mut conn) = redis.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.redis_prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await;
            }
        }
    }
}

/// Declares `queue` (classic, not durable) and binds it to the results exchange under its
/// own name.
pub async fn bind_reply_queue(channel: &Channel, topology: &Topology, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    bind_to_results(channel, topology, queue).await;
}

/// Binds an existing `queue` to the results exchange as the SDK binds its own, declaring the
/// exchange as workers do when none has yet (a test may publish before a worker starts).
pub async fn bind_to_results(channel: &Channel, topology: &Topology, queue: &str) {
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            topology.results_exchange().as_str().into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("declare the results exchange");
    quarry_producer::bind_reply_queue(channel, topology, queue)
        .await
        .expect("bind the reply queue");
}

/// A producer client of `user` on `fleet`'s namespace, taking results from `worker_user`.
pub async fn client_as(fleet: &Fleet, user: &str, password: &str, worker_user: &str) -> Client {
    let options = ClientOptions {
        namespace: fleet.namespace.clone(),
        connection_name: format!("quarry-test-{user}"),
        worker_user: worker_user.to_owned(),
    };
    Client::connect_with(&amqp_url_as(user, password), options)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"))
}

/// A pool key of the default profile, without limits.
pub fn key_config(name: &str, secret: &str) -> quarry_worker::config::KeyConfig {
    quarry_worker::config::KeyConfig {
        name: name.into(),
        api_key: Some(SecretString::from(secret.to_owned())),
        api_key_env: None,
        api_key_file: None,
        limits: quarry_worker::config::Limits::default(),
        profile: "default".into(),
    }
}

/// A `redis-server` of the caller's own, without persistence, for tests that stop and restart
/// Redis without disturbing the shared one.
pub struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port).await
    }

    /// Starts one on `port` and waits (at most 20 s) until it accepts connections.
    pub async fn start_on(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        within(20, "the private Redis to accept connections", async {
            while let Some(line) = lines.next_line().await.expect("its log") {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server on port {port} exited before it was ready");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, port }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (everything it held is lost, as in a crash of a Redis without persistence)
    /// and returns its port, for a later [`PrivateRedis::start_on`].
    pub async fn stop(mut self) -> u16 {
        self.child.kill().await.expect("kill redis-server");
        self.port
    }

    /// Kills it, leaves it down for `downtime`, and starts it again on the same port.
    pub async fn restart(self, downtime: Duration) -> Self {
        let port = self.stop().await;
        tokio::time::sleep(downtime).await; // the outage itself
        Self::start_on(port).await
    }
}

/// Runs `jobs` as one batch on the batch lane with `max_in_flight` outstanding, acks every
/// result, and returns them in arrival order; fails if they are not all in within `secs`.
pub async fn batch_results(
    client: &Client,
    jobs: Vec<Job>,
    max_in_flight: usize,
    secs: u64,
) -> Vec<JobResult> {
    let expected = jobs.len();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let mut stream = client
        .run_batch(&quarry_producer::new_job_id(), jobs, options)
        .await
        .expect("publish the batch");
    let mut results = Vec::with_capacity(expected);
    within(secs, &format!("{expected} results"), async {
        while let Some(item) = stream.next().await {
            let item = item.expect("a result");
            results.push(item.result.clone());
            item.ack().await.expect("ack");
        }
    })
    .await;
    stream.finish().await.expect("finish the batch");
    assert_eq!(results.len(), expected, "every job has a result");
    results
}

/// A binary of this workspace next to this test's executable (`cargo build --bins` builds
/// them; `scripts/test` does), or the path in `QUARRY_<NAME>_BIN` (e.g. `QUARRY_WORKER_BIN`).
pub fn binary(name: &str) -> PathBuf {
    let variable = format!("{}_BIN", name.replace('-', "_").to_uppercase());
    if let Ok(path) = std::env::var(&variable) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // A test runs from target/<profile>/deps/, a program (quarry-bench) from target/<profile>/.
    let dir = exe.parent().expect("exe dir");
    let path = [
        dir.join(name),
        dir.parent().map(|d| d.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| dir.join(name));
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --bins` first (scripts/test does), or set {variable}",
        path.display()
    );
    path
}

/// GETs `http://addr{path}` and returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("HTTP GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Parses a Prometheus text exposition, failing on any sample line the parser skipped.
pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_owned())).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text parses");
    // The parser skips what it cannot read; so each sample line must parse alone, too.
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let alone = prometheus_parse::Scrape::parse(std::iter::once(Ok(line.to_owned())))
            .expect("line parses");
        assert_eq!(
            alone.samples.len(),
            1,
            "not a Prometheus sample line: {line}"
        );
    }
    scrape
}

/// The sum of a counter's samples whose labels include `labels`.
pub fn counter_sum(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Publishes a raw message to `lane` of `topology`'s jobs exchange, as a hand-written
/// producer would, and waits for the broker's confirm (which says something only on a channel
/// in confirm mode).
pub async fn publish_raw(
    channel: &Channel,
    topology: &Topology,
    lane: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Confirmation {
    channel
        .basic_publish(
            topology.jobs_exchange().as_str().into(),
            lane.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("publisher confirm")
}

/// Deletes every queue and exchange of `topology` (the delay queues of the default steps and
/// the 1 s step tests use), and `extra_queues`. What is not there is skipped.
pub async fn delete_topology(channel: &Channel, topology: &Topology, extra_queues: &[String]) {
    let mut queues: Vec<String> = Lane::ALL.iter().map(|&l| topology.lane_queue(l)).collect();
    queues.push(topology.dead_queue());
    queues.push(topology.control_queue());
    queues.push(topology.expired_queue());
    for lane in Lane::ALL {
        for secs in [1, 5, 30, 120, 600] {
            queues.push(topology.delay_queue(lane, secs));
        }
    }
    queues.extend(extra_queues.iter().cloned());
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        topology.jobs_exchange(),
        topology.dead_exchange(),
        topology.control_exchange(),
        topology.results_exchange(),
        topology.delay_exchange(),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
