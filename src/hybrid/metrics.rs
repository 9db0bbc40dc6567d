//! What the hybrid stage counts: outcomes, tokens saved, its time, summaries made or reused, and
//! parts left alone. Registered by this module, recorded through its methods.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::parts::Left;

/// Stage time buckets in seconds: from 50 µs (extractive) to 30 s (a CPU model summarizing).
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// The hybrid stage's metrics.
#[derive(Clone)]
pub struct HybridMetrics {
    outcomes: IntCounterVec,
    saved: IntCounter,
    duration: Histogram,
    summaries: IntCounterVec,
    left: IntCounterVec,
}

impl HybridMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<HybridMetrics, prometheus::Error> {
        let m = HybridMetrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "switchyard_hybrid_requests_total",
                    "Hybrid requests by what the stage did (summarized, extracted, both, skipped:<reason>)",
                ),
                &["outcome"],
            )?,
            saved: IntCounter::new(
                "switchyard_hybrid_prompt_tokens_saved_total",
                "Prompt tokens the cloud did not read thanks to the hybrid stage (estimated)",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "switchyard_hybrid_stage_seconds",
                    "Time the hybrid stage took per request",
                )
                .buckets(BUCKETS.to_vec()),
            )?,
            summaries: IntCounterVec::new(
                Opts::new(
                    "switchyard_hybrid_summaries_total",
                    "Summaries, by where they came from (local: the summarizer model; cache: made before)",
                ),
                &["source"],
            )?,
            left: IntCounterVec::new(
                Opts::new(
                    "switchyard_hybrid_parts_left_total",
                    "Long messages of hybrid requests left as they were, by reason",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.outcomes.clone()))?;
        registry.register(Box::new(m.saved.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.summaries.clone()))?;
        registry.register(Box::new(m.left.clone()))?;
        Ok(m)
    }

    /// A request went through the stage.
    pub fn outcome(&self, outcome: &str, saved: u64, elapsed: Duration) {
        self.outcomes.with_label_values(&[outcome]).inc();
        self.saved.inc_by(saved);
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// A summary was asked of the model (`cached: false`) or found in the cache.
    pub fn summary(&self, cached: bool) {
        let source = if cached { "cache" } else { "local" };
        self.summaries.with_label_values(&[source]).inc();
    }

    /// A long message was left alone.
    pub fn left(&self, why: Left) {
        let reason = match why {
            Left::Short => "short",
            Left::Images => "images",
        };
        self.left.with_label_values(&[reason]).inc();
    }
}
