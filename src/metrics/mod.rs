//! Prometheus metrics of the gateway, served at `GET /metrics` in the text format, the
//! `GET /stats` summary built from them, and the JSON access log.
//!
//! Every label value comes from the configuration (route, upstream, rule and model names) or
//! from a small fixed set (status codes, cache results, failure reasons), never from request
//! text, so the number of series stays bounded whatever clients send.

mod access_log;
mod accounting;
mod recent;
mod stats;

use std::time::Duration;

use prometheus::process_collector::ProcessCollector;
use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::vocab::{CacheOutcome, Route};

pub use access_log::{line as access_log_line, AccessLog};
pub use accounting::{account, cost, estimate_usage};
pub use recent::Recent;
pub use stats::stats;

/// Latency buckets in seconds: from 1 ms (a cached answer) to 10 minutes (the longest an upstream
/// exchange may take by default, `timeouts.total`).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Everything the gateway learnt about one request, recorded when it ends.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The route that served it; `None` for answers the gateway gave itself.
    pub route: Option<Route>,
    /// The upstream's name, once one was chosen.
    pub upstream: Option<String>,
    /// What decided the route (a rule name, `scorer`, `model-table`, …).
    pub rule: Option<String>,
    /// The scorer's score, for classified requests.
    pub score: Option<f64>,
    /// The features the decision read, for classified requests.
    pub features: Option<crate::classify::Features>,
    /// The model sent upstream, as a metric label (see `Config::model_label`).
    pub model: Option<String>,
    /// The tenant's id (the access log's `tenant`).
    pub tenant: Option<String>,
    /// The metrics' `tenant` label: the key's name, or `anonymous` without keys (so the
    /// series are bounded by the configuration, never by clients).
    pub tenant_label: Option<String>,
    /// How the cache took part, for chat requests.
    pub cache: Option<CacheOutcome>,
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
    /// What the hybrid stage did, for hybrid requests.
    pub hybrid: Option<crate::hybrid::Report>,
    /// Upstream attempts beyond the first of each upstream tried.
    pub retries: u32,
    /// The answer is to be shadowed: keep its text as it passes.
    pub shadow_wanted: bool,
    /// The served answer's text, kept for shadowing.
    pub shadow_answer: Option<String>,
    /// Shadowing to do once the client has its answer.
    pub shadow_job: Option<Box<crate::pipeline::ShadowJob>>,
    /// The request's trace, when it is recorded.
    pub trace: Option<Box<crate::telemetry::trace::Trace>>,
    /// What the hybrid stage's summaries cost, in US dollars (0 unless the summarizer upstream
    /// is priced).
    pub summarizer_cost: f64,
}

impl Record {
    /// A record for a request nothing is known of yet.
    pub fn new() -> Record {
        Record::default()
    }

    /// The `route` label.
    pub fn route_label(&self) -> &'static str {
        crate::vocab::route_label(self.route)
    }

    /// The `tenant` label: `anonymous` until a key is known.
    pub fn tenant_label(&self) -> &str {
        self.tenant_label.as_deref().unwrap_or("anonymous")
    }

    /// The `cache` label: `none` for requests that are not chat requests.
    pub fn cache_label(&self) -> &'static str {
        self.cache.map_or("none", CacheOutcome::as_str)
    }
}

/// The request metrics and the registry that every module registers its own metrics in.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    first_token: HistogramVec,
    in_flight: IntGauge,
    tokens: IntCounterVec,
    cost: CounterVec,
    baseline_cost: CounterVec,
    reloads: IntCounterVec,
    /// The last requests, for the dashboard page.
    recent: recent::Ring,
}

impl Metrics {
    /// Registers the request metrics in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
        };
        let by_model = ["upstream", "model", "tenant"];
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("switchyard_requests_total", "Requests answered"),
                &["route", "upstream", "status", "cache", "tenant"],
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
            in_flight: IntGauge::new("switchyard_in_flight_requests", "Requests being served")?,
            tokens: IntCounterVec::new(
                Opts::new("switchyard_tokens_total", "Tokens processed upstream"),
                &["upstream", "model", "direction", "source", "tenant"],
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
            reloads: IntCounterVec::new(
                Opts::new(
                    "switchyard_config_reloads_total",
                    "Configuration reloads, by result (ok, or error: the old one kept serving)",
                ),
                &["result"],
            )?,
            registry,
            recent: recent::Ring::default(),
        };
        let r = &m.registry;
        r.register(Box::new(m.reloads.clone()))?;
        r.register(Box::new(m.requests.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        r.register(Box::new(m.first_token.clone()))?;
        r.register(Box::new(m.in_flight.clone()))?;
        r.register(Box::new(m.tokens.clone()))?;
        r.register(Box::new(m.cost.clone()))?;
        r.register(Box::new(m.baseline_cost.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new(
                "switchyard_build_info",
                "The running build: always 1, its version in a label",
            ),
            &["version"],
        )?;
        build.with_label_values(&[crate::VERSION]).set(1);
        r.register(Box::new(build))?;
        // CPU, memory, open files and start time of the process, as every exporter names them.
        r.register(Box::new(ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// The registry the other modules register their metrics in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A reload of the configuration took effect (`ok`) or was refused.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Sets the number of requests being served.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a finished request: status, latency, tokens, cost and savings.
    pub fn record(&self, rec: &Record, status: &str, elapsed: Duration) {
        let upstream = rec.upstream.as_deref().unwrap_or("none");
        let route = rec.route_label();
        let tenant = rec.tenant_label();
        self.requests
            .with_label_values(&[route, upstream, status, rec.cache_label(), tenant])
            .inc();
        self.duration
            .with_label_values(&[route, upstream])
            .observe(elapsed.as_secs_f64());
        if let Some(first) = rec.first_byte {
            self.first_token
                .with_label_values(&[route, upstream])
                .observe(first.as_secs_f64());
        }
        let Some(usage) = rec.usage else { return };
        let model = rec.model.as_deref().unwrap_or("other");
        // Tokens count work done upstream: a cache hit did none.
        if rec.cache != Some(CacheOutcome::Hit) {
            let source = if rec.usage_estimated {
                "estimated"
            } else {
                "reported"
            };
            self.tokens
                .with_label_values(&[upstream, model, "prompt", source, tenant])
                .inc_by(usage.prompt_tokens);
            self.tokens
                .with_label_values(&[upstream, model, "completion", source, tenant])
                .inc_by(usage.completion_tokens);
        }
        self.cost
            .with_label_values(&[upstream, model, tenant])
            .inc_by(rec.cost.max(0.0));
        self.baseline_cost
            .with_label_values(&[upstream, model, tenant])
            .inc_by(rec.baseline_cost.max(0.0));
    }

    /// Keeps a finished request for the dashboard's list of the last ones.
    pub fn remember(&self, entry: Recent) {
        self.recent.push(entry);
    }

    /// The last requests, newest first.
    pub fn recent(&self) -> Vec<Recent> {
        self.recent.newest_first()
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
            route: Some(Route::Local),
            upstream: Some("local".into()),
            cache: Some(CacheOutcome::Bypass),
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
                r#"switchyard_requests_total{cache="bypass",route="local",status="200",tenant="anonymous",upstream="local"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"switchyard_request_duration_seconds_bucket{route="local",upstream="local",le="0.005"} 1"#), "{text}");
        assert!(text.contains("switchyard_in_flight_requests 0"), "{text}");
        assert!(
            text.contains(r#"le="600"} 1"#),
            "buckets reach the longest call: {text}"
        );
        let build = format!(r#"switchyard_build_info{{version="{}"}} 1"#, crate::VERSION);
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn tokens_cost_and_savings_move_by_what_was_recorded() {
        let m = Metrics::new().unwrap();
        let rec = Record {
            route: Some(Route::Cloud),
            upstream: Some("cloud".into()),
            model: Some("gpt-4o-mini".into()),
            cache: Some(CacheOutcome::Miss),
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
            cache: Some(CacheOutcome::Hit),
            cost: 0.0,
            ..rec.clone()
        };
        m.record(&hit, "200", Duration::from_micros(50));
        let prompt = m
            .tokens
            .with_label_values(&["cloud", "gpt-4o-mini", "prompt", "reported", "anonymous"])
            .get();
        assert_eq!(prompt, 1000, "the hit did no upstream work");
        let cost = m
            .cost
            .with_label_values(&["cloud", "gpt-4o-mini", "anonymous"])
            .get();
        assert!((cost - 0.00027).abs() < 1e-12, "{cost}");
        let baseline = m
            .baseline_cost
            .with_label_values(&["cloud", "gpt-4o-mini", "anonymous"])
            .get();
        assert!((baseline - 2.0 * 0.0045).abs() < 1e-12, "{baseline}");
        // Saved is the difference of the two counters: the hit saved the whole baseline.
        assert!(
            (baseline - cost - (0.0045 - 0.00027 + 0.0045)).abs() < 1e-12,
            "{baseline} - {cost}"
        );
    }
}
