//! Publishing one job: persistent, mandatory, with publisher confirms.

use crate::Error;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use quarry_schemas::Job;
use quarry_schemas::wire::{CONTENT_TYPE_JSON, Lane, MESSAGE_TYPE_JOB};

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Sends a job and returns the pending confirm. The job is checked against the contract
/// first; nothing invalid leaves the process.
pub(crate) async fn send(
    channel: &Channel,
    exchange: &str,
    lane: Lane,
    job: &Job,
    reply_to: &str,
    user_id: Option<&str>,
) -> Result<PublisherConfirm, Error> {
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
    let mut properties = BasicProperties::default()
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
        .basic_publish(
            exchange.into(),
            lane.as_str().into(),
            options,
            &body,
            properties,
        )
        .await?)
}

/// Turns a confirm into success or a typed error.
pub(crate) fn settle(confirmation: Confirmation, job_id: &str, lane: Lane) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Unroutable {
            job_id: job_id.to_owned(),
            lane: lane.as_str().to_owned(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            job_id: job_id.to_owned(),
        }),
    }
}

/// Whether `error` is a lost connection that auto-recovery is repairing (as opposed to the
/// broker refusing what was asked, which would fail the same way again).
pub(crate) fn connection_lost(error: &lapin::Error) -> bool {
    error.can_be_recovered() && !error.is_amqp_soft_error()
}

/// Publishes one job and waits for its confirm. A publish cut off by a lost connection is
/// made again once the connection is recovered (the job id makes a second copy harmless:
/// workers run a job id once); when recovery gives up, the error is returned.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    lane: Lane,
    job: &Job,
    reply_to: &str,
    user_id: Option<&str>,
) -> Result<(), Error> {
    loop {
        let attempt = async {
            let confirm = send(channel, exchange, lane, job, reply_to, user_id).await?;
            settle(confirm.await?, &job.id, lane)
        };
        match attempt.await {
            Err(Error::Amqp(error)) if connection_lost(&error) => {
                tracing::warn!(%error, job_id = %job.id, "connection lost while publishing; publishing again once it is back");
                channel.wait_for_recovery(error).await?;
            }
            other => return other,
        }
    }
}
