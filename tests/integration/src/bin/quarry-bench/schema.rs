//! `schema`: what checking an answer against its schema costs per job, with the compiled
//! validator cached per distinct schema, as the worker does it.

use crate::common::write_json;
use quarry_fake_provider::generate::{Rng, generate};
use quarry_schemas::JsonSchema;
use quarry_worker::pipeline::check_answer;
use quarry_worker::providers::SentSchema;
use quarry_worker::schema_cache::SchemaCache;
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// For each example schema: `answers` distinct schema-valid answers (from the fake provider's
/// generator), each checked `rounds` times through the worker's own code — reading the
/// job's schema out of its message and finding its validator (`JsonSchema` from the message
/// text, `SchemaCache::get`), then `check_answer` (parse, then validate) — on one thread.
/// Measured beside them:
/// - compiling the validator for every job instead;
/// - the schema step as the worker did it before item 8: the schema parsed into a tree, the
///   validator looked up by the tree in the same kind of cache, the tree dropped;
/// - writing the schema into a provider request: serialising the tree, as the worker did for
///   every attempt (twice: the request and the token estimate) before item 7, against copying
///   the compact text the cache keeps.
pub fn schema(answers: usize, rounds: usize, json_path: &Path) -> Value {
    println!(
        "quarry-bench schema: {answers} answers × {rounds} rounds per example schema, one thread"
    );
    println!();
    println!(
        "| schema | answer bytes | schema from message + lookup µs | parse + validate µs | per job µs | jobs/s/core | compile µs (uncached) | schema from message + lookup as a tree µs | schema into request µs: serialise tree / copy text |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (name, text) in quarry_schemas::examples::ALL {
        let schema: Value = serde_json::from_str(text).unwrap();
        let mut rng = Rng::new(7);
        let texts: Vec<String> = (0..answers)
            .map(|_| generate(&schema, &mut rng).to_string())
            .collect();
        let bytes = texts.iter().map(String::len).sum::<usize>() / answers.max(1);
        // The schema as a message carries it (the producer SDK writes it compactly).
        let message = JsonSchema::from(&schema).as_str().to_owned();
        let cache = SchemaCache::new(64, 1 << 30, 100_000);
        let compiled = cache.get(&JsonSchema::from(&schema)).unwrap();
        for text in &texts {
            check_answer(&compiled.validator, text).unwrap(); // every answer is valid, and warm
        }
        let n = (answers * rounds) as f64;
        // µs per call of `step`, called once per answer per round.
        let per_answer = |step: &mut dyn FnMut(&str)| {
            let started = Instant::now();
            for _ in 0..rounds {
                texts.iter().for_each(|text| step(text));
            }
            started.elapsed().as_secs_f64() * 1e6 / n
        };
        let lookup = per_answer(&mut |_| {
            let schema: JsonSchema = serde_json::from_str(black_box(&message)).unwrap();
            black_box(cache.get(&schema).unwrap());
        });
        let by_tree = quick_cache::sync::Cache::<Value, Arc<()>>::new(64);
        by_tree.insert(schema.clone(), Arc::new(()));
        let lookup_tree = per_answer(&mut |_| {
            let schema: Value = serde_json::from_str(black_box(&message)).unwrap();
            black_box(by_tree.get(&schema).unwrap());
        });
        let check = per_answer(&mut |text| {
            black_box(check_answer(&compiled.validator, black_box(text)).unwrap());
        });
        let compiles = 200;
        let started = Instant::now();
        for _ in 0..compiles {
            let schema: JsonSchema = serde_json::from_str(black_box(&message)).unwrap();
            black_box(SchemaCache::new(1, 1 << 30, 100_000).get(&schema).unwrap());
        }
        let compile = started.elapsed().as_secs_f64() * 1e6 / f64::from(compiles);
        let per_job = lookup + check;
        let mut request = Vec::with_capacity(4096);
        let mut write = |sent: SentSchema<'_>| {
            let started = Instant::now();
            for _ in 0..n as usize {
                request.clear();
                serde_json::to_writer(&mut request, black_box(&sent)).unwrap();
                black_box(&request);
            }
            started.elapsed().as_secs_f64() * 1e6 / n
        };
        let serialise = write(SentSchema::Tree(&schema));
        let copy = write(SentSchema::Text(compiled.text.as_raw()));
        println!(
            "| {name} | {bytes} | {lookup:.2} | {check:.2} | {per_job:.2} | {:.0} | {compile:.0} | {lookup_tree:.2} | {serialise:.2} / {copy:.2} |",
            1e6 / per_job
        );
        rows.push(json!({
            "schema": name, "answer_bytes": bytes, "schema_from_message_and_lookup_us": lookup,
            "parse_and_validate_us": check, "per_job_us": per_job,
            "jobs_per_s_per_core": 1e6 / per_job, "compile_uncached_us": compile,
            "schema_from_message_and_lookup_as_tree_us": lookup_tree,
            "request_schema_serialise_tree_us": serialise, "request_schema_copy_text_us": copy,
        }));
    }
    let report =
        json!({"scenario": "schema", "answers": answers, "rounds": rounds, "schemas": rows});
    write_json(json_path, &report);
    report
}
