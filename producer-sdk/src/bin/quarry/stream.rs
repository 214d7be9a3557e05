//! `quarry stream`: one streamed call, its answer written to stdout as it arrives.

use crate::prelude::*;
use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use quarry_producer::{CallOptions, InputPart, Job, Status, StreamEvent, new_job_id};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// The text to extract from or answer (or `--file`).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    pub(crate) text: Option<String>,
    /// Read the text from this file (`-`: standard input).
    #[arg(long)]
    pub(crate) file: Option<PathBuf>,
    /// JSON Schema file of the answer: JSON mode.
    #[arg(long)]
    pub(crate) schema: Option<PathBuf>,
    /// Schema name (defaults to the schema file's stem).
    #[arg(long)]
    pub(crate) schema_name: Option<String>,
    /// Instructions.
    #[arg(long)]
    pub(crate) instructions: Option<String>,
    /// Model alias (or `provider/model`).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// `max_tokens`.
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Seconds to wait for the result (also the job's deadline).
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_secs: u64,
    /// Print each partial object (JSON mode) to stderr as it grows.
    #[arg(long)]
    pub(crate) partials: bool,
    /// Write the final result.v1 here.
    #[arg(long)]
    pub(crate) result: Option<PathBuf>,
}

/// Streams one job: deltas to stdout as they arrive, resets and a summary to stderr. Fails
/// (exit 1) when the job ends in an error.
pub(crate) async fn stream(cli: &Cli, args: &StreamArgs) -> anyhow::Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --file {}", path.display()))?,
        (None, None) => anyhow::bail!("give --text or --file"),
    };
    let mut job = Job::new(new_job_id(), vec![InputPart::Text { text }]);
    job.json_schema = args.schema.as_deref().map(load_schema).transpose()?;
    job.schema_name = args
        .schema_name
        .clone()
        .or_else(|| schema_name_of(args.schema.as_deref()?));
    job.instructions = args.instructions.clone();
    job.model = args.model.clone();
    job.max_tokens = args.max_tokens;
    let client = connect(cli).await?;
    let options = CallOptions {
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        ..CallOptions::default()
    };
    let mut events = client.stream(job, options).await?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let (mut deltas, mut resets) = (0usize, 0usize);
    let result = loop {
        let Some(event) = events.next().await else {
            anyhow::bail!("the stream ended without its result");
        };
        match event? {
            StreamEvent::Delta(text) => {
                deltas += 1;
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            StreamEvent::Partial(value) => {
                if args.partials {
                    writeln!(err, "partial: {value}")?;
                }
            }
            StreamEvent::Reset(reason) => {
                resets += 1;
                writeln!(out)?;
                out.flush()?;
                writeln!(
                    err,
                    "[reset: {reason:?}: the text above is void; the answer starts again]"
                )?;
            }
            StreamEvent::Final(result) => break *result,
        }
    };
    writeln!(out)?;
    drop(events);
    let _ = client.close().await;
    if let Some(path) = &args.result {
        std::fs::write(path, serde_json::to_vec(&result)?)
            .with_context(|| format!("writing --result {}", path.display()))?;
    }
    writeln!(
        err,
        "{}: {deltas} deltas, {resets} resets, {} attempts, {} tokens, {} ms",
        match result.status {
            Status::Ok => "ok".to_owned(),
            Status::Error => "error".to_owned(),
        },
        result.attempts,
        result.usage.total_tokens,
        result.latency_ms
    )?;
    if let Some(error) = &result.error {
        anyhow::bail!("the job failed: {}: {}", error.code, error.message);
    }
    Ok(())
}
