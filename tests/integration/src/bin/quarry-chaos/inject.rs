//! The faults: killing and terminating workers, restarting the broker and Redis.

use crate::prelude::*;
use quarry_integration::PrivateRedis;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The fault of a scenario; returns how many fault events it caused, and the private Redis
/// (restarted by the Redis scenario). The sleeps here are the faults' own timing: the cadence
/// of the kills and how long the broker or Redis stays down.
pub(crate) async fn inject(
    scenario: Scenario,
    total: usize,
    progress: &mut tokio::sync::watch::Receiver<usize>,
    fleet: &Supervisor,
    redis: PrivateRedis,
) -> (usize, PrivateRedis) {
    // Waits until that fraction of the batch has its results (the batch may end first).
    pub(crate) async fn reached(progress: &mut tokio::sync::watch::Receiver<usize>, target: usize) {
        let _ = progress.wait_for(|n| *n >= target).await;
    }
    let at = |fraction: f64| (total as f64 * fraction) as usize;
    let events = match scenario {
        Scenario::Kill => {
            let mut kills = 0;
            reached(progress, at(0.05)).await;
            while *progress.borrow() < total * 9 / 10 {
                fleet.kill_random(kills).await;
                kills += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            kills
        }
        Scenario::BrokerRestart => {
            reached(progress, at(0.2)).await;
            run_command("rabbitmqctl", &["stop_app"]).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            run_command("rabbitmqctl", &["start_app"]).await;
            1
        }
        Scenario::RedisRestart => {
            reached(progress, at(0.2)).await;
            let restarted = redis.restart(Duration::from_secs(2)).await;
            return (1, restarted);
        }
        Scenario::Sigterm => {
            reached(progress, at(0.3)).await;
            fleet.terminate_all().await;
            1
        }
        Scenario::FaultStorm | Scenario::BadInput => 0,
    };
    (events, redis)
}

pub(crate) async fn run_command(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}
