//! The `telemetry:` section: the log format, and OpenTelemetry traces sent over OTLP.
//!
//! Traces are off unless an endpoint is given, in the YAML or in the variables every
//! OpenTelemetry SDK reads (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER_ARG`); the YAML wins where both speak.

use std::time::Duration;

use super::raw::RawTelemetry;
use super::{parse_duration, Checker};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where and how traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's traces URL (OTLP over HTTP with protobuf bodies), `…/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of new traces recorded, 0 to 1; a trace the client started follows the
    /// client's sampled flag instead.
    pub sample: f64,
    /// Put message text and answers in the spans (`gen_ai.input.messages`, …); off, no span
    /// holds what was said.
    pub capture_content: bool,
    /// How long one export may take.
    pub timeout: Duration,
}

/// The section, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Telemetry {
    /// The log format.
    pub log_format: LogFormat,
    /// Traces, when on.
    pub traces: Option<TraceConfig>,
}

/// The traces URL for an endpoint given as a base (`http://collector:4318`): OTLP's rule is that
/// the base gets `/v1/traces`, while the traces-specific variable is used as it is.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

impl Checker<'_> {
    /// `telemetry:`.
    pub(super) fn telemetry(&mut self, raw: Option<&RawTelemetry>) -> Telemetry {
        let default = RawTelemetry::default();
        let raw = raw.unwrap_or(&default);
        let log_format = self.parsed(
            "telemetry.log_format",
            raw.log_format.as_ref(),
            LogFormat::Text,
            |t| match t {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("`{other}` is not text or json")),
            },
        );
        Telemetry {
            log_format,
            traces: self.traces(raw),
        }
    }

    fn traces(&mut self, raw: &RawTelemetry) -> Option<TraceConfig> {
        let env = |name: &str| (self.env)(name).filter(|v| !v.trim().is_empty());
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| traces_url(&base)));
        let service_env = env("OTEL_SERVICE_NAME");
        let sample_env = env("OTEL_TRACES_SAMPLER_ARG");
        let yaml = raw.traces.as_ref();
        if yaml
            .and_then(|t| t.enabled.as_ref())
            .is_some_and(|e| !e.value)
        {
            return None;
        }
        let endpoint = match yaml.and_then(|t| t.endpoint.as_ref()) {
            Some(text) => traces_url(&self.text("telemetry.traces.endpoint", text)?),
            None => from_env?,
        };
        if !endpoint.starts_with("http://") {
            let at = yaml.and_then(|t| t.endpoint.as_ref());
            self.error(
                at,
                format!("telemetry.traces.endpoint: `{endpoint}` is not an http:// URL (OTLP over HTTP; put a collector on the same host for TLS)"),
            );
            return None;
        }
        let service_name = match yaml.and_then(|t| t.service_name.as_ref()) {
            Some(text) => self.text("telemetry.traces.service_name", text)?,
            None => service_env.unwrap_or_else(|| "switchyard".to_owned()),
        };
        let sample_text = yaml.and_then(|t| t.sample.as_ref());
        let sample = match (sample_text, sample_env) {
            (Some(_), _) => self.parsed("telemetry.traces.sample", sample_text, 1.0, parse_share),
            (None, Some(text)) => parse_share(&text).unwrap_or(1.0),
            (None, None) => 1.0,
        };
        let timeout = self.parsed(
            "telemetry.traces.timeout",
            yaml.and_then(|t| t.timeout.as_ref()),
            Duration::from_secs(5),
            parse_duration,
        );
        Some(TraceConfig {
            endpoint,
            service_name,
            sample,
            capture_content: yaml
                .and_then(|t| t.capture_content.as_ref())
                .is_some_and(|b| b.value),
            timeout,
        })
    }
}

/// A share from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a share from 0 to 1")),
    }
}
