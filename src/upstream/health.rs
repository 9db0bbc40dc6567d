//! Active health checks: a `GET` to every backend at its upstream's interval, run as a pingora
//! background service next to the proxy.

use std::collections::HashMap;
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

/// The upstreams to check now (those of the configuration in force).
pub type Source = Box<dyn Fn() -> Vec<Arc<Upstream>> + Send + Sync>;

/// How often the set of upstreams is looked at again (after a reload, say).
const RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks the backends of every enabled upstream whose `health.active` is on; upstreams that a
/// reload adds are checked from the next rescan, and those it removes no more.
pub struct HealthChecks {
    source: Source,
}

impl HealthChecks {
    /// Checks for the upstreams `source` gives.
    pub fn new(source: Source) -> HealthChecks {
        HealthChecks { source }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let transport = Arc::new(Pooled::new());
        // One task per backend, keyed by its upstream (by address) and index.
        let mut tasks: HashMap<(usize, usize), tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let upstreams = (self.source)();
            let mut wanted = Vec::new();
            for upstream in upstreams
                .iter()
                .filter(|u| u.config.enabled && u.config.health.active)
            {
                for index in 0..upstream.pool.backends.len() {
                    wanted.push((Arc::as_ptr(upstream) as usize, index));
                    let slot = (Arc::as_ptr(upstream) as usize, index);
                    if tasks.contains_key(&slot) {
                        continue;
                    }
                    let upstream = Arc::clone(upstream);
                    let transport = Arc::clone(&transport);
                    tasks.insert(slot, tokio::spawn(watch(transport, upstream, index)));
                }
            }
            tasks.retain(|slot, task| {
                let keep = wanted.contains(slot);
                if !keep {
                    task.abort();
                }
                keep
            });
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
        for task in tasks.into_values() {
            task.abort();
        }
    }
}

/// Checks one backend at its upstream's interval, for as long as the task lives.
async fn watch(transport: Arc<Pooled>, upstream: Arc<Upstream>, index: usize) {
    let interval = upstream.config.health.interval;
    loop {
        let backend = &upstream.pool.backends[index];
        let ok = check(&transport, &upstream, backend).await;
        if ok && upstream.config.kind == crate::config::UpstreamKind::Ollama {
            if let Some(model) = upstream.config.model.as_deref() {
                let missing = !has_model(&transport, &upstream, backend, model).await;
                let problem = missing
                    .then(|| format!("model `{model}` is not pulled: run `ollama pull {model}`"));
                if backend.set_problem(problem.clone()) {
                    match problem {
                        Some(p) => tracing::warn!("backend {}: {p}", backend.label),
                        None => {
                            tracing::info!("backend {}: model `{model}` is there", backend.label)
                        }
                    }
                }
            }
        }
        if backend.record_check(ok, &upstream.config.health) {
            if ok {
                tracing::info!("backend {} is healthy again", backend.label);
            } else {
                tracing::warn!("backend {} failed its health checks", backend.label);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Whether an Ollama backend lists `model` in `/api/tags` (a name without a tag means
/// `:latest`, as Ollama reads it). An answer that cannot be read says nothing: true.
async fn has_model(
    transport: &Pooled,
    upstream: &Upstream,
    backend: &Backend,
    model: &str,
) -> bool {
    let get = http::Method::GET;
    let Ok(head) = request_head(
        &get,
        &http::HeaderMap::new(),
        upstream,
        backend,
        "/api/tags",
    ) else {
        return true;
    };
    let timeouts = check_timeouts(upstream);
    let Ok(mut exchange) = transport
        .exchange(upstream, backend, head, Bytes::new(), timeouts)
        .await
    else {
        return true;
    };
    let status = exchange.head().status.as_u16();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = exchange.next().await {
        if body.len() < TAGS_LIMIT {
            body.extend_from_slice(&chunk);
        }
    }
    exchange.finish().await;
    if status != 200 {
        return true;
    }
    listed(&body, model).unwrap_or(true)
}

/// A check's time limits: the health timeout for all of it (the connection's own limit too,
/// when shorter).
fn check_timeouts(upstream: &Upstream) -> Timeouts {
    let limit = upstream.config.health.timeout;
    Timeouts {
        connect: limit.min(upstream.config.timeouts.connect),
        first_byte: limit,
        idle: limit,
        total: limit,
    }
}

/// The most of an `/api/tags` answer read.
const TAGS_LIMIT: usize = 1 << 20;

/// Whether `model` is among the models of an `/api/tags` body; `None` when it is not one.
fn listed(body: &[u8], model: &str) -> Option<bool> {
    let full = |name: &str| {
        if name.contains(':') {
            name.to_owned()
        } else {
            format!("{name}:latest")
        }
    };
    let want = full(model);
    let tags: serde_json::Value = serde_json::from_slice(body).ok()?;
    let models = tags.get("models")?.as_array()?;
    Some(models.iter().any(|m| {
        ["name", "model"]
            .iter()
            .filter_map(|k| m.get(*k).and_then(|v| v.as_str()))
            .any(|name| full(name) == want)
    }))
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
    let timeouts = check_timeouts(upstream);
    let sent = transport.exchange(upstream, backend, head, Bytes::new(), timeouts);
    let Ok(mut exchange) = sent.await else {
        return false;
    };
    // A 404 says the health path is wrong (an upstream URL with one /v1 too many, say): the
    // requests would get it too, so the backend is down until that is fixed. A 401 or 403 says
    // the key is wrong, not the server: up, but said loudly. 5xx means it is failing.
    let status = exchange.head().status.as_u16();
    let ok = status < 500 && status != 404;
    match status {
        404 => tracing::warn!(
            "backend {}: the health path {}{} answered 404; check the upstream's url (and health.path)",
            backend.label,
            backend.url.path_prefix,
            health.path
        ),
        401 | 403 => tracing::error!(
            "backend {}: the health check was refused with {status}: check upstreams.{}.api_key",
            backend.label,
            upstream.name()
        ),
        _ => {}
    }
    // Read the (small) body so that the connection can serve the next check.
    while let Ok(Some(_)) = exchange.next().await {}
    exchange.finish().await;
    ok
}

#[cfg(test)]
mod tests {
    use super::listed;

    #[test]
    fn a_model_is_listed_with_its_tag_or_as_latest() {
        let tags = br#"{"models":[{"name":"llama3.1:8b-instruct-q4_K_M","model":"llama3.1:8b-instruct-q4_K_M"},{"name":"qwen2.5:latest"}]}"#;
        assert_eq!(listed(tags, "llama3.1:8b-instruct-q4_K_M"), Some(true));
        assert_eq!(listed(tags, "qwen2.5"), Some(true));
        assert_eq!(listed(tags, "llama3.1"), Some(false));
        assert_eq!(listed(b"not json", "x"), None);
    }
}
