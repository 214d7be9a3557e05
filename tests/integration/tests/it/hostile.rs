//! A hostile plugin against another, on the real broker with least-privilege users made by
//! `deploy/rabbitmq/quarry-user`: plugin `a` attacks plugin `b` by every route the threat model
//! (docs/trust.md) names while `b` runs a batch. Each attack is refused with its code or
//! reason, `b`'s batch ends with exactly its own genuine results, and the worker lives on.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{
    Fleet, amqp_url_as, client_as, key_config, rabbitmq_user, unique, within,
};
use quarry_producer::{
    BatchOptions, CallOptions, ErrorCode, InputPart, Job, JobResult, Status, new_job_id,
};
use quarry_schemas::wire::{HEADER_DEAD_REASON, HEADER_DEAD_USER, HEADER_PLUGIN};
use quarry_worker::amqp::publisher::header_text;
use quarry_worker::config::{
    KeyConfig, PluginConfig, ProviderConfig, ProviderKind, ProviderSettings, Route,
};
use secrecy::SecretString;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const BATCH: usize = 40;

fn job(text: &str) -> Job {
    Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: text.to_owned(),
        }],
    )
}

/// The broker's refusal of `outcome`, as text; panics if the broker took it.
fn refused<T: std::fmt::Debug>(outcome: Result<T, lapin::Error>) -> String {
    format!("{:?}", outcome.expect_err("the broker must refuse"))
}

fn access_refused(error: &str) -> bool {
    error.contains("ACCESS_REFUSED") || error.contains("403")
}

/// Publishes as the channel's user and waits for the confirm.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<lapin::Confirmation, lapin::Error> {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await
}

fn dead_reason(letter: &lapin::message::Delivery) -> Option<String> {
    header_text(letter.properties.headers(), HEADER_DEAD_REASON)
}

/// Peak resident memory of this process (the worker runs in it), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_plugin_reaches_nothing_of_another() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let ns = fleet.namespace.clone();
    let topology = fleet.topology();
    let tag = &unique("")[1..9];
    let (attacker, victim, worker_user) = (
        format!("qh-a-{tag}"),
        format!("qh-b-{tag}"),
        format!("qhw-{tag}"),
    );
    let password = unique("pw");
    for (role, name) in [
        ("plugin", &attacker),
        ("plugin", &victim),
        ("worker", &worker_user),
    ] {
        rabbitmq_user(role, name, &ns, &password).await;
    }

    // One worker, as the worker user; every provider kind reached through the fake; the
    // attacker has a request limit so that its jobs are deferred through the delay queues.
    let mut config = fleet.worker_config();
    config.amqp.url = SecretString::from(amqp_url_as(&worker_user, &password));
    config.limits.delay_steps_secs = vec![1];
    config.limits.max_deferrals = 2;
    config.limits.max_inline_wait_ms = 10;
    for (name, kind) in [
        ("k-openai", ProviderKind::Openai),
        ("k-anthropic", ProviderKind::Anthropic),
        ("k-gemini", ProviderKind::Gemini),
    ] {
        let base_url = match kind {
            ProviderKind::Gemini => fleet.fake.gemini_base_url(),
            _ => fleet.fake.base_url(),
        };
        config.providers.insert(
            name.into(),
            ProviderConfig {
                settings: ProviderSettings::of(kind),
                base_url: Some(base_url),
                api_key: Some(SecretString::from("sk-hostile-test".to_owned())),
                ..ProviderConfig::default()
            },
        );
        config.routing.aliases.insert(
            name.into(),
            Route {
                provider: name.into(),
                model: "fake-large".into(),
                images: false,
                fallbacks: Vec::new(),
            },
        );
    }
    // A model whose one key serves 1 request a minute: jobs beyond it are deferred.
    config.providers.insert(
        "k-limited".into(),
        ProviderConfig {
            base_url: Some(fleet.fake.base_url()),
            keys: vec![KeyConfig {
                limits: quarry_worker::config::Limits {
                    requests_per_minute: Some(1),
                    ..Default::default()
                },
                ..key_config("slow", "sk-hostile-slow")
            }],
            ..ProviderConfig::default()
        },
    );
    config.routing.aliases.insert(
        "k-limited".into(),
        Route {
            provider: "k-limited".into(),
            model: "fake-large".into(),
            images: false,
            fallbacks: Vec::new(),
        },
    );
    // A pool of two keys behind a "proxy" that answers 401 pages.
    config.providers.insert(
        "k-pool".into(),
        ProviderConfig {
            base_url: Some(fleet.fake.base_url()),
            keys: vec![
                key_config("one", "sk-hostile-one"),
                key_config("two", "sk-hostile-two"),
            ],
            ..ProviderConfig::default()
        },
    );
    config.routing.aliases.insert(
        "k-pool".into(),
        Route {
            provider: "k-pool".into(),
            model: "fake-large".into(),
            images: false,
            fallbacks: Vec::new(),
        },
    );
    config.plugins = BTreeMap::from([
        // The attacker may choose its models (every alias below is one of its attacks).
        (
            attacker.clone(),
            PluginConfig {
                model_override: true,
                ..PluginConfig::default()
            },
        ),
        (victim.clone(), PluginConfig::default()),
    ]);
    let worker = fleet.spawn_task_worker(config).await;

    let victim_client = client_as(&fleet, &victim, &password, &worker_user).await;
    let attacker_client = client_as(&fleet, &attacker, &password, &worker_user).await;
    let batch_id = "payroll";
    let victim_queue = topology.batch_reply_queue(&victim, batch_id);
    let jobs: Vec<Job> = (0..BATCH)
        .map(|n| job(&format!("Receipt {n}: total {n}.00")))
        .collect();
    let genuine: std::collections::HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let mut stream = victim_client
        .run_batch(batch_id, jobs, BatchOptions::default())
        .await
        .unwrap();

    let raw = Connection::connect(
        &amqp_url_as(&attacker, &password),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let own_queue = topology.private_reply_queue(&attacker, "attack");
    let setup = raw.create_channel().await.unwrap();
    setup
        .queue_declare(
            own_queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    setup
        .queue_bind(
            own_queue.as_str().into(),
            topology.results_exchange().as_str().into(),
            own_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("a plugin binds its own reply queue");

    // 1. Forged results straight into the victim's queue: through the results exchange and
    //    through the default exchange. The broker refuses both writes.
    let forged = serde_json::to_vec(&JobResult::failed(
        genuine.iter().next().unwrap(),
        quarry_producer::ErrorInfo::new(ErrorCode::Internal, "forged"),
    ))
    .unwrap();
    for exchange in [topology.results_exchange(), String::new()] {
        let channel = raw.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        let outcome = within(30, "a forged result to be refused", async {
            publish(
                &channel,
                &exchange,
                &victim_queue,
                &forged,
                BasicProperties::default().with_user_id(attacker.as_str().into()),
            )
            .await
        })
        .await;
        assert!(access_refused(&refused(outcome)), "exchange `{exchange}`");
    }

    // 2. Eavesdropping: binding its own queue to the victim's results, or to everything.
    for key in [
        victim_queue.clone(),
        "#".to_owned(),
        format!("{ns}.replies.*.#"),
    ] {
        let channel = raw.create_channel().await.unwrap();
        let error = refused(
            channel
                .queue_bind(
                    own_queue.as_str().into(),
                    topology.results_exchange().as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await,
        );
        assert!(access_refused(&error), "binding key `{key}`: {error}");
    }

    // 3. A job whose reply_to is the victim's queue: refused, nothing published there.
    let jobs_channel = raw.create_channel().await.unwrap();
    jobs_channel
        .confirm_select(Default::default())
        .await
        .unwrap();
    let redirected = job("Receipt: total 1.00");
    publish(
        &jobs_channel,
        &topology.jobs_exchange(),
        "interactive",
        &serde_json::to_vec(&redirected).unwrap(),
        BasicProperties::default()
            .with_user_id(attacker.as_str().into())
            .with_message_id(redirected.id.as_str().into())
            .with_reply_to(victim_queue.as_str().into()),
    )
    .await
    .unwrap();

    // 4. CC/BCC headers naming the victim's queue, forged x-quarry-* headers (the victim as
    //    plugin and as dead-letter user), on jobs of a model limited to 1 request/min, so
    //    that the worker defers them through the delay queues. No copy reaches the victim; the jobs stay the attacker's.
    let mut smuggled = Vec::new();
    for n in 0..3 {
        let mut headers = FieldTable::default();
        let names = FieldArray::from(vec![AMQPValue::LongString(LongString::from(
            victim_queue.as_str(),
        ))]);
        headers.insert(
            ShortString::from("CC"),
            AMQPValue::FieldArray(names.clone()),
        );
        headers.insert(ShortString::from("BCC"), AMQPValue::FieldArray(names));
        headers.insert(
            ShortString::from(HEADER_PLUGIN),
            AMQPValue::LongString(LongString::from(victim.as_str())),
        );
        headers.insert(
            ShortString::from(HEADER_DEAD_USER),
            AMQPValue::LongString(LongString::from(victim.as_str())),
        );
        let mut job = job(&format!("Receipt {n}: total 2.00"));
        job.model = Some("k-limited".into());
        publish(
            &jobs_channel,
            &topology.jobs_exchange(),
            "interactive",
            &serde_json::to_vec(&job).unwrap(),
            BasicProperties::default()
                .with_user_id(attacker.as_str().into())
                .with_message_id(job.id.as_str().into())
                .with_correlation_id(job.id.as_str().into())
                .with_reply_to(own_queue.as_str().into())
                .with_headers(headers),
        )
        .await
        .unwrap();
        smuggled.push(job.id);
    }

    // 5. Control requests on the victim's batch: they apply to the attacker's own batch of
    //    that name (nothing of the victim's is cancelled or shown).
    attacker_client
        .cancel_batch(batch_id, Duration::from_secs(30))
        .await
        .unwrap();
    let seen = attacker_client
        .batch_status(batch_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(seen.is_empty(), "the attacker sees no progress: {seen:?}");

    // 6. Hostile input: a schema past worker.max_schema_bytes, a schema that explodes when
    //    Gemini's rewrite inlines its $refs (through every provider kind), metadata past its
    //    bound. Each ends INVALID_REQUEST; the worker's memory stays bounded.
    let call = CallOptions::default();
    let mut huge = job("Receipt: total 3.00");
    huge.json_schema = Some(json!({"type": "object", "description": "x".repeat(70 * 1024)}).into());
    let answer = attacker_client.extract(huge, call).await.unwrap();
    assert_eq!(
        answer.error.map(|e| e.code),
        Some(ErrorCode::InvalidRequest)
    );
    let mut recursive = serde_json::Map::new();
    for n in 0..10 {
        recursive.insert(format!("p{n}"), json!({"$ref": "#"}));
    }
    let recursive = json!({"type": "object", "properties": recursive});
    // Through every provider kind: Gemini's rewrite (which inlines $refs) stops at the node
    // budget; the other kinds send the schema unchanged and validate the answer against it.
    for alias in ["k-gemini", "k-openai", "k-anthropic", "default"] {
        let mut bomb = job("Receipt: total 4.00");
        bomb.model = Some(alias.into());
        bomb.json_schema = Some(recursive.clone().into());
        // The fake fills the recursive schema generously: more than the default 1024
        // output tokens, which would cut it.
        bomb.max_tokens = Some(100_000);
        let answer = within(
            60,
            "the recursive schema's result",
            attacker_client.extract(bomb, call),
        )
        .await
        .unwrap();
        if alias == "k-gemini" {
            assert_eq!(
                answer.error.as_ref().map(|e| e.code),
                Some(ErrorCode::InvalidRequest),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.status, Status::Ok, "{alias}: {answer:?}");
        }
    }
    let mut fat = job("Receipt: total 5.00");
    fat.metadata = Some(json!({"blob": "m".repeat(20 * 1024)}).into());
    let body = serde_json::to_vec(&fat).unwrap();
    publish(
        &jobs_channel,
        &topology.jobs_exchange(),
        "interactive",
        &body,
        BasicProperties::default()
            .with_user_id(attacker.as_str().into())
            .with_message_id(fat.id.as_str().into())
            .with_correlation_id(fat.id.as_str().into())
            .with_reply_to(own_queue.as_str().into()),
    )
    .await
    .unwrap();

    // 7. A 401 storm from a proxy in front of the provider (HTML pages, not the API's
    //    error object): retried, and the pool keeps both keys.
    let storm: Vec<Job> = (0..10)
        .map(|n| {
            let mut job = job(&format!("[[fake:proxy_auth*2]] Receipt {n}: total 6.00"));
            job.model = Some("k-pool".into());
            job
        })
        .collect();
    let answers = within(
        60,
        "the 401 storm's results",
        futures::future::join_all(storm.into_iter().map(|j| attacker_client.extract(j, call))),
    )
    .await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status, Status::Ok, "{answer:?}");
    }
    let scrape = quarry_integration::parse_metrics(
        &quarry_integration::http_get(worker.http, "/metrics")
            .await
            .1,
    );
    assert_eq!(
        quarry_integration::counter_sum(
            &scrape,
            "quarry_key_disabled_total",
            &[("provider", "k-pool")]
        ),
        0.0,
        "no key left rotation for a proxy's pages"
    );

    // The victim's batch completes with exactly its own results, none forged, none lost.
    let mut received = std::collections::HashSet::new();
    within(120, "the victim's batch", async {
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            assert_eq!(item.result.status, Status::Ok, "{:?}", item.result);
            assert!(genuine.contains(&item.result.job_id));
            assert!(
                received.insert(item.result.job_id.clone()),
                "one result per job"
            );
            item.ack().await.unwrap();
        }
    })
    .await;
    assert_eq!(received.len(), BATCH);
    assert_eq!(
        stream.foreign(),
        0,
        "nothing foreign reached the victim's queue"
    );
    let left = victim_client
        .batch_status(batch_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(left.get("ok"), Some(BATCH as u64), "{left:?}");
    stream
        .finish()
        .await
        .expect("the victim's queue is empty: no copy arrived");

    // What the attacker got back is its own: the deferred jobs (RATE_LIMITED after their
    // two deferrals, or served) and the metadata refusal, all at its own queue.
    let mut own = Vec::new();
    let mut consumer = setup
        .basic_consume(
            own_queue.as_str().into(),
            "attacker".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    within(120, "the attacker's own results", async {
        while own.len() < smuggled.len() + 1 {
            let delivery = consumer.next().await.unwrap().unwrap();
            delivery.ack(Default::default()).await.unwrap();
            assert_eq!(
                delivery.properties.user_id().as_ref().map(|u| u.as_str()),
                Some(worker_user.as_str()),
                "results carry the worker's identity"
            );
            own.push(serde_json::from_slice::<JobResult>(&delivery.data).unwrap());
        }
    })
    .await;
    let fat_answer = own.iter().find(|r| r.job_id == fat.id).unwrap();
    assert_eq!(
        fat_answer.error.as_ref().map(|e| e.code),
        Some(ErrorCode::InvalidRequest),
        "{fat_answer:?}"
    );
    for id in &smuggled {
        assert!(
            own.iter().any(|r| &r.job_id == id),
            "job {id} answered to its sender"
        );
    }

    // The redirected job is in the dead letters, refused, and names its real sender.
    let letters = fleet.take(&topology.dead_queue(), 1, 30).await;
    assert_eq!(
        dead_reason(&letters[0]).as_deref(),
        Some("reply_to_refused")
    );
    assert_eq!(
        header_text(letters[0].properties.headers(), HEADER_DEAD_USER).as_deref(),
        Some(attacker.as_str())
    );

    // 8. Forged dead-letter headers naming the victim, on a job that is dead-lettered (it
    //    has no reply_to): the letter names its real sender, and a redrive by the operator
    //    runs it as the attacker again, never as the victim.
    let mut headers = FieldTable::default();
    for name in [HEADER_DEAD_USER, HEADER_PLUGIN] {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(victim.as_str())),
        );
    }
    let orphan = job("Receipt: total 7.00");
    publish(
        &jobs_channel,
        &topology.jobs_exchange(),
        "batch",
        &serde_json::to_vec(&orphan).unwrap(),
        BasicProperties::default()
            .with_user_id(attacker.as_str().into())
            .with_message_id(orphan.id.as_str().into())
            .with_headers(headers),
    )
    .await
    .unwrap();
    let quarry = |args: &'static [&'static str]| {
        let mut command = tokio::process::Command::new(quarry_integration::binary("quarry"));
        command
            .env("QUARRY_AMQP_URL", amqp_url_as(&worker_user, &password))
            .args([
                "--namespace",
                ns.as_str(),
                "--worker-user",
                worker_user.as_str(),
            ])
            .args(args);
        async move {
            let out = within(60, "quarry to finish", command.output())
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let listed = within(30, "the orphan's dead letter", async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let list = quarry(&["dead-letters", "list"]).await;
            if list.contains(orphan.id.as_str()) {
                return list;
            }
        }
    })
    .await;
    let line = listed
        .lines()
        .find(|l| l.contains(orphan.id.as_str()))
        .unwrap();
    assert!(
        line.contains("missing_reply_to") && line.contains(&format!("plugin={attacker}\t")),
        "{line}"
    );
    let redriven = quarry(&["dead-letters", "redrive", "--reason", "missing_reply_to"]).await;
    assert!(redriven.contains("re-drove 1 jobs"), "{redriven}");
    let again = fleet.take(&topology.dead_queue(), 1, 30).await;
    assert_eq!(dead_reason(&again[0]).as_deref(), Some("missing_reply_to"));
    assert_eq!(
        header_text(again[0].properties.headers(), HEADER_DEAD_USER).as_deref(),
        Some(attacker.as_str()),
        "the re-driven job ran as its sender"
    );

    // The worker never stopped, and its memory stayed bounded (docs/trust.md).
    let (status, _) = quarry_integration::http_get(worker.http, "/readyz").await;
    assert_eq!(status, 200);
    let peak = peak_rss();
    assert!(peak < 1024 * 1024 * 1024, "peak RSS {peak} bytes");

    let _ = raw.close(200, "done".into()).await;
    let _ = attacker_client.close().await;
    let _ = victim_client.close().await;
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
    for name in [&attacker, &victim, &worker_user] {
        rabbitmq_user("delete", name, &ns, "").await;
    }
}
