//! Finished results in Redis, so a redelivered job republishes its result instead of paying
//! for the provider call again.
//!
//! The worker writes the result bytes (with a TTL) before publishing them, and reads them
//! only for deliveries the broker marks `redelivered`: the happy path costs one round trip.
//! Keys: `{prefix}:{<plugin>/<job id>}:result`; the braces are a Redis Cluster hash tag.
//! Redis errors are logged and counted, never fatal for the job: the delivery guarantee
//! (at least once) does not depend on this store, only the saving of a duplicate call does.

use crate::limits::Settlement;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Result cache on a shared multiplexed connection.
#[derive(Clone)]
pub struct ResultStore {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl ResultStore {
    /// A store on `redis` under `prefix`.
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            ttl,
        }
    }

    fn key(&self, plugin: &str, job_id: &str) -> String {
        format!("{}:{{{}/{}}}:result", self.prefix, plugin, job_id)
    }

    /// The stored result of a job, if any.
    pub async fn get(&self, plugin: &str, job_id: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        let mut conn = self.redis.clone();
        crate::telemetry::redis_round_trip("replay_lookup");
        conn.get(self.key(plugin, job_id)).await
    }

    /// Stores a job's result bytes, and settles its last limiter reservation in the same
    /// round trip (a pipeline).
    pub async fn put(
        &self,
        plugin: &str,
        job_id: &str,
        result: &[u8],
        settlement: Option<&Settlement>,
    ) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let mut pipe = redis::pipe();
        let settle = settlement.and_then(Settlement::command);
        if let Some(cmd) = &settle {
            pipe.add_command(cmd.clone()).ignore();
        }
        pipe.set_ex(self.key(plugin, job_id), result, self.ttl.as_secs().max(1))
            .ignore();
        crate::telemetry::redis_round_trip("store_result");
        match pipe.query_async::<()>(&mut conn).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                    && settle.is_some() =>
            {
                // Redis restarted and forgot the script: settle (which loads it), then store.
                if let Some(settlement) = settlement {
                    settlement.run().await?;
                }
                crate::telemetry::redis_round_trip("store_result");
                conn.set_ex(self.key(plugin, job_id), result, self.ttl.as_secs().max(1))
                    .await
            }
            other => other,
        }
    }

    /// Round-trips a PING: readiness.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }
}
