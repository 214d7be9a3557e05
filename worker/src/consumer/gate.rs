//! The one gate every answer passes: who sent a message, and where its answers may go.
//!
//! The sender is the message's broker-validated `user_id` (a worker's own deferred job names
//! its plugin in a header only the worker's `user_id` makes trusted), and `reply_to` must be
//! one of that plugin's reply queues, `{ns}.replies.{plugin}.*`. Nothing is published to a
//! `reply_to` before this gate.

use crate::amqp::publisher::{header_text, header_u32};
use quarry_schemas::wire::{HEADER_DEFERRALS, HEADER_PLUGIN, Topology};

/// Longest queue name quoted in a refusal.
const MAX_NAME_QUOTED: usize = 255;

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

/// Why a message gets no answer at its `reply_to`: each is a dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswerable {
    /// No `user_id`: nothing says who sent it.
    NoUserId,
    /// No `reply_to`: its answer would have nowhere to go.
    MissingReplyTo,
    /// `reply_to` is not a reply queue of the sender's plugin.
    ReplyToRefused(String),
}

impl Unanswerable {
    /// The dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoUserId => "no_user_id",
            Self::MissingReplyTo => "missing_reply_to",
            Self::ReplyToRefused(_) => "reply_to_refused",
        }
    }

    /// What was wrong, for the dead letter's detail header.
    pub fn detail(&self) -> &str {
        match self {
            Self::NoUserId => {
                "the message has no user_id: nothing says who sent it, so it is not answered \
                 (publish with user_id set to the login, as the SDKs do)"
            }
            Self::MissingReplyTo => {
                "the message has no reply_to property: its answer would have nowhere to go"
            }
            Self::ReplyToRefused(detail) => detail,
        }
    }
}

/// The gate's verdict on a message: its sender and reply queue, or why it is not answered
/// (with its sender when the broker vouched for one).
pub type Address<'p> = Result<(Sender, &'p str), (Option<Sender>, Unanswerable)>;

/// The sender of a message and the reply queue its answers may go to: `reply_to` must be a
/// reply queue of the sender's own plugin (`{ns}.replies.{plugin}.*`), so that nothing a
/// plugin writes can direct a result, a refusal or a control reply into another's queue.
pub fn reply_address<'p>(
    topology: &Topology,
    properties: &'p lapin::BasicProperties,
    worker_user: Option<&str>,
) -> Address<'p> {
    let Some(sender) = Sender::of(properties, worker_user) else {
        return Err((None, Unanswerable::NoUserId));
    };
    let Some(reply_to) = properties.reply_to().as_ref().map(|s| s.as_str()) else {
        return Err((Some(sender), Unanswerable::MissingReplyTo));
    };
    if !topology.is_reply_queue_of(reply_to, &sender.plugin) {
        let detail = format!(
            "reply_to `{}` is not a reply queue of plugin `{}` (they start with `{}`)",
            reply_to.chars().take(MAX_NAME_QUOTED).collect::<String>(),
            sender.plugin,
            topology.reply_prefix(&sender.plugin)
        );
        return Err((Some(sender), Unanswerable::ReplyToRefused(detail)));
    }
    Ok((sender, reply_to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

    fn topology() -> Topology {
        Topology::new("t")
    }

    fn from(user: Option<&str>, reply_to: Option<&str>) -> BasicProperties {
        let mut properties = BasicProperties::default();
        if let Some(user) = user {
            properties = properties.with_user_id(ShortString::from(user));
        }
        if let Some(reply_to) = reply_to {
            properties = properties.with_reply_to(ShortString::from(reply_to));
        }
        properties
    }

    fn with_plugin_header(properties: BasicProperties, plugin: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(HEADER_PLUGIN),
            AMQPValue::LongString(LongString::from(plugin)),
        );
        headers.insert(ShortString::from(HEADER_DEFERRALS), AMQPValue::LongUInt(3));
        properties.with_headers(headers)
    }

    #[test]
    fn a_plugin_is_answered_only_at_its_own_reply_queues() {
        let t = topology();
        let own = from(Some("alpha"), Some("t.replies.alpha.x"));
        let (sender, reply_to) = reply_address(&t, &own, Some("worker")).unwrap();
        assert_eq!(sender.plugin, "alpha");
        assert_eq!(reply_to, "t.replies.alpha.x");

        let other = from(Some("alpha"), Some("t.replies.beta.x"));
        let (sender, refusal) = reply_address(&t, &other, Some("worker")).unwrap_err();
        assert_eq!(sender.unwrap().plugin, "alpha");
        assert_eq!(refusal.reason(), "reply_to_refused");
        assert!(refusal.detail().contains("t.replies.alpha."));
    }

    #[test]
    fn a_message_without_user_id_or_reply_to_is_not_answered() {
        let t = topology();
        let (sender, refusal) =
            reply_address(&t, &from(None, Some("t.replies.alpha.x")), None).unwrap_err();
        assert_eq!((sender, refusal), (None, Unanswerable::NoUserId));
        let empty = from(Some(""), Some("t.replies.alpha.x"));
        assert_eq!(
            reply_address(&t, &empty, None).unwrap_err().1,
            Unanswerable::NoUserId
        );
        let (sender, refusal) = reply_address(&t, &from(Some("alpha"), None), None).unwrap_err();
        assert_eq!(sender.unwrap().plugin, "alpha");
        assert_eq!(refusal.reason(), "missing_reply_to");
    }

    #[test]
    fn the_plugin_header_counts_only_on_the_workers_own_messages() {
        let t = topology();
        // A plugin forging the header names itself all the same.
        let forged = with_plugin_header(from(Some("alpha"), Some("t.replies.beta.x")), "beta");
        let (sender, refusal) = reply_address(&t, &forged, Some("worker")).unwrap_err();
        assert_eq!(
            sender.unwrap(),
            Sender {
                plugin: "alpha".into(),
                deferrals: 0
            }
        );
        assert_eq!(refusal.reason(), "reply_to_refused");
        // A worker's deferral names its plugin and counts.
        let deferred = with_plugin_header(from(Some("worker"), Some("t.replies.beta.x")), "beta");
        let (sender, _) = reply_address(&t, &deferred, Some("worker")).unwrap();
        assert_eq!(
            sender,
            Sender {
                plugin: "beta".into(),
                deferrals: 3
            }
        );
    }
}
