//! One conformance suite, run against every provider module through the fake provider
//! (which speaks each provider's real wire format): structured and text answers, images,
//! every fault mapped to its code and disposition, the repair loop, timeouts, and the exact
//! shape of the request each module sends.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::faults::Fault;
use quarry_fake_provider::{FakeConfig, FakeProvider, Recorded};
use quarry_schemas::job::{ImageMime, ImagePart};
use quarry_schemas::{ErrorCode, FinishReason, InputPart, Job, Status};
use quarry_worker::config::{Config, ProviderConfig, ProviderKind, ProviderSettings, Route};
use quarry_worker::pipeline::Pipeline;
use quarry_worker::providers::{self, Disposition, ProviderRequest};
use quarry_worker::stream::ChunkSink;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

const KEY: &str = "sk-conformance-canary-0123456789";

fn receipt_schema() -> Value {
    serde_json::from_str(quarry_schemas::examples::RECEIPT).unwrap()
}

/// The kind's settings, OpenAI with strict structured outputs (as a real deployment runs it).
fn settings_of(kind: ProviderKind) -> ProviderSettings {
    match ProviderSettings::of(kind) {
        ProviderSettings::Openai(_) => {
            ProviderSettings::Openai(quarry_worker::providers::openai::Settings { strict: true })
        }
        other => other,
    }
}

fn provider_config(kind: ProviderKind, fake: &FakeProvider) -> ProviderConfig {
    ProviderConfig {
        settings: settings_of(kind),
        base_url: Some(match kind {
            ProviderKind::Gemini => fake.gemini_base_url(),
            _ => fake.base_url(),
        }),
        api_key: Some(SecretString::from(KEY.to_owned())),
        ..ProviderConfig::default()
    }
}

async fn fake() -> FakeProvider {
    let config = FakeConfig {
        api_key: Some(KEY.to_owned()),
        hang: Some(Duration::from_secs(30)),
        ..FakeConfig::default()
    };
    quarry_fake_provider::spawn(config).await.unwrap()
}

fn request<'a>(
    input: &'a [InputPart],
    schema: Option<&'a Value>,
    key: &'a SecretString,
) -> ProviderRequest<'a> {
    ProviderRequest {
        model: "fake-large",
        instructions: Some("Extract the expense record."),
        input,
        json_schema: schema.map(|s| ("receipt", s)),
        schema_text: None,
        max_tokens: 512,
        temperature: Some(0.0),
        reasoning: None,
        stop: None,
        timeout: Duration::from_secs(10),
        api_key: Some(key),
        repairs: &[],
        any_object: false,
        trace: Some((
            quarry_worker::trace::TraceContext::parse(TRACEPARENT)
                .unwrap()
                .child(),
            Some("quarry=test"),
        )),
        max_schema_nodes: 10_000,
        sink: None,
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn text(s: &str) -> Vec<InputPart> {
    vec![InputPart::Text { text: s.to_owned() }]
}

fn last_request(fake: &FakeProvider) -> Recorded {
    fake.stats.requests().pop().expect("the fake saw a request")
}

/// The request each module sends, in its provider's published format.
fn assert_wire_shape(kind: ProviderKind, sent: &Recorded, json_mode: bool, images: usize) {
    let body = &sent.body;
    // Every format carries the W3C trace context as HTTP headers.
    let sent_parent = &sent.headers["traceparent"];
    assert!(
        sent_parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent_parent.len() == 55,
        "{sent_parent}"
    );
    assert_eq!(sent.headers["tracestate"], "quarry=test");
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            assert_eq!(sent.path, "/v1/chat/completions");
            assert_eq!(sent.headers["authorization"], format!("Bearer {KEY}"));
            assert_eq!(body["model"], "fake-large");
            assert_eq!(
                body["messages"][0],
                json!({"role": "system", "content": "Extract the expense record."})
            );
            assert_eq!(body["messages"][1]["role"], "user");
            let parts = body["messages"][1]["content"].as_array().unwrap();
            let image_parts: Vec<&Value> =
                parts.iter().filter(|p| p["type"] == "image_url").collect();
            assert_eq!(image_parts.len(), images);
            for part in image_parts {
                assert!(
                    part["image_url"]["url"]
                        .as_str()
                        .unwrap()
                        .starts_with("data:image/png;base64,")
                );
            }
            if kind == ProviderKind::Openai {
                assert_eq!(body["max_completion_tokens"], 512);
                assert!(body.get("max_tokens").is_none());
            } else {
                assert_eq!(body["max_tokens"], 512);
            }
            if json_mode {
                assert_eq!(body["response_format"]["type"], "json_schema");
                assert_eq!(body["response_format"]["json_schema"]["name"], "receipt");
                let schema = &body["response_format"]["json_schema"]["schema"];
                assert_eq!(schema["type"], "object");
                if kind == ProviderKind::Openai {
                    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
                    assert_eq!(schema["additionalProperties"], false);
                    let props = schema["properties"].as_object().unwrap().len();
                    assert_eq!(
                        schema["required"].as_array().unwrap().len(),
                        props,
                        "strict: all required"
                    );
                }
            } else {
                assert!(body.get("response_format").is_none());
            }
        }
        ProviderKind::Anthropic => {
            assert_eq!(sent.path, "/v1/messages");
            assert_eq!(sent.headers["x-api-key"], KEY);
            assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
            assert!(!sent.headers.contains_key("authorization"));
            assert_eq!(body["system"], "Extract the expense record.");
            assert_eq!(body["max_tokens"], 512);
            assert_eq!(body["messages"][0]["role"], "user");
            let blocks = body["messages"][0]["content"].as_array().unwrap();
            let image_blocks: Vec<&Value> =
                blocks.iter().filter(|b| b["type"] == "image").collect();
            assert_eq!(image_blocks.len(), images);
            for block in image_blocks {
                assert_eq!(block["source"]["type"], "base64");
                assert_eq!(block["source"]["media_type"], "image/png");
            }
            if json_mode {
                assert_eq!(body["tools"][0]["name"], "receipt");
                assert_eq!(body["tools"][0]["input_schema"], receipt_schema());
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "tool", "name": "receipt"})
                );
            } else {
                assert!(body.get("tools").is_none());
            }
        }
        ProviderKind::Gemini => {
            assert_eq!(sent.path, "/v1beta/models/fake-large:generateContent");
            assert_eq!(sent.headers["x-goog-api-key"], KEY);
            assert_eq!(
                body["systemInstruction"]["parts"][0]["text"],
                "Extract the expense record."
            );
            assert_eq!(body["contents"][0]["role"], "user");
            let parts = body["contents"][0]["parts"].as_array().unwrap();
            let image_parts: Vec<&Value> = parts
                .iter()
                .filter(|p| p.get("inlineData").is_some())
                .collect();
            assert_eq!(image_parts.len(), images);
            for part in image_parts {
                assert_eq!(part["inlineData"]["mimeType"], "image/png");
            }
            assert_eq!(body["generationConfig"]["maxOutputTokens"], 512);
            if json_mode {
                assert_eq!(
                    body["generationConfig"]["responseMimeType"],
                    "application/json"
                );
                let schema = &body["generationConfig"]["responseSchema"];
                assert_eq!(schema["type"], "object");
                assert!(schema.get("additionalProperties").is_none());
                assert!(schema.get("$schema").is_none());
                assert_eq!(
                    schema["properties"]["date"]["description"],
                    "Purchase date, YYYY-MM-DD. (format: date)"
                );
            } else {
                assert!(body["generationConfig"].get("responseSchema").is_none());
            }
        }
    }
}

async fn structured_text_and_images(kind: ProviderKind) {
    let key = SecretString::from(KEY.to_owned());
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let schema = receipt_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();

    // Structured, text only.
    let input = text("Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR");
    let response = provider
        .call(&request(&input, Some(&schema), &key))
        .await
        .expect("answer");
    let value: Value = serde_json::from_str(&response.text).expect("JSON answer");
    assert!(validator.is_valid(&value), "{kind:?}: {value}");
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);
    assert_eq!(
        response.usage.total_tokens,
        response.usage.input_tokens + response.usage.output_tokens
    );
    assert_wire_shape(kind, &last_request(&fake), true, 0);

    // Structured, text and images.
    let mut input = text("Receipt photo attached");
    for _ in 0..2 {
        input.push(InputPart::Image(ImagePart {
            mime: ImageMime::Png,
            data: "iVBORw0KGgo=".into(),
        }));
    }
    let response = provider
        .call(&request(&input, Some(&schema), &key))
        .await
        .expect("answer");
    assert!(validator.is_valid(&serde_json::from_str::<Value>(&response.text).unwrap()));
    assert!(
        response.usage.input_tokens >= 170,
        "two images are counted: {:?}",
        response.usage
    );
    assert_wire_shape(kind, &last_request(&fake), true, 2);

    // No schema: text.
    let input = text("Summarise: the meeting went well");
    let response = provider
        .call(&request(&input, None, &key))
        .await
        .expect("answer");
    assert!(
        response.text.starts_with("Extracted:"),
        "{kind:?}: {}",
        response.text
    );
    assert_wire_shape(kind, &last_request(&fake), false, 0);
    assert!(provider.image_mimes().contains(&ImageMime::Png));
}

/// What one provider call answers under a fault: an error with its code and disposition, or
/// an answer that the pipeline's validation must reject (output faults).
#[derive(Debug, PartialEq)]
enum Expect {
    Error(ErrorCode, Disposition),
    RejectedAnswer,
    /// A valid answer: the fault hits only streamed requests, and these calls do not stream.
    CleanAnswer,
}

/// The conformance table: every fault the fake provider injects, for every provider kind. An
/// exhaustive `match`: a new fault is placed here before it compiles.
fn expected(fault: Fault) -> Expect {
    let retry = Disposition::Retry { after: None };
    match fault {
        Fault::RateLimit => Expect::Error(
            ErrorCode::RateLimited,
            Disposition::Retry {
                after: Some(Duration::from_secs(1)),
            },
        ),
        Fault::Auth => Expect::Error(ErrorCode::AuthFailed, Disposition::RotateKey),
        Fault::ProxyAuth => Expect::Error(ErrorCode::AuthFailed, retry),
        Fault::ServerError => Expect::Error(ErrorCode::ProviderError, retry),
        Fault::Overloaded => Expect::Error(ErrorCode::ModelUnavailable, retry),
        Fault::Timeout => Expect::Error(ErrorCode::Timeout, retry),
        Fault::Refusal => Expect::Error(ErrorCode::OutputInvalid, Disposition::Permanent),
        Fault::BadRequest => Expect::Error(ErrorCode::InvalidRequest, Disposition::Permanent),
        Fault::PaymentRequired => {
            Expect::Error(ErrorCode::CredentialsExhausted, Disposition::RotateKey)
        }
        Fault::NotFound => Expect::Error(ErrorCode::ModelUnavailable, Disposition::Permanent),
        Fault::Malformed => Expect::Error(ErrorCode::ProviderError, retry),
        Fault::InvalidJson | Fault::Truncated | Fault::SchemaInvalid => Expect::RejectedAnswer,
        Fault::StreamDrop | Fault::StreamStall => Expect::CleanAnswer,
    }
}

async fn faults_map_to_codes_and_dispositions(kind: ProviderKind) {
    let key = SecretString::from(KEY.to_owned());
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let schema = receipt_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for fault in Fault::ALL {
        let input = text(&format!("receipt [[fake:{fault}]]"));
        let mut req = request(&input, Some(&schema), &key);
        if fault == Fault::Timeout {
            req.timeout = Duration::from_millis(300);
        }
        let got = match provider.call(&req).await {
            Ok(answer) => match quarry_worker::pipeline::check_answer(&validator, &answer.text) {
                Ok(_) => Expect::CleanAnswer,
                Err(_) => Expect::RejectedAnswer,
            },
            Err(error) => {
                assert!(
                    !error.message.contains(KEY),
                    "{kind:?} {fault}: the key leaked: {}",
                    error.message
                );
                Expect::Error(error.code, error.disposition)
            }
        };
        assert_eq!(got, expected(fault), "{kind:?} {fault}");
    }
    // A wrong key is rejected by the fake and classified as such.
    let wrong = SecretString::from("sk-wrong".to_owned());
    let input = text("receipt");
    let error = provider
        .call(&request(&input, Some(&schema), &wrong))
        .await
        .expect_err("401");
    assert_eq!(
        (error.code, error.disposition),
        (ErrorCode::AuthFailed, Disposition::RotateKey)
    );
}

async fn timeout_is_honoured(kind: ProviderKind) {
    let key = SecretString::from(KEY.to_owned());
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let input = text("receipt [[fake:timeout]]");
    let mut req = request(&input, None, &key);
    req.timeout = Duration::from_millis(300);
    let began = Instant::now();
    let error = provider.call(&req).await.expect_err("timeout");
    let took = began.elapsed();
    assert_eq!(
        (error.code, error.disposition),
        (ErrorCode::Timeout, Disposition::Retry { after: None })
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{kind:?}: took {took:?}"
    );
}

/// A worker configuration with one provider of `kind` on `fake`, its `default` alias.
fn one_provider(kind: ProviderKind, fake: &FakeProvider) -> Config {
    let mut config = Config::default();
    config.providers.clear();
    config
        .providers
        .insert("p".into(), provider_config(kind, fake));
    config.routing.aliases.clear();
    config.routing.aliases.insert(
        "default".into(),
        Route {
            provider: "p".into(),
            model: "fake-large".into(),
            images: true,
            fallbacks: vec![],
        },
    );
    config
}

/// The whole pipeline on this provider: output faults are repaired on the second attempt.
async fn repair_succeeds_on_the_second_attempt(kind: ProviderKind) {
    let fake = fake().await;
    let mut config = one_provider(kind, &fake);
    config.worker.repair_attempts = 2;
    let pipeline = Pipeline::new(&config).unwrap();
    let validator = jsonschema::validator_for(&receipt_schema()).unwrap();
    for fault in ["invalid_json", "truncated", "schema_invalid"] {
        let mut job = Job::new(
            format!("j-{fault}"),
            text(&format!("Cafe Luna 5.60 EUR [[fake:{fault}]]")),
        );
        job.json_schema = Some(receipt_schema().into());
        // A name the platform uses; OpenAI and Anthropic (like the fake) refuse `.` in
        // theirs, so it is sent as `receipt_evidence`.
        job.schema_name = Some("receipt.evidence".into());
        let result = pipeline
            .execute(job, &pipeline.unrestricted("test"), Instant::now())
            .await
            .result;
        assert_eq!(
            result.status,
            Status::Ok,
            "{kind:?} {fault}: {:?}",
            result.error
        );
        assert_eq!(result.attempts, 2, "{kind:?} {fault}");
        assert!(validator.is_valid(result.parsed.as_ref().unwrap()));
        let repair = last_request(&fake);
        let turns = match kind {
            ProviderKind::Gemini => repair.body["contents"].as_array().unwrap().len(),
            _ => repair.body["messages"].as_array().unwrap().len(),
        };
        // The job has no instructions: one user turn, then the answer and the correction.
        assert_eq!(
            turns, 3,
            "{kind:?}: the repair adds the answer and the correction"
        );
    }
    // Without repairs, the same fault ends OUTPUT_INVALID with details.
    config.worker.repair_attempts = 0;
    let pipeline = Pipeline::new(&config).unwrap();
    let mut job = Job::new("j-none", text("Cafe [[fake:invalid_json]]"));
    job.json_schema = Some(receipt_schema().into());
    let result = pipeline
        .execute(job, &pipeline.unrestricted("test"), Instant::now())
        .await
        .result;
    let error = result.error.expect("error");
    assert_eq!(error.code, ErrorCode::OutputInvalid);
    assert!(
        error.details.unwrap()["answer"]
            .as_str()
            .unwrap()
            .contains("Sure!")
    );
}

/// Why an answer ended, in the contract's words from each kind's own: a natural end, the
/// output bound, a stop sequence (named as such by Anthropic only).
async fn finish_reasons_are_normalised(kind: ProviderKind) {
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let key = SecretString::from(KEY.to_owned());
    let input = text("Cafe Luna on the corner sold two coffees for 5.60 EUR this morning");
    let call = |max_tokens: u32, stop: Option<&'static [String]>| {
        let mut request = request(&input, None, &key);
        request.max_tokens = max_tokens;
        request.stop = stop;
        request
    };
    let natural = provider.call(&call(512, None)).await.unwrap();
    assert_eq!(natural.finish_reason, FinishReason::Stop, "{kind:?}");
    let cut = provider.call(&call(3, None)).await.unwrap();
    assert_eq!(cut.finish_reason, FinishReason::Length, "{kind:?}");
    assert!(cut.text.chars().count() <= 12, "{kind:?}: {:?}", cut.text);
    static STOP: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["coffees".to_owned()]);
    let stopped = provider.call(&call(512, Some(&STOP[..]))).await.unwrap();
    assert!(
        !stopped.text.contains("coffees"),
        "{kind:?}: {:?}",
        stopped.text
    );
    let expected = match kind {
        ProviderKind::Anthropic => FinishReason::StopSequence,
        _ => FinishReason::Stop,
    };
    assert_eq!(stopped.finish_reason, expected, "{kind:?}");
}

/// `json_mode` without a schema: each kind's own JSON mode, any object back, repaired when
/// the first answer is not JSON.
async fn json_mode_without_a_schema_returns_an_object(kind: ProviderKind) {
    let fake = fake().await;
    let mut config = one_provider(kind, &fake);
    config.worker.repair_attempts = 1;
    let pipeline = Pipeline::new(&config).unwrap();
    for (text, attempts) in [
        ("Cafe Luna 5.60 EUR", 1),
        ("Cafe Luna 5.60 EUR [[fake:invalid_json]]", 2),
    ] {
        let mut job = Job::new(format!("j-{attempts}"), self::text(text));
        job.json_mode = Some(true);
        let result = pipeline
            .execute(job, &pipeline.unrestricted("test"), Instant::now())
            .await
            .result;
        assert_eq!(result.status, Status::Ok, "{kind:?}: {:?}", result.error);
        assert!(
            result.parsed.as_ref().is_some_and(Value::is_object),
            "{kind:?}: {result:?}"
        );
        assert_eq!(
            result.content_type,
            Some(quarry_schemas::result::ContentType::Json)
        );
        // A forced tool's input is an object whatever the model writes: Anthropic needs no
        // repair.
        let attempts = match kind {
            ProviderKind::Anthropic => 1,
            _ => attempts,
        };
        assert_eq!(result.attempts, attempts, "{kind:?} {text}");
        let sent = &last_request(&fake).body;
        match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                assert_eq!(sent["response_format"]["type"], "json_object", "{sent}");
                let system = sent["messages"][0]["content"].as_str().unwrap_or_default();
                assert!(
                    system.contains("JSON"),
                    "OpenAI's JSON mode wants it said: {system}"
                );
            }
            ProviderKind::Anthropic => {
                assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));
            }
            ProviderKind::Gemini => {
                let generation = &sent["generationConfig"];
                assert_eq!(generation["responseMimeType"], "application/json");
                assert!(generation.get("responseSchema").is_none(), "{generation}");
            }
        }
    }
}

/// `reasoning` through each kind's own control, as the fake (like the real API) checks it.
async fn reasoning_maps_to_each_providers_control(kind: ProviderKind) {
    use quarry_schemas::Reasoning;
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let key = SecretString::from(KEY.to_owned());
    let input = text("Cafe Luna 5.60 EUR");
    let schema = receipt_schema();
    for (reasoning, json_mode) in [
        (Reasoning::Off, false),
        (Reasoning::High, false),
        (Reasoning::Medium, true),
    ] {
        let mut request = request(&input, json_mode.then_some(&schema), &key);
        request.reasoning = Some(reasoning);
        request.max_tokens = 20_000;
        // Anthropic takes no temperature beside thinking.
        request.temperature = None;
        let answer = provider.call(&request).await;
        assert!(answer.is_ok(), "{kind:?} {reasoning:?}: {answer:?}");
        if json_mode {
            let parsed: Value = serde_json::from_str(&answer.unwrap().text).unwrap();
            assert!(parsed.is_object(), "{kind:?}: {parsed}");
        }
        let sent = &last_request(&fake).body;
        let control = match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                sent["reasoning_effort"].clone()
            }
            ProviderKind::Anthropic => sent["thinking"].clone(),
            ProviderKind::Gemini => sent["generationConfig"]["thinkingConfig"].clone(),
        };
        let expected = match (kind, reasoning) {
            (ProviderKind::Anthropic, Reasoning::Off) => json!({"type": "disabled"}),
            (ProviderKind::Anthropic, Reasoning::High) => {
                json!({"type": "enabled", "budget_tokens": 16_384})
            }
            (ProviderKind::Anthropic, _) => json!({"type": "enabled", "budget_tokens": 4_096}),
            (ProviderKind::Gemini, Reasoning::Off) => json!({"thinkingBudget": 0}),
            (ProviderKind::Gemini, Reasoning::High) => json!({"thinkingBudget": 24_576}),
            (ProviderKind::Gemini, _) => json!({"thinkingBudget": 8_192}),
            (_, Reasoning::Off) => json!("minimal"),
            (_, Reasoning::High) => json!("high"),
            (_, _) => json!("medium"),
        };
        assert_eq!(control, expected, "{kind:?} {reasoning:?}");
        if kind == ProviderKind::Anthropic && json_mode {
            assert_eq!(
                sent["tool_choice"],
                json!({"type": "auto"}),
                "thinking cannot go with a forced tool"
            );
        }
    }
    // Anthropic's thinking budget is at least 1024 tokens within max_tokens: refused before
    // a call the API would refuse.
    if kind == ProviderKind::Anthropic {
        let seen = fake.stats.requests().len();
        let mut request = request(&input, None, &key);
        request.reasoning = Some(Reasoning::Low);
        request.temperature = None;
        request.max_tokens = 1_000;
        let error = provider.call(&request).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{error:?}");
        assert_eq!(fake.stats.requests().len(), seen, "no call was made");
    }
}

/// Streamed attempts: the deltas make the answer, usage comes from the stream, and faults
/// mid-stream are classified like the same failures unstreamed.
async fn streams_deltas_usage_and_faults(kind: ProviderKind) {
    let key = SecretString::from(KEY.to_owned());
    let fake = fake().await;
    let provider = providers::build("p", &provider_config(kind, &fake)).unwrap();
    let schema = receipt_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let call = async |input: &[InputPart], schema: Option<&Value>, timeout: Option<Duration>| {
        let sink = ChunkSink::new(schema.is_some(), false);
        let mut req = request(input, schema, &key);
        req.sink = Some(&sink);
        if let Some(timeout) = timeout {
            req.timeout = timeout;
        }
        let outcome = provider.call(&req).await;
        (outcome, sink.attempt_text())
    };

    // Structured: the streamed text is the answer (OpenAI's strict rewrite maps it back,
    // value for value).
    let input = text("Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR");
    let (outcome, streamed) = call(&input, Some(&schema), None).await;
    let response = outcome.expect("answer");
    let value: Value = serde_json::from_str(&response.text).expect("JSON answer");
    assert!(validator.is_valid(&value), "{kind:?}: {value}");
    match kind {
        ProviderKind::Openai => {
            serde_json::from_str::<Value>(&streamed).expect("streamed JSON");
        }
        _ => assert_eq!(streamed, response.text, "{kind:?}"),
    }
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);
    assert_eq!(
        response.usage.total_tokens,
        response.usage.input_tokens + response.usage.output_tokens
    );
    assert_eq!(response.finish_reason, FinishReason::Stop);
    let sent = last_request(&fake);
    match kind {
        ProviderKind::Gemini => {
            assert_eq!(sent.path, "/v1beta/models/fake-large:streamGenerateContent");
        }
        ProviderKind::Anthropic => assert_eq!(sent.body["stream"], true),
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            assert_eq!(sent.body["stream"], true);
            assert_eq!(sent.body["stream_options"], json!({"include_usage": true}));
        }
    }
    assert_eq!(sent.headers["accept"], "text/event-stream");

    // Text.
    let input = text("Summarise: the meeting went well");
    let (outcome, streamed) = call(&input, None, None).await;
    let response = outcome.expect("answer");
    assert!(response.text.starts_with("Extracted:"), "{}", response.text);
    assert_eq!(streamed, response.text);

    // Faults: before the stream, mid-stream, and in the streamed answer.
    let retry = Disposition::Retry { after: None };
    for (fault, want) in [
        (Fault::StreamDrop, Some((ErrorCode::ProviderError, retry))),
        (Fault::StreamStall, Some((ErrorCode::Timeout, retry))),
        (
            Fault::Refusal,
            Some((ErrorCode::OutputInvalid, Disposition::Permanent)),
        ),
        (
            Fault::RateLimit,
            Some((
                ErrorCode::RateLimited,
                Disposition::Retry {
                    after: Some(Duration::from_secs(1)),
                },
            )),
        ),
        (Fault::InvalidJson, None),
    ] {
        let input = text(&format!("receipt [[fake:{fault}]]"));
        let (outcome, streamed) =
            call(&input, Some(&schema), Some(Duration::from_millis(500))).await;
        match (outcome, want) {
            (Err(error), Some(want)) => {
                assert_eq!((error.code, error.disposition), want, "{kind:?} {fault}");
                assert!(!error.message.contains(KEY));
            }
            (Ok(answer), None) => {
                // Invalid JSON streams as it is; the pipeline's validation rejects it.
                assert!(quarry_worker::pipeline::check_answer(&validator, &answer.text).is_err());
                assert_eq!(streamed, answer.text);
            }
            (got, want) => panic!("{kind:?} {fault}: {got:?}, wanted {want:?}"),
        }
        if fault == Fault::StreamDrop {
            assert!(
                !streamed.is_empty(),
                "{kind:?}: half the answer streamed before the drop"
            );
        }
    }
}

macro_rules! conformance {
    ($($module:ident => $kind:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn structured_text_and_images() {
                super::structured_text_and_images($kind).await;
            }

            #[tokio::test]
            async fn faults_map_to_codes_and_dispositions() {
                super::faults_map_to_codes_and_dispositions($kind).await;
            }

            #[tokio::test]
            async fn timeout_is_honoured() {
                super::timeout_is_honoured($kind).await;
            }

            #[tokio::test]
            async fn repair_succeeds_on_the_second_attempt() {
                super::repair_succeeds_on_the_second_attempt($kind).await;
            }

            #[tokio::test]
            async fn json_mode_without_a_schema_returns_an_object() {
                super::json_mode_without_a_schema_returns_an_object($kind).await;
            }

            #[tokio::test]
            async fn reasoning_maps_to_each_providers_control() {
                super::reasoning_maps_to_each_providers_control($kind).await;
            }

            #[tokio::test]
            async fn streams_deltas_usage_and_faults() {
                super::streams_deltas_usage_and_faults($kind).await;
            }

            #[tokio::test]
            async fn finish_reasons_are_normalised() {
                super::finish_reasons_are_normalised($kind).await;
            }
        }
    )*};
}

conformance! {
    openai => ProviderKind::Openai,
    anthropic => ProviderKind::Anthropic,
    gemini => ProviderKind::Gemini,
    openai_compatible => ProviderKind::OpenaiCompatible,
}
