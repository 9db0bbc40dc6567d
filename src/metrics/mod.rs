//! Prometheus metrics of the gateway, served at `GET /metrics` in the text format.
//!
//! Every label value comes from the configuration (route, upstream and rule names) or from a
//! small fixed set (status codes, failure reasons), never from request text, so the number of
//! series stays bounded whatever clients send.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: from 1 ms (a cached or local answer) to 2 minutes (a long stream).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The gateway's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, upstream and status.
    pub requests: IntCounterVec,
    /// Time from the request's arrival to the end of its answer, by route and upstream.
    pub duration: HistogramVec,
    /// Time from the request's arrival to the first body chunk sent to the client (for a stream,
    /// the first token), by route and upstream.
    pub first_chunk: HistogramVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Routing decisions, by route and what decided (rule name, `scorer`, `model-table`, …).
    pub decisions: IntCounterVec,
    /// Upstream exchanges that failed, by upstream and reason (`unreachable`, `timeout`, `broken`).
    pub upstream_failures: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("switchyard_requests_total", "Requests answered"),
            &["route", "upstream", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from a request's arrival to the end of its answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "upstream"],
        )?;
        let first_chunk = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_time_to_first_chunk_seconds",
                "Time from a request's arrival to the first body chunk sent back",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "upstream"],
        )?;
        let in_flight = IntGauge::new("switchyard_in_flight_requests", "Requests being served")?;
        let decisions = IntCounterVec::new(
            Opts::new("switchyard_routing_decisions_total", "Routing decisions"),
            &["route", "rule"],
        )?;
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_failures_total",
                "Failed upstream exchanges",
            ),
            &["upstream", "reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(first_chunk.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(upstream_failures.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            first_chunk,
            in_flight,
            decisions,
            upstream_failures,
        })
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec does not fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["local", "local", "200"])
            .inc();
        m.duration
            .with_label_values(&["local", "local"])
            .observe(0.003);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("# TYPE switchyard_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchyard_requests_total{route="local",status="200",upstream="local"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"switchyard_request_duration_seconds_bucket{route="local",upstream="local",le="0.005"} 1"#), "{text}");
        assert!(text.contains("switchyard_in_flight_requests 0"), "{text}");
    }
}
