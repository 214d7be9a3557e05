//! Plugin trust against the real RabbitMQ: per-plugin broker users made by
//! `deploy/rabbitmq/quarry-user`, identity from the broker-validated `user_id`, and the
//! plugin policy enforced by a worker that itself runs as a least-privilege worker user.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, amqp_url_as, client_as, rabbitmq_user, unique, within};
use quarry_producer::{CallOptions, ErrorCode, InputPart, Job, JobResult, Status, new_job_id};
use quarry_worker::config::PluginConfig;
use secrecy::SecretString;
use std::collections::BTreeMap;

fn job(model: Option<&str>) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: "Invoice 7, total 12.50 EUR".into(),
        }],
    );
    job.model = model.map(str::to_owned);
    job
}

fn refusal(result: &JobResult) -> (ErrorCode, String) {
    assert_eq!(result.status, Status::Error, "{result:?}");
    let error = result.error.as_ref().unwrap();
    let rule = error
        .details
        .as_ref()
        .and_then(|d| d["policy"].as_str())
        .unwrap_or_default()
        .to_owned();
    (error.code, rule)
}

/// The error a broker operation ended with, as text (`ACCESS_REFUSED`, `PRECONDITION_FAILED`).
fn refused<T: std::fmt::Debug>(outcome: Result<T, lapin::Error>) -> String {
    format!("{:?}", outcome.expect_err("the broker must refuse"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_who_the_broker_says_and_get_only_what_their_policy_grants() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let ns = fleet.namespace.clone();
    let tag = &unique("")[1..9];
    let (alpha, beta, stranger, worker_user) = (
        format!("qp-alpha-{tag}"),
        format!("qp-beta-{tag}"),
        format!("qp-stranger-{tag}"),
        format!("qw-{tag}"),
    );
    let password = unique("pw");
    for (role, name) in [
        ("plugin", &alpha),
        ("plugin", &beta),
        ("plugin", &stranger),
        ("worker", &worker_user),
    ] {
        rabbitmq_user(role, name, &ns, &password).await;
    }

    // The worker runs as the least-privilege worker user; alpha may not pick a model, beta
    // may; the stranger has a broker user but no [plugins] entry.
    let mut config = fleet.worker_config();
    config.amqp.url = SecretString::from(amqp_url_as(&worker_user, &password));
    config.plugins = BTreeMap::from([
        (
            alpha.clone(),
            PluginConfig {
                model_override: false,
                max_tokens: Some(200),
                ..PluginConfig::default()
            },
        ),
        (
            beta.clone(),
            PluginConfig {
                model_override: true,
                ..PluginConfig::default()
            },
        ),
    ]);
    let worker = fleet.spawn_task_worker(config).await;

    let alpha_client = client_as(&fleet, &alpha, &password, &worker_user).await;
    let beta_client = client_as(&fleet, &beta, &password, &worker_user).await;
    let stranger_client = client_as(&fleet, &stranger, &password, &worker_user).await;
    let call = CallOptions::default();

    // Granted work runs; each plugin's policy holds.
    let ok = alpha_client.extract(job(None), call).await.unwrap();
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    let ok = beta_client.extract(job(Some("fast")), call).await.unwrap();
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    let override_refused = alpha_client.extract(job(Some("fast")), call).await.unwrap();
    assert_eq!(
        refusal(&override_refused),
        (ErrorCode::NotAuthorized, "model_override".into())
    );
    let suffix_refused = beta_client
        .extract(job(Some("default@premium")), call)
        .await
        .unwrap();
    assert_eq!(
        refusal(&suffix_refused),
        (ErrorCode::NotAuthorized, "profiles".into())
    );
    let mut greedy = job(None);
    greedy.max_tokens = Some(5000);
    let greedy = alpha_client.extract(greedy, call).await.unwrap();
    assert_eq!(
        refusal(&greedy),
        (ErrorCode::NotAuthorized, "max_tokens".into())
    );

    // A broker user that is not a configured plugin is refused.
    let stranger_result = stranger_client.extract(job(None), call).await.unwrap();
    assert_eq!(
        refusal(&stranger_result),
        (ErrorCode::NotAuthorized, "identity".into())
    );

    // A job without user_id (published by hand, as guest): nothing vouches for its sender,
    // so it is not answered at all (not even with a refusal), only dead-lettered.
    let topology = fleet.topology();
    let replies = fleet.reply_queue().await;
    let guest = fleet.channel().await;
    guest.confirm_select(Default::default()).await.unwrap();
    let anonymous = job(None);
    guest
        .basic_publish(
            topology.jobs_exchange().as_str().into(),
            "interactive".into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&anonymous).unwrap(),
            BasicProperties::default()
                .with_message_id(anonymous.id.as_str().into())
                .with_reply_to(replies.as_str().into())
                .with_correlation_id(anonymous.id.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = fleet.take(&topology.dead_queue(), 1, 60).await;
    assert_eq!(
        quarry_worker::amqp::publisher::header_text(
            letter[0].properties.headers(),
            quarry_schemas::wire::HEADER_DEAD_REASON
        )
        .as_deref(),
        Some("no_user_id")
    );
    let unanswered = guest
        .queue_declare(
            replies.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        unanswered.message_count(),
        0,
        "nothing went to its reply_to"
    );

    // The broker keeps plugins apart: alpha cannot publish as beta, read or make beta's
    // reply queues, or write anywhere but the job and control exchanges.
    let alpha_raw = Connection::connect(
        &amqp_url_as(&alpha, &password),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = alpha_raw.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let impersonation = async {
        channel
            .basic_publish(
                topology.jobs_exchange().as_str().into(),
                "interactive".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&job(None)).unwrap(),
                BasicProperties::default()
                    .with_user_id(beta.as_str().into())
                    .with_reply_to(replies.as_str().into()),
            )
            .await?
            .await
    };
    let error = refused(within(30, "the impersonation to be refused", impersonation).await);
    assert!(
        error.contains("PRECONDITION") || error.contains("406"),
        "{error}"
    );

    let beta_queue = format!("{ns}.replies.{beta}.mine");
    let guest_made = fleet.channel().await;
    guest_made
        .queue_declare(
            beta_queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let channel = alpha_raw.create_channel().await.unwrap();
    let error = refused(
        channel
            .basic_consume(
                beta_queue.as_str().into(),
                "spy".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    assert!(
        error.contains("ACCESS_REFUSED") || error.contains("403"),
        "{error}"
    );
    let channel = alpha_raw.create_channel().await.unwrap();
    let error = refused(
        channel
            .queue_declare(
                format!("{ns}.replies.{beta}.squat").as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    assert!(
        error.contains("ACCESS_REFUSED") || error.contains("403"),
        "{error}"
    );
    let channel = alpha_raw.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let forged = async {
        channel
            .basic_publish(
                topology.dead_exchange().as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await
    };
    let error = refused(within(30, "a write to the dead-letter exchange", forged).await);
    assert!(
        error.contains("ACCESS_REFUSED") || error.contains("403"),
        "{error}"
    );
    // And its own reply queues are its to make.
    let channel = alpha_raw.create_channel().await.unwrap();
    let own = format!("{ns}.replies.{alpha}.own");
    channel
        .queue_declare(
            own.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a plugin declares its own reply queue");

    let _ = alpha_raw.close(200, "done".into()).await;
    for client in [alpha_client, beta_client, stranger_client] {
        let _ = client.close().await;
    }
    worker.stop().await.unwrap();
    fleet.teardown(&[replies, beta_queue]).await;
    for name in [&alpha, &beta, &stranger, &worker_user] {
        rabbitmq_user("delete", name, &ns, "").await;
    }
}
