//! Active health checks: a `GET` to every backend at its upstream's interval, run as a pingora
//! background service next to the proxy.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::client::Exchange;
use super::{prepare_headers, Backend, Upstream};
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
        let connector = Arc::new(Connector::new(None));
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
pub async fn check(connector: &Connector, upstream: &Upstream, backend: &Backend) -> bool {
    let health = &upstream.config.health;
    let Ok(peer) = upstream.peer(backend).await else {
        return false;
    };
    let Ok(mut header) = RequestHeader::build("GET", health.path.as_bytes(), Some(4)) else {
        return false;
    };
    if prepare_headers(&mut header, upstream, backend, &health.path).is_err() {
        return false;
    }
    // Says what the request is, in the upstream's logs.
    let _ = header.insert_header(http::header::USER_AGENT, USER_AGENT);
    let limit = health.timeout;
    let timeouts = Timeouts {
        connect: limit.min(upstream.config.timeouts.connect),
        first_byte: limit,
        idle: limit,
        total: limit,
    };
    let Ok(mut exchange) = Exchange::start(connector, peer, timeouts, header, Bytes::new()).await
    else {
        return false;
    };
    // Any answer below 500 means the server is up: a 404 says the health path is wrong, a 401
    // that the key is, and requests would get those answers too; only 5xx means it is failing.
    let ok = exchange.header().status.as_u16() < 500;
    // Read the (small) body so that the connection can serve the next check.
    while let Ok(Some(_)) = exchange.next().await {}
    exchange.finish(connector).await;
    ok
}
