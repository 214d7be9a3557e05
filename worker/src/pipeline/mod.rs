//! What happens to one decoded job, in this order (DESIGN.md, "The flow of one job"):
//!
//! 1. contract checks the types cannot express (`Job::check`)        → `INVALID_REQUEST`
//!    the plugin's policy: model override, credential profile (field or `model@profile`),
//!    input size, image count, max_tokens ceiling ([`crate::policy`]) → `NOT_AUTHORIZED`
//! 2. deadline                                                        → `DEADLINE_EXCEEDED`
//! 3. compile (or fetch the cached) JSON Schema validator             → `INVALID_REQUEST`
//! 4. route the model alias to its targets (provider/model, fallbacks) → `MODEL_UNRESOLVED`
//! 5. check images: count, size, type, and that a target takes them   → `INVALID_REQUEST`
//! 6. keep the targets the plugin may reach (`allowed_models`, checked on every target that
//!    could be dispatched, fallbacks included) and that have keys of the granted profile
//!    (→ `NOT_AUTHORIZED` / `MODEL_UNRESOLVED`); then for each target in order, while it
//!    answers `MODEL_UNAVAILABLE` the next one is tried:
//!    call the provider, retrying per the error's disposition within the deadline; then
//!    parse and validate the answer, and on failure ask again with the answer and the
//!    validator's errors (the repair loop)                           → `OUTPUT_INVALID`
//! 7. build the result: usage and cost summed over every attempt
//!
//! Decoding and publishing belong to the consumer ([`crate::consumer`]); this module knows
//! nothing of AMQP, so it is tested without a broker (`tests.rs`).

mod cost;

use crate::config::{Config, Target};
use crate::limits::admission::{Admission, Keys, Pool, Refused};
use crate::limits::{Limiter, Quota, Settlement};
use crate::policy::{Aliases, Choice, Policies, Policy};
use crate::providers::{
    self, Disposition, Provider, ProviderError, ProviderRequest, ProviderResponse, Repair,
};
use crate::result_store::{Claim, ClaimGuard, ClaimState};
use crate::retry::RetryPolicy;
use crate::schema_cache::{CompiledSchema, InvalidSchema, SchemaCache, Violation, violations};
use crate::stream::ChunkSink;
use crate::telemetry;
use crate::trace::TraceContext;
use cost::{CostTally, PriceTable};
use jsonschema::Validator;
use quarry_schemas::control::{AliasView, Description, TargetView};
use quarry_schemas::result::{ContentType, ResultVersion};
use quarry_schemas::{
    ErrorCode, ErrorInfo, FinishReason, InputPart, Job, JobResult, ResetReason, Status, Usage,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Distinct schemas whose compiled validators are kept.
const SCHEMA_CACHE_CAPACITY: usize = 1024;
/// Schema name used when the job gives none.
const DEFAULT_SCHEMA_NAME: &str = "extraction";

/// What this version's workers do beyond the first `job.v1`, as `describe` lists it.
const CAPABILITIES: [&str; 10] = [
    "json_mode",
    "targets",
    "agent_id",
    "reasoning",
    "finish_reason",
    "exact_metadata",
    "job_budget",
    "batch_cost",
    "describe",
    "stream",
];

/// The schema of `json_mode` without one: any JSON object.
static ANY_OBJECT: std::sync::LazyLock<quarry_schemas::JsonSchema> =
    std::sync::LazyLock::new(|| quarry_schemas::JsonSchema::from(json!({"type": "object"})));
/// Longest rejected answer quoted in `error.details`.
const MAX_QUOTED_ANSWER: usize = 2000;

/// A configured provider and its default attempt timeout.
struct ProviderEntry {
    provider: Box<dyn Provider>,
    timeout: Duration,
    /// `max_tokens` for a job that sets none.
    default_max_tokens: u32,
    /// The key pool by credential profile.
    keys: BTreeMap<String, Keys>,
}

/// Limits on a job's images.
#[derive(Debug, Clone, Copy)]
struct ImageLimits {
    max_images: usize,
    max_bytes: usize,
}

/// The job pipeline: providers, prices and validators, built once at start; the plugins'
/// policies and the routing table, replaced as a whole by [`Pipeline::reload`].
pub struct Pipeline {
    providers: BTreeMap<String, ProviderEntry>,
    schemas: SchemaCache,
    retry: RetryPolicy,
    repair_attempts: u32,
    /// A job's total time when it sets no deadline.
    job_budget: Duration,
    /// `worker.default_max_tokens`, for `describe`.
    default_max_tokens: u32,
    images: ImageLimits,
    prices: PriceTable,
    admission: Admission,
    /// The current policies: a job takes its plugin's once, when it is identified.
    policies: std::sync::RwLock<Arc<Policies>>,
    max_schema_bytes: usize,
    max_schema_nodes: usize,
}

/// A finished job: how it ended, its result, and the time spent waiting on providers.
#[derive(Debug)]
pub struct Execution {
    /// How the job ended; the consumer maps each outcome to what it publishes
    /// (`consumer/decide.rs`, `next`).
    pub outcome: Outcome,
    /// The job's result: its answer or error. For [`Outcome::RetryLater`] and
    /// [`Outcome::Defer`], the answer the job gets once it may wait no longer; for
    /// [`Outcome::Stopped`], only its ids count (the claim decides the answer).
    pub result: JobResult,
    /// Time inside provider calls (for the overhead histogram).
    pub provider_time: Duration,
    /// The configured model of the target that answered (or failed last), a bounded label.
    pub target_model: Option<String>,
    /// The job's claim, held until its result is stored (`None`: no claim was made, Redis
    /// did not answer it, or it stopped the job).
    pub claim: Option<ClaimGuard>,
}

/// How a job ended. Every way is here: a new one is a new variant, which the consumer's
/// exhaustive `match` must then place.
#[derive(Debug)]
pub enum Outcome {
    /// The job has its result, an answer or an error: it is stored (settling this limiter
    /// reservation in the same round trip) and published.
    Answered(Option<Settlement>),
    /// The claim stopped the job before any provider call.
    Stopped(Stop),
    /// The limits could not be checked (Redis did not answer): nothing was spent, and the job
    /// runs again after the shortest delay.
    RetryLater,
    /// The limits are full for this long, too long to hold the delivery: nothing was spent,
    /// and the job waits in a delay queue (`RATE_LIMITED` once it may wait no longer).
    Defer(Duration),
}

/// What a job's claim found instead of letting it run.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The job finished before: its stored result bytes.
    Stored(Vec<u8>),
    /// Another delivery of the job holds it, for at most this much longer.
    Held(Duration),
    /// The job's batch was cancelled before the job started.
    Cancelled,
}

/// Why a job failed before or instead of producing an answer.
struct Failure {
    error: ErrorInfo,
    target: Option<Target>,
}

impl From<ErrorInfo> for Failure {
    fn from(error: ErrorInfo) -> Self {
        Self {
            error,
            target: None,
        }
    }
}

/// Attempt bookkeeping shared by the success and failure paths.
#[derive(Default)]
struct Tally<'k> {
    /// The job's idempotency claim.
    claim: ClaimState<'k>,
    attempts: u32,
    usage: Usage,
    cost: CostTally,
    provider_time: Duration,
    /// Why the last answer a provider gave ended.
    finish_reason: Option<FinishReason>,
    /// The job ends without spending: the limiter did not answer, or asked for a wait too
    /// long to hold the delivery ([`Outcome::RetryLater`], [`Outcome::Defer`]).
    unspent: Option<Outcome>,
    /// The last successful attempt's reservation, settled with the result's write.
    settlement: Option<Settlement>,
    /// A streaming job's chunks.
    sink: Option<&'k ChunkSink>,
}

impl Tally<'_> {
    /// Settles the last successful attempt's reservation on its own round trip, when the
    /// result's write will not carry it.
    async fn settle_now(&mut self) {
        if let Some(settlement) = self.settlement.take() {
            settlement.now().await;
        }
    }
}

/// One target of the route, as the attempt loop sees it.
struct Leg<'t> {
    target: &'t Target,
    entry: &'t ProviderEntry,
    /// The keys of the granted profile.
    keys: &'t Keys,
    /// The output bound the policy granted.
    max_tokens: u32,
    /// The job's trace: each attempt is a child span of it.
    trace: Option<&'t TraceContext>,
    /// Another target follows: an unavailable model is left at once instead of retried.
    has_fallback: bool,
    /// The publishing plugin.
    plugin: &'t str,
    /// Its quotas.
    quota: &'t Quota,
}

struct Answer {
    text: String,
    parsed: Option<Value>,
    target: Target,
    model: String,
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
            .map(|(name, (provider, timeout))| {
                let keys = Keys::by_profile(&name, config.providers.get(&name));
                let default_max_tokens = config
                    .providers
                    .get(&name)
                    .and_then(|p| p.default_max_tokens)
                    .unwrap_or(config.worker.default_max_tokens);
                (
                    name,
                    ProviderEntry {
                        provider,
                        timeout,
                        default_max_tokens,
                        keys,
                    },
                )
            })
            .collect();
        Self {
            providers,
            schemas: SchemaCache::new(
                SCHEMA_CACHE_CAPACITY,
                u64::try_from(config.worker.schema_cache_bytes).unwrap_or(u64::MAX),
                config.worker.max_schema_nodes,
            ),
            max_schema_bytes: config.worker.max_schema_bytes,
            max_schema_nodes: config.worker.max_schema_nodes,
            retry: RetryPolicy::from_config(&config.worker),
            repair_attempts: config.worker.repair_attempts,
            job_budget: config.worker.job_budget(),
            default_max_tokens: config.worker.default_max_tokens,
            images: ImageLimits {
                max_images: config.worker.max_images,
                max_bytes: config.worker.max_image_bytes,
            },
            prices: PriceTable::new(&config.prices),
            admission: Admission::new(config, None),
            policies: std::sync::RwLock::new(Arc::new(Policies::from_config(config))),
        }
    }

    /// Replaces every plugin's policy and the routing table with `config`'s (its
    /// `[plugins]` and `[routing]`; the rest was fixed at start). Jobs already identified
    /// finish under the policy they started with. The caller has checked `config` against
    /// the providers this pipeline runs ([`crate::reload`]).
    pub fn reload(&self, config: &Config) -> Arc<Policies> {
        let policies = Arc::new(Policies::from_config(config));
        *self
            .policies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policies.clone();
        policies
    }

    /// A plugin that may do anything with the current aliases and any provider, without
    /// quotas (tests, tools).
    pub fn unrestricted(&self, name: &str) -> Policy {
        self.policies().unrestricted(name)
    }

    fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Enforces limits, quotas and the key pool through `limiter` (Redis).
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.admission.set_limiter(limiter);
        self
    }

    /// Refreshes the key-state and remaining-limit gauges of every provider's keys.
    pub async fn report_keys(&self) {
        for (name, entry) in &self.providers {
            for keys in entry.keys.values() {
                self.admission.report(name, keys).await;
            }
        }
    }

    /// The policy of the plugin that published a job (its broker-validated AMQP user), or the
    /// `NOT_AUTHORIZED` error of a job without one or from an unknown plugin.
    pub fn identify(&self, user: Option<&str>) -> Result<Arc<Policy>, ErrorInfo> {
        self.policies().identify(user)
    }

    /// Runs a job of the plugin `policy` belongs to, to its result. Never fails: every
    /// failure is a result with an error.
    pub async fn execute(&self, job: Job, policy: &Policy, started: Instant) -> Execution {
        self.execute_traced(job, policy, started, None).await
    }

    /// [`Pipeline::execute`], continuing the job's trace into every provider request.
    pub async fn execute_traced(
        &self,
        job: Job,
        policy: &Policy,
        started: Instant,
        trace: Option<&TraceContext>,
    ) -> Execution {
        self.execute_claimed(job, policy, started, trace, ClaimState::Unwanted, None)
            .await
    }

    /// [`Pipeline::execute_traced`], claiming the job (`ClaimState::Pending`) before its first
    /// provider call, in the round trip of its first limiter reservation when it has one; a
    /// streaming job's provider calls stream into `sink`.
    pub async fn execute_claimed<'k>(
        &self,
        job: Job,
        policy: &Policy,
        started: Instant,
        trace: Option<&TraceContext>,
        claim: ClaimState<'k>,
        sink: Option<&'k ChunkSink>,
    ) -> Execution {
        let plugin = policy.name.as_str();
        let mut tally = Tally {
            claim,
            sink,
            ..Tally::default()
        };
        let outcome = self
            .run_stages(&job, policy, started, trace, &mut tally)
            .await;
        // A job that ended before any provider call is claimed now (its own round trip), so
        // that a copy delivered twice is answered once, from the store, and counted once.
        if outcome.is_err() {
            tally.claim.make().await;
        }
        // A failed job's last settlement cannot wait for the result's write.
        if outcome.is_err() {
            tally.settle_now().await;
        }
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
            finish_reason: tally.finish_reason,
            usage: tally.usage,
            cost_usd: tally.cost.total(),
            latency_ms,
            queue_ms: None,
            attempts: tally.attempts,
            purpose: job.purpose,
            agent_id: job.agent_id,
            metadata: job.metadata,
            error: None,
        };
        let target = match outcome {
            Ok(answer) => {
                result.content_type = Some(if answer.parsed.is_some() {
                    ContentType::Json
                } else {
                    ContentType::Text
                });
                result.text = Some(answer.text);
                result.parsed = answer.parsed;
                result.provider = Some(answer.target.provider.clone());
                result.model = Some(answer.model);
                Some(answer.target)
            }
            Err(failure) => {
                result.status = Status::Error;
                result.error = Some(failure.error);
                result.provider = failure.target.as_ref().map(|t| t.provider.clone());
                result.model = failure.target.as_ref().map(|t| t.model.clone());
                failure.target
            }
        };
        if let (Some(cost), Some(target)) = (result.cost_usd, &target) {
            telemetry::cost(plugin, &target.provider, &target.model, cost);
        }
        let (claim, stopped) = match tally.claim {
            ClaimState::Held(guard) => (guard, None),
            ClaimState::Stopped(Claim::Stored(bytes)) => (None, Some(Stop::Stored(bytes))),
            ClaimState::Stopped(Claim::Held(left)) => (None, Some(Stop::Held(left))),
            ClaimState::Stopped(Claim::Cancelled) => (None, Some(Stop::Cancelled)),
            ClaimState::Stopped(Claim::Claimed(guard)) => (Some(guard), None),
            ClaimState::Unwanted | ClaimState::Pending(..) => (None, None),
        };
        // In this order: a stopped job spent nothing and is answered from its claim; a job
        // the limiter could not check or that must wait spent nothing either.
        let outcome = match (stopped, tally.unspent) {
            (Some(stop), _) => Outcome::Stopped(stop),
            (None, Some(unspent)) => unspent,
            (None, None) => Outcome::Answered(tally.settlement),
        };
        Execution {
            outcome,
            result,
            provider_time: tally.provider_time,
            target_model: target.map(|t| t.model),
            claim,
        }
    }

    async fn run_stages(
        &self,
        job: &Job,
        policy: &Policy,
        started: Instant,
        trace: Option<&TraceContext>,
        tally: &mut Tally<'_>,
    ) -> Result<Answer, Failure> {
        // 1. contract, then the plugin's policy
        job.check()
            .map_err(|e| ErrorInfo::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let grant = policy
            .admit(job)
            .inspect_err(|error| telemetry::policy_refusal(&policy.name, error))?;
        // 2. deadline: the job's own, else the fleet's budget from its start
        let deadline = job.deadline_ms.map(deadline_from_epoch_ms);
        let bounds = Bounds {
            deadline,
            until: deadline.unwrap_or(started + self.job_budget),
            budget: self.job_budget,
        };
        if remaining(deadline) == Some(Duration::ZERO) {
            return Err(ErrorInfo::new(
                ErrorCode::DeadlineExceeded,
                "the job's deadline passed before it started",
            )
            .into());
        }
        // 3. schema
        let compiled = match &job.json_schema {
            Some(schema) if schema.as_str().len() > self.max_schema_bytes => {
                return Err(ErrorInfo::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "json_schema is {} bytes; this fleet takes schemas of at most {} \
                         (worker.max_schema_bytes)",
                        schema.as_str().len(),
                        self.max_schema_bytes
                    ),
                )
                .into());
            }
            Some(schema) => Some(self.schemas.get_off_thread(schema).await.map_err(
                |InvalidSchema(e)| {
                    ErrorInfo::new(
                        ErrorCode::InvalidRequest,
                        format!("json_schema is not a valid JSON Schema: {e}"),
                    )
                },
            )?),
            // JSON mode without a schema: any object (compiled once, then cached).
            None if job.json_mode() => Some(
                self.schemas
                    .get_off_thread(&ANY_OBJECT)
                    .await
                    .map_err(|InvalidSchema(e)| ErrorInfo::new(ErrorCode::Internal, e))?,
            ),
            None => None,
        };
        // 4. route: an alias's targets, or the one target the job named
        let named;
        let targets: &[Target] = match &grant.choice {
            Choice::Alias(alias) => policy.aliases().get(alias).ok_or_else(|| {
                ErrorInfo::new(
                    ErrorCode::ModelUnresolved,
                    format!("model alias `{alias}` is not configured"),
                )
            })?,
            Choice::Target { provider, model } => {
                if !self.providers.contains_key(provider) {
                    return Err(ErrorInfo::new(
                        ErrorCode::ModelUnresolved,
                        format!("`{provider}` is not a configured provider"),
                    )
                    .into());
                }
                named = [target_named(policy.aliases(), provider, model)];
                &named
            }
        };
        let alias = grant.choice.name();
        let alias = alias.as_str();
        // 5. images
        let targets = self.image_capable(job, alias, targets)?;
        // 6. the targets this plugin may reach with its profile's keys, in order, each with
        //    retries and repairs
        let (denied, reachable): (Vec<&Target>, Vec<&Target>) =
            targets.into_iter().partition(|t| !policy.allows(t));
        let legs: Vec<(&Target, &ProviderEntry, &Keys)> = reachable
            .into_iter()
            .filter_map(|target| {
                let entry = self.providers.get(&target.provider)?;
                let keys = entry.keys.get(&grant.profile)?;
                Some((target, entry, keys))
            })
            .collect();
        if legs.is_empty() {
            if !denied.is_empty() {
                let error = policy.no_allowed_target(alias, &denied);
                telemetry::policy_refusal(&policy.name, &error);
                return Err(error.into());
            }
            return Err(ErrorInfo::new(
                ErrorCode::ModelUnresolved,
                format!(
                    "model alias `{alias}` routes to no provider with a key of credential profile `{}`",
                    grant.profile
                ),
            )
            .into());
        }
        let mut last = None;
        for (i, &(target, entry, keys)) in legs.iter().enumerate() {
            let leg = Leg {
                target,
                entry,
                keys,
                // The job's bound, else the provider's default within the plugin's ceiling.
                max_tokens: grant.max_tokens.unwrap_or_else(|| {
                    entry
                        .default_max_tokens
                        .min(grant.ceiling.unwrap_or(u32::MAX))
                }),
                trace,
                has_fallback: i + 1 < legs.len(),
                plugin: &policy.name,
                quota: &policy.quota,
            };
            match self
                .on_target(job, &leg, compiled.as_deref(), bounds, tally)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(failure) if failure.error.code == ErrorCode::ModelUnavailable => {
                    telemetry::fallback(&target.provider, &target.model);
                    tracing::info!(provider = %target.provider, model = %target.model, "model unavailable; trying the next target");
                    last = Some(failure);
                }
                Err(failure) => return Err(failure),
            }
        }
        Err(last.unwrap_or_else(|| ErrorInfo::new(ErrorCode::ModelUnavailable, "no target").into()))
    }

    /// The caller's own view of the fleet (a `describe` control request): what it may run
    /// on, its defaults, profiles and quotas with what is left of them.
    pub async fn describe(&self, policy: &Policy) -> Description {
        let view = |t: &Target| TargetView {
            provider: t.provider.clone(),
            model: t.model.clone(),
            images: t.images,
        };
        let aliases = policy
            .aliases()
            .iter()
            .filter(|(name, _)| policy.model_override() || *name == policy.default_alias())
            .map(|(name, targets)| AliasView {
                name: name.clone(),
                targets: targets
                    .iter()
                    .filter(|t| policy.allows(t))
                    .map(view)
                    .collect(),
            })
            .filter(|alias| !alias.targets.is_empty())
            .collect();
        let targets = policy
            .nameable_targets()
            .into_iter()
            .filter(|(provider, _)| self.providers.contains_key(*provider))
            .map(|(provider, model)| view(&target_named(policy.aliases(), provider, model)))
            .collect();
        let (default_profile, profiles) = policy.profiles();
        Description {
            contract: ["job.v1", "result.v1", "control.v1"]
                .map(str::to_owned)
                .to_vec(),
            capabilities: CAPABILITIES.map(str::to_owned).to_vec(),
            plugin: policy.name.clone(),
            default_model: policy.default_alias().to_owned(),
            model_override: policy.model_override(),
            aliases,
            targets,
            default_profile: default_profile.to_owned(),
            profiles: profiles.map(str::to_owned).collect(),
            agent_id_override: policy.agent_id_override(),
            max_tokens_ceiling: policy.max_tokens_ceiling(),
            default_max_tokens: self.default_max_tokens,
            job_budget_ms: u64::try_from(self.job_budget.as_millis()).unwrap_or(u64::MAX),
            quotas: self.admission.quotas(&policy.quota).await,
        }
    }

    /// The alias's targets that can take the job's images; `INVALID_REQUEST` when the images
    /// break the limits or no target takes them.
    fn image_capable<'t>(
        &self,
        job: &Job,
        alias: &str,
        targets: &'t [Target],
    ) -> Result<Vec<&'t Target>, ErrorInfo> {
        let images: Vec<_> = job
            .input
            .iter()
            .filter_map(|p| match p {
                InputPart::Image(image) => Some(image),
                InputPart::Text { .. } => None,
            })
            .collect();
        if images.is_empty() {
            return Ok(targets.iter().collect());
        }
        let invalid = |message: String| ErrorInfo::new(ErrorCode::InvalidRequest, message);
        if images.len() > self.images.max_images {
            return Err(invalid(format!(
                "{} images; at most {} are allowed",
                images.len(),
                self.images.max_images
            )));
        }
        for (i, image) in images.iter().enumerate() {
            let bytes = decoded_len(&image.data);
            if bytes > self.images.max_bytes {
                return Err(invalid(format!(
                    "image {i} is {bytes} bytes; at most {} are allowed",
                    self.images.max_bytes
                )));
            }
        }
        let capable: Vec<&Target> = targets
            .iter()
            .filter(|t| {
                t.images
                    && self.providers.get(&t.provider).is_some_and(|entry| {
                        images
                            .iter()
                            .all(|image| entry.provider.image_mimes().contains(&image.mime))
                    })
            })
            .collect();
        if capable.is_empty() {
            let mimes: Vec<&str> = images.iter().map(|i| i.mime.as_str()).collect();
            return Err(invalid(format!(
                "model alias `{alias}` routes to no model that accepts these images ({})",
                mimes.join(", ")
            )));
        }
        Ok(capable)
    }

    /// One target: provider calls with retries, then validation with repairs.
    async fn on_target(
        &self,
        job: &Job,
        leg: &Leg<'_>,
        schema: Option<&CompiledSchema>,
        bounds: Bounds,
        tally: &mut Tally<'_>,
    ) -> Result<Answer, Failure> {
        let (target, entry) = (leg.target, leg.entry);
        let failure = |error: ErrorInfo| Failure {
            error,
            target: Some(target.clone()),
        };
        // Providers name schemas and tools with letters, digits, `_` and `-` only; the
        // contract also takes `.` (`receipt.evidence`).
        let wire_name = job
            .schema_name
            .as_deref()
            .unwrap_or(DEFAULT_SCHEMA_NAME)
            .replace('.', "_");
        let mut repairs: Vec<Repair> = Vec::new();
        loop {
            let request = ProviderRequest {
                model: &target.model,
                instructions: job.instructions.as_deref(),
                input: &job.input,
                json_schema: schema.map(|c| (wire_name.as_str(), &c.tree)),
                schema_text: schema.map(|c| c.text.as_raw()),
                max_tokens: leg.max_tokens,
                temperature: job.temperature,
                reasoning: job.reasoning,
                stop: job.stop.as_deref(),
                timeout: job.timeout_ms.map_or(entry.timeout, Duration::from_millis),
                api_key: None,
                repairs: &repairs,
                any_object: job.json_schema.is_none() && job.json_mode(),
                trace: None,
                max_schema_nodes: self.max_schema_nodes,
                sink: tally.sink,
            };
            let response = self
                .call_with_retry(leg, request, bounds, tally)
                .await
                .map_err(|e| failure(ErrorInfo::new(e.code, e.message)))?;
            if let Some(sink) = tally.sink {
                sink.settle(&response.text);
            }
            let Some(validator) = schema.map(|c| &c.validator) else {
                return Ok(Answer {
                    text: response.text,
                    parsed: None,
                    target: target.clone(),
                    model: response.model,
                });
            };
            let (problem, details) = match check_answer(validator, &response.text) {
                Ok(parsed) => {
                    if !repairs.is_empty() {
                        telemetry::repair(&target.provider, &target.model, "repaired");
                    }
                    return Ok(Answer {
                        text: response.text,
                        parsed: Some(parsed),
                        target: target.clone(),
                        model: response.model,
                    });
                }
                Err(rejected) => rejected,
            };
            let repairs_done = u32::try_from(repairs.len()).unwrap_or(u32::MAX);
            if repairs_done >= self.repair_attempts || bounds.left().is_zero() {
                if repairs_done > 0 {
                    telemetry::repair(&target.provider, &target.model, "gave_up");
                }
                let mut details = details;
                details["answer"] =
                    json!(providers::http::truncate(&response.text, MAX_QUOTED_ANSWER));
                details["repair_attempts"] = json!(repairs_done);
                return Err(failure(ErrorInfo {
                    details: Some(details),
                    ..ErrorInfo::new(
                        ErrorCode::OutputInvalid,
                        format!("the model's answer is invalid: {problem}"),
                    )
                }));
            }
            tracing::debug!(problem = %problem, "answer invalid; asking for a repair");
            if let Some(sink) = tally.sink {
                sink.reset(ResetReason::Repair);
            }
            repairs.push(Repair {
                answer: response.text,
                problem,
            });
        }
    }

    async fn call_with_retry(
        &self,
        leg: &Leg<'_>,
        mut request: ProviderRequest<'_>,
        bounds: Bounds,
        tally: &mut Tally<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        let (target, entry) = (leg.target, leg.entry);
        let per_attempt = request.timeout;
        let mut attempts_here = 0u32;
        // Keys whose credential was refused during this job: the next attempt uses another.
        let mut refused_keys: Vec<usize> = Vec::new();
        loop {
            let left = bounds.left();
            if left.is_zero() {
                return Err(bounds.exceeded());
            }
            if tally.claim.cancellation().is_some_and(|c| c.is_cancelled()) {
                return Err(cancelled_in_flight());
            }
            request.timeout = left.min(per_attempt);
            // An earlier success (answer then rejected: a repair follows) settles now.
            tally.settle_now().await;
            let mut admitted = match self
                .admission
                .admit(
                    &Pool {
                        provider: &target.provider,
                        keys: leg.keys,
                        refused: &refused_keys,
                    },
                    leg.quota,
                    &request,
                    // Only the job's own deadline stops it waiting in a delay queue; the
                    // budget bounds the work of one run.
                    bounds.deadline,
                    &mut tally.claim,
                )
                .await
            {
                Ok(admitted) => {
                    // No reservation carried the claim (the limits did not need one), so
                    // there is nothing to hand back if it stops the job.
                    tally.claim.make().await;
                    if tally.claim.stopped() {
                        return Err(stopped_by_claim());
                    }
                    admitted
                }
                Err(Refused::Claimed) => return Err(stopped_by_claim()),
                Err(Refused::Job(error)) => return Err(error),
                Err(Refused::Defer(wait, error)) => {
                    // Only a job that spent nothing yet is worth re-running later.
                    if tally.attempts == 0 {
                        tally.unspent = Some(Outcome::Defer(wait));
                    }
                    return Err(error);
                }
                Err(Refused::Unavailable) => {
                    tally.unspent = Some(Outcome::RetryLater);
                    return Err(ProviderError::retry(
                        ErrorCode::Internal,
                        None,
                        "the limits could not be checked (Redis did not answer)",
                    ));
                }
            };
            request.api_key = leg
                .keys
                .keys
                .get(admitted.key)
                .and_then(|k| k.secret.as_ref());
            request.trace = leg.trace.map(|t| (t.child(), t.state.as_deref()));
            tally.attempts += 1;
            attempts_here += 1;
            let began = Instant::now();
            // A job cancelled while its call is in flight: the call is dropped. (The claim
            // is made by now: with the first reservation, or just after admission.)
            let outcome = match &tally.claim.cancellation() {
                Some(cancelled) => tokio::select! {
                    biased;
                    () = cancelled.cancelled() => {
                        if let Some(sink) = tally.sink {
                            sink.stop();
                        }
                        Err(cancelled_in_flight())
                    }
                    outcome = entry.provider.call(&request) => outcome,
                },
                None => entry.provider.call(&request).await,
            };
            let elapsed = began.elapsed();
            tally.provider_time += elapsed;
            let error = match outcome {
                Ok(response) => {
                    if let Some(key) = leg.keys.keys.get(admitted.key) {
                        key.auth_failures
                            .store(0, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Settled with the result's write, or before a repair.
                    tally.settlement = self.admission.settlement(
                        &target.provider,
                        &mut admitted,
                        Some(response.usage.total_tokens),
                    );
                    telemetry::provider_attempt(
                        leg.plugin,
                        &target.provider,
                        &target.model,
                        "ok",
                        elapsed,
                        Some(response.usage),
                    );
                    tally.usage.add(response.usage);
                    tally.finish_reason = Some(response.finish_reason);
                    tally.cost.add(self.prices.cost(
                        &target.provider,
                        &target.model,
                        response.usage,
                    ));
                    return Ok(response);
                }
                Err(error) => error,
            };
            // What the failed attempt streamed is void: the next one starts over.
            if let Some(sink) = tally.sink {
                sink.reset(ResetReason::Retry);
            }
            // The provider bills attempts that fail (timeouts, refusals, broken answers) and
            // reported nothing here: the attempt keeps what it reserved.
            if let Some(settlement) =
                self.admission
                    .settlement(&target.provider, &mut admitted, None)
            {
                settlement.now().await;
            }
            self.admission
                .after_failure(&target.provider, leg.keys, &admitted, &error)
                .await;
            telemetry::provider_attempt(
                leg.plugin,
                &target.provider,
                &target.model,
                error.code.as_str(),
                elapsed,
                None,
            );
            // A call cut short by the job's deadline or budget is not a provider timeout.
            if error.code == ErrorCode::Timeout && bounds.left().is_zero() {
                return Err(bounds.exceeded());
            }
            if error.code == ErrorCode::ModelUnavailable && leg.has_fallback {
                return Err(error);
            }
            // Another key may serve at once: the rejected one is not offered this job again.
            if error.disposition == Disposition::RotateKey && leg.keys.keys.len() > 1 {
                if refused_keys.len() + 1 < leg.keys.keys.len() {
                    refused_keys.push(admitted.key);
                    attempts_here -= 1;
                    continue;
                }
                return Err(ProviderError::permanent(
                    ErrorCode::CredentialsExhausted,
                    format!(
                        "every key of `{}` refused this job's credentials",
                        target.provider
                    ),
                ));
            }
            let wait = match error.disposition {
                Disposition::Retry { after } => {
                    self.retry.backoff(attempts_here, after, fastrand::f64())
                }
                Disposition::RotateKey | Disposition::Permanent => return Err(error),
            };
            if !self
                .retry
                .may_retry(attempts_here, wait, Some(bounds.left()))
            {
                return Err(error);
            }
            telemetry::retry(&target.provider, &target.model, error.code);
            tracing::debug!(
                attempt = attempts_here,
                code = %error.code,
                wait_ms = wait.as_millis() as u64,
                "retrying provider call"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// A job cancelled (`cancel_job`) while this delivery held it.
fn cancelled_in_flight() -> ProviderError {
    ProviderError::permanent(
        ErrorCode::Cancelled,
        "the job was cancelled while in flight; its provider call was dropped",
    )
}

/// The error that ends the attempt loop of a job its claim stopped (never reported: the job
/// is answered from what the claim found).
fn stopped_by_claim() -> ProviderError {
    ProviderError::permanent(
        ErrorCode::Internal,
        "the job's claim stopped it before a provider call",
    )
}

/// Parses an answer and checks it against its schema: the value, or a summary of what is wrong
/// and its details (the parse error, or the violations).
pub fn check_answer(validator: &Validator, text: &str) -> Result<Value, (String, Value)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            format!("it is not JSON ({e})"),
            json!({"parse_error": e.to_string()}),
        )
    })?;
    let found: Vec<Violation> = violations(validator, &value);
    if found.is_empty() {
        return Ok(value);
    }
    let summary: Vec<String> = found
        .iter()
        .map(|v| {
            format!(
                "at `{}`: {}",
                if v.path.is_empty() { "/" } else { &v.path },
                v.message
            )
        })
        .collect();
    Err((
        format!("it does not match the schema: {}", summary.join("; ")),
        json!({"violations": found}),
    ))
}

/// Decoded size of standard padded base64.
pub(crate) fn decoded_len(data: &str) -> usize {
    let padding = data
        .bytes()
        .rev()
        .take(2)
        .take_while(|&b| b == b'=')
        .count();
    (data.len() / 4 * 3).saturating_sub(padding)
}

/// How long a job may work: until its own deadline, else for the fleet's budget from its
/// start.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The job's own deadline (`deadline_ms`).
    deadline: Option<Instant>,
    /// When its work must end: the deadline, or its start plus the budget.
    until: Instant,
    /// The fleet's budget (`worker.job_budget_ms`), for the error text.
    budget: Duration,
}

impl Bounds {
    /// Time left.
    fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// The error of a job out of time.
    fn exceeded(&self) -> ProviderError {
        let message = match self.deadline {
            Some(_) => "the job's deadline passed".to_owned(),
            None => format!(
                "the job's time budget of {} ms ran out (worker.job_budget_ms; set deadline_ms \
                 for another)",
                self.budget.as_millis()
            ),
        };
        ProviderError::permanent(ErrorCode::DeadlineExceeded, message)
    }
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

/// A target a job names: whether it takes images is what an alias routing to it says (it
/// does, unless one says it does not).
fn target_named(aliases: &Aliases, provider: &str, model: &str) -> Target {
    let images = aliases
        .values()
        .flatten()
        .filter(|t| t.provider == provider && t.model == model)
        .all(|t| t.images);
    Target {
        provider: provider.to_owned(),
        model: model.to_owned(),
        images,
    }
}
