//! `quarry submit`: publish the input as one batch, write one result line per job, resume
//! an interrupted run without paying twice.

use crate::prelude::*;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quarry_producer::{BatchOptions, Client, ClientOptions, Job, new_job_id};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Summary {
    pub(crate) ok: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_usd: f64,
}

/// Result lines already written by an interrupted run.
#[derive(Default)]
pub(crate) struct Earlier {
    /// Custom ids that have a result line.
    pub(crate) custom_ids: HashSet<String>,
    /// Their job ids.
    pub(crate) job_ids: HashSet<String>,
    /// The batch they belong to.
    pub(crate) batch_id: Option<String>,
}

impl Earlier {
    /// Reads a results file. A last line cut short by the interruption is removed from the
    /// file (its job is submitted again).
    pub(crate) fn read(&mut self, path: &Path) -> anyhow::Result<()> {
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
pub(crate) fn open_results(path: &Path, resume: bool) -> anyhow::Result<BufWriter<std::fs::File>> {
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

pub(crate) async fn submit(cli: &Cli, args: &SubmitArgs) -> anyhow::Result<()> {
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
