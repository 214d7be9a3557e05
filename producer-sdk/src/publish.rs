//! Publishing one job: persistent, mandatory, with publisher confirms.

use crate::Error;
use crate::TraceContext;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use quarry_schemas::Job;
use quarry_schemas::ordered::OrderedChannel;
use quarry_schemas::wire::{
    CONTENT_TYPE_JSON, HEADER_PUBLISHED_MS, HEADER_TRACEPARENT, Lane, MESSAGE_TYPE_JOB,
};
use tokio_util::sync::CancellationToken;

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Where and as whom a job is published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope<'a> {
    /// The work exchange.
    pub exchange: &'a str,
    /// The lane (routing key).
    pub lane: Lane,
    /// The queue its result goes to.
    pub reply_to: &'a str,
    /// The login user: the plugin identity the broker checks.
    pub user_id: Option<&'a str>,
    /// The trace it is published in (`None`: a new one).
    pub trace: Option<TraceContext>,
}

/// Sends a job and returns the pending confirm. The job is checked against the contract
/// first; nothing invalid leaves the process.
pub(crate) async fn send(
    channel: &OrderedChannel,
    job: &Job,
    envelope: Envelope<'_>,
) -> Result<PublisherConfirm, Error> {
    let Envelope {
        exchange,
        lane,
        reply_to,
        user_id,
        trace,
    } = envelope;
    job.check().map_err(|source| Error::InvalidJob {
        job_id: job.id.clone(),
        source,
    })?;
    // A Job is plain data: serialising it cannot fail.
    let body = serde_json::to_vec(job).map_err(|e| Error::InvalidJob {
        job_id: job.id.clone(),
        source: quarry_schemas::job::JobInvalid {
            field: "/".into(),
            reason: e.to_string(),
        },
    })?;
    let published_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        HEADER_PUBLISHED_MS.into(),
        lapin::types::AMQPValue::LongLongInt(published_ms),
    );
    let traceparent = trace.unwrap_or_else(TraceContext::new_root).child();
    headers.insert(
        HEADER_TRACEPARENT.into(),
        lapin::types::AMQPValue::LongString(traceparent.as_str().into()),
    );
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_type(MESSAGE_TYPE_JOB.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id(job.id.as_str().into())
        .with_correlation_id(job.id.as_str().into())
        .with_reply_to(reply_to.into());
    if let Some(user) = user_id {
        properties = properties.with_user_id(user.into());
    }
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    Ok(channel
        .publish(
            exchange.into(),
            lane.as_str().into(),
            options,
            &body,
            properties,
        )
        .await?)
}

/// Turns a confirm into success or a typed error. lapin hands a returned message to
/// whichever confirm completes next on the channel (see [`quarry_schemas::ordered`]), so a
/// return is this publish's only when it carries this publish's `message_id` (`job_id`: the
/// job's id, or a control request's correlation id).
pub(crate) fn settle(confirmation: Confirmation, job_id: &str, lane: Lane) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned))
            if returned
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str())
                != Some(job_id) =>
        {
            tracing::warn!(
                returned = ?returned.properties.message_id(),
                "a job the broker returned as unroutable reached another publish's confirm; its call will time out"
            );
            Ok(())
        }
        Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
            job_id: job_id.to_owned(),
            lane: lane.as_str().to_owned(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            job_id: job_id.to_owned(),
        }),
    }
}

/// Publishes one job and waits for its confirm, or fails with [`Error::ConnectionLost`] when
/// the connection is lost first (lapin leaves the wait pending).
pub(crate) async fn publish_confirmed(
    lost: &CancellationToken,
    channel: &OrderedChannel,
    job: &Job,
    envelope: Envelope<'_>,
) -> Result<(), Error> {
    let published = async {
        let confirm = send(channel, job, envelope).await?;
        settle(confirm.await?, &job.id, envelope.lane)
    };
    unless_lost(lost, published).await?
}

/// `work`, or [`Error::ConnectionLost`] as soon as `lost` is cancelled.
pub(crate) async fn unless_lost<T>(
    lost: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Error> {
    tokio::select! {
        outcome = work => Ok(outcome),
        () = lost.cancelled() => Err(Error::ConnectionLost),
    }
}

/// A token cancelled at the connection's first error (or when the connection is gone).
pub(crate) fn watch_connection(connection: &lapin::Connection) -> CancellationToken {
    let lost = CancellationToken::new();
    let mut events = connection.events_listener();
    let token = lost.clone();
    let status = connection.status().clone();
    tokio::spawn(async move {
        while let Some(event) = futures::StreamExt::next(&mut events).await {
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
