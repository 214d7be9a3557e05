//! The fleet under test: the producer, the topology, the workers' configuration, the
//! jobs, and reading queues.

use crate::prelude::*;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use quarry_integration::{amqp_url, unique};
use quarry_producer::{InputPart, Job, new_job_id};
use quarry_schemas::wire::Topology;
use std::collections::HashMap;
use std::time::Duration;

pub(crate) fn chaos_job(scenario: Scenario, n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!(
                "{scenario:?} item {n}: Dana from Acme asked for a call back on Tuesday about the renewal."
            ),
        }],
    );
    job.custom_id = Some(format!("item-{n:06}"));
    job.instructions = Some("Extract the CRM note.".into());
    job.json_schema =
        Some(quarry_schemas::JsonSchema::from_json(quarry_schemas::examples::CRM_NOTE).unwrap());
    job.schema_name = Some("crm_note".into());
    job
}

pub(crate) fn worker_toml(namespace: &str, redis: &str, fake: &str) -> String {
    format!(
        r#"[amqp]
url = "{amqp}"
namespace = "{namespace}"
[redis]
url = "{redis}"
prefix = "chaos"
result_ttl_secs = 3600
[http]
listen = "127.0.0.1:0"
[log]
format = "json"
filter = "info"
[worker]
concurrency = 128
max_attempts = 8
retry_base_ms = 50
retry_max_ms = 2000
shutdown_grace_secs = 20
max_image_bytes = 2048
[limits]
delay_steps_secs = {delay_steps:?}
[providers.fake]
base_url = "{fake}"
timeout_ms = 5000
[plugins.guest]
requests_per_minute = 10000000
model_override = true
allowed_models = ["fake/fake-large"]
max_tokens = 4096
"#,
        amqp = amqp_url(),
        delay_steps = DELAY_STEPS_SECS,
    )
}

/// The workers' delay queues, seconds.
pub(crate) const DELAY_STEPS_SECS: [u64; 3] = [1, 5, 30];

/// Consumes `want` messages (or whatever arrives within 30 s) from `queue`.
pub(crate) async fn drain(
    connection: &Connection,
    queue: &str,
    want: usize,
    read: impl Fn(&lapin::message::Delivery) -> Option<(String, String)>,
) -> HashMap<String, String> {
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique("drain").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = HashMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while out.len() < want {
        tokio::select! {
            () = &mut deadline => break,
            next = consumer.next() => {
                let Some(Ok(delivery)) = next else { break };
                if let Some((id, value)) = read(&delivery) {
                    out.insert(id, value);
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    out
}

/// Deletes the scenario's queues and exchanges.
pub(crate) async fn cleanup(namespace: &str, batch_id: &str) {
    let topology = Topology::new(namespace);
    let Ok(connection) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let replies = [
        topology.batch_reply_queue("guest", batch_id),
        topology.batch_reply_queue("guest", "chaos-bad"),
    ];
    // All of it, the results and delay exchanges included.
    quarry_integration::delete_topology(&channel, &topology, &replies).await;
    let _ = connection.close(200, "cleaned up".into()).await;
}
