//! What happens to one decoded job, in this order (DESIGN.md, "The flow of one job"):
//!
//! 1. contract checks the types cannot express (`Job::check`)      → `INVALID_REQUEST`
//! 2. deadline                                                      → `DEADLINE_EXCEEDED`
//! 3. compile (or fetch the cached) JSON Schema validator           → `INVALID_REQUEST`
//! 4. route the model alias to a provider and model                 → `MODEL_UNRESOLVED`
//! 5. call the provider; retry per the error's disposition, within the deadline
//! 6. parse and validate the answer against the schema              → `OUTPUT_INVALID`
//! 7. build the result (usage summed over attempts)
//!
//! Decoding and publishing belong to the consumer ([`crate::consumer`]); this module knows
//! nothing of AMQP, so it is tested without a broker.

use crate::config::{Config, Route};
use crate::providers::{
    self, Disposition, Provider, ProviderError, ProviderRequest, ProviderResponse,
};
use crate::retry::RetryPolicy;
use crate::schema_cache::{InvalidSchema, SchemaCache, violations};
use crate::telemetry;
use quarry_schemas::result::{ContentType, ResultVersion};
use quarry_schemas::{ErrorCode, ErrorInfo, Job, JobResult, Status, Usage};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Distinct schemas whose compiled validators are kept.
const SCHEMA_CACHE_CAPACITY: usize = 1024;
/// Schema name used when the job gives none.
const DEFAULT_SCHEMA_NAME: &str = "extraction";

/// A configured provider and its default attempt timeout.
struct ProviderEntry {
    provider: Box<dyn Provider>,
    timeout: Duration,
}

/// The job pipeline: providers, routes and validators, built once at start.
pub struct Pipeline {
    providers: BTreeMap<String, ProviderEntry>,
    aliases: BTreeMap<String, Route>,
    default_alias: String,
    schemas: SchemaCache,
    retry: RetryPolicy,
}

/// A finished job: its result and the time spent waiting on providers.
#[derive(Debug)]
pub struct Execution {
    /// The result to publish.
    pub result: JobResult,
    /// Time inside provider calls (for the overhead histogram).
    pub provider_time: Duration,
}

/// Why a job failed before or instead of producing an answer.
struct Failure {
    error: ErrorInfo,
    provider: Option<String>,
    model: Option<String>,
}

impl From<ErrorInfo> for Failure {
    fn from(error: ErrorInfo) -> Self {
        Self {
            error,
            provider: None,
            model: None,
        }
    }
}

/// Attempt bookkeeping shared by the success and failure paths.
#[derive(Default)]
struct Tally {
    attempts: u32,
    usage: Usage,
    provider_time: Duration,
}

impl Pipeline {
    /// Builds every provider client. Fails on a provider that cannot be built.
    pub fn new(config: &Config) -> Result<Self, providers::BuildError> {
        let mut built = BTreeMap::new();
        for (name, provider_config) in &config.providers {
            let provider = providers::build(name, provider_config)?;
            let timeout = Duration::from_millis(provider_config.timeout_ms);
            built.insert(name.clone(), (provider, timeout));
        }
        Ok(Self::with_providers(config, built))
    }

    /// A pipeline over providers built elsewhere (name → provider and default timeout).
    pub fn with_providers(
        config: &Config,
        providers: BTreeMap<String, (Box<dyn Provider>, Duration)>,
    ) -> Self {
        let providers = providers
            .into_iter()
            .map(|(name, (provider, timeout))| (name, ProviderEntry { provider, timeout }))
            .collect();
        Self {
            providers,
            aliases: config.routing.aliases.clone(),
            default_alias: config.routing.default_alias.clone(),
            schemas: SchemaCache::new(SCHEMA_CACHE_CAPACITY),
            retry: RetryPolicy::from_config(&config.worker),
        }
    }

    /// Runs a job to its result. Never fails: every failure is a result with an error.
    pub async fn execute(&self, job: Job, started: Instant) -> Execution {
        let mut tally = Tally::default();
        let outcome = self.run_stages(&job, &mut tally).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut result = JobResult {
            version: ResultVersion::V1,
            job_id: job.id,
            custom_id: job.custom_id,
            batch_id: job.batch_id,
            status: Status::Ok,
            text: None,
            parsed: None,
            content_type: None,
            provider: None,
            model: None,
            usage: tally.usage,
            latency_ms,
            attempts: tally.attempts,
            metadata: job.metadata,
            error: None,
        };
        match outcome {
            Ok(answer) => {
                result.content_type = Some(if answer.parsed.is_some() {
                    ContentType::Json
                } else {
                    ContentType::Text
                });
                result.text = Some(answer.text);
                result.parsed = answer.parsed;
                result.provider = Some(answer.provider);
                result.model = Some(answer.model);
            }
            Err(failure) => {
                result.status = Status::Error;
                result.error = Some(failure.error);
                result.provider = failure.provider;
                result.model = failure.model;
            }
        }
        Execution {
            result,
            provider_time: tally.provider_time,
        }
    }

    async fn run_stages(&self, job: &Job, tally: &mut Tally) -> Result<Answer, Failure> {
        // 1. contract
        job.check()
            .map_err(|e| ErrorInfo::new(ErrorCode::InvalidRequest, e.to_string()))?;
        // 2. deadline
        let deadline = job.deadline_ms.map(deadline_from_epoch_ms);
        if remaining(deadline) == Some(Duration::ZERO) {
            return Err(ErrorInfo::new(
                ErrorCode::DeadlineExceeded,
                "the job's deadline passed before it started",
            )
            .into());
        }
        // 3. schema
        let validator = match &job.json_schema {
            Some(schema) => Some(self.schemas.get(schema).map_err(|InvalidSchema(e)| {
                ErrorInfo::new(
                    ErrorCode::InvalidRequest,
                    format!("json_schema is not a valid JSON Schema: {e}"),
                )
            })?),
            None => None,
        };
        // 4. route
        let alias = job.model.as_deref().unwrap_or(&self.default_alias);
        let route = self.aliases.get(alias).ok_or_else(|| {
            ErrorInfo::new(
                ErrorCode::ModelUnresolved,
                format!("model alias `{alias}` is not configured"),
            )
        })?;
        let entry = self.providers.get(&route.provider).ok_or_else(|| {
            ErrorInfo::new(
                ErrorCode::Internal,
                format!("alias `{alias}` routes to an unknown provider"),
            )
        })?;
        let failure = |error: ErrorInfo| Failure {
            error,
            provider: Some(route.provider.clone()),
            model: Some(route.model.clone()),
        };
        // 5. provider, with retries
        let request = ProviderRequest {
            model: &route.model,
            instructions: job.instructions.as_deref(),
            input: &job.input,
            json_schema: job
                .json_schema
                .as_ref()
                .map(|s| (job.schema_name.as_deref().unwrap_or(DEFAULT_SCHEMA_NAME), s)),
            max_tokens: job.max_tokens,
            temperature: job.temperature,
            stop: job.stop.as_deref(),
            timeout: job.timeout_ms.map_or(entry.timeout, Duration::from_millis),
        };
        let response = self
            .call_with_retry(&route.provider, entry, request, deadline, tally)
            .await
            .map_err(|e| failure(ErrorInfo::new(e.code, e.message)))?;
        // 6. parse and validate
        let parsed = match validator {
            None => None,
            Some(validator) => {
                let value: Value = serde_json::from_str(&response.text).map_err(|e| {
                    failure(ErrorInfo {
                        details: Some(json!({"parse_error": e.to_string()})),
                        ..ErrorInfo::new(ErrorCode::OutputInvalid, "the model's answer is not JSON")
                    })
                })?;
                let found = violations(&validator, &value);
                if !found.is_empty() {
                    return Err(failure(ErrorInfo {
                        details: Some(json!({"violations": found})),
                        ..ErrorInfo::new(
                            ErrorCode::OutputInvalid,
                            format!(
                                "the model's answer does not match the schema ({} violations)",
                                found.len()
                            ),
                        )
                    }));
                }
                Some(value)
            }
        };
        // 7. answer
        Ok(Answer {
            text: response.text,
            parsed,
            provider: route.provider.clone(),
            model: response.model,
        })
    }

    async fn call_with_retry(
        &self,
        provider_name: &str,
        entry: &ProviderEntry,
        mut request: ProviderRequest<'_>,
        deadline: Option<Instant>,
        tally: &mut Tally,
    ) -> Result<ProviderResponse, ProviderError> {
        let per_attempt = request.timeout;
        loop {
            let left = remaining(deadline);
            if left == Some(Duration::ZERO) {
                return Err(ProviderError {
                    code: ErrorCode::DeadlineExceeded,
                    disposition: Disposition::Permanent,
                    message: "the job's deadline passed".into(),
                });
            }
            request.timeout = left.map_or(per_attempt, |l| l.min(per_attempt));
            tally.attempts += 1;
            let began = Instant::now();
            let outcome = entry.provider.call(&request).await;
            let elapsed = began.elapsed();
            tally.provider_time += elapsed;
            let error = match outcome {
                Ok(response) => {
                    telemetry::provider_attempt(
                        provider_name,
                        request.model,
                        "ok",
                        elapsed,
                        Some(response.usage),
                    );
                    tally.usage.add(response.usage);
                    return Ok(response);
                }
                Err(error) => error,
            };
            telemetry::provider_attempt(
                provider_name,
                request.model,
                error.code.as_str(),
                elapsed,
                None,
            );
            let wait = match error.disposition {
                Disposition::Retry { after } => {
                    self.retry.backoff(tally.attempts, after, fastrand::f64())
                }
                // One key per provider for now: a rejected key cannot be rotated away from.
                Disposition::RotateKey | Disposition::Permanent => return Err(error),
            };
            if !self
                .retry
                .may_retry(tally.attempts, wait, remaining(deadline))
            {
                return Err(error);
            }
            tracing::debug!(attempt = tally.attempts, code = %error.code, wait_ms = wait.as_millis() as u64, "retrying provider call");
            tokio::time::sleep(wait).await;
        }
    }
}

struct Answer {
    text: String,
    parsed: Option<Value>,
    provider: String,
    model: String,
}

/// Converts an absolute epoch deadline into a monotonic instant.
fn deadline_from_epoch_ms(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

/// Time left before `deadline`; `Some(ZERO)` once it passed; `None` without a deadline.
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests;
