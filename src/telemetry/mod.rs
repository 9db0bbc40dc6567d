//! How the gateway reports on itself beyond its metrics: log lines (text or JSON) and
//! OpenTelemetry traces.

pub mod logs;
pub mod trace;
