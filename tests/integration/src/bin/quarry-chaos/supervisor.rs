//! Worker processes kept running, their exits counted.

use quarry_integration::binary;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Worker processes kept running by a supervisor task per slot.
#[derive(Clone)]
pub(crate) struct Supervisor {
    pub(crate) slots: Arc<Vec<Slot>>,
    pub(crate) stopping: Arc<AtomicBool>,
    pub(crate) exits: Arc<Mutex<Exits>>,
    pub(crate) tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

pub(crate) struct Slot {
    pub(crate) pid: AtomicU32,
    /// Set before this program kills or terminates the worker: that exit is expected.
    pub(crate) expected: AtomicBool,
    /// Set with `expected` for SIGTERM: the exit must be 0.
    pub(crate) terminated: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Exits {
    pub(crate) crashes: usize,
    pub(crate) unclean_terminations: usize,
}

impl Supervisor {
    pub(crate) async fn start(workers: usize, config: PathBuf, logs: PathBuf) -> Self {
        let supervisor = Self {
            slots: Arc::new(
                (0..workers)
                    .map(|_| Slot {
                        pid: AtomicU32::new(0),
                        expected: AtomicBool::new(false),
                        terminated: AtomicBool::new(false),
                    })
                    .collect(),
            ),
            stopping: Arc::new(AtomicBool::new(false)),
            exits: Arc::default(),
            tasks: Arc::default(),
        };
        for i in 0..workers {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let this = supervisor.clone();
            let (config, log) = (config.clone(), logs.join(format!("worker-{i}.log")));
            let task =
                tokio::spawn(async move { this.keep_running(i, config, log, started_tx).await });
            supervisor.tasks.lock().unwrap().push(task);
            let _ = started_rx.await;
        }
        supervisor
    }

    pub(crate) async fn keep_running(
        &self,
        i: usize,
        config: PathBuf,
        log: PathBuf,
        started: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut started = Some(started);
        while !self.stopping.load(Ordering::SeqCst) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut child: Child = Command::new(binary("quarry-worker"))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .expect("spawn quarry-worker");
            let slot = &self.slots[i];
            slot.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
            let status = child.wait().await.expect("wait for the worker");
            let expected = slot.expected.swap(false, Ordering::SeqCst);
            let terminated = slot.terminated.swap(false, Ordering::SeqCst);
            let mut exits = self.exits.lock().unwrap();
            if terminated && !status.success() {
                exits.unclean_terminations += 1;
                eprintln!(
                    "   worker {i} exited {status} after SIGTERM (see {})",
                    log.display()
                );
            } else if !expected && !self.stopping.load(Ordering::SeqCst) {
                exits.crashes += 1;
                eprintln!("   worker {i} crashed: {status} (see {})", log.display());
            }
        }
    }

    pub(crate) async fn signal(&self, i: usize, signal: &str, terminated: bool) {
        let slot = &self.slots[i];
        slot.expected.store(true, Ordering::SeqCst);
        slot.terminated.store(terminated, Ordering::SeqCst);
        let pid = slot.pid.load(Ordering::SeqCst);
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await;
    }

    pub(crate) async fn kill_random(&self, n: usize) {
        // A fixed walk over the slots: reproducible, and every worker is hit.
        let i = (n * 7 + 3) % self.slots.len();
        self.signal(i, "-KILL", false).await;
    }

    pub(crate) async fn terminate_all(&self) {
        for i in 0..self.slots.len() {
            self.signal(i, "-TERM", true).await;
        }
    }

    pub(crate) async fn stop(&self) -> Exits {
        self.stopping.store(true, Ordering::SeqCst);
        self.terminate_all().await;
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
        *self.exits.lock().unwrap()
    }
}
