//! The Rust types and the JSON Schema files describe the same messages: examples built from the
//! types validate against the schemas, and broken messages are rejected by both.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use jsonschema::Validator;
use quarry_schemas::control::ControlReply;
use quarry_schemas::job::ImageMime;
use quarry_schemas::result::{ContentType, ResultVersion};
use quarry_schemas::{
    Chunk, ErrorCode, ErrorInfo, FinishReason, ImagePart, InputPart, JOB_V1_SCHEMA, Job, JobResult,
    RESULT_V1_SCHEMA, ResetReason, Status, Usage, examples,
};
use serde_json::{Value, json};

fn validator(text: &str) -> Validator {
    let schema: Value = serde_json::from_str(text).expect("schema file is JSON");
    jsonschema::validator_for(&schema).expect("schema file is a valid JSON Schema")
}

fn example_jobs() -> Vec<Job> {
    let mut text = Job::new(
        "01HZX-text",
        vec![InputPart::Text {
            text: "Coffee 3.50".into(),
        }],
    );
    text.custom_id = Some("row-1".into());

    let mut full = Job::new(
        "01HZX-full",
        vec![
            InputPart::Text {
                text: "Receipt attached".into(),
            },
            InputPart::Image(ImagePart {
                mime: ImageMime::Png,
                data: "iVBORw0KGgo=".into(),
            }),
        ],
    );
    full.custom_id = Some("receipt-42".into());
    full.batch_id = Some("batch-7".into());
    full.instructions = Some("Extract the expense record.".into());
    full.json_schema =
        Some(quarry_schemas::JsonSchema::from_json(examples::RECEIPT).expect("receipt schema"));
    // Names the platform uses: `.` in schema names, `:` in profiles.
    full.schema_name = Some("receipt.evidence".into());
    full.model = Some("default@openai-codex:work".into());
    full.profile = Some("openai-codex:work".into());
    full.max_tokens = Some(512);
    full.temperature = Some(0.0);
    full.stop = Some(vec!["\n\n".into()]);
    full.timeout_ms = Some(30_000);
    full.deadline_ms = Some(1_900_000_000_000);
    full.purpose = Some("expense-report".into());
    full.agent_id = Some("agent-7".into());
    full.json_mode = Some(true);
    full.metadata = Some(json!({"row": 42, "tags": ["a", "b"]}).into());
    let mut streamed = text.clone();
    streamed.id = "01HZX-stream".into();
    streamed.stream = Some(true);
    streamed.json_mode = Some(true);
    vec![text, full, streamed]
}

fn example_results() -> Vec<JobResult> {
    let ok = JobResult {
        version: ResultVersion::V1,
        job_id: "01HZX-full".into(),
        custom_id: Some("receipt-42".into()),
        batch_id: Some("batch-7".into()),
        status: Status::Ok,
        text: Some(r#"{"merchant":"Cafe"}"#.into()),
        parsed: Some(json!({"merchant": "Cafe"})),
        content_type: Some(ContentType::Json),
        provider: Some("fake".into()),
        model: Some("fake-large".into()),
        finish_reason: Some(FinishReason::Stop),
        usage: Usage {
            input_tokens: 120,
            cached_input_tokens: 100,
            cache_write_tokens: 20,
            output_tokens: 30,
            total_tokens: 150,
        },
        cost_usd: Some(0.00042),
        latency_ms: 812,
        queue_ms: Some(35),
        attempts: 1,
        purpose: Some("expense-report".into()),
        agent_id: Some("agent-7".into()),
        metadata: Some(json!({"row": 42}).into()),
        error: None,
    };
    let mut failed = JobResult::failed(
        "01HZX-text",
        ErrorInfo {
            details: Some(json!([{"path": "/total", "message": "is not a number"}])),
            ..ErrorInfo::new(ErrorCode::OutputInvalid, "answer does not match the schema")
        },
    );
    failed.attempts = 2;
    let mut results = vec![ok, failed];
    results.extend(
        ErrorCode::ALL
            .iter()
            .map(|&code| JobResult::failed("j", ErrorInfo::new(code, "m"))),
    );
    results
}

#[test]
fn job_examples_validate_against_the_schema_and_round_trip() {
    let schema = validator(JOB_V1_SCHEMA);
    for job in example_jobs() {
        let value = serde_json::to_value(&job).expect("serialise");
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} invalid: {errors:?}", job.id);
        assert_eq!(job.check(), Ok(()));
        let back: Job = serde_json::from_value(value).expect("deserialise");
        assert_eq!(back, job);
    }
}

#[test]
fn result_examples_validate_against_the_schema_and_round_trip() {
    let schema = validator(RESULT_V1_SCHEMA);
    for result in example_results() {
        let value = serde_json::to_value(&result).expect("serialise");
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} invalid: {errors:?}", result.job_id);
        let back: JobResult = serde_json::from_value(value).expect("deserialise");
        assert_eq!(back, result);
    }
}

/// Each broken job must be refused by the JSON Schema and by the Rust side (serde or `check`).
#[test]
fn chunk_examples_validate_against_the_schema_and_round_trip() {
    let schema = validator(quarry_schemas::CHUNK_V1_SCHEMA);
    let chunks = [
        Chunk::delta(
            "j",
            0,
            r#"{"merchant":"Ca"#.into(),
            Some(json!({"merchant": "Ca"})),
        ),
        Chunk::delta("j", 1, "fe".into(), None),
        Chunk::reset("j", 2, ResetReason::Retry),
        Chunk::reset("j", 0, ResetReason::Redelivered),
        Chunk::reset("j", 3, ResetReason::Repair),
        Chunk::reset("j", 4, ResetReason::Rewritten),
    ];
    for chunk in chunks {
        let value = serde_json::to_value(&chunk).expect("serialise");
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{value} invalid: {errors:?}");
        let back: Chunk = serde_json::from_value(value).expect("deserialise");
        assert_eq!(back, chunk);
    }
    for broken in [
        json!({"version": "chunk.v1", "job_id": "j", "seq": -1, "kind": "delta", "text": "a"}),
        json!({"version": "chunk.v1", "job_id": "j", "seq": 0, "kind": "append"}),
        json!({"version": "chunk.v2", "job_id": "j", "seq": 0, "kind": "reset"}),
        json!({"version": "chunk.v1", "seq": 0, "kind": "reset"}),
    ] {
        assert!(!schema.is_valid(&broken), "schema accepted {broken}");
    }
    // A reset reason a newer worker adds still reads as a reset.
    let newer: Chunk = serde_json::from_value(
        json!({"version": "chunk.v1", "job_id": "j", "seq": 0, "kind": "reset", "reason": "moved"}),
    )
    .expect("deserialise");
    assert_eq!(newer.reason, Some(ResetReason::Other));
}

#[test]
fn broken_jobs_are_rejected_by_both_sides() {
    let schema = validator(JOB_V1_SCHEMA);
    let good = serde_json::to_value(&example_jobs()[1]).expect("serialise");
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("unknown field", Box::new(|v| v["max_token"] = json!(5))),
        (
            "wrong version",
            Box::new(|v| v["version"] = json!("job.v2")),
        ),
        (
            "missing id",
            Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("id")))),
        ),
        ("empty id", Box::new(|v| v["id"] = json!(""))),
        (
            "a batch job that streams",
            Box::new(|v| {
                v["batch_id"] = json!("batch-7");
                v["stream"] = json!(true);
            }),
        ),
        (
            "profile with @",
            Box::new(|v| v["profile"] = json!("team@a")),
        ),
        (
            "schema name with a space",
            Box::new(|v| v["schema_name"] = json!("receipt evidence")),
        ),
        (
            "missing input",
            Box::new(|v| drop(v.as_object_mut().map(|o| o.remove("input")))),
        ),
        ("empty input", Box::new(|v| v["input"] = json!([]))),
        ("input not a list", Box::new(|v| v["input"] = json!("text"))),
        (
            "unknown part type",
            Box::new(|v| v["input"][0] = json!({"type": "audio", "text": "x"})),
        ),
        (
            "text part without text",
            Box::new(|v| v["input"][0] = json!({"type": "text"})),
        ),
        (
            "extra field in part",
            Box::new(|v| v["input"][0]["lang"] = json!("en")),
        ),
        (
            "bad mime",
            Box::new(|v| v["input"][1]["mime"] = json!("image/tiff")),
        ),
        (
            "image without data",
            Box::new(|v| v["input"][1]["data"] = json!("")),
        ),
        (
            "image as URL-safe base64",
            Box::new(|v| v["input"][1]["data"] = json!("aGk_-w==")),
        ),
        (
            "image as unpadded base64",
            Box::new(|v| v["input"][1]["data"] = json!("aGVsbG8")),
        ),
        (
            "image as a data URL",
            Box::new(|v| v["input"][1]["data"] = json!("data:image/png;base64,aGk=")),
        ),
        (
            "image base64 with a line break",
            Box::new(|v| v["input"][1]["data"] = json!("aGVs\nbG8h")),
        ),
        (
            "schema not an object",
            Box::new(|v| v["json_schema"] = json!("object")),
        ),
        (
            "bad schema name",
            Box::new(|v| v["schema_name"] = json!("has space")),
        ),
        ("bad profile", Box::new(|v| v["profile"] = json!("team a"))),
        ("max_tokens zero", Box::new(|v| v["max_tokens"] = json!(0))),
        (
            "max_tokens negative",
            Box::new(|v| v["max_tokens"] = json!(-1)),
        ),
        (
            "temperature too high",
            Box::new(|v| v["temperature"] = json!(2.5)),
        ),
        (
            "too many stops",
            Box::new(|v| v["stop"] = json!(["a", "b", "c", "d", "e"])),
        ),
        ("timeout zero", Box::new(|v| v["timeout_ms"] = json!(0))),
        (
            "deadline as text",
            Box::new(|v| v["deadline_ms"] = json!("tomorrow")),
        ),
        (
            "id too long",
            Box::new(|v| v["id"] = json!("x".repeat(129))),
        ),
    ];
    for (name, mutate) in mutations {
        let mut value = good.clone();
        mutate(&mut value);
        assert!(!schema.is_valid(&value), "schema accepted: {name}");
        let rust = serde_json::from_value::<Job>(value)
            .map_err(|e| e.to_string())
            .and_then(|job| job.check().map_err(|e| e.to_string()));
        assert!(rust.is_err(), "Rust types accepted: {name}");
    }
}

#[test]
fn broken_results_are_rejected_by_the_schema() {
    let schema = validator(RESULT_V1_SCHEMA);
    let results = example_results();
    let ok = serde_json::to_value(&results[0]).expect("serialise");
    let failed = serde_json::to_value(&results[1]).expect("serialise");

    let mut error_without_error = failed.clone();
    error_without_error
        .as_object_mut()
        .map(|o| o.remove("error"));
    let mut ok_with_error = ok.clone();
    ok_with_error["error"] = failed["error"].clone();
    let mut unknown_code = failed.clone();
    unknown_code["error"]["code"] = json!("OOPS");
    let mut negative_tokens = ok.clone();
    negative_tokens["usage"]["input_tokens"] = json!(-1);

    for (name, value) in [
        ("status error without error", error_without_error),
        ("status ok with error", ok_with_error),
        ("unknown error code", unknown_code.clone()),
        ("negative tokens", negative_tokens.clone()),
    ] {
        assert!(!schema.is_valid(&value), "schema accepted: {name}");
    }
    // A reader tolerates a code it does not know (docs/wire-contract.md, "Compatibility"):
    // an error all the same, its text kept.
    let decoded = serde_json::from_value::<JobResult>(unknown_code).expect("an unknown code");
    let error = decoded.error.expect("error");
    assert_eq!(
        (error.code, error.code_text()),
        (ErrorCode::Unknown, "OOPS")
    );
    assert!(serde_json::from_value::<JobResult>(negative_tokens).is_err());
}

/// A result and a control reply as a newer worker might write them: fields this version does
/// not know, at every level, and an error code it does not know.
#[test]
fn an_older_reader_accepts_a_newer_result() {
    let results = example_results();
    let mut newer = serde_json::to_value(&results[0]).expect("serialise");
    newer["served_by"] = json!("worker-7");
    newer["usage"]["reasoning_tokens"] = json!(3);
    newer["finish_reason"] = json!("pause_turn");
    let decoded: JobResult = serde_json::from_value(newer).expect("newer ok result");
    assert_eq!(
        decoded.finish_reason,
        Some(FinishReason::Other),
        "a finish reason this version does not know reads as other"
    );
    let expected = JobResult {
        finish_reason: Some(FinishReason::Other),
        ..results[0].clone()
    };
    assert_eq!(decoded, expected, "the known fields are read as before");

    let mut newer_error = serde_json::to_value(&results[1]).expect("serialise");
    newer_error["error"]["code"] = json!("QUOTA_PAUSED");
    newer_error["error"]["retry_after_ms"] = json!(1500);
    let decoded: JobResult = serde_json::from_value(newer_error).expect("newer failed result");
    let error = decoded.error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::Unknown);
    assert_eq!(error.code_text(), "QUOTA_PAUSED");
    assert!(!decoded.is_ok(), "an unknown code is still an error");
    // Written again, the unknown code is kept as it came.
    let rewritten = serde_json::to_value(&decoded).expect("serialise");
    assert_eq!(rewritten["error"]["code"], json!("QUOTA_PAUSED"));

    let reply = json!({
        "version": "control.v1", "action": "batch_status", "batch_id": "b",
        "status": "ok", "progress": {"ok": 2}, "cost_usd": 0.5, "paused": true
    });
    let reply: ControlReply = serde_json::from_value(reply).expect("newer control reply");
    assert_eq!(reply.progress.expect("progress")["ok"], 2);
}

#[test]
fn finish_reasons_match_the_schema_enum() {
    let schema: Value = serde_json::from_str(RESULT_V1_SCHEMA).expect("json");
    let listed: Vec<&str> = schema["properties"]["finish_reason"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let words: Vec<&str> = FinishReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(listed, words);
    for reason in FinishReason::ALL {
        assert_eq!(
            serde_json::to_value(reason).expect("serialise"),
            json!(reason.as_str())
        );
    }
}

#[test]
fn error_codes_match_the_schema_enum() {
    let schema: Value = serde_json::from_str(RESULT_V1_SCHEMA).expect("json");
    let listed: Vec<&str> = schema["$defs"]["error_code"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, ours);
    for code in ErrorCode::ALL {
        assert_eq!(
            serde_json::to_value(code).expect("ser"),
            json!(code.as_str())
        );
    }
}

#[test]
fn example_extraction_schemas_are_valid_json_schemas() {
    for (name, text) in examples::ALL {
        let schema: Value = serde_json::from_str(text).expect("json");
        assert!(
            jsonschema::meta::is_valid(&schema),
            "{name} is not a valid JSON Schema"
        );
        assert!(
            jsonschema::validator_for(&schema).is_ok(),
            "{name} does not compile"
        );
    }
}

#[test]
fn control_messages_validate_against_their_schemas_and_round_trip() {
    use quarry_schemas::control::{ControlAction, ControlReply, ControlRequest, ControlVersion};
    use quarry_schemas::{CONTROL_REPLY_V1_SCHEMA, CONTROL_V1_SCHEMA};
    let request_schema = validator(CONTROL_V1_SCHEMA);
    let request = ControlRequest::cancel_batch("batch-7");
    let value = serde_json::to_value(&request).unwrap();
    assert!(request_schema.is_valid(&value), "{value}");
    assert_eq!(
        serde_json::from_value::<ControlRequest>(value.clone()).unwrap(),
        request
    );
    let describe = ControlRequest::describe();
    let value = serde_json::to_value(&describe).unwrap();
    assert_eq!(
        value,
        json!({"version": "control.v1", "action": "describe"})
    );
    assert!(request_schema.is_valid(&value), "{value}");
    assert!(describe.check().is_ok());
    for one in [
        ControlRequest::cancel_job("j-1", None),
        ControlRequest::cancel_job("j-1", Some("batch-7".into())),
    ] {
        let value = serde_json::to_value(&one).unwrap();
        assert!(request_schema.is_valid(&value), "{value}");
        assert!(one.check().is_ok());
    }
    for broken in [
        json!({"version": "control.v1", "action": "cancel_everything", "batch_id": "b"}),
        json!({"version": "control.v1", "action": "cancel_batch"}),
        json!({"version": "control.v1", "action": "cancel_batch", "batch_id": "b", "x": 1}),
        json!({"version": "control.v1", "action": "describe", "batch_id": "b"}),
        json!({"version": "control.v1", "action": "cancel_job"}),
        json!({"version": "control.v1", "action": "cancel_batch", "batch_id": "b", "job_id": "j"}),
    ] {
        assert!(!request_schema.is_valid(&broken), "{broken}");
        let refused = serde_json::from_value::<ControlRequest>(broken.clone())
            .map_err(|e| e.to_string())
            .and_then(|r| r.check().map_err(|e| e.to_string()));
        assert!(refused.is_err(), "{broken}");
    }
    let reply_schema = validator(CONTROL_REPLY_V1_SCHEMA);
    let replies = [
        ControlReply {
            version: ControlVersion::V1,
            action: ControlAction::CancelBatch,
            batch_id: Some("batch-7".into()),
            status: Status::Ok,
            error: None,
            progress: None,
            cost_usd: None,
            description: None,
            job_id: None,
        },
        ControlReply {
            version: ControlVersion::V1,
            action: ControlAction::BatchStatus,
            batch_id: Some("batch-7".into()),
            status: Status::Ok,
            error: None,
            progress: Some([("ok".to_owned(), 12), ("tokens".to_owned(), 3400)].into()),
            cost_usd: Some(0.0123),
            description: None,
            job_id: None,
        },
        ControlReply {
            version: ControlVersion::V1,
            action: ControlAction::CancelBatch,
            batch_id: Some("batch-7".into()),
            status: Status::Error,
            error: Some(ErrorInfo::new(ErrorCode::NotAuthorized, "unknown plugin")),
            progress: None,
            cost_usd: None,
            description: None,
            job_id: None,
        },
    ];
    let described = ControlReply {
        version: ControlVersion::V1,
        action: ControlAction::Describe,
        batch_id: None,
        status: Status::Ok,
        error: None,
        progress: None,
        cost_usd: None,
        job_id: None,
        description: Some(quarry_schemas::control::Description {
            contract: vec!["job.v1".into(), "result.v1".into(), "control.v1".into()],
            capabilities: vec!["json_mode".into()],
            plugin: "receipts".into(),
            default_model: "fast".into(),
            model_override: true,
            aliases: vec![quarry_schemas::control::AliasView {
                name: "fast".into(),
                targets: vec![quarry_schemas::control::TargetView {
                    provider: "openai".into(),
                    model: "gpt-4.1-mini".into(),
                    images: true,
                }],
            }],
            targets: vec![],
            default_profile: "default".into(),
            profiles: vec!["default".into()],
            agent_id_override: false,
            max_tokens_ceiling: Some(2048),
            default_max_tokens: 1024,
            job_budget_ms: 30_000,
            quotas: vec![quarry_schemas::control::QuotaView {
                name: "daily_tokens".into(),
                limit: 5_000_000,
                remaining: Some(4_999_000),
            }],
        }),
    };
    let replies: Vec<ControlReply> = replies.into_iter().chain([described]).collect();
    for reply in replies {
        let value = serde_json::to_value(&reply).unwrap();
        assert!(reply_schema.is_valid(&value), "{value}");
        assert_eq!(
            serde_json::from_value::<ControlReply>(value).unwrap(),
            reply
        );
    }
}

/// The rows of the first table under `heading` in `page`: first cell's backticked names, and
/// the whole row.
fn table_rows<'p>(page: &'p str, heading: &str) -> Vec<(Vec<&'p str>, &'p str)> {
    let start = page
        .find(heading)
        .unwrap_or_else(|| panic!("docs/wire-contract.md has no {heading:?}"));
    page[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let first = row.split('|').nth(1).unwrap_or_default();
            let names = first
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, name)| name)
                .collect();
            (names, row)
        })
        .collect()
}

/// `1000000` as the page writes it: `1,000,000`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_wire_contract_page_documents_every_schema_field_and_no_other() {
    let page = include_str!("../../docs/wire-contract.md");
    for (schema_text, heading, bounds) in [
        (JOB_V1_SCHEMA, "### Job fields (`job.v1`)", true),
        (RESULT_V1_SCHEMA, "## The result (`result.v1`)", false),
        (
            quarry_schemas::CHUNK_V1_SCHEMA,
            "### `chunk.v1` fields",
            false,
        ),
        (
            quarry_schemas::CONTROL_V1_SCHEMA,
            "### `control.v1` fields",
            true,
        ),
        (
            quarry_schemas::CONTROL_REPLY_V1_SCHEMA,
            "### `control-reply.v1` fields",
            false,
        ),
    ] {
        let schema: Value = serde_json::from_str(schema_text).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        let rows = table_rows(page, heading);
        for (name, property) in properties {
            let description = property["description"].as_str().unwrap_or_default();
            assert!(
                !description.is_empty(),
                "{heading}: `{name}` has no description in its schema"
            );
            let row = rows
                .iter()
                .find(|(names, _)| names.contains(&name.as_str()))
                .map(|(_, row)| *row)
                .unwrap_or_else(|| panic!("{heading}: no row documents `{name}`"));
            if !bounds {
                continue;
            }
            // Every limit the schema sets is the page's: lengths, counts and ranges.
            for key in ["maxLength", "maxItems", "maximum", "minimum", "minLength"] {
                let Some(limit) = property[key].as_u64() else {
                    continue;
                };
                if limit <= 1 && key.starts_with("min") {
                    continue;
                }
                assert!(
                    row.contains(&grouped(limit)),
                    "{heading}: `{name}` has {key} {limit} in its schema, not on the page: {row}"
                );
            }
        }
        for (names, row) in &rows {
            for name in names {
                assert!(
                    properties.contains_key(*name),
                    "{heading}: the page documents `{name}`, which the schema does not have: {row}"
                );
            }
        }
    }
}

/// Each example schema as every SDK writes it (compact, keys sorted): the TypeScript SDK's
/// tests check its `canonicalJson` against the same file, so a job from either language
/// carries the same schema text and hits the same compiled schema in a worker's cache.
#[test]
fn example_schemas_are_written_as_the_canonical_file_says() {
    let canonical: serde_json::Map<String, Value> =
        serde_json::from_str(include_str!("../examples/canonical.json")).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".schema.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let schema = quarry_schemas::JsonSchema::from_json(&text).unwrap();
        assert_eq!(
            Some(schema.as_str()),
            canonical[&name].as_str(),
            "{name}: examples/canonical.json is not how the Rust SDK writes it"
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        canonical.len(),
        "every example is in canonical.json"
    );
}
