//! What operators see: the worker's metrics checked by Prometheus's own `promtool`, scraped by
//! a real Prometheus server, documented in `docs/metrics.md`, and the Grafana dashboard's
//! queries checked against them. Needs `promtool` and `prometheus` (Debian package
//! `prometheus`; `scripts/test` installs it).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, http_get, unique, within};
use quarry_producer::{BatchOptions, InputPart, Job, Lane, new_job_id};
use quarry_worker::config::KeyConfig;
use quarry_worker::telemetry::METRICS;
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.exists());
    let install = match name {
        "prometheus" | "promtool" => "apt-get install prometheus",
        "docker-compose" => "apt-get install docker-compose",
        "kubernetes-validate" => "pip install kubernetes-validate",
        _ => "install it",
    };
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/test (which installs it), or {install}")
    })
}

/// Runs a batch through many paths (ok, retries, repairs, a policy refusal, a cancelled
/// batch, limits with two keys) so that most series exist.
async fn exercised_worker(fleet: &Fleet) -> quarry_integration::TaskWorker {
    let mut config = fleet.worker_config();
    let fake = config.providers.get_mut("fake").unwrap();
    let key = |name: &str| KeyConfig {
        name: name.into(),
        api_key: Some(SecretString::from(format!("sk-{name}"))),
        api_key_env: None,
        api_key_file: None,
        limits: quarry_worker::config::Limits {
            requests_per_minute: Some(100_000),
            ..Default::default()
        },
        profile: "default".into(),
    };
    fake.keys = vec![key("a"), key("b")];
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let mut jobs: Vec<Job> = (0..40)
        .map(|n| {
            let text = match n % 8 {
                0 => format!("[[fake:rate_limit]] note {n}"),
                1 => format!("[[fake:server_error]] note {n}"),
                2 => format!("[[fake:invalid_json]] note {n}"),
                _ => format!("note {n}: call Dana back"),
            };
            let mut job = Job::new(new_job_id(), vec![InputPart::Text { text }]);
            job.custom_id = Some(format!("n{n}"));
            job.json_schema = Some(serde_json::json!({"type": "object"}).into());
            job
        })
        .collect();
    jobs[5].model = Some("default@premium".into());
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: 64,
        idle_timeout: Some(Duration::from_secs(60)),
        trace: None,
    };
    let batch = unique("ops");
    let mut stream = client.run_batch(&batch, jobs, options).await.unwrap();
    within(90, "the batch", async {
        for _ in 0..40 {
            stream.next().await.unwrap().unwrap().ack().await.unwrap();
        }
    })
    .await;
    stream.finish().await.unwrap();
    client
        .cancel_batch(&unique("nothing"), Duration::from_secs(30))
        .await
        .unwrap();
    let _ = client.close().await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_and_every_metric_is_documented() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = exercised_worker(&fleet).await;
    let (status, exposition) = http_get(worker.http, "/metrics").await;
    assert_eq!(status, 200);

    let mut promtool = tokio::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = promtool.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, exposition.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Every exported family is a declared metric, and most declared ones were exercised.
    let families: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let declared: BTreeSet<String> = METRICS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let undeclared: Vec<&String> = families.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "exported but not in METRICS: {undeclared:?}"
    );
    assert!(
        families.len() >= 20,
        "the run exercised {} families: {families:?}",
        families.len()
    );

    // docs/metrics.md documents every one, with its type.
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    for (name, kind) in METRICS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/metrics.md has no row for {name}"));
        assert!(
            row.contains(kind),
            "docs/metrics.md: {name} is a {kind}: {row}"
        );
    }
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

/// A Prometheus server on a free port scraping `target` every second.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: quarry-worker\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Runs an instant query; `Err` carries Prometheus's error for an invalid one.
    async fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", promql)],
        )
        .map_err(|e| e.to_string())?;
        let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"]["result"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// Waits until `promql` returns at least one series.
    async fn until_present(&self, promql: &str, secs: u64) -> serde_json::Value {
        within(secs, &format!("Prometheus to have {promql}"), async {
            loop {
                if let Ok(result) = self.query(promql).await
                    && result.as_array().is_some_and(|a| !a.is_empty())
                {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
    }
}

/// Metric names a PromQL expression uses: `quarry_*` and `rabbitmq_*` identifiers, and
/// Prometheus's own `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if expr.starts_with("up{") || expr.contains("(up{") {
        out.insert("up".to_owned());
    }
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("quarry_") || expr[i..].starts_with("rabbitmq_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.insert(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The `expr` of every target of every panel (rows included).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or("").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    out
}

/// RabbitMQ's built-in Prometheus plugin (`rabbitmq_prometheus`) metrics the dashboard may
/// use: the queue-depth family of its per-object endpoint.
const RABBITMQ_METRICS: [&str; 6] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers",
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_worker_and_resolves_every_dashboard_query() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = exercised_worker(&fleet).await;
    let prometheus = Prometheus::start(worker.http).await;

    let up = prometheus
        .until_present("up{job=\"quarry-worker\"} == 1", 60)
        .await;
    assert_eq!(up.as_array().unwrap().len(), 1);
    let jobs = prometheus
        .until_present("sum by (outcome) (quarry_jobs_total{lane=\"batch\"})", 30)
        .await;
    let finished: f64 = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        finished, 40.0,
        "Prometheus sees every job of the batch: {jobs}"
    );

    // The dashboard: valid JSON, every query valid PromQL and naming exported metrics.
    let path = repo().join("deploy/grafana/dashboards/quarry.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let declared: BTreeSet<&str> = METRICS.iter().map(|(n, _)| *n).collect();
    let mut problems = Vec::new();
    for (title, expr) in &queries {
        // Grafana's own variables, as a dashboard user would have them.
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$plugin", ".*")
            .replace("$lane", ".*");
        if let Err(error) = prometheus.query(&concrete).await {
            problems.push(format!("{title}: `{expr}` is not valid PromQL: {error}"));
        }
        let names = metric_names(expr);
        if names.is_empty() {
            problems.push(format!("{title}: `{expr}` names no metric"));
        }
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| declared.contains(b))
                .unwrap_or(&name);
            let known = declared.contains(base) || RABBITMQ_METRICS.contains(&base) || base == "up";
            if !known {
                problems.push(format!(
                    "{title}: `{name}` is not a metric the fleet exports"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let mut prometheus = prometheus;
    let _ = prometheus.child.kill().await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test]
async fn the_compose_file_is_valid_and_complete() {
    let compose = repo().join("docker-compose.yml");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(tool("docker-compose"))
            .env("QUARRY_WORKER_PASSWORD", "compose-check")
            .arg("-f")
            .arg(&compose)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["config", "--quiet"]);
    let services: BTreeSet<String> = run(&["config", "--services"])
        .lines()
        .map(str::to_owned)
        .collect();
    for service in [
        "rabbitmq",
        "rabbitmq-users",
        "redis",
        "fake-provider",
        "worker",
        "quarry",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains(service),
            "{service} missing: {services:?}"
        );
    }
    // Every file the services mount exists in the repository.
    let text = std::fs::read_to_string(&compose).unwrap();
    for mount in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .filter_map(|l| l.split(':').next())
    {
        assert!(
            repo().join(mount).exists(),
            "docker-compose.yml mounts ./{mount}, which does not exist"
        );
    }
    // The worker configuration it mounts is one the worker accepts.
    let check = std::process::Command::new(quarry_integration::binary("quarry-worker"))
        .args(["--config"])
        .arg(repo().join("deploy/config/worker.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "deploy/config/worker.toml: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Prometheus's configuration is valid for Prometheus itself.
    let promtool = std::process::Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(repo().join("deploy/prometheus/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        promtool.status.success(),
        "{}",
        String::from_utf8_lossy(&promtool.stdout)
    );
}

/// The documents of a YAML file as JSON, through Python's PyYAML (a dependency of
/// kubernetes-validate, which `scripts/test` installs).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "cannot read {} as YAML (is PyYAML installed? scripts/test installs kubernetes-validate, which brings it): {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn the_kubernetes_manifests_are_schema_valid_and_consistent() {
    let base = repo().join("deploy/k8s/base");
    let kustomization = &yaml_documents(&base.join("kustomization.yaml"))[0];
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(resources, files, "kustomization.yaml lists every manifest");

    // Built-in kinds against the Kubernetes schemas, strictly (unknown fields are errors).
    let mut documents = Vec::new();
    for file in &files {
        let path = base.join(file);
        let output = std::process::Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !text.contains("ERROR"),
            "kubernetes-validate {file}: {text}"
        );
        documents.extend(yaml_documents(&path));
    }
    let find = |kind: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/k8s/base"))
    };

    // The worker configuration in the ConfigMap is one the worker accepts; its grace fits in
    // the pod's.
    let config_file = base.join("worker.toml");
    let check = std::process::Command::new(quarry_integration::binary("quarry-worker"))
        .arg("--config")
        .arg(&config_file)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "deploy/k8s/base/worker.toml: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let config = quarry_worker::config::Config::load(Some(&config_file)).unwrap();
    let deployment = find("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.worker.shutdown_grace_secs,
        "terminationGracePeriodSeconds {grace} must exceed worker.shutdown_grace_secs {}",
        config.worker.shutdown_grace_secs
    );
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        config.http.listen.port(),
        9090,
        "the probes and the Service use port 9090"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"QUARRY__AMQP__URL") && env.contains(&"QUARRY__REDIS__URL"));

    // The custom resources (their CRD schemas are not available offline): they point at the
    // objects defined here and at the real queue names.
    let service = find("Service");
    let monitor = find("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let scaled = find("ScaledObject");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let topology = quarry_schemas::wire::Topology::new(config.amqp.namespace.clone());
    let queues: BTreeSet<&str> = scaled["spec"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["type"], "rabbitmq");
            assert_eq!(t["metadata"]["mode"], "QueueLength");
            assert!(
                t["metadata"]["value"]
                    .as_str()
                    .unwrap()
                    .parse::<u32>()
                    .is_ok()
            );
            t["metadata"]["queueName"].as_str().unwrap()
        })
        .collect();
    let lanes: BTreeSet<String> = Lane::ALL.iter().map(|&l| topology.lane_queue(l)).collect();
    assert_eq!(
        queues,
        lanes.iter().map(String::as_str).collect(),
        "KEDA scales on every lane queue"
    );
    let auth = find("TriggerAuthentication");
    assert_eq!(
        scaled["spec"]["triggers"][0]["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    // Every selector picks the Deployment's pods.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &serde_json::Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &pod_labels[k] == v)
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(&service["spec"]["selector"]));
    let pdb = find("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    let service_labels = &service["metadata"]["labels"];
    assert!(
        monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &service_labels[k] == v),
        "the ServiceMonitor selects the Service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_trace_continues_through_the_worker_to_the_provider() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(fleet.worker_config()).await;
    let client = fleet.client().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let options = quarry_producer::CallOptions {
        trace: quarry_producer::TraceContext::from_traceparent(parent),
        ..Default::default()
    };
    // A retried attempt: two provider requests for one job.
    let job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "[[fake:server_error]] Dana called".into(),
        }],
    );
    let result = client.extract(job, options).await.unwrap();
    assert_eq!(result.status, quarry_producer::Status::Ok, "{result:?}");
    let sent: Vec<String> = fleet
        .fake
        .stats
        .requests()
        .iter()
        .map(|r| r.headers.get("traceparent").cloned().unwrap_or_default())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for traceparent in &sent {
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(fields.len(), 4, "{traceparent}");
        assert_eq!(
            fields[1], "4bf92f3577b34da6a3ce929d0e0e4736",
            "the same trace"
        );
        assert_ne!(fields[2], "00f067aa0ba902b7", "a span of its own");
        assert_eq!(fields[3], "01");
    }
    assert_ne!(sent[0], sent[1], "each attempt is its own span");

    // Without a trace, each job starts one of its own.
    let plain = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "no trace given".into(),
        }],
    );
    client
        .extract(plain, quarry_producer::CallOptions::default())
        .await
        .unwrap();
    let last = fleet.fake.stats.requests().pop().unwrap();
    let traceparent = &last.headers["traceparent"];
    assert!(
        traceparent.len() == 55 && !traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{traceparent}"
    );
    let _ = client.close().await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}
