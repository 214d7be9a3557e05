//! `[worker]`, `[http]`, `[log]`: the process itself.

use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs in flight per worker process; also the prefetch of each lane's consumer.
    pub concurrency: u16,
    /// Provider attempts per job for retryable failures (1 = no retry).
    pub max_attempts: u32,
    /// First retry backoff, milliseconds (doubles each attempt, full jitter).
    pub retry_base_ms: u64,
    /// Longest single backoff, milliseconds.
    pub retry_max_ms: u64,
    /// On shutdown, how long in-flight jobs may take to finish, seconds.
    pub shutdown_grace_secs: u64,
    /// Lifetime of a job's claim in Redis, seconds. The holder extends it every third of this
    /// while it works; a crashed worker's jobs can start elsewhere once it lapses.
    pub claim_ttl_secs: u64,
    /// Repair requests after an answer that is not JSON or breaks the schema (0 = none).
    pub repair_attempts: u32,
    /// Largest image a job may carry, in decoded bytes.
    pub max_image_bytes: usize,
    /// Most images one job may carry.
    pub max_images: usize,
    /// Largest job message a worker decodes, in bytes; a larger one ends `INVALID_REQUEST`
    /// unread. Set the broker's `max_message_size` to the same value (deploy/ does): a worker
    /// holds at most `concurrency` messages, so this bounds its memory for messages.
    pub max_message_bytes: usize,
    /// Largest `json_schema` of a job, in bytes of JSON text.
    pub max_schema_bytes: usize,
    /// Most nodes (objects, arrays and values) a job's schema may have, counted after any
    /// provider's rewrite (Gemini inlines `$ref`s): past it the job ends `INVALID_REQUEST`.
    pub max_schema_nodes: usize,
    /// Memory for compiled schemas, in bytes (estimated from their text): the cache evicts
    /// the least used past it.
    pub schema_cache_bytes: usize,
    /// `max_tokens` sent to the provider, of every kind, for a job that sets none (a
    /// provider's `default_max_tokens` and a plugin's `max_tokens` ceiling bound it further).
    pub default_max_tokens: u32,
    /// Total time of a job without `deadline_ms`, milliseconds from its start in the worker:
    /// every attempt, repair and fallback fits in it, then the job ends `DEADLINE_EXCEEDED`.
    pub job_budget_ms: u64,
    /// Seconds between checks of the configuration file for a change, which is then reloaded
    /// like on `SIGHUP` (`[plugins]` and `[routing]` apply; the rest waits for a restart).
    /// 0: only `SIGHUP` reloads. Set it where the file is mounted from a ConfigMap, whose
    /// updates send no signal.
    pub config_watch_secs: u64,
    /// A streaming job's chunks: after the first (published at once), the provider's deltas
    /// of this many milliseconds go in one chunk.
    pub stream_chunk_ms: u64,
    /// A streaming job's chunk is published before `stream_chunk_ms` once its text reaches
    /// this many bytes.
    pub stream_chunk_bytes: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            max_attempts: 3,
            retry_base_ms: 200,
            retry_max_ms: 10_000,
            shutdown_grace_secs: 30,
            claim_ttl_secs: 15,
            repair_attempts: 2,
            max_image_bytes: 20 * 1024 * 1024,
            max_images: 16,
            max_message_bytes: 16 * 1024 * 1024,
            max_schema_bytes: 64 * 1024,
            max_schema_nodes: 10_000,
            schema_cache_bytes: 64 * 1024 * 1024,
            default_max_tokens: 1_024,
            job_budget_ms: 30_000,
            config_watch_secs: 0,
            stream_chunk_ms: 40,
            stream_chunk_bytes: 4096,
        }
    }
}

impl WorkerConfig {
    /// A job's total time when it sets no deadline.
    pub fn job_budget(&self) -> Duration {
        Duration::from_millis(self.job_budget_ms)
    }

    /// How a streaming job's deltas are coalesced into chunks.
    pub fn coalescing(&self) -> crate::stream::Coalescing {
        crate::stream::Coalescing {
            interval: Duration::from_millis(self.stream_chunk_ms),
            max_bytes: self.stream_chunk_bytes,
        }
    }

    /// Grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`. Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `quarry_worker=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object a line.
    Json,
}

impl WorkerConfig {
    /// Its own checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                "must be at least 1",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "worker.max_attempts",
                "must be at least 1",
            ));
        }
        if self.max_message_bytes == 0 || self.max_schema_bytes == 0 || self.max_schema_nodes == 0 {
            return Err(ConfigError::invalid(
                "worker.max_message_bytes",
                "max_message_bytes, max_schema_bytes and max_schema_nodes must be at least 1",
            ));
        }
        if !(1..=quarry_schemas::job::limits::MAX_MAX_TOKENS).contains(&self.default_max_tokens) {
            return Err(ConfigError::invalid(
                "worker.default_max_tokens",
                "must be between 1 and 1000000",
            ));
        }
        if self.stream_chunk_ms > 10_000 || self.stream_chunk_bytes == 0 {
            return Err(ConfigError::invalid(
                "worker.stream_chunk_ms",
                "stream_chunk_ms must be at most 10000 and stream_chunk_bytes at least 1",
            ));
        }
        if self.job_budget_ms < 1_000 {
            return Err(ConfigError::invalid(
                "worker.job_budget_ms",
                "must be at least 1000",
            ));
        }
        Ok(())
    }
}
