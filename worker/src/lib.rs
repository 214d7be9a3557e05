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
//! [`Worker::start`] connects and starts consuming; [`Worker::run_until`] reconnects after a
//! lost broker connection and drains on shutdown.

pub mod amqp;
pub mod config;
pub mod consumer;
pub mod functions;
pub mod http;
pub mod limits;
pub mod pipeline;
pub mod policy;
pub mod providers;
pub mod result_store;
pub mod retry;
pub mod schema_cache;
pub mod telemetry;
pub mod trace;

use anyhow::Context;
use config::Config;
use consumer::{Deferral, Shared};
use futures::StreamExt;
use futures::stream::BoxStream;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
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
    core: Core,
    session: Session,
    health: Arc<http::Health>,
    http_addr: SocketAddr,
}

/// What outlives a broker connection.
struct Core {
    topology: Topology,
    pipeline: Arc<pipeline::Pipeline>,
    store: result_store::ResultStore,
    deferral: Arc<Deferral>,
    /// Set when the broker refuses this worker's publishes: the worker stops.
    fatal: tokio_util::sync::CancellationToken,
}

/// One broker connection: its publisher (inside `shared`) and lane consumers.
struct Session {
    connection: Connection,
    /// Cancelled when the connection is lost: its jobs' publishes fail at once.
    lost: tokio_util::sync::CancellationToken,
    shared: Arc<Shared>,
    deliveries: BoxStream<'static, (consumer::Source, lapin::Result<Delivery>)>,
    consumers: Vec<(Channel, ShortString)>,
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    /// The broker refused a publish: every job would fail the same way.
    Fatal(anyhow::Error),
    /// The connection failed; the worker reconnects.
    Lost(String),
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
        functions::LIBRARY
            .load(&redis)
            .await
            .context("loading the worker's Redis functions (FUNCTION LOAD; Redis 7 or later)")?;
        let limiter = limits::Limiter::new(redis.clone(), config.redis.prefix.clone());
        let pipeline = pipeline.with_limiter(limiter);
        let store = result_store::ResultStore::new(
            redis,
            config.redis.prefix.clone(),
            Duration::from_secs(config.redis.result_ttl_secs),
            Duration::from_secs(config.worker.claim_ttl_secs),
            Duration::from_secs(config.redis.cancel_ttl_secs),
        );
        store.ping().await.context("Redis PING")?;

        let core = Core {
            deferral: Arc::new(Deferral {
                topology: topology.clone(),
                steps: consumer::Deferrals {
                    steps_secs: {
                        let mut steps = config.limits.delay_steps_secs.clone();
                        steps.sort_unstable();
                        steps
                    },
                    max: config.limits.max_deferrals,
                },
                worker_user: config.amqp.user(),
            }),
            topology,
            pipeline: Arc::new(pipeline),
            store: store.clone(),
            fatal: tokio_util::sync::CancellationToken::new(),
        };
        let session = connect_at_start(&config, &core).await?;

        let health = Arc::new(http::Health {
            consuming: true.into(),
            connection: std::sync::Mutex::new(session.connection.status().clone()),
            store,
        });
        let (http_addr, _http_task) = http::serve(config.http.listen, metrics, health.clone())
            .await
            .with_context(|| format!("binding http.listen {}", config.http.listen))?;
        tracing::info!(
            namespace = core.topology.namespace(),
            lanes = ?config.amqp.lanes,
            concurrency = config.worker.concurrency,
            metrics = %format!("http://{http_addr}/metrics"),
            "worker started"
        );
        Ok(Self {
            config,
            core,
            session,
            health,
            http_addr,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Processes jobs until `shutdown` completes or the broker refuses this worker's
    /// publishes. A lost broker connection is replaced (backing off up to 5 s between tries,
    /// without limit); jobs of the lost connection finish, store their results and are
    /// redelivered by the broker. On shutdown: stop consuming, let in-flight jobs finish
    /// within the grace period, close the connection (the broker requeues whatever was not
    /// acknowledged).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Worker {
            config,
            core,
            session,
            health,
            ..
        } = self;
        let permits = Arc::new(Semaphore::new(usize::from(config.worker.concurrency)));
        let tracker = TaskTracker::new();
        let reporter = {
            let pipeline = core.pipeline.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    pipeline.report_keys().await;
                }
            })
        };
        let extender = {
            let store = core.store.clone();
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
        tokio::pin!(shutdown);

        let mut current = Some(session);
        let ended: anyhow::Result<()> = loop {
            let Some(session) = current.as_mut() else {
                // Reconnect, unless asked to stop meanwhile.
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    session = reconnect(&config, &core) => {
                        *health
                            .connection
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            session.connection.status().clone();
                        health.consuming.store(true, Ordering::Relaxed);
                        telemetry::reconnected();
                        tracing::info!("reconnected to the broker; consuming again");
                        current = Some(session);
                        continue;
                    }
                }
            };
            match drive(session, &core, &permits, &tracker, &mut shutdown).await {
                SessionEnd::Shutdown => break Ok(()),
                SessionEnd::Fatal(error) => break Err(error),
                SessionEnd::Lost(why) => {
                    health.consuming.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        why,
                        in_flight = tracker.len(),
                        "broker connection lost; reconnecting (jobs in flight finish and are redelivered)"
                    );
                    // Its deliveries are void; the jobs running on it stop waiting on it. A
                    // connection that still lives is closed, so that its unacknowledged
                    // deliveries go back to their queues now.
                    session.lost.cancel();
                    if let Some(old) = current.take() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            old.connection.close(200, "session replaced".into()),
                        )
                        .await;
                    }
                }
            }
        };

        reporter.abort();
        health.consuming.store(false, Ordering::Relaxed);
        tracing::info!(
            in_flight = tracker.len(),
            "stopping: no new jobs; finishing those in flight"
        );
        if let Some(session) = &current {
            for (channel, tag) in &session.consumers {
                let _ = channel
                    .basic_cancel(tag.clone(), BasicCancelOptions::default())
                    .await;
            }
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
        if let Some(session) = current {
            let _ = session
                .connection
                .close(200, "worker shutting down".into())
                .await;
        }
        ended
    }
}

/// Runs one session's deliveries until shutdown, a refused publish or a lost connection.
async fn drive(
    session: &mut Session,
    core: &Core,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> SessionEnd {
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            biased;
            () = core.fatal.cancelled() => {
                return SessionEnd::Fatal(anyhow::anyhow!("the result publishing channel failed"));
            }
            () = shutdown.as_mut() => return SessionEnd::Shutdown,
            () = session.lost.cancelled() => return SessionEnd::Lost("connection error".into()),
            _ = upkeep.tick() => {
                if let Ok(metrics) = telemetry::prometheus() {
                    metrics.run_upkeep();
                }
            }
            next = session.deliveries.next() => match next {
                Some((source, Ok(delivery))) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return SessionEnd::Fatal(anyhow::anyhow!("the job semaphore closed"));
                    };
                    let shared = session.shared.clone();
                    tracker.spawn(async move {
                        consumer::handle(&shared, source, delivery).await;
                        drop(permit);
                    });
                }
                Some((_, Err(error))) => return SessionEnd::Lost(error.to_string()),
                None => return SessionEnd::Lost("the broker cancelled the consumers".into()),
            },
        }
    }
}

/// The first session, retried for `amqp.connect_timeout_secs` while the broker cannot be
/// reached (a worker often starts before its broker).
async fn connect_at_start(config: &Config, core: &Core) -> anyhow::Result<Session> {
    let started = tokio::time::Instant::now();
    let limit = Duration::from_secs(config.amqp.connect_timeout_secs);
    let mut delay = Duration::from_millis(200);
    loop {
        match open_session(config, core).await {
            Ok(session) => return Ok(session),
            Err(error) if started.elapsed() + delay < limit && unreachable(&error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot reach RabbitMQ yet"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
            Err(error) => {
                return Err(error.context(format!(
                    "starting on RabbitMQ (after {} s; amqp.connect_timeout_secs)",
                    started.elapsed().as_secs()
                )));
            }
        }
    }
}

/// A new session after a lost one, tried until it works (the caller gives up on shutdown).
async fn reconnect(config: &Config, core: &Core) -> Session {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        match open_session(config, core).await {
            Ok(session) => return session,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot reconnect to RabbitMQ yet"
                );
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

/// Prefetch of the control and expired-job queues: little traffic, each message brief.
const INTERNAL_PREFETCH: u16 = 16;

/// Longest pause between two connection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Whether a failed session start is the broker being unreachable (worth retrying), as
/// opposed to the broker refusing the topology or the credentials.
fn unreachable(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<lapin::Error>()
        .is_some_and(|e| matches!(e.kind(), lapin::ErrorKind::IOError(_)))
}

/// Connects, declares the topology, opens the confirm-mode publishing channel and starts
/// the lane consumers.
async fn open_session(config: &Config, core: &Core) -> anyhow::Result<Session> {
    let properties = ConnectionProperties::default().with_connection_name("quarry-worker".into());
    let connection = Connection::connect(config.amqp.url.expose_secret(), properties).await?;
    let setup = connection.create_channel().await?;
    amqp::topology::declare(
        &setup,
        &core.topology,
        config.amqp.delivery_limit,
        &config.limits.delay_steps_secs,
    )
    .await
    .context(
        "declaring the topology (do all workers of this namespace agree on amqp.delivery_limit?)",
    )?;
    let _ = setup.close(200, "topology declared".into()).await;

    let lost = watch_connection(&connection);
    let publish_channel = connection.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let shared = Arc::new(Shared {
        pipeline: core.pipeline.clone(),
        publisher: amqp::Publisher::new(
            publish_channel,
            &core.topology,
            core.deferral.worker_user.as_deref(),
            lost.clone(),
        ),
        store: core.store.clone(),
        lane_queues: Lane::ALL.map(|lane| (lane, core.topology.lane_queue(lane))),
        fatal: core.fatal.clone(),
        deferral: core.deferral.clone(),
        lost: lost.clone(),
        max_message_bytes: config.worker.max_message_bytes,
    });

    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let sources = config
        .amqp
        .lanes
        .iter()
        .map(|&lane| {
            (
                consumer::Source::Lane(lane),
                core.topology.lane_queue(lane),
                config.worker.concurrency,
            )
        })
        .chain([
            (
                consumer::Source::Control,
                core.topology.control_queue(),
                INTERNAL_PREFETCH,
            ),
            (
                consumer::Source::Expired,
                core.topology.expired_queue(),
                INTERNAL_PREFETCH,
            ),
        ]);
    for (source, queue, prefetch) in sources {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("quarry-worker-{queue}-{}", std::process::id()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        consumers.push((channel, consumer.tag()));
        streams.push(consumer.map(move |delivery| (source, delivery)));
    }
    Ok(Session {
        connection,
        lost,
        shared,
        deliveries: futures::stream::select_all(streams).boxed(),
        consumers,
    })
}

/// A token cancelled at the connection's first error: what is waiting on a dead connection
/// (publisher confirms, acks, the session) stops at once. lapin leaves such waits pending.
fn watch_connection(connection: &Connection) -> tokio_util::sync::CancellationToken {
    let lost = tokio_util::sync::CancellationToken::new();
    let mut events = connection.events_listener();
    let token = lost.clone();
    let status = connection.status().clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            // Channel errors come here too; only a failed connection counts.
            if let lapin::Event::Error(error) = event
                && !status.connected()
            {
                tracing::debug!(%error, "broker connection error");
                break;
            }
        }
        token.cancel();
    });
    lost
}

/// Starts a worker and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Worker::start(config).await?.run_until(shutdown).await
}
