//! `quarry-worker`: takes extraction jobs from RabbitMQ, runs them against LLM providers and
//! publishes schema-valid results. The crate's map, in the order a job meets it
//! (`docs/architecture.md` follows one job file by file):
//!
//! - [`run`](mod@run): the worker's life — [`Worker::start`] connects and starts consuming,
//!   [`Worker::run_until`] replaces a lost broker session and drains on shutdown.
//! - [`config`]: the TOML + environment configuration, loaded and checked;
//!   [`reload`](mod@reload): `[plugins]` and `[routing]` replaced in a running worker.
//! - [`amqp`]: the broker session, topology declaration, the confirm-mode publisher.
//! - [`consumer`]: one delivery from bytes to ack — the reply gate ([`consumer::gate`]) and
//!   the decision table as pure functions ([`consumer::decide`]).
//! - [`policy`]: what each plugin may do.
//! - [`pipeline`]: the stages of one job, in order, with no AMQP in sight; it ends in one
//!   [`pipeline::Outcome`].
//! - [`limits`]: every limit the fleet keeps (the Redis limiter, the key pool, quotas).
//! - [`providers`]: provider wire formats behind one trait, one failure classifier;
//!   [`retry`]: the one retry policy.
//! - [`schema_cache`]: compiled JSON Schema validators.
//! - [`result_store`]: results, claims and batch progress in Redis; [`functions`]: the Redis
//!   Functions library they and the limiter call.
//! - [`telemetry`]: metric names and events, log setup; [`trace`]: W3C trace context;
//!   [`http`]: metrics and health.

pub mod amqp;
pub mod config;
pub mod consumer;
pub mod functions;
pub mod http;
pub mod limits;
pub mod pipeline;
pub mod policy;
pub mod providers;
pub mod reload;
pub mod result_store;
pub mod retry;
pub mod run;
pub mod schema_cache;
pub mod stream;
pub mod telemetry;
pub mod trace;

pub use run::{Worker, run};
