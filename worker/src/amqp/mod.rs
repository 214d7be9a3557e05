//! RabbitMQ: topology, the result/dead-letter publisher, and the lane consumers.

pub mod publisher;
pub mod topology;

pub use publisher::{DeadLetter, PublishError, Publisher, ReplyOutcome};
