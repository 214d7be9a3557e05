//! `quarry-bench`: Quarry's benchmark programs. Each scenario starts what it needs (the fake
//! provider in this process, `quarry-worker` processes) against the local RabbitMQ and Redis
//! (`scripts/test` sets them up), prints a table, and writes its figures as JSON under
//! `target/bench/`. Ratios are measured side by side in the same run. Needs the release
//! binaries (`cargo build --release --bins`). `docs/benchmarks.md` has the last figures.
//!
//! ```text
//! target/release/quarry-bench all          # the six scenarios below, in turn
//! target/release/quarry-bench ceiling      # raw AMQP echo vs Quarry end to end, CPU per job
//! target/release/quarry-bench overhead     # worker overhead at 1,000 jobs/s, bare waits beside
//! target/release/quarry-bench in-flight    # 2,000 calls of 1 s in one worker
//! target/release/quarry-bench schema       # answer checking per job, cached validators
//! target/release/quarry-bench big-inputs   # 1 MiB images vs the raw round trip
//! target/release/quarry-bench scaling      # 1, 2, 4 workers at 200 ms
//! target/release/quarry-bench limits       # fleet-wide limits and the key pool
//! target/release/quarry-bench limiter      # the Redis limiter alone: decisions/s, Redis CPU and memory
//! target/release/quarry-bench sdk          # the TypeScript SDK beside the Rust SDK
//! target/release/quarry-bench stream       # 500 streamed calls beside a direct streaming client
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a benchmark fails loudly"
)]

/// The same allocator as the worker's: this process is the plugin and the provider of every
/// scenario, and with glibc's allocator it spent about 45% of its CPU in `malloc`/`free`
/// during `in-flight`, CPU the 2 cores then lacked for the broker and the worker.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod big;
mod ceiling;
mod common;
mod inflight;
mod limiter;
mod limiter_v1;
mod limits;
mod overhead;
mod scaling;
mod schema;
mod sdk;
mod stream;

use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The six scenarios of the benchmark suite in turn, with their default sizes; figures also
    /// go to `target/bench/all.json`.
    All,
    /// The broker's ceiling (raw AMQP echo) against Quarry end to end, their ratio, and the CPU
    /// per job of every process on both sides (the ratio it predicts, and with a worker of no cost).
    Ceiling {
        /// Jobs per measured run.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Jobs outstanding at once (producer side), for both.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
        /// Rounds: raw and Quarry alternate this many times; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/ceiling.json")]
        json: PathBuf,
    },
    /// The worker's own time per job (p50, p99, p99.9), CPU per job and Redis round trips per
    /// job at a fixed offered load, beside the same waits timed bare meanwhile.
    Overhead {
        /// Jobs offered per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Seconds of warm-up at the same rate before the measured run.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/overhead.json")]
        json: PathBuf,
    },
    /// One worker process with thousands of slow provider calls in flight: sustained jobs/s,
    /// peak RSS, overhead.
    InFlight {
        /// Jobs in flight in the worker (its `worker.concurrency`).
        #[arg(long, default_value_t = 2000)]
        in_flight: usize,
        /// Provider latency in milliseconds.
        #[arg(long, default_value_t = 1000)]
        latency_ms: u64,
        /// Jobs in the run.
        #[arg(long, default_value_t = 30_000)]
        jobs: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/in-flight.json")]
        json: PathBuf,
    },
    /// Answer checking per job (cache lookup, parse, validate) for the example schemas.
    Schema {
        /// Distinct answers per schema.
        #[arg(long, default_value_t = 1000)]
        answers: usize,
        /// Passes over the answers.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/schema.json")]
        json: PathBuf,
    },
    /// Jobs carrying big images: Quarry end to end against the raw round trip of the same
    /// bodies, in jobs/s and MiB/s.
    BigInputs {
        /// Image size in bytes (before base64).
        #[arg(long, default_value_t = 1024 * 1024)]
        image_bytes: usize,
        /// Jobs per measured run.
        #[arg(long, default_value_t = 300)]
        jobs: usize,
        /// Jobs outstanding at once, for both.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Rounds: raw and Quarry alternate this many times; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/big-inputs.json")]
        json: PathBuf,
    },
    /// 1, 2 and 4 worker processes on this machine against a slow provider.
    Scaling {
        /// Worker counts to run, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<usize>,
        /// Provider latency in milliseconds.
        #[arg(long, default_value_t = 200)]
        latency_ms: u64,
        /// Jobs per run.
        #[arg(long, default_value_t = 12_000)]
        jobs: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/scaling.json")]
        json: PathBuf,
    },
    /// The TypeScript SDK's batch rate beside the Rust SDK's on one fleet, and its memory with
    /// many calls outstanding (needs `npm run build` in producer-sdk/typescript).
    Sdk {
        /// Jobs per round and SDK.
        #[arg(long, default_value_t = 5_000)]
        jobs: usize,
        /// Batch jobs outstanding at once, for both.
        #[arg(long, default_value_t = 512)]
        in_flight: usize,
        /// Rounds: Rust and TypeScript alternate this many times; the best of each is reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Calls outstanding at once for the memory figure.
        #[arg(long, default_value_t = 2_000)]
        outstanding: usize,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/sdk.json")]
        json: PathBuf,
    },
    /// Streamed calls beside a direct streaming HTTP client on the same fake provider: time to
    /// the first delta, the worker's added latency to the first chunk, content and chunk rates.
    Stream {
        /// Streams at once, for both sides.
        #[arg(long, default_value_t = 500)]
        streams: usize,
        /// Milliseconds between the fake provider's events (the model's pace).
        #[arg(long, default_value_t = 20)]
        pace_ms: u64,
        /// Rounds: direct and Quarry alternate this many times, in each phase; the median round
        /// is summarised.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The second phase starts the streams spread evenly over this many milliseconds (the
        /// first starts them all at once).
        #[arg(long, default_value_t = 1000)]
        ramp_ms: u64,
        /// The worker's `worker.stream_chunk_ms` (its default is 40).
        #[arg(long, default_value_t = 40)]
        chunk_ms: u64,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/stream.json")]
        json: PathBuf,
    },
    /// The Redis limiter on its own: decisions/s and Redis CPU per decision for 1, 3 and 16
    /// keys, Redis memory per bucket at a steady rate, and a refusal's cost beside a grant's.
    Limiter {
        /// Seconds of each closed-loop run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds of the memory run (60: a full window).
        #[arg(long, default_value_t = 60.0)]
        memory_seconds: f64,
        /// Decisions a second of the memory run.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Entries of the full bucket the refusals meet.
        #[arg(long, default_value_t = 20_000)]
        refusal_limit: u64,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/limiter.json")]
        json: PathBuf,
    },
    /// Fleet-wide limits and the key pool under saturation.
    Limits {
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Requests per minute per key, in Quarry's configuration and at the provider.
        #[arg(long, default_value_t = 300)]
        rpm: u64,
        /// Seconds to run each scenario (at least one full 60 s window plus the next burst).
        #[arg(long, default_value_t = 65)]
        seconds: u64,
        /// Key counts to run, in order.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        keys: Vec<usize>,
        /// Where to write the figures as JSON.
        #[arg(long, default_value = "target/bench/limits.json")]
        json: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Command::All => all().await,
        Command::Ceiling {
            jobs,
            in_flight,
            rounds,
            json,
        } => {
            ceiling::ceiling(jobs, in_flight, rounds, &json).await;
        }
        Command::Overhead {
            rate,
            seconds,
            warmup,
            json,
        } => {
            overhead::overhead(rate, seconds, warmup, &json).await;
        }
        Command::InFlight {
            in_flight,
            latency_ms,
            jobs,
            json,
        } => {
            inflight::in_flight(in_flight, latency_ms, jobs, &json).await;
        }
        Command::Schema {
            answers,
            rounds,
            json,
        } => {
            schema::schema(answers, rounds, &json);
        }
        Command::BigInputs {
            image_bytes,
            jobs,
            in_flight,
            rounds,
            json,
        } => {
            big::big_inputs(image_bytes, jobs, in_flight, rounds, &json).await;
        }
        Command::Scaling {
            workers,
            latency_ms,
            jobs,
            json,
        } => {
            scaling::scaling(&workers, latency_ms, jobs, &json).await;
        }
        Command::Limiter {
            seconds,
            memory_seconds,
            rate,
            refusal_limit,
            json,
        } => {
            limiter::limiter(seconds, memory_seconds, rate, refusal_limit, &json).await;
        }
        Command::Limits {
            workers,
            rpm,
            seconds,
            keys,
            json,
        } => limits::limits(workers, rpm, seconds, &keys, &json).await,
        Command::Stream {
            streams,
            pace_ms,
            rounds,
            ramp_ms,
            chunk_ms,
            json,
        } => {
            stream::stream(streams, pace_ms, rounds, ramp_ms, chunk_ms, &json).await;
        }
        Command::Sdk {
            jobs,
            in_flight,
            rounds,
            outstanding,
            json,
        } => {
            sdk::sdk(jobs, in_flight, rounds, outstanding, &json).await;
        }
    }
}

/// The six scenarios with their default sizes, one after the other.
async fn all() {
    let dir = Path::new("target/bench");
    let mut reports = Vec::new();
    reports.push(ceiling::ceiling(10_000, 512, 2, &dir.join("ceiling.json")).await);
    println!();
    reports.push(overhead::overhead(1000.0, 20.0, 3.0, &dir.join("overhead.json")).await);
    println!();
    reports.push(inflight::in_flight(2000, 1000, 30_000, &dir.join("in-flight.json")).await);
    println!();
    reports.push(schema::schema(1000, 20, &dir.join("schema.json")));
    println!();
    reports.push(big::big_inputs(1024 * 1024, 300, 16, 2, &dir.join("big-inputs.json")).await);
    println!();
    reports.push(scaling::scaling(&[1, 2, 4], 200, 12_000, &dir.join("scaling.json")).await);
    common::write_json(&dir.join("all.json"), &json!({ "scenarios": reports }));
}
