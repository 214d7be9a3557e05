//! Provider keys never leave the worker: a batch with recognisable canary keys goes through
//! every failure path — rejected and rotated keys, 429s, 5xx, timeouts, broken output,
//! refusals by policy, contract errors, dead letters, exhausted credentials — against a fake
//! provider that quotes the presented key in every error message. Then the worker's whole
//! log (at debug level), its metrics, every result and every dead letter are searched for
//! the keys.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use lapin::BasicProperties;
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, http_get, within};
use quarry_producer::{CallOptions, ErrorCode, InputPart, Job, JobResult, Status, new_job_id};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Accepted by the fake provider.
const GOOD_KEY: &str = "sk-canary-good-7f3c9d1e5b2a48c6";
/// Refused by the fake provider (401): the worker takes it out of rotation.
const BAD_KEY: &str = "sk-canary-bad-0e8d4a6f1c3b92d7";
/// Distinctive fragments: a key cut or reformatted would still show one of them.
const FRAGMENTS: [&str; 4] = [GOOD_KEY, BAD_KEY, "7f3c9d1e5b2a", "0e8d4a6f1c3b"];

fn job(text: &str) -> Job {
    Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: text.to_owned(),
        }],
    )
}

fn schema() -> serde_json::Value {
    json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}})
}

fn leaks(what: &str, text: &str) -> Vec<String> {
    FRAGMENTS
        .iter()
        .filter(|f| text.contains(*f))
        .map(|f| format!("{what} contains `{f}`"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_keys_appear_in_no_log_metric_result_or_dead_letter() {
    let fleet = Fleet::start(FakeConfig {
        api_key: Some(GOOD_KEY.to_owned()),
        echo_key: true,
        hang: Some(Duration::from_secs(5)),
        ..FakeConfig::default()
    })
    .await;
    let keys = format!(
        "[[providers.fake.keys]]\nname = \"bad\"\napi_key = \"{BAD_KEY}\"\n\
         [[providers.fake.keys]]\nname = \"good\"\napi_key = \"{GOOD_KEY}\"\n"
    );
    let worker = fleet
        .spawn_process_worker_env(
            &keys,
            &[
                ("QUARRY__LOG__FILTER", "debug"),
                ("QUARRY__WORKER__REPAIR_ATTEMPTS", "0"),
            ],
        )
        .await;
    let client = fleet.client().await;
    let call = CallOptions {
        timeout: Duration::from_secs(90),
        ..CallOptions::default()
    };

    // Phase 1: every path but the end of all keys.
    let mut jobs = Vec::new();
    for n in 0..10 {
        jobs.push(job(&format!("Receipt {n}: coffee 3.50")));
    }
    // Audit fields reach the job's log lines and its result, never a metric.
    let mut audited = job("Receipt: audited coffee 3.50");
    audited.purpose = Some("purpose-canary-expenses".into());
    audited.agent_id = Some("agent-canary-42".into());
    jobs.push(audited);
    jobs.push(job("[[fake:rate_limit]] receipt, total 4"));
    jobs.push(job("[[fake:server_error*5]] receipt, total 5"));
    let mut slow = job("[[fake:timeout]] receipt, total 6");
    slow.timeout_ms = Some(quarry_schemas::job::limits::MIN_TIMEOUT_MS);
    jobs.push(slow);
    let mut broken = job("[[fake:invalid_json]] receipt, total 7");
    broken.json_schema = Some(schema().into());
    jobs.push(broken);
    let mut wrong = job("[[fake:schema_invalid*5]] receipt, total 8");
    wrong.json_schema = Some(schema().into());
    jobs.push(wrong);
    let mut bad_schema = job("receipt, total 9");
    bad_schema.json_schema = Some(json!({"type": "no-such-type"}).into());
    jobs.push(bad_schema);
    let mut unknown = job("receipt, total 10");
    unknown.model = Some("no-such-alias".into());
    jobs.push(unknown);
    let mut bypass = job("receipt, total 11");
    bypass.model = Some("default@premium".into());
    jobs.push(bypass);
    let mut late = job("receipt, total 12");
    late.deadline_ms = Some(
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
            - 1000,
    );
    jobs.push(late);
    let mut results: Vec<JobResult> = within(
        120,
        "phase 1 results",
        futures::future::join_all(jobs.into_iter().map(|j| client.extract(j, call))),
    )
    .await
    .into_iter()
    .map(|r| r.expect("every job gets a result"))
    .collect();

    // Phase 2: the remaining key is rejected too.
    let exhausted = within(
        60,
        "phase 2 results",
        futures::future::join_all(
            (0..3).map(|n| client.extract(job(&format!("[[fake:auth*9]] receipt {n}")), call)),
        ),
    )
    .await;
    results.extend(exhausted.into_iter().map(|r| r.unwrap()));

    // Dead letters: not a job, no reply address, a reply queue that does not exist.
    let topology = fleet.topology();
    let replies = fleet.reply_queue().await;
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let stray = job("receipt, total 13");
    for (body, properties) in [
        (
            b"{not json".to_vec(),
            BasicProperties::default()
                .with_user_id("guest".into())
                .with_reply_to(replies.as_str().into())
                .with_correlation_id("garbage".into()),
        ),
        (
            serde_json::to_vec(&job("receipt, total 14")).unwrap(),
            BasicProperties::default().with_user_id("guest".into()),
        ),
        (
            serde_json::to_vec(&stray).unwrap(),
            BasicProperties::default()
                .with_user_id("guest".into())
                .with_reply_to(
                    format!(
                        "{}no-such-reply-queue",
                        fleet.topology().reply_prefix("guest")
                    )
                    .as_str()
                    .into(),
                ),
        ),
    ] {
        quarry_integration::publish_raw(&channel, &topology, "interactive", &body, properties)
            .await;
    }
    let garbage_answer = fleet.take(&replies, 1, 60).await;
    let dead = fleet.take(&topology.dead_queue(), 3, 60).await;

    // The paths were really taken.
    let codes: BTreeSet<&str> = results
        .iter()
        .map(|r| r.error.as_ref().map_or("ok", |e| e.code.as_str()))
        .collect();
    for expected in [
        "ok",
        ErrorCode::ProviderError.as_str(),
        ErrorCode::OutputInvalid.as_str(),
        ErrorCode::InvalidRequest.as_str(),
        ErrorCode::ModelUnresolved.as_str(),
        ErrorCode::NotAuthorized.as_str(),
        ErrorCode::DeadlineExceeded.as_str(),
    ] {
        assert!(
            codes.contains(expected),
            "{expected} missing from {codes:?}"
        );
    }
    assert!(
        codes.contains(ErrorCode::AuthFailed.as_str())
            || codes.contains(ErrorCode::CredentialsExhausted.as_str()),
        "the last key was rejected: {codes:?}"
    );
    let server_error = results
        .iter()
        .find(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::ProviderError)
        })
        .unwrap();
    assert!(
        server_error
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("[redacted]"),
        "the provider quoted the key and the worker scrubbed it: {server_error:?}"
    );
    let requests = fleet.fake.stats.requests();
    let presented: BTreeSet<String> = requests
        .iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .collect();
    assert!(
        presented.contains(&format!("Bearer {BAD_KEY}"))
            && presented.contains(&format!("Bearer {GOOD_KEY}")),
        "both canaries were used: {presented:?}"
    );
    assert!(results.iter().filter(|r| r.status == Status::Ok).count() >= 10);

    // And no key anywhere.
    let mut found = Vec::new();
    for result in &results {
        found.extend(leaks(
            &format!("result {}", result.job_id),
            &serde_json::to_string(result).unwrap(),
        ));
    }
    for delivery in garbage_answer.iter().chain(&dead) {
        found.extend(leaks(
            "a reply or dead letter body",
            &String::from_utf8_lossy(&delivery.data),
        ));
        found.extend(leaks(
            "a reply or dead letter's properties",
            &format!("{:?}", delivery.properties),
        ));
    }
    let (_, metrics) = http_get(worker.http, "/metrics").await;
    found.extend(leaks("/metrics", &metrics));
    let audited = results
        .iter()
        .find(|r| r.purpose.as_deref() == Some("purpose-canary-expenses"))
        .expect("the audited job's result");
    assert_eq!(audited.agent_id.as_deref(), Some("agent-canary-42"));
    for canary in ["purpose-canary-expenses", "agent-canary-42"] {
        assert!(!metrics.contains(canary), "{canary} is no metric label");
    }
    let log = worker.log.lock().unwrap().join("\n");
    for canary in ["purpose-canary-expenses", "agent-canary-42"] {
        assert!(log.contains(canary), "{canary} is in the job's log lines");
    }
    assert!(
        log.lines().count() > 50,
        "the debug log is being searched ({} lines)",
        log.lines().count()
    );
    found.extend(leaks("the worker log", &log));
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));

    let _ = client.close().await;
    let mut worker = worker;
    let status = worker.terminate(60).await;
    assert!(status.success());
    fleet.teardown(&[replies]).await;
}
