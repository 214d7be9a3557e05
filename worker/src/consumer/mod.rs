//! One delivery, from bytes to ack: decode, reply address, redelivery replay, pipeline,
//! result store, confirmed reply, ack. The ack comes only after the reply's confirm.
//!
//! The decisions of the table below are pure functions in [`decide`] (`decode`, `intake`,
//! `next`, `settle`), unit-tested row by row; this module does the I/O each one names. The
//! pipeline says how a job ended in one [`Outcome`](crate::pipeline::Outcome).
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
//! | a deferred job whose delay queue does not exist | the job is dead-lettered `delay_queue_missing` |
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

pub mod decide;
pub mod gate;

pub use decide::{Deferrals, Handled, Intake, Next, Settle, Wait};
pub use gate::{Address, Sender, Unanswerable, reply_address};

use crate::amqp::publisher::header_text;
use crate::amqp::{DeadLetter, PublishError, Publisher};
use crate::pipeline::{Execution, Pipeline};
use crate::policy::Policy;
use crate::result_store::{ClaimGuard, ClaimState, ResultStore};
use crate::stream::ChunkSink;
use crate::telemetry;
use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use quarry_schemas::control::{ControlAction, ControlReply, ControlRequest, ControlVersion};
use quarry_schemas::wire::Lane;
use quarry_schemas::wire::Topology;
use quarry_schemas::{ErrorCode, ErrorInfo, Job, JobResult, Status};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a control request whose batch state could not be read waits before going back
/// to its queue.
const REDIS_DOWN_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a failed publish waits for the connection's watcher to report the connection
/// lost before taking the failure for the broker's refusal.
const LOSS_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest control request read (a control.v1 message is a few dozen bytes).
const MAX_CONTROL_BYTES: usize = 4096;

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
    /// How a streaming job's deltas are coalesced into chunks.
    pub coalescing: crate::stream::Coalescing,
}

/// Delay queues for jobs that must wait, and who the worker is.
pub struct Deferral {
    /// Queue names.
    pub topology: Topology,
    /// The delay queues and how often a job may wait in them.
    pub steps: Deferrals,
    /// The worker's own AMQP user: a job carrying it as `user_id` was deferred by a worker,
    /// so its plugin header is trusted.
    pub worker_user: Option<String>,
}

impl Shared {
    fn queue_name(&self, lane: Lane) -> &str {
        self.lane_queues
            .iter()
            .find(|(l, _)| *l == lane)
            .map_or("", |(_, q)| q.as_str())
    }

    fn address<'p>(&self, properties: &'p lapin::BasicProperties) -> Address<'p> {
        reply_address(
            &self.deferral.topology,
            properties,
            self.deferral.worker_user.as_deref(),
        )
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
/// delivery that could not be answered is requeued or left to the broker
/// ([`decide::settle`]).
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
    let ended = AssertUnwindSafe(work).catch_unwind().await.ok();
    let lost = match &ended {
        Some(result) if decide::may_be_loss(result) => {
            tokio::time::timeout(LOSS_NOTICE, shared.lost.cancelled())
                .await
                .is_ok()
        }
        Some(_) | None => false,
    };
    let settlement = decide::settle(ended.as_ref(), lost);
    match (&ended, settlement) {
        (None, _) => tracing::error!("job processing panicked; requeueing the job"),
        (Some(Err(error)), Settle::Requeue) => {
            tracing::error!(%error, "could not answer the job; requeueing it");
        }
        (Some(Err(error)), Settle::Unsettled) => {
            tracing::warn!(%error, "connection lost while answering a job; it will be redelivered");
        }
        (Some(Err(error)), Settle::Stop) => {
            tracing::error!(%error, "the broker refused a publish; stopping the worker");
        }
        (Some(_), _) => {}
    }
    let settled = match settlement {
        Settle::Ack => {
            settle(
                &shared.lost,
                "ack",
                delivery.ack(BasicAckOptions::default()),
            )
            .await
        }
        Settle::Requeue => {
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            settle(&shared.lost, "nack", delivery.nack(options)).await
        }
        Settle::Unsettled => Ok(false),
        Settle::Stop => {
            shared.fatal.cancel();
            Ok(false)
        }
    };
    if let Err(error) = settled {
        // The channel is gone; the broker requeues the delivery itself.
        tracing::warn!(%error, "could not settle a delivery");
    }
    telemetry::in_flight(-1.0);
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

/// A job delivery through the decision table's first rows ([`decide::intake`]), then the
/// pipeline.
async fn process(
    shared: &Shared,
    lane: Lane,
    delivery: &Delivery,
) -> Result<Handled, PublishError> {
    let started = Instant::now();
    let properties = &delivery.properties;
    let queue = shared.queue_name(lane);
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    let finished_early = |plugin: &str, outcome: ErrorCode| {
        telemetry::job_finished(&telemetry::Finished {
            lane,
            plugin,
            model: "none",
            outcome: outcome.as_str(),
            total: started.elapsed(),
            provider: Default::default(),
            published_ms: published_ms(properties),
        });
    };
    let intake = decide::intake(
        decide::check_content(
            properties.content_type().as_ref().map(|s| s.as_str()),
            properties.content_encoding().as_ref().map(|s| s.as_str()),
        )
        .and_then(|()| decide::decode(&delivery.data, shared.max_message_bytes)),
        shared.address(properties),
        |plugin| shared.pipeline.identify(Some(plugin)),
    );
    match intake {
        Intake::Undecodable {
            detail,
            answer_at,
            plugin,
        } => {
            if let Some(reply_to) = answer_at {
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
            }
            let reason = "undecodable";
            dead_letter(shared, reason, &detail, queue, plugin.as_deref(), delivery).await?;
            finished_early("unknown", ErrorCode::InvalidRequest);
            Ok(Handled::Done)
        }
        Intake::Unanswerable { refusal, plugin } => {
            let (reason, detail) = (refusal.reason(), refusal.detail());
            dead_letter(shared, reason, detail, queue, plugin.as_deref(), delivery).await?;
            Ok(Handled::Done)
        }
        Intake::NotAuthorized {
            job,
            error,
            reply_to,
        } => {
            telemetry::policy_refusal("", &error);
            let mut result = JobResult::failed(&job.id, error);
            result.custom_id = job.custom_id;
            result.batch_id = job.batch_id;
            shared
                .publisher
                .reply(reply_to, correlation_id, &encode(&result))
                .await?;
            finished_early("unknown", ErrorCode::NotAuthorized);
            Ok(Handled::Done)
        }
        Intake::Run {
            job,
            sender,
            reply_to,
            policy,
        } => {
            let trace = crate::trace::TraceContext::from_headers(properties.headers())
                .unwrap_or_else(crate::trace::TraceContext::new_root);
            let span = tracing::info_span!("job", job_id = %job.id, batch_id = job.batch_id.as_deref(), plugin = %sender.plugin, purpose = job.purpose.as_deref(), agent_id = job.agent_id.as_deref(), lane = lane.as_str(), trace_id = %trace.trace_id);
            let run = Run {
                shared,
                lane,
                delivery,
                queue,
                reply_to,
                correlation_id,
                sender: &sender,
                started,
            };
            run.execute(*job, &policy, &trace).instrument(span).await
        }
    }
}

/// A job that passed the gate and its plugin's identification, from the pipeline to its
/// answer.
struct Run<'a> {
    shared: &'a Shared,
    lane: Lane,
    delivery: &'a Delivery,
    queue: &'a str,
    reply_to: &'a str,
    correlation_id: Option<&'a str>,
    sender: &'a Sender,
    started: Instant,
}

impl Run<'_> {
    async fn execute(
        &self,
        job: Job,
        policy: &Arc<Policy>,
        trace: &crate::trace::TraceContext,
    ) -> Result<Handled, PublishError> {
        let shared = self.shared;
        let plugin = self.sender.plugin.as_str();
        // The idempotency record: the job is claimed before its first provider call, in the
        // round trip of its first limiter reservation. A job finished before is answered from
        // the store, one in flight elsewhere waits in a delay queue, one of a cancelled batch
        // ends `CANCELLED`.
        let keys = shared
            .store
            .job_keys(plugin, job.batch_id.as_deref(), &job.id);
        // A streaming job's chunks are published beside it; a delivery that may follow an
        // earlier one's chunks (redelivered, or back from a delay queue) starts with a reset.
        let streaming = job.streams().then(|| {
            let again = self.delivery.redelivered || self.sender.deferrals > 0;
            (ChunkSink::new(job.json_mode(), again), job.id.clone())
        });
        let run = async {
            let execution = shared
                .pipeline
                .execute_claimed(
                    job,
                    policy,
                    self.started,
                    Some(trace),
                    ClaimState::Pending(&shared.store, &keys),
                    streaming.as_ref().map(|(sink, _)| sink),
                )
                .await;
            if let Some((sink, _)) = &streaming {
                sink.close();
            }
            execution
        };
        let execution = match &streaming {
            Some((sink, job_id)) => {
                let out = ChunksTo {
                    publisher: &shared.publisher,
                    lane: usize::from(self.delivery.delivery_tag as u8),
                    reply_to: self.reply_to,
                    correlation_id: self.correlation_id,
                };
                let pumped =
                    crate::stream::pump(sink, &out, job_id, shared.coalescing, self.started);
                tokio::join!(run, pumped).0
            }
            None => run.await,
        };
        let Execution {
            outcome,
            mut result,
            provider_time,
            target_model,
            claim,
        } = execution;
        result.queue_ms = queue_ms(
            published_ms(&self.delivery.properties),
            self.started.elapsed(),
        );
        match decide::next(outcome, self.sender.deferrals, &shared.deferral.steps) {
            Next::Replay(stored) => {
                if self.delivery.acker.usable() {
                    if let Some((_, job_id)) = &streaming {
                        self.restream(job_id, &stored).await;
                    }
                    shared
                        .publisher
                        .reply(self.reply_to, self.correlation_id, &stored)
                        .await?;
                }
                telemetry::replayed();
            }
            Next::Cancelled => {
                let code = ErrorCode::Cancelled;
                if let Err(error) = shared.store.count_only(&keys, code.as_str()).await {
                    telemetry::redis_error("batch_progress", &error);
                }
                let cancelled = failed_as(
                    &result,
                    ErrorInfo::new(
                        code,
                        "the job (or its batch) was cancelled before it started",
                    ),
                );
                shared
                    .publisher
                    .reply(self.reply_to, self.correlation_id, &encode(&cancelled))
                    .await?;
                self.finished(plugin, None, code.as_str(), Default::default());
            }
            Next::DeadLetterHeld => {
                let detail = format!(
                    "job `{}` was still held by another delivery after {} deferrals",
                    result.job_id, self.sender.deferrals
                );
                let reason = "deferrals_exhausted";
                dead_letter(
                    shared,
                    reason,
                    &detail,
                    self.queue,
                    Some(plugin),
                    self.delivery,
                )
                .await?;
            }
            Next::Defer { step_secs, why } => {
                release(&shared.store, claim).await;
                let delay = shared.deferral.topology.delay_queue(self.lane, step_secs);
                let deferrals = self.sender.deferrals + 1;
                let (data, properties) = (&self.delivery.data, &self.delivery.properties);
                shared
                    .publisher
                    .defer(&delay, data, properties, plugin, deferrals)
                    .await?;
                match why {
                    Wait::ClaimHeld => telemetry::claim_conflict(self.lane),
                    Wait::LimiterDown | Wait::Limits => telemetry::deferred(self.lane, step_secs),
                }
            }
            Next::Answer { settlement, waited } => {
                if let (Some(waited), Some(error)) = (waited, result.error.as_mut()) {
                    error.message = format!("{} (after {waited} deferrals)", error.message);
                }
                let body = encode(&result);
                let outcome = result.error.as_ref().map_or("ok", |e| e.code.as_str());
                let progress = crate::result_store::Progress {
                    outcome,
                    tokens: result.usage.total_tokens,
                    cost_usd: result.cost_usd,
                };
                let stored = shared
                    .store
                    .put(&keys, &body, settlement.as_ref(), &progress)
                    .await;
                drop(claim);
                if let Err(error) = &stored {
                    telemetry::redis_error("put", error);
                }
                // The connection failed while the job ran: the broker redelivers it and the
                // redelivery answers from the store, so this copy stays silent (no duplicate
                // result).
                if !self.delivery.acker.usable() && stored.is_ok() {
                    return Ok(Handled::Done);
                }
                shared
                    .publisher
                    .reply(self.reply_to, self.correlation_id, &body)
                    .await?;
                self.finished(plugin, target_model.as_deref(), outcome, provider_time);
                tracing::debug!(outcome, attempts = result.attempts, "job finished");
            }
        }
        Ok(Handled::Done)
    }

    /// A streaming job answered from the store: an earlier delivery may have streamed part
    /// of it before its worker was lost, so the consumer is told to drop that (a reset) and
    /// given the stored answer as one delta, keeping the deltas since the last reset equal
    /// to the result's text.
    async fn restream(&self, job_id: &str, stored: &[u8]) {
        let answer = serde_json::from_slice::<JobResult>(stored)
            .ok()
            .and_then(|r| Some((r.text?, r.parsed)));
        let reset =
            quarry_schemas::Chunk::reset(job_id, 0, quarry_schemas::ResetReason::Redelivered);
        let mut chunks = vec![reset];
        if let Some((text, parsed)) = answer.filter(|(t, _)| !t.is_empty()) {
            chunks.push(quarry_schemas::Chunk::delta(job_id, 1, text, parsed));
        }
        for chunk in chunks {
            let Ok(body) = serde_json::to_vec(&chunk) else {
                return;
            };
            let lane = usize::from(self.delivery.delivery_tag as u8);
            if let Err(error) = self
                .shared
                .publisher
                .chunk(lane, self.reply_to, self.correlation_id, &body)
                .await
            {
                tracing::warn!(%error, "a replayed stream's chunk could not be published; the result follows");
                return;
            }
        }
    }

    fn finished(
        &self,
        plugin: &str,
        model: Option<&str>,
        outcome: &'static str,
        provider: std::time::Duration,
    ) {
        telemetry::job_finished(&telemetry::Finished {
            lane: self.lane,
            plugin,
            model: model.unwrap_or("none"),
            outcome,
            total: self.started.elapsed(),
            provider,
            published_ms: published_ms(&self.delivery.properties),
        });
    }
}

/// A streaming job's chunks, to its reply queue.
struct ChunksTo<'a> {
    publisher: &'a Publisher,
    /// Which chunk channel: the same for every chunk of the job.
    lane: usize,
    reply_to: &'a str,
    correlation_id: Option<&'a str>,
}

impl crate::stream::ChunkOut for ChunksTo<'_> {
    fn publish<'a>(&'a self, body: Vec<u8>) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.publisher
                .chunk(self.lane, self.reply_to, self.correlation_id, &body)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Drops a claim the job gives up (it waits in a delay queue), so a copy is not held off.
async fn release(store: &ResultStore, claim: Option<ClaimGuard>) {
    if let Some(guard) = claim
        && let Err(error) = store.release(guard).await
    {
        telemetry::redis_error("release_claim", &error);
    }
}

/// Applies a control request for the plugin that published it (its broker-validated
/// `user_id`), and answers it at `reply_to` when that is one of the plugin's reply queues. A
/// request without `reply_to` is applied and not answered; one whose `reply_to` is not the
/// plugin's is neither.
async fn control(shared: &Shared, delivery: &Delivery) -> Result<Handled, PublishError> {
    let properties = &delivery.properties;
    let queue = shared.deferral.topology.control_queue();
    let correlation_id = properties.correlation_id().as_ref().map(|s| s.as_str());
    let (sender, reply_to) = match shared.address(properties) {
        Ok((sender, reply_to)) => (sender, Some(reply_to)),
        Err((Some(sender), Unanswerable::MissingReplyTo)) => (sender, None),
        Err((sender, refusal)) => {
            let plugin = sender.as_ref().map(|s| s.plugin.as_str());
            let (reason, detail) = (refusal.reason(), refusal.detail());
            dead_letter(shared, reason, detail, &queue, plugin, delivery).await?;
            return Ok(Handled::Done);
        }
    };
    let content = decide::check_content(
        properties.content_type().as_ref().map(|s| s.as_str()),
        properties.content_encoding().as_ref().map(|s| s.as_str()),
    );
    let decoded = if let Err(detail) = content {
        Err(detail)
    } else if delivery.data.len() > MAX_CONTROL_BYTES {
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
            dead_letter(shared, "undecodable", &detail, &queue, plugin, delivery).await?;
            return Ok(Handled::Done);
        }
    };
    let mut progress: Option<std::collections::BTreeMap<String, u64>> = None;
    let mut description = None;
    // `check` made sure a batch action has its batch.
    let batch_id = request.batch_id.as_deref().unwrap_or_default();
    let applied = match shared.pipeline.identify(Some(&sender.plugin)) {
        Err(error) => {
            telemetry::policy_refusal("", &error);
            Err(error)
        }
        Ok(policy) => {
            let outcome = match request.action {
                ControlAction::CancelBatch => shared
                    .store
                    .cancel_batch(&policy.name, batch_id)
                    .await
                    .map(|()| telemetry::batch_cancelled(&policy.name, batch_id)),
                ControlAction::BatchStatus => shared
                    .store
                    .batch_progress(&policy.name, batch_id)
                    .await
                    .map(|counts| progress = Some(counts)),
                ControlAction::Describe => {
                    description = Some(shared.pipeline.describe(&policy).await);
                    Ok(())
                }
                ControlAction::CancelJob => {
                    // `check` made sure it names its job.
                    let job_id = request.job_id.as_deref().unwrap_or_default();
                    shared
                        .store
                        .cancel_job(&policy.name, request.batch_id.as_deref(), job_id)
                        .await
                }
            };
            if let Err(error) = outcome {
                // Not applied and not answered: the request goes back to its queue.
                telemetry::redis_error("control", &error);
                tokio::time::sleep(REDIS_DOWN_PAUSE).await;
                return Ok(Handled::Again);
            }
            Ok(())
        }
    };
    let Some(reply_to) = reply_to else {
        return Ok(Handled::Done);
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
        cost_usd: progress
            .as_mut()
            .and_then(|p| p.remove(crate::result_store::COST_FIELD))
            .map(|nusd| nusd as f64 / 1e9),
        progress,
        description,
        job_id: request.job_id,
    };
    // A ControlReply is plain data: serialising it cannot fail.
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    shared
        .publisher
        .control_reply(reply_to, correlation_id, &body)
        .await?;
    Ok(Handled::Done)
}

/// Answers a job that expired in its lane (AMQP `expiration`) with `DEADLINE_EXCEEDED`. Every
/// other dead letter arrives here as a copy and is dropped: its original is in `{ns}.dead`.
async fn expired(shared: &Shared, delivery: &Delivery) -> Result<Handled, PublishError> {
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
        return Ok(Handled::Done);
    };
    // The broker keeps the original's properties when it dead-letters: the same gate as
    // for a job decides whether its sender can be answered, and where.
    let (Ok((sender, reply_to)), true) = (
        shared.address(properties),
        delivery.data.len() <= shared.max_message_bytes,
    ) else {
        // No one to answer, or not at that address; the dead queue keeps the original.
        return Ok(Handled::Done);
    };
    let Ok(job) = serde_json::from_slice::<Job>(&delivery.data) else {
        return Ok(Handled::Done);
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
    Ok(Handled::Done)
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

/// A failed result for the job `ran` answered: same job, batch, custom id, audit fields and
/// metadata.
fn failed_as(ran: &JobResult, error: ErrorInfo) -> JobResult {
    let mut result = JobResult::failed(&ran.job_id, error);
    result.custom_id.clone_from(&ran.custom_id);
    result.batch_id.clone_from(&ran.batch_id);
    result.purpose.clone_from(&ran.purpose);
    result.agent_id.clone_from(&ran.agent_id);
    result.metadata.clone_from(&ran.metadata);
    result
}

/// The result of a job that ends before the pipeline: its ids, audit fields and metadata
/// echoed.
fn failed_without_a_call(job: Job, error: ErrorInfo) -> JobResult {
    let mut result = JobResult::failed(&job.id, error);
    result.custom_id = job.custom_id;
    result.batch_id = job.batch_id;
    result.purpose = job.purpose;
    result.agent_id = job.agent_id;
    result.metadata = job.metadata;
    result
}

/// Time from the producer's publish to the job's start (`ran`: how long ago it started), by
/// the two hosts' clocks.
fn queue_ms(published_ms: Option<u64>, ran: std::time::Duration) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let started = now.saturating_sub(ran).as_millis();
    Some(u64::try_from(started).ok()?.saturating_sub(published_ms?))
}

/// When the producer published the job (the SDK's `x-quarry-published-ms` header): Unix epoch
/// milliseconds as any AMQP integer type, a timestamp, or a float holding a whole number (what
/// some clients write for a large number). Anything else is ignored (no `queue_ms`).
fn published_ms(properties: &lapin::BasicProperties) -> Option<u64> {
    use lapin::types::AMQPValue;
    let value = properties
        .headers()
        .as_ref()?
        .inner()
        .get(quarry_schemas::wire::HEADER_PUBLISHED_MS)?;
    let whole = |f: f64| (f.fract() == 0.0 && (0.0..9.0e15).contains(&f)).then_some(f as u64);
    match value {
        AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
        AMQPValue::LongInt(ms) => u64::try_from(*ms).ok(),
        AMQPValue::LongUInt(ms) => Some(u64::from(*ms)),
        AMQPValue::Timestamp(ms) => Some(*ms),
        AMQPValue::Double(ms) => whole(*ms),
        AMQPValue::Float(ms) => whole(f64::from(*ms)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    fn with(value: AMQPValue) -> lapin::BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(quarry_schemas::wire::HEADER_PUBLISHED_MS.into(), value);
        lapin::BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn the_publish_time_header_is_read_in_every_integer_form_clients_write() {
        let ms: u64 = 1_764_806_400_123;
        for value in [
            AMQPValue::LongLongInt(ms as i64),
            AMQPValue::Timestamp(ms),
            AMQPValue::Double(ms as f64),
        ] {
            assert_eq!(published_ms(&with(value.clone())), Some(ms), "{value:?}");
        }
        assert_eq!(published_ms(&with(AMQPValue::LongUInt(7))), Some(7));
        for ignored in [
            AMQPValue::LongLongInt(-1),
            AMQPValue::Double(1.5),
            AMQPValue::Double(f64::NAN),
            AMQPValue::LongString(LongString::from("1764806400123")),
        ] {
            assert_eq!(published_ms(&with(ignored.clone())), None, "{ignored:?}");
        }
        assert_eq!(published_ms(&lapin::BasicProperties::default()), None);
    }
}
