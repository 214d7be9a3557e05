//! The limiter before issue 23 — sliding logs: a sorted set and a hash per window bucket,
//! one member per reservation — as plain `EVALSHA` scripts (`v1/`), for `quarry-bench
//! limiter` to run beside the current one in the same run. Not used by the worker.

use quarry_worker::limits::{Bucket, Candidate, Charge};
use serde_json::{Value, json};

const RESERVE: &str = include_str!("v1/reserve.lua");
const FINISH: &str = include_str!("v1/finish.lua");

#[derive(Clone)]
pub struct V1 {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    reserve: std::sync::Arc<redis::Script>,
    finish: std::sync::Arc<redis::Script>,
}

/// A granted v1 reservation: its id and what it charged.
pub struct Granted {
    id: String,
    charged: Vec<Charge>,
}

impl V1 {
    pub fn new(redis: redis::aio::ConnectionManager, prefix: String) -> Self {
        Self {
            redis,
            prefix,
            reserve: std::sync::Arc::new(redis::Script::new(RESERVE)),
            finish: std::sync::Arc::new(redis::Script::new(FINISH)),
        }
    }

    fn key(&self, name: &str, part: &str) -> String {
        format!("{}:{{lim}}:{name}:{part}", self.prefix)
    }

    /// One decision: `Some` when granted.
    pub async fn reserve(
        &self,
        id: &str,
        shared: &[Charge],
        candidates: &[Candidate],
    ) -> Option<Granted> {
        let mut keys: Vec<String> = Vec::new();
        let mut encode = |charge: &Charge| -> Value {
            let mut add = |key: String| {
                keys.push(key);
                keys.len()
            };
            match &charge.bucket {
                Bucket::Window {
                    name,
                    limit,
                    window,
                    ..
                } => json!({
                    "kind": "window", "z": add(self.key(name, "z")), "h": add(self.key(name, "h")),
                    "limit": limit, "cost": charge.cost, "window_ms": window.as_millis() as u64,
                }),
                Bucket::Concurrency { name, limit, lease } => json!({
                    "kind": "concurrency", "z": add(self.key(name, "c")), "limit": limit,
                    "lease_ms": lease.as_millis() as u64,
                }),
                Bucket::Day { name, limit } => json!({
                    "kind": "day", "c": add(self.key(name, "day")), "limit": limit,
                    "cost": charge.cost,
                }),
            }
        };
        let shared_spec: Vec<Value> = shared.iter().map(&mut encode).collect();
        let mut candidate_specs = Vec::new();
        for candidate in candidates {
            let buckets: Vec<Value> = candidate.charges.iter().map(&mut encode).collect();
            candidate_specs.push((candidate.name.clone(), buckets));
        }
        let mut specs = Vec::new();
        for (name, buckets) in candidate_specs {
            keys.push(self.key(&name, "cool"));
            let cool = keys.len();
            keys.push(self.key(&name, "disabled"));
            let disabled = keys.len();
            specs.push(json!({"cool": cool, "disabled": disabled, "buckets": buckets}));
        }
        let spec = json!({"shared": shared_spec, "candidates": specs}).to_string();
        let mut invocation = self.reserve.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation.arg(id).arg(spec);
        let (status, value, _now): (u8, i64, u64) = invocation
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("v1 reserve");
        (status == 1).then(|| {
            let mut charged = shared.to_vec();
            if let Some(candidate) = candidates.get(usize::try_from(value - 1).unwrap_or(0)) {
                charged.extend(candidate.charges.iter().cloned());
            }
            Granted {
                id: id.to_owned(),
                charged,
            }
        })
    }

    /// Settles a grant with its real token usage.
    pub async fn finish(&self, granted: &Granted, actual: u64) {
        let mut keys = Vec::new();
        let mut spec = Vec::new();
        for charge in &granted.charged {
            let delta =
                i64::try_from(actual).unwrap_or(0) - i64::try_from(charge.cost).unwrap_or(0);
            match &charge.bucket {
                Bucket::Window {
                    name,
                    unit: quarry_worker::limits::Unit::Tokens,
                    ..
                } => {
                    keys.push(self.key(name, "z"));
                    keys.push(self.key(name, "h"));
                    spec.push(json!({"kind": "window", "z": keys.len() - 1, "h": keys.len(), "delta": delta}));
                }
                Bucket::Window { .. } => {}
                Bucket::Concurrency { name, .. } => {
                    keys.push(self.key(name, "c"));
                    spec.push(json!({"kind": "concurrency", "z": keys.len()}));
                }
                Bucket::Day { name, .. } => {
                    keys.push(self.key(name, "day"));
                    spec.push(json!({"kind": "day", "c": keys.len(), "delta": delta}));
                }
            }
        }
        let mut invocation = self.finish.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(&granted.id)
            .arg(Value::Array(spec).to_string());
        let _: i64 = invocation
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("v1 finish");
    }
}
