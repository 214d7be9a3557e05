//! `big-inputs`: jobs carrying 1 MiB images, through the fleet and through the raw round trip.

use crate::ceiling::{quarry_end_to_end, raw_round_trip};
use crate::common::{receipt_job, write_json};
use base64::Engine;
use quarry_fake_provider::FakeConfig;
use quarry_producer::{ImagePart, InputPart, Job};
use quarry_schemas::job::ImageMime;
use serde_json::{Value, json};
use std::path::Path;

/// A receipt job with one image of `image_bytes` random bytes (PNG by its media type).
fn image_job(n: usize, image: &str) -> Job {
    let mut job = receipt_job(n);
    job.input.push(InputPart::Image(ImagePart {
        mime: ImageMime::Png,
        data: image.to_owned(),
    }));
    job
}

/// `jobs` image jobs, `in_flight` outstanding: raw echo of the same bodies, then Quarry end
/// to end (the worker sends each image on to the provider), alternating `rounds` times.
/// MiB/s counts the image bytes (before base64) carried per second.
pub async fn big_inputs(
    image_bytes: usize,
    jobs: usize,
    in_flight: usize,
    rounds: usize,
    json_path: &Path,
) -> Value {
    println!(
        "quarry-bench big-inputs: {jobs} jobs with a {image_bytes}-byte image, {in_flight} in flight, {rounds} rounds"
    );
    let mut rng = fastrand::Rng::with_seed(11);
    let raw_image: Vec<u8> = (0..image_bytes).map(|_| rng.u8(..)).collect();
    let image = base64::engine::general_purpose::STANDARD.encode(&raw_image);
    let mib = image_bytes as f64 / (1024.0 * 1024.0);
    let (mut raw, mut quarry, mut worker) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let bodies = (0..jobs)
            .map(|n| serde_json::to_vec(&image_job(n, &image)).unwrap())
            .collect();
        let r = raw_round_trip(bodies, in_flight).await;
        println!(
            "round {round}: raw AMQP echo     {r:>7.1} jobs/s {:>7.1} MiB/s",
            r * mib
        );
        raw.push(r);
        let batch = (0..jobs).map(|n| image_job(n, &image)).collect();
        let (q, interval) = quarry_end_to_end(FakeConfig::default(), batch, in_flight).await;
        println!(
            "round {round}: Quarry end to end {q:>7.1} jobs/s {:>7.1} MiB/s",
            q * mib
        );
        quarry.push(q);
        worker.push(interval);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (raw_best, quarry_best) = (best(&raw), best(&quarry));
    let ratio = quarry_best / raw_best;
    println!();
    println!("| measure | jobs/s | image MiB/s |");
    println!("|---|---|---|");
    println!(
        "| raw AMQP round trip | {raw_best:.1} | {:.1} |",
        raw_best * mib
    );
    println!(
        "| Quarry end to end | {quarry_best:.1} | {:.1} |",
        quarry_best * mib
    );
    println!("| ratio | {:.1}% (target ≥ 80%) | |", ratio * 100.0);
    let report = json!({
        "scenario": "big_inputs", "image_bytes": image_bytes, "jobs": jobs, "in_flight": in_flight,
        "rounds": rounds, "raw_jobs_per_s": raw, "quarry_jobs_per_s": quarry,
        "quarry_worker": worker, "raw_mib_per_s": raw_best * mib, "quarry_mib_per_s": quarry_best * mib,
        "ratio": ratio, "target_ratio": 0.8, "met": ratio >= 0.8,
    });
    write_json(json_path, &report);
    report
}
