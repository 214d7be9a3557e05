//! Pipeline tests with a scripted in-memory provider: no broker, no HTTP.

use super::*;
use crate::config::Config;
use futures::future::BoxFuture;
use quarry_schemas::InputPart;
use std::sync::{Arc, Mutex};

/// Answers each call with the next scripted outcome and records how many calls it saw.
struct ScriptedProvider {
    outcomes: Mutex<Vec<Result<ProviderResponse, ProviderError>>>,
    calls: Arc<Mutex<u32>>,
}

impl Provider for ScriptedProvider {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn call<'a>(
        &'a self,
        _request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        *self.calls.lock().unwrap() += 1;
        let next = self.outcomes.lock().unwrap().remove(0);
        Box::pin(async move { next })
    }
}

fn answer(text: &str) -> Result<ProviderResponse, ProviderError> {
    Ok(ProviderResponse {
        text: text.to_owned(),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
        },
        model: "scripted-model".to_owned(),
    })
}

fn failure(code: ErrorCode, disposition: Disposition) -> Result<ProviderResponse, ProviderError> {
    Err(ProviderError {
        code,
        disposition,
        message: format!("scripted {code}"),
    })
}

fn scripted(outcomes: Vec<Result<ProviderResponse, ProviderError>>) -> (Pipeline, Arc<Mutex<u32>>) {
    let mut config = Config::default();
    config.worker.retry_base_ms = 1;
    config.worker.retry_max_ms = 2;
    config.worker.max_attempts = 3;
    let calls = Arc::new(Mutex::new(0));
    let provider: Box<dyn Provider> = Box::new(ScriptedProvider {
        outcomes: Mutex::new(outcomes),
        calls: calls.clone(),
    });
    let providers = BTreeMap::from([("fake".to_owned(), (provider, Duration::from_secs(5)))]);
    (Pipeline::with_providers(&config, providers), calls)
}

fn job(schema: Option<Value>) -> Job {
    let mut job = Job::new(
        "j-1",
        vec![InputPart::Text {
            text: "Coffee 3.50".into(),
        }],
    );
    job.custom_id = Some("c-1".into());
    job.json_schema = schema;
    job
}

fn total_schema() -> Value {
    json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}})
}

#[tokio::test]
async fn retries_a_retryable_failure_and_sums_usage() {
    let (pipeline, calls) = scripted(vec![
        failure(ErrorCode::ProviderError, Disposition::Retry { after: None }),
        answer(r#"{"total": 3.5}"#),
    ]);
    let run = pipeline
        .execute(job(Some(total_schema())), Instant::now())
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

#[tokio::test]
async fn gives_up_after_max_attempts_with_the_last_code() {
    let (pipeline, calls) = scripted(vec![
        failure(ErrorCode::RateLimited, Disposition::Retry { after: None }),
        failure(ErrorCode::RateLimited, Disposition::Retry { after: None }),
        failure(ErrorCode::Timeout, Disposition::Retry { after: None }),
    ]);
    let result = pipeline.execute(job(None), Instant::now()).await.result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::Timeout);
    assert!(error.retryable);
    assert_eq!(result.attempts, 3);
    assert_eq!(*calls.lock().unwrap(), 3);
}

#[tokio::test]
async fn permanent_and_key_failures_are_not_retried() {
    for (code, disposition) in [
        (ErrorCode::AuthFailed, Disposition::RotateKey),
        (ErrorCode::InvalidRequest, Disposition::Permanent),
    ] {
        let (pipeline, calls) = scripted(vec![failure(code, disposition), answer("never")]);
        let result = pipeline.execute(job(None), Instant::now()).await.result;
        assert_eq!(result.error.expect("error").code, code);
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}

#[tokio::test]
async fn answers_that_are_not_json_or_break_the_schema_are_output_invalid() {
    let (pipeline, _) = scripted(vec![answer("{\"total\": ")]);
    let result = pipeline
        .execute(job(Some(total_schema())), Instant::now())
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
        .execute(job(Some(total_schema())), Instant::now())
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    let details = error.details.expect("details");
    assert_eq!(details["violations"][0]["path"], "/total");
    assert!(result.parsed.is_none() && result.text.is_none());
}

#[tokio::test]
async fn text_mode_returns_text() {
    let (pipeline, _) = scripted(vec![answer("plain words")]);
    let result = pipeline.execute(job(None), Instant::now()).await.result;
    assert_eq!(result.text.as_deref(), Some("plain words"));
    assert_eq!(result.content_type, Some(ContentType::Text));
    assert!(result.parsed.is_none());
}

#[tokio::test]
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
    let result = pipeline.execute(job, Instant::now()).await.result;
    assert_eq!(result.error.expect("error").code, ErrorCode::RateLimited);
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "a 60 s Retry-After cannot fit a 5 s deadline"
    );
}

#[tokio::test]
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
        let result = pipeline.execute(job, Instant::now()).await.result;
        assert_eq!(result.error.expect("error").code, code);
        assert_eq!(result.attempts, 0);
        assert_eq!(*calls.lock().unwrap(), 0);
    }
}
