//! The fleet's dead letters (`{ns}.dead`): listed without taking them, and re-driven to their
//! lanes. An operator's tool (`quarry dead-letters`), not a plugin's: re-driving must run as
//! the fleet's worker user, because workers take a re-driven job's plugin only from their own
//! user's messages.

use crate::Error;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use quarry_schemas::wire::{
    HEADER_DEAD_DETAIL, HEADER_DEAD_QUEUE, HEADER_DEAD_REASON, HEADER_DEAD_USER, HEADER_PLUGIN,
    Lane, Topology,
};

/// One dead letter, as read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Quarry's reason (`undecodable`, `reply_to_refused`, ...), else the broker's own
    /// (`delivery_limit`, `expired`, ...), else `unknown`.
    pub reason: String,
    /// The queue it came from (empty when nothing says).
    pub queue: String,
    /// Its plugin, from the broker-validated `user_id` only (empty when none vouches).
    pub plugin: String,
    /// The job id (`message_id`), or empty.
    pub job_id: String,
    /// Quarry's detail header, or empty.
    pub detail: String,
}

/// What a re-drive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Redriven {
    /// Jobs published back to their lanes (and taken out of the dead letters).
    pub redriven: usize,
    /// Letters left where they are: not from a lane, another reason, or no plugin vouched.
    pub skipped: usize,
}

/// A connection to one namespace's dead letters.
pub struct DeadLetters {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    login: String,
    worker_user: String,
}

impl DeadLetters {
    /// Connects to the broker at `amqp_url`, for namespace `namespace`, whose workers log in
    /// as `worker_user`.
    pub async fn connect(
        amqp_url: &str,
        namespace: &str,
        worker_user: &str,
    ) -> Result<Self, Error> {
        let login = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(Error::Url)?
            .authority
            .userinfo
            .username;
        let properties =
            ConnectionProperties::default().with_connection_name("quarry-dead-letters".into());
        let connection = Connection::connect(amqp_url, properties)
            .await
            .map_err(Error::Connect)?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(Default::default()).await?;
        Ok(Self {
            connection,
            channel,
            topology: Topology::new(namespace),
            login,
            worker_user: worker_user.to_owned(),
        })
    }

    /// The dead-letter queue's name.
    pub fn queue(&self) -> String {
        self.topology.dead_queue()
    }

    /// Up to `limit` dead letters, oldest first. They stay in the queue: they are read
    /// unacknowledged and return when this connection closes ([`DeadLetters::close`]).
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let mut letters = Vec::new();
        for _ in 0..self.present(limit).await? {
            let Some(letter) = self.next().await? else {
                break;
            };
            letters.push(self.describe(&letter));
        }
        Ok(letters)
    }

    /// Publishes up to `limit` dead jobs back to their lanes (only those dead-lettered for
    /// `reason`, when given), each confirmed before its letter is taken out. Only the letters
    /// there now are looked at: a re-driven job that fails again comes back behind them.
    pub async fn redrive(&self, reason: Option<&str>, limit: usize) -> Result<Redriven, Error> {
        let mut done = Redriven::default();
        for _ in 0..self.present(limit).await? {
            let Some(letter) = self.next().await? else {
                break;
            };
            let described = self.describe(&letter);
            let lane = Lane::ALL
                .into_iter()
                .find(|&l| described.queue == self.topology.lane_queue(l));
            let (Some(lane), true, false) = (
                lane,
                reason.is_none_or(|r| r == described.reason),
                described.plugin.is_empty(),
            ) else {
                done.skipped += 1;
                continue;
            };
            if self.login != self.worker_user {
                return Err(Error::NotWorkerUser {
                    login: self.login.clone(),
                    worker_user: self.worker_user.clone(),
                });
            }
            self.republish(&letter, lane, &described).await?;
            letter.ack(BasicAckOptions::default()).await?;
            done.redriven += 1;
        }
        Ok(done)
    }

    /// Closes the connection; letters read and not re-driven return to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }

    /// How many letters to look at: `limit`, or fewer when fewer are there now.
    async fn present(&self, limit: usize) -> Result<usize, Error> {
        let queue = self.queue();
        let declared = self
            .channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|_| Error::DeadQueueMissing { queue })?;
        Ok(limit.min(declared.message_count() as usize))
    }

    /// The next letter, unacknowledged: it stays in the queue until acked or the channel
    /// closes.
    async fn next(&self) -> Result<Option<BasicGetMessage>, Error> {
        let queue = self.queue();
        Ok(self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?)
    }

    fn describe(&self, letter: &BasicGetMessage) -> DeadLetter {
        let header = |name: &str| text_header(letter, name);
        // Who the job belongs to, from the broker-validated user_id only: a letter a worker
        // published (its user_id is the workers') names the plugin in headers the worker
        // wrote; any other letter was dead-lettered by the broker with the plugin's own
        // message, whose headers are the plugin's say-so and count for nothing.
        let plugin = match letter.properties.user_id().as_ref().map(|u| u.as_str()) {
            Some(worker) if worker == self.worker_user => header(HEADER_DEAD_USER)
                .or_else(|| header(HEADER_PLUGIN))
                .unwrap_or_default(),
            Some(plugin) => plugin.to_owned(),
            None => String::new(),
        };
        DeadLetter {
            reason: header(HEADER_DEAD_REASON)
                .or_else(|| header("x-first-death-reason"))
                .unwrap_or_else(|| "unknown".into()),
            queue: header(HEADER_DEAD_QUEUE)
                .or_else(|| header("x-first-death-queue"))
                .unwrap_or_default(),
            plugin,
            job_id: letter
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            detail: header(HEADER_DEAD_DETAIL).unwrap_or_default(),
        }
    }

    /// The job back to its lane under the login's `user_id` (the worker user's): the worker
    /// trusts the plugin header only from its own user, so the plugin is kept.
    async fn republish(
        &self,
        letter: &BasicGetMessage,
        lane: Lane,
        described: &DeadLetter,
    ) -> Result<(), Error> {
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_PLUGIN.into(),
            AMQPValue::LongString(described.plugin.as_str().into()),
        );
        let mut properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(v) = letter.properties.reply_to() {
            properties = properties.with_reply_to(v.clone());
        }
        if let Some(v) = letter.properties.correlation_id() {
            properties = properties.with_correlation_id(v.clone());
        }
        if let Some(v) = letter.properties.message_id() {
            properties = properties.with_message_id(v.clone());
        }
        if !self.login.is_empty() {
            properties = properties.with_user_id(self.login.as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.topology.jobs_exchange().as_str().into(),
                lane.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &letter.data,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            other => Err(Error::RedriveRefused {
                job_id: described.job_id.clone(),
                detail: format!("{other:?}"),
            }),
        }
    }
}

fn text_header(letter: &BasicGetMessage, name: &str) -> Option<String> {
    match letter.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
