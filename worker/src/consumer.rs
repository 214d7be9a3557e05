//! One delivery, from bytes to ack: decode, reply address, redelivery replay, pipeline,
//! result store, confirmed reply, ack. The ack comes only after the reply's confirm.
//!
//! Every answer goes through one gate first ([`reply_address`]): the sender is the message's
//! broker-validated `user_id` (a worker's own deferred job names its plugin in a header only
//! the worker's `user_id` makes trusted), and `reply_to` must be one of that plugin's reply
//! queues, `{ns}.replies.{plugin}.*`. Nothing is published to a `reply_to` before that.
//!
//! | what arrived                                   | what happens                                   |
//! |------------------------------------------------|------------------------------------------------|
//! | not a `job.v1` (bad JSON, wrong types, larger than `worker.max_message_bytes`) | dead-lettered `undecodable`; an `INVALID_REQUEST` result if the gate lets it be answered |
//! | a job without `user_id`                        | dead-lettered `no_user_id`, not answered        |
//! | a job without `reply_to`                       | dead-lettered `missing_reply_to`                |
//! | a job whose `reply_to` is not a reply queue of its plugin | dead-lettered `reply_to_refused`, nothing published to it |
//! | a job from a user that is not a configured plugin | `NOT_AUTHORIZED` result, no Redis or provider call |
//! | a job whose result is stored (a redelivery)    | the stored result is published again           |
//! | a job of a cancelled batch, not yet started    | `CANCELLED` result, no provider call           |
//! | a job another delivery holds the claim of      | it waits in a delay queue, then is checked again (a deferral); past `limits.max_deferrals`, dead-lettered `deferrals_exhausted` (the holder answers) |
//! | a job whose limits could not be checked (Redis unavailable) | it waits in the shortest delay queue (a deferral); past the bound, an `INTERNAL` result |
//! | any other job                                  | claimed; the pipeline's result is stored (claim dropped), then published |
//! | a result whose reply queue does not exist      | the result is dead-lettered `reply_queue_missing` |
//! | the broker nacks a publish                     | the job is nacked and requeued                 |
//! | the broker refuses a publish (channel error)   | the worker stops; the job returns to its queue with the connection |
//! | the connection is lost                         | nothing: the broker redelivers the job, which answers from the store |
//!
//! Besides jobs, every worker consumes two internal queues:
//!
//! | what arrived                                   | what happens                                   |
//! |------------------------------------------------|------------------------------------------------|
//! | a control request on `{ns}.control`            | through the same gate (without `reply_to`: applied, not answered); applied for its publisher: `cancel_batch` marks the batch in Redis; a `control-reply.v1` answers |
//! | a dead letter copied to `{ns}.expired` that expired in a lane (AMQP `expiration`) | through the same gate: `DEADLINE_EXCEEDED` result, no provider call; other copies are dropped (the original stays in `{ns}.dead`) |

use crate::amqp::publisher::{header_text, header_u32};
use crate::amqp::{DeadLetter, PublishError, Publisher};
use crate::pipeline::Pipeline;
use crate::result_store::{Claim, ClaimGuard, ClaimState, ResultStore};
use crate::telemetry;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use quarry_schemas::control::{ControlAction, ControlReply, ControlRequest, ControlVersion};
use quarry_schemas::wire::Lane;
use quarry_schemas::wire::{HEADER_DEFERRALS, HEADER_PLUGIN, Topology};
use quarry_schemas::{ErrorCode, ErrorInfo, Job, JobResult, Status};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a job whose limits could not be checked waits before going back to its queue.
const LIMITER_DOWN_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a failed publish waits for the connection's watcher to report the connection
/// lost before taking the failure for the broker's refusal.
const LOSS_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest error detail copied from a decoding error.
const MAX_DETAIL: usize = 500;

/// Longest control request read (a control.v1 message is a few dozen bytes).
const MAX_CONTROL_BYTES: usize = 4096;

/// Longest queue name quoted in a refusal.
const MAX_NAME_QUOTED: usize = 255;

/// Everything a job task needs, shared by all of them.
pub struct Shared {
    /// The job pipeline (the same for every broker session).
    pub pipeline: Arc<Pipeline>,
    /// Result and dead-letter publisher.
    pub publisher: Publisher,
    /// Result store for redeliveries.
    pub store: ResultStore,
    /// Queue name of each lane, for dead-letter headers.
    pub lane_queues: [(Lane, String); 2],
    /// Cancelled when the publishing channel fails: every later job would fail the same way,
    /// so the worker stops (and its supervisor restarts it) instead of spinning on requeues.
    pub fatal: CancellationToken,
    /// Where long limit waits go.
    pub deferral: Arc<Deferral>,
    /// Cancelled when this delivery's connection is lost: acks stop waiting on it.
    pub lost: CancellationToken,
    /// Largest job message decoded (`worker.max_message_bytes`); larger ones are refused
    /// `INVALID_REQUEST` unread.
    pub max_message_bytes: usize,
}

/// Delay queues for jobs whose limits are full for long.
pub struct Deferral {
    /// Queue names.
    pub topology: Topology,
    /// Delay queue lengths, seconds, ascending.
    pub steps_secs: Vec<u64>,
    /// Deferrals of one job before it ends `RATE_LIMITED`.
    pub max: u32,
    /// The worker's own AMQP user: a job carrying it as `user_id` was deferred by a worker,
    /// so its plugin header is trusted.
    pub worker_user: Option<String>,
}

impl Deferral {
    /// The shortest delay queue.
    fn shortest(&self) -> u64 {
        self.steps_secs.first().copied().unwrap_or(1)
    }

    /// The delay queue for a wait: the shortest at least as long, else the longest.
    fn step_for(&self, wait: std::time::Duration) -> u64 {
        let secs = wait.as_secs_f64().ceil() as u64;
        self.steps_secs
            .iter()
            .copied()
            .find(|s| *s >= secs)
            .or_else(|| self.steps_secs.last().copied())
            .unwrap_or(1)
    }
}

impl Shared {
    fn queue_name(&self, lane: Lane) -> &str {
        self.lane_queues
            .iter()
            .find(|(l, _)| *l == lane)
            .map_or("", |(_, q)| q.as_str())
    }
}

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A lane's job queue.
    Lane(Lane),
    /// The control queue.
    Control,
    /// The copies of dead letters, among them expired jobs.
    Expired,
}

/// Settles one delivery. Never panics, never returns an error: failures are logged, and a
/// delivery that could not be answered is requeued.
pub async fn handle(shared: &Shared, source: Source, delivery: Delivery) {
    telemetry::in_flight(1.0);
    let work = async {
        match source {
            Source::Lane(lane) => process(shared, lane, &delivery).await,
            Source::Control => control(shared, &delivery).await,
            Source::Expired => expired(shared, &delivery).await,
        }
    };
    // A panic in one job must not leave its delivery unsettled for the life of the channel.
    let outcome = AssertUnwindSafe(work).catch_unwind().await;
    let settled = match outcome {
        Ok(Ok(())) => {
            settle(
                &shared.lost,
                "ack",
                delivery.ack(BasicAckOptions::default()),
            )
            .await
        }
        Ok(Err(error @ (PublishError::Amqp(_) | PublishError::ConfirmTimeout))) => {
            // Either the connection failed (its watcher says so within moments) or the broker
            // refused the publish on a live connection (a channel error, e.g. a deleted
            // exchange), which it would do for every job. Either way the delivery stays
            // unsettled: the broker requeues it with the connection, without the hot loop of
            // redeliveries a nack would start here.
            let refused = matches!(&error, PublishError::Amqp(e) if e.is_amqp_soft_error());
            let lost = !refused
                && tokio::time::timeout(LOSS_NOTICE, shared.lost.cancelled())
                    .await
                    .is_ok();
            if lost {
                tracing::warn!(%error, "connection lost while answering a job; it will be redelivered");
            } else {
                tracing::error!(%error, "the broker refused a publish; stopping the worker");
                shared.fatal.cancel();
            }
            Ok(false)
        }
        Ok(Err(error)) => {
            if !matches!(error, PublishError::Requeue) {
                tracing::error!(%error, "could not answer the job; requeueing it");
            }
            requeue(shared, &delivery).await
        }
        Err(_) => {
            // The broker's delivery limit dead-letters a job that keeps doing this.
            tracing::error!("job processing panicked; requeueing the job");
            requeue(shared, &delivery).await
        }
    };
    if let Err(error) = settled {
        // The channel is gone; the broker requeues the delivery itself.
        tracing::warn!(%error, "could not settle a delivery");
    }
    telemetry::in_flight(-1.0);
}

async fn requeue(shared: &Shared, delivery: &Delivery) -> lapin::Result<bool> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    settle(&shared.lost, "nack", delivery.nack(options)).await
}

/// An ack or nack, given up when the connection is lost (lapin leaves it pending) or after
/// [`CONFIRM_TIMEOUT`](crate::amqp::publisher::CONFIRM_TIMEOUT): the job task always ends,
/// and the broker requeues an unsettled delivery with its connection.
async fn settle(
    lost: &CancellationToken,
    operation: &'static str,
    ack: impl std::future::Future<Output = lapin::Result<bool>>,
) -> lapin::Result<bool> {
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(crate::amqp::publisher::CONFIRM_TIMEOUT, ack) => outcome.unwrap_or(Ok(false)),
        () = lost.cancelled() => Ok(false),
    };
    telemetry::amqp_operation(operation, started.elapsed(), matches!(outcome, Ok(true)));
    outcome
}

/// Who sent a message, as the broker vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The plugin: the message's broker-validated `user_id`; on a job a worker deferred
    /// (its `user_id` is the worker's own), the plugin header the worker wrote.
    pub plugin: String,
    /// How often a worker deferred the job (0 for a plugin's own message).
    pub deferrals: u32,
}

impl Sender {
    /// The sender of a message with these properties, or `None` without a `user_id`
    /// (nothing vouches for who sent it). Headers count only on a worker's own message: a
    /// plugin's `x-quarry-*` headers are ignored.
    pub fn of(properties: &lapin::BasicProperties, worker_user: Option<&str>) -> Option<Self> {
        let user = properties.user_id().as_ref()?.as_str();
        if user.is_empty() {
            return None;
        }
        let headers = properties.headers();
        if Some(user) == worker_user
            && let Some(plugin) = header_text(headers, HEADER_PLUGIN)
        {
            return Some(Self {
                plugin,
                deferrals: header_u32(headers, HEADER_DEFERRALS).unwrap_or(0),
            });
        }
        Some(Self {
            plugin: user.to_owned(),
            deferrals: 0,
        })
    }
}

/// Why a message gets no answer at its `reply_to`: a dead-letter reason and its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswerable {
    /// The dead-letter reason (`no_user_id`, `missing_reply_to`, `reply_to_refused`).
    pub reason: &'static str,
    /// What was wrong.
    pub detail: String,
}

/// The sender of a message and the reply queue its answers may go to: `reply_to` must be a
/// reply queue of the sender's own plugin (`{ns}.replies.{plugin}.*`), so that nothing a
/// plugin writes can direct a result, a refusal or a control reply into another's queue. The
/// one gate every answer passes; nothing is published to a `reply_to` before it.
pub fn reply_address<'p>(
    topology: &Topology,
    properties: &'p lapin::BasicProperties,
    worker_user: Option<&str>,
) -> Result<(Sender, &'p str), (Option<Sender>, Unanswerable)> {
    let Some(sender) = Sender::of(properties, worker_user) else {
        return Err((
            None,
            Unanswerable {
                reason: "no_user_id",
                detail: "the message has no user_id: nothing says who sent it, so it is not \
                         answered (publish with user_id set to the login, as the SDKs do)"
                    .to_owned(),
            },
        ));
    };
    let Some(reply_to) = properties.reply_to().as_ref().map(|s| s.as_str()) else {
        return Err((
            Some(sender),
            Unanswerable {
                reason: "missing_reply_to",
                detail: "the message has no reply_to property: its answer would have nowhere to go"
                    .to_owned(),
            },
        ));
    };
    if !topology.is_reply_queue_of(reply_to, &sender.plugin) {
        let detail = format!(
            "reply_to `{}` is not a reply queue of plugin `{}` (they start with `{}`)",
            reply_to.chars().take(MAX_NAME_QUOTED).collect::<String>(),
            sender.plugin,
            topology.reply_prefix(&sender.plugin)
        );
        return Err((
            Some(sender),
            Unanswerable {
                reason: "reply_to_refused",
                detail,
            },
        ));
    }
    Ok((sender, reply_to))
}

async fn process(shared: &Shared, lane: Lane, delivery: &Delivery) -> Result<(), PublishError> {
    let started = Instant::now();
    let properties = &delivery.properties;
    let queue = shared.queue_name(lane);
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    let topology = &shared.deferral.topology;
    let address = reply_address(topology, properties, shared.deferral.worker_user.as_deref());

    let decoded = if delivery.data.len() > shared.max_message_bytes {
        Err(format!(
            "the message is {} bytes; this fleet takes jobs of at most {} bytes \
             (worker.max_message_bytes)",
            delivery.data.len(),
            shared.max_message_bytes
        ))
    } else {
        serde_json::from_slice::<Job>(&delivery.data).map_err(|error| {
            // serde quotes offending values; a multi-megabyte string must not travel on.
            let mut detail = format!("not a job.v1 message: {error}");
            if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
                detail.truncate(cut);
                detail.push_str("...");
            }
            detail
        })
    };
    let job = match decoded {
        Ok(job) => job,
        Err(detail) => {
            // Answered only at an address that passed the gate.
            let sender = match &address {
                Ok((sender, reply_to)) => {
                    let job_id = properties
                        .message_id()
                        .as_ref()
                        .map_or(correlation_id.unwrap_or(""), |s| s.as_str());
                    let result = JobResult::failed(
                        job_id,
                        ErrorInfo::new(ErrorCode::InvalidRequest, detail.clone()),
                    );
                    shared
                        .publisher
                        .reply(reply_to, correlation_id, &encode(&result))
                        .await?;
                    Some(sender)
                }
                Err((sender, _)) => sender.as_ref(),
            };
            let plugin = sender.map(|s| s.plugin.as_str());
            dead_letter(shared, "undecodable", &detail, queue, plugin, delivery).await?;
            telemetry::job_finished(&telemetry::Finished {
                lane,
                plugin: "unknown",
                model: "none",
                outcome: ErrorCode::InvalidRequest.as_str(),
                total: started.elapsed(),
                provider: Default::default(),
                published_ms: published_ms(properties),
            });
            return Ok(());
        }
    };
    let (sender, reply_to) = match address {
        Ok(found) => found,
        Err((sender, refusal)) => {
            let plugin = sender.as_ref().map(|s| s.plugin.as_str());
            dead_letter(
                shared,
                refusal.reason,
                &refusal.detail,
                queue,
                plugin,
                delivery,
            )
            .await?;
            return Ok(());
        }
    };
    let plugin = sender.plugin.as_str();
    let deferrals = sender.deferrals;
    let policy = match shared.pipeline.identify(Some(plugin)) {
        Ok(policy) => policy,
        Err(error) => {
            telemetry::policy_refusal("", &error);
            let mut result = JobResult::failed(&job.id, error);
            result.custom_id = job.custom_id;
            result.batch_id = job.batch_id;
            shared
                .publisher
                .reply(reply_to, correlation_id, &encode(&result))
                .await?;
            telemetry::job_finished(&telemetry::Finished {
                lane,
                plugin: "unknown",
                model: "none",
                outcome: ErrorCode::NotAuthorized.as_str(),
                total: started.elapsed(),
                provider: Default::default(),
                published_ms: published_ms(properties),
            });
            return Ok(());
        }
    };
    let trace = crate::trace::TraceContext::from_headers(properties.headers())
        .unwrap_or_else(crate::trace::TraceContext::new_root);
    let span = tracing::info_span!("job", job_id = %job.id, batch_id = job.batch_id.as_deref(), plugin, lane = lane.as_str(), trace_id = %trace.trace_id);

    async move {
        // The idempotency record: the job is claimed before its first provider call, in the
        // round trip of its first limiter reservation. A job finished before is answered from
        // the store, one in flight elsewhere waits in a delay queue, one of a cancelled batch
        // ends `CANCELLED`.
        let keys = shared
            .store
            .job_keys(plugin, job.batch_id.as_deref(), &job.id);
        let mut execution = shared
            .pipeline
            .execute_claimed(
                job,
                &policy,
                started,
                Some(&trace),
                ClaimState::Pending(&shared.store, &keys),
            )
            .await;
        match execution.stopped.take() {
            Some(Claim::Cancelled) => {
                if let Err(error) = shared
                    .store
                    .count_only(&keys, ErrorCode::Cancelled.as_str())
                    .await
                {
                    telemetry::redis_error("batch_progress", &error);
                }
                let result = failed_as(
                    &execution.result,
                    ErrorInfo::new(
                        ErrorCode::Cancelled,
                        "the job's batch was cancelled before the job started",
                    ),
                );
                shared
                    .publisher
                    .reply(reply_to, correlation_id, &encode(&result))
                    .await?;
                telemetry::job_finished(&telemetry::Finished {
                    lane,
                    plugin,
                    model: "none",
                    outcome: ErrorCode::Cancelled.as_str(),
                    total: started.elapsed(),
                    provider: Default::default(),
                    published_ms: published_ms(properties),
                });
                return Ok(());
            }
            Some(Claim::Stored(stored)) => {
                if delivery.acker.usable() {
                    shared
                        .publisher
                        .reply(reply_to, correlation_id, &stored)
                        .await?;
                }
                telemetry::replayed();
                return Ok(());
            }
            Some(Claim::Held(left)) => {
                // The holder is usually seconds from done, so the shortest delay; a crashed
                // holder's claim lapses within `claim_ttl_secs`. Not a deferral for limits:
                // the count stays as it was.
                tracing::debug!(
                    claim_left_ms = left.as_millis() as u64,
                    "job in flight elsewhere"
                );
                // Counted like every deferral: a copy that never finds the claim free ends
                // in the dead letters (the holder answers the job).
                if deferrals >= shared.deferral.max {
                    let detail = format!(
                        "job `{}` was still held by another delivery after {deferrals} deferrals",
                        execution.result.job_id
                    );
                    dead_letter(
                        shared,
                        "deferrals_exhausted",
                        &detail,
                        queue,
                        Some(plugin),
                        delivery,
                    )
                    .await?;
                    return Ok(());
                }
                let step = shared.deferral.shortest();
                let delay = shared.deferral.topology.delay_queue(lane, step);
                shared
                    .publisher
                    .defer(&delay, &delivery.data, properties, plugin, deferrals + 1)
                    .await?;
                telemetry::claim_conflict(lane);
                return Ok(());
            }
            Some(Claim::Claimed(_)) | None => {}
        }
        let guard = execution.claim.take();
        let release = |guard: Option<ClaimGuard>| async move {
            if let Some(guard) = guard
                && let Err(error) = shared.store.release(guard).await
            {
                telemetry::redis_error("release_claim", &error);
            }
        };
        // Never spend without a limit check: while Redis does not answer, the job waits in
        // the shortest delay queue (a requeue would burn the lane's delivery limit and
        // dead-letter it within seconds), counted like any deferral.
        let wait = if execution.retry_later {
            Some(std::time::Duration::ZERO)
        } else {
            execution.defer
        };
        if let Some(wait) = wait {
            if deferrals < shared.deferral.max {
                let step = shared.deferral.step_for(wait);
                let delay = shared.deferral.topology.delay_queue(lane, step);
                release(guard).await;
                shared
                    .publisher
                    .defer(&delay, &delivery.data, properties, plugin, deferrals + 1)
                    .await?;
                telemetry::deferred(lane, step);
                return Ok(());
            }
            if let Some(error) = execution.result.error.as_mut() {
                error.message = format!("{} (after {deferrals} deferrals)", error.message);
            }
        }
        let body = encode(&execution.result);
        let stored = shared
            .store
            .put(
                &keys,
                &body,
                execution.settlement.as_ref(),
                &crate::result_store::Progress {
                    outcome: execution
                        .result
                        .error
                        .as_ref()
                        .map_or("ok", |e| e.code.as_str()),
                    tokens: execution.result.usage.total_tokens,
                },
            )
            .await;
        drop(guard);
        if let Err(error) = &stored {
            telemetry::redis_error("put", error);
        }
        // The connection failed while the job ran: the broker redelivers it and the
        // redelivery answers from the store, so this copy stays silent (no duplicate result).
        if !delivery.acker.usable() && stored.is_ok() {
            return Ok(());
        }
        shared
            .publisher
            .reply(reply_to, correlation_id, &body)
            .await?;
        let outcome = execution
            .result
            .error
            .as_ref()
            .map_or("ok", |e| e.code.as_str());
        telemetry::job_finished(&telemetry::Finished {
            lane,
            plugin,
            model: execution.target_model.as_deref().unwrap_or("none"),
            outcome,
            total: started.elapsed(),
            provider: execution.provider_time,
            published_ms: published_ms(properties),
        });
        tracing::debug!(
            outcome,
            attempts = execution.result.attempts,
            "job finished"
        );
        Ok(())
    }
    .instrument(span)
    .await
}

/// Applies a control request for the plugin that published it (its broker-validated
/// `user_id`), and answers it at `reply_to` when that is one of the plugin's reply queues. A
/// request without `reply_to` is applied and not answered; one whose `reply_to` is not the
/// plugin's is neither.
async fn control(shared: &Shared, delivery: &Delivery) -> Result<(), PublishError> {
    let properties = &delivery.properties;
    let queue = shared.deferral.topology.control_queue();
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    let worker_user = shared.deferral.worker_user.as_deref();
    let (sender, reply_to) = match reply_address(&shared.deferral.topology, properties, worker_user)
    {
        Ok((sender, reply_to)) => (sender, Some(reply_to)),
        Err((Some(sender), refusal)) if refusal.reason == "missing_reply_to" => (sender, None),
        Err((sender, refusal)) => {
            let plugin = sender.as_ref().map(|s| s.plugin.as_str());
            return dead_letter(
                shared,
                refusal.reason,
                &refusal.detail,
                &queue,
                plugin,
                delivery,
            )
            .await;
        }
    };
    let decoded = if delivery.data.len() > MAX_CONTROL_BYTES {
        Err(format!(
            "a control request of {} bytes; at most {MAX_CONTROL_BYTES} are read",
            delivery.data.len()
        ))
    } else {
        serde_json::from_slice::<ControlRequest>(&delivery.data)
            .map_err(|error| format!("not a control.v1 message: {error}"))
            .and_then(|request| {
                request
                    .check()
                    .map(|()| request)
                    .map_err(|e| format!("not a control.v1 message: {e}"))
            })
    };
    let request = match decoded {
        Ok(request) => request,
        Err(detail) => {
            let plugin = Some(sender.plugin.as_str());
            return dead_letter(shared, "undecodable", &detail, &queue, plugin, delivery).await;
        }
    };
    let mut progress = None;
    let applied = match shared.pipeline.identify(Some(&sender.plugin)) {
        Err(error) => {
            telemetry::policy_refusal("", &error);
            Err(error)
        }
        Ok(policy) => {
            let outcome = match request.action {
                ControlAction::CancelBatch => shared
                    .store
                    .cancel_batch(&policy.name, &request.batch_id)
                    .await
                    .map(|()| telemetry::batch_cancelled(&policy.name, &request.batch_id)),
                ControlAction::BatchStatus => shared
                    .store
                    .batch_progress(&policy.name, &request.batch_id)
                    .await
                    .map(|counts| progress = Some(counts)),
            };
            if let Err(error) = outcome {
                // Not applied and not answered: the request goes back to its queue.
                telemetry::redis_error("control", &error);
                tokio::time::sleep(LIMITER_DOWN_PAUSE).await;
                return Err(PublishError::Requeue);
            }
            Ok(())
        }
    };
    let Some(reply_to) = reply_to else {
        return Ok(());
    };
    let reply = ControlReply {
        version: ControlVersion::V1,
        action: request.action,
        batch_id: request.batch_id,
        status: if applied.is_ok() {
            Status::Ok
        } else {
            Status::Error
        },
        error: applied.err(),
        progress,
    };
    // A ControlReply is plain data: serialising it cannot fail.
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    shared
        .publisher
        .control_reply(reply_to, correlation_id, &body)
        .await?;
    Ok(())
}

/// Answers a job that expired in its lane (AMQP `expiration`) with `DEADLINE_EXCEEDED`. Every
/// other dead letter arrives here as a copy and is dropped: its original is in `{ns}.dead`.
async fn expired(shared: &Shared, delivery: &Delivery) -> Result<(), PublishError> {
    let properties = &delivery.properties;
    let headers = properties.headers();
    let topology = &shared.deferral.topology;
    let from = header_text(headers, "x-first-death-queue");
    let lane = Lane::ALL
        .into_iter()
        .find(|&lane| from.as_deref() == Some(topology.lane_queue(lane).as_str()));
    let (Some(lane), Some("expired")) = (
        lane,
        header_text(headers, "x-first-death-reason").as_deref(),
    ) else {
        return Ok(());
    };
    // The broker keeps the original's properties when it dead-letters: the same gate as
    // for a job decides whether its sender can be answered, and where.
    let worker_user = shared.deferral.worker_user.as_deref();
    let (Ok((sender, reply_to)), true) = (
        reply_address(topology, properties, worker_user),
        delivery.data.len() <= shared.max_message_bytes,
    ) else {
        // No one to answer, or not at that address; the dead queue keeps the original.
        return Ok(());
    };
    let Ok(job) = serde_json::from_slice::<Job>(&delivery.data) else {
        return Ok(());
    };
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    let result = failed_without_a_call(
        job,
        ErrorInfo::new(
            ErrorCode::DeadlineExceeded,
            format!(
                "the job expired in queue `{}` before a worker took it (AMQP expiration)",
                topology.lane_queue(lane)
            ),
        ),
    );
    shared
        .publisher
        .reply(reply_to, correlation_id, &encode(&result))
        .await?;
    telemetry::job_expired(lane.as_str());
    let policy = shared.pipeline.identify(Some(&sender.plugin)).ok();
    telemetry::job_finished(&telemetry::Finished {
        lane,
        plugin: policy.as_ref().map_or("unknown", |p| p.name.as_str()),
        model: "none",
        outcome: ErrorCode::DeadlineExceeded.as_str(),
        total: std::time::Duration::ZERO,
        provider: Default::default(),
        published_ms: published_ms(properties),
    });
    Ok(())
}

async fn dead_letter(
    shared: &Shared,
    reason: &'static str,
    detail: &str,
    queue: &str,
    plugin: Option<&str>,
    delivery: &Delivery,
) -> Result<(), PublishError> {
    let letter = DeadLetter {
        reason,
        detail,
        queue,
        body: &delivery.data,
        properties: &delivery.properties,
        plugin,
    };
    shared.publisher.dead_letter(&letter).await
}

/// A failed result for the job `ran` answered: same job, batch, custom id and metadata.
fn failed_as(ran: &JobResult, error: ErrorInfo) -> JobResult {
    let mut result = JobResult::failed(&ran.job_id, error);
    result.custom_id.clone_from(&ran.custom_id);
    result.batch_id.clone_from(&ran.batch_id);
    result.metadata.clone_from(&ran.metadata);
    result
}

/// The result of a job that ends before the pipeline: its ids and metadata echoed.
fn failed_without_a_call(job: Job, error: ErrorInfo) -> JobResult {
    let mut result = JobResult::failed(&job.id, error);
    result.custom_id = job.custom_id;
    result.batch_id = job.batch_id;
    result.metadata = job.metadata;
    result
}

/// When the producer published the job (the SDK's `x-quarry-published-ms` header).
fn published_ms(properties: &lapin::BasicProperties) -> Option<u64> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(quarry_schemas::wire::HEADER_PUBLISHED_MS)?
    {
        lapin::types::AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
        lapin::types::AMQPValue::Timestamp(ms) => Some(*ms),
        _ => None,
    }
}

fn encode(result: &JobResult) -> Vec<u8> {
    // A JobResult is plain data (strings, numbers, JSON values): serialising it cannot fail.
    serde_json::to_vec(result).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode a result");
        br#"{"version":"result.v1","job_id":"","status":"error","usage":{"input_tokens":0,"output_tokens":0,"total_tokens":0},"latency_ms":0,"attempts":0,"error":{"code":"INTERNAL","message":"result encoding failed","retryable":true}}"#.to_vec()
    })
}
