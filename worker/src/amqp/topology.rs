//! Idempotent declaration of the work exchange, lane queues and dead-letter queue.
//!
//! ```text
//! {ns}.jobs (direct) --lane--> {ns}.jobs.{lane}  quorum, x-delivery-limit, DLX {ns}.dead
//! {ns}.dead (fanout) --------> {ns}.dead         quorum
//!                    --------> {ns}.expired      quorum: workers answer expired jobs
//! {ns}.control (fanout) -----> {ns}.control      quorum: control requests (cancel a batch)
//! {ns}.results (topic) --reply_to--> reply queues the SDKs bind with their own name
//! {ns}.delay (direct) --queue name--> {ns}.delay.{lane}.{secs}s
//!                                classic, x-message-ttl, dead-letters back to {ns}.jobs/{lane}
//! ```
//! Workers publish only to these exchanges, never through the default exchange: a result can
//! reach only a queue bound to `{ns}.results`, and broker topic permissions let each plugin
//! bind only names under its own `{ns}.replies.{plugin}.` (`deploy/rabbitmq/quarry-user`).
//! Declaring an existing queue with other arguments fails with PRECONDITION_FAILED: all
//! workers of one namespace must agree on `amqp.delivery_limit`.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use quarry_schemas::wire::{Lane, Topology};

/// Declares everything a namespace needs. Safe to call from every worker at every start.
pub async fn declare(
    channel: &Channel,
    topology: &Topology,
    delivery_limit: u32,
    delay_steps_secs: &[u64],
) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (exchange, kind) in [
        (topology.jobs_exchange(), ExchangeKind::Direct),
        (topology.dead_exchange(), ExchangeKind::Fanout),
        (topology.control_exchange(), ExchangeKind::Fanout),
        (topology.results_exchange(), ExchangeKind::Topic),
        (topology.delay_exchange(), ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                kind,
                durable,
                FieldTable::default(),
            )
            .await?;
    }

    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(topology.dead_queue().into(), queue_options, dead_args)
        .await?;
    channel
        .queue_bind(
            topology.dead_queue().into(),
            topology.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Every dead letter is copied here too; workers answer the jobs among them that expired
    // in their lane and drop the rest (the original stays in the dead queue).
    let mut expired_args = FieldTable::default();
    expired_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(topology.expired_queue().into(), queue_options, expired_args)
        .await?;
    channel
        .queue_bind(
            topology.expired_queue().into(),
            topology.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut control_args = FieldTable::default();
    control_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(topology.control_queue().into(), queue_options, control_args)
        .await?;
    channel
        .queue_bind(
            topology.control_queue().into(),
            topology.control_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for lane in Lane::ALL {
        channel
            .queue_declare(
                topology.lane_queue(lane).into(),
                queue_options,
                lane_arguments(topology, delivery_limit),
            )
            .await?;
        channel
            .queue_bind(
                topology.lane_queue(lane).into(),
                topology.jobs_exchange().into(),
                lane.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for lane in Lane::ALL {
        for &secs in delay_steps_secs {
            let mut args = FieldTable::default();
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from("classic")),
            );
            args.insert(
                ShortString::from("x-message-ttl"),
                AMQPValue::LongLongInt(
                    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                ),
            );
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from(topology.jobs_exchange())),
            );
            args.insert(
                ShortString::from("x-dead-letter-routing-key"),
                AMQPValue::LongString(LongString::from(lane.as_str())),
            );
            let queue = topology.delay_queue(lane, secs);
            channel
                .queue_declare(queue.as_str().into(), queue_options, args)
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    topology.delay_exchange().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

fn lane_arguments(topology: &Topology, delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongInt(i32::try_from(delivery_limit).unwrap_or(i32::MAX)),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(topology.dead_exchange())),
    );
    args
}
