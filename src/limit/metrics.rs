//! What the limits count: refusals by key and limit. Registered by this module, recorded through
//! its methods; the `key` label takes only configured key names.

use prometheus::{IntCounterVec, Opts, Registry};

/// The limits' metrics.
#[derive(Clone)]
pub struct LimitMetrics {
    refusals: IntCounterVec,
}

impl LimitMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<LimitMetrics, prometheus::Error> {
        let m = LimitMetrics {
            refusals: IntCounterVec::new(
                Opts::new(
                    "switchyard_limit_refusals_total",
                    "Requests refused with 429, by tenant (the key's name) and limit (requests, tokens, budget_day, budget_month)",
                ),
                &["tenant", "limit"],
            )?,
        };
        registry.register(Box::new(m.refusals.clone()))?;
        Ok(m)
    }

    /// A request of `key` was refused by `limit`.
    pub(super) fn refused(&self, key: &str, limit: &str) {
        self.refusals.with_label_values(&[key, limit]).inc();
    }
}
