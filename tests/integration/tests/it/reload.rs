//! Configuration reload in a running worker process: `SIGHUP` and the watched file apply new
//! `[plugins]` and `[routing]` without a restart; a file that does not load changes nothing
//! and the worker says why.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, ProcessWorker, counter_sum, http_get, parse_metrics};
use quarry_producer::{
    CallOptions, Client, ErrorCode, InputPart, Job, JobResult, Status, new_job_id,
};

/// The guest plugin may use only its default alias.
const LOCKED: &str = "[plugins.guest]\n";

/// The guest plugin may choose, and a second alias exists (an `[routing.aliases]` table
/// replaces the built-in one, so `default` is written out).
const OPEN: &str = "[plugins.guest]\nmodel_override = true\n\
                    [routing.aliases.default]\nprovider = \"fake\"\nmodel = \"fake-large\"\n\
                    [routing.aliases.smart]\nprovider = \"fake\"\nmodel = \"fake-smart\"\n";

/// The worker's log message for a reload it refused.
const REJECTED: &str = "configuration reload rejected; the running configuration stays";

async fn ask(client: &Client, model: &str) -> JobResult {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "Summarise: reload".into(),
        }],
    );
    job.model = Some(model.into());
    client
        .extract(job, CallOptions::default())
        .await
        .expect("a result")
}

/// Rewrites the worker's file: its fleet part stays, the plugin and routing part is `tail`.
fn rewrite(worker: &ProcessWorker, base: &str, tail: &str) {
    std::fs::write(&worker.config, format!("{base}\n{tail}")).expect("rewrite the config");
}

async fn metric(worker: &ProcessWorker, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(worker.http, "/metrics").await;
    counter_sum(&parse_metrics(&body), name, labels)
}

#[tokio::test]
async fn sighup_applies_new_policies_and_keeps_the_old_on_a_bad_file() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_process_worker_with(LOCKED).await;
    let base = std::fs::read_to_string(&worker.config).unwrap();
    let base = base.strip_suffix(LOCKED).unwrap().to_owned();
    let client = fleet.client().await;

    let refused = ask(&client, "smart").await;
    assert_eq!(refused.status, Status::Error);
    assert_eq!(
        refused.error.as_ref().unwrap().code,
        ErrorCode::NotAuthorized,
        "{refused:?}"
    );

    // New policy and alias, then SIGHUP: applied without a restart.
    rewrite(&worker, &base, OPEN);
    let from = worker.log_len();
    worker.signal("HUP");
    let event = worker.logged(from, "configuration reloaded", 30).await;
    assert_eq!(event["trigger"], "SIGHUP");
    assert_eq!(event["aliases"], 2);
    let answered = ask(&client, "smart").await;
    assert_eq!(answered.status, Status::Ok, "{answered:?}");
    assert_eq!(answered.model.as_deref(), Some("fake-smart"));

    // A file that does not parse: rejected, said why, the running policy stays.
    rewrite(&worker, &base, "[plugins.guest\nmodel_override = true\n");
    let from = worker.log_len();
    worker.signal("HUP");
    let event = worker.logged(from, REJECTED, 30).await;
    assert_eq!(event["level"], "ERROR");
    assert!(
        event["error"].as_str().unwrap().contains("configuration"),
        "{event}"
    );
    assert_eq!(ask(&client, "smart").await.status, Status::Ok);

    // A change the running worker cannot take is named, not applied; the rest applies.
    rewrite(
        &worker,
        &base.replace("retry_base_ms = 10", "retry_base_ms = 20"),
        LOCKED,
    );
    let from = worker.log_len();
    worker.signal("HUP");
    let waiting = worker
        .logged(
            from,
            "configuration sections changed that apply only after a restart",
            30,
        )
        .await;
    assert_eq!(waiting["sections"], "worker");
    let refused = ask(&client, "smart").await;
    assert_eq!(refused.error.unwrap().code, ErrorCode::NotAuthorized);

    assert_eq!(
        metric(
            &worker,
            "quarry_config_reloads_total",
            &[("outcome", "applied")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &worker,
            "quarry_config_reloads_total",
            &[("outcome", "rejected")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&worker, "quarry_config_last_reload_successful", &[]).await,
        1.0
    );
    drop(client);
    let mut worker = worker;
    assert!(worker.terminate(30).await.success());
    fleet.teardown(&[]).await;
}

#[tokio::test]
async fn a_watched_file_reloads_when_it_changes() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet
        .spawn_process_worker_env(LOCKED, &[("QUARRY__WORKER__CONFIG_WATCH_SECS", "1")])
        .await;
    let base = std::fs::read_to_string(&worker.config).unwrap();
    let base = base.strip_suffix(LOCKED).unwrap().to_owned();
    let client = fleet.client().await;
    assert_eq!(ask(&client, "smart").await.status, Status::Error);

    let from = worker.log_len();
    rewrite(&worker, &base, OPEN);
    let event = worker.logged(from, "configuration reloaded", 30).await;
    assert_eq!(event["trigger"], "file");
    assert_eq!(ask(&client, "smart").await.status, Status::Ok);

    // A bad edit is rejected once, and the gauge says the last reload failed.
    let from = worker.log_len();
    rewrite(
        &worker,
        &base,
        &OPEN.replace(
            "provider = \"fake\"\nmodel = \"fake-smart\"",
            "provider = \"nowhere\"\nmodel = \"m\"",
        ),
    );
    let event = worker.logged(from, REJECTED, 30).await;
    assert!(
        event["error"]
            .as_str()
            .unwrap()
            .contains("routing.aliases.smart"),
        "the error names the key at fault: {event}"
    );
    assert_eq!(
        metric(&worker, "quarry_config_last_reload_successful", &[]).await,
        0.0
    );
    assert_eq!(ask(&client, "smart").await.status, Status::Ok);
    drop(client);
    let mut worker = worker;
    assert!(worker.terminate(30).await.success());
    fleet.teardown(&[]).await;
}
