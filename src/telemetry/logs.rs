//! Log lines: `tracing` events (and the `log` records of the libraries underneath, pingora's
//! among them) written to standard error as text or as one JSON object per line, filtered by
//! `RUST_LOG` (default `info`).

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer, Registry};

use crate::config::LogFormat;

/// pingora's HTTP code logs whole request and response heads at debug and trace, keys among
/// them (the client's, the upstream's, and any an upstream echoes): these stay at info at most,
/// whatever `RUST_LOG` asks.
const CAPPED: &[&str] = &[
    "pingora_core::protocols",
    "pingora_core::apps",
    "pingora_proxy",
];

/// Whether an event from `target` at `level` may be written at all.
fn allowed(target: &str, level: &Level) -> bool {
    *level <= Level::INFO || !CAPPED.iter().any(|c| target.starts_with(c))
}

/// Starts writing log lines in `format`. A second call changes nothing.
pub fn init(format: LogFormat) {
    let wanted = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The most verbose level wanted anywhere: the `log` records of the libraries (pingora logs
    // at debug on every request) below it are dropped at the call site, before any dispatch.
    let most = wanted.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let cap = filter_fn(|meta| allowed(meta.target(), meta.level())).with_max_level_hint(most);
    let filter = wanted.and(cap);
    let writer = fmt::layer().with_writer(std::io::stderr);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(writer.with_filter(filter)),
        LogFormat::Json => Box::new(
            writer
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter(filter),
        ),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_heads_never_log_below_info() {
        let protocols = "pingora_core::protocols::http::v1::server";
        assert!(!allowed(protocols, &Level::DEBUG));
        assert!(!allowed("pingora_proxy", &Level::TRACE));
        assert!(allowed(protocols, &Level::WARN));
        assert!(allowed("switchyard::pipeline", &Level::DEBUG));
    }
}
