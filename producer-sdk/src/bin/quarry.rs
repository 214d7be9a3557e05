//! `quarry`: the command-line producer.
//!
//! `quarry submit --input jobs.jsonl --output results.jsonl` publishes one job per input line
//! and writes one result line per job, with a progress bar and a final summary.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quarry_producer::{BatchOptions, Client, ClientOptions, InputPart, Job, Lane, new_job_id};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a JSONL file of jobs and write their results as JSONL.
    Submit(SubmitArgs),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Input: one JSON object a line, with `text` (or `input` parts) and optional job fields.
    #[arg(long, short)]
    input: PathBuf,
    /// Output: one result.v1 JSON object a line, in completion order.
    #[arg(long, short)]
    output: PathBuf,
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
    /// Batch id (default: a new UUID). Results go to the durable queue `<ns>.replies.<id>`.
    #[arg(long)]
    batch_id: Option<String>,
    /// Give up after this many seconds without any progress.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
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
    match cli.command {
        Command::Submit(ref args) => match submit(&cli, args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("quarry submit: {error:#}");
                if error.downcast_ref::<InputError>().is_some() {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        },
    }
}

struct Defaults {
    json_schema: Option<Value>,
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
            Some(value)
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
fn read_jobs(path: &Path, defaults: &Defaults) -> anyhow::Result<Vec<Job>> {
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
        let mut job = Job::new(parsed.id.unwrap_or_else(new_job_id), input);
        job.custom_id = Some(custom_id);
        job.instructions = parsed
            .instructions
            .or_else(|| defaults.instructions.clone());
        job.json_schema = parsed.json_schema.or_else(|| defaults.json_schema.clone());
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
}

async fn submit(cli: &Cli, args: &SubmitArgs) -> anyhow::Result<()> {
    let defaults = load_defaults(args)?;
    let jobs = read_jobs(&args.input, &defaults)?;
    let total = jobs.len();
    let output = std::fs::File::create(&args.output)
        .with_context(|| format!("cannot create --output {}", args.output.display()))?;
    let mut output = BufWriter::new(output);

    let options = ClientOptions {
        namespace: cli.namespace.clone(),
        connection_name: "quarry-cli".into(),
    };
    let mut client = Client::connect_with(&cli.amqp_url, options.clone()).await?;
    let batch_id = args.batch_id.clone().unwrap_or_else(new_job_id);
    let started = Instant::now();
    let batch_options = BatchOptions {
        lane: args.lane,
        max_in_flight: args.max_in_flight,
        idle_timeout: args.idle_timeout_secs.map(Duration::from_secs),
    };
    let mut results = client
        .run_batch(&batch_id, jobs.clone(), batch_options)
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
                results = client
                    .resume_batch(&batch_id, unanswered, answered.clone(), batch_options)
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
        serde_json::to_writer(&mut output, result)?;
        output.write_all(b"\n")?;
        output.flush()?;
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
    if duplicates > 0 {
        println!("  duplicate deliveries dropped: {duplicates}");
    }
    println!("  results: {}", args.output.display());
    Ok(())
}
