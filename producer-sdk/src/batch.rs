//! Batches: bounded in-flight publishing and a durable reply queue per batch.
//!
//! One driver task interleaves three things: publishing the next job while fewer than
//! `max_in_flight` are outstanding, collecting publisher confirms, and receiving results.
//! Results are handed to the caller, who acknowledges each one ([`BatchItem::ack`]) after it
//! has stored it: until then the result stays in the durable queue, so a crash of the
//! producer loses nothing. A job's result is handed over once even if the fleet delivers it
//! twice (at-least-once delivery); the extra copy is acknowledged and counted.

use crate::publish::{Envelope, publish_confirmed, unless_lost};
use crate::{Client, Error};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use quarry_schemas::ordered::OrderedChannel;
use quarry_schemas::wire::Lane;
use quarry_schemas::{Job, JobResult};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a batch runs.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Lane to publish on.
    pub lane: Lane,
    /// Jobs published but without a result, at most.
    pub max_in_flight: usize,
    /// Give up when nothing happens (no confirm, no result) for this long.
    pub idle_timeout: Option<Duration>,
    /// The trace the batch belongs to: each job is published as a child span of it. `None`:
    /// a new trace per job.
    pub trace: Option<crate::TraceContext>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            lane: Lane::Batch,
            max_in_flight: 256,
            idle_timeout: None,
            trace: None,
        }
    }
}

/// One result of a batch. Acknowledge it once stored; an unacknowledged result is delivered
/// again when the producer reconnects.
pub struct BatchItem {
    /// The result.
    pub result: JobResult,
    delivery: Delivery,
    lost: CancellationToken,
}

impl BatchItem {
    /// Removes the result from the batch's reply queue.
    pub async fn ack(self) -> Result<(), Error> {
        unless_lost(&self.lost, self.delivery.ack(BasicAckOptions::default())).await??;
        Ok(())
    }
}

/// The results of a running batch, in arrival order. Ends after the last job's result.
pub struct BatchStream {
    rx: mpsc::Receiver<Result<BatchItem, Error>>,
    replies: Channel,
    reply_queue: String,
    duplicates: Arc<AtomicU64>,
    foreign: Arc<AtomicU64>,
}

impl BatchStream {
    /// The next result, an error that ended the batch, or `None` when every job has its result.
    pub async fn next(&mut self) -> Option<Result<BatchItem, Error>> {
        self.rx.recv().await
    }

    /// The durable queue the batch's results go to.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Results received twice for the same job (and dropped) so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Messages in the reply queue that were not a result of this batch from the fleet's
    /// workers (another `user_id`, or a job id this batch did not publish), dropped so far.
    pub fn foreign(&self) -> u64 {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Stops receiving without deleting the queue: results not yet acknowledged go back to it,
    /// for this or another producer to collect with [`crate::Client::attach_batch`].
    pub async fn detach(self) -> Result<(), Error> {
        close_channel(&self.replies, "batch detached").await
    }

    /// Deletes the batch's reply queue, if it is empty. Call after acknowledging every result.
    pub async fn finish(self) -> Result<(), Error> {
        let options = QueueDeleteOptions {
            if_empty: true,
            ..QueueDeleteOptions::default()
        };
        self.replies
            .queue_delete(self.reply_queue.as_str().into(), options)
            .await?;
        close_channel(&self.replies, "batch finished").await
    }
}

pub(crate) async fn start<I>(
    client: &Client,
    batch_id: &str,
    jobs: I,
    published: HashSet<String>,
    received: HashSet<String>,
    options: BatchOptions,
) -> Result<BatchStream, Error>
where
    I: Iterator<Item = Job> + Send + 'static,
{
    let (connection, topology) = (&client.connection, &client.topology);
    let max_in_flight = options.max_in_flight.max(1);
    let replies = connection.create_channel().await?;
    let prefetch = u16::try_from(max_in_flight.saturating_mul(2)).unwrap_or(u16::MAX);
    replies
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let reply_queue = topology.batch_reply_queue(
        client
            .user_id
            .as_deref()
            .unwrap_or(crate::client::ANONYMOUS),
        batch_id,
    );
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("classic")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    replies
        .queue_declare(reply_queue.as_str().into(), durable, args)
        .await?;
    crate::client::bind_reply_queue(&replies, topology, &reply_queue).await?;
    let consumer = replies
        .basic_consume(
            reply_queue.as_str().into(),
            "quarry-batch".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let (tx, rx) = mpsc::channel(max_in_flight);
    let duplicates = Arc::new(AtomicU64::new(0));
    let foreign = Arc::new(AtomicU64::new(0));
    let driver = Driver {
        publish: client.channel.clone(),
        exchange: topology.jobs_exchange(),
        reply_queue: reply_queue.clone(),
        user_id: client.user_id.clone(),
        batch_id: batch_id.to_owned(),
        options: BatchOptions {
            max_in_flight,
            ..options
        },
        duplicates: duplicates.clone(),
        foreign: foreign.clone(),
        worker_user: client.worker_user.clone(),
        tx,
        lost: client.lost.clone(),
        _replies: replies.clone(),
    };
    tokio::spawn(async move {
        if let Err(error) = driver.run(jobs, published, received, consumer).await {
            // The receiver may be gone already; then nobody is left to tell.
            let _ = error.1.send(Err(error.0)).await;
        }
    });
    Ok(BatchStream {
        rx,
        replies,
        reply_queue,
        duplicates,
        foreign,
    })
}

struct Driver {
    publish: OrderedChannel,
    exchange: String,
    reply_queue: String,
    user_id: Option<String>,
    batch_id: String,
    options: BatchOptions,
    duplicates: Arc<AtomicU64>,
    foreign: Arc<AtomicU64>,
    /// The only `user_id` a result is taken from.
    worker_user: Arc<str>,
    tx: mpsc::Sender<Result<BatchItem, Error>>,
    lost: CancellationToken,
    /// Keeps the reply channel open while the driver consumes from it: a dropped
    /// [`BatchStream`] must not close it under a running consumer.
    _replies: Channel,
}

type Failed = (Error, mpsc::Sender<Result<BatchItem, Error>>);

impl Driver {
    async fn run<I: Iterator<Item = Job>>(
        self,
        mut jobs: I,
        mut pending: HashSet<String>,
        received: HashSet<String>,
        mut consumer: lapin::Consumer,
    ) -> Result<(), Failed> {
        let fail = |e: Error| (e, self.tx.clone());
        let lane = self.options.lane;
        let trace = self.options.trace;
        let mut delivered = received;
        let mut confirms = FuturesUnordered::new();
        let mut next_job = jobs.next();
        let idle = self.options.idle_timeout.unwrap_or(Duration::MAX);

        while next_job.is_some() || !pending.is_empty() {
            let can_publish = next_job.is_some() && pending.len() < self.options.max_in_flight;
            tokio::select! {
                () = self.lost.cancelled() => return Err(fail(Error::ConnectionLost)),
                Some(outcome) = confirms.next(), if !confirms.is_empty() => {
                    let outcome: Result<(), Error> = outcome;
                    outcome.map_err(fail)?;
                }
                () = std::future::ready(()), if can_publish => {
                    let Some(mut job) = next_job.take() else { continue };
                    job.batch_id = Some(self.batch_id.clone());
                    pending.insert(job.id.clone());
                    let (lost, channel, exchange, reply_queue, user_id) = (self.lost.clone(), self.publish.clone(), self.exchange.clone(), self.reply_queue.clone(), self.user_id.clone());
                    confirms.push(async move {
                        let envelope = Envelope { exchange: &exchange, lane, reply_to: &reply_queue, user_id: user_id.as_deref(), trace };
                        publish_confirmed(&lost, &channel, &job, envelope).await
                    });
                    next_job = jobs.next();
                }
                next = tokio::time::timeout(idle, consumer.next()) => {
                    let delivery = match next {
                        Err(_) => return Err(fail(Error::Idle { idle, pending: pending.len() })),
                        Ok(None) => return Err(fail(Error::Closed)),
                        Ok(Some(Err(e))) => return Err(fail(Error::Amqp(e))),
                        Ok(Some(Ok(delivery))) => delivery,
                    };
                    let result = match serde_json::from_slice::<JobResult>(&delivery.data) {
                        Ok(result) if crate::client::from_worker(&delivery, &self.worker_user) => result,
                        Ok(_) => {
                            self.foreign.fetch_add(1, Ordering::Relaxed);
                            unless_lost(&self.lost, delivery.ack(BasicAckOptions::default())).await.map_err(&fail)?.map_err(|e| fail(e.into()))?;
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, queue = %self.reply_queue, "dropping a reply that is not a result.v1");
                            unless_lost(&self.lost, delivery.ack(BasicAckOptions::default())).await.map_err(&fail)?.map_err(|e| fail(e.into()))?;
                            continue;
                        }
                    };
                    if delivered.contains(&result.job_id) {
                        self.duplicates.fetch_add(1, Ordering::Relaxed);
                        unless_lost(&self.lost, delivery.ack(BasicAckOptions::default())).await.map_err(&fail)?.map_err(|e| fail(e.into()))?;
                        continue;
                    }
                    // Only a job this batch published and still waits for is answered.
                    if !pending.remove(&result.job_id) {
                        tracing::warn!(job_id = %result.job_id, queue = %self.reply_queue, "dropping a result for a job this batch did not publish");
                        self.foreign.fetch_add(1, Ordering::Relaxed);
                        unless_lost(&self.lost, delivery.ack(BasicAckOptions::default())).await.map_err(&fail)?.map_err(|e| fail(e.into()))?;
                        continue;
                    }
                    delivered.insert(result.job_id.clone());
                    if self.tx.send(Ok(BatchItem { result, delivery, lost: self.lost.clone() })).await.is_err() {
                        return Ok(()); // The caller dropped the stream.
                    }
                }
            }
        }
        Ok(())
    }
}

/// Closes a channel; one that is already closing or closed counts as closed.
async fn close_channel(channel: &Channel, why: &str) -> Result<(), Error> {
    match channel.close(200, why.into()).await {
        Ok(()) => Ok(()),
        Err(error) if !channel.status().connected() => {
            tracing::debug!(%error, "the channel was already closing");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}
