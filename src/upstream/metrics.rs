//! What the upstream exchange counts: latency to the answer's head, failures, retries, and which
//! backends take requests. Registered by this module, recorded through its methods.

use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{BackendState, Upstream};
use crate::vocab::Reason;

/// Latency buckets in seconds, from 1 ms to 2 minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The upstream exchange's metrics.
#[derive(Clone)]
pub struct UpstreamMetrics {
    latency: HistogramVec,
    failures: IntCounterVec,
    retries: IntCounterVec,
    backend_up: IntGaugeVec,
}

impl UpstreamMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<UpstreamMetrics, prometheus::Error> {
        let m = UpstreamMetrics {
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "switchyard_upstream_latency_seconds",
                    "Time from sending a request upstream to its response header",
                )
                .buckets(BUCKETS.to_vec()),
                &["upstream"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "switchyard_upstream_failures_total",
                    "Failed upstream exchanges",
                ),
                &["upstream", "reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "switchyard_retries_total",
                    "Upstream requests sent again before the answer started",
                ),
                &["upstream", "reason"],
            )?,
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "switchyard_backend_up",
                    "Whether a backend takes requests (1) or is down or ejected (0)",
                ),
                &["upstream", "backend"],
            )?,
        };
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.backend_up.clone()))?;
        Ok(m)
    }

    /// An answer's head arrived from `upstream` after `elapsed`.
    pub fn answered(&self, upstream: &str, elapsed: Duration) {
        self.latency
            .with_label_values(&[upstream])
            .observe(elapsed.as_secs_f64());
    }

    /// An exchange with `upstream` failed.
    pub fn failure(&self, upstream: &str, reason: Reason) {
        self.failures
            .with_label_values(&[upstream, reason.as_str()])
            .inc();
    }

    /// A request to `upstream` is sent again.
    pub fn retry(&self, upstream: &str, reason: Reason) {
        self.retries
            .with_label_values(&[upstream, reason.as_str()])
            .inc();
    }

    /// Brings `switchyard_backend_up` up to date with the backends' states.
    pub fn refresh(&self, upstreams: &[std::sync::Arc<Upstream>]) {
        let now = Instant::now();
        for u in upstreams.iter().filter(|u| u.config.enabled) {
            for b in &u.pool.backends {
                let up = matches!(b.state(now), BackendState::Up | BackendState::HalfOpen);
                self.backend_up
                    .with_label_values(&[u.name(), &b.label])
                    .set(i64::from(up));
            }
        }
    }
}
