//! The connection, single calls, and the reply router for them.

use crate::publish::{Envelope, publish_confirmed, unless_lost, watch_connection};
use crate::{BatchOptions, BatchStream, Error};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use quarry_schemas::control::{ControlReply, ControlRequest, Description};
use quarry_schemas::ordered::OrderedChannel;
use quarry_schemas::wire::{
    CONTENT_TYPE_JSON, Lane, MESSAGE_TYPE_CHUNK, MESSAGE_TYPE_CONTROL, Topology,
};
use quarry_schemas::{Chunk, Job, JobResult, Status};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Namespace of the fleet's exchanges and queues (`quarry` unless the fleet says otherwise).
    pub namespace: String,
    /// Shown in the broker's connection list.
    pub connection_name: String,
    /// The AMQP user the fleet's workers log in as. A result or control reply is taken
    /// only when its broker-validated `user_id` is this user (and only for a job or request
    /// this client has pending); anything else in a reply queue is dropped with a warning.
    /// The default, `guest`, is the development fleet's (`scripts/demo`); a production
    /// fleet's operator names its worker user (`deploy/rabbitmq/quarry-user worker NAME`).
    pub worker_user: String,
}

/// The worker user of the development fleet.
pub const DEFAULT_WORKER_USER: &str = "guest";

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            namespace: quarry_schemas::wire::DEFAULT_NAMESPACE.to_owned(),
            connection_name: "quarry-producer".to_owned(),
            worker_user: DEFAULT_WORKER_USER.to_owned(),
        }
    }
}

/// A batch's progress ([`Client::batch_status`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchStatus {
    /// Results stored so far by outcome (`ok` or an error code), and `tokens`. A job run
    /// twice in a worker's crash window counts twice.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// What the stored results cost, US dollars; `None` when none had a price.
    pub cost_usd: Option<f64>,
}

impl BatchStatus {
    /// Whether the fleet has no record of the batch's results.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// One counter (`ok`, an error code, `tokens`).
    pub fn get(&self, counter: &str) -> Option<u64> {
        self.counts.get(counter).copied()
    }
}

/// Options of one [`Client::extract`] call.
#[derive(Debug, Clone, Copy)]
pub struct CallOptions {
    /// Lane to publish on.
    pub lane: Lane,
    /// How long to wait for the result. A job without `deadline_ms` is published with this
    /// as its deadline, so workers stop working (and paying) for a call its caller gave up on:
    /// past it the job ends `DEADLINE_EXCEEDED`.
    pub timeout: Duration,
    /// The trace the job belongs to (e.g. of the request the plugin is serving): the job is
    /// published as a child span of it, and workers continue it to the provider. `None`: a
    /// new trace per job.
    pub trace: Option<crate::TraceContext>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            lane: Lane::Interactive,
            timeout: Duration::from_secs(120),
            trace: None,
        }
    }
}

impl CallOptions {
    /// A job without `deadline_ms` gets the call's timeout as its deadline, so workers stop
    /// working (and paying) for a call its caller gave up on.
    pub(crate) fn set_deadline(&self, job: &mut Job) {
        if job.deadline_ms.is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            job.deadline_ms = u64::try_from((now + self.timeout).as_millis()).ok();
        }
    }
}

/// The user part of reply-queue names when the URL names no user.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// Who waits for a job's replies.
pub(crate) enum Waiter {
    /// A call: its result.
    Call(oneshot::Sender<JobResult>),
    /// A stream: its chunks, then its result.
    Stream(tokio::sync::mpsc::UnboundedSender<crate::stream::Routed>),
}

pub(crate) type Pending = Arc<Mutex<HashMap<String, Waiter>>>;
/// Control requests waiting for their reply, by correlation id.
type PendingControl = Arc<Mutex<HashMap<String, oneshot::Sender<ControlReply>>>>;

/// A producer's connection to the fleet. Cheap to share behind an `Arc`; every method takes
/// `&self` and may be called from many tasks at once.
pub struct Client {
    pub(crate) connection: Connection,
    /// The publishing channel (confirm mode), shared by every call.
    pub(crate) channel: OrderedChannel,
    pub(crate) topology: Topology,
    pub(crate) user_id: Option<String>,
    /// Cancelled when the connection is lost.
    pub(crate) lost: tokio_util::sync::CancellationToken,
    /// The only `user_id` a result is taken from.
    pub(crate) worker_user: Arc<str>,
    pub(crate) reply_queue: String,
    pub(crate) pending: Pending,
    pending_control: PendingControl,
}

impl Client {
    /// Connects with default options (namespace `quarry`).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects, checks that the fleet's work exchange exists, and opens a private reply
    /// queue for single calls.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self, Error> {
        if !quarry_schemas::wire::is_namespace(&options.namespace) {
            return Err(Error::Namespace(options.namespace));
        }
        let uri: AMQPUri = url.parse().map_err(|e: String| Error::Url(e))?;
        // The broker checks `user_id` against the login: it is the plugin's identity.
        let user_id = Some(uri.authority.userinfo.username.clone()).filter(|u| !u.is_empty());
        let properties =
            ConnectionProperties::default().with_connection_name(options.connection_name.into());
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(Error::Connect)?;
        let lost = watch_connection(&connection);
        let topology = Topology::new(options.namespace);

        // A passive declare fails (and closes its channel) when the exchange is missing.
        let probe = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        if probe
            .exchange_declare(
                topology.jobs_exchange().into(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .is_err()
        {
            return Err(Error::TopologyMissing {
                namespace: topology.namespace().to_owned(),
                exchange: topology.jobs_exchange(),
            });
        }
        let _ = probe.close(200, "probe done".into()).await;

        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let channel = OrderedChannel::new(channel);

        let replies = connection.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        // The user in the name lets broker permissions give a plugin only its own queues.
        let reply_queue = topology.private_reply_queue(
            user_id.as_deref().unwrap_or(ANONYMOUS),
            &uuid::Uuid::now_v7().simple().to_string(),
        );
        let queue = replies
            .queue_declare(
                reply_queue.as_str().into(),
                exclusive,
                FieldTable::default(),
            )
            .await?;
        bind_reply_queue(&replies, &topology, &reply_queue).await?;
        // Without acks: the queue is this connection's own (exclusive, deleted with it), so an
        // ack would keep nothing safer, and it would double the broker's work per reply.
        let consumer = replies
            .basic_consume(
                queue.name().clone(),
                "quarry-replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let pending_control: PendingControl = Arc::default();
        let worker_user: Arc<str> = Arc::from(options.worker_user.as_str());
        tokio::spawn(route_replies(
            consumer,
            pending.clone(),
            pending_control.clone(),
            worker_user.clone(),
        ));

        Ok(Self {
            connection,
            channel,
            topology,
            user_id,
            lost,
            worker_user,
            reply_queue,
            pending,
            pending_control,
        })
    }

    /// Like [`Client::connect_with`], retrying while the broker cannot be reached (it is
    /// restarting, say), backing off from 100 ms to 2 s, for at most `patience`.
    pub async fn connect_patiently(
        url: &str,
        options: ClientOptions,
        patience: Duration,
    ) -> Result<Self, Error> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::connect_with(url, options.clone()).await {
                Err(error) if error.is_transport() && started.elapsed() + delay < patience => {
                    tracing::debug!(%error, "broker not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                outcome => return outcome,
            }
        }
    }

    /// The names this client publishes to.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// This client's reply queue: results of its calls (and of jobs published with it as
    /// `reply_to`) arrive here.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Publishes one job and waits for its result, at most `options.timeout` (which becomes
    /// the job's `deadline_ms` when it sets none).
    ///
    /// `Ok` carries the job's result, successful or not: check [`JobResult::status`].
    pub async fn extract(&self, mut job: Job, options: CallOptions) -> Result<JobResult, Error> {
        options.set_deadline(&mut job);
        let (tx, rx) = oneshot::channel();
        let job_id = job.id.clone();
        self.lock_pending().insert(job_id.clone(), Waiter::Call(tx));
        let outcome = self.publish_and_wait(&job, options, rx).await;
        self.lock_pending().remove(&job_id);
        outcome
    }

    /// Publishes a call's job to its lane with this client's reply queue, confirmed.
    pub(crate) async fn publish_call(&self, job: &Job, options: &CallOptions) -> Result<(), Error> {
        let envelope = Envelope {
            exchange: &self.topology.jobs_exchange(),
            lane: options.lane,
            reply_to: &self.reply_queue,
            user_id: self.user_id.as_deref(),
            trace: options.trace,
        };
        publish_confirmed(&self.lost, &self.channel, job, envelope).await
    }

    async fn publish_and_wait(
        &self,
        job: &Job,
        options: CallOptions,
        rx: oneshot::Receiver<JobResult>,
    ) -> Result<JobResult, Error> {
        self.publish_call(job, &options).await?;
        match unless_lost(&self.lost, tokio::time::timeout(options.timeout, rx)).await? {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                job_id: job.id.clone(),
                timeout: options.timeout,
            }),
        }
    }

    /// Publishes one job without waiting for its result; the result goes to `reply_to`.
    /// Returns once the broker confirmed the job.
    pub async fn publish(&self, job: &Job, lane: Lane, reply_to: &str) -> Result<(), Error> {
        let envelope = Envelope {
            exchange: &self.topology.jobs_exchange(),
            lane,
            reply_to,
            user_id: self.user_id.as_deref(),
            trace: None,
        };
        publish_confirmed(&self.lost, &self.channel, job, envelope).await
    }

    /// Runs a batch: publishes `jobs` with at most `options.max_in_flight` outstanding and
    /// streams their results from the batch's durable reply queue as they arrive. Each job's
    /// `batch_id` is set to `batch_id`. See [`BatchStream`].
    pub async fn run_batch<I>(
        &self,
        batch_id: &str,
        jobs: I,
        options: BatchOptions,
    ) -> Result<BatchStream, Error>
    where
        I: IntoIterator<Item = Job>,
        I::IntoIter: Send + 'static,
    {
        self.start_batch(
            batch_id,
            jobs.into_iter(),
            HashSet::new(),
            HashSet::new(),
            options,
        )
        .await
    }

    /// Resumes a batch after a lost connection (or a restart of the producer): publishes
    /// `unanswered` again — the jobs without a result in the caller's hands; a worker runs a
    /// job id once, so a job published twice costs nothing more — and streams their results,
    /// dropping any copy of a result in `received` (those the caller already stored).
    pub async fn resume_batch<I>(
        &self,
        batch_id: &str,
        unanswered: I,
        received: impl IntoIterator<Item = String>,
        options: BatchOptions,
    ) -> Result<BatchStream, Error>
    where
        I: IntoIterator<Item = Job>,
        I::IntoIter: Send + 'static,
    {
        let received = received.into_iter().collect();
        self.start_batch(
            batch_id,
            unanswered.into_iter(),
            HashSet::new(),
            received,
            options,
        )
        .await
    }

    /// Re-attaches to a batch published earlier (by this or a previous process): publishes
    /// nothing, and streams the results of `published` job ids from the batch's durable
    /// reply queue, including those that arrived while no producer was connected.
    pub async fn attach_batch(
        &self,
        batch_id: &str,
        published: impl IntoIterator<Item = String>,
        options: BatchOptions,
    ) -> Result<BatchStream, Error> {
        let published = published.into_iter().collect();
        self.start_batch(
            batch_id,
            std::iter::empty(),
            published,
            HashSet::new(),
            options,
        )
        .await
    }

    async fn start_batch<I>(
        &self,
        batch_id: &str,
        jobs: I,
        published: HashSet<String>,
        received: HashSet<String>,
        options: BatchOptions,
    ) -> Result<BatchStream, Error>
    where
        I: Iterator<Item = Job> + Send + 'static,
    {
        crate::batch::start(self, batch_id, jobs, published, received, options).await
    }

    /// Cancels a batch of this plugin: its jobs that have not started end `CANCELLED` (their
    /// results still arrive, one per job), jobs in flight finish. Returns once a worker has
    /// applied the cancellation fleet-wide, or [`Error::Refused`] if the fleet refused it,
    /// or [`Error::Timeout`] after `timeout` without an answer (no worker running).
    pub async fn cancel_batch(&self, batch_id: &str, timeout: Duration) -> Result<(), Error> {
        self.control(ControlRequest::cancel_batch(batch_id), timeout)
            .await
            .map(drop)
    }

    /// The progress of a batch of this plugin, from the fleet's records: results stored so
    /// far by outcome and what they cost. Empty for an unknown batch.
    pub async fn batch_status(
        &self,
        batch_id: &str,
        timeout: Duration,
    ) -> Result<BatchStatus, Error> {
        let reply = self
            .control(ControlRequest::batch_status(batch_id), timeout)
            .await?;
        Ok(BatchStatus {
            counts: reply.progress.unwrap_or_default(),
            cost_usd: reply.cost_usd,
        })
    }

    /// Cancels one job of this plugin (`batch_id`: the batch it was published in, if any).
    /// Not started, it ends `CANCELLED` without a provider call; in flight, its provider call
    /// is dropped (noticed within a third of the workers' claim lifetime) and it ends
    /// `CANCELLED`; finished, it keeps its result. The job's result still arrives.
    pub async fn cancel(
        &self,
        job_id: &str,
        batch_id: Option<&str>,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.control(
            ControlRequest::cancel_job(job_id, batch_id.map(str::to_owned)),
            timeout,
        )
        .await
        .map(drop)
    }

    /// This plugin's own view of the fleet: the aliases and targets it may run on (with image
    /// support), its defaults, profiles and quotas with what is left of them, and the
    /// contract and capabilities of the fleet's workers.
    pub async fn describe(&self, timeout: Duration) -> Result<Description, Error> {
        let reply = self.control(ControlRequest::describe(), timeout).await?;
        reply.description.ok_or_else(|| Error::Protocol {
            detail: "a describe reply without its description".to_owned(),
        })
    }

    /// Publishes a control request and waits for a worker's reply.
    async fn control(
        &self,
        request: ControlRequest,
        timeout: Duration,
    ) -> Result<ControlReply, Error> {
        // A ControlRequest is plain data: serialising it cannot fail.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let correlation_id = format!("control-{}", uuid::Uuid::now_v7().simple());
        let (tx, rx) = oneshot::channel();
        self.lock_control().insert(correlation_id.clone(), tx);
        let outcome = async {
            let target = ControlTarget {
                channel: &self.channel,
                topology: &self.topology,
                user_id: self.user_id.as_deref(),
                reply_to: &self.reply_queue,
            };
            unless_lost(&self.lost, target.publish(&body, &correlation_id)).await??;
            match unless_lost(&self.lost, tokio::time::timeout(timeout, rx)).await? {
                Ok(Ok(reply)) if reply.status == Status::Ok => Ok(reply),
                Ok(Ok(reply)) => Err(Error::Refused(reply.error.unwrap_or_else(|| {
                    quarry_schemas::ErrorInfo::new(
                        quarry_schemas::ErrorCode::Internal,
                        "refused without a reason",
                    )
                }))),
                Ok(Err(_)) => Err(Error::Closed),
                Err(_) => Err(Error::Timeout {
                    job_id: correlation_id.clone(),
                    timeout,
                }),
            }
        }
        .await;
        self.lock_control().remove(&correlation_id);
        outcome
    }

    /// Where this client's control requests go, for one published without a waiter (a
    /// dropped stream's cancel).
    pub(crate) fn control_target(&self) -> OwnedControlTarget {
        OwnedControlTarget {
            channel: self.channel.clone(),
            topology: self.topology.clone(),
            user_id: self.user_id.clone(),
            reply_to: self.reply_queue.clone(),
        }
    }

    fn lock_control(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<ControlReply>>> {
        self.pending_control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connection. Unacknowledged results go back to their queues.
    ///
    /// A channel that is already closing (e.g. a dropped [`BatchStream`]'s) does not make the
    /// close fail; a broker that does not confirm the close within 10 s does not make it hang.
    pub async fn close(&self) -> Result<(), Error> {
        let closing = self.connection.close(200, "client closed".into());
        match tokio::time::timeout(Duration::from_secs(10), closing).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if matches!(error.kind(), lapin::ErrorKind::InvalidChannelState(..)) => {
                tracing::debug!(%error, "a channel was already closing while the connection closed");
                Ok(())
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(Error::CloseTimeout),
        }
    }

    pub(crate) fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a control request is published, and where its reply goes.
pub(crate) struct ControlTarget<'a> {
    channel: &'a OrderedChannel,
    topology: &'a Topology,
    user_id: Option<&'a str>,
    reply_to: &'a str,
}

impl ControlTarget<'_> {
    /// Publishes a control request (persistent, mandatory) and waits for its confirm.
    pub(crate) async fn publish(&self, body: &[u8], correlation_id: &str) -> Result<(), Error> {
        let mut properties = lapin::BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_type(MESSAGE_TYPE_CONTROL.into())
            .with_delivery_mode(2)
            .with_correlation_id(correlation_id.into())
            .with_message_id(correlation_id.into())
            .with_reply_to(self.reply_to.into());
        if let Some(user) = self.user_id {
            properties = properties.with_user_id(user.into());
        }
        let options = lapin::options::BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = self
            .channel
            .publish(
                self.topology.control_exchange().as_str().into(),
                "".into(),
                options,
                body,
                properties,
            )
            .await?;
        crate::publish::settle(confirm.await?, correlation_id, Lane::Interactive)
    }
}

/// A [`ControlTarget`] that owns its parts, for a task of its own.
pub(crate) struct OwnedControlTarget {
    channel: OrderedChannel,
    topology: Topology,
    user_id: Option<String>,
    reply_to: String,
}

impl OwnedControlTarget {
    /// Publishes a control request whose reply nobody waits for (it is dropped).
    pub(crate) async fn publish(&self, request: &ControlRequest) -> Result<(), Error> {
        let body = serde_json::to_vec(request).unwrap_or_default();
        let correlation_id = format!("control-{}", uuid::Uuid::now_v7().simple());
        ControlTarget {
            channel: &self.channel,
            topology: &self.topology,
            user_id: self.user_id.as_deref(),
            reply_to: &self.reply_to,
        }
        .publish(&body, &correlation_id)
        .await
    }
}

/// Binds a reply queue to the fleet's results exchange under its own name: workers
/// publish every result there with the job's `reply_to` as routing key. The SDK binds its own
/// queues; call this for a queue of yours that [`Client::publish`] names as `reply_to` (it
/// must be one of your user's, [`Topology::reply_prefix`]).
pub async fn bind_reply_queue(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
) -> Result<(), Error> {
    channel
        .queue_bind(
            queue.into(),
            topology.results_exchange().as_str().into(),
            queue.into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Whether a reply came from the fleet's workers: its `user_id` (which the broker checks
/// against the publishing connection's login) is `worker_user`.
pub(crate) fn from_worker(delivery: &lapin::message::Delivery, worker_user: &str) -> bool {
    let from = delivery.properties.user_id().as_ref().map(|u| u.as_str());
    if from == Some(worker_user) {
        return true;
    }
    tracing::warn!(
        from = from.unwrap_or("(no user_id)"),
        worker_user,
        "dropping a reply that is not from the fleet's worker user (ClientOptions::worker_user)"
    );
    false
}

async fn route_replies(
    mut consumer: lapin::Consumer,
    pending: Pending,
    pending_control: PendingControl,
    worker_user: Arc<str>,
) {
    while let Some(next) = consumer.next().await {
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(%error, "reply consumer stopped");
                break;
            }
        };
        if !from_worker(&delivery, &worker_user) {
            continue;
        }
        let is_control = delivery
            .properties
            .kind()
            .as_ref()
            .is_some_and(|t| t.as_str() == MESSAGE_TYPE_CONTROL);
        if is_control {
            let correlation = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default();
            let waiter = pending_control
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&correlation);
            match (
                serde_json::from_slice::<ControlReply>(&delivery.data),
                waiter,
            ) {
                (Ok(reply), Some(tx)) => {
                    let _ = tx.send(reply);
                }
                (Ok(_), None) => tracing::debug!("control reply for no waiting call"),
                (Err(error), _) => {
                    tracing::warn!(%error, "reply queue received a malformed control reply")
                }
            }
            continue;
        }
        let is_chunk = delivery
            .properties
            .kind()
            .as_ref()
            .is_some_and(|t| t.as_str() == MESSAGE_TYPE_CHUNK);
        if is_chunk {
            match serde_json::from_slice::<Chunk>(&delivery.data) {
                Ok(chunk) => {
                    let pending = pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    match pending.get(&chunk.job_id) {
                        Some(Waiter::Stream(tx)) => {
                            let _ = tx.send(crate::stream::Routed::Chunk(chunk));
                        }
                        Some(Waiter::Call(_)) | None => {
                            tracing::debug!(job_id = %chunk.job_id, "chunk for no waiting stream")
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reply queue received a malformed chunk.v1")
                }
            }
            continue;
        }
        match serde_json::from_slice::<JobResult>(&delivery.data) {
            Ok(result) => {
                let waiter = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&result.job_id);
                match waiter {
                    Some(Waiter::Call(tx)) => {
                        let _ = tx.send(result);
                    }
                    Some(Waiter::Stream(tx)) => {
                        let _ = tx.send(crate::stream::Routed::Final(Box::new(result)));
                    }
                    None => {
                        tracing::debug!(job_id = %result.job_id, "result for no waiting call (duplicate or late)")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reply queue received something that is not a result.v1")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_namespace_that_would_break_the_names_is_refused_before_connecting() {
        let options = ClientOptions {
            namespace: "prod.#".to_owned(),
            ..ClientOptions::default()
        };
        // The URL points nowhere: the namespace is refused before any connection is tried.
        let error = Client::connect_with("amqp://guest:guest@127.0.0.1:1/%2f", options)
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(error, Error::Namespace(ref ns) if ns == "prod.#"),
            "{error}"
        );
        assert!(!error.is_transport());
    }
}
