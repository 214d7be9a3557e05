//! The `quarry` command line against a real fleet.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, amqp_url, binary, within};
use quarry_producer::{JobResult, Status};
use std::collections::HashSet;
use std::path::Path;
use tokio::process::Command;

fn schema_path() -> String {
    format!(
        "{}/../../schemas/examples/receipt.schema.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

async fn quarry(namespace: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(binary("quarry"));
    command
        .env("QUARRY_AMQP_URL", amqp_url())
        .args(["--namespace", namespace])
        .args(args);
    within(120, "quarry to finish", command.output())
        .await
        .expect("run quarry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_writes_one_result_per_input_line() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jobs.jsonl");
    let mut lines = String::new();
    for n in 0..120 {
        lines.push_str(&format!(
            "{{\"custom_id\": \"r{n}\", \"text\": \"Cafe {n}\\nTOTAL {n}.00 EUR\"}}\n"
        ));
    }
    lines.push('\n'); // blank lines are skipped
    lines.push_str(
        "{\"text\": \"no custom id: the line number is used\", \"model\": \"no-such-alias\"}\n",
    );
    std::fs::write(&input, lines).unwrap();
    let output = dir.path().join("results.jsonl");

    let run = quarry(
        &fleet.namespace,
        &[
            "submit",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--schema",
            &schema_path(),
            "--instructions",
            "Extract the expense record.",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "quarry failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("121 jobs"), "{stdout}");
    assert!(stdout.contains("ok:      120"), "{stdout}");
    assert!(stdout.contains("MODEL_UNRESOLVED 1"), "{stdout}");

    let results: Vec<JobResult> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a result.v1"))
        .collect();
    assert_eq!(results.len(), 121);
    let ids: HashSet<&str> = results
        .iter()
        .filter_map(|r| r.custom_id.as_deref())
        .collect();
    assert_eq!(ids.len(), 121, "one result per input line");
    assert!(
        ids.contains("122"),
        "the unnamed line is custom id = its line number"
    );
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    assert_eq!(ok, 120);
    assert!(
        results
            .iter()
            .filter(|r| r.status == Status::Ok)
            .all(|r| r.parsed.is_some())
    );

    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refuses_bad_input_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let cases = [
        ("{\"text\": \"fine\"}\n{\"text\": 5}\n", ":2:"),
        ("{\"text\": \"fine\"}\n\n{not json\n", ":3:"),
        (
            "{\"text\": \"a\", \"custom_id\": \"x\"}\n{\"text\": \"b\", \"custom_id\": \"x\"}\n",
            "already used on line 1",
        ),
        ("{\"text\": \"a\", \"temprature\": 1}\n", "unknown field"),
        (
            "{\"custom_id\": \"no content\"}\n",
            "missing `text` or `input`",
        ),
        ("{\"text\": \"a\", \"temperature\": 9}\n", "/temperature"),
    ];
    for (content, expected) in cases {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, content).unwrap();
        // No broker is needed: input is checked before connecting.
        let run = quarry(
            "unused",
            &[
                "submit",
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        )
        .await;
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
    let missing = quarry(
        "unused",
        &[
            "submit",
            "--input",
            "/nonexistent.jsonl",
            "--output",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_ne!(missing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.jsonl"));
    assert!(!Path::new("/nonexistent.jsonl").exists());
}
