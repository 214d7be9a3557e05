//! RabbitMQ: the session (connection, publishing channel, consumers), topology, and the
//! result/dead-letter publisher.

pub mod publisher;
pub mod session;
pub mod topology;

pub use publisher::{DeadLetter, PublishError, Publisher};
