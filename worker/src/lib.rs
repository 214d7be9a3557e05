//! `quarry-worker`: takes extraction jobs from RabbitMQ, runs them against LLM providers and
//! publishes schema-valid results.
//!
//! - [`config`]: the TOML + environment configuration, loaded once.
//! - [`amqp`]: topology declaration, the confirm-mode result and dead-letter publisher.
//! - [`consumer`]: one delivery from bytes to ack.
//! - [`pipeline`]: the stages of one job, in order, with no AMQP in sight.
//! - [`providers`]: provider wire formats behind one trait; [`retry`]: the one retry policy.
//! - [`schema_cache`]: compiled JSON Schema validators; [`result_store`]: results in Redis.
//! - [`telemetry`]: metric names and events, log setup; [`http`]: metrics and health.
//!
//! [`Worker::start`] connects and starts consuming; [`Worker::run_until`] drains on shutdown.

pub mod amqp;
pub mod config;
pub mod consumer;
pub mod http;
pub mod limits;
pub mod pipeline;
pub mod providers;
pub mod result_store;
pub mod retry;
pub mod schema_cache;
pub mod telemetry;

use anyhow::Context;
use config::Config;
use consumer::Shared;
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use quarry_schemas::wire::{Lane, Topology};
use secrecy::ExposeSecret;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// A started worker: connected, topology declared, consuming.
pub struct Worker {
    config: Config,
    connection: Connection,
    consumers: Vec<(Lane, Channel, Consumer)>,
    shared: Arc<Shared>,
    health: Arc<http::Health>,
    http_addr: SocketAddr,
}

impl Worker {
    /// Connects to RabbitMQ and Redis, declares the topology, builds the providers, binds
    /// the HTTP endpoint and starts the lane consumers.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let metrics = telemetry::prometheus()?;
        let topology = Topology::new(config.amqp.namespace.clone());
        let pipeline = pipeline::Pipeline::new(&config)?;

        let redis_client =
            redis::Client::open(config.redis.url.expose_secret()).context("redis.url")?;
        // Bounded everything: a Redis that hangs or is gone fails a command within seconds,
        // and reconnection is retried at most every second.
        let redis_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let redis = tokio::time::timeout(
            Duration::from_secs(10),
            redis::aio::ConnectionManager::new_with_config(redis_client, redis_config),
        )
        .await
        .context("connecting to Redis timed out")?
        .context("connecting to Redis")?;
        let limiter = limits::Limiter::new(redis.clone(), config.redis.prefix.clone());
        let pipeline = pipeline.with_limiter(limiter);
        let store = result_store::ResultStore::new(
            redis,
            config.redis.prefix.clone(),
            Duration::from_secs(config.redis.result_ttl_secs),
            Duration::from_secs(config.worker.claim_ttl_secs),
        );
        store.ping().await.context("Redis PING")?;

        let connection = connect(&config).await?;
        let setup = connection.create_channel().await?;
        amqp::topology::declare(
            &setup,
            &topology,
            config.amqp.delivery_limit,
            &config.limits.delay_steps_secs,
        )
            .await
            .context("declaring the topology (do all workers of this namespace agree on amqp.delivery_limit?)")?;
        let _ = setup.close(200, "topology declared".into()).await;

        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let publisher = amqp::Publisher::new(publish_channel, &topology);

        let shared = Arc::new(Shared {
            pipeline,
            publisher,
            store: store.clone(),
            lane_queues: Lane::ALL.map(|lane| (lane, topology.lane_queue(lane))),
            fatal: tokio_util::sync::CancellationToken::new(),
            deferral: consumer::Deferral {
                topology: topology.clone(),
                steps_secs: {
                    let mut steps = config.limits.delay_steps_secs.clone();
                    steps.sort_unstable();
                    steps
                },
                max: config.limits.max_deferrals,
                worker_user: config
                    .amqp
                    .url
                    .expose_secret()
                    .parse::<lapin::uri::AMQPUri>()
                    .ok()
                    .map(|uri| uri.authority.userinfo.username)
                    .filter(|u| !u.is_empty()),
            },
        });

        let mut consumers = Vec::new();
        for &lane in &config.amqp.lanes {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(config.worker.concurrency, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    topology.lane_queue(lane).into(),
                    format!("quarry-worker-{}-{}", lane.as_str(), std::process::id()).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {}", topology.lane_queue(lane)))?;
            consumers.push((lane, channel, consumer));
        }

        let health = Arc::new(http::Health {
            consuming: true.into(),
            connection: connection.status().clone(),
            store,
        });
        let (http_addr, _http_task) = http::serve(config.http.listen, metrics, health.clone())
            .await
            .with_context(|| format!("binding http.listen {}", config.http.listen))?;
        tracing::info!(
            namespace = topology.namespace(),
            lanes = ?config.amqp.lanes,
            concurrency = config.worker.concurrency,
            metrics = %format!("http://{http_addr}/metrics"),
            "worker started"
        );
        Ok(Self {
            config,
            connection,
            consumers,
            shared,
            health,
            http_addr,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Processes jobs until `shutdown` completes or the broker connection fails. On shutdown:
    /// stop consuming, let in-flight jobs finish within the grace period, close the
    /// connection (the broker requeues whatever was not acknowledged).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Worker {
            config,
            connection,
            consumers,
            shared,
            health,
            ..
        } = self;
        let permits = Arc::new(Semaphore::new(usize::from(config.worker.concurrency)));
        let tracker = TaskTracker::new();
        let mut cancel = Vec::new();
        let streams = consumers.into_iter().map(|(lane, channel, consumer)| {
            cancel.push((channel, consumer.tag()));
            consumer.map(move |delivery| (lane, delivery))
        });
        let mut deliveries = futures::stream::select_all(streams);
        let reporter = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    shared.pipeline.report_keys().await;
                }
            })
        };
        let extender = {
            let store = shared.store.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(store.claim_lifetime() / 3);
                loop {
                    every.tick().await;
                    if let Err(error) = store.extend_claims().await {
                        telemetry::redis_error("extend_claims", &error);
                    }
                }
            })
        };
        let mut upkeep = tokio::time::interval(Duration::from_secs(5));
        tokio::pin!(shutdown);

        let ended: anyhow::Result<()> = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                () = shared.fatal.cancelled() => {
                    break Err(anyhow::anyhow!("the result publishing channel failed"));
                }
                _ = upkeep.tick() => telemetry::prometheus()?.run_upkeep(),
                next = deliveries.next() => match next {
                    Some((lane, Ok(delivery))) => {
                        let permit = permits.clone().acquire_owned().await?;
                        let shared = shared.clone();
                        tracker.spawn(async move {
                            consumer::handle(&shared, lane, delivery).await;
                            drop(permit);
                        });
                    }
                    Some((_, Err(error))) if error.can_be_recovered() => {
                        // The connection is being recovered; the consumers resume by themselves.
                        tracing::warn!(%error, "broker connection lost; recovering");
                    }
                    Some((_, Err(error))) => break Err(anyhow::Error::new(error).context("consuming from RabbitMQ")),
                    None => break Err(anyhow::anyhow!("the broker cancelled the consumers")),
                },
            }
        };

        reporter.abort();
        // Claims keep being extended until the jobs in flight end (their guards drop).
        health.consuming.store(false, Ordering::Relaxed);
        tracing::info!(
            in_flight = tracker.len(),
            "stopping: no new jobs; finishing those in flight"
        );
        for (channel, tag) in cancel {
            let _ = channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await;
        }
        tracker.close();
        if tokio::time::timeout(config.worker.shutdown_grace(), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = tracker.len(),
                "grace period over; unfinished jobs go back to the queue"
            );
        }
        extender.abort();
        let _ = connection.close(200, "worker shutting down".into()).await;
        ended
    }
}

/// Connects to the broker with automatic recovery: after a lost connection lapin reconnects
/// (backing off up to 5 s between tries, without limit) and replays channels, QoS, confirm
/// mode and consumers. The first connection is retried for `amqp.connect_timeout_secs`.
async fn connect(config: &Config) -> anyhow::Result<Connection> {
    let started = std::time::Instant::now();
    let limit = Duration::from_secs(config.amqp.connect_timeout_secs);
    let mut delay = Duration::from_millis(200);
    loop {
        let properties = ConnectionProperties::default()
            .with_connection_name("quarry-worker".into())
            .enable_auto_recover()
            .configure_backoff(|b| {
                b.with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_jitter()
                    .without_max_times()
            });
        match Connection::connect(config.amqp.url.expose_secret(), properties).await {
            Ok(connection) => return Ok(connection),
            Err(error) if started.elapsed() + delay < limit => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "connecting to RabbitMQ (gave up after {} s, amqp.connect_timeout_secs)",
                    started.elapsed().as_secs()
                )));
            }
        }
    }
}

/// Starts a worker and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Worker::start(config).await?.run_until(shutdown).await
}
