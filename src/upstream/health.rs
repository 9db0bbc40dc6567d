//! Active health checks: a `GET` to every backend at its upstream's interval, run as a pingora
//! background service next to the proxy.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::call::Exchange;
use super::client::Pooled;
use super::{request_head, Backend, Upstream};
use crate::config::Timeouts;

/// The `User-Agent` of health checks.
pub const USER_AGENT: &str = concat!("switchyard-health-check/", env!("CARGO_PKG_VERSION"));

/// Checks the backends of every enabled upstream whose `health.active` is on.
pub struct HealthChecks {
    upstreams: Vec<Arc<Upstream>>,
}

impl HealthChecks {
    /// Checks for these upstreams.
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> HealthChecks {
        HealthChecks { upstreams }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = Arc::new(Pooled::new());
        let mut tasks = Vec::new();
        for upstream in &self.upstreams {
            if !upstream.config.enabled || !upstream.config.health.active {
                continue;
            }
            for index in 0..upstream.pool.backends.len() {
                let upstream = Arc::clone(upstream);
                let connector = Arc::clone(&connector);
                tasks.push(tokio::spawn(async move {
                    let interval = upstream.config.health.interval;
                    loop {
                        let backend = &upstream.pool.backends[index];
                        let ok = check(&connector, &upstream, backend).await;
                        if backend.record_check(ok, &upstream.config.health) {
                            if ok {
                                log::info!("backend {} is healthy again", backend.label);
                            } else {
                                log::warn!("backend {} failed its health checks", backend.label);
                            }
                        }
                        tokio::time::sleep(interval).await;
                    }
                }));
            }
        }
        let _ = shutdown.changed().await;
        for task in tasks {
            task.abort();
        }
    }
}

/// One check: the health path answers, below 500, within the timeout.
pub async fn check(transport: &Pooled, upstream: &Upstream, backend: &Backend) -> bool {
    let health = &upstream.config.health;
    let no_headers = http::HeaderMap::new();
    let get = http::Method::GET;
    let Ok(mut head) = request_head(&get, &no_headers, upstream, backend, &health.path) else {
        return false;
    };
    // Says what the request is, in the upstream's logs.
    head.headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    let limit = health.timeout;
    let timeouts = Timeouts {
        connect: limit.min(upstream.config.timeouts.connect),
        first_byte: limit,
        idle: limit,
        total: limit,
    };
    let sent = transport.exchange(upstream, backend, head, Bytes::new(), timeouts);
    let Ok(mut exchange) = sent.await else {
        return false;
    };
    // Any answer below 500 means the server is up: a 404 says the health path is wrong, a 401
    // that the key is, and requests would get those answers too; only 5xx means it is failing.
    let ok = exchange.head().status.as_u16() < 500;
    // Read the (small) body so that the connection can serve the next check.
    while let Ok(Some(_)) = exchange.next().await {}
    exchange.finish().await;
    ok
}
