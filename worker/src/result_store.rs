//! The idempotency record of each job in Redis: a *claim* while a worker runs it, then its
//! *result*, so that a redelivered job is neither started twice nor paid for twice.
//!
//! Every delivery makes one round trip (`functions/claim.lua`): the stored result if there is one
//! (the worker republishes it), else `cancelled` if its batch was cancelled, else a claim with a short lifetime that the holder keeps
//! extending while it works (another worker that gets the same job meanwhile defers it), else
//! the claim's time left. Finishing stores the result and drops the claim in one round trip,
//! together with the settlement of the job's last limiter reservation.
//!
//! Keys: `{prefix}:{<group>}:result:<job id>`, `…:claim:<job id>` and `…:cancelled`, where the
//! group is `<plugin>/b/<batch id>` for a job of a batch and `<plugin>/j/<job id>` otherwise.
//! The braces are a Redis Cluster hash tag, so the script's keys live in one slot. A crashed
//! worker's claims expire after `worker.claim_ttl_secs`; a cancellation lasts
//! `redis.cancel_ttl_secs`.
//!
//! When Redis is unreachable the worker runs the job without a claim (fail open): the
//! at-least-once guarantee does not depend on this store, only the saving of a duplicate
//! provider call by a job redelivered during the same outage does.

use crate::functions::{Function, LIBRARY};
use crate::limits::Settlement;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the idempotency record said about a delivery.
pub enum Claim {
    /// The job finished before: its result bytes.
    Stored(Vec<u8>),
    /// This delivery holds the job now; dropping the guard stops extending the claim.
    Claimed(ClaimGuard),
    /// Another delivery of the job is in flight; its claim lasts this much longer at most.
    Held(Duration),
    /// The job's batch was cancelled before the job started.
    Cancelled,
}

/// Where a job's idempotency claim stands while the pipeline runs it. The claim is made
/// before the job's first provider call — in the same round trip as its first limiter
/// reservation when it has one — so that a job costs two Redis round trips: that one, and
/// the result's write. A job that ends before any call is claimed when it ends.
#[derive(Default)]
pub enum ClaimState<'k> {
    /// No claim is wanted (a pipeline without a result store).
    #[default]
    Unwanted,
    /// To be made before the first provider call.
    Pending(&'k ResultStore, &'k JobKeys),
    /// This delivery holds the job (`None`: Redis did not answer the claim, and the job goes
    /// on without one).
    Held(Option<ClaimGuard>),
    /// The claim stopped the job before any call: its result is stored, its batch is
    /// cancelled, or another delivery holds it.
    Stopped(Claim),
}

impl ClaimState<'_> {
    /// The claim command to send with the first reservation, while one is pending.
    pub fn command(&self) -> Option<redis::Cmd> {
        match self {
            Self::Pending(store, keys) => Some(store.claim_command(keys)),
            _ => None,
        }
    }

    /// Takes the reply to [`ClaimState::command`].
    pub async fn answer(&mut self, reply: redis::RedisResult<redis::Value>) {
        if let Self::Pending(store, keys) = *self {
            *self = Self::from_claim(store.claim_from(keys, reply).await);
        }
    }

    /// Claims in a round trip of its own if the claim is still pending.
    pub async fn make(&mut self) {
        if let Self::Pending(store, keys) = *self {
            *self = Self::from_claim(store.claim(keys).await);
        }
    }

    /// The claim stopped the job.
    pub fn stopped(&self) -> bool {
        matches!(self, Self::Stopped(_))
    }

    /// Fires when the job is cancelled while this delivery holds it (noticed by the claims'
    /// extension, every third of their lifetime).
    pub fn cancellation(&self) -> Option<CancellationToken> {
        match self {
            Self::Held(Some(guard)) | Self::Stopped(Claim::Claimed(guard)) => {
                Some(guard.token.clone())
            }
            _ => None,
        }
    }

    fn from_claim(claim: redis::RedisResult<Claim>) -> Self {
        match claim {
            Ok(Claim::Claimed(guard)) => Self::Held(Some(guard)),
            Ok(other) => Self::Stopped(other),
            Err(error) => {
                crate::telemetry::redis_error("claim", &error);
                Self::Held(None)
            }
        }
    }
}

/// The Redis keys of one job.
pub struct JobKeys {
    result: String,
    claim: String,
    cancelled: String,
    /// The job's own cancellation mark (a `cancel_job` control request).
    job_cancelled: String,
    /// The batch's progress counters (`quarry status`), for a job of a batch.
    progress: Option<String>,
}

/// What a stored result adds to its batch's progress counters.
pub struct Progress<'a> {
    /// `ok` or the error code.
    pub outcome: &'a str,
    /// Tokens the job used.
    pub tokens: u64,
    /// What it cost, when its model has a price.
    pub cost_usd: Option<f64>,
}

/// The progress field summing costs, in nanodollars (integers add up exactly).
pub const COST_FIELD: &str = "cost_nusd";

/// Results and claims on a shared multiplexed connection.
#[derive(Clone)]
pub struct ResultStore {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
    cancel_ttl: Duration,
    claims: Arc<Claims>,
}

/// Claims this worker holds, extended together by [`ResultStore::extend_claims`].
struct Claims {
    owner: String,
    next: AtomicU64,
    lifetime: Duration,
    /// Claim key → the job's cancellation mark and the token that stops its work.
    held: Mutex<HashMap<String, Held>>,
}

/// A claim being extended, and how its job is stopped when it is cancelled in flight.
struct Held {
    cancel_mark: String,
    token: CancellationToken,
}

/// A held claim. Dropping it (the job ended, or its task was dropped) stops its extension, so
/// a claim never outlives its holder by more than its lifetime.
pub struct ClaimGuard {
    claims: Arc<Claims>,
    key: String,
    token: CancellationToken,
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard")
            .field("key", &self.key)
            .finish()
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stored(result) => write!(f, "Stored({} bytes)", result.len()),
            Self::Claimed(guard) => f.debug_tuple("Claimed").field(guard).finish(),
            Self::Held(left) => f.debug_tuple("Held").field(left).finish(),
            Self::Cancelled => f.write_str("Cancelled"),
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.claims
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl ResultStore {
    /// A store on `redis` under `prefix`: results kept for `ttl`, claims lasting `claim_lifetime`
    /// unless extended, cancellations kept for `cancel_ttl`.
    pub fn new(
        redis: ConnectionManager,
        prefix: impl Into<String>,
        ttl: Duration,
        claim_lifetime: Duration,
        cancel_ttl: Duration,
    ) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        Self {
            redis,
            prefix: prefix.into(),
            ttl,
            cancel_ttl,
            claims: Arc::new(Claims {
                owner: format!("{}-{started}", std::process::id()),
                next: AtomicU64::new(0),
                lifetime: claim_lifetime.max(Duration::from_secs(1)),
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn group(&self, plugin: &str, batch_id: Option<&str>, job_id: &str) -> String {
        match batch_id {
            Some(batch) => format!("{}:{{{plugin}/b/{batch}}}", self.prefix),
            None => format!("{}:{{{plugin}/j/{job_id}}}", self.prefix),
        }
    }

    /// The keys of a job of `plugin`, in `batch_id` if it has one.
    pub fn job_keys(&self, plugin: &str, batch_id: Option<&str>, job_id: &str) -> JobKeys {
        let group = self.group(plugin, batch_id, job_id);
        JobKeys {
            result: format!("{group}:result:{job_id}"),
            claim: format!("{group}:claim:{job_id}"),
            cancelled: format!("{group}:cancelled"),
            job_cancelled: format!("{group}:cancelled:{job_id}"),
            progress: batch_id.map(|_| format!("{group}:progress")),
        }
    }

    /// The progress key of a batch of `plugin`: a hash of counters (`ok`, each error code,
    /// `tokens`) that `quarry status` reads.
    pub fn progress_key(&self, plugin: &str, batch_id: &str) -> String {
        format!("{}:progress", self.group(plugin, Some(batch_id), ""))
    }

    /// The progress counters of a batch of `plugin` (empty when it has none).
    pub async fn batch_progress(
        &self,
        plugin: &str,
        batch_id: &str,
    ) -> redis::RedisResult<std::collections::BTreeMap<String, u64>> {
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::BatchProgress);
        conn.hgetall(self.progress_key(plugin, batch_id)).await
    }

    /// Marks a batch of `plugin` cancelled: from now on its jobs that have not started end
    /// `CANCELLED` (checked in the claim's round trip). Idempotent.
    pub async fn cancel_batch(&self, plugin: &str, batch_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let key = format!("{}:cancelled", self.group(plugin, Some(batch_id), ""));
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::CancelBatch);
        conn.set_ex::<_, _, ()>(key, 1, self.cancel_ttl.as_secs().max(1))
            .await
    }

    /// How long a claim lasts without extension.
    pub fn claim_lifetime(&self) -> Duration {
        self.claims.lifetime
    }

    /// The idempotency check of one delivery: its stored result, its batch's cancellation, a
    /// new claim, or the time left on another delivery's claim. One round trip of its own;
    /// [`ResultStore::claim_command`] sends it with other work instead.
    pub async fn claim(&self, keys: &JobKeys) -> redis::RedisResult<Claim> {
        let _round_trip = crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::Claim);
        let reply: Vec<Vec<u8>> = LIBRARY
            .query(&self.redis, &self.claim_command(keys))
            .await?;
        self.read_claim(keys, reply)
    }

    /// The claim as one `FCALL`, to pipeline with the job's first limiter reservation; its
    /// reply goes to [`ResultStore::claim_from`].
    pub fn claim_command(&self, keys: &JobKeys) -> redis::Cmd {
        let mut cmd = LIBRARY.call(
            Function::Claim,
            &[
                &keys.result,
                &keys.claim,
                &keys.cancelled,
                &keys.job_cancelled,
            ],
        );
        cmd.arg(self.next_owner()).arg(self.lifetime_ms());
        cmd
    }

    /// Reads the reply to [`ResultStore::claim_command`]. If Redis had lost the functions
    /// (it restarted: the command did not run), claims in a round trip of its own, which
    /// loads them.
    pub async fn claim_from(
        &self,
        keys: &JobKeys,
        reply: redis::RedisResult<redis::Value>,
    ) -> redis::RedisResult<Claim> {
        match reply {
            Err(error) if crate::functions::is_missing(&error) => self.claim(keys).await,
            Err(error) => Err(error),
            Ok(value) => {
                let reply: Vec<Vec<u8>> =
                    redis::FromRedisValue::from_redis_value(value).map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "unexpected reply from claim.v3",
                            e.to_string(),
                        ))
                    })?;
                self.read_claim(keys, reply)
            }
        }
    }

    fn next_owner(&self) -> String {
        format!(
            "{}-{}",
            self.claims.owner,
            self.claims.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn lifetime_ms(&self) -> u64 {
        u64::try_from(self.claims.lifetime.as_millis()).unwrap_or(u64::MAX)
    }

    fn read_claim(&self, keys: &JobKeys, reply: Vec<Vec<u8>>) -> redis::RedisResult<Claim> {
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some(b"stored"), Some(result)) => Ok(Claim::Stored(result)),
            (Some(b"cancelled"), None) => Ok(Claim::Cancelled),
            (Some(b"claimed"), None) => {
                let token = CancellationToken::new();
                self.claims
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        keys.claim.clone(),
                        Held {
                            cancel_mark: keys.job_cancelled.clone(),
                            token: token.clone(),
                        },
                    );
                Ok(Claim::Claimed(ClaimGuard {
                    claims: self.claims.clone(),
                    key: keys.claim.clone(),
                    token,
                }))
            }
            (Some(b"held"), Some(ms)) => {
                let ms = std::str::from_utf8(&ms)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0);
                Ok(Claim::Held(Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                )))
            }
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from claim.v3",
            ))),
        }
    }

    /// Drops a claim without a result (the job goes back to a queue).
    pub async fn release(&self, guard: ClaimGuard) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::ReleaseClaim);
        conn.del::<_, ()>(&guard.key).await
    }

    /// Extends every claim this worker holds, and stops the work of those whose job was
    /// cancelled meanwhile, in one round trip. Called every third of the claim lifetime.
    pub async fn extend_claims(&self) -> redis::RedisResult<()> {
        let held: Vec<(String, String, CancellationToken)> = self
            .claims
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, held)| (key.clone(), held.cancel_mark.clone(), held.token.clone()))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let lifetime = i64::try_from(self.claims.lifetime.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        for (key, mark, _) in &held {
            pipe.pexpire(key, lifetime).ignore().exists(mark);
        }
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::ExtendClaims);
        let cancelled: Vec<bool> = pipe.query_async(&mut conn).await?;
        for ((_, _, token), cancelled) in held.iter().zip(cancelled) {
            if cancelled {
                token.cancel();
            }
        }
        Ok(())
    }

    /// Marks one job of `plugin` cancelled (in `batch_id` when it has one): it ends
    /// `CANCELLED` without a call if it has not started, and its provider call is dropped if
    /// it is in flight (noticed within a third of the claim lifetime). A finished job keeps
    /// its result. Idempotent.
    pub async fn cancel_job(
        &self,
        plugin: &str,
        batch_id: Option<&str>,
        job_id: &str,
    ) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let keys = self.job_keys(plugin, batch_id, job_id);
        let _round_trip = crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::CancelJob);
        conn.set_ex::<_, _, ()>(keys.job_cancelled, 1, self.cancel_ttl.as_secs().max(1))
            .await
    }

    /// Stores a job's result bytes and drops its claim, and settles its last limiter
    /// reservation, in one round trip (a pipeline).
    /// For a job of a batch, `progress` is added to the batch's counters in the same round
    /// trip (a job run twice in a worker's crash window counts twice).
    pub async fn put(
        &self,
        keys: &JobKeys,
        result: &[u8],
        settlement: Option<&Settlement>,
        progress: &Progress<'_>,
    ) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let mut pipe = redis::pipe();
        let settle = settlement.and_then(Settlement::command);
        if let Some(cmd) = &settle {
            pipe.add_command(cmd.clone()).ignore();
        }
        let (result_key, claim_key) = (&keys.result, &keys.claim);
        let ttl = self.ttl.as_secs().max(1);
        pipe.set_ex(result_key, result, ttl).ignore();
        pipe.del(claim_key).ignore();
        self.count(&mut pipe, keys, progress);
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::StoreResult);
        match pipe.query_async::<()>(&mut conn).await {
            Err(error) if crate::functions::is_missing(&error) && settle.is_some() => {
                // Redis restarted and forgot the functions: settle (which loads them), then
                // store.
                if let Some(settlement) = settlement {
                    settlement.run().await?;
                }
                let _round_trip =
                    crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::StoreResult);
                let mut pipe = redis::pipe();
                pipe.set_ex(result_key, result, ttl)
                    .ignore()
                    .del(claim_key)
                    .ignore();
                self.count(&mut pipe, keys, progress);
                pipe.query_async::<()>(&mut conn).await
            }
            other => other,
        }
    }

    /// Adds a result to its batch's counters (nothing for a job outside a batch).
    fn count(&self, pipe: &mut redis::Pipeline, keys: &JobKeys, progress: &Progress<'_>) {
        if let Some(key) = &keys.progress {
            pipe.hincr(key, progress.outcome, 1)
                .ignore()
                .hincr(key, "tokens", progress.tokens)
                .ignore();
            if let Some(cost) = progress.cost_usd {
                // Rounded to the nanodollar; f64 → u64 saturates.
                pipe.hincr(key, COST_FIELD, (cost * 1e9).round() as u64)
                    .ignore();
            }
            pipe.expire(
                key,
                i64::try_from(self.cancel_ttl.as_secs()).unwrap_or(i64::MAX),
            )
            .ignore();
        }
    }

    /// Counts a job answered without a stored result (cancelled) in its batch's progress:
    /// one round trip, for a job of a batch only.
    pub async fn count_only(&self, keys: &JobKeys, outcome: &str) -> redis::RedisResult<()> {
        if keys.progress.is_none() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let progress = Progress {
            outcome,
            tokens: 0,
            cost_usd: None,
        };
        self.count(&mut pipe, keys, &progress);
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::BatchProgress);
        pipe.query_async::<()>(&mut conn).await
    }

    /// Round-trips a PING: readiness.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }
}
