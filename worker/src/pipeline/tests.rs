//! Pipeline tests with a scripted in-memory provider: no broker, no HTTP.

use super::*;
use crate::config::Config;
use crate::providers::Repair;
use futures::future::BoxFuture;
use quarry_schemas::job::{ImageMime, ImagePart};
use quarry_schemas::{FinishReason, InputPart};
use std::sync::{Arc, Mutex};

/// Answers each call with the next scripted outcome and records what it was asked.
struct ScriptedProvider {
    outcomes: Mutex<Vec<Result<ProviderResponse, ProviderError>>>,
    calls: Arc<Mutex<u32>>,
    repairs_seen: Arc<Mutex<Vec<Vec<Repair>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mimes: &'static [ImageMime],
}

/// What one call was sent: model, key, output bound.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    model: String,
    key: Option<String>,
    max_tokens: u32,
}

impl Provider for ScriptedProvider {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn image_mimes(&self) -> &'static [ImageMime] {
        self.mimes
    }

    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        *self.calls.lock().unwrap() += 1;
        self.repairs_seen
            .lock()
            .unwrap()
            .push(request.repairs.to_vec());
        self.seen.lock().unwrap().push(Seen {
            model: request.model.to_owned(),
            key: request
                .api_key
                .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned()),
            max_tokens: request.max_tokens,
        });
        let next = self.outcomes.lock().unwrap().remove(0);
        let timeout = request.timeout;
        Box::pin(async move {
            // A provider that never answers: the attempt ends at its timeout.
            if matches!(&next, Err(e) if e.message == HANG) {
                tokio::time::sleep(timeout).await;
            }
            next
        })
    }
}

fn answer(text: &str) -> Result<ProviderResponse, ProviderError> {
    Ok(ProviderResponse {
        text: text.to_owned(),
        usage: Usage {
            input_tokens: 10,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 5,
            total_tokens: 15,
        },
        model: "scripted-model".to_owned(),
        finish_reason: FinishReason::Stop,
    })
}

const HANG: &str = "scripted hang";

/// An attempt that ends only at its timeout (`TIMEOUT`, retryable), as a hung provider's.
fn hang() -> Result<ProviderResponse, ProviderError> {
    Err(ProviderError {
        code: ErrorCode::Timeout,
        disposition: Disposition::Retry { after: None },
        message: HANG.to_owned(),
    })
}

fn failure(code: ErrorCode, disposition: Disposition) -> Result<ProviderResponse, ProviderError> {
    Err(ProviderError {
        code,
        disposition,
        message: format!("scripted {code}"),
    })
}

struct Probe {
    calls: Arc<Mutex<u32>>,
    repairs_seen: Arc<Mutex<Vec<Vec<Repair>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn provider(
    outcomes: Vec<Result<ProviderResponse, ProviderError>>,
    mimes: &'static [ImageMime],
) -> (Box<dyn Provider>, Probe) {
    let probe = Probe {
        calls: Arc::default(),
        repairs_seen: Arc::default(),
        seen: Arc::default(),
    };
    let provider = ScriptedProvider {
        outcomes: Mutex::new(outcomes),
        calls: probe.calls.clone(),
        repairs_seen: probe.repairs_seen.clone(),
        seen: probe.seen.clone(),
        mimes,
    };
    (Box::new(provider), probe)
}

fn test_config() -> Config {
    let mut config = Config::default();
    config.worker.retry_base_ms = 1;
    config.worker.retry_max_ms = 2;
    config.worker.max_attempts = 3;
    config.worker.repair_attempts = 0;
    config
}

fn scripted(outcomes: Vec<Result<ProviderResponse, ProviderError>>) -> (Pipeline, Arc<Mutex<u32>>) {
    let (pipeline, probe) = scripted_with(test_config(), outcomes);
    (pipeline, probe.calls)
}

fn scripted_with(
    config: Config,
    outcomes: Vec<Result<ProviderResponse, ProviderError>>,
) -> (Pipeline, Probe) {
    let (provider, probe) = provider(outcomes, &[ImageMime::Png, ImageMime::Jpeg]);
    let providers = BTreeMap::from([("fake".to_owned(), (provider, Duration::from_secs(5)))]);
    (Pipeline::with_providers(&config, providers), probe)
}

fn job(schema: Option<Value>) -> Job {
    let mut job = Job::new(
        "j-1",
        vec![InputPart::Text {
            text: "Coffee 3.50".into(),
        }],
    );
    job.custom_id = Some("c-1".into());
    job.json_schema = schema.map(Into::into);
    job
}

fn total_schema() -> Value {
    json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}})
}

#[tokio::test(start_paused = true)]
async fn retries_a_retryable_failure_and_sums_usage() {
    let (pipeline, calls) = scripted(vec![
        failure(ErrorCode::ProviderError, Disposition::Retry { after: None }),
        answer(r#"{"total": 3.5}"#),
    ]);
    let run = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await;
    let result = run.result;
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.parsed, Some(json!({"total": 3.5})));
    assert_eq!(result.content_type, Some(ContentType::Json));
    assert_eq!(result.attempts, 2);
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(
        result.usage.total_tokens, 15,
        "only the successful attempt reported usage"
    );
    assert_eq!(result.provider.as_deref(), Some("fake"));
    assert_eq!(result.model.as_deref(), Some("scripted-model"));
    assert_eq!(result.custom_id.as_deref(), Some("c-1"));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_code() {
    let (pipeline, calls) = scripted(vec![
        failure(ErrorCode::RateLimited, Disposition::Retry { after: None }),
        failure(ErrorCode::RateLimited, Disposition::Retry { after: None }),
        failure(ErrorCode::Timeout, Disposition::Retry { after: None }),
    ]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(error.retryable);
    assert_eq!(result.attempts, 3);
    assert_eq!(*calls.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_and_key_failures_are_not_retried() {
    for (code, disposition) in [
        (ErrorCode::AuthFailed, Disposition::RotateKey),
        (ErrorCode::InvalidRequest, Disposition::Permanent),
    ] {
        let (pipeline, calls) = scripted(vec![failure(code, disposition), answer("never")]);
        let result = pipeline
            .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
            .await
            .result;
        assert_eq!(result.error.expect("error").code, code);
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn answers_that_are_not_json_or_break_the_schema_are_output_invalid() {
    let (pipeline, _) = scripted(vec![answer("{\"total\": ")]);
    let result = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    assert!(error.details.expect("details")["parse_error"].is_string());
    assert_eq!(
        result.usage.total_tokens, 15,
        "a failed job still reports what it spent"
    );

    let (pipeline, _) = scripted(vec![answer(r#"{"total": "3.50"}"#)]);
    let result = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    let details = error.details.expect("details");
    assert_eq!(details["violations"][0]["path"], "/total");
    assert!(result.parsed.is_none() && result.text.is_none());
}

#[tokio::test(start_paused = true)]
async fn text_mode_returns_text() {
    let (pipeline, _) = scripted(vec![answer("plain words")]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.text.as_deref(), Some("plain words"));
    assert_eq!(result.content_type, Some(ContentType::Text));
    assert!(result.parsed.is_none());
}

/// Paused time: the minute of backoff passes on the runtime's clock, not the test's.
#[tokio::test(start_paused = true)]
async fn a_retry_after_that_fits_the_deadline_is_waited_out() {
    let (pipeline, calls) = scripted(vec![
        failure(
            ErrorCode::RateLimited,
            Disposition::Retry {
                after: Some(Duration::from_secs(60)),
            },
        ),
        answer("at last"),
    ]);
    let mut job = job(None);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    job.deadline_ms = Some(now_ms + 120_000);
    let began = Instant::now();
    let result = pipeline
        .execute(job, &pipeline.unrestricted("test"), began)
        .await
        .result;
    assert_eq!(
        result.text.as_deref(),
        Some("at last"),
        "{:?}",
        result.error
    );
    assert_eq!(*calls.lock().unwrap(), 2);
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_secs(60),
        "the Retry-After is a floor on the backoff: waited {waited:?}"
    );
    assert!(result.latency_ms >= 60_000, "{} ms", result.latency_ms);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_would_pass_during_backoff_stops_retries() {
    let (pipeline, calls) = scripted(vec![
        failure(
            ErrorCode::RateLimited,
            Disposition::Retry {
                after: Some(Duration::from_secs(60)),
            },
        ),
        answer("never"),
    ]);
    let mut job = job(None);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    job.deadline_ms = Some(now_ms + 5_000);
    let result = pipeline
        .execute(job, &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.error.expect("error").code, ErrorCode::RateLimited);
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "a 60 s Retry-After cannot fit a 5 s deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn stages_before_the_provider_fail_without_calling_it() {
    let cases = [
        (
            {
                let mut j = job(None);
                j.model = Some("nope".into());
                j
            },
            ErrorCode::ModelUnresolved,
        ),
        (job(Some(json!({"type": 12}))), ErrorCode::InvalidRequest),
        (
            {
                let mut j = job(None);
                j.deadline_ms = Some(1);
                j
            },
            ErrorCode::DeadlineExceeded,
        ),
        (
            {
                let mut j = job(None);
                j.input.clear();
                j
            },
            ErrorCode::InvalidRequest,
        ),
    ];
    for (job, code) in cases {
        let (pipeline, calls) = scripted(vec![]);
        let result = pipeline
            .execute(job, &pipeline.unrestricted("test"), Instant::now())
            .await
            .result;
        assert_eq!(result.error.expect("error").code, code);
        assert_eq!(result.attempts, 0);
        assert_eq!(*calls.lock().unwrap(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn the_repair_loop_re_asks_with_the_answer_and_its_errors() {
    let mut config = test_config();
    config.worker.repair_attempts = 2;
    let (pipeline, probe) = scripted_with(
        config,
        vec![answer(r#"{"total": "3.50"}"#), answer(r#"{"total": 3.5}"#)],
    );
    let result = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.parsed, Some(json!({"total": 3.5})));
    assert_eq!(result.attempts, 2);
    assert_eq!(
        result.usage.total_tokens, 30,
        "usage is summed over the repair"
    );
    let seen = probe.repairs_seen.lock().unwrap().clone();
    assert_eq!(seen[0], vec![]);
    assert_eq!(seen[1].len(), 1);
    assert_eq!(seen[1][0].answer, r#"{"total": "3.50"}"#);
    assert!(
        seen[1][0].problem.contains("/total"),
        "{}",
        seen[1][0].problem
    );
}

#[tokio::test(start_paused = true)]
async fn the_repair_loop_gives_up_with_details() {
    let mut config = test_config();
    config.worker.repair_attempts = 2;
    let (pipeline, probe) = scripted_with(
        config,
        vec![answer("nope"), answer("{"), answer(r#"{"total": "x"}"#)],
    );
    let result = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    let details = error.details.expect("details");
    assert_eq!(details["repair_attempts"], 2);
    assert_eq!(details["violations"][0]["path"], "/total");
    assert_eq!(details["answer"], r#"{"total": "x"}"#);
    assert_eq!(*probe.calls.lock().unwrap(), 3);
    assert_eq!(result.attempts, 3);
    assert_eq!(result.usage.total_tokens, 45);
}

fn fallback_config() -> Config {
    let mut config = test_config();
    let route = config
        .routing
        .aliases
        .get_mut("default")
        .expect("default alias");
    route.fallbacks = vec![crate::config::Target {
        provider: "backup".into(),
        model: "backup-model".into(),
        images: true,
    }];
    config
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_model_falls_back_to_the_next_target() {
    let (primary, primary_probe) = provider(
        vec![failure(ErrorCode::ModelUnavailable, Disposition::Permanent)],
        &[ImageMime::Png],
    );
    let (backup, _) = provider(vec![answer(r#"{"total": 1}"#)], &[ImageMime::Png]);
    let providers = BTreeMap::from([
        ("fake".to_owned(), (primary, Duration::from_secs(5))),
        ("backup".to_owned(), (backup, Duration::from_secs(5))),
    ]);
    let pipeline = Pipeline::with_providers(&fallback_config(), providers);
    let result = pipeline
        .execute(
            job(Some(total_schema())),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.provider.as_deref(), Some("backup"));
    assert_eq!(result.model.as_deref(), Some("scripted-model"));
    assert_eq!(result.attempts, 2);
    assert_eq!(*primary_probe.calls.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn other_failures_do_not_fall_back() {
    let (primary, _) = provider(
        vec![failure(ErrorCode::InvalidRequest, Disposition::Permanent)],
        &[],
    );
    let (backup, backup_probe) = provider(vec![answer("{}")], &[]);
    let providers = BTreeMap::from([
        ("fake".to_owned(), (primary, Duration::from_secs(5))),
        ("backup".to_owned(), (backup, Duration::from_secs(5))),
    ]);
    let pipeline = Pipeline::with_providers(&fallback_config(), providers);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.error.expect("error").code, ErrorCode::InvalidRequest);
    assert_eq!(result.provider.as_deref(), Some("fake"));
    assert_eq!(*backup_probe.calls.lock().unwrap(), 0);
}

fn image_job(mime: ImageMime, count: usize, bytes: usize) -> Job {
    let mut job = job(None);
    let data = "A".repeat(bytes.div_ceil(3) * 4);
    for _ in 0..count {
        job.input.push(InputPart::Image(ImagePart {
            mime,
            data: data.clone(),
        }));
    }
    job
}

#[tokio::test(start_paused = true)]
async fn images_are_checked_before_any_call() {
    let mut config = test_config();
    config.worker.max_images = 2;
    config.worker.max_image_bytes = 1000;
    let cases = [
        (image_job(ImageMime::Png, 3, 10), "at most 2"),
        (image_job(ImageMime::Png, 1, 2000), "at most 1000"),
        (
            image_job(ImageMime::Gif, 1, 10),
            "accepts these images (image/gif)",
        ),
    ];
    for (job, expected) in cases {
        let (pipeline, probe) = scripted_with(config.clone(), vec![]);
        let result = pipeline
            .execute(job, &pipeline.unrestricted("test"), Instant::now())
            .await
            .result;
        let error = result.error.expect("error");
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert!(error.message.contains(expected), "{}", error.message);
        assert_eq!(*probe.calls.lock().unwrap(), 0);
    }
    // A text-only model.
    let mut text_only = config.clone();
    text_only
        .routing
        .aliases
        .get_mut("default")
        .expect("alias")
        .images = false;
    let (pipeline, _) = scripted_with(text_only, vec![]);
    let result = pipeline
        .execute(
            image_job(ImageMime::Png, 1, 10),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    assert_eq!(result.error.expect("error").code, ErrorCode::InvalidRequest);
    // Within the limits, the call is made.
    let (pipeline, probe) = scripted_with(config, vec![answer("ok")]);
    let result = pipeline
        .execute(
            image_job(ImageMime::Jpeg, 2, 900),
            &pipeline.unrestricted("test"),
            Instant::now(),
        )
        .await
        .result;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(*probe.calls.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn cost_comes_from_the_price_table() {
    let mut config = test_config();
    config.prices = vec![crate::config::Price {
        provider: "fake".into(),
        model: "fake-large".into(),
        input_per_mtok: 1_000_000.0,
        output_per_mtok: 2_000_000.0,
        cached_input_per_mtok: None,
    }];
    let (pipeline, _) = scripted_with(config, vec![answer("ok")]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.cost_usd, Some(10.0 + 5.0 * 2.0));
    let (pipeline, _) = scripted(vec![answer("ok")]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.cost_usd, None, "no price, no cost");
}

/// A config whose `fake` provider has a key in each of two profiles, a `guarded` alias
/// falling back from `fake-large` to `fake-mini`, and one plugin `receipts` with `plugin`'s
/// policy.
fn policy_config(plugin: crate::config::PluginConfig) -> Config {
    use crate::config::{KeyConfig, Route, Target};
    let mut config = test_config();
    let key = |name: &str, secret: &str, profile: &str| KeyConfig {
        name: name.into(),
        api_key: Some(secrecy::SecretString::from(secret.to_owned())),
        api_key_env: None,
        api_key_file: None,
        limits: crate::config::Limits::default(),
        profile: profile.into(),
    };
    let fake = config.providers.get_mut("fake").unwrap();
    fake.keys = vec![
        key("standard", "sk-standard", "default"),
        key("premium", "sk-premium", "premium"),
    ];
    config.routing.aliases.insert(
        "guarded".into(),
        Route {
            provider: "fake".into(),
            model: "fake-large".into(),
            images: true,
            fallbacks: vec![Target {
                provider: "fake".into(),
                model: "fake-mini".into(),
                images: true,
            }],
        },
    );
    config.plugins = BTreeMap::from([("receipts".to_owned(), plugin)]);
    config
}

fn policed(
    plugin: crate::config::PluginConfig,
    outcomes: Vec<Result<ProviderResponse, ProviderError>>,
) -> (Pipeline, Probe, Arc<Policy>) {
    let (pipeline, probe) = scripted_with(policy_config(plugin), outcomes);
    let policy = pipeline.identify(Some("receipts")).unwrap();
    (pipeline, probe, policy)
}

fn rule(result: &JobResult) -> (Option<ErrorCode>, Option<String>) {
    let error = result.error.as_ref();
    (
        error.map(|e| e.code),
        error
            .and_then(|e| e.details.as_ref())
            .and_then(|d| d["policy"].as_str())
            .map(str::to_owned),
    )
}

#[tokio::test(start_paused = true)]
async fn the_profile_picks_the_key_and_a_suffix_cannot_bypass_the_gate() {
    use crate::config::PluginConfig;
    // Allowed: the premium key serves a job that asks for it, either way.
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            profiles: vec!["premium".into()],
            ..PluginConfig::default()
        },
        vec![answer("a"), answer("b"), answer("c")],
    );
    let mut asked = job(None);
    let run = pipeline
        .execute(asked.clone(), &policy, Instant::now())
        .await;
    assert_eq!(run.result.status, Status::Ok);
    asked.profile = Some("premium".into());
    pipeline
        .execute(asked.clone(), &policy, Instant::now())
        .await;
    asked.profile = None;
    asked.model = Some("default@premium".into());
    pipeline.execute(asked, &policy, Instant::now()).await;
    let keys: Vec<Option<String>> = probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.key.clone())
        .collect();
    assert_eq!(
        keys,
        [Some("sk-standard"), Some("sk-premium"), Some("sk-premium")].map(|k| k.map(str::to_owned))
    );

    // Not allowed: neither the field nor the suffix reaches the premium key, and a
    // contradiction is refused rather than resolved.
    let (pipeline, probe, policy) = policed(PluginConfig::default(), vec![]);
    for (model, profile, expected) in [
        (
            Some("default@premium"),
            None,
            (ErrorCode::NotAuthorized, Some("profiles")),
        ),
        (
            None,
            Some("premium"),
            (ErrorCode::NotAuthorized, Some("profiles")),
        ),
        (
            Some("default@premium"),
            Some("default"),
            (ErrorCode::InvalidRequest, None),
        ),
        (
            Some("default@default"),
            Some("premium"),
            (ErrorCode::InvalidRequest, None),
        ),
    ] {
        let mut bypass = job(None);
        bypass.model = model.map(str::to_owned);
        bypass.profile = profile.map(str::to_owned);
        let result = pipeline
            .execute(bypass, &policy, Instant::now())
            .await
            .result;
        assert_eq!(
            rule(&result),
            (Some(expected.0), expected.1.map(str::to_owned)),
            "{model:?} {profile:?}"
        );
        assert_eq!(result.attempts, 0);
    }
    assert_eq!(*probe.calls.lock().unwrap(), 0, "no call was made");
}

#[tokio::test(start_paused = true)]
async fn allowed_models_are_checked_on_the_target_dispatched_fallbacks_included() {
    use crate::config::PluginConfig;
    // Only the fallback is allowed: the job goes straight to it.
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec!["fake/fake-mini".into()]),
            ..PluginConfig::default()
        },
        vec![answer("ok")],
    );
    let mut guarded = job(None);
    guarded.model = Some("guarded".into());
    let result = pipeline
        .execute(guarded.clone(), &policy, Instant::now())
        .await
        .result;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.model.as_deref(), Some("scripted-model"));
    assert_eq!(probe.seen.lock().unwrap()[0].model, "fake-mini");

    // Only the primary is allowed: when it is unavailable, the disallowed fallback is never
    // called and the job ends with the primary's error.
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec!["fake/fake-large".into()]),
            ..PluginConfig::default()
        },
        vec![failure(ErrorCode::ModelUnavailable, Disposition::Permanent)],
    );
    let result = pipeline
        .execute(guarded.clone(), &policy, Instant::now())
        .await
        .result;
    assert_eq!(rule(&result).0, Some(ErrorCode::ModelUnavailable));
    let models: Vec<String> = probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.model.clone())
        .collect();
    assert_eq!(models, ["fake-large"]);

    // Neither: NOT_AUTHORIZED without a call.
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec!["fake/other".into()]),
            ..PluginConfig::default()
        },
        vec![],
    );
    let result = pipeline
        .execute(guarded, &policy, Instant::now())
        .await
        .result;
    assert_eq!(
        rule(&result),
        (
            Some(ErrorCode::NotAuthorized),
            Some("allowed_models".into())
        )
    );
    assert_eq!(*probe.calls.lock().unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_max_tokens_ceiling_bounds_every_call() {
    use crate::config::PluginConfig;
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            max_tokens: Some(300),
            model_override: false,
            ..PluginConfig::default()
        },
        vec![answer("a"), answer("b")],
    );
    pipeline.execute(job(None), &policy, Instant::now()).await;
    let mut modest = job(None);
    modest.max_tokens = Some(20);
    pipeline.execute(modest, &policy, Instant::now()).await;
    let bounds: Vec<u32> = probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.max_tokens)
        .collect();
    assert_eq!(bounds, [300, 20], "the ceiling bounds the default too");
    let mut overriding = job(None);
    overriding.model = Some("fast".into());
    let result = pipeline
        .execute(overriding, &policy, Instant::now())
        .await
        .result;
    assert_eq!(
        rule(&result),
        (
            Some(ErrorCode::NotAuthorized),
            Some("model_override".into())
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_without_a_deadline_ends_when_the_fleets_budget_runs_out() {
    let mut config = test_config();
    config.worker.max_attempts = 100;
    config.worker.job_budget_ms = 30_000;
    // Attempts time out at 5 s each; retries would go on for 100 of them.
    let (pipeline, probe) = scripted_with(config, (0..100).map(|_| hang()).collect());
    let began = Instant::now();
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), began)
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::DeadlineExceeded, "{error:?}");
    assert!(error.message.contains("worker.job_budget_ms"), "{error:?}");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_millis(30_100),
        "every attempt, retry and backoff fits the budget: {took:?}"
    );
    assert_eq!(
        *probe.calls.lock().unwrap(),
        6,
        "six attempts of 5 s (and two-millisecond backoffs) fill 30 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_during_a_call_ends_deadline_exceeded_not_timeout() {
    let (pipeline, calls) = scripted(vec![hang(), answer("too late")]);
    let mut job = job(None);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    job.deadline_ms = Some(now_ms + 3_000);
    let began = Instant::now();
    let result = pipeline
        .execute(job, &pipeline.unrestricted("test"), began)
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::DeadlineExceeded, "{error:?}");
    assert!(!error.retryable);
    assert_eq!(*calls.lock().unwrap(), 1);
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "the 5 s attempt was cut at the 3 s deadline: {:?}",
        began.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn every_call_carries_max_tokens_the_jobs_or_a_default() {
    let mut config = test_config();
    config.worker.default_max_tokens = 1_024;
    let (pipeline, probe) = scripted_with(config.clone(), vec![answer("a"), answer("b")]);
    pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await;
    let mut asking = job(None);
    asking.max_tokens = Some(2_000);
    pipeline
        .execute(asking, &pipeline.unrestricted("test"), Instant::now())
        .await;
    let sent: Vec<u32> = probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.max_tokens)
        .collect();
    assert_eq!(
        sent,
        [1_024, 2_000],
        "the fleet's default, then the job's own"
    );

    config
        .providers
        .entry("fake".into())
        .or_default()
        .default_max_tokens = Some(64);
    let (pipeline, probe) = scripted_with(config, vec![answer("c")]);
    pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await;
    assert_eq!(
        probe.seen.lock().unwrap()[0].max_tokens,
        64,
        "the provider's default"
    );
}

#[tokio::test(start_paused = true)]
async fn a_text_answer_cut_at_max_tokens_is_ok_and_says_length() {
    let cut = answer("The merchant is Caf").map(|r| ProviderResponse {
        finish_reason: FinishReason::Length,
        ..r
    });
    let (pipeline, _) = scripted(vec![cut]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.finish_reason, Some(FinishReason::Length));

    let (pipeline, _) = scripted(vec![failure(
        ErrorCode::InvalidRequest,
        Disposition::Permanent,
    )]);
    let result = pipeline
        .execute(job(None), &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    assert_eq!(result.finish_reason, None, "no answer, no finish reason");
}

#[tokio::test(start_paused = true)]
async fn a_job_names_a_target_only_as_its_plugin_was_granted() {
    use crate::config::PluginConfig;
    let named = |model: &str, provider: Option<&str>| {
        let mut j = job(None);
        j.model = Some(model.into());
        j.provider = provider.map(str::to_owned);
        j
    };
    // Granted exactly: `provider/model`, and a model id with `@` through `provider`.
    let (pipeline, probe, policy) = policed(
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec![
                "fake/fake-mini".into(),
                "fake/claude@2024".into(),
                "fake/*".into(),
            ]),
            ..PluginConfig::default()
        },
        vec![answer("a"), answer("b")],
    );
    let result = pipeline
        .execute(named("fake/fake-mini", None), &policy, Instant::now())
        .await
        .result;
    assert_eq!(result.status, Status::Ok, "{:?}", result.error);
    assert_eq!(result.provider.as_deref(), Some("fake"));
    let result = pipeline
        .execute(named("claude@2024", Some("fake")), &policy, Instant::now())
        .await
        .result;
    assert_eq!(result.status, Status::Ok, "{:?}", result.error);
    let sent: Vec<String> = probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.model.clone())
        .collect();
    assert_eq!(sent, ["fake-mini", "claude@2024"]);
    // A wildcard filters an alias's targets; it does not let a job make up a model id.
    let result = pipeline
        .execute(named("fake/made-up", None), &policy, Instant::now())
        .await
        .result;
    assert_eq!(
        rule(&result),
        (
            Some(ErrorCode::NotAuthorized),
            Some("allowed_models".into())
        )
    );
    // A provider the fleet does not have.
    let (pipeline, _, policy) = policed(
        PluginConfig {
            model_override: true,
            allowed_models: Some(vec!["nowhere/m".into()]),
            ..PluginConfig::default()
        },
        vec![],
    );
    let result = pipeline
        .execute(named("nowhere/m", None), &policy, Instant::now())
        .await
        .result;
    assert_eq!(rule(&result), (Some(ErrorCode::ModelUnresolved), None));

    // Off unless granted: by default a plugin names nothing; with model_override alone it
    // may choose aliases, not targets.
    for (plugin, rule_name) in [
        (PluginConfig::default(), "model_override"),
        (
            PluginConfig {
                model_override: true,
                ..PluginConfig::default()
            },
            "allowed_models",
        ),
    ] {
        let (pipeline, probe, policy) = policed(plugin, vec![]);
        for job in [
            named("fake/fake-mini", None),
            named("fake-mini", Some("fake")),
        ] {
            let result = pipeline.execute(job, &policy, Instant::now()).await.result;
            assert_eq!(
                rule(&result),
                (Some(ErrorCode::NotAuthorized), Some(rule_name.into()))
            );
        }
        assert_eq!(*probe.calls.lock().unwrap(), 0);
    }
    // Malformed targets are the job's error.
    let (pipeline, _, policy) = policed(PluginConfig::default(), vec![]);
    for model in ["/fake-mini", "fake/"] {
        let result = pipeline
            .execute(named(model, None), &policy, Instant::now())
            .await
            .result;
        assert_eq!(
            rule(&result),
            (Some(ErrorCode::InvalidRequest), None),
            "{model}"
        );
    }
}
