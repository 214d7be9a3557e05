//! The input file of `quarry submit`: one job per JSON line, with defaults, checked line by
//! line.

use anyhow::Context;
use clap::Args;
use quarry_producer::{InputPart, Job, JsonSchema, Lane};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Input: one JSON object a line, with `text` (or `input` parts) and optional job fields.
    #[arg(long, short)]
    pub(crate) input: PathBuf,
    /// Output: one result.v1 JSON object a line, in completion order.
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// Write failed results here instead of to `--output`.
    #[arg(long)]
    pub(crate) errors: Option<PathBuf>,
    /// Continue an interrupted run: keep the result lines already in `--output` (and
    /// `--errors`), and submit only the input lines without one, in the same batch.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Default JSON Schema file for lines without `json_schema`.
    #[arg(long)]
    pub(crate) schema: Option<PathBuf>,
    /// Default schema name (defaults to the schema file's stem).
    #[arg(long)]
    pub(crate) schema_name: Option<String>,
    /// Default instructions for lines without `instructions`.
    #[arg(long)]
    pub(crate) instructions: Option<String>,
    /// Default model alias for lines without `model`.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Default credential profile for lines without `profile` (the plugin's policy must
    /// allow it).
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Default `max_tokens`.
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Lane to publish on.
    #[arg(long, default_value = "batch")]
    pub(crate) lane: Lane,
    /// Jobs outstanding at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_in_flight: usize,
    /// Batch id (default: a new UUID, or the one of the results being resumed). Results go to
    /// the durable queue `<ns>.replies.<user>.<id>`.
    #[arg(long)]
    pub(crate) batch_id: Option<String>,
    /// Give up after this many seconds without any progress.
    #[arg(long)]
    pub(crate) idle_timeout_secs: Option<u64>,
    /// W3C `traceparent` of the trace the batch belongs to (default: a new trace per job).
    #[arg(long, env = "TRACEPARENT")]
    pub(crate) traceparent: Option<String>,
}

/// One input line. Every field but the content is optional and falls back to the flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputLine {
    pub(crate) id: Option<String>,
    pub(crate) custom_id: Option<String>,
    pub(crate) text: Option<String>,
    pub(crate) input: Option<Vec<InputPart>>,
    pub(crate) instructions: Option<String>,
    pub(crate) json_schema: Option<Value>,
    pub(crate) schema_name: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f64>,
    pub(crate) stop: Option<Vec<String>>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) deadline_ms: Option<u64>,
    pub(crate) purpose: Option<String>,
    pub(crate) metadata: Option<quarry_schemas::Metadata>,
}

/// Input that cannot be used, with where.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub(crate) struct InputError {
    pub(crate) path: String,
    pub(crate) line: usize,
    pub(crate) message: String,
}

pub(crate) struct Defaults {
    pub(crate) json_schema: Option<JsonSchema>,
    pub(crate) schema_name: Option<String>,
    pub(crate) instructions: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) max_tokens: Option<u32>,
}

pub(crate) fn load_defaults(args: &SubmitArgs) -> anyhow::Result<Defaults> {
    let json_schema = args.schema.as_deref().map(load_schema).transpose()?;
    let schema_name = args
        .schema_name
        .clone()
        .or_else(|| schema_name_of(args.schema.as_deref()?));
    Ok(Defaults {
        json_schema,
        schema_name,
        instructions: args.instructions.clone(),
        model: args.model.clone(),
        profile: args.profile.clone(),
        max_tokens: args.max_tokens,
    })
}

/// A `--schema` file: a JSON object.
pub(crate) fn load_schema(path: &Path) -> anyhow::Result<JsonSchema> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --schema {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("--schema {} is not JSON", path.display()))?;
    anyhow::ensure!(
        value.is_object(),
        "--schema {} is not a JSON object",
        path.display()
    );
    Ok(JsonSchema::from(value))
}

/// The schema name a `--schema` file gives: its stem, without `.schema`, in the names
/// providers take.
pub(crate) fn schema_name_of(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
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
}

/// Reads and checks every line before anything is published: a bad line stops the run with
/// its line number, and nothing is half-submitted.
/// A job's id when its line names none: derived from the batch and the line's custom id, so
/// that a resumed run publishes the same ids and the fleet runs each job once.
pub(crate) fn derived_job_id(batch_id: &str, custom_id: &str) -> String {
    let name = format!("quarry:{batch_id}/{custom_id}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

pub(crate) fn read_jobs(
    path: &Path,
    defaults: &Defaults,
    batch_id: &str,
) -> anyhow::Result<Vec<Job>> {
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
