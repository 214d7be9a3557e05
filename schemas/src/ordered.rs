//! A confirm-mode channel whose publishes are numbered in the order their frames go out.
//!
//! lapin gives a publish its delivery tag and then queues its frames, in two steps. Two
//! threads publishing on one channel can interleave them; the broker numbers publishes as
//! their frames arrive, so it and lapin then disagree, and a confirm (or a nack) completes
//! the wrong publish: a result reported confirmed that the broker refused, or a job reported
//! unroutable that was delivered. [`OrderedChannel::publish`] polls each publish under the
//! channel's turn, which makes the two steps one; the turn is held only while the publish is
//! polled, never across a wait.
//!
//! It does not make returns exact: lapin hands a `basic.return` to whichever confirm
//! completes next after it, and a multiple ack completes several in no set order, so a
//! returned message must be matched by what it carries (its `message_id`, its exchange), not
//! by the confirm it came with.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, PublisherConfirm};
use std::sync::{Arc, Mutex, PoisonError};

/// A channel and the turn its publishes take. Clones share both.
#[derive(Clone, Debug)]
pub struct OrderedChannel {
    channel: Channel,
    turn: Arc<Mutex<()>>,
}

impl OrderedChannel {
    /// Publishing on `channel` in order. Every publish on it must go through this (or a
    /// clone of it) for the order to hold.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            turn: Arc::default(),
        }
    }

    /// The channel, for what is not a publish (closing it, its status).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// `basic.publish`, numbered in the order its frames are queued; resolves to the
    /// pending confirm once the frames are written.
    ///
    /// # Errors
    /// The channel's, as [`Channel::basic_publish`].
    pub async fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublisherConfirm> {
        let mut publish = std::pin::pin!(self.channel.basic_publish(
            exchange,
            routing_key,
            options,
            body,
            properties
        ));
        std::future::poll_fn(|cx| {
            let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
            publish.as_mut().poll(cx)
        })
        .await
    }
}
