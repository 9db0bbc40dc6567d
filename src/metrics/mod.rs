//! Prometheus metrics of the gateway, served at `GET /metrics` in the text format, the
//! `GET /stats` summary built from them, and the JSON access log.
//!
//! Every label value comes from the configuration (route, upstream, rule and model names) or
//! from a small fixed set (status codes, cache results, failure reasons), never from request
//! text, so the number of series stays bounded whatever clients send.

mod access_log;
mod accounting;
mod stats;

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub use access_log::{line as access_log_line, AccessLog};
pub use accounting::{cost, estimate_usage};
pub use stats::stats;

/// Latency buckets in seconds: from 1 ms (a cached or local answer) to 2 minutes (a long stream).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Everything the gateway learnt about one request, recorded when it ends.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// `local`, `cloud`, `hybrid`, or `gateway` for answers the gateway gave itself.
    pub route: &'static str,
    /// The upstream's name, once one was chosen.
    pub upstream: Option<String>,
    /// What decided the route (a rule name, `scorer`, `model-table`, …).
    pub rule: Option<String>,
    /// The model sent upstream, as a metric label (see `Config::model_label`).
    pub model: Option<String>,
    /// The tenant's id.
    pub tenant: Option<String>,
    /// `hit`, `miss` or `bypass` for chat requests; `none` otherwise.
    pub cache: &'static str,
    /// Tokens of the answer, reported by the upstream or estimated.
    pub usage: Option<crate::api::Usage>,
    /// The usage was estimated by the gateway, not reported by the upstream.
    pub usage_estimated: bool,
    /// What the answer cost, in US dollars (0 for a cache hit).
    pub cost: f64,
    /// What it would have cost on the baseline model.
    pub baseline_cost: f64,
    /// From arrival to the first body byte sent back.
    pub first_byte: Option<Duration>,
}

impl Record {
    /// A record for a request nothing is known of yet.
    pub fn new() -> Record {
        Record {
            route: "gateway",
            cache: "none",
            ..Record::default()
        }
    }
}

/// The gateway's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, upstream, status and cache result.
    pub requests: IntCounterVec,
    /// Time from the request's arrival to the end of its answer, by route and upstream.
    pub duration: HistogramVec,
    /// Time from the request's arrival to the first body byte sent back (for a stream, the
    /// first token), by route and upstream.
    pub first_token: HistogramVec,
    /// Time from sending a request upstream to its response header, by upstream.
    pub upstream_latency: HistogramVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Routing decisions, by route and what decided (rule name, `scorer`, `model-table`, …).
    pub decisions: IntCounterVec,
    /// Upstream exchanges that failed, by upstream and reason (`unreachable`, `timeout`, `broken`).
    pub upstream_failures: IntCounterVec,
    /// Tokens, by upstream, model, direction (`prompt`, `completion`) and source (`reported`,
    /// `estimated`).
    pub tokens: IntCounterVec,
    /// Spent, in US dollars, by upstream and model.
    pub cost: CounterVec,
    /// What the same requests would have cost on the baseline model, by upstream and model.
    pub baseline_cost: CounterVec,
    /// Baseline cost minus cost, by upstream and model (negative when a request cost more than
    /// the baseline would have).
    pub savings: GaugeVec,
    /// Cache look-ups by result: `hit`, `miss`, or `coalesced` (answered by a request in flight).
    pub cache_lookups: IntCounterVec,
    /// Answers stored in the cache.
    pub cache_stores: prometheus::IntCounter,
    /// Entries that left the cache, by cause (`expired`, `size`, `explicit`).
    pub cache_evictions: IntCounterVec,
    /// Requests sent down their fallback chain, by the upstream left, the one taken and why.
    pub fallbacks: IntCounterVec,
    /// Retries, by upstream and reason.
    pub retries: IntCounterVec,
    /// Backends taking requests (1) or not (0), by upstream and backend.
    pub backend_up: prometheus::IntGaugeVec,
    /// Prompts estimated past an upstream's context size, by upstream and what was done.
    pub context_overflows: IntCounterVec,
    /// Entries in the cache now.
    pub cache_entries: IntGauge,
    /// Bytes in the cache now.
    pub cache_bytes: IntGauge,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
        };
        let int_counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let by_model = ["upstream", "model"];
        let m = Metrics {
            requests: int_counter(
                "switchyard_requests_total",
                "Requests answered",
                &["route", "upstream", "status", "cache"],
            )?,
            duration: histogram(
                "switchyard_request_duration_seconds",
                "Time from a request's arrival to the end of its answer",
                &["route", "upstream"],
            )?,
            first_token: histogram(
                "switchyard_time_to_first_token_seconds",
                "Time from a request's arrival to the first byte of its answer (a stream's first token)",
                &["route", "upstream"],
            )?,
            upstream_latency: histogram(
                "switchyard_upstream_latency_seconds",
                "Time from sending a request upstream to its response header",
                &["upstream"],
            )?,
            in_flight: IntGauge::new("switchyard_in_flight_requests", "Requests being served")?,
            decisions: int_counter(
                "switchyard_routing_decisions_total",
                "Routing decisions",
                &["route", "rule"],
            )?,
            upstream_failures: int_counter(
                "switchyard_upstream_failures_total",
                "Failed upstream exchanges",
                &["upstream", "reason"],
            )?,
            tokens: int_counter(
                "switchyard_tokens_total",
                "Tokens processed upstream",
                &["upstream", "model", "direction", "source"],
            )?,
            cost: CounterVec::new(
                Opts::new("switchyard_cost_usd_total", "Spent upstream, in US dollars"),
                &by_model,
            )?,
            baseline_cost: CounterVec::new(
                Opts::new(
                    "switchyard_baseline_cost_usd_total",
                    "What the same requests would have cost on the baseline model, in US dollars",
                ),
                &by_model,
            )?,
            savings: GaugeVec::new(
                Opts::new(
                    "switchyard_savings_usd",
                    "Baseline cost minus cost, in US dollars",
                ),
                &by_model,
            )?,
            cache_lookups: int_counter(
                "switchyard_cache_lookups_total",
                "Response cache look-ups",
                &["result"],
            )?,
            cache_stores: prometheus::IntCounter::new(
                "switchyard_cache_stores_total",
                "Answers stored in the response cache",
            )?,
            cache_evictions: int_counter(
                "switchyard_cache_evictions_total",
                "Entries that left the response cache",
                &["cause"],
            )?,
            fallbacks: int_counter(
                "switchyard_fallbacks_total",
                "Requests sent to the next upstream of their fallback chain",
                &["from", "to", "reason"],
            )?,
            retries: int_counter(
                "switchyard_retries_total",
                "Upstream requests sent again before the answer started",
                &["upstream", "reason"],
            )?,
            backend_up: prometheus::IntGaugeVec::new(
                Opts::new(
                    "switchyard_backend_up",
                    "Whether a backend takes requests (1) or is down or ejected (0)",
                ),
                &["upstream", "backend"],
            )?,
            context_overflows: int_counter(
                "switchyard_context_overflows_total",
                "Prompts estimated longer than an upstream's num_ctx",
                &["upstream", "action"],
            )?,
            cache_entries: IntGauge::new("switchyard_cache_entries", "Entries in the response cache")?,
            cache_bytes: IntGauge::new("switchyard_cache_bytes", "Bytes in the response cache")?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.first_token.clone()))?;
        r.register(Box::new(m.upstream_latency.clone()))?;
        r.register(Box::new(m.in_flight.clone()))?;
        r.register(Box::new(m.decisions.clone()))?;
        r.register(Box::new(m.upstream_failures.clone()))?;
        r.register(Box::new(m.tokens.clone()))?;
        r.register(Box::new(m.cost.clone()))?;
        r.register(Box::new(m.baseline_cost.clone()))?;
        r.register(Box::new(m.savings.clone()))?;
        r.register(Box::new(m.cache_lookups.clone()))?;
        r.register(Box::new(m.cache_stores.clone()))?;
        r.register(Box::new(m.cache_evictions.clone()))?;
        r.register(Box::new(m.fallbacks.clone()))?;
        r.register(Box::new(m.retries.clone()))?;
        r.register(Box::new(m.backend_up.clone()))?;
        r.register(Box::new(m.context_overflows.clone()))?;
        r.register(Box::new(m.cache_entries.clone()))?;
        r.register(Box::new(m.cache_bytes.clone()))?;
        Ok(m)
    }

    /// Counts a finished request: status, latency, tokens, cost and savings.
    pub fn record(&self, rec: &Record, status: &str, elapsed: Duration) {
        let upstream = rec.upstream.as_deref().unwrap_or("none");
        self.requests
            .with_label_values(&[rec.route, upstream, status, rec.cache])
            .inc();
        self.duration
            .with_label_values(&[rec.route, upstream])
            .observe(elapsed.as_secs_f64());
        if let Some(first) = rec.first_byte {
            self.first_token
                .with_label_values(&[rec.route, upstream])
                .observe(first.as_secs_f64());
        }
        let Some(usage) = rec.usage else { return };
        let model = rec.model.as_deref().unwrap_or("other");
        // Tokens count work done upstream: a cache hit did none.
        if rec.cache != "hit" {
            let source = if rec.usage_estimated {
                "estimated"
            } else {
                "reported"
            };
            self.tokens
                .with_label_values(&[upstream, model, "prompt", source])
                .inc_by(usage.prompt_tokens);
            self.tokens
                .with_label_values(&[upstream, model, "completion", source])
                .inc_by(usage.completion_tokens);
        }
        self.cost
            .with_label_values(&[upstream, model])
            .inc_by(rec.cost.max(0.0));
        self.baseline_cost
            .with_label_values(&[upstream, model])
            .inc_by(rec.baseline_cost.max(0.0));
        self.savings
            .with_label_values(&[upstream, model])
            .add(rec.baseline_cost - rec.cost);
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec does not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Usage;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new().unwrap();
        let rec = Record {
            route: "local",
            upstream: Some("local".into()),
            cache: "bypass",
            ..Record::new()
        };
        m.record(&rec, "200", Duration::from_millis(3));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("# TYPE switchyard_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchyard_requests_total{cache="bypass",route="local",status="200",upstream="local"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"switchyard_request_duration_seconds_bucket{route="local",upstream="local",le="0.005"} 1"#), "{text}");
        assert!(text.contains("switchyard_in_flight_requests 0"), "{text}");
    }

    #[test]
    fn tokens_cost_and_savings_move_by_what_was_recorded() {
        let m = Metrics::new().unwrap();
        let rec = Record {
            route: "cloud",
            upstream: Some("cloud".into()),
            model: Some("gpt-4o-mini".into()),
            cache: "miss",
            usage: Some(Usage {
                prompt_tokens: 1000,
                completion_tokens: 200,
            }),
            cost: 0.00027,
            baseline_cost: 0.0045,
            ..Record::new()
        };
        m.record(&rec, "200", Duration::from_millis(30));
        let hit = Record {
            cache: "hit",
            cost: 0.0,
            ..rec.clone()
        };
        m.record(&hit, "200", Duration::from_micros(50));
        let prompt = m
            .tokens
            .with_label_values(&["cloud", "gpt-4o-mini", "prompt", "reported"])
            .get();
        assert_eq!(prompt, 1000, "the hit did no upstream work");
        let cost = m.cost.with_label_values(&["cloud", "gpt-4o-mini"]).get();
        assert!((cost - 0.00027).abs() < 1e-12, "{cost}");
        let saved = m.savings.with_label_values(&["cloud", "gpt-4o-mini"]).get();
        assert!(
            (saved - (0.0045 - 0.00027 + 0.0045)).abs() < 1e-12,
            "{saved}"
        );
    }
}
