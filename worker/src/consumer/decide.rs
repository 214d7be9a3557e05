//! The consumer's decision table ([`super`]'s doc) as pure functions: what arrived and what
//! the pipeline said go in, what to publish and how to settle the delivery come out. The
//! consumer does the I/O each answer names; the tests below cover every row without a broker.

use super::gate::{Address, Sender, Unanswerable};
use crate::amqp::PublishError;
use crate::limits::Settlement;
use crate::pipeline::{Outcome, Stop};
use quarry_schemas::{ErrorInfo, Job};
use std::time::Duration;

/// Longest error detail copied from a decoding error.
const MAX_DETAIL: usize = 500;

/// Whether a message's `content_type` and `content_encoding` say it is what the contract
/// takes: JSON text, uncompressed. Absent properties are fine (many clients set none); a JSON
/// type with a charset needs it UTF-8; `content_encoding` may be `identity` or `utf-8`
/// (what some clients put there). Anything else is refused with the property named, rather
/// than failing later as JSON that does not parse.
pub fn check_content(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<(), String> {
    if let Some(value) = content_type {
        let mut parts = value.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let charset_ok = parts.all(|parameter| match parameter.split_once('=') {
            Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
                let charset = charset.trim().trim_matches('"');
                charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        });
        if !media.eq_ignore_ascii_case("application/json") || !charset_ok {
            return Err(format!(
                "content_type `{}`: messages are JSON text in UTF-8, `application/json` (or no \
                 content_type)",
                cut(value)
            ));
        }
    }
    if let Some(value) = content_encoding
        && !(value.is_empty()
            || value.eq_ignore_ascii_case("identity")
            || value.eq_ignore_ascii_case("utf-8")
            || value.eq_ignore_ascii_case("utf8"))
    {
        return Err(format!(
            "content_encoding `{}`: compressed or encoded bodies are not accepted; publish the \
             JSON as it is (no content_encoding)",
            cut(value)
        ));
    }
    Ok(())
}

/// A property value quoted in an error, at most 64 characters.
fn cut(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

/// A job message decoded, or why it is not a `job.v1` (serde's words, cut short: it quotes
/// offending values, and a multi-megabyte string must not travel on).
pub fn decode(data: &[u8], max_message_bytes: usize) -> Result<Job, String> {
    if data.len() > max_message_bytes {
        return Err(format!(
            "the message is {} bytes; this fleet takes jobs of at most {max_message_bytes} bytes \
             (worker.max_message_bytes)",
            data.len(),
        ));
    }
    serde_json::from_slice::<Job>(data).map_err(|error| {
        let mut detail = format!("not a job.v1 message: {error}");
        if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
            detail.truncate(cut);
            detail.push_str("...");
        }
        detail
    })
}

/// What becomes of a job delivery before the pipeline.
#[derive(Debug)]
pub enum Intake<'p, P> {
    /// Run it for this plugin's policy.
    Run {
        /// The job.
        job: Box<Job>,
        /// Who sent it.
        sender: Sender,
        /// Where its result goes.
        reply_to: &'p str,
        /// The sender's policy.
        policy: P,
    },
    /// Not a `job.v1`: dead-lettered `undecodable`, and answered `INVALID_REQUEST` first when
    /// the gate gave a reply queue.
    Undecodable {
        /// Why it does not decode.
        detail: String,
        /// The reply queue, when the gate passed.
        answer_at: Option<&'p str>,
        /// The sender, when the broker vouched for one.
        plugin: Option<String>,
    },
    /// Not answered at all: dead-lettered for this reason.
    Unanswerable {
        /// Why.
        refusal: Unanswerable,
        /// The sender, when the broker vouched for one.
        plugin: Option<String>,
    },
    /// The sender is not a configured plugin: answered with this `NOT_AUTHORIZED` error, no
    /// Redis or provider call.
    NotAuthorized {
        /// The job (its ids are echoed).
        job: Box<Job>,
        /// The error.
        error: ErrorInfo,
        /// Where the answer goes.
        reply_to: &'p str,
    },
}

/// The first rows of the table: decoding, the reply gate, the sender's policy (`identify`,
/// asked only of a sender the gate passed).
pub fn intake<'p, P>(
    decoded: Result<Job, String>,
    address: Address<'p>,
    identify: impl FnOnce(&str) -> Result<P, ErrorInfo>,
) -> Intake<'p, P> {
    match (decoded, address) {
        (Err(detail), Ok((sender, reply_to))) => Intake::Undecodable {
            detail,
            answer_at: Some(reply_to),
            plugin: Some(sender.plugin),
        },
        (Err(detail), Err((sender, _))) => Intake::Undecodable {
            detail,
            answer_at: None,
            plugin: sender.map(|s| s.plugin),
        },
        (Ok(_), Err((sender, refusal))) => Intake::Unanswerable {
            refusal,
            plugin: sender.map(|s| s.plugin),
        },
        (Ok(job), Ok((sender, reply_to))) => match identify(&sender.plugin) {
            Ok(policy) => Intake::Run {
                job: Box::new(job),
                sender,
                reply_to,
                policy,
            },
            Err(error) => Intake::NotAuthorized {
                job: Box::new(job),
                error,
                reply_to,
            },
        },
    }
}

/// The delay queues and how often one job may wait in them.
#[derive(Debug, Clone)]
pub struct Deferrals {
    /// Delay queue lengths, seconds, ascending.
    pub steps_secs: Vec<u64>,
    /// Deferrals of one job before it gets its answer all the same.
    pub max: u32,
}

impl Deferrals {
    /// The delay queue for a wait: the longest no longer than the wait, else the shortest.
    /// A job comes back no later than its capacity does (give or take the shortest step), and
    /// waits again for the rest: a wait of 61 s with steps of 30 and 120 s is two of 30 s and
    /// a short one, not 120 s with the key idle for the last 59.
    pub fn step_for(&self, wait: Duration) -> u64 {
        let secs = wait.as_secs_f64().floor() as u64;
        self.steps_secs
            .iter()
            .copied()
            .rev()
            .find(|s| *s <= secs)
            .or_else(|| self.steps_secs.first().copied())
            .unwrap_or(1)
    }
}

/// Why a job waits in a delay queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Another delivery holds its claim (the holder is usually seconds from done).
    ClaimHeld,
    /// Redis did not answer: its limits could not be checked.
    LimiterDown,
    /// Its limits are full for a while.
    Limits,
}

/// What the consumer does once the pipeline has run a job.
#[derive(Debug)]
pub enum Next {
    /// Store the result (settling its reservation in the same round trip), drop the claim,
    /// publish the result. `waited`: the job may wait no longer after this many deferrals,
    /// which its error message says.
    Answer {
        /// The reservation to settle with the write.
        settlement: Option<Settlement>,
        /// Deferrals spent, when the answer comes because no more are allowed.
        waited: Option<u32>,
    },
    /// The job finished before (a redelivery): publish its stored result again.
    Replay(Vec<u8>),
    /// Its batch was cancelled: count it in the batch's progress, answer `CANCELLED`.
    Cancelled,
    /// Release the claim and republish the job to the delay queue of this many seconds, one
    /// deferral more.
    Defer {
        /// The delay queue.
        step_secs: u64,
        /// Why.
        why: Wait,
    },
    /// Dead-lettered `deferrals_exhausted`: the claim's holder answers the job.
    DeadLetterHeld,
}

/// The rows of the table after the pipeline: its outcome, and how often the job waited.
pub fn next(outcome: Outcome, deferrals: u32, steps: &Deferrals) -> Next {
    let may_wait = deferrals < steps.max;
    let wait = |wait: Duration, why: Wait| Next::Defer {
        step_secs: steps.step_for(wait),
        why,
    };
    match outcome {
        Outcome::Answered(settlement) => Next::Answer {
            settlement,
            waited: None,
        },
        Outcome::Stopped(Stop::Stored(bytes)) => Next::Replay(bytes),
        Outcome::Stopped(Stop::Cancelled) => Next::Cancelled,
        // Counted like every deferral: a copy that never finds the claim free ends in the
        // dead letters, and its holder answers.
        Outcome::Stopped(Stop::Held(_)) if may_wait => wait(Duration::ZERO, Wait::ClaimHeld),
        Outcome::Stopped(Stop::Held(_)) => Next::DeadLetterHeld,
        // Never spend without a limit check: while Redis does not answer, the job waits in
        // the shortest delay queue (a requeue would burn the lane's delivery limit).
        Outcome::RetryLater if may_wait => wait(Duration::ZERO, Wait::LimiterDown),
        Outcome::Defer(duration) if may_wait => wait(duration, Wait::Limits),
        Outcome::RetryLater | Outcome::Defer(_) => Next::Answer {
            settlement: None,
            waited: Some(deferrals),
        },
    }
}

/// How the work on a delivery ended, when no publish failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Answered, dead-lettered, deferred or dropped: done with.
    Done,
    /// Not applied (Redis did not answer a control request): back to its queue.
    Again,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledged: its answer is confirmed (or it needs none).
    Ack,
    /// Nacked and requeued (the lane's delivery limit dead-letters a job that keeps doing
    /// this).
    Requeue,
    /// Left unsettled: the connection is lost, and the broker requeues it with the
    /// connection.
    Unsettled,
    /// Left unsettled, and the worker stops: the broker refused a publish on a live
    /// connection (a channel error), which it would do for every job; the supervisor
    /// restarts the worker instead of it spinning on redeliveries.
    Stop,
}

/// A publish failure that may be the connection's loss, which the consumer waits a moment
/// to hear of before [`settle`] decides.
pub fn may_be_loss(ended: &Result<Handled, PublishError>) -> bool {
    match ended {
        Err(PublishError::Amqp(error)) => !error.is_amqp_soft_error(),
        Err(PublishError::ConfirmTimeout) => true,
        Ok(_) | Err(PublishError::Nacked) => false,
    }
}

/// The last rows of the table: how the delivery is settled. `None`: the work panicked.
/// `lost`: the connection's watcher reported it lost (asked only when [`may_be_loss`]).
pub fn settle(ended: Option<&Result<Handled, PublishError>>, lost: bool) -> Settle {
    match ended {
        Some(Ok(Handled::Done)) => Settle::Ack,
        Some(Ok(Handled::Again) | Err(PublishError::Nacked)) | None => Settle::Requeue,
        Some(Err(PublishError::Amqp(_) | PublishError::ConfirmTimeout)) if lost => {
            Settle::Unsettled
        }
        Some(Err(PublishError::Amqp(_) | PublishError::ConfirmTimeout)) => Settle::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quarry_schemas::ErrorCode;

    const JOB: &str =
        r#"{"version":"job.v1","id":"j1","model":"fast","input":[{"type":"text","text":"hi"}]}"#;

    fn steps() -> Deferrals {
        Deferrals {
            steps_secs: vec![1, 5, 30, 120],
            max: 3,
        }
    }

    fn sender(plugin: &str) -> Sender {
        Sender {
            plugin: plugin.to_owned(),
            deferrals: 0,
        }
    }

    fn allowed(_: &str) -> Result<(), ErrorInfo> {
        Ok(())
    }

    fn refused(_: &str) -> Result<(), ErrorInfo> {
        Err(ErrorInfo::new(ErrorCode::NotAuthorized, "not a plugin"))
    }

    #[test]
    fn content_properties_say_json_uncompressed_or_nothing() {
        for (content_type, content_encoding) in [
            (None, None),
            (Some("application/json"), None),
            (Some("Application/JSON; charset=UTF-8"), Some("utf-8")),
            (Some("application/json;charset=\"utf8\""), Some("identity")),
            (None, Some("")),
        ] {
            assert_eq!(
                check_content(content_type, content_encoding),
                Ok(()),
                "{content_type:?} {content_encoding:?}"
            );
        }
        let text = check_content(Some("text/plain"), None).unwrap_err();
        assert!(text.starts_with("content_type `text/plain`"), "{text}");
        let latin = check_content(Some("application/json; charset=latin1"), None).unwrap_err();
        assert!(latin.contains("UTF-8"), "{latin}");
        let gzip = check_content(Some("application/json"), Some("gzip")).unwrap_err();
        assert!(gzip.starts_with("content_encoding `gzip`"), "{gzip}");
        let long = check_content(Some(&"x".repeat(10_000)), None).unwrap_err();
        assert!(long.len() < 200, "a long value is cut: {}", long.len());
    }

    #[test]
    fn a_message_that_is_not_a_job_is_undecodable() {
        assert!(
            decode(b"{", 1000)
                .unwrap_err()
                .starts_with("not a job.v1 message")
        );
        assert!(decode(br#"{"version":"job.v1"}"#, 1000).is_err());
        let too_large = decode(JOB.as_bytes(), 10).unwrap_err();
        assert!(
            too_large.contains("worker.max_message_bytes"),
            "{too_large}"
        );
        let long = format!(r#"{{"version":"job.v1","id":{}}}"#, "1".repeat(5000));
        assert!(
            decode(long.as_bytes(), 1 << 20)
                .unwrap_err()
                .chars()
                .count()
                <= MAX_DETAIL + 3
        );
        assert_eq!(decode(JOB.as_bytes(), 1000).unwrap().id, "j1");
    }

    #[test]
    fn an_undecodable_job_is_answered_only_through_the_gate() {
        let gated = intake(
            Err("bad".into()),
            Ok((sender("alpha"), "t.replies.alpha.x")),
            allowed,
        );
        assert!(
            matches!(gated, Intake::Undecodable { answer_at: Some("t.replies.alpha.x"), plugin: Some(ref p), .. } if p == "alpha")
        );
        let refused_gate = intake(
            Err("bad".into()),
            Err((Some(sender("alpha")), Unanswerable::MissingReplyTo)),
            allowed,
        );
        assert!(matches!(
            refused_gate,
            Intake::Undecodable {
                answer_at: None,
                plugin: Some(_),
                ..
            }
        ));
        let anonymous = intake(
            Err("bad".into()),
            Err((None, Unanswerable::NoUserId)),
            allowed,
        );
        assert!(matches!(
            anonymous,
            Intake::Undecodable {
                answer_at: None,
                plugin: None,
                ..
            }
        ));
    }

    #[test]
    fn a_job_the_gate_refuses_is_dead_lettered_with_its_reason() {
        for refusal in [
            Unanswerable::NoUserId,
            Unanswerable::MissingReplyTo,
            Unanswerable::ReplyToRefused("elsewhere".into()),
        ] {
            let job = decode(JOB.as_bytes(), 1000);
            let sender = (refusal != Unanswerable::NoUserId).then(|| sender("alpha"));
            let got = intake(job, Err((sender, refusal.clone())), allowed);
            assert!(matches!(got, Intake::Unanswerable { refusal: ref r, .. } if *r == refusal));
        }
    }

    #[test]
    fn a_job_from_a_user_that_is_no_plugin_is_not_authorized() {
        let got = intake(
            decode(JOB.as_bytes(), 1000),
            Ok((sender("mallory"), "t.replies.mallory.x")),
            refused,
        );
        assert!(
            matches!(got, Intake::NotAuthorized { ref error, reply_to: "t.replies.mallory.x", .. } if error.code == ErrorCode::NotAuthorized)
        );
        let run = intake(
            decode(JOB.as_bytes(), 1000),
            Ok((sender("alpha"), "t.replies.alpha.x")),
            allowed,
        );
        assert!(matches!(run, Intake::Run { ref sender, .. } if sender.plugin == "alpha"));
    }

    #[test]
    fn a_stored_job_is_replayed_and_a_cancelled_one_answered_cancelled() {
        let replay = next(Outcome::Stopped(Stop::Stored(b"r".to_vec())), 0, &steps());
        assert!(matches!(replay, Next::Replay(ref bytes) if bytes == b"r"));
        assert!(matches!(
            next(Outcome::Stopped(Stop::Cancelled), 0, &steps()),
            Next::Cancelled
        ));
    }

    #[test]
    fn a_job_held_elsewhere_waits_the_shortest_delay_until_its_deferrals_run_out() {
        let held = || Outcome::Stopped(Stop::Held(Duration::from_secs(40)));
        assert!(matches!(
            next(held(), 2, &steps()),
            Next::Defer {
                step_secs: 1,
                why: Wait::ClaimHeld
            }
        ));
        assert!(matches!(next(held(), 3, &steps()), Next::DeadLetterHeld));
    }

    #[test]
    fn a_job_whose_limits_cannot_be_checked_waits_then_gets_its_internal_answer() {
        assert!(matches!(
            next(Outcome::RetryLater, 0, &steps()),
            Next::Defer {
                step_secs: 1,
                why: Wait::LimiterDown
            }
        ));
        assert!(matches!(
            next(Outcome::RetryLater, 3, &steps()),
            Next::Answer {
                settlement: None,
                waited: Some(3)
            }
        ));
    }

    #[test]
    fn a_job_over_its_limits_waits_in_the_longest_queue_within_the_wait() {
        let over = |secs| Outcome::Defer(Duration::from_secs_f64(secs));
        for (wait, step) in [
            (0.2, 1),
            (1.0, 1),
            (4.5, 1),
            (5.0, 5),
            (31.0, 30),
            (119.9, 30),
            (900.0, 120),
        ] {
            let got = next(over(wait), 0, &steps());
            assert!(
                matches!(got, Next::Defer { step_secs, why: Wait::Limits } if step_secs == step),
                "{wait}: {got:?}"
            );
        }
        assert!(matches!(
            next(over(10.0), 3, &steps()),
            Next::Answer {
                waited: Some(3),
                ..
            }
        ));
    }

    #[test]
    fn any_other_job_is_stored_and_answered() {
        assert!(matches!(
            next(Outcome::Answered(None), 0, &steps()),
            Next::Answer {
                settlement: None,
                waited: None
            }
        ));
        // Past the deferral bound, an answered job is still answered plainly.
        assert!(matches!(
            next(Outcome::Answered(None), 9, &steps()),
            Next::Answer { waited: None, .. }
        ));
    }

    #[test]
    fn deliveries_are_settled_by_how_their_work_ended() {
        assert_eq!(settle(Some(&Ok(Handled::Done)), false), Settle::Ack);
        assert_eq!(settle(Some(&Ok(Handled::Again)), false), Settle::Requeue);
        // The broker nacked a publish: requeued.
        assert_eq!(
            settle(Some(&Err(PublishError::Nacked)), false),
            Settle::Requeue
        );
        // A panic: requeued (the lane's delivery limit ends a job that keeps doing it).
        assert_eq!(settle(None, false), Settle::Requeue);
        // No confirm: the connection was lost, or the broker refused on a live one.
        let timeout = Err(PublishError::ConfirmTimeout);
        assert!(may_be_loss(&timeout));
        assert_eq!(settle(Some(&timeout), true), Settle::Unsettled);
        assert_eq!(settle(Some(&timeout), false), Settle::Stop);
        // A channel error is a refusal on a live connection, never a loss.
        let refused = Err(PublishError::Amqp(lapin::Error::from(
            lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                lapin::protocol::AMQPSoftError::NOTFOUND.into(),
                "no exchange".into(),
            )),
        )));
        assert!(!may_be_loss(&refused));
        assert_eq!(settle(Some(&refused), false), Settle::Stop);
        assert!(!may_be_loss(&Ok(Handled::Done)));
        assert!(!may_be_loss(&Err(PublishError::Nacked)));
    }
}
