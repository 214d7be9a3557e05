//! `quarry-chaos`: the delivery guarantees under failure. Each scenario runs a batch through
//! three supervised `quarry-worker` processes, the machine's RabbitMQ, a private Redis and the
//! fake provider, injects its fault, and checks at the end that every custom id has exactly
//! one result. Prints a report (and writes it as JSON); exits 1 when a target is missed.
//!
//! ```text
//! cargo build --bins && target/debug/quarry-chaos --jobs 5000
//! target/debug/quarry-chaos --scenario broker-restart --jobs 2000
//! ```
//!
//! The broker restart scenario runs `rabbitmqctl stop_app` / `start_app` on this machine's
//! RabbitMQ: run it as root (or a user rabbitmqctl accepts), and not while other tests use
//! the broker. Redis is a private `redis-server` on a free port, restarted at will.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a test program fails loudly"
)]

mod bad_input;
mod fleet;
mod inject;
mod report;
mod run;
mod scenario;
mod supervisor;

/// What the modules of this program name of each other.
mod prelude {
    pub(crate) use crate::Cli;
    pub(crate) use crate::bad_input::*;
    pub(crate) use crate::fleet::*;
    pub(crate) use crate::inject::*;
    pub(crate) use crate::report::*;
    pub(crate) use crate::run::*;
    pub(crate) use crate::scenario::*;
    pub(crate) use crate::supervisor::*;
}

use clap::Parser;
use prelude::*;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Delivery guarantees under failure, with a report")]
pub(crate) struct Cli {
    /// Jobs per scenario.
    #[arg(long, default_value_t = 5000)]
    pub(crate) jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub(crate) workers: usize,
    /// Scenarios to run, in order (default: all).
    #[arg(long = "scenario", value_enum)]
    pub(crate) scenarios: Vec<Scenario>,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "target/chaos/report.json")]
    pub(crate) json: PathBuf,
    /// Longest a scenario may take, seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout_secs: u64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios.clone()
    };
    let mut reports = Vec::new();
    for scenario in scenarios {
        eprintln!("== {} ({} jobs)", scenario.name(), cli.jobs);
        let report =
            tokio::time::timeout(Duration::from_secs(cli.timeout_secs), run(scenario, &cli))
                .await
                .unwrap_or_else(|_| Report {
                    scenario: scenario.name().into(),
                    failures: vec![format!("did not finish within {} s", cli.timeout_secs)],
                    ..Report::default()
                });
        print_report(&report);
        reports.push(report);
    }
    println!();
    println!(
        "| scenario | delivered / expected | duplicates delivered | lost | calls per job (mean / max) | repeat calls | longest stall | crashes | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} / {} | {} | {} | {:.3} / {} | {} | {:.1} s | {} | {} |",
            r.scenario,
            r.delivered,
            r.expected,
            r.duplicates_delivered,
            r.lost,
            r.calls_per_job_mean,
            r.calls_per_job_max,
            r.unexplained_repeat_calls,
            r.longest_stall_secs,
            r.worker_crashes,
            if r.passed { "pass" } else { "FAIL" }
        );
    }
    if let Some(dir) = cli.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&reports).unwrap()).unwrap();
    eprintln!("report written to {}", cli.json.display());
    if reports.iter().any(|r| !r.passed) {
        std::process::exit(1);
    }
}
