//! Reloading the configuration without a restart: on SIGHUP, and when the file changes if
//! `--watch` is given. A new file is validated first; an invalid one is refused with every error
//! logged and counted, and the old configuration keeps serving. A valid one is swapped in at
//! once: requests in flight finish on the configuration they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::upstream::client::Pooled;

/// How often a watched file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Swaps the gateway's pipeline for one of a new configuration.
pub struct Reloader {
    pipeline: Arc<ArcSwap<Pipeline<Pooled>>>,
}

impl Reloader {
    pub(super) fn new(pipeline: Arc<ArcSwap<Pipeline<Pooled>>>) -> Reloader {
        Reloader { pipeline }
    }

    /// Reads the configuration again (`path`, or the embedded default) and swaps it in; on any
    /// error the old one stays, and the errors are returned (and logged).
    pub fn reload(&self, path: Option<&Path>) -> Result<(), Vec<String>> {
        let current = self.pipeline.load_full();
        let refused = |errors: Vec<String>| {
            for e in &errors {
                tracing::error!("configuration reload refused: {e}");
            }
            current.metrics.reloaded(false);
            Err(errors)
        };
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(errors) => return refused(errors.iter().map(ToString::to_string).collect()),
        };
        let old = &current.config;
        if config.listen != old.listen || config.threads != old.threads {
            tracing::warn!("server.listen and server.threads take effect at the next start");
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        match current.reloaded(config) {
            Ok(next) => {
                self.pipeline.store(Arc::new(next));
                current.metrics.reloaded(true);
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => refused(vec![e]),
        }
    }

    /// Starts the thread that reloads on SIGHUP and, with `watch`, when the file at `path`
    /// changes. Installs the SIGHUP handler before returning, so the signal never ends the
    /// process.
    pub fn spawn(self, path: Option<PathBuf>, watch: bool) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("reload thread: {e}"))?;
        let mut hangup = {
            let _entered = runtime.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("cannot handle SIGHUP: {e}"))?
        };
        let watched = path.clone().filter(|_| watch);
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut seen = watched.as_deref().and_then(modified);
                    let mut tick = tokio::time::interval(WATCH_EVERY);
                    loop {
                        tokio::select! {
                            _ = hangup.recv() => {
                                tracing::info!("SIGHUP: reloading the configuration");
                                let _ = self.reload(path.as_deref());
                            }
                            _ = tick.tick(), if watched.is_some() => {
                                let now = watched.as_deref().and_then(modified);
                                if now.is_some() && now != seen {
                                    seen = now;
                                    tracing::info!("the configuration file changed: reloading it");
                                    let _ = self.reload(path.as_deref());
                                }
                            }
                        }
                    }
                })
            })
            .map_err(|e| format!("reload thread: {e}"))?;
        Ok(())
    }
}

/// A file's modification time, when it can be read.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
