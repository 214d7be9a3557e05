//! `quarry`: the command-line producer.
//!
//! - `quarry submit --input jobs.jsonl --output results.jsonl [--errors errors.jsonl]`
//!   publishes one job per input line and writes one result line per job, with a progress bar
//!   and a final report; `--resume` continues an interrupted run (lines that have a result are
//!   not submitted again).
//! - `quarry stream --text … [--schema FILE]`: one streamed call, its answer printed as it is
//!   written.
//! - `quarry status BATCH`: the batch's progress counters, from the fleet.
//! - `quarry cancel BATCH`: jobs of the batch not yet started end `CANCELLED`.
//! - `quarry dead-letters list|redrive`: inspect the dead-letter queue, and publish its jobs
//!   again.

mod control;
mod dead_letters;
mod input;
mod stream;
mod submit;

/// What the modules of this program name of each other.
mod prelude {
    pub(crate) use crate::control::*;
    pub(crate) use crate::dead_letters::*;
    pub(crate) use crate::input::*;
    pub(crate) use crate::stream::*;
    pub(crate) use crate::submit::*;
    pub(crate) use crate::{CONTROL_TIMEOUT, Cli, DeadLetterCommand, RECONNECT_PATIENCE, connect};
}

use clap::{Parser, Subcommand};
use prelude::*;
use quarry_producer::{Client, ClientOptions};
use std::process::ExitCode;
use std::time::Duration;

/// How long `submit` waits for a lost broker to come back before it gives up.
pub(crate) const RECONNECT_PATIENCE: Duration = Duration::from_secs(300);

/// Quarry command-line producer.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Cli {
    /// RabbitMQ URL; its user is the plugin identity.
    #[arg(
        long,
        global = true,
        env = "QUARRY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub(crate) amqp_url: String,
    /// Namespace of the fleet's exchanges and queues.
    #[arg(
        long,
        global = true,
        env = "QUARRY_NAMESPACE",
        default_value = "quarry"
    )]
    pub(crate) namespace: String,
    /// The AMQP user the fleet's workers log in as: results and replies from any other
    /// user are dropped. `dead-letters redrive` must run as this user.
    #[arg(
        long,
        global = true,
        env = "QUARRY_WORKER_USER",
        default_value = quarry_producer::DEFAULT_WORKER_USER
    )]
    pub(crate) worker_user: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Submit a JSONL file of jobs and write their results as JSONL.
    Submit(Box<SubmitArgs>),
    /// One streamed call: the answer is written to stdout as the model writes it (resets
    /// and a summary on stderr).
    Stream(Box<StreamArgs>),
    /// Show a batch's progress (results stored so far by outcome, tokens) from the fleet.
    Status {
        /// The batch id (printed by `submit`).
        batch_id: String,
    },
    /// Cancel a batch: its jobs not yet started end CANCELLED, jobs in flight finish.
    Cancel {
        /// The batch id.
        batch_id: String,
    },
    /// List or re-drive dead-lettered messages (needs read access to `<ns>.dead`: run it
    /// with the workers' broker user).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// What this plugin may use: aliases and targets (with image support), defaults,
    /// profiles, quotas and what is left of them.
    Models,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// Print the dead letters (they stay in the queue).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish dead-lettered jobs again to their lane, then remove them from the dead-letter
    /// queue. The job keeps its plugin when this runs as the workers' broker user.
    Redrive {
        /// Only letters with this reason (`delivery_limit`, `undecodable`, ...).
        #[arg(long)]
        reason: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (name, outcome) = match &cli.command {
        Command::Submit(args) => ("submit", submit(&cli, args).await),
        Command::Stream(args) => ("stream", stream(&cli, args).await),
        Command::Status { batch_id } => ("status", status(&cli, batch_id).await),
        Command::Cancel { batch_id } => ("cancel", cancel(&cli, batch_id).await),
        Command::Models => ("models", models(&cli).await),
        Command::DeadLetters(command) => ("dead-letters", dead_letters(&cli, command).await),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quarry {name}: {error:#}");
            if error.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How long `status` and `cancel` wait for a worker's answer.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let options = ClientOptions {
        namespace: cli.namespace.clone(),
        connection_name: "quarry-cli".into(),
        worker_user: cli.worker_user.clone(),
    };
    Ok(Client::connect_with(&cli.amqp_url, options).await?)
}
