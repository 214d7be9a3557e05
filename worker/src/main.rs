//! `quarry-worker`: parse arguments, load configuration, set up logs, run.

use clap::Parser;
use quarry_worker::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: with 2,000 jobs in flight, glibc's `malloc`/`free`
/// (with `malloc_consolidate` and `unlink_chunk` from fragmentation) took about a third of the
/// worker's CPU (docs/benchmarks.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quarry worker: structured extraction jobs from RabbitMQ to LLM providers and back.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; `QUARRY__SECTION__KEY` environment variables override it.
    #[arg(long, short, env = "QUARRY_CONFIG")]
    config: Option<PathBuf>,
    /// Load and check the configuration, then exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quarry-worker: {error}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    if let Err(error) = quarry_worker::telemetry::init_tracing(&config.log) {
        eprintln!("quarry-worker: {error:#}");
        return ExitCode::from(2);
    }
    let worker = match quarry_worker::Worker::start(config).await {
        Ok(worker) => worker,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker stopped");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(unix)]
    let _reloads = reload_on_hangup(worker.reloader());
    match worker.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker stopped");
            ExitCode::FAILURE
        }
    }
}

/// `SIGHUP` reloads `[plugins]` and `[routing]` (docs/configuration.md, "Reload").
#[cfg(unix)]
fn reload_on_hangup(
    reloader: quarry_worker::reload::Reloader,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(error = %error, "cannot handle SIGHUP; configuration reloads only by file watch");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let reloader = reloader.clone();
            // Reading and checking the file is blocking work.
            let _ = tokio::task::spawn_blocking(move || reloader.reload_and_report("SIGHUP")).await;
        }
    }))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
