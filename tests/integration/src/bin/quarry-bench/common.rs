//! What the scenarios share: jobs, load generators, and readings of a worker process (its
//! metrics, CPU time and memory from `/proc`).

use quarry_integration::{Fleet, ProcessWorker, http_get, parse_metrics};
use quarry_producer::{BatchOptions, Client, InputPart, Job, Lane, Status, new_job_id};
use quarry_schemas::result::JobResult;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Provider limits generous enough never to bind, so that the limiter's reservations and
/// settlements are in every figure, as in a production configuration.
pub const LIMITS: &str =
    "[providers.fake.limits]\nrequests_per_minute = 100000000\ntokens_per_minute = 100000000000\n";

/// The receipt job plugins send: instructions, a line of text, the receipt schema.
pub fn receipt_job(n: usize) -> Job {
    let mut job = Job::new(
        new_job_id(),
        vec![InputPart::Text {
            text: format!(
                "Cafe Central, 2 coffees 7.00, 1 cake 4.50, TOTAL 11.50 EUR, receipt {n}"
            ),
        }],
    );
    job.custom_id = Some(format!("c{n}"));
    job.instructions = Some("Extract the expense record.".into());
    job.json_schema =
        Some(quarry_schemas::JsonSchema::from_json(quarry_schemas::examples::RECEIPT).unwrap());
    job.schema_name = Some("receipt".into());
    job
}

/// Writes `report` as pretty JSON, creating the directory.
pub fn write_json(path: &Path, report: &Value) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, serde_json::to_string_pretty(report).unwrap()).unwrap();
    println!("\nfigures written to {}", path.display());
}

/// Closed loop: the SDK's `run_batch` keeps `in_flight` jobs outstanding. Every result must
/// be `ok`. Returns when each result arrived, measured from the first publish, and the batch's
/// reply queue (for the fleet's teardown).
pub async fn closed_loop(
    client: &Client,
    jobs: Vec<Job>,
    in_flight: usize,
) -> (Vec<Duration>, String) {
    let total = jobs.len();
    let options = BatchOptions {
        lane: Lane::Batch,
        max_in_flight: in_flight,
        idle_timeout: Some(Duration::from_secs(120)),
        trace: None,
    };
    let started = Instant::now();
    let mut stream = client
        .run_batch(&new_job_id(), jobs, options)
        .await
        .unwrap();
    let mut arrivals = Vec::with_capacity(total);
    for _ in 0..total {
        let item = stream.next().await.unwrap().unwrap();
        assert_eq!(
            item.result.status,
            Status::Ok,
            "every job must succeed for the figure to count: {:?}",
            item.result.error
        );
        arrivals.push(started.elapsed());
        item.ack().await.unwrap();
    }
    let queue = stream.reply_queue().to_owned();
    stream.finish().await.unwrap();
    (arrivals, queue)
}

/// Results per second over the steady part of a closed-loop run: from the first `skip`
/// seconds of results on to the last result.
pub fn sustained_rate(arrivals: &[Duration], skip: Duration) -> f64 {
    let Some(&last) = arrivals.last() else {
        return 0.0;
    };
    let start = arrivals.first().copied().unwrap_or_default() + skip;
    let counted = arrivals.iter().filter(|&&t| t > start).count();
    if last <= start {
        return arrivals.len() as f64 / last.as_secs_f64();
    }
    counted as f64 / (last - start).as_secs_f64()
}

/// Open loop: publishes `rate` jobs per second for `seconds` (each publish confirmed, on its
/// own task, whatever the results do), then waits for every result. Every result must be
/// `ok`. Returns the jobs sent and the rate the publisher really achieved.
pub async fn open_loop(
    fleet: &Fleet,
    client: &Arc<Client>,
    rate: f64,
    seconds: f64,
    make: impl Fn(usize) -> Job,
) -> (usize, f64) {
    use futures::StreamExt;

    let (reply_to, channel, mut results) = reply_queue_consumer(fleet, "bench").await;
    let total = (rate * seconds).round() as usize;
    let jobs: Vec<Job> = (0..total).map(make).collect();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let started = Instant::now();
    let mut publishes = tokio::task::JoinSet::new();
    for job in jobs {
        ticks.tick().await;
        let (client, reply_to) = (client.clone(), reply_to.clone());
        publishes.spawn(async move { client.publish(&job, Lane::Batch, &reply_to).await });
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    while let Some(published) = publishes.join_next().await {
        published.unwrap().unwrap();
    }
    let collect = async {
        for _ in 0..total {
            let delivery = results.next().await.unwrap().unwrap();
            let result: JobResult = serde_json::from_slice(&delivery.data).unwrap();
            assert!(
                result.is_ok(),
                "every job must succeed for the figure to count: {:?}",
                result.error
            );
        }
    };
    quarry_integration::within(120, "every result of the open-loop run", collect).await;
    let _ = channel
        .queue_delete(reply_to.as_str().into(), Default::default())
        .await;
    (total, achieved)
}

/// A queue declared as the bench's reply queue ([`Fleet::reply_queue`]), the channel that
/// consumes it, and its consumer, without acks (as the bench reads results).
pub async fn reply_queue_consumer(
    fleet: &Fleet,
    tag: &str,
) -> (String, lapin::Channel, lapin::Consumer) {
    let queue = fleet.reply_queue().await;
    let channel = fleet.channel().await;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    (queue, channel, consumer)
}

/// Publishes `body` to `queue` (default exchange) as the worker publishes results: persistent,
/// mandatory, JSON, with `reply_to` when given. Returns the broker's confirm to wait for.
pub async fn publish_persistent(
    channel: &lapin::Channel,
    queue: &str,
    body: &[u8],
    reply_to: Option<&str>,
) -> lapin::PublisherConfirm {
    let mut properties = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(reply_to) = reply_to {
        properties = properties.with_reply_to(reply_to.into());
    }
    let options = lapin::options::BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    channel
        .basic_publish("".into(), queue.into(), options, body, properties)
        .await
        .unwrap()
}

/// A worker process's counters at one moment.
#[derive(Debug, Clone)]
pub struct Reading {
    /// CPU time (user + system) of the process so far, in seconds.
    pub cpu: f64,
    /// Jobs finished (every outcome).
    pub jobs: f64,
    /// Redis round trips.
    pub round_trips: f64,
    /// Provider requests.
    pub provider_requests: f64,
    /// `quarry_worker_overhead_seconds`: (upper bound, cumulative count), +Inf last.
    pub overhead: Vec<(f64, f64)>,
    /// `quarry_redis_operation_duration_seconds`, every operation.
    pub redis: Vec<(f64, f64)>,
    /// `quarry_amqp_operation_duration_seconds` of results: publish until confirmed.
    pub result_confirm: Vec<(f64, f64)>,
}

/// Reads a worker's metrics and `/proc` figures.
pub async fn read(worker: &ProcessWorker) -> Reading {
    let pid = worker.child.id().unwrap();
    let scrape = parse_metrics(&http_get(worker.http, "/metrics").await.1);
    let sum = |name: &str| quarry_integration::counter_sum(&scrape, name, &[]);
    Reading {
        cpu: cpu_seconds(pid),
        jobs: sum("quarry_jobs_total"),
        round_trips: sum("quarry_redis_round_trips_total"),
        provider_requests: sum("quarry_provider_requests_total"),
        overhead: histogram(&scrape, "quarry_worker_overhead_seconds", None),
        redis: histogram(&scrape, "quarry_redis_operation_duration_seconds", None),
        result_confirm: histogram(
            &scrape,
            "quarry_amqp_operation_duration_seconds",
            Some(("operation", "publish_result")),
        ),
    }
}

/// A histogram's cumulative buckets, summed over the samples matching `label`, +Inf last.
pub fn histogram(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for sample in &scrape.samples {
        if sample.metric != name || label.is_some_and(|(k, v)| sample.labels.get(k) != Some(v)) {
            continue;
        }
        if let prometheus_parse::Value::Histogram(buckets) = &sample.value {
            for b in buckets {
                match out.iter_mut().find(|(le, _)| *le == b.less_than) {
                    Some((_, count)) => *count += b.count,
                    None => out.push((b.less_than, b.count)),
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket.
pub fn minus(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - earlier)
        })
        .collect()
}

/// What a worker did between two readings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Interval {
    /// Jobs finished.
    pub jobs: f64,
    /// CPU microseconds of the worker process per finished job.
    pub cpu_us_per_job: f64,
    /// Redis round trips per finished job.
    pub redis_round_trips_per_job: f64,
    /// Provider requests per finished job.
    pub provider_requests_per_job: f64,
    /// Overhead quantiles in microseconds (linear inside a histogram bucket, as Prometheus'
    /// `histogram_quantile`).
    pub overhead_p50_us: f64,
    /// p99.
    pub overhead_p99_us: f64,
    /// p99.9.
    pub overhead_p999_us: f64,
    /// Share of jobs whose overhead was at most 1 ms (exact: 1 ms is a bucket bound).
    pub overhead_share_within_1ms: f64,
    /// One Redis round trip, as the worker times it: p50 and p99 in microseconds.
    pub redis_round_trip_p50_us: f64,
    /// p99.
    pub redis_round_trip_p99_us: f64,
    /// Publishing a result until the broker confirms it: p50 and p99 in microseconds.
    pub result_confirm_p50_us: f64,
    /// p99.
    pub result_confirm_p99_us: f64,
}

/// The difference of two readings of the same worker.
pub fn between(before: &Reading, after: &Reading) -> Interval {
    let jobs = after.jobs - before.jobs;
    let per_job = |v: f64| if jobs > 0.0 { v / jobs } else { 0.0 };
    let buckets = minus(&after.overhead, &before.overhead);
    let redis = minus(&after.redis, &before.redis);
    let confirm = minus(&after.result_confirm, &before.result_confirm);
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    let within_1ms = buckets
        .iter()
        .find(|(le, _)| (*le - 0.001).abs() < 1e-12)
        .map_or(0.0, |(_, c)| *c);
    Interval {
        jobs,
        cpu_us_per_job: per_job((after.cpu - before.cpu) * 1e6),
        redis_round_trips_per_job: per_job(after.round_trips - before.round_trips),
        provider_requests_per_job: per_job(after.provider_requests - before.provider_requests),
        overhead_p50_us: quantile(&buckets, 0.5) * 1e6,
        overhead_p99_us: quantile(&buckets, 0.99) * 1e6,
        overhead_p999_us: quantile(&buckets, 0.999) * 1e6,
        overhead_share_within_1ms: if total > 0.0 { within_1ms / total } else { 0.0 },
        redis_round_trip_p50_us: quantile(&redis, 0.5) * 1e6,
        redis_round_trip_p99_us: quantile(&redis, 0.99) * 1e6,
        result_confirm_p50_us: quantile(&confirm, 0.5) * 1e6,
        result_confirm_p99_us: quantile(&confirm, 0.99) * 1e6,
    }
}

/// Prometheus' `histogram_quantile` over cumulative buckets (upper bound, count), +Inf last:
/// linear inside the bucket the rank falls in; the highest finite bound if it falls past it.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                0.0
            };
            return lower.0 + (le - lower.0) * fraction;
        }
        lower = (le, count);
    }
    lower.0
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    try_cpu_seconds(pid).unwrap_or_else(|| panic!("no CPU figures for process {pid}"))
}

/// [`cpu_seconds`], or `None` when the process is gone or its stat unreadable.
fn try_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// CPU seconds used so far by every process whose command name is `comm` (`beam.smp` for
/// RabbitMQ, `redis-server`), and by this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// RabbitMQ.
    pub broker: f64,
    /// Redis.
    pub redis: f64,
    /// This process: the producer, the fake provider, and in raw runs the echo responder.
    pub bench: f64,
}

impl MachineCpu {
    /// The figures now.
    pub fn now() -> Self {
        Self {
            broker: cpu_of_comm("beam.smp"),
            redis: cpu_of_comm("redis-server"),
            bench: cpu_seconds(std::process::id()),
        }
    }

    /// Microseconds per job of each, since `earlier`.
    pub fn per_job_since(&self, earlier: &Self, jobs: usize) -> Value {
        let us = |a: f64, b: f64| (a - b) * 1e6 / jobs.max(1) as f64;
        serde_json::json!({
            "broker_cpu_us_per_job": us(self.broker, earlier.broker),
            "redis_cpu_us_per_job": us(self.redis, earlier.redis),
            "bench_process_cpu_us_per_job": us(self.bench, earlier.bench),
        })
    }

    /// Microseconds per job of every process it reads together, since `earlier`.
    pub fn total_per_job_since(&self, earlier: &Self, jobs: usize) -> f64 {
        let total = |c: &Self| c.broker + c.redis + c.bench;
        (total(self) - total(earlier)) * 1e6 / jobs.max(1) as f64
    }
}

pub fn cpu_of_comm(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(try_cpu_seconds)
        .sum()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
}

/// Peak resident memory of a process (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        // 100 observations: 50 up to 1, 40 in (1, 2], 10 in (2, 4].
        let buckets = [
            (1.0, 50.0),
            (2.0, 90.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&buckets, 0.5) - 1.0).abs() < 1e-9);
        assert!((quantile(&buckets, 0.7) - 1.5).abs() < 1e-9);
        assert!((quantile(&buckets, 0.95) - 3.0).abs() < 1e-9);
        let past = [(1.0, 10.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(&past, 0.99), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn steady_rate_skips_the_ramp() {
        let arrivals: Vec<Duration> = (1..=100).map(|i| Duration::from_millis(i * 10)).collect();
        let rate = sustained_rate(&arrivals, Duration::from_millis(200));
        assert!((rate - 100.0).abs() < 2.0, "{rate}");
    }
}
