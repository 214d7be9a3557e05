//! Logs and metrics: every metric name is defined here, described once, and recorded through
//! the functions below (one per event), so names, units and labels stay consistent.
//!
//! Labels are bounded: lane, provider (configured name), model (configured id), outcome (`ok`
//! or an error code), dead-letter reason. Never a job id, never a secret.

use crate::config::{LogConfig, LogFormat};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quarry_schemas::Usage;
use quarry_schemas::wire::Lane;
use std::sync::OnceLock;
use std::time::Duration;

/// Jobs finished, by lane, plugin, model and outcome (`ok` or the error code).
pub const JOBS_TOTAL: &str = "quarry_jobs_total";
/// Time from decode to confirmed result, by lane.
pub const JOB_DURATION: &str = "quarry_job_duration_seconds";
/// Time from the producer's publish (the SDK's `x-quarry-published-ms` header) to the
/// confirmed result, by lane: queueing included. Across machines it carries their clock skew.
pub const END_TO_END: &str = "quarry_job_end_to_end_seconds";
/// Provider attempts that were retried, by provider, model and the failed attempt's code.
pub const RETRIES_TOTAL: &str = "quarry_provider_retries_total";
/// Duration of one Redis round trip, by operation.
pub const REDIS_DURATION: &str = "quarry_redis_operation_duration_seconds";
/// Duration of one AMQP operation awaited by a job (publish until confirmed, ack, nack), by
/// operation.
pub const AMQP_DURATION: &str = "quarry_amqp_operation_duration_seconds";
/// AMQP operations that failed (refused, unconfirmed, connection lost), by operation.
pub const AMQP_ERRORS_TOTAL: &str = "quarry_amqp_errors_total";
/// Broker sessions replaced after a lost connection.
pub const RECONNECTIONS_TOTAL: &str = "quarry_amqp_reconnections_total";
/// The worker's own time per job: job time minus provider time.
pub const OVERHEAD: &str = "quarry_worker_overhead_seconds";
/// Jobs being processed now.
pub const IN_FLIGHT: &str = "quarry_jobs_in_flight";
/// Provider attempts, by provider, model and outcome.
pub const PROVIDER_REQUESTS_TOTAL: &str = "quarry_provider_requests_total";
/// Duration of one provider attempt, by provider and model.
pub const PROVIDER_DURATION: &str = "quarry_provider_request_duration_seconds";
/// Tokens, by plugin, provider, model and direction (`input`, `output`).
pub const TOKENS_TOTAL: &str = "quarry_tokens_total";
/// Messages the worker dead-lettered, by reason.
pub const DEAD_LETTERS_TOTAL: &str = "quarry_dead_letters_total";
/// Redelivered jobs answered from the result store without a provider call.
pub const REPLAYS_TOTAL: &str = "quarry_result_replays_total";
/// Redis operations that failed, by operation.
pub const REDIS_ERRORS_TOTAL: &str = "quarry_redis_errors_total";
/// Repair loops that ended, by provider, model and outcome (`repaired`, `gave_up`).
pub const REPAIRS_TOTAL: &str = "quarry_repairs_total";
/// Targets abandoned for the next one because the model was unavailable.
pub const FALLBACKS_TOTAL: &str = "quarry_fallbacks_total";
/// Limiter decisions, by provider and decision (`granted`, `rejected`, `exhausted`,
/// `budget`, `unavailable`).
pub const LIMITER_DECISIONS_TOTAL: &str = "quarry_limiter_decisions_total";
/// Time spent waiting for a limit inside the worker, by provider.
pub const LIMITER_WAIT: &str = "quarry_limiter_wait_seconds";
/// Tokens reserved before calls (estimates), by provider.
pub const TOKENS_RESERVED_TOTAL: &str = "quarry_limiter_reserved_tokens_total";
/// Tokens the reservations turned out to use, by provider.
pub const TOKENS_ACTUAL_TOTAL: &str = "quarry_limiter_actual_tokens_total";
/// Keys cooled down after a 429, by provider and key name.
pub const KEY_COOLDOWNS_TOTAL: &str = "quarry_key_cooldowns_total";
/// Keys taken out of rotation after the provider rejected them (alert on it), by provider,
/// key name and code.
pub const KEY_DISABLED_TOTAL: &str = "quarry_key_disabled_total";
/// Jobs sent to a delay queue because their limits were full for long, by lane and delay.
pub const DEFERRED_TOTAL: &str = "quarry_jobs_deferred_total";
/// Each key's state: 1 for its current state (`available`, `cooling`, `disabled`), 0 for the
/// others, by provider and key name.
pub const KEY_STATE: &str = "quarry_key_state";
/// What is left of a key's per-minute limits now, by provider, key name and unit.
pub const KEY_REMAINING: &str = "quarry_key_remaining";
/// Redis round trips, by operation (a pipeline is one).
pub const REDIS_ROUND_TRIPS_TOTAL: &str = "quarry_redis_round_trips_total";
/// Deliveries of a job that another delivery was already running (deferred, not started).
pub const CLAIM_CONFLICTS_TOTAL: &str = "quarry_claim_conflicts_total";
/// Jobs refused by identity or a plugin's policy, by plugin (`unknown` for an unknown
/// publisher) and rule (`identity`, `profiles`, `model_override`, `allowed_models`,
/// `max_input_bytes`, `max_images`, `max_tokens`).
pub const POLICY_REFUSALS_TOTAL: &str = "quarry_policy_refusals_total";
/// Batches cancelled through the control queue.
pub const BATCHES_CANCELLED_TOTAL: &str = "quarry_batches_cancelled_total";
/// Jobs that expired in their queue (AMQP `expiration`) and were answered `DEADLINE_EXCEEDED`.
pub const JOBS_EXPIRED_TOTAL: &str = "quarry_jobs_expired_total";
/// Cost of each job in US dollars, by plugin, provider and model (the sum is the spend).
pub const COST: &str = "quarry_job_cost_usd";
/// Configuration reloads (`SIGHUP` or the watched file), by outcome: `applied`, `rejected`.
pub const CONFIG_RELOADS_TOTAL: &str = "quarry_config_reloads_total";
/// 1 when the last reload applied (or none was tried), 0 when it was rejected.
pub const CONFIG_LAST_RELOAD_OK: &str = "quarry_config_last_reload_successful";
/// A streaming job's time to its first chunk: from the job's start in the worker to the
/// first chunk's publish confirm.
pub const STREAM_FIRST_CHUNK: &str = "quarry_stream_first_chunk_seconds";
/// The worker's added latency to a streaming job's first chunk: from the provider's first
/// delta to that chunk's publish confirm.
pub const STREAM_FIRST_CHUNK_ADDED: &str = "quarry_stream_first_chunk_added_seconds";
/// Chunks published per streaming job (resets included).
pub const STREAM_CHUNKS: &str = "quarry_stream_chunks";
/// Delta text bytes published per streaming job.
pub const STREAM_BYTES: &str = "quarry_stream_bytes";
/// Reset chunks published, by reason (`retry`, `repair`, `redelivered`, `rewritten`).
pub const STREAM_RESETS_TOTAL: &str = "quarry_stream_resets_total";

/// Every metric the worker exports, with its type: the reference `docs/metrics.md` and the
/// Grafana dashboard are checked against this list.
pub const METRICS: [(&str, &str); 40] = [
    (JOBS_TOTAL, "counter"),
    (JOB_DURATION, "histogram"),
    (END_TO_END, "histogram"),
    (OVERHEAD, "histogram"),
    (IN_FLIGHT, "gauge"),
    (PROVIDER_REQUESTS_TOTAL, "counter"),
    (PROVIDER_DURATION, "histogram"),
    (RETRIES_TOTAL, "counter"),
    (REPAIRS_TOTAL, "counter"),
    (FALLBACKS_TOTAL, "counter"),
    (TOKENS_TOTAL, "counter"),
    (COST, "histogram"),
    (DEAD_LETTERS_TOTAL, "counter"),
    (REPLAYS_TOTAL, "counter"),
    (CLAIM_CONFLICTS_TOTAL, "counter"),
    (POLICY_REFUSALS_TOTAL, "counter"),
    (BATCHES_CANCELLED_TOTAL, "counter"),
    (JOBS_EXPIRED_TOTAL, "counter"),
    (DEFERRED_TOTAL, "counter"),
    (LIMITER_DECISIONS_TOTAL, "counter"),
    (LIMITER_WAIT, "histogram"),
    (TOKENS_RESERVED_TOTAL, "counter"),
    (TOKENS_ACTUAL_TOTAL, "counter"),
    (KEY_COOLDOWNS_TOTAL, "counter"),
    (KEY_DISABLED_TOTAL, "counter"),
    (KEY_STATE, "gauge"),
    (KEY_REMAINING, "gauge"),
    (REDIS_ROUND_TRIPS_TOTAL, "counter"),
    (REDIS_DURATION, "histogram"),
    (REDIS_ERRORS_TOTAL, "counter"),
    (AMQP_DURATION, "histogram"),
    (AMQP_ERRORS_TOTAL, "counter"),
    (RECONNECTIONS_TOTAL, "counter"),
    (CONFIG_RELOADS_TOTAL, "counter"),
    (CONFIG_LAST_RELOAD_OK, "gauge"),
    (STREAM_FIRST_CHUNK, "histogram"),
    (STREAM_FIRST_CHUNK_ADDED, "histogram"),
    (STREAM_CHUNKS, "histogram"),
    (STREAM_BYTES, "histogram"),
    (STREAM_RESETS_TOTAL, "counter"),
];

const COST_BUCKETS: [f64; 8] = [0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0];

const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];
/// Sub-millisecond resolution for the worker's own time and its Redis and AMQP operations,
/// where p99 targets sit below 1 ms.
const FINE_BUCKETS: [f64; 24] = [
    0.000025, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.0004, 0.0005, 0.0006,
    0.00075, 0.0009, 0.001, 0.0015, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The added latency to a first chunk, whose target is p99 < 5 ms: 1 ms steps up to 10 ms
/// (5 ms a bound, so the share within it is exact).
const FIRST_CHUNK_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007,
    0.008, 0.009, 0.01, 0.015, 0.025, 0.05, 0.1, 1.0,
];
/// Chunks per streaming job.
const COUNT_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// Streamed text per job.
const BYTES_BUCKETS: [f64; 9] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> anyhow::Result<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(OVERHEAD.to_owned()), &FINE_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REDIS_DURATION.to_owned()),
                        &FINE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(AMQP_DURATION.to_owned()), &FINE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STREAM_FIRST_CHUNK_ADDED.to_owned()),
                        &FIRST_CHUNK_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STREAM_CHUNKS.to_owned()),
                        &COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(STREAM_BYTES.to_owned()), &BYTES_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".to_owned()),
                        &SECONDS_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(COST.to_owned()), &COST_BUCKETS)
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

fn describe() {
    describe_counter!(
        JOBS_TOTAL,
        Unit::Count,
        "Jobs finished, by lane and outcome (ok or error code)."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Time from decoding a job to its confirmed result."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "The worker's own time per job: job time minus provider time."
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "Jobs being processed now.");
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "Time from the producer's publish to the confirmed result (queueing included)."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Provider attempts retried, by provider, model and the failed attempt's code."
    );
    describe_histogram!(
        REDIS_DURATION,
        Unit::Seconds,
        "Duration of one Redis round trip, by operation."
    );
    describe_histogram!(
        AMQP_DURATION,
        Unit::Seconds,
        "Duration of one AMQP operation (publish until confirmed, ack, nack), by operation."
    );
    describe_counter!(
        AMQP_ERRORS_TOTAL,
        Unit::Count,
        "AMQP operations that failed, by operation."
    );
    describe_counter!(
        RECONNECTIONS_TOTAL,
        Unit::Count,
        "Broker sessions replaced after a lost connection."
    );
    describe_counter!(
        REDIS_ROUND_TRIPS_TOTAL,
        Unit::Count,
        "Redis round trips, by operation (a pipeline or script is one)."
    );
    describe_counter!(
        DEFERRED_TOTAL,
        Unit::Count,
        "Jobs sent to a delay queue, by lane and delay."
    );
    describe_gauge!(
        KEY_STATE,
        Unit::Count,
        "1 for each key's current state (available, cooling, disabled), 0 for the others."
    );
    describe_gauge!(
        KEY_REMAINING,
        Unit::Count,
        "What is left of each key's per-minute limits now, by unit."
    );
    describe_counter!(
        POLICY_REFUSALS_TOTAL,
        Unit::Count,
        "Jobs refused by identity or a plugin's policy, by plugin and rule."
    );
    describe_counter!(
        BATCHES_CANCELLED_TOTAL,
        Unit::Count,
        "Batches cancelled through the control queue."
    );
    describe_counter!(
        JOBS_EXPIRED_TOTAL,
        Unit::Count,
        "Jobs that expired in their queue and were answered DEADLINE_EXCEEDED."
    );
    describe_counter!(
        CLAIM_CONFLICTS_TOTAL,
        Unit::Count,
        "Deliveries of a job already running elsewhere, deferred instead of started, by lane."
    );
    describe_counter!(
        PROVIDER_REQUESTS_TOTAL,
        Unit::Count,
        "Provider attempts, by provider, model and outcome."
    );
    describe_histogram!(
        PROVIDER_DURATION,
        Unit::Seconds,
        "Duration of one provider attempt."
    );
    describe_counter!(
        TOKENS_TOTAL,
        Unit::Count,
        "Tokens by plugin, provider, model and direction."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Messages the worker dead-lettered, by reason."
    );
    describe_counter!(
        REPLAYS_TOTAL,
        Unit::Count,
        "Redelivered jobs answered from the result store."
    );
    describe_counter!(
        REPAIRS_TOTAL,
        Unit::Count,
        "Repair loops that ended, by outcome."
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        Unit::Count,
        "Targets abandoned because the model was unavailable."
    );
    describe_histogram!(
        COST,
        "Cost of each job in US dollars, by plugin, provider and model."
    );
    describe_counter!(
        LIMITER_DECISIONS_TOTAL,
        Unit::Count,
        "Limiter decisions by provider and decision."
    );
    describe_histogram!(
        LIMITER_WAIT,
        Unit::Seconds,
        "Time waiting for a limit inside the worker."
    );
    describe_counter!(
        TOKENS_RESERVED_TOTAL,
        Unit::Count,
        "Tokens reserved before calls (estimates)."
    );
    describe_counter!(
        TOKENS_ACTUAL_TOTAL,
        Unit::Count,
        "Tokens the reserved calls used."
    );
    describe_counter!(
        KEY_COOLDOWNS_TOTAL,
        Unit::Count,
        "Keys cooled down after a 429."
    );
    describe_counter!(
        KEY_DISABLED_TOTAL,
        Unit::Count,
        "Keys taken out of rotation after the provider rejected them."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        Unit::Count,
        "Redis operations that failed, by operation."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Configuration reloads, by outcome (applied, rejected)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_OK,
        Unit::Count,
        "1 when the last configuration reload applied or none was tried, 0 when it was rejected."
    );
    describe_histogram!(
        STREAM_FIRST_CHUNK,
        Unit::Seconds,
        "Streaming jobs: time from the job's start to its first chunk's publish confirm."
    );
    describe_histogram!(
        STREAM_FIRST_CHUNK_ADDED,
        Unit::Seconds,
        "Streaming jobs: time from the provider's first delta to the first chunk's publish confirm."
    );
    describe_histogram!(
        STREAM_CHUNKS,
        Unit::Count,
        "Chunks published per streaming job (resets included)."
    );
    describe_histogram!(
        STREAM_BYTES,
        Unit::Bytes,
        "Delta text bytes published per streaming job."
    );
    describe_counter!(
        STREAM_RESETS_TOTAL,
        Unit::Count,
        "Reset chunks published, by reason."
    );
    gauge!(CONFIG_LAST_RELOAD_OK).set(1.0);
}

/// A streaming job's first chunk was confirmed: `since_start` after the job's start,
/// `added` after the provider's first delta.
pub fn stream_first_chunk(since_start: Duration, added: Duration) {
    histogram!(STREAM_FIRST_CHUNK).record(since_start.as_secs_f64());
    histogram!(STREAM_FIRST_CHUNK_ADDED).record(added.as_secs_f64());
}

/// A streaming job's stream ended after `chunks` chunks carrying `bytes` of text.
pub fn stream_finished(chunks: u64, bytes: u64) {
    histogram!(STREAM_CHUNKS).record(chunks as f64);
    histogram!(STREAM_BYTES).record(bytes as f64);
}

/// A reset chunk was published.
pub fn stream_reset(reason: &'static str) {
    counter!(STREAM_RESETS_TOTAL, "reason" => reason).increment(1);
}

/// The log directive that keeps lapin's returned-message log (which prints the body) off.
pub const RETURNED_MESSAGES_QUIET: &str = "lapin::returned_messages=error";

/// Installs the global tracing subscriber (the binary calls this once).
pub fn init_tracing(config: &LogConfig) -> anyhow::Result<()> {
    // lapin logs a message the broker returned (a result whose reply queue is gone) whole,
    // body included, at WARN: that body is a plugin's extracted data, which never reaches a
    // log. The worker logs the return itself (`reply_queue_missing`), without the body.
    let filter = tracing_subscriber::EnvFilter::try_new(&config.filter)
        .map_err(|e| anyhow::anyhow!("log.filter `{}`: {e}", config.filter))?
        .add_directive(RETURNED_MESSAGES_QUIET.parse()?);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// What a finished job is counted under.
pub struct Finished<'a> {
    /// Its lane.
    pub lane: Lane,
    /// Its plugin (a configured name), or `unknown`.
    pub plugin: &'a str,
    /// The model that answered (or was asked last), or `none`.
    pub model: &'a str,
    /// `ok` or the error code.
    pub outcome: &'static str,
    /// Time in the worker.
    pub total: Duration,
    /// Of which inside provider calls.
    pub provider: Duration,
    /// When the producer published it (`x-quarry-published-ms`), epoch milliseconds.
    pub published_ms: Option<u64>,
}

/// A job finished.
pub fn job_finished(job: &Finished<'_>) {
    counter!(JOBS_TOTAL, "lane" => job.lane.as_str(), "plugin" => job.plugin.to_owned(), "model" => job.model.to_owned(), "outcome" => job.outcome)
        .increment(1);
    histogram!(JOB_DURATION, "lane" => job.lane.as_str()).record(job.total.as_secs_f64());
    histogram!(OVERHEAD).record(job.total.saturating_sub(job.provider).as_secs_f64());
    if let Some(published) = job.published_ms {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        histogram!(END_TO_END, "lane" => job.lane.as_str())
            .record(Duration::from_millis(now.saturating_sub(published)).as_secs_f64());
    }
}

/// A provider attempt failed and will be retried.
pub fn retry(provider: &str, model: &str, code: quarry_schemas::ErrorCode) {
    counter!(RETRIES_TOTAL, "provider" => provider.to_owned(), "model" => model.to_owned(), "code" => code.as_str())
        .increment(1);
}

/// Times one AMQP operation a job awaits; counts it as failed when `ok` is false.
pub fn amqp_operation(operation: &'static str, elapsed: Duration, ok: bool) {
    histogram!(AMQP_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
    if !ok {
        counter!(AMQP_ERRORS_TOTAL, "operation" => operation).increment(1);
    }
}

/// A configuration reload applied (`true`) or was rejected.
pub fn config_reloaded(applied: bool) {
    let outcome = if applied { "applied" } else { "rejected" };
    counter!(CONFIG_RELOADS_TOTAL, "outcome" => outcome).increment(1);
    gauge!(CONFIG_LAST_RELOAD_OK).set(if applied { 1.0 } else { 0.0 });
}

/// A lost broker session was replaced.
pub fn reconnected() {
    counter!(RECONNECTIONS_TOTAL).increment(1);
}

/// The number of jobs in flight changed.
pub fn in_flight(delta: f64) {
    gauge!(IN_FLIGHT).increment(delta);
}

/// One provider attempt of `plugin`'s job ended.
pub fn provider_attempt(
    plugin: &str,
    provider: &str,
    model: &str,
    outcome: &'static str,
    elapsed: Duration,
    usage: Option<Usage>,
) {
    let (provider, model) = (provider.to_owned(), model.to_owned());
    counter!(PROVIDER_REQUESTS_TOTAL, "provider" => provider.clone(), "model" => model.clone(), "outcome" => outcome)
        .increment(1);
    histogram!(PROVIDER_DURATION, "provider" => provider.clone(), "model" => model.clone())
        .record(elapsed.as_secs_f64());
    if let Some(usage) = usage {
        let plugin = plugin.to_owned();
        counter!(TOKENS_TOTAL, "plugin" => plugin.clone(), "provider" => provider.clone(), "model" => model.clone(), "direction" => "input")
            .increment(usage.input_tokens);
        counter!(TOKENS_TOTAL, "plugin" => plugin, "provider" => provider, "model" => model, "direction" => "output")
            .increment(usage.output_tokens);
    }
}

/// A message was dead-lettered.
pub fn dead_lettered(reason: &'static str, detail: &str) {
    // A decoding error quotes the message (the plugin's content): its detail stays in the
    // letter's header, out of the log.
    if reason == "undecodable" {
        tracing::warn!(reason, "message dead-lettered");
    } else {
        tracing::warn!(reason, detail, "message dead-lettered");
    }
    counter!(DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
}

/// A redelivered job was answered from the result store.
pub fn replayed() {
    tracing::info!("redelivered job answered from the result store");
    counter!(REPLAYS_TOTAL).increment(1);
}

/// A job came while another delivery of it held its claim: it went to a delay queue.
pub fn claim_conflict(lane: Lane) {
    tracing::info!("job in flight elsewhere; deferred until its claim ends");
    counter!(CLAIM_CONFLICTS_TOTAL, "lane" => lane.as_str()).increment(1);
}

/// Identity or a plugin's policy refused a job. `plugin` is a configured plugin's name, or
/// empty for an unknown publisher.
pub fn policy_refusal(plugin: &str, error: &quarry_schemas::ErrorInfo) {
    let rule = error
        .details
        .as_ref()
        .and_then(|d| d["policy"].as_str())
        .unwrap_or("other")
        .to_owned();
    let plugin = if rule == "identity" || plugin.is_empty() {
        "unknown".to_owned()
    } else {
        plugin.to_owned()
    };
    tracing::warn!(plugin, rule, message = %error.message, "job refused by policy");
    counter!(POLICY_REFUSALS_TOTAL, "plugin" => plugin, "policy" => rule).increment(1);
}

/// A batch was cancelled.
pub fn batch_cancelled(plugin: &str, batch_id: &str) {
    tracing::info!(plugin, batch_id, "batch cancelled");
    counter!(BATCHES_CANCELLED_TOTAL).increment(1);
}

/// A job expired in its queue and was answered.
pub fn job_expired(lane: &str) {
    counter!(JOBS_EXPIRED_TOTAL, "lane" => lane.to_owned()).increment(1);
}

/// A Redis operation failed (logged and counted).
pub fn redis_error(operation: &'static str, error: &redis::RedisError) {
    tracing::warn!(operation, %error, "Redis operation failed");
    counter!(REDIS_ERRORS_TOTAL, "operation" => operation).increment(1);
}

/// A repair loop ended.
pub fn repair(provider: &str, model: &str, outcome: &'static str) {
    counter!(REPAIRS_TOTAL, "provider" => provider.to_owned(), "model" => model.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A target was abandoned for the next one.
pub fn fallback(provider: &str, model: &str) {
    counter!(FALLBACKS_TOTAL, "provider" => provider.to_owned(), "model" => model.to_owned())
        .increment(1);
}

/// A job's cost.
pub fn cost(plugin: &str, provider: &str, model: &str, usd: f64) {
    histogram!(COST, "plugin" => plugin.to_owned(), "provider" => provider.to_owned(), "model" => model.to_owned())
        .record(usd);
}

/// A limiter decision.
pub fn limiter_decision(provider: &str, decision: &'static str) {
    counter!(LIMITER_DECISIONS_TOTAL, "provider" => provider.to_owned(), "decision" => decision)
        .increment(1);
}

/// A wait inside the worker for a limit.
pub fn limiter_wait(provider: &str, wait: Duration) {
    histogram!(LIMITER_WAIT, "provider" => provider.to_owned()).record(wait.as_secs_f64());
}

/// Tokens reserved for an attempt.
pub fn tokens_reserved(provider: &str, tokens: u64) {
    counter!(TOKENS_RESERVED_TOTAL, "provider" => provider.to_owned()).increment(tokens);
}

/// Tokens an attempt used, against its reservation.
pub fn tokens_actual(provider: &str, tokens: u64, reserved: u64) {
    counter!(TOKENS_ACTUAL_TOTAL, "provider" => provider.to_owned()).increment(tokens);
    if tokens > reserved {
        tracing::debug!(
            tokens,
            reserved,
            "an attempt used more tokens than reserved; the difference is a debt"
        );
    }
}

/// A key was cooled down after a 429.
pub fn key_cooled(provider: &str, key: &str) {
    counter!(KEY_COOLDOWNS_TOTAL, "provider" => provider.to_owned(), "key" => key.to_owned())
        .increment(1);
}

/// A key was taken out of rotation.
pub fn key_disabled(provider: &str, key: &str, code: quarry_schemas::ErrorCode) {
    tracing::error!(
        provider,
        key,
        code = code.as_str(),
        "the provider rejected a key; it leaves rotation"
    );
    counter!(KEY_DISABLED_TOTAL, "provider" => provider.to_owned(), "key" => key.to_owned(), "code" => code.as_str())
        .increment(1);
}

/// A Redis round trip's `operation` label: every value the worker uses, so that a dashboard
/// or a test counts only labels that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOp {
    /// A job's claim with its first limiter reservation.
    ClaimAndReserve,
    /// A job's claim on its own (no limits apply).
    Claim,
    /// A result's write, with its settlement and batch progress.
    StoreResult,
    /// A claim given up (the job went to a delay queue).
    ReleaseClaim,
    /// Every held claim extended.
    ExtendClaims,
    /// A batch marked cancelled.
    CancelBatch,
    /// A batch's progress counters read or counted.
    BatchProgress,
    /// A limiter reservation without a claim.
    LimiterReserve,
    /// A reservation settled on its own.
    LimiterFinish,
    /// A key's state read or written.
    LimiterKeyState,
    /// One job marked cancelled.
    CancelJob,
}

impl RedisOp {
    /// Every operation.
    pub const ALL: [RedisOp; 11] = [
        RedisOp::ClaimAndReserve,
        RedisOp::Claim,
        RedisOp::StoreResult,
        RedisOp::ReleaseClaim,
        RedisOp::ExtendClaims,
        RedisOp::CancelBatch,
        RedisOp::BatchProgress,
        RedisOp::LimiterReserve,
        RedisOp::LimiterFinish,
        RedisOp::LimiterKeyState,
        RedisOp::CancelJob,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RedisOp::ClaimAndReserve => "claim_and_reserve",
            RedisOp::Claim => "claim",
            RedisOp::StoreResult => "store_result",
            RedisOp::ReleaseClaim => "release_claim",
            RedisOp::ExtendClaims => "extend_claims",
            RedisOp::CancelBatch => "cancel_batch",
            RedisOp::BatchProgress => "batch_progress",
            RedisOp::LimiterReserve => "limiter_reserve",
            RedisOp::LimiterFinish => "limiter_finish",
            RedisOp::LimiterKeyState => "limiter_key_state",
            RedisOp::CancelJob => "cancel_job",
        }
    }
}

/// One Redis round trip: counted now, timed until the returned guard is dropped.
pub fn redis_round_trip(operation: RedisOp) -> RoundTrip {
    let operation = operation.as_str();
    counter!(REDIS_ROUND_TRIPS_TOTAL, "operation" => operation).increment(1);
    RoundTrip {
        operation,
        started: tokio::time::Instant::now(),
    }
}

/// Times a Redis round trip; see [`redis_round_trip`].
#[must_use = "the round trip is timed until the guard is dropped"]
pub struct RoundTrip {
    operation: &'static str,
    started: tokio::time::Instant,
}

impl Drop for RoundTrip {
    fn drop(&mut self) {
        histogram!(REDIS_DURATION, "operation" => self.operation)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// A job went to a delay queue.
pub fn deferred(lane: Lane, delay_secs: u64) {
    let delay = match delay_secs {
        0..=9 => "under_10s",
        10..=59 => "under_1m",
        60..=599 => "under_10m",
        _ => "10m_or_more",
    };
    counter!(DEFERRED_TOTAL, "lane" => lane.as_str(), "delay" => delay).increment(1);
}

/// A key's state and what is left of its per-minute limits.
pub fn key_state(
    provider: &str,
    key: &str,
    state: &'static str,
    requests_left: Option<u64>,
    tokens_left: Option<u64>,
) {
    for s in ["available", "cooling", "disabled"] {
        gauge!(KEY_STATE, "provider" => provider.to_owned(), "key" => key.to_owned(), "state" => s)
            .set(if s == state { 1.0 } else { 0.0 });
    }
    if let Some(left) = requests_left {
        gauge!(KEY_REMAINING, "provider" => provider.to_owned(), "key" => key.to_owned(), "unit" => "requests_per_minute")
            .set(left as f64);
    }
    if let Some(left) = tokens_left {
        gauge!(KEY_REMAINING, "provider" => provider.to_owned(), "key" => key.to_owned(), "unit" => "tokens_per_minute")
            .set(left as f64);
    }
}
