//! Configuration reload without a restart: on `SIGHUP` (`main.rs`) or when the watched file
//! changes (`worker.config_watch_secs`), the file and environment are loaded again and the
//! sections a running worker can take — `[plugins]` and `[routing]` — replace the running
//! ones. The other sections (connections, providers and their keys, prices, limits of the
//! worker itself) are built into long-lived parts and wait for a restart; a reload names the
//! ones that changed.
//!
//! A reload that does not load, or whose plugins and aliases do not fit the running
//! providers, changes nothing: the running configuration stays and the reason is logged.
//! Jobs already running finish under the policy they started with.

use crate::config::{Config, ConfigError};
use crate::pipeline::Pipeline;
use crate::telemetry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The sections a reload applies.
pub const RELOADED_SECTIONS: [&str; 2] = ["plugins", "routing"];

/// Reloads a running worker's configuration. Cheap to clone; reloads are serialised.
#[derive(Clone)]
pub struct Reloader {
    state: Arc<Mutex<State>>,
}

struct State {
    /// What the worker runs: its original sections, with `[plugins]` and `[routing]` from the
    /// last applied reload.
    running: Config,
    pipeline: Arc<Pipeline>,
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Plugins now configured.
    pub plugins: usize,
    /// Aliases now configured.
    pub aliases: usize,
    /// Sections that changed but apply only after a restart.
    pub restart_needed: Vec<String>,
}

impl Reloader {
    /// A reloader for a worker started from `config` whose jobs run through `pipeline`.
    pub fn new(config: Config, pipeline: Arc<Pipeline>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                running: config,
                pipeline,
            })),
        }
    }

    /// Loads the file and environment again and applies `[plugins]` and `[routing]`. On an
    /// error nothing changes.
    pub fn reload(&self) -> Result<Applied, ConfigError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let origin = state.running.origin.clone();
        let loaded = Config::load_with_env(origin.path.as_deref(), origin.env.clone())?;
        let mut merged = state.running.clone();
        merged.plugins = loaded.plugins;
        merged.routing = loaded.routing;
        merged.check().map_err(|error| match error {
            ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                key,
                reason: format!(
                    "{reason} (against the running providers: [providers] changes apply only \
                     after a restart)"
                ),
            },
            other => other,
        })?;
        let restart_needed = loaded
            .origin
            .sections
            .keys()
            .chain(origin.sections.keys())
            .filter(|name| !RELOADED_SECTIONS.contains(&name.as_str()))
            .filter(|name| loaded.origin.sections.get(*name) != origin.sections.get(*name))
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        for section in RELOADED_SECTIONS {
            match loaded.origin.sections.get(section) {
                Some(print) => merged.origin.sections.insert(section.to_owned(), *print),
                None => merged.origin.sections.remove(section),
            };
        }
        let policies = state.pipeline.reload(&merged);
        state.running = merged;
        Ok(Applied {
            plugins: policies.plugins(),
            aliases: policies.aliases().len(),
            restart_needed,
        })
    }

    /// [`Reloader::reload`], logged and counted: what a signal or the file watch calls.
    pub fn reload_and_report(&self, trigger: &'static str) -> bool {
        match self.reload() {
            Ok(applied) => {
                telemetry::config_reloaded(true);
                tracing::info!(
                    trigger,
                    plugins = applied.plugins,
                    aliases = applied.aliases,
                    "configuration reloaded"
                );
                if !applied.restart_needed.is_empty() {
                    tracing::warn!(
                        trigger,
                        sections = applied.restart_needed.join(","),
                        "configuration sections changed that apply only after a restart"
                    );
                }
                true
            }
            Err(error) => {
                telemetry::config_reloaded(false);
                tracing::error!(
                    trigger,
                    error = %error,
                    "configuration reload rejected; the running configuration stays"
                );
                false
            }
        }
    }

    /// The configuration file, when the worker was started from one.
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .running
            .origin
            .path
            .clone()
    }

    /// Reloads whenever the file's bytes change, checking every `every`. A file that cannot
    /// be read, or one rejected, is reported once per distinct content, not every check.
    pub async fn watch(self, every: Duration) {
        let Some(path) = self.path() else {
            return;
        };
        // A hash of the bytes, not the bytes: the file may hold keys.
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map(|bytes| {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::hash::DefaultHasher::new();
                    bytes.hash(&mut hasher);
                    hasher.finish()
                })
                .map_err(|e| e.kind())
        };
        let mut seen = read(&path);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = read(&path);
            if now == seen {
                continue;
            }
            match &now {
                Ok(_) => {
                    self.reload_and_report("file");
                }
                Err(kind) => tracing::error!(
                    path = %path.display(),
                    error = %kind,
                    "configuration file unreadable; the running configuration stays"
                ),
            }
            seen = now;
        }
    }
}

#[cfg(test)]
mod tests;
