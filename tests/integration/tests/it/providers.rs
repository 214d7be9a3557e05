//! Every provider kind through the whole fleet, and the repair loop under a fault profile.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "tests fail by panicking"
)]

use quarry_fake_provider::FakeConfig;
use quarry_integration::{Fleet, counter_sum, http_get, parse_metrics};
use quarry_producer::{Client, ErrorCode, InputPart, Job, JobResult, Status, new_job_id};
use quarry_schemas::examples;
use quarry_schemas::job::{ImageMime, ImagePart};
use quarry_worker::config::{Config, Price, ProviderConfig, ProviderKind, ProviderSettings, Route};
use serde_json::Value;
use std::collections::HashMap;

pub(crate) const KINDS: [(&str, ProviderKind); 4] = [
    ("openai", ProviderKind::Openai),
    ("anthropic", ProviderKind::Anthropic),
    ("gemini", ProviderKind::Gemini),
    ("compatible", ProviderKind::OpenaiCompatible),
];

fn schemas() -> Vec<(&'static str, Value)> {
    examples::ALL
        .iter()
        .map(|(name, text)| (*name, serde_json::from_str(text).unwrap()))
        .collect()
}

/// One alias per provider kind, all served by the fleet's fake provider.
pub(crate) fn every_kind(fleet: &Fleet) -> Config {
    let mut config = fleet.worker_config();
    config.providers.clear();
    config.routing.aliases.clear();
    for (name, kind) in KINDS {
        let base_url = match kind {
            ProviderKind::Gemini => fleet.fake.gemini_base_url(),
            _ => fleet.fake.base_url(),
        };
        // OpenAI with strict structured outputs, as a real deployment would run it.
        let settings = match ProviderSettings::of(kind) {
            ProviderSettings::Openai(_) => {
                ProviderSettings::Openai(quarry_worker::providers::openai::Settings {
                    strict: true,
                })
            }
            other => other,
        };
        let provider = ProviderConfig {
            settings,
            base_url: Some(base_url),
            ..ProviderConfig::default()
        };
        config.providers.insert(name.into(), provider);
        config.routing.aliases.insert(
            name.into(),
            Route {
                provider: name.into(),
                model: format!("{name}-model"),
                images: true,
                fallbacks: vec![],
            },
        );
        config.prices.push(Price {
            provider: name.into(),
            model: format!("{name}-model"),
            input_per_mtok: 1.0,
            output_per_mtok: 4.0,
            cached_input_per_mtok: None,
        });
    }
    config.routing.default_alias = "compatible".into();
    config
}

fn jobs(alias: &str, n: usize) -> Vec<Job> {
    let schemas = schemas();
    (0..n)
        .map(|i| {
            let (name, schema) = &schemas[i % schemas.len()];
            let mut input = vec![InputPart::Text {
                text: format!("{alias} item {i}: Cafe Luna, 2 x espresso, 5.60 EUR"),
            }];
            if i % 4 == 0 {
                input.push(InputPart::Image(ImagePart {
                    mime: ImageMime::Png,
                    data: "iVBORw0KGgoAAAANSUhEUg==".into(),
                }));
            }
            let mut job = Job::new(new_job_id(), input);
            job.custom_id = Some(format!("{alias}-{i}"));
            job.model = Some(alias.to_owned());
            job.json_schema = Some(schema.clone().into());
            job.schema_name = Some((*name).to_owned());
            job.instructions = Some("Extract the record.".into());
            job
        })
        .collect()
}

async fn run(client: &Client, jobs: Vec<Job>) -> HashMap<String, JobResult> {
    quarry_integration::batch_results(client, jobs, 200, 180)
        .await
        .into_iter()
        .map(|r| (r.custom_id.clone().unwrap(), r))
        .collect()
}

fn validator_for(schema_name: &str) -> jsonschema::Validator {
    let schema = schemas()
        .into_iter()
        .find(|(n, _)| *n == schema_name)
        .unwrap()
        .1;
    jsonschema::validator_for(&schema).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_through_every_provider_kind_is_schema_valid() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let worker = fleet.spawn_task_worker(every_kind(&fleet)).await;
    let client = fleet.client().await;
    let validators: HashMap<&str, jsonschema::Validator> = examples::ALL
        .iter()
        .map(|(n, _)| (*n, validator_for(n)))
        .collect();
    for (alias, _) in KINDS {
        let batch = jobs(alias, 60);
        let schema_of: HashMap<String, String> = batch
            .iter()
            .map(|j| (j.custom_id.clone().unwrap(), j.schema_name.clone().unwrap()))
            .collect();
        let results = run(&client, batch).await;
        // The batch's status sums what its results cost.
        let batch_id = results.values().next().and_then(|r| r.batch_id.clone());
        let status = client
            .batch_status(
                &batch_id.expect("a batch"),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(status.get("ok"), Some(60), "{status:?}");
        let spent: f64 = results.values().filter_map(|r| r.cost_usd).sum();
        let reported = status.cost_usd.expect("priced results");
        assert!(
            (reported - spent).abs() < 1e-7,
            "{alias}: batch cost {reported} vs {spent} summed from its results"
        );
        let mut repaired = 0;
        for (custom_id, result) in &results {
            assert_eq!(
                result.status,
                Status::Ok,
                "{alias} {custom_id}: {:?}",
                result.error
            );
            assert_eq!(result.provider.as_deref(), Some(alias));
            let parsed = result.parsed.as_ref().unwrap();
            assert!(
                validators[schema_of[custom_id].as_str()].is_valid(parsed),
                "{alias} {custom_id}: {parsed}"
            );
            let cost = result.cost_usd.expect("priced model");
            let expected =
                (result.usage.input_tokens as f64 + 4.0 * result.usage.output_tokens as f64) / 1e6;
            assert!(
                (cost - expected).abs() < 1e-12,
                "{alias}: cost {cost} vs {expected}"
            );
            repaired += usize::from(result.attempts > 1);
        }
        eprintln!("{alias}: 60/60 schema-valid, {repaired} needed a repair");
    }
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    for (alias, _) in KINDS {
        let ok = counter_sum(
            &scrape,
            "quarry_provider_requests_total",
            &[("provider", alias), ("outcome", "ok")],
        );
        assert!(ok >= 60.0, "{alias}: {ok} provider answers counted");
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "quarry_job_cost_usd" && s.labels.get("plugin") == Some("guest"))
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_of_first_answers_invalid_still_yields_valid_results() {
    let fleet = Fleet::start(FakeConfig {
        profile: "invalid_json=0.34".parse().unwrap(),
        ..FakeConfig::default()
    })
    .await;
    let mut config = every_kind(&fleet);
    config.worker.repair_attempts = 2;
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let total = 300;
    let results = run(&client, jobs("compatible", total)).await;
    let valid = results.values().filter(|r| r.status == Status::Ok).count();
    let repaired = results
        .values()
        .filter(|r| r.status == Status::Ok && r.attempts == 2)
        .count();
    eprintln!(
        "invalid_json=0.34: {valid}/{total} valid, {repaired} repaired on the second attempt"
    );
    assert!(valid * 100 >= total * 99, "only {valid}/{total} valid");
    assert!(
        repaired * 100 >= total * 20,
        "the profile should have broken about a third: {repaired}"
    );
    for result in results.values().filter(|r| r.status != Status::Ok) {
        let error = result.error.as_ref().unwrap();
        assert_eq!(error.code, ErrorCode::OutputInvalid);
        assert!(error.details.is_some());
    }
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    let counted = counter_sum(&scrape, "quarry_repairs_total", &[("outcome", "repaired")]);
    assert!(
        counted >= repaired as f64,
        "repairs counted {counted} < {repaired}"
    );

    // With the repair loop off, the same profile leaves about a third OUTPUT_INVALID.
    let mut config = every_kind(&fleet);
    config.worker.repair_attempts = 0;
    worker.stop().await.unwrap();
    let worker = fleet.spawn_task_worker(config).await;
    let results = run(&client, jobs("compatible", total)).await;
    let invalid: Vec<&JobResult> = results
        .values()
        .filter(|r| r.status != Status::Ok)
        .collect();
    eprintln!("repair off: {}/{total} OUTPUT_INVALID", invalid.len());
    assert!(
        invalid.len() * 100 >= total * 20,
        "the profile is not biting: {}",
        invalid.len()
    );
    assert!(
        invalid
            .iter()
            .all(|r| r.error.as_ref().unwrap().code == ErrorCode::OutputInvalid)
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_model_falls_back_to_the_next_target() {
    let fleet = Fleet::start(FakeConfig::default()).await;
    let overloaded = quarry_fake_provider::spawn(FakeConfig {
        profile: "overloaded=1".parse().unwrap(),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut config = every_kind(&fleet);
    config.worker.max_attempts = 2;
    config.providers.insert(
        "busy".into(),
        ProviderConfig {
            settings: ProviderSettings::of(ProviderKind::Anthropic),
            base_url: Some(overloaded.base_url()),
            ..ProviderConfig::default()
        },
    );
    config.routing.aliases.insert(
        "smart".into(),
        Route {
            provider: "busy".into(),
            model: "busy-model".into(),
            images: true,
            fallbacks: vec![quarry_worker::config::Target {
                provider: "gemini".into(),
                model: "gemini-model".into(),
                images: true,
            }],
        },
    );
    let worker = fleet.spawn_task_worker(config).await;
    let client = fleet.client().await;
    let results = run(&client, jobs("smart", 20)).await;
    for result in results.values() {
        assert_eq!(result.status, Status::Ok, "{:?}", result.error);
        assert_eq!(result.provider.as_deref(), Some("gemini"));
        assert_eq!(result.model.as_deref(), Some("gemini-model"));
    }
    assert_eq!(
        overloaded.stats.snapshot().faults,
        20,
        "with a fallback next, an overloaded model is left at once"
    );
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    assert_eq!(
        counter_sum(&scrape, "quarry_fallbacks_total", &[("provider", "busy")]),
        20.0
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();
    fleet.teardown(&[]).await;
}
