//! The worker's life: start (Redis, the pipeline, the first broker session, the HTTP
//! endpoint), run (sessions replaced when the connection is lost), drain on shutdown.

use crate::amqp::session::{self, Session, SessionEnd};
use crate::config::Config;
use crate::consumer::{self, Deferral};
use crate::{functions, http, limits, pipeline, result_store, telemetry};
use anyhow::Context;
use lapin::options::BasicCancelOptions;
use quarry_schemas::wire::Topology;
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
    reloader: crate::reload::Reloader,
}

/// What outlives a broker connection.
pub(crate) struct Core {
    pub(crate) topology: Topology,
    pub(crate) pipeline: Arc<crate::pipeline::Pipeline>,
    pub(crate) store: crate::result_store::ResultStore,
    pub(crate) deferral: Arc<Deferral>,
    /// Set when the broker refuses this worker's publishes: the worker stops.
    pub(crate) fatal: tokio_util::sync::CancellationToken,
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
        let session = session::connect_at_start(&config, &core).await?;
        let reloader = crate::reload::Reloader::new(config.clone(), core.pipeline.clone());

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
            reloader,
        })
    }

    /// Reloads this worker's `[plugins]` and `[routing]` (what `SIGHUP` calls).
    pub fn reloader(&self) -> crate::reload::Reloader {
        self.reloader.clone()
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
            reloader,
            ..
        } = self;
        let watcher = (config.worker.config_watch_secs > 0).then(|| {
            tokio::spawn(reloader.watch(Duration::from_secs(config.worker.config_watch_secs)))
        });
        let permits = Arc::new(Semaphore::new(usize::from(config.worker.concurrency)));
        let tracker = TaskTracker::new();
        let stopping = tokio_util::sync::CancellationToken::new();
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
                    session = session::reconnect(&config, &core) => {
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
            match session::drive(session, &core, &permits, &tracker, &stopping, &mut shutdown).await
            {
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

        // Jobs not started yet stay unacknowledged and go back to their queue.
        stopping.cancel();
        reporter.abort();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
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

/// Starts a worker and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Worker::start(config).await?.run_until(shutdown).await
}
