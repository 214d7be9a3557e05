//! `quarry`: the command-line producer.
//!
//! - `quarry submit --input jobs.jsonl --output results.jsonl [--errors errors.jsonl]`
//!   publishes one job per input line and writes one result line per job, with a progress bar
//!   and a final report; `--resume` continues an interrupted run (lines that have a result are
//!   not submitted again).
//! - `quarry status BATCH`: the batch's progress counters, from the fleet.
//! - `quarry cancel BATCH`: jobs of the batch not yet started end `CANCELLED`.
//! - `quarry dead-letters list|redrive`: inspect the dead-letter queue, and publish its jobs
//!   again.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quarry_producer::{
    BatchOptions, Client, ClientOptions, InputPart, Job, JsonSchema, Lane, new_job_id,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long `submit` waits for a lost broker to come back before it gives up.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(300);

/// Quarry command-line producer.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// RabbitMQ URL; its user is the plugin identity.
    #[arg(
        long,
        global = true,
        env = "QUARRY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// Namespace of the fleet's exchanges and queues.
    #[arg(
        long,
        global = true,
        env = "QUARRY_NAMESPACE",
        default_value = "quarry"
    )]
    namespace: String,
    /// The AMQP user the fleet's workers log in as: results and replies from any other
    /// user are dropped. `dead-letters redrive` must run as this user.
    #[arg(
        long,
        global = true,
        env = "QUARRY_WORKER_USER",
        default_value = quarry_producer::DEFAULT_WORKER_USER
    )]
    worker_user: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a JSONL file of jobs and write their results as JSONL.
    Submit(Box<SubmitArgs>),
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
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
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

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Input: one JSON object a line, with `text` (or `input` parts) and optional job fields.
    #[arg(long, short)]
    input: PathBuf,
    /// Output: one result.v1 JSON object a line, in completion order.
    #[arg(long, short)]
    output: PathBuf,
    /// Write failed results here instead of to `--output`.
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Continue an interrupted run: keep the result lines already in `--output` (and
    /// `--errors`), and submit only the input lines without one, in the same batch.
    #[arg(long)]
    resume: bool,
    /// Default JSON Schema file for lines without `json_schema`.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Default schema name (defaults to the schema file's stem).
    #[arg(long)]
    schema_name: Option<String>,
    /// Default instructions for lines without `instructions`.
    #[arg(long)]
    instructions: Option<String>,
    /// Default model alias for lines without `model`.
    #[arg(long)]
    model: Option<String>,
    /// Default credential profile for lines without `profile` (the plugin's policy must
    /// allow it).
    #[arg(long)]
    profile: Option<String>,
    /// Default `max_tokens`.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Lane to publish on.
    #[arg(long, default_value = "batch")]
    lane: Lane,
    /// Jobs outstanding at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Batch id (default: a new UUID, or the one of the results being resumed). Results go to
    /// the durable queue `<ns>.replies.<user>.<id>`.
    #[arg(long)]
    batch_id: Option<String>,
    /// Give up after this many seconds without any progress.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// W3C `traceparent` of the trace the batch belongs to (default: a new trace per job).
    #[arg(long, env = "TRACEPARENT")]
    traceparent: Option<String>,
}

/// One input line. Every field but the content is optional and falls back to the flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    id: Option<String>,
    custom_id: Option<String>,
    text: Option<String>,
    input: Option<Vec<InputPart>>,
    instructions: Option<String>,
    json_schema: Option<Value>,
    schema_name: Option<String>,
    model: Option<String>,
    profile: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    stop: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    deadline_ms: Option<u64>,
    purpose: Option<String>,
    metadata: Option<Value>,
}

/// Input that cannot be used, with where.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
struct InputError {
    path: String,
    line: usize,
    message: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (name, outcome) = match &cli.command {
        Command::Submit(args) => ("submit", submit(&cli, args).await),
        Command::Status { batch_id } => ("status", status(&cli, batch_id).await),
        Command::Cancel { batch_id } => ("cancel", cancel(&cli, batch_id).await),
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
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let options = ClientOptions {
        namespace: cli.namespace.clone(),
        connection_name: "quarry-cli".into(),
        worker_user: cli.worker_user.clone(),
    };
    Ok(Client::connect_with(&cli.amqp_url, options).await?)
}

async fn status(cli: &Cli, batch_id: &str) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let counts = client.batch_status(batch_id, CONTROL_TIMEOUT).await?;
    let _ = client.close().await;
    if counts.is_empty() {
        println!("batch {batch_id}: no results stored (unknown batch, or none finished yet)");
        return Ok(());
    }
    let tokens = counts.get("tokens").copied().unwrap_or(0);
    let ok = counts.get("ok").copied().unwrap_or(0);
    let errors: Vec<(&String, &u64)> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "ok" && k.as_str() != "tokens")
        .collect();
    let failed: u64 = errors.iter().map(|(_, n)| **n).sum();
    println!("batch {batch_id}: {} results stored", ok + failed);
    println!("  ok:      {ok}");
    let by_code: Vec<String> = errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
    if by_code.is_empty() {
        println!("  errors:  0");
    } else {
        println!("  errors:  {failed} ({})", by_code.join(", "));
    }
    println!("  tokens:  {tokens}");
    Ok(())
}

async fn cancel(cli: &Cli, batch_id: &str) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    client.cancel_batch(batch_id, CONTROL_TIMEOUT).await?;
    let _ = client.close().await;
    println!(
        "batch {batch_id} cancelled: jobs not yet started end CANCELLED; jobs in flight finish"
    );
    Ok(())
}

struct Defaults {
    json_schema: Option<JsonSchema>,
    schema_name: Option<String>,
    instructions: Option<String>,
    model: Option<String>,
    profile: Option<String>,
    max_tokens: Option<u32>,
}

fn load_defaults(args: &SubmitArgs) -> anyhow::Result<Defaults> {
    let json_schema = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --schema {}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("--schema {} is not JSON", path.display()))?;
            anyhow::ensure!(
                value.is_object(),
                "--schema {} is not a JSON object",
                path.display()
            );
            Some(JsonSchema::from(value))
        }
        None => None,
    };
    let schema_name = args.schema_name.clone().or_else(|| {
        let stem = args.schema.as_deref()?.file_stem()?.to_str()?;
        let name: String = stem
            .trim_end_matches(".schema")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        Some(name).filter(|n| !n.is_empty())
    });
    Ok(Defaults {
        json_schema,
        schema_name,
        instructions: args.instructions.clone(),
        model: args.model.clone(),
        profile: args.profile.clone(),
        max_tokens: args.max_tokens,
    })
}

/// Reads and checks every line before anything is published: a bad line stops the run with
/// its line number, and nothing is half-submitted.
/// A job's id when its line names none: derived from the batch and the line's custom id, so
/// that a resumed run publishes the same ids and the fleet runs each job once.
fn derived_job_id(batch_id: &str, custom_id: &str) -> String {
    let name = format!("quarry:{batch_id}/{custom_id}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

fn read_jobs(path: &Path, defaults: &Defaults, batch_id: &str) -> anyhow::Result<Vec<Job>> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open --input {shown}"))?;
    let mut jobs = Vec::new();
    let mut custom_ids: HashMap<String, usize> = HashMap::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let error = |message: String| InputError {
            path: shown.clone(),
            line: number,
            message,
        };
        let line = line.map_err(|e| error(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: InputLine = serde_json::from_str(&line).map_err(|e| error(e.to_string()))?;
        let input = match (parsed.text, parsed.input) {
            (Some(text), None) => vec![InputPart::Text { text }],
            (None, Some(parts)) => parts,
            (Some(_), Some(_)) => {
                return Err(error("give `text` or `input`, not both".into()).into());
            }
            (None, None) => return Err(error("missing `text` or `input`".into()).into()),
        };
        let custom_id = parsed.custom_id.unwrap_or_else(|| number.to_string());
        if let Some(first) = custom_ids.insert(custom_id.clone(), number) {
            return Err(error(format!(
                "custom_id `{custom_id}` is already used on line {first}"
            ))
            .into());
        }
        let id = parsed
            .id
            .unwrap_or_else(|| derived_job_id(batch_id, &custom_id));
        let mut job = Job::new(id, input);
        job.custom_id = Some(custom_id);
        job.instructions = parsed
            .instructions
            .or_else(|| defaults.instructions.clone());
        job.json_schema = parsed
            .json_schema
            .map(JsonSchema::from)
            .or_else(|| defaults.json_schema.clone());
        job.schema_name = parsed.schema_name.or_else(|| defaults.schema_name.clone());
        job.model = parsed.model.or_else(|| defaults.model.clone());
        job.profile = parsed.profile.or_else(|| defaults.profile.clone());
        job.max_tokens = parsed.max_tokens.or(defaults.max_tokens);
        job.temperature = parsed.temperature;
        job.stop = parsed.stop;
        job.timeout_ms = parsed.timeout_ms;
        job.deadline_ms = parsed.deadline_ms;
        job.purpose = parsed.purpose;
        job.metadata = parsed.metadata;
        job.check().map_err(|e| error(e.to_string()))?;
        jobs.push(job);
    }
    Ok(jobs)
}

#[derive(Default)]
struct Summary {
    ok: u64,
    errors: BTreeMap<String, u64>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

/// Result lines already written by an interrupted run.
#[derive(Default)]
struct Earlier {
    /// Custom ids that have a result line.
    custom_ids: HashSet<String>,
    /// Their job ids.
    job_ids: HashSet<String>,
    /// The batch they belong to.
    batch_id: Option<String>,
}

impl Earlier {
    /// Reads a results file. A last line cut short by the interruption is removed from the
    /// file (its job is submitted again).
    fn read(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(complete as u64)?;
        }
        for (n, line) in text[..complete].lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let result: quarry_producer::JobResult = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a result line", path.display(), n + 1))?;
            if let Some(batch) = &result.batch_id {
                match &self.batch_id {
                    Some(known) if known != batch => anyhow::bail!(
                        "{}:{}: results of two batches ({known} and {batch}); resume one run at a time",
                        path.display(),
                        n + 1
                    ),
                    _ => self.batch_id = Some(batch.clone()),
                }
            }
            if let Some(custom) = result.custom_id {
                self.custom_ids.insert(custom);
            }
            self.job_ids.insert(result.job_id);
        }
        Ok(())
    }
}

/// Opens a results file: appended to when resuming, else created (refusing to overwrite
/// results of an earlier run).
fn open_results(path: &Path, resume: bool) -> anyhow::Result<BufWriter<std::fs::File>> {
    let has_results = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    anyhow::ensure!(
        resume || !has_results,
        "{} already holds results: pass --resume to continue that run, or choose another file",
        path.display()
    );
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(BufWriter::new(file))
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> anyhow::Result<()> {
    let defaults = load_defaults(args)?;
    let mut earlier = Earlier::default();
    if args.resume {
        earlier.read(&args.output)?;
        if let Some(errors) = &args.errors {
            earlier.read(errors)?;
        }
    }
    let batch_id = match (&args.batch_id, &earlier.batch_id) {
        (Some(given), Some(found)) if given != found => anyhow::bail!(
            "--batch-id {given}, but the results being resumed belong to batch {found}"
        ),
        (Some(id), _) | (None, Some(id)) => id.clone(),
        (None, None) => new_job_id(),
    };
    let all_jobs = read_jobs(&args.input, &defaults, &batch_id)?;
    let mut output = open_results(&args.output, args.resume)?;
    let mut errors_out = match &args.errors {
        Some(path) => Some(open_results(path, args.resume)?),
        None => None,
    };
    let jobs: Vec<Job> = all_jobs
        .into_iter()
        .filter(|j| {
            !j.custom_id
                .as_ref()
                .is_some_and(|c| earlier.custom_ids.contains(c))
        })
        .collect();
    let total = jobs.len();
    if args.resume {
        println!(
            "quarry submit: resuming batch {batch_id}: {} results already written, {total} jobs to go",
            earlier.custom_ids.len()
        );
    }
    if total == 0 {
        println!("quarry submit: nothing to submit");
        return Ok(());
    }

    let options = ClientOptions {
        namespace: cli.namespace.clone(),
        connection_name: "quarry-cli".into(),
        worker_user: cli.worker_user.clone(),
    };
    let mut client = Client::connect_with(&cli.amqp_url, options.clone()).await?;
    let started = Instant::now();
    let trace = match &args.traceparent {
        Some(value) => Some(
            quarry_producer::TraceContext::from_traceparent(value)
                .with_context(|| format!("--traceparent `{value}` is not a W3C traceparent"))?,
        ),
        None => None,
    };
    let batch_options = BatchOptions {
        trace,
        lane: args.lane,
        max_in_flight: args.max_in_flight,
        idle_timeout: args.idle_timeout_secs.map(Duration::from_secs),
    };
    // Jobs published by an interrupted run may still be queued or done: publishing them again
    // costs nothing (a worker runs a job id once), and copies of results already written
    // are dropped.
    let mut results = client
        .resume_batch(
            &batch_id,
            jobs.clone(),
            earlier.job_ids.iter().cloned(),
            batch_options,
        )
        .await?;
    // Job ids whose result is written: after a lost connection the batch resumes without them.
    let mut answered: HashSet<String> = HashSet::new();
    let mut duplicates = 0;

    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} jobs  {per_sec}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary::default();
    while answered.len() < total {
        let item = match results.next().await {
            Some(Ok(item)) => item,
            Some(Err(error)) if matches!(error, quarry_producer::Error::ConnectionLost) => {
                // The broker went away: connect again and resume with the unanswered jobs.
                bar.println(format!(
                    "quarry submit: {error}; reconnecting and resuming batch {batch_id}"
                ));
                duplicates += results.duplicates();
                client =
                    Client::connect_patiently(&cli.amqp_url, options.clone(), RECONNECT_PATIENCE)
                        .await?;
                let unanswered: Vec<Job> = jobs
                    .iter()
                    .filter(|j| !answered.contains(&j.id))
                    .cloned()
                    .collect();
                let received = answered.iter().chain(&earlier.job_ids).cloned();
                results = client
                    .resume_batch(&batch_id, unanswered, received, batch_options)
                    .await?;
                continue;
            }
            Some(Err(error)) => return Err(error.into()),
            None => break,
        };
        let result = &item.result;
        match &result.error {
            None => summary.ok += 1,
            Some(error) => {
                *summary
                    .errors
                    .entry(error.code.as_str().to_owned())
                    .or_default() += 1
            }
        }
        summary.input_tokens += result.usage.input_tokens;
        summary.output_tokens += result.usage.output_tokens;
        summary.cost_usd += result.cost_usd.unwrap_or(0.0);
        let sink = match (&result.error, errors_out.as_mut()) {
            (Some(_), Some(errors)) => errors,
            _ => &mut output,
        };
        serde_json::to_writer(&mut *sink, result)?;
        sink.write_all(b"\n")?;
        sink.flush()?;
        answered.insert(result.job_id.clone());
        // A failed ack (lost connection) is harmless: the result is written, and its copy
        // is dropped when the batch resumes.
        if let Err(error) = item.ack().await {
            tracing::debug!(%error, "result written but not acknowledged");
        }
        bar.inc(1);
        bar.set_message(format!(
            "ok {}  errors {}  tokens {}",
            summary.ok,
            summary.errors.values().sum::<u64>(),
            summary.input_tokens + summary.output_tokens
        ));
    }
    bar.finish_and_clear();
    duplicates += results.duplicates();
    results.finish().await?;
    let _ = client.close().await;

    let wall = started.elapsed();
    let errors: u64 = summary.errors.values().sum();
    println!(
        "quarry submit: {total} jobs in {:.1}s ({:.1} jobs/s), batch {batch_id}",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64().max(1e-9)
    );
    println!("  ok:      {}", summary.ok);
    let by_code: Vec<String> = summary
        .errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    if by_code.is_empty() {
        println!("  errors:  0");
    } else {
        println!("  errors:  {errors} ({})", by_code.join(", "));
    }
    println!(
        "  tokens:  {} input, {} output",
        summary.input_tokens, summary.output_tokens
    );
    if summary.cost_usd > 0.0 {
        println!("  cost:    ${:.4}", summary.cost_usd);
    }
    if duplicates > 0 {
        println!("  duplicate deliveries dropped: {duplicates}");
    }
    println!("  results: {}", args.output.display());
    if let Some(errors) = &args.errors {
        println!("  errors:  {}", errors.display());
    }
    Ok(())
}

async fn dead_letters(cli: &Cli, command: &DeadLetterCommand) -> anyhow::Result<()> {
    let letters =
        quarry_producer::DeadLetters::connect(&cli.amqp_url, &cli.namespace, &cli.worker_user)
            .await?;
    let dead_queue = letters.queue();
    let outcome = match command {
        DeadLetterCommand::List { limit } => letters.list(*limit).await.map(|found| {
            for l in &found {
                println!(
                    "{}\tqueue={}\tplugin={}\tjob={}\t{}",
                    l.reason, l.queue, l.plugin, l.job_id, l.detail
                );
            }
            println!(
                "{} dead letters shown (of {dead_queue}; they stay there)",
                found.len()
            );
        }),
        DeadLetterCommand::Redrive { reason, limit } => letters
            .redrive(reason.as_deref(), *limit)
            .await
            .map(|done| {
                println!(
                    "re-drove {} jobs to their lanes; {} letters left in {dead_queue}",
                    done.redriven, done.skipped
                );
            }),
    };
    letters.close().await;
    Ok(outcome?)
}
