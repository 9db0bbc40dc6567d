//! What the pipeline counts: routing decisions, fallbacks, and prompts too long for an upstream;
//! and where the shares and the cloud budget stand. Registered by this module, recorded through
//! its methods.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use crate::route::shares::Shares;

use crate::vocab::{Reason, Route};

/// The pipeline's metrics.
#[derive(Clone)]
pub struct PipelineMetrics {
    decisions: IntCounterVec,
    fallbacks: IntCounterVec,
    context_overflows: IntCounterVec,
    checks: IntCounterVec,
    share_target: GaugeVec,
    cloud_budget: GaugeVec,
}

/// What was done with a prompt too long for an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// It went to the next upstream of its chain.
    Fallback,
    /// It was refused with a 400.
    Reject,
}

impl PipelineMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<PipelineMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let m = PipelineMetrics {
            decisions: counter(
                "switchyard_routing_decisions_total",
                "Routing decisions",
                &["route", "rule"],
            )?,
            fallbacks: counter(
                "switchyard_fallbacks_total",
                "Requests sent to the next upstream of their fallback chain",
                &["from", "to", "reason"],
            )?,
            context_overflows: counter(
                "switchyard_context_overflows_total",
                "Prompts estimated longer than an upstream's num_ctx",
                &["upstream", "action"],
            )?,
            checks: counter(
                "switchyard_structured_output_checks_total",
                "Local answers checked against the structure their request asked for, by result",
                &["result"],
            )?,
            share_target: GaugeVec::new(
                Opts::new(
                    "switchyard_routing_share_target",
                    "The share of the scorer's decisions aimed at each route (with shares)",
                ),
                &["route"],
            )?,
            cloud_budget: GaugeVec::new(
                Opts::new(
                    "switchyard_cloud_budget_usd",
                    "Today's cloud budget and what this replica's cloud answers have spent of it",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.share_target.clone()))?;
        registry.register(Box::new(m.cloud_budget.clone()))?;
        registry.register(Box::new(m.checks.clone()))?;
        registry.register(Box::new(m.decisions.clone()))?;
        registry.register(Box::new(m.fallbacks.clone()))?;
        registry.register(Box::new(m.context_overflows.clone()))?;
        Ok(m)
    }

    /// Shows where `shares` stand at `now`: the aimed shares, and the day's budget and spend.
    /// Without shares (or a budget), the series are taken away.
    pub fn shares(&self, shares: Option<&Shares>, now: u64) {
        let Some(shares) = shares else {
            self.share_target.reset();
            self.cloud_budget.reset();
            return;
        };
        let (local, hybrid) = shares.aimed(now);
        for (route, share) in [
            (Route::Local, local),
            (Route::Hybrid, hybrid),
            (Route::Cloud, (1.0 - local - hybrid).max(0.0)),
        ] {
            self.share_target
                .with_label_values(&[route.as_str()])
                .set(share);
        }
        match &shares.config().cloud_budget {
            Some(budget) => {
                self.cloud_budget
                    .with_label_values(&["daily"])
                    .set(budget.daily_usd);
                self.cloud_budget
                    .with_label_values(&["spent"])
                    .set(shares.spent_today(now));
            }
            None => self.cloud_budget.reset(),
        }
    }

    /// A request was routed to `route` by `rule`.
    pub fn decision(&self, route: Route, rule: &str) {
        self.decisions
            .with_label_values(&[route.as_str(), rule])
            .inc();
    }

    /// A request left `from` for `to`.
    pub fn fallback(&self, from: &str, to: &str, reason: Reason) {
        self.fallbacks
            .with_label_values(&[from, to, reason.as_str()])
            .inc();
    }

    /// A local answer was checked.
    pub(super) fn checked(&self, result: super::validate::Checked) {
        self.checks.with_label_values(&[result.as_str()]).inc();
    }

    /// A prompt was too long for `upstream`.
    pub fn context_overflow(&self, upstream: &str, action: Overflow) {
        let action = match action {
            Overflow::Fallback => "fallback",
            Overflow::Reject => "reject",
        };
        self.context_overflows
            .with_label_values(&[upstream, action])
            .inc();
    }
}
