//! Streamed calls ([`Client::stream`]): a job's answer as it is written, then its result.

use crate::client::{Client, Waiter};
use crate::{CallOptions, Error};
use futures::Stream;
use quarry_schemas::control::ControlRequest;
use quarry_schemas::{Chunk, ChunkKind, Job, JobResult, ResetReason};
use serde_json::Value;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// What the reply router hands a stream.
pub(crate) enum Routed {
    /// A `chunk.v1`.
    Chunk(Chunk),
    /// The job's result: the stream's last event.
    Final(Box<JobResult>),
}

/// One event of a streamed call.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More of the answer: append it to what is shown.
    Delta(String),
    /// JSON mode: the best-effort parse of the answer so far (after the delta that made it).
    Partial(Value),
    /// Drop what is shown: the attempt failed, its answer went to the repair loop, or another
    /// delivery of the job starts over. The deltas that follow start the answer again.
    Reset(ResetReason),
    /// The job's result, validated: the stream's last event. Its `text` is the deltas since
    /// the last reset, concatenated.
    Final(Box<JobResult>),
}

/// The events of one streamed call, in order ([`Client::stream`]). Ends after
/// [`StreamEvent::Final`], or with an error when no result arrives within the call's timeout
/// or the connection is lost.
///
/// Dropping it before the end cancels the job (a `cancel_job` request, sent from a task of
/// its own): the worker closes the provider's stream and no chunk follows.
pub struct JobStream {
    job_id: String,
    rx: mpsc::UnboundedReceiver<Routed>,
    queued: VecDeque<StreamEvent>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: std::time::Duration,
    lost: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    order: ChunkOrder,
    finished: bool,
    pending: crate::client::Pending,
    cancel: Option<crate::client::OwnedControlTarget>,
}

/// Turns one job's chunks into events, in order: a chunk of an earlier delivery, or seen
/// twice, is dropped, and a delivery that starts over without its reset gets one.
#[derive(Debug, Default)]
struct ChunkOrder {
    /// Next `seq` expected of the current delivery.
    next_seq: u64,
    /// Deltas were shown since the last reset.
    shown: bool,
}

impl ChunkOrder {
    fn events(&mut self, chunk: Chunk, out: &mut VecDeque<StreamEvent>) {
        if chunk.seq == 0 && self.next_seq > 0 {
            // Another delivery of the job starts over; what the last one showed is void even
            // if its first chunk is not the reset it should be.
            if self.shown && chunk.kind == ChunkKind::Delta {
                out.push_back(StreamEvent::Reset(ResetReason::Redelivered));
                self.shown = false;
            }
        } else if chunk.seq != self.next_seq {
            tracing::debug!(job_id = %chunk.job_id, seq = chunk.seq, expected = self.next_seq, "chunk out of order, dropped");
            return;
        }
        self.next_seq = chunk.seq + 1;
        match chunk.kind {
            ChunkKind::Delta => {
                if let Some(text) = chunk.text.filter(|t| !t.is_empty()) {
                    out.push_back(StreamEvent::Delta(text));
                    self.shown = true;
                }
                if let Some(partial) = chunk.partial {
                    out.push_back(StreamEvent::Partial(partial));
                }
            }
            ChunkKind::Reset => {
                out.push_back(StreamEvent::Reset(
                    chunk.reason.unwrap_or(ResetReason::Other),
                ));
                self.shown = false;
            }
        }
    }
}

impl Client {
    /// Publishes `job` with `stream: true` and returns its events as they arrive: deltas
    /// (with the partial object in JSON mode), resets, and the final result. The call's
    /// `timeout` becomes the job's `deadline_ms` when it sets none, as for
    /// [`Client::extract`].
    ///
    /// Backpressure: the worker coalesces deltas while its previous chunk is unconfirmed and
    /// the broker holds what this process has not read, so a slow reader costs neither side
    /// more than one answer's text.
    pub async fn stream(&self, mut job: Job, options: CallOptions) -> Result<JobStream, Error> {
        job.stream = Some(true);
        options.set_deadline(&mut job);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_pending()
            .insert(job.id.clone(), Waiter::Stream(tx));
        if let Err(error) = self.publish_call(&job, &options).await {
            self.lock_pending().remove(&job.id);
            return Err(error);
        }
        Ok(JobStream {
            job_id: job.id,
            rx,
            queued: VecDeque::new(),
            deadline: Box::pin(tokio::time::sleep(options.timeout)),
            timeout: options.timeout,
            lost: Box::pin(self.lost.clone().cancelled_owned()),
            order: ChunkOrder::default(),
            finished: false,
            pending: self.pending.clone(),
            cancel: Some(self.control_target()),
        })
    }
}

impl JobStream {
    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// Reads the stream to its end and returns the result (the events between are dropped).
    pub async fn result(mut self) -> Result<JobResult, Error> {
        use futures::StreamExt;
        while let Some(event) = self.next().await {
            if let StreamEvent::Final(result) = event? {
                return Ok(*result);
            }
        }
        Err(Error::Closed)
    }

    fn on_chunk(&mut self, chunk: Chunk) {
        self.order.events(chunk, &mut self.queued);
    }

    fn finish(&mut self) {
        self.finished = true;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.job_id);
    }
}

impl Stream for JobStream {
    type Item = Result<StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Routed::Chunk(chunk))) => this.on_chunk(chunk),
                Poll::Ready(Some(Routed::Final(result))) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(StreamEvent::Final(result))));
                }
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Poll::Pending => {
                    if this.lost.as_mut().poll(cx).is_ready() {
                        this.finish();
                        return Poll::Ready(Some(Err(Error::ConnectionLost)));
                    }
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.finish();
                        return Poll::Ready(Some(Err(Error::Timeout {
                            job_id: this.job_id.clone(),
                            timeout: this.timeout,
                        })));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for JobStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finish();
        let (Some(target), Ok(runtime)) =
            (self.cancel.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let request = ControlRequest::cancel_job(self.job_id.clone(), None);
        let job_id = self.job_id.clone();
        runtime.spawn(async move {
            if let Err(error) = target.publish(&request).await {
                tracing::warn!(%error, job_id, "could not cancel a dropped stream's job");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_keep_their_order_and_a_delivery_that_starts_over_is_reset() {
        let delta = |seq, text: &str| Chunk::delta("j", seq, text.to_owned(), None);
        let mut order = ChunkOrder::default();
        let mut out = VecDeque::new();
        for chunk in [
            Chunk::delta("j", 0, r#"{"a":"#.into(), Some(json!({}))),
            delta(1, "1"),
            delta(1, "1"), // seen twice
            delta(5, "x"), // a gap: not this delivery's
            Chunk::reset("j", 2, ResetReason::Retry),
            delta(3, r#"{"a":2}"#),
            delta(0, r#"{"a":3}"#), // another delivery, without its reset
        ] {
            order.events(chunk, &mut out);
        }
        assert_eq!(
            Vec::from(out),
            vec![
                StreamEvent::Delta(r#"{"a":"#.into()),
                StreamEvent::Partial(json!({})),
                StreamEvent::Delta("1".into()),
                StreamEvent::Reset(ResetReason::Retry),
                StreamEvent::Delta(r#"{"a":2}"#.into()),
                StreamEvent::Reset(ResetReason::Redelivered),
                StreamEvent::Delta(r#"{"a":3}"#.into()),
            ]
        );
    }
}
