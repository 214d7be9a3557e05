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

fn read_results(path: &Path) -> Vec<JobResult> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_submit_resumes_without_paying_twice_and_reports_status() {
    let fleet = Fleet::start(FakeConfig {
        latency: std::time::Duration::from_millis(200),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    config.worker.concurrency = 8;
    let worker = fleet.spawn_task_worker(config).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jobs.jsonl");
    let mut lines = String::new();
    for n in 0..200 {
        // Every tenth job fails (unknown alias): its result goes to the errors file.
        let model = if n % 10 == 0 {
            ", \"model\": \"nope\""
        } else {
            ""
        };
        lines.push_str(&format!(
            "{{\"custom_id\": \"c{n}\", \"text\": \"Cafe {n}, TOTAL {n}.00\"{model}}}\n"
        ));
    }
    std::fs::write(&input, lines).unwrap();
    let output = dir.path().join("results.jsonl");
    let errors = dir.path().join("errors.jsonl");
    let (input_s, output_s, errors_s) = (
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        errors.to_str().unwrap(),
    );

    // The first run is killed once 60 results are written.
    let mut first = Command::new(binary("quarry"))
        .env("QUARRY_AMQP_URL", amqp_url())
        .args(["--namespace", &fleet.namespace])
        .args([
            "submit", "--input", input_s, "--output", output_s, "--errors", errors_s,
        ])
        .args(["--max-in-flight", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    within(60, "60 result lines", async {
        loop {
            let written = read_results(&output).len() + read_results(&errors).len();
            if written >= 60 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let before: Vec<JobResult> = read_results(&output)
        .into_iter()
        .chain(read_results(&errors))
        .collect();
    let batch_id = before[0].batch_id.clone().unwrap();

    // Without --resume the files are not overwritten.
    let refused = quarry(
        &fleet.namespace,
        &["submit", "--input", input_s, "--output", output_s],
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));

    // The status of the interrupted batch, from the fleet.
    let status = quarry(&fleet.namespace, &["status", &batch_id]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("ok:") && text.contains("MODEL_UNRESOLVED"),
        "{text}"
    );

    let resumed = quarry(
        &fleet.namespace,
        &[
            "submit", "--input", input_s, "--output", output_s, "--errors", errors_s, "--resume",
        ],
    )
    .await;
    let report = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        report.contains(&format!("resuming batch {batch_id}")),
        "{report}"
    );

    let ok = read_results(&output);
    let failed = read_results(&errors);
    let mut custom: Vec<String> = ok
        .iter()
        .chain(&failed)
        .map(|r| r.custom_id.clone().unwrap())
        .collect();
    custom.sort();
    let unique: HashSet<&String> = custom.iter().collect();
    assert_eq!(custom.len(), 200, "one line per input line");
    assert_eq!(unique.len(), 200, "no line twice");
    assert!(ok.iter().all(|r| r.status == Status::Ok));
    assert_eq!(failed.len(), 20);
    assert!(failed.iter().all(|r| r.status == Status::Error));
    // Jobs published by the first run and by the resumed one ran once.
    assert_eq!(fleet.fake.stats.snapshot().requests, 180);

    // The status now counts every job.
    let status = quarry(&fleet.namespace, &["status", &batch_id]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("200 results stored"), "{text}");
    assert!(text.contains("ok:      180"), "{text}");

    // What the plugin may use, from the fleet.
    let models = quarry(&fleet.namespace, &["models"]).await;
    let text = String::from_utf8_lossy(&models.stdout);
    assert!(models.status.success(), "{text}");
    assert!(
        text.contains("alias default (default): fake/fake-large (images)"),
        "{text}"
    );

    // A second resume has nothing to do.
    let again = quarry(
        &fleet.namespace,
        &[
            "submit", "--input", input_s, "--output", output_s, "--errors", errors_s, "--resume",
        ],
    )
    .await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to submit"));
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_dead_letters_from_the_command_line() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let mut config = fleet.worker_config();
    config.amqp.delivery_limit = 1;
    let worker = fleet.spawn_task_worker(config).await;

    let cancelled = quarry(&fleet.namespace, &["cancel", "some-batch"]).await;
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    assert!(String::from_utf8_lossy(&cancelled.stdout).contains("cancelled"));

    // Two dead letters: one without reply_to (the worker's), one undecodable.
    let topology = fleet.topology();
    let replies = fleet.reply_queue().await;
    let channel = fleet.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let job = quarry_producer::Job::new(
        "dead-1",
        vec![quarry_producer::InputPart::Text {
            text: "hello".into(),
        }],
    );
    for (body, properties) in [
        (
            serde_json::to_vec(&job).unwrap(),
            lapin::BasicProperties::default()
                .with_message_id("dead-1".into())
                .with_user_id("guest".into()),
        ),
        (
            b"not json".to_vec(),
            lapin::BasicProperties::default().with_user_id("guest".into()),
        ),
    ] {
        quarry_integration::publish_raw(&channel, &topology, "batch", &body, properties).await;
    }
    let list = within(30, "two dead letters listed", async {
        loop {
            let out = quarry(&fleet.namespace, &["dead-letters", "list"]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("2 dead letters shown") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        list.contains("missing_reply_to") && list.contains("undecodable"),
        "{list}"
    );
    assert!(
        list.contains("job=dead-1") && list.contains("plugin=guest"),
        "{list}"
    );

    // Re-drive the job without reply_to only: back in its lane, the worker dead-letters it
    // again (it still has no reply_to); the undecodable letter stays where it was.
    let redrive = quarry(
        &fleet.namespace,
        &["dead-letters", "redrive", "--reason", "missing_reply_to"],
    )
    .await;
    let text = String::from_utf8_lossy(&redrive.stdout);
    assert!(
        text.contains("re-drove 1 jobs"),
        "{text}{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    // The re-driven job came back to its lane and was dead-lettered again for the same reason.
    let again = fleet.take(&topology.dead_queue(), 2, 30).await;
    assert_eq!(again.len(), 2);
    worker.stop().await.unwrap();
    fleet.teardown(&[replies]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_prints_the_answer_as_it_is_written() {
    let fleet = Fleet::start(FakeConfig {
        stream_chunk_delay: std::time::Duration::from_millis(2),
        ..FakeConfig::default()
    })
    .await;
    let mut config = fleet.worker_config();
    config.worker.stream_chunk_ms = 2;
    let worker = fleet.spawn_task_worker(config).await;
    let dir = tempfile::tempdir().unwrap();
    let result_file = dir.path().join("result.json");
    let schema = schema_path();

    // A dropped stream and its retry: stdout's last line is the answer, a reset said so.
    let run = quarry(
        &fleet.namespace,
        &[
            "stream",
            "--text",
            "[[fake:stream_drop]] Cafe Luna TOTAL 5.60 EUR",
            "--schema",
            &schema,
            "--partials",
            "--result",
            result_file.to_str().unwrap(),
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stderr}");
    let result: JobResult = serde_json::from_slice(&std::fs::read(&result_file).unwrap()).unwrap();
    assert_eq!(result.status, Status::Ok);
    assert_eq!(stdout.lines().last(), result.text.as_deref(), "{stdout}");
    assert!(stderr.contains("[reset: Retry"), "{stderr}");
    assert!(stderr.contains("partial: {"), "{stderr}");
    assert!(
        stderr.contains("ok: ") && stderr.contains("1 resets, 2 attempts"),
        "{stderr}"
    );

    // A job that fails: exit 1, with its code.
    let run = quarry(
        &fleet.namespace,
        &["stream", "--text", "hello", "--model", "no-such-alias"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MODEL_UNRESOLVED"), "{stderr}");
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}
