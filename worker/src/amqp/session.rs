//! One broker session: the connection, its confirm-mode publishing channel and its
//! consumers, opened at start and again after a lost connection, and driven until shutdown, a
//! refused publish or the connection's loss.

use crate::config::Config;
use crate::consumer::{Shared, Source};
use crate::run::Core;
use anyhow::Context;
use futures::StreamExt;
use futures::stream::BoxStream;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use quarry_schemas::wire::Lane;
use secrecy::ExposeSecret;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One broker connection: its publisher (inside `shared`) and lane consumers.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    /// Cancelled when the connection is lost: its jobs' publishes fail at once.
    pub(crate) lost: tokio_util::sync::CancellationToken,
    pub(crate) shared: Arc<Shared>,
    pub(crate) deliveries: BoxStream<'static, (crate::consumer::Source, lapin::Result<Delivery>)>,
    pub(crate) consumers: Vec<(Channel, ShortString)>,
}

/// Why a session ended.
pub(crate) enum SessionEnd {
    Shutdown,
    /// The broker refused a publish: every job would fail the same way.
    Fatal(anyhow::Error),
    /// The connection failed; the worker reconnects.
    Lost(String),
}

/// Runs one session's deliveries until shutdown, a refused publish or a lost connection. Jobs
/// waiting for a permit give up when `stopping` is cancelled (the worker drains).
pub(crate) async fn drive(
    session: &mut Session,
    core: &Core,
    permits: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stopping: &CancellationToken,
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
                if let Ok(metrics) = crate::telemetry::prometheus() {
                    metrics.run_upkeep();
                }
            }
            next = session.deliveries.next() => match next {
                Some((source, Ok(delivery))) => {
                    let shared = session.shared.clone();
                    match source {
                        // Control requests and expired jobs are brief and bounded by their
                        // queues' own prefetch: they never wait behind jobs, so a cancel or a
                        // describe is answered while every job permit is taken.
                        Source::Control | Source::Expired => {
                            tracker.spawn(async move {
                                crate::consumer::handle(&shared, source, delivery).await;
                            });
                        }
                        // A job waits for one of `worker.concurrency` permits in its own task,
                        // so the deliveries behind it keep flowing. One that has not started
                        // when the worker stops or the connection is lost is left
                        // unacknowledged: the broker requeues it when the connection closes.
                        Source::Lane(_) => {
                            let permits = permits.clone();
                            let stopping = stopping.clone();
                            let lost = session.lost.clone();
                            tracker.spawn(async move {
                                let permit = tokio::select! {
                                    biased;
                                    () = stopping.cancelled() => return,
                                    () = lost.cancelled() => return,
                                    permit = permits.acquire_owned() => permit,
                                };
                                let Ok(permit) = permit else {
                                    return;
                                };
                                crate::consumer::handle(&shared, source, delivery).await;
                                drop(permit);
                            });
                        }
                    }
                }
                Some((_, Err(error))) => return SessionEnd::Lost(error.to_string()),
                None => return SessionEnd::Lost("the broker cancelled the consumers".into()),
            },
        }
    }
}

/// The first session, retried for `amqp.connect_timeout_secs` while the broker cannot be
/// reached (a worker often starts before its broker).
pub(crate) async fn connect_at_start(config: &Config, core: &Core) -> anyhow::Result<Session> {
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
pub(crate) async fn reconnect(config: &Config, core: &Core) -> Session {
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

/// Confirm-mode channels for the chunks of streamed answers.
const CHUNK_CHANNELS: usize = 4;

/// Connects, declares the topology, opens the confirm-mode publishing channel and starts
/// the lane consumers.
async fn open_session(config: &Config, core: &Core) -> anyhow::Result<Session> {
    let properties = ConnectionProperties::default().with_connection_name("quarry-worker".into());
    let connection = Connection::connect(config.amqp.url.expose_secret(), properties).await?;
    let setup = connection.create_channel().await?;
    super::topology::declare(
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
    // Chunks of streamed answers on channels of their own: a first chunk's confirm does not
    // wait behind the results and deferrals queued on the other, and the broker spreads the
    // channels over its schedulers.
    let mut chunk_channels = Vec::with_capacity(CHUNK_CHANNELS);
    for _ in 0..CHUNK_CHANNELS {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        chunk_channels.push(channel);
    }
    let shared = Arc::new(Shared {
        pipeline: core.pipeline.clone(),
        publisher: super::Publisher::new(
            publish_channel,
            &core.topology,
            core.deferral.worker_user.as_deref(),
            lost.clone(),
        )
        .with_chunk_channels(chunk_channels),
        store: core.store.clone(),
        lane_queues: Lane::ALL.map(|lane| (lane, core.topology.lane_queue(lane))),
        fatal: core.fatal.clone(),
        deferral: core.deferral.clone(),
        lost: lost.clone(),
        max_message_bytes: config.worker.max_message_bytes,
        coalescing: config.worker.coalescing(),
    });

    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let sources = config
        .amqp
        .lanes
        .iter()
        .map(|&lane| {
            (
                crate::consumer::Source::Lane(lane),
                core.topology.lane_queue(lane),
                config.worker.concurrency,
            )
        })
        .chain([
            (
                crate::consumer::Source::Control,
                core.topology.control_queue(),
                INTERNAL_PREFETCH,
            ),
            (
                crate::consumer::Source::Expired,
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
