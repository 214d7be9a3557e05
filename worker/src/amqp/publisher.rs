//! Publishing results and dead letters, always with publisher confirms.
//!
//! One confirm-mode channel is shared by every job task; each task awaits only its own
//! confirm, so many publishes and confirms are in flight at once.
//!
//! A mandatory publish that no queue takes comes back as a `basic.return` ahead of its
//! `basic.ack`, but lapin hands each return to whichever confirm on the channel completes
//! next, not to its own publish's (a multiple ack completes several in no set order). So no
//! publish learns reliably whether *it* was returned; instead every confirm on the channel
//! that carries a returned message, whoever's it is, dead-letters that message (by the
//! exchange it was sent to: a result to a missing reply queue is `reply_queue_missing`, a job
//! to a missing delay queue `delay_queue_missing`). Nothing returned is dropped. Every
//! publish goes through an [`OrderedChannel`], so that each confirm is at least its own
//! publish's.

use lapin::Confirmation;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use quarry_schemas::ordered::OrderedChannel;
use quarry_schemas::wire::{
    CONTENT_TYPE_JSON, HEADER_DEAD_DETAIL, HEADER_DEAD_QUEUE, HEADER_DEAD_REASON, HEADER_DEAD_USER,
    HEADER_DEFERRALS, HEADER_PLUGIN, MESSAGE_TYPE_CHUNK, MESSAGE_TYPE_CONTROL, MESSAGE_TYPE_RESULT,
    PLUGIN_HEADERS, Topology,
};
use tokio_util::sync::CancellationToken;

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;
/// Transient delivery mode: chunks of a streamed answer, which the result supersedes.
const TRANSIENT: u8 = 1;
/// Longest wait for a publisher confirm. A broker answers in milliseconds; past this the
/// connection is taken for dead, so that no job task waits on it forever.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest dead-letter detail header.
const MAX_DETAIL: usize = 1000;

/// Publishing failed: the broker refused (nack) or the channel is gone.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker could not take the message.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The channel or connection failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// No confirm: the connection was lost, or died without telling (nothing within
    /// [`CONFIRM_TIMEOUT`]).
    #[error("no publisher confirm (connection lost, or nothing within {} s)", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout,
}

/// A message to dead-letter, with why.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    /// Stable reason code (`undecodable`, `missing_reply_to`, `reply_queue_missing`, ...).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: &'a str,
    /// The queue the message came from.
    pub queue: &'a str,
    /// The original body.
    pub body: &'a [u8],
    /// The original properties: its identification and reply address are kept, and of its
    /// headers only [`PLUGIN_HEADERS`].
    pub properties: &'a BasicProperties,
    /// The plugin that sent it, as the worker identified it (its broker-validated `user_id`,
    /// or the plugin a worker deferred it for); `None` when it is not known.
    pub plugin: Option<&'a str>,
}

/// Result and dead-letter publisher.
#[derive(Clone)]
pub struct Publisher {
    channel: OrderedChannel,
    /// Where chunks of streamed answers go (the results' channel unless some are given); a
    /// job's chunks all take the same one, so they stay in order.
    chunks: std::sync::Arc<[OrderedChannel]>,
    dead_exchange: ShortString,
    results_exchange: ShortString,
    delay_exchange: ShortString,
    /// The worker's own AMQP user, set as `user_id` on everything it publishes, so that a
    /// consumer can tell a worker's message from a plugin's (the broker validates it).
    worker_user: Option<ShortString>,
    lost: CancellationToken,
}

impl Publisher {
    /// A publisher on a channel already in confirm mode. Cancelling `lost` (the connection
    /// is gone) fails every publish still waiting at once.
    pub fn new(
        channel: Channel,
        topology: &Topology,
        worker_user: Option<&str>,
        lost: CancellationToken,
    ) -> Self {
        let channel = OrderedChannel::new(channel);
        Self {
            chunks: std::sync::Arc::from([channel.clone()]),
            channel,
            dead_exchange: topology.dead_exchange().into(),
            results_exchange: topology.results_exchange().into(),
            delay_exchange: topology.delay_exchange().into(),
            worker_user: worker_user.map(ShortString::from),
            lost,
        }
    }

    /// Chunks of streamed answers on `channels` (in confirm mode), apart from results.
    pub fn with_chunk_channels(mut self, channels: Vec<Channel>) -> Self {
        if !channels.is_empty() {
            self.chunks = channels.into_iter().map(OrderedChannel::new).collect();
        }
        self
    }

    /// Publishes a result to `reply_to` through the results exchange (mandatory,
    /// persistent, `user_id` the worker's) and waits for its confirm. The caller has checked
    /// that `reply_to` is a reply queue of the job's plugin. An unroutable result is
    /// dead-lettered (`reply_queue_missing`) so that it is not lost; by this publish or by
    /// another on the channel (see the module's documentation), so `Ok` means the result is
    /// in its reply queue or on its way to the dead letters.
    pub async fn reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.answer(reply_to, correlation_id, body, MESSAGE_TYPE_RESULT)
            .await
    }

    /// Like [`Publisher::reply`], for the answer to a control request (`control-reply.v1`).
    pub async fn control_reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.answer(reply_to, correlation_id, body, MESSAGE_TYPE_CONTROL)
            .await
    }

    /// Publishes a chunk of a streamed answer to `reply_to` through the results exchange, on
    /// chunk channel `lane` (modulo their number: one job keeps one, for order)
    /// (transient, not mandatory: a chunk nobody can receive is dropped, the result after it
    /// is what counts) and waits for its confirm, so that the next chunk follows it in order.
    pub async fn chunk(
        &self,
        lane: usize,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let properties = self.reply_properties(MESSAGE_TYPE_CHUNK, TRANSIENT, correlation_id);
        let confirm = confirmed(
            &self.lost,
            "publish_chunk",
            self.chunks[lane % self.chunks.len()].publish(
                self.results_exchange.clone(),
                reply_to.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            ),
        )
        .await?;
        // A chunk is never returned itself, but on the results' channel its confirm may
        // carry another publish's return.
        self.settle(confirm).await
    }

    /// What every message to a reply queue carries: JSON, its type, the job's (or request's)
    /// correlation id, the worker's `user_id`.
    fn reply_properties(
        &self,
        message_type: &str,
        delivery_mode: u8,
        correlation_id: Option<&str>,
    ) -> BasicProperties {
        let mut properties = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_type(message_type.into())
            .with_delivery_mode(delivery_mode);
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.into());
        }
        if let Some(user) = &self.worker_user {
            properties = properties.with_user_id(user.clone());
        }
        properties
    }

    async fn answer(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        body: &[u8],
        message_type: &str,
    ) -> Result<(), PublishError> {
        let properties = self.reply_properties(message_type, PERSISTENT, correlation_id);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = confirmed(
            &self.lost,
            "publish_result",
            self.channel.publish(
                self.results_exchange.clone(),
                reply_to.into(),
                options,
                body,
                properties,
            ),
        )
        .await?;
        self.settle(confirm).await
    }

    /// The end of a publish on the results' channel: a returned message the confirm carries
    /// is dead-lettered (and any the dead letters' own confirms carry, in turn); a nack is an
    /// error, after its returned message too is dead-lettered.
    async fn settle(&self, mut confirm: Confirmation) -> Result<(), PublishError> {
        let mut nacked = false;
        loop {
            let returned = match confirm {
                Confirmation::Ack(returned) => returned,
                Confirmation::Nack(returned) => {
                    nacked = true;
                    returned
                }
                Confirmation::NotRequested => None,
            };
            let Some(returned) = returned else {
                return if nacked {
                    Err(PublishError::Nacked)
                } else {
                    Ok(())
                };
            };
            let letter = self.returned_letter(&returned);
            confirm = self.publish_dead_letter(&letter.letter()).await?;
        }
    }

    /// The dead letter for a message the broker returned as unroutable.
    fn returned_letter<'a>(&self, returned: &'a BasicReturnMessage) -> ReturnedLetter<'a> {
        let queue = returned.delivery.routing_key.as_str();
        let exchange = &returned.delivery.exchange;
        let (reason, what) = if *exchange == self.results_exchange {
            ("reply_queue_missing", "result for reply queue")
        } else if *exchange == self.delay_exchange {
            ("delay_queue_missing", "deferred job for delay queue")
        } else {
            ("unroutable", "message for queue")
        };
        ReturnedLetter {
            reason,
            detail: format!("{what} `{queue}` was unroutable: {}", returned.reply_text),
            returned,
        }
    }

    /// Publishes a message to the dead-letter exchange with the reason in its headers, and
    /// waits for the confirm.
    pub async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), PublishError> {
        let confirm = self.publish_dead_letter(letter).await?;
        self.settle(confirm).await
    }

    async fn publish_dead_letter(
        &self,
        letter: &DeadLetter<'_>,
    ) -> Result<Confirmation, PublishError> {
        let mut headers = plugin_headers(letter.properties);
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(ShortString::from(HEADER_DEAD_REASON), text(letter.reason));
        let detail: String = letter.detail.chars().take(MAX_DETAIL).collect();
        headers.insert(ShortString::from(HEADER_DEAD_DETAIL), text(&detail));
        headers.insert(ShortString::from(HEADER_DEAD_QUEUE), text(letter.queue));
        // Fresh properties: the original `user_id` is the plugin's, and the broker refuses a
        // publish whose `user_id` is not the publishing connection's user. The plugin the
        // worker identified moves to a header, trusted because the letter carries the
        // worker's own `user_id`.
        let original = letter.properties;
        if let Some(plugin) = letter.plugin {
            headers.insert(ShortString::from(HEADER_DEAD_USER), text(plugin));
        }
        let mut properties = republished(original, headers);
        if let Some(user) = &self.worker_user {
            properties = properties.with_user_id(user.clone());
        }
        if let Some(v) = original.timestamp() {
            properties = properties.with_timestamp(*v);
        }
        let confirm = confirmed(
            &self.lost,
            "publish_dead_letter",
            self.channel.publish(
                self.dead_exchange.clone(),
                "".into(),
                BasicPublishOptions::default(),
                letter.body,
                properties,
            ),
        )
        .await?;
        if !matches!(confirm, Confirmation::Nack(_)) {
            crate::telemetry::dead_lettered(letter.reason, letter.detail);
        }
        Ok(confirm)
    }
}

/// A returned message's dead letter, and the reason and detail it owns.
struct ReturnedLetter<'a> {
    reason: &'static str,
    detail: String,
    returned: &'a BasicReturnMessage,
}

impl<'a> ReturnedLetter<'a> {
    fn letter(&'a self) -> DeadLetter<'a> {
        DeadLetter {
            reason: self.reason,
            detail: &self.detail,
            queue: self.returned.delivery.routing_key.as_str(),
            body: &self.returned.delivery.data,
            properties: &self.returned.delivery.properties,
            plugin: None,
        }
    }
}

impl Publisher {
    /// Republishes a job to a delay queue through the delay exchange (persistent,
    /// mandatory, confirmed), recording the plugin and the deferral count in headers; of the
    /// original's headers only [`PLUGIN_HEADERS`] travel on. The worker's own `user_id` goes
    /// on it, so the plugin header can be trusted when the job comes back. A job no delay
    /// queue takes (the queue was deleted) is dead-lettered `delay_queue_missing`, not
    /// requeued to come straight back.
    pub async fn defer(
        &self,
        queue: &str,
        body: &[u8],
        original: &BasicProperties,
        plugin: &str,
        deferrals: u32,
    ) -> Result<(), PublishError> {
        let mut headers = plugin_headers(original);
        headers.insert(
            ShortString::from(HEADER_PLUGIN),
            AMQPValue::LongString(LongString::from(plugin)),
        );
        headers.insert(
            ShortString::from(HEADER_DEFERRALS),
            AMQPValue::LongUInt(deferrals),
        );
        let mut properties = republished(original, headers);
        if let Some(user) = &self.worker_user {
            properties = properties.with_user_id(user.clone());
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = confirmed(
            &self.lost,
            "publish_deferred",
            self.channel.publish(
                self.delay_exchange.clone(),
                queue.into(),
                options,
                body,
                properties,
            ),
        )
        .await?;
        self.settle(confirm).await
    }
}

/// Fresh, persistent properties for a message republished by the worker: the original's
/// identification and reply address, and `headers`; never its `user_id` (the broker refuses
/// one that is not the publishing connection's user).
fn republished(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    if let Some(v) = original.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        properties = properties.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        properties = properties.with_message_id(v.clone());
    }
    if let Some(v) = original.kind() {
        properties = properties.with_type(v.clone());
    }
    properties
}

/// The headers of `original` that a plugin may set ([`PLUGIN_HEADERS`]), and no other.
fn plugin_headers(original: &BasicProperties) -> FieldTable {
    let mut kept = FieldTable::default();
    if let Some(headers) = original.headers() {
        for (name, value) in headers.inner() {
            if PLUGIN_HEADERS.contains(&name.as_str()) {
                kept.insert(name.clone(), value.clone());
            }
        }
    }
    kept
}

/// Reads a header as a number.
pub fn header_u32(headers: &Option<FieldTable>, name: &str) -> Option<u32> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

/// Reads a header as text.
pub fn header_text(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A publish and its confirm, within [`CONFIRM_TIMEOUT`] and while the connection lives.
/// Timed and counted as `operation` (`quarry_amqp_operation_duration_seconds`).
async fn confirmed(
    lost: &CancellationToken,
    operation: &'static str,
    publish: impl std::future::Future<Output = lapin::Result<lapin::PublisherConfirm>>,
) -> Result<Confirmation, PublishError> {
    let started = tokio::time::Instant::now();
    let confirm = async { publish.await?.await };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(CONFIRM_TIMEOUT, confirm) => match outcome {
            Ok(outcome) => outcome.map_err(PublishError::from),
            Err(_) => Err(PublishError::ConfirmTimeout),
        },
        () = lost.cancelled() => Err(PublishError::ConfirmTimeout),
    };
    let ok = matches!(
        outcome,
        Ok(Confirmation::Ack(_) | Confirmation::NotRequested)
    );
    crate::telemetry::amqp_operation(operation, started.elapsed(), ok);
    outcome
}
