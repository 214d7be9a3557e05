//! The real-inference tier: jobs through the whole fleet (SDK → RabbitMQ → `quarry-worker` →
//! the OpenAI-compatible provider → Redis → result) against a real model server — llama.cpp's
//! own HTTP server (PyPI `xllamacpp`) serving SmolLM2-135M-Instruct — instead of the fake
//! provider, so that a misunderstanding of the wire format cannot be mirrored on both sides.
//!
//! It is `#[ignore]`d in the parallel run: inference wants the cores to itself. `scripts/test`
//! starts the server (`start_local_model` in `scripts/lib.sh`) and runs this test alone
//! afterwards with `QUARRY_LOCAL_MODEL_URL` set; without that variable it fails, saying so.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use futures::StreamExt;
use quarry_fake_provider::FakeConfig;
use quarry_integration::Fleet;
use quarry_producer::{ErrorCode, FinishReason, InputPart, Job, JobResult, Status, new_job_id};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The model name the server answers to (`--alias` of `scripts/local_model_server.py`).
const MODEL: &str = "smollm2-135m";

/// The bounded example schemas of `examples/local/` (shared with `scripts/demo`): nested
/// objects, arrays and enums, every string and array bounded so that a very small model cannot
/// ramble past `max_tokens`. Constrained decoding enforces all of their keywords.
fn schemas() -> Vec<(&'static str, &'static str, Value, Vec<&'static str>)> {
    let schema = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    vec![
        (
            "expense",
            "Extract the expense record from this receipt.",
            schema(include_str!(
                "../../../../examples/local/expense.schema.json"
            )),
            vec![
                "Lufthansa, 3 x flight LH400 412.00, TOTAL 412.00 EUR, paid by card",
                "Cafe Central, 2 coffees 7.00, 1 cake 4.50, TOTAL 11.50 EUR",
                "Staples, 5 x printer paper 24.95, TOTAL 24.95 USD",
                "Marriott Courtyard, 2 nights 318.00, TOTAL 318.00 GBP",
            ],
        ),
        (
            "ticket",
            "Turn this customer message into a support ticket.",
            schema(include_str!(
                "../../../../examples/local/ticket.schema.json"
            )),
            vec![
                "Hi, this is Ana (pro plan). The export button crashes the app every time!",
                "Bob here, free tier. How do I change my password?",
                "Urgent: our enterprise account (Carla) cannot log in since this morning.",
            ],
        ),
        (
            "note",
            "Write a CRM note for this conversation.",
            schema(include_str!("../../../../examples/local/note.schema.json")),
            vec![
                "Call with Dana from Acme: happy with the trial, wants a quote by Friday.",
                "Email from Eli: unhappy about the invoice error, asks for a refund.",
                "Meeting with Fay: neutral, will review the proposal with her team next week.",
            ],
        ),
    ]
}

fn job(text: &str, instructions: &str, schema_name: &str, schema: &Value) -> Job {
    let mut job = Job::new(new_job_id(), vec![InputPart::Text { text: text.into() }]);
    job.model = Some("local".into());
    job.instructions = Some(instructions.into());
    job.schema_name = Some(schema_name.into());
    job.json_schema = Some(schema.clone().into());
    // Greedy decoding, so that a run is reproducible; and room for the longest answer the
    // bounded schemas allow (the longest seen is under 200 tokens, with the model's whitespace).
    job.temperature = Some(0.0);
    job.max_tokens = Some(512);
    job
}

/// A pass-through in front of the real server that keeps every request body the worker sent.
#[derive(Clone)]
struct Recorder {
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn forward(State(recorder): State<Recorder>, body: Bytes) -> (StatusCode, Bytes) {
    if let Ok(value) = serde_json::from_slice(&body) {
        recorder.seen.lock().unwrap().push(value);
    }
    let response = recorder
        .client
        .post(format!("{}/chat/completions", recorder.upstream))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the local model server answers");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.bytes().await.unwrap())
}

async fn recorder(upstream: &str) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Recorder {
        upstream: upstream.trim_end_matches('/').to_owned(),
        client: reqwest::Client::new(),
        seen: seen.clone(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), seen)
}

async fn run(fleet: &Fleet, jobs: Vec<Job>) -> HashMap<String, JobResult> {
    let client = fleet.client().await;
    let results = quarry_integration::batch_results(&client, jobs, 4, 100).await;
    let _ = client.close().await;
    results.into_iter().map(|r| (r.job_id.clone(), r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real inference: scripts/test runs it alone, with the local model server it starts"]
async fn real_extractions_through_the_fleet_against_a_local_model() {
    let upstream = std::env::var("QUARRY_LOCAL_MODEL_URL").unwrap_or_else(|_| {
        panic!(
            "QUARRY_LOCAL_MODEL_URL is not set: run scripts/test, which sets up and starts the local \
             model server (or: source scripts/lib.sh; start_local_model /tmp/local-model.log; \
             QUARRY_LOCAL_MODEL_URL=$LOCAL_MODEL_URL cargo nextest run --run-ignored only -E 'binary(local_model)')"
        )
    });
    let started = Instant::now();
    let (proxy, seen) = recorder(&upstream).await;
    let fleet = Fleet::start(FakeConfig::default()).await;
    // `direct`: the server itself, unproxied, for the streamed calls (the recorder reads whole
    // answers).
    let extra = format!(
        "[providers.local]\nkind = \"openai_compatible\"\nbase_url = \"{proxy}\"\ntimeout_ms = 60000\n\
         [providers.direct]\nkind = \"openai_compatible\"\nbase_url = \"{upstream}\"\ntimeout_ms = 60000\n\
         [routing]\ndefault_alias = \"local\"\n[routing.aliases.local]\nprovider = \"local\"\nmodel = \"{MODEL}\"\nimages = false\n\
         [routing.aliases.direct]\nprovider = \"direct\"\nmodel = \"{MODEL}\"\nimages = false\n\
         [plugins.guest]\nmodel_override = true\n"
    );
    let mut worker = fleet.spawn_process_worker_with(&extra).await;

    // 1. Ten extractions over three schemas: every one ok and valid against its schema.
    let mut jobs = Vec::new();
    let mut expected: HashMap<String, Value> = HashMap::new();
    for (name, instructions, schema, texts) in schemas() {
        for text in texts {
            let job = job(text, instructions, name, &schema);
            expected.insert(job.id.clone(), schema.clone());
            jobs.push(job);
        }
    }
    assert!(jobs.len() >= 10);
    let results = run(&fleet, jobs).await;
    for (id, result) in &results {
        assert_eq!(
            result.status,
            Status::Ok,
            "job {id} failed against the real model: {:?}",
            result.error
        );
        let schema = &expected[id];
        let parsed = result.parsed.as_ref().expect("a parsed answer");
        let validator = jsonschema::validator_for(schema).unwrap();
        assert!(
            validator.is_valid(parsed),
            "job {id}: the answer breaks its schema: {parsed}"
        );
        assert_eq!(result.model.as_deref(), Some(MODEL));
        assert!(
            result.usage.output_tokens > 0,
            "usage comes from the server"
        );
        assert_eq!(
            result.finish_reason,
            Some(FinishReason::Stop),
            "job {id}: the model ended its answer by itself"
        );
    }
    eprintln!(
        "{} real extractions ok in {:.1} s; first: {}",
        results.len(),
        started.elapsed().as_secs_f64(),
        results
            .values()
            .next()
            .and_then(|r| r.text.clone())
            .unwrap_or_default()
    );

    // 2. The worker sent the standard OpenAI chat-completions shape.
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.len() >= 10,
            "{} requests reached the server",
            seen.len()
        );
        for body in seen.iter() {
            assert_eq!(body["model"], MODEL);
            let messages = body["messages"].as_array().expect("messages");
            assert!(messages.iter().all(|m| {
                ["system", "user", "assistant"].contains(&m["role"].as_str().unwrap_or(""))
                    && m.get("content").is_some()
            }));
            assert_eq!(messages.last().unwrap()["role"], "user");
            assert_eq!(body["response_format"]["type"], "json_schema");
            let format = &body["response_format"]["json_schema"];
            assert!(format["name"].is_string() && format["schema"].is_object());
            assert!(body["max_tokens"].is_u64());
            assert_eq!(body["temperature"], 0.0, "the job's temperature travels");
        }
    }

    // 3. Too small a max_tokens: cut-off JSON, repaired or OUTPUT_INVALID with details.
    let (name, instructions, schema, texts) = schemas().remove(0);
    let mut short = job(texts[0], instructions, name, &schema);
    short.max_tokens = Some(8);
    let calls_before = seen.lock().unwrap().len();
    let result = run(&fleet, vec![short]).await.into_values().next().unwrap();
    match result.status {
        Status::Ok => assert!(
            jsonschema::validator_for(&schema)
                .unwrap()
                .is_valid(result.parsed.as_ref().unwrap())
        ),
        Status::Error => {
            let error = result.error.as_ref().unwrap();
            assert_eq!(error.code, ErrorCode::OutputInvalid, "{error:?}");
            assert!(
                error.details.is_some(),
                "OUTPUT_INVALID says why: {error:?}"
            );
            assert_eq!(
                result.finish_reason,
                Some(FinishReason::Length),
                "the last answer was cut at max_tokens"
            );
        }
    }
    assert!(
        seen.lock().unwrap().len() > calls_before,
        "the cut-off answer came from the server"
    );
    eprintln!(
        "max_tokens 8: {:?} after {} attempts",
        result.error.as_ref().map(|e| &e.code),
        result.attempts
    );

    // 4. An invalid schema: INVALID_REQUEST, and the server is not asked.
    let calls_before = seen.lock().unwrap().len();
    let invalid = job(
        texts[0],
        instructions,
        "broken",
        &json!({"type": "objekt", "properties": {"a": {"type": "string"}}}),
    );
    let result = run(&fleet, vec![invalid])
        .await
        .into_values()
        .next()
        .unwrap();
    assert_eq!(
        result.error.as_ref().map(|e| e.code),
        Some(ErrorCode::InvalidRequest),
        "{result:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), calls_before);

    // 5. Streamed from the real server, token by token: the deltas make the validated answer.
    let client = fleet.client().await;
    let (name, instructions, schema, texts) = schemas().remove(0);
    let mut streamed = job(texts[0], instructions, name, &schema);
    streamed.model = Some("direct".into());
    let mut events = client
        .stream(streamed, quarry_producer::CallOptions::default())
        .await
        .unwrap();
    let (mut shown, mut deltas, mut partials) = (String::new(), 0, 0);
    let result = loop {
        match events.next().await.expect("the stream's events").unwrap() {
            quarry_producer::StreamEvent::Delta(text) => {
                deltas += 1;
                shown.push_str(&text);
            }
            quarry_producer::StreamEvent::Partial(_) => partials += 1,
            quarry_producer::StreamEvent::Reset(_) => shown.clear(),
            quarry_producer::StreamEvent::Final(result) => break *result,
        }
    };
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert!(
        jsonschema::validator_for(&schema)
            .unwrap()
            .is_valid(result.parsed.as_ref().unwrap())
    );
    assert_eq!(Some(shown), result.text, "the deltas make the answer");
    assert!(
        deltas >= 2 && partials >= 1,
        "{deltas} deltas, {partials} partials"
    );
    assert!(result.usage.output_tokens > 0, "usage from the stream");
    eprintln!(
        "streamed from the local model: {deltas} deltas, {} output tokens, {} ms",
        result.usage.output_tokens, result.latency_ms
    );
    let _ = client.close().await;

    assert!(worker.terminate(60).await.success());
    fleet.teardown(&[]).await;
    let took = started.elapsed();
    eprintln!("real-inference tier: {:.1} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(120),
        "the tier takes under two minutes: {took:?}"
    );
}
