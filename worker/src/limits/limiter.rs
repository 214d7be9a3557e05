//! Fleet-wide limits in Redis: every decision is one atomic Lua call that reads Redis's own
//! clock, checks every bucket that applies and charges all of them or none.
//!
//! - **Window** buckets (requests or tokens per window) are one small hash each, whatever
//!   the rate: 60 slots per window and a pacer (`functions/window.lua`). No window of the
//!   configured length ever holds more than the limit, and a backlog goes out evenly at the
//!   limit's rate with at most the bucket's `burst` at once.
//! - **Concurrency** buckets hold leases that expire by themselves, so a crashed worker's
//!   reservation frees itself.
//! - **Day** buckets count a calendar day (UTC, Redis time) for daily budgets.
//! - A reservation of tokens is an estimate; [`Limiter::finish`] reconciles it with the real
//!   usage (refund or debt) and releases concurrency leases.
//! - A request may name several *candidates* (API keys): they are tried in turn from the
//!   pool's cursor and the first that fits serves; cooling (after a 429) and disabled (after
//!   a 401) keys are skipped. A pool found full is marked so until its earliest key frees (at
//!   most 1 s), and the decisions meanwhile refuse at once.
//!
//! Keys: `{prefix}:{lim}:<bucket>:<part>`; the `{lim}` hash tag keeps every key of one
//! decision in one Redis Cluster slot. Scripts: `functions/reserve.lua`, `finish.lua`,
//! `status.lua`, functions of the worker's library ([`crate::functions`]).
//!

use crate::functions::{Function, LIBRARY};
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One per call.
    Requests,
    /// Tokens: reserved as an estimate, reconciled afterwards.
    Tokens,
}

/// One limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    /// At most `limit` units in any `window`.
    Window {
        /// Bucket name, unique per limited thing (e.g. `openai/primary/rpm`), made once at
        /// start.
        name: Arc<str>,
        /// What it counts.
        unit: Unit,
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Duration,
        /// Units that may go at once beyond the even pace (at least 1 for requests).
        burst: u64,
    },
    /// At most `limit` calls at once; a lease lasts at most `lease`.
    Concurrency {
        /// Bucket name.
        name: Arc<str>,
        /// Calls at once.
        limit: u64,
        /// Longest a lease is held (a crashed holder's lease expires then).
        lease: Duration,
    },
    /// At most `limit` tokens per UTC day.
    Day {
        /// Bucket name.
        name: Arc<str>,
        /// Tokens per day.
        limit: u64,
    },
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        match self {
            Bucket::Window { name, .. }
            | Bucket::Concurrency { name, .. }
            | Bucket::Day { name, .. } => name,
        }
    }
}

/// A bucket and what this call costs in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The bucket.
    pub bucket: Bucket,
    /// Units: 1 for request buckets, the estimate for token buckets (ignored by concurrency).
    pub cost: u64,
}

/// One way to serve the call (an API key), with the buckets it charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Stable name (`provider/key`), for the cooling and disabled flags.
    pub name: Arc<str>,
    /// Its buckets.
    pub charges: Vec<Charge>,
}

/// The limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead with candidate `candidate`; settle `reservation` afterwards.
    Granted {
        /// Index into the candidates.
        candidate: usize,
        /// What to settle.
        reservation: Reservation,
        /// Redis time of the decision, milliseconds since the epoch.
        at_ms: u64,
    },
    /// Nothing fits now; something may in `wait`.
    Wait {
        /// The earliest a retry can succeed.
        wait: Duration,
    },
    /// Every candidate is disabled.
    Exhausted,
    /// A daily budget is spent.
    BudgetSpent,
}

/// A granted reservation, to pass to [`Limiter::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    id: String,
    charged: Vec<Charge>,
    /// Redis time of the grant: the slot its window charges are in.
    at_ms: u64,
}

/// The Redis-backed limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    redis: ConnectionManager,
    prefix: String,
}

/// A candidate's state, for gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateStatus {
    /// Cooling down for this long (zero: not cooling).
    pub cooling: Duration,
    /// Out of rotation.
    pub disabled: bool,
    /// Units used in the current window of each window bucket, in the order given.
    pub used: Vec<u64>,
}

impl Limiter {
    /// A limiter on `redis`, keys under `prefix`.
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
        }
    }

    fn key(&self, name: &str, part: &str) -> String {
        format!("{}:{{lim}}:{name}:{part}", self.prefix)
    }

    /// Bumped whenever a key is disabled or cooled down: it voids pools' full marks.
    fn epoch_key(&self) -> String {
        format!("{}:{{lim}}:keys:epoch", self.prefix)
    }

    /// Sets a candidate's flag `part` for `period`, and bumps the keys' epoch, in one round
    /// trip.
    async fn flag(&self, candidate: &str, part: &str, period: Duration) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::LimiterKeyState);
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.key(candidate, part))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .ignore()
            .cmd("INCR")
            .arg(self.epoch_key())
            .ignore()
            .query_async(&mut conn)
            .await
    }

    /// One atomic decision over the shared charges and the candidates.
    pub async fn reserve(
        &self,
        id: &str,
        shared: &[Charge],
        candidates: &[Candidate],
    ) -> redis::RedisResult<Decision> {
        let (keys, spec) = self.reserve_args(shared, candidates);
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::LimiterReserve);
        let mut cmd = LIBRARY.call(Function::Reserve, &keys);
        cmd.arg(id).arg(spec.0).arg(spec.1);
        let reply: (u8, i64, u64) = LIBRARY.query(&self.redis, &cmd).await?;
        Ok(decision(reply, id, shared, candidates))
    }

    /// [`Limiter::reserve`] with `first` sent ahead of it in the same round trip (a job's
    /// idempotency claim). Returns `first`'s reply, and the decision. If Redis had lost the
    /// functions (it restarted), the reservation goes again on its own, which loads them.
    pub async fn reserve_after(
        &self,
        first: redis::Cmd,
        id: &str,
        shared: &[Charge],
        candidates: &[Candidate],
    ) -> (
        redis::RedisResult<redis::Value>,
        redis::RedisResult<Decision>,
    ) {
        let (keys, spec) = self.reserve_args(shared, candidates);
        let mut reserve = LIBRARY.call(Function::Reserve, &keys);
        reserve.arg(id).arg(&spec.0).arg(&spec.1);
        let mut pipe = redis::pipe();
        pipe.add_command(first).add_command(reserve).ignore_errors();
        let mut conn = self.redis.clone();
        let replies: redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> = {
            let _round_trip =
                crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::ClaimAndReserve);
            pipe.query_async(&mut conn).await
        };
        let mut replies = match replies {
            Ok(replies) => replies.into_iter(),
            Err(error) => return (Err(error.clone()), Err(error)),
        };
        let missing = || {
            Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "a pipelined reply is missing",
            )))
        };
        let first = replies.next().unwrap_or_else(missing);
        let decided = match replies.next().unwrap_or_else(missing) {
            Err(error) if crate::functions::is_missing(&error) => {
                self.reserve(id, shared, candidates).await
            }
            Err(error) => Err(error),
            Ok(value) => redis::FromRedisValue::from_redis_value(value)
                .map(|reply| decision(reply, id, shared, candidates))
                .map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "unexpected reply from reserve.v1",
                        e.to_string(),
                    ))
                }),
        };
        (first, decided)
    }

    /// The reservation script's keys and its JSON spec.
    /// The spec is the shared part and one JSON per candidate (the script decodes a
    /// candidate only when it reaches it).
    fn reserve_args(
        &self,
        shared: &[Charge],
        candidates: &[Candidate],
    ) -> (Vec<String>, (String, Vec<String>)) {
        let mut keys: Vec<String> = Vec::new();
        let encode = |charge: &Charge, keys: &mut Vec<String>| -> Value {
            let mut add = |key: String| {
                keys.push(key);
                keys.len()
            };
            match &charge.bucket {
                Bucket::Window {
                    name,
                    limit,
                    window,
                    burst,
                    ..
                } => json!({
                    "kind": "window", "w": add(self.key(name, "w")), "limit": limit,
                    "cost": charge.cost, "window_ms": window.as_millis() as u64, "burst": burst,
                }),
                Bucket::Concurrency { name, limit, lease } => json!({
                    "kind": "concurrency", "z": add(self.key(name, "c")), "limit": limit,
                    "lease_ms": lease.as_millis() as u64,
                }),
                Bucket::Day { name, limit } => json!({
                    "kind": "day", "c": add(self.key(name, "day")), "limit": limit, "cost": charge.cost,
                }),
            }
        };
        let shared_spec: Vec<Value> = shared.iter().map(|c| encode(c, &mut keys)).collect();
        // A pool of several keys keeps a cursor and a full mark, named by what it is made of
        // (its keys and their buckets), so that pools of different models never share them.
        let pool = (candidates.len() > 1).then(|| {
            let mut hash = std::hash::DefaultHasher::new();
            for candidate in candidates {
                std::hash::Hash::hash(&candidate.name, &mut hash);
                for charge in &candidate.charges {
                    std::hash::Hash::hash(charge.bucket.name(), &mut hash);
                }
            }
            let name = format!("pool-{:016x}", std::hash::Hasher::finish(&hash));
            keys.push(self.key(&name, "full"));
            keys.push(self.key(&name, "cursor"));
            keys.push(self.epoch_key());
            (keys.len() - 2, keys.len() - 1, keys.len())
        });
        let mut candidate_specs = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            keys.push(self.key(&candidate.name, "cool"));
            let cool = keys.len();
            keys.push(self.key(&candidate.name, "disabled"));
            let disabled = keys.len();
            let buckets: Vec<Value> = candidate
                .charges
                .iter()
                .map(|c| encode(c, &mut keys))
                .collect();
            candidate_specs
                .push(json!({"cool": cool, "disabled": disabled, "buckets": buckets}).to_string());
        }
        let mut spec = json!({"shared": shared_spec});
        if let Some((full, cursor, epoch)) = pool {
            spec["pool"] = json!(full);
            spec["cursor"] = json!(cursor);
            spec["epoch"] = json!(epoch);
        }
        (keys, (spec.to_string(), candidate_specs))
    }

    /// Settles a reservation: token buckets move to `actual_tokens` (when known), leases are
    /// released.
    pub async fn finish(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
    ) -> redis::RedisResult<()> {
        let Some((keys, spec)) = self.finish_args(reservation, actual_tokens) else {
            return Ok(());
        };
        let mut cmd = LIBRARY.call(Function::Finish, &keys);
        cmd.arg(&reservation.id).arg(spec);
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::LimiterFinish);
        LIBRARY.query::<i64>(&self.redis, &cmd).await.map(drop)
    }

    /// The settlement as one `FCALL`, to pipeline with other work (the result store's
    /// write): `None` when there is nothing to settle. If Redis lost the functions, fall back
    /// to [`Limiter::finish`] (which loads them).
    pub fn finish_command(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
    ) -> Option<redis::Cmd> {
        let (keys, spec) = self.finish_args(reservation, actual_tokens)?;
        let mut cmd = LIBRARY.call(Function::Finish, &keys);
        cmd.arg(&reservation.id).arg(spec);
        Some(cmd)
    }

    fn finish_args(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
    ) -> Option<(Vec<String>, String)> {
        let mut keys = Vec::new();
        let mut spec = Vec::new();
        for charge in &reservation.charged {
            let delta = |reserved: u64| match actual_tokens {
                Some(actual) => {
                    i64::try_from(actual).unwrap_or(i64::MAX)
                        - i64::try_from(reserved).unwrap_or(i64::MAX)
                }
                None => 0,
            };
            match &charge.bucket {
                Bucket::Window {
                    name,
                    unit: Unit::Tokens,
                    limit,
                    window,
                    ..
                } => {
                    keys.push(self.key(name, "w"));
                    spec.push(json!({
                        "kind": "window", "w": keys.len(), "delta": delta(charge.cost),
                        "at_ms": reservation.at_ms, "window_ms": window.as_millis() as u64,
                        "limit": limit,
                    }));
                }
                Bucket::Window {
                    unit: Unit::Requests,
                    ..
                } => {}
                Bucket::Concurrency { name, .. } => {
                    keys.push(self.key(name, "c"));
                    spec.push(json!({"kind": "concurrency", "z": keys.len()}));
                }
                Bucket::Day { name, .. } => {
                    keys.push(self.key(name, "day"));
                    spec.push(json!({"kind": "day", "c": keys.len(), "delta": delta(charge.cost)}));
                }
            }
        }
        (!spec.is_empty()).then(|| (keys, Value::Array(spec).to_string()))
    }

    /// The state of candidates: cooling, disabled, and the use of their window buckets
    /// (`(name, window)` pairs, per candidate).
    pub async fn status(
        &self,
        candidates: &[(String, Vec<(String, Duration)>)],
    ) -> redis::RedisResult<Vec<CandidateStatus>> {
        let mut keys: Vec<String> = Vec::new();
        let mut spec = Vec::new();
        for (name, windows) in candidates {
            keys.push(self.key(name, "cool"));
            let cool = keys.len();
            keys.push(self.key(name, "disabled"));
            let disabled = keys.len();
            let windows: Vec<Value> = windows
                .iter()
                .map(|(bucket, window)| {
                    keys.push(self.key(bucket, "w"));
                    json!({"w": keys.len(), "window_ms": window.as_millis() as u64})
                })
                .collect();
            spec.push(json!({"cool": cool, "disabled": disabled, "windows": windows}));
        }
        let mut cmd = LIBRARY.call(Function::Status, &keys);
        cmd.arg(Value::Array(spec).to_string());
        let rows: Vec<Vec<i64>> = LIBRARY.query(&self.redis, &cmd).await?;
        Ok(rows
            .into_iter()
            .map(|row| CandidateStatus {
                cooling: Duration::from_millis(row.first().copied().unwrap_or(0).max(0) as u64),
                disabled: row.get(1).copied().unwrap_or(0) == 1,
                used: row.iter().skip(2).map(|v| (*v).max(0) as u64).collect(),
            })
            .collect())
    }

    /// Tokens counted today in the day bucket `name` (0 when none yet).
    pub async fn day_used(&self, name: &str) -> redis::RedisResult<u64> {
        let mut conn = self.redis.clone();
        let _round_trip =
            crate::telemetry::redis_round_trip(crate::telemetry::RedisOp::LimiterKeyState);
        let used: Option<i64> = redis::cmd("GET")
            .arg(self.key(name, "day"))
            .query_async(&mut conn)
            .await?;
        Ok(used.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// Cools a candidate down (after a 429) for `period`.
    pub async fn cool_down(&self, candidate: &str, period: Duration) -> redis::RedisResult<()> {
        self.flag(candidate, "cool", period).await
    }

    /// Takes a candidate out of rotation (after a 401) for `period`.
    pub async fn disable(&self, candidate: &str, period: Duration) -> redis::RedisResult<()> {
        self.flag(candidate, "disabled", period).await
    }
}

/// A granted reservation, settled in one of two ways: pipelined with the write of the job's
/// result ([`Settlement::command`]; a job on the happy path costs two Redis round trips:
/// reserve, then settle + store), or on its own round trip ([`Settlement::now`]) when the
/// attempt failed, a repair follows, or the job stopped. Every settlement of the worker is one
/// of these.
pub struct Settlement {
    limiter: Limiter,
    reservation: Reservation,
    actual_tokens: Option<u64>,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement")
            .field("reservation", &self.reservation)
            .field("actual_tokens", &self.actual_tokens)
            .finish()
    }
}

impl Settlement {
    /// A settlement of `reservation` with the real usage (`None`: the reservation stands, as
    /// for an attempt the provider bills without reporting usage).
    pub fn new(limiter: Limiter, reservation: Reservation, actual_tokens: Option<u64>) -> Self {
        Self {
            limiter,
            reservation,
            actual_tokens,
        }
    }

    /// The command to pipeline, if any.
    pub fn command(&self) -> Option<redis::Cmd> {
        self.limiter
            .finish_command(&self.reservation, self.actual_tokens)
    }

    /// Settles on its own round trip, reporting the error to the caller.
    pub async fn run(&self) -> redis::RedisResult<()> {
        self.limiter
            .finish(&self.reservation, self.actual_tokens)
            .await
    }

    /// Settles on its own round trip. A failure is counted and logged only: the reservation
    /// expires by itself, so what is lost is the reconciliation.
    pub async fn now(self) {
        if let Err(error) = self.run().await {
            crate::telemetry::redis_error("limiter_finish", &error);
        }
    }
}

/// The decision in the reservation script's reply `(status, value, now_ms)`.
fn decision(
    reply: (u8, i64, u64),
    id: &str,
    shared: &[Charge],
    candidates: &[Candidate],
) -> Decision {
    let (status, value, now) = reply;
    match status {
        1 => {
            let index = usize::try_from(value - 1).unwrap_or(0);
            let mut charged = shared.to_vec();
            if let Some(candidate) = candidates.get(index) {
                charged.extend(candidate.charges.iter().cloned());
            }
            Decision::Granted {
                candidate: index,
                reservation: Reservation {
                    id: id.to_owned(),
                    charged,
                    at_ms: now,
                },
                at_ms: now,
            }
        }
        2 => Decision::Wait {
            wait: Duration::from_millis(u64::try_from(value).unwrap_or(1000)),
        },
        3 => Decision::Exhausted,
        _ => Decision::BudgetSpent,
    }
}
