//! The bad-input corpus: malformed and forbidden jobs, and what each must end as.

use crate::prelude::*;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use quarry_integration::amqp_url;
use quarry_producer::{ErrorCode, InputPart, JobResult};
use quarry_schemas::wire::{HEADER_DEAD_REASON, Topology};
use quarry_worker::amqp::publisher::header_text;
use serde_json::json;
use std::collections::BTreeMap;

/// What a bad input must end as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// A result with this code.
    Code(ErrorCode),
    /// A dead letter with this reason, and no result.
    Dead(&'static str),
    /// Both.
    CodeAndDead(ErrorCode, &'static str),
}

pub(crate) struct BadInputs {
    /// correlation id → what it must end as.
    pub(crate) expected: BTreeMap<String, Expect>,
    pub(crate) replies: String,
}

impl BadInputs {
    pub(crate) async fn publish(namespace: &str) -> Self {
        let topology = Topology::new(namespace);
        let replies = topology.batch_reply_queue("guest", "chaos-bad");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                replies.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Results reach a queue bound to the results exchange, as the SDK binds its own.
        quarry_integration::bind_to_results(&channel, &topology, &replies).await;
        channel.confirm_select(Default::default()).await.unwrap();
        let valid = |n: usize| chaos_job(Scenario::BadInput, 1_000_000 + n);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut expected = BTreeMap::new();
        for n in 0..10 {
            let mut cases: Vec<(&str, Vec<u8>, bool, Expect)> = Vec::new();
            cases.push((
                "malformed-json",
                b"{\"version\":\"job.v1\",".to_vec(),
                true,
                Expect::CodeAndDead(ErrorCode::InvalidRequest, "undecodable"),
            ));
            cases.push((
                "wrong-types",
                serde_json::to_vec(&json!({"version": "job.v1", "id": 42, "input": "text"}))
                    .unwrap(),
                true,
                Expect::CodeAndDead(ErrorCode::InvalidRequest, "undecodable"),
            ));
            let mut image = valid(n * 10 + 1);
            image
                .input
                .push(InputPart::Image(quarry_schemas::job::ImagePart {
                    mime: quarry_schemas::job::ImageMime::Png,
                    data: "A".repeat(8192),
                }));
            cases.push((
                "oversized-image",
                serde_json::to_vec(&image).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut schema = valid(n * 10 + 2);
            schema.json_schema = Some(json!({"type": "no-such-type"}).into());
            cases.push((
                "invalid-schema",
                serde_json::to_vec(&schema).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut alias = valid(n * 10 + 3);
            alias.model = Some("no-such-alias".into());
            cases.push((
                "unknown-alias",
                serde_json::to_vec(&alias).unwrap(),
                true,
                Expect::Code(ErrorCode::ModelUnresolved),
            ));
            let mut expired = valid(n * 10 + 4);
            expired.deadline_ms = Some(now_ms.saturating_sub(60_000));
            cases.push((
                "expired-deadline",
                serde_json::to_vec(&expired).unwrap(),
                true,
                Expect::Code(ErrorCode::DeadlineExceeded),
            ));
            cases.push((
                "missing-reply-to",
                serde_json::to_vec(&valid(n * 10 + 5)).unwrap(),
                false,
                Expect::Dead("missing_reply_to"),
            ));
            // The plugin (guest) may not reach another model than fake-large, use another
            // credential profile or ask for more than 4096 output tokens, however it asks.
            let mut overriding = valid(n * 10 + 6);
            overriding.model = Some("fast".into());
            cases.push((
                "forbidden-model",
                serde_json::to_vec(&overriding).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut suffix = valid(n * 10 + 7);
            suffix.model = Some("default@premium".into());
            cases.push((
                "model-at-profile-bypass",
                serde_json::to_vec(&suffix).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut field = valid(n * 10 + 8);
            field.profile = Some("premium".into());
            cases.push((
                "forbidden-profile",
                serde_json::to_vec(&field).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            let mut conflict = valid(n * 10 + 9);
            conflict.model = Some("default@default".into());
            conflict.profile = Some("premium".into());
            cases.push((
                "conflicting-profiles",
                serde_json::to_vec(&conflict).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut greedy = valid(n * 10 + 10_000);
            greedy.max_tokens = Some(100_000);
            cases.push((
                "max-tokens-over-ceiling",
                serde_json::to_vec(&greedy).unwrap(),
                true,
                Expect::Code(ErrorCode::NotAuthorized),
            ));
            // Nothing vouches for who sent it: not answered, not even with a refusal.
            cases.push((
                "no-user-id",
                serde_json::to_vec(&valid(n * 10 + 20_000)).unwrap(),
                true,
                Expect::Dead("no_user_id"),
            ));
            // Results go only to the sender's own reply queues.
            cases.push((
                "foreign-reply-to",
                serde_json::to_vec(&valid(n * 10 + 30_000)).unwrap(),
                true,
                Expect::Dead("reply_to_refused"),
            ));
            let mut metadata = valid(n * 10 + 40_000);
            metadata.metadata = Some(json!({"blob": "m".repeat(20_000)}).into());
            cases.push((
                "huge-metadata",
                serde_json::to_vec(&metadata).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            let mut big_schema = valid(n * 10 + 50_000);
            big_schema.json_schema =
                Some(json!({"type": "object", "description": "s".repeat(70_000)}).into());
            cases.push((
                "huge-schema",
                serde_json::to_vec(&big_schema).unwrap(),
                true,
                Expect::Code(ErrorCode::InvalidRequest),
            ));
            for (kind, body, with_reply, expect) in cases {
                let correlation = format!("bad-{kind}-{n}");
                let mut properties = BasicProperties::default()
                    .with_message_id(correlation.as_str().into())
                    .with_correlation_id(correlation.as_str().into());
                if kind != "no-user-id" {
                    properties = properties.with_user_id("guest".into());
                }
                if kind == "foreign-reply-to" {
                    let foreign = topology.batch_reply_queue("someone-else", "chaos-bad");
                    properties = properties.with_reply_to(foreign.as_str().into());
                } else if with_reply {
                    properties = properties.with_reply_to(replies.as_str().into());
                }
                let confirm = channel
                    .basic_publish(
                        topology.jobs_exchange().as_str().into(),
                        "batch".into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack(), "bad input {correlation} published");
                expected.insert(correlation, expect);
            }
        }
        let _ = connection.close(200, "bad inputs published".into()).await;
        Self { expected, replies }
    }

    /// Reads the answers and the dead letters; returns how many inputs ended as expected,
    /// and a line for each that did not.
    pub(crate) async fn check(&self, namespace: &str) -> (usize, Vec<String>) {
        let topology = Topology::new(namespace);
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let want_codes = self
            .expected
            .values()
            .filter(|e| matches!(e, Expect::Code(_) | Expect::CodeAndDead(..)))
            .count();
        let want_dead = self
            .expected
            .values()
            .filter(|e| matches!(e, Expect::Dead(_) | Expect::CodeAndDead(..)))
            .count();
        let codes = drain(&connection, &self.replies, want_codes, |d| {
            let id = d.properties.correlation_id().as_ref()?.as_str().to_owned();
            let result: JobResult = serde_json::from_slice(&d.data).ok()?;
            Some((
                id,
                result
                    .error
                    .map_or("ok".into(), |e| e.code.as_str().to_owned()),
            ))
        })
        .await;
        let dead = drain(&connection, &topology.dead_queue(), want_dead, |d| {
            let id = d.properties.correlation_id().as_ref()?.as_str().to_owned();
            Some((id, header_text(d.properties.headers(), HEADER_DEAD_REASON)?))
        })
        .await;
        let _ = connection.close(200, "checked".into()).await;
        let mut handled = 0;
        let mut misses = Vec::new();
        for (id, expect) in &self.expected {
            let code = codes.get(id);
            let reason = dead.get(id);
            let ok = match expect {
                Expect::Code(c) => code.map(String::as_str) == Some(c.as_str()),
                Expect::Dead(r) => reason.map(String::as_str) == Some(*r) && code.is_none(),
                Expect::CodeAndDead(c, r) => {
                    code.map(String::as_str) == Some(c.as_str())
                        && reason.map(String::as_str) == Some(*r)
                }
            };
            if ok {
                handled += 1;
            } else {
                misses.push(format!(
                    "{id}: expected {expect:?}, got result {code:?}, dead letter {reason:?}"
                ));
            }
        }
        (handled, misses)
    }
}
