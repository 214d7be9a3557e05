//! Admission of one provider attempt: which key serves it, and whether the limits let it go
//! now. With a limiter (Redis), every attempt is one atomic reservation over the plugin's
//! quotas and the key pool's limits; afterwards the reservation is settled with the real
//! token usage, a 429 cools the key down and a 401/403 takes it out of rotation.
//!
//! Without limits to keep (one key, no limits, no quota) no Redis call is made.

use super::limiter::{Bucket, Candidate, Charge, Decision, Limiter, Reservation, Settlement, Unit};
use crate::config::{Config, LimiterConfig, Limits, ProviderConfig};
use crate::providers::{Disposition, ProviderError, ProviderRequest};
use crate::result_store::ClaimState;
use crate::telemetry;
use quarry_schemas::{ErrorCode, InputPart};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
/// A concurrency lease outlives the attempt's timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// One key of a provider's pool.
pub(crate) struct KeyEntry {
    /// Configured name (a bounded label).
    pub label: String,
    /// Limiter candidate name: `provider/key`.
    candidate: Arc<str>,
    /// Its buckets' names, made once.
    names: BucketNames,
    /// Its buckets' names for each model with limits of its own, made once.
    model_names: BTreeMap<String, BucketNames>,
    /// The secret.
    pub secret: Option<SecretString>,
    limits: Limits,
    /// Structured credential failures of this key in a row, in this worker (reset by a
    /// success): the key leaves rotation at `limits.disable_key_after`.
    pub auth_failures: std::sync::atomic::AtomicU32,
}

/// A provider's key pool and per-model limits.
pub(crate) struct Keys {
    pub keys: Vec<KeyEntry>,
    model_limits: BTreeMap<String, Limits>,
}

impl Keys {
    /// The provider's pool split by credential profile: a job is served by its profile's
    /// keys only.
    pub(crate) fn by_profile(
        provider: &str,
        config: Option<&ProviderConfig>,
    ) -> BTreeMap<String, Keys> {
        let Some(config) = config else {
            let candidate: Arc<str> = format!("{provider}/default").into();
            let key = KeyEntry {
                label: "default".into(),
                names: BucketNames::of(&candidate),
                model_names: BTreeMap::new(),
                candidate,
                secret: None,
                limits: Limits::default(),
                auth_failures: Default::default(),
            };
            let keys = Self {
                keys: vec![key],
                model_limits: BTreeMap::new(),
            };
            return BTreeMap::from([(crate::config::DEFAULT_PROFILE.to_owned(), keys)]);
        };
        let model_limits: BTreeMap<String, Limits> = config
            .model_limits
            .iter()
            .map(|m| (m.model.clone(), m.limits))
            .collect();
        let mut out: BTreeMap<String, Keys> = BTreeMap::new();
        for key in config.key_pool() {
            let candidate: Arc<str> = format!("{provider}/{}", key.name).into();
            let model_names = model_limits
                .keys()
                .map(|model| {
                    let names = BucketNames::of(&format!("{candidate}/{model}"));
                    (model.clone(), names)
                })
                .collect();
            out.entry(key.profile.clone())
                .or_insert_with(|| Keys {
                    keys: Vec::new(),
                    model_limits: model_limits.clone(),
                })
                .keys
                .push(KeyEntry {
                    names: BucketNames::of(&candidate),
                    model_names,
                    candidate,
                    label: key.name,
                    secret: key.secret,
                    limits: key.limits,
                    auth_failures: Default::default(),
                });
        }
        out
    }

    fn limited(&self) -> bool {
        self.keys.len() > 1
            || self.keys.iter().any(|k| k.limits.any())
            || self.model_limits.values().any(Limits::any)
    }
}

/// The keys an attempt may draw from: its provider's keys of the job's credential profile,
/// less those that refused this job's credential already.
#[derive(Clone, Copy)]
pub(crate) struct Pool<'a> {
    /// The provider's configured name.
    pub provider: &'a str,
    /// Its keys of the job's profile.
    pub keys: &'a Keys,
    /// Indexes of the keys that refused this job's credential.
    pub refused: &'a [usize],
}

/// A granted attempt.
pub(crate) struct Admitted {
    /// Index of the key in the pool.
    pub key: usize,
    reservation: Option<Reservation>,
    reserved_tokens: u64,
}

/// Why an attempt may not go.
pub(crate) enum Refused {
    /// The job ends (or waits in its queue) with this error.
    Job(ProviderError),
    /// Redis did not answer: the limits cannot be checked, so nothing is spent.
    Unavailable,
    /// The limits are full for longer than the worker waits inline, and the job's deadline
    /// allows waiting: it should wait in a delay queue. Carries the error to report if it
    /// cannot.
    Defer(Duration, ProviderError),
    /// The job's claim, made with the reservation, stopped it (its result is stored, its
    /// batch cancelled, or another delivery holds it); nothing was reserved.
    Claimed,
}

/// Limits, quotas and the key pool.
pub(crate) struct Admission {
    limiter: Option<Limiter>,
    config: LimiterConfig,
}

/// A plugin's quotas and its buckets' names, made once per configuration (its policy holds
/// it). The buckets are named by the plugin alone, so a reload that changes a quota keeps
/// what was spent.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quota {
    plugin: String,
    limits: Limits,
    names: BucketNames,
}

impl Quota {
    pub(crate) fn of(plugin: &str, limits: Limits) -> Self {
        let name = format!(
            "plugin/{}",
            if plugin.is_empty() {
                "anonymous"
            } else {
                plugin
            }
        );
        Self {
            plugin: plugin.to_owned(),
            limits,
            names: BucketNames::of(&name),
        }
    }
}

/// The names of one limited thing's request, token, concurrency and daily buckets.
#[derive(Debug, Clone, Default)]
struct BucketNames {
    rpm: Arc<str>,
    tpm: Arc<str>,
    concurrent: Arc<str>,
    day: Arc<str>,
}

impl BucketNames {
    fn of(name: &str) -> Self {
        Self {
            rpm: format!("{name}/rpm").into(),
            tpm: format!("{name}/tpm").into(),
            concurrent: format!("{name}/concurrent").into(),
            day: format!("{name}/day").into(),
        }
    }
}

impl Admission {
    pub(crate) fn new(config: &Config, limiter: Option<Limiter>) -> Self {
        Self {
            limiter,
            config: config.limits.clone(),
        }
    }

    pub(crate) fn set_limiter(&mut self, limiter: Limiter) {
        self.limiter = Some(limiter);
    }

    /// Picks a key and reserves the limits for one attempt, waiting inside the worker for at
    /// most `limits.max_inline_wait_ms` at a time and never past the deadline. A pending
    /// `claim` travels with the first reservation (one round trip for both); one that the
    /// limits do not need stays pending.
    pub(crate) async fn admit(
        &self,
        pool: &Pool<'_>,
        quota: &Quota,
        request: &ProviderRequest<'_>,
        deadline: Option<Instant>,
        claim: &mut ClaimState<'_>,
    ) -> Result<Admitted, Refused> {
        let Pool {
            provider,
            keys,
            refused: refused_keys,
        } = *pool;
        let (Some(limiter), true) = (&self.limiter, keys.limited() || quota.limits.any()) else {
            return Ok(Admitted {
                key: 0,
                reservation: None,
                reserved_tokens: 0,
            });
        };
        let estimate = estimate_tokens(request);
        let lease = request.timeout + LEASE_MARGIN;
        // A little longer than the provider's minute: a request reserved at the window's edge
        // reaches the provider a few milliseconds later.
        let window = MINUTE + Duration::from_millis(self.config.window_margin_ms);
        let model_limits = keys
            .model_limits
            .get(request.model)
            .copied()
            .unwrap_or_default();
        // Keys that refused this job's credential already are not offered it again.
        let offered: Vec<usize> = (0..keys.keys.len())
            .filter(|i| !refused_keys.contains(i))
            .collect();
        let candidates: Vec<Candidate> = offered
            .iter()
            .filter_map(|&i| keys.keys.get(i))
            .map(|key| {
                let mut charges = charges_for(&key.names, key.limits, estimate, lease, window);
                if let Some(names) = key.model_names.get(request.model) {
                    charges.extend(charges_for(names, model_limits, estimate, lease, window));
                }
                Candidate {
                    name: key.candidate.clone(),
                    charges,
                }
            })
            .collect();
        let shared = charges_for(&quota.names, quota.limits, estimate, lease, window);
        let max_wait = Duration::from_millis(self.config.max_inline_wait_ms);
        loop {
            let id = format!("{:016x}", fastrand::u64(..));
            let decided = match claim.command() {
                Some(command) => {
                    let (claimed, decided) = limiter
                        .reserve_after(command, &id, &shared, &candidates)
                        .await;
                    claim.answer(claimed).await;
                    decided
                }
                None => limiter.reserve(&id, &shared, &candidates).await,
            };
            if claim.stopped() {
                if let Ok(Decision::Granted { reservation, .. }) = decided {
                    // Nothing was called: everything reserved goes back.
                    Settlement::new(limiter.clone(), reservation, Some(0))
                        .now()
                        .await;
                }
                return Err(Refused::Claimed);
            }
            let decision = match decided {
                Ok(decision) => decision,
                Err(error) => {
                    telemetry::limiter_decision(provider, "unavailable");
                    telemetry::redis_error("limiter_reserve", &error);
                    tracing::warn!(%error, "the limiter (Redis) is unavailable; the job goes back to its queue");
                    return Err(Refused::Unavailable);
                }
            };
            match decision {
                Decision::Granted {
                    candidate,
                    reservation,
                    ..
                } => {
                    telemetry::limiter_decision(provider, "granted");
                    telemetry::tokens_reserved(provider, estimate);
                    return Ok(Admitted {
                        key: offered.get(candidate).copied().unwrap_or(candidate),
                        reservation: Some(reservation),
                        reserved_tokens: estimate,
                    });
                }
                Decision::Wait { wait } => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if wait > max_wait || left.is_some_and(|l| wait >= l) {
                        telemetry::limiter_decision(provider, "rejected");
                        let error = ProviderError::retry(
                            ErrorCode::RateLimited,
                            Some(wait),
                            format!(
                                "the limits of `{provider}` are full for the next {} ms",
                                wait.as_millis()
                            ),
                        );
                        if left.is_some_and(|l| wait >= l) {
                            return Err(Refused::Job(error));
                        }
                        return Err(Refused::Defer(wait, error));
                    }
                    telemetry::limiter_wait(provider, wait);
                    tokio::time::sleep(wait).await;
                }
                Decision::Exhausted => {
                    telemetry::limiter_decision(provider, "exhausted");
                    return Err(Refused::Job(ProviderError::permanent(
                        ErrorCode::CredentialsExhausted,
                        format!("every key of `{provider}` is disabled"),
                    )));
                }
                Decision::BudgetSpent => {
                    telemetry::limiter_decision(provider, "budget");
                    return Err(Refused::Job(ProviderError::permanent(
                        ErrorCode::BudgetExceeded,
                        format!("plugin `{}` has spent its daily token budget", quota.plugin),
                    )));
                }
            }
        }
    }

    /// The settlement of an attempt with its real usage (`None`: the provider reported none,
    /// and the reservation stands); taken out of `admitted`, so it happens once. `None` when
    /// nothing was reserved.
    pub(crate) fn settlement(
        &self,
        provider: &str,
        admitted: &mut Admitted,
        actual_tokens: Option<u64>,
    ) -> Option<Settlement> {
        let (Some(limiter), Some(reservation)) = (&self.limiter, admitted.reservation.take())
        else {
            return None;
        };
        let charged = actual_tokens.unwrap_or(admitted.reserved_tokens);
        telemetry::tokens_actual(provider, charged, admitted.reserved_tokens);
        Some(Settlement::new(limiter.clone(), reservation, actual_tokens))
    }

    /// A plugin's quotas and what is left of each now (`remaining` absent when Redis does
    /// not answer).
    pub(crate) async fn quotas(&self, quota: &Quota) -> Vec<quarry_schemas::control::QuotaView> {
        use quarry_schemas::control::QuotaView;
        let plugin = &quota.plugin;
        let window = MINUTE + Duration::from_millis(self.config.window_margin_ms);
        let used_in_windows = match &self.limiter {
            Some(limiter) => {
                let windows = vec![
                    (quota.names.rpm.to_string(), window),
                    (quota.names.tpm.to_string(), window),
                ];
                // The plugin as a candidate of its own: no key is cooling or disabled.
                let candidate = format!("plugin-view/{plugin}");
                match limiter.status(&[(candidate, windows)]).await {
                    Ok(states) => states.into_iter().next().map(|s| s.used),
                    Err(error) => {
                        telemetry::redis_error("limiter_status", &error);
                        None
                    }
                }
            }
            None => None,
        };
        let day_used = match (&self.limiter, quota.limits.daily_tokens) {
            (Some(limiter), Some(_)) => match limiter.day_used(&quota.names.day).await {
                Ok(used) => Some(used),
                Err(error) => {
                    telemetry::redis_error("limiter_status", &error);
                    None
                }
            },
            _ => None,
        };
        let window_used = |i: usize| used_in_windows.as_ref().and_then(|u| u.get(i).copied());
        [
            (
                "requests_per_minute",
                quota.limits.requests_per_minute,
                window_used(0),
            ),
            (
                "tokens_per_minute",
                quota.limits.tokens_per_minute,
                window_used(1),
            ),
            ("daily_tokens", quota.limits.daily_tokens, day_used),
        ]
        .into_iter()
        .filter_map(|(name, limit, used)| {
            let limit = limit?;
            Some(QuotaView {
                name: name.to_owned(),
                limit,
                remaining: used.map(|u| limit.saturating_sub(u)),
            })
        })
        .collect()
    }

    /// Publishes each key's state (available, cooling, disabled) and what is left of its
    /// per-minute limits as gauges.
    pub(crate) async fn report(&self, provider: &str, keys: &Keys) {
        let Some(limiter) = &self.limiter else { return };
        if !keys.limited() {
            return;
        }
        let window = MINUTE + Duration::from_millis(self.config.window_margin_ms);
        let request: Vec<(String, Vec<(String, Duration)>)> = keys
            .keys
            .iter()
            .map(|k| {
                let windows = vec![
                    (k.names.rpm.to_string(), window),
                    (k.names.tpm.to_string(), window),
                ];
                (k.candidate.to_string(), windows)
            })
            .collect();
        match limiter.status(&request).await {
            Ok(states) => {
                for (key, state) in keys.keys.iter().zip(states) {
                    let now = if state.disabled {
                        "disabled"
                    } else if !state.cooling.is_zero() {
                        "cooling"
                    } else {
                        "available"
                    };
                    let used = |i: usize| state.used.get(i).copied().unwrap_or(0);
                    telemetry::key_state(
                        provider,
                        &key.label,
                        now,
                        key.limits
                            .requests_per_minute
                            .map(|l| l.saturating_sub(used(0))),
                        key.limits
                            .tokens_per_minute
                            .map(|l| l.saturating_sub(used(1))),
                    );
                }
            }
            Err(error) => telemetry::redis_error("limiter_status", &error),
        }
    }

    /// Acts on a failed attempt: a 429 cools the key down, a key the provider rejected
    /// `limits.disable_key_after` times in a row leaves rotation.
    pub(crate) async fn after_failure(
        &self,
        provider: &str,
        keys: &Keys,
        admitted: &Admitted,
        error: &ProviderError,
    ) {
        let (Some(limiter), Some(key)) = (&self.limiter, keys.keys.get(admitted.key)) else {
            return;
        };
        let outcome = match (error.code, error.disposition) {
            (ErrorCode::RateLimited, Disposition::Retry { after }) => {
                let period = after.unwrap_or(Duration::from_secs(1));
                telemetry::key_cooled(provider, &key.label);
                limiter.cool_down(&key.candidate, period).await
            }
            (_, Disposition::RotateKey) => {
                // One refusal may be the provider's hiccup: the key leaves rotation only
                // after `disable_key_after` in a row.
                let in_a_row = key
                    .auth_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .saturating_add(1);
                if in_a_row < self.config.disable_key_after.max(1) {
                    return;
                }
                key.auth_failures
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                telemetry::key_disabled(provider, &key.label, error.code);
                limiter
                    .disable(
                        &key.candidate,
                        Duration::from_secs(self.config.disable_key_secs),
                    )
                    .await
            }
            _ => Ok(()),
        };
        if let Err(error) = outcome {
            telemetry::redis_error("limiter_key_state", &error);
        }
    }
}

fn charges_for(
    names: &BucketNames,
    limits: Limits,
    estimate: u64,
    lease: Duration,
    window: Duration,
) -> Vec<Charge> {
    let mut out = Vec::new();
    if let Some(limit) = limits.requests_per_minute {
        out.push(Charge {
            bucket: Bucket::Window {
                name: names.rpm.clone(),
                unit: Unit::Requests,
                limit,
                window,
                burst: limits.requests_burst_of(limit),
            },
            cost: 1,
        });
    }
    if let Some(limit) = limits.tokens_per_minute {
        out.push(Charge {
            bucket: Bucket::Window {
                name: names.tpm.clone(),
                unit: Unit::Tokens,
                limit,
                window,
                burst: limits.tokens_burst_of(limit),
            },
            cost: estimate.min(limit),
        });
    }
    if let Some(limit) = limits.concurrent {
        out.push(Charge {
            bucket: Bucket::Concurrency {
                name: names.concurrent.clone(),
                limit,
                lease,
            },
            cost: 1,
        });
    }
    if let Some(limit) = limits.daily_tokens {
        out.push(Charge {
            bucket: Bucket::Day {
                name: names.day.clone(),
                limit,
            },
            cost: estimate,
        });
    }
    out
}

/// Tokens an attempt may use: its prompt (≈ 4 characters a token, 85 an image) plus its
/// output bound.
pub(crate) fn estimate_tokens(request: &ProviderRequest<'_>) -> u64 {
    let mut chars = request.instructions.map_or(0, str::len);
    let mut images = 0u64;
    for part in request.input {
        match part {
            InputPart::Text { text } => chars += text.len(),
            InputPart::Image(_) => images += 1,
        }
    }
    chars += match (request.schema_text, request.json_schema) {
        (Some(text), _) => text.get().len(),
        (None, Some((_, tree))) => tree.to_string().len(),
        (None, None) => 0,
    };
    chars += request
        .repairs
        .iter()
        .map(|r| r.answer.len() + r.problem.len())
        .sum::<usize>();
    let output = u64::from(request.max_tokens);
    (chars as u64).div_ceil(4) + 85 * images + output
}
