//! The pingora glue: one `ProxyHttp` implementation that dispatches each request.
//!
//! - `POST /v1/chat/completions`: read, parse, decide and answer from the cache in [`chat`], or
//!   send down the fallback plan in [`forward`]; answered from `request_filter` (pingora's own
//!   forwarding is not used for these; see `upstream::client`).
//! - `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /stats`, `POST /v1/route`: answered
//!   by the gateway itself ([`local`]).
//! - any other `/v1/` path: pingora's ordinary proxy path to the pass-through upstream, with the
//!   client's credentials replaced.
//! - anything else: 404.

mod chat;
mod forward;
mod local;
mod request_id;
mod response;
mod server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::api::ApiError;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::{AccessLog, Metrics, Record};
use crate::upstream::{prepare_headers, Upstream};
pub use response::Explain;
pub use server::run;

/// The gateway: configuration, upstreams and the shared upstream connection pool.
pub struct Gateway {
    config: Arc<Config>,
    upstreams: Vec<Arc<Upstream>>,
    connector: Connector,
    started: Instant,
    started_unix: u64,
    in_flight: Arc<AtomicUsize>,
    ids: request_id::Generator,
    metrics: Metrics,
    /// The response cache, when enabled.
    cache: Option<Cache>,
    access_log: Option<AccessLog>,
}

impl Gateway {
    /// Builds the gateway for a validated configuration.
    pub fn new(config: Config) -> std::result::Result<Gateway, String> {
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let evictions = metrics.cache_evictions.clone();
        let cache = config.cache.enabled.then(|| {
            let hook = move |cause: &'static str| evictions.with_label_values(&[cause]).inc();
            Cache::new(&config.cache, Arc::new(hook))
        });
        let access_log = match &config.access_log {
            Some(target) => Some(AccessLog::open(target).map_err(|e| format!("access log: {e}"))?),
            None => None,
        };
        Ok(Gateway {
            config: Arc::new(config),
            upstreams,
            connector: Connector::new(None),
            started: Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            ids: request_id::Generator::new(),
            metrics,
            cache,
            access_log,
        })
    }

    /// The background service that checks the upstreams' backends.
    pub fn health_checks(&self) -> crate::upstream::health::HealthChecks {
        crate::upstream::health::HealthChecks::new(self.upstreams.clone())
    }

    /// The number of requests being served now; the drain on SIGTERM waits for it to reach 0.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }
}

/// Per-request state.
pub struct Ctx {
    request_id: String,
    started: Instant,
    /// Set for pass-through requests: the upstream pingora forwards to.
    passthrough: Option<usize>,
    /// The backend of a pass-through request, once chosen.
    lease: Option<crate::upstream::Lease>,
    /// What is known of the request, for its metrics and access-log line.
    record: Record,
    _in_flight: Option<InFlight>,
}

/// Counts a request as in flight until it is dropped with its context.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gateway's answer to a request it serves itself.
enum Handled {
    /// A response was written.
    Done,
    /// Hand the request to pingora's proxy path, to this upstream.
    Passthrough(usize),
}

impl Gateway {
    async fn dispatch(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Handled> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        // The gateway's own paths answer one method each.
        let required = match path.as_str() {
            "/v1/chat/completions" | "/v1/route" => Some(http::Method::POST),
            "/v1/models" | "/health" | "/metrics" | "/stats" => Some(http::Method::GET),
            _ => None,
        };
        if let Some(required) = required.filter(|r| *r != method) {
            let error = ApiError::method_not_allowed(method.as_str(), &path, required.as_str());
            return self
                .reject(session, ctx, error, Some(required.as_str()))
                .await;
        }
        match path.as_str() {
            "/v1/chat/completions" => {
                let started = ctx.started;
                chat::handle(self, session, &ctx.request_id, started, &mut ctx.record).await?
            }
            "/metrics" => local::metrics(self, session, ctx).await?,
            "/stats" => local::stats(self, session, ctx).await?,
            "/v1/route" => local::route(self, session, ctx).await?,
            "/v1/models" => local::models(self, session, ctx).await?,
            "/health" => local::health(self, session, ctx).await?,
            // Other methods on a model (DELETE of a fine-tune) are the provider's business.
            p if p.starts_with("/v1/models/") && method == http::Method::GET => {
                local::model(self, session, ctx, &p["/v1/models/".len()..]).await?
            }
            p if p.starts_with("/v1/") => return Ok(Handled::Passthrough(self.config.passthrough)),
            _ => {
                let error = ApiError::unknown_path(method.as_str(), &path);
                return self.reject(session, ctx, error, None).await;
            }
        }
        Ok(Handled::Done)
    }

    async fn reject(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        error: ApiError,
        allow: Option<&str>,
    ) -> Result<Handled> {
        let explain = Explain::gateway(&ctx.request_id);
        let mut extra = Vec::new();
        if let Some(allow) = allow {
            extra.push(("allow", allow));
        }
        write_error(session, &error, &explain, &extra).await?;
        Ok(Handled::Done)
    }
}

/// Writes a complete JSON response.
async fn write_json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    explain: &Explain<'_>,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let mut header = response::json_header(status, body.len(), explain);
    for (name, value) in extra {
        header.insert_header(*name, *value)?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Writes an OpenAI-shaped error response.
async fn write_error(
    session: &mut Session,
    error: &ApiError,
    explain: &Explain<'_>,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    write_json(session, error.status, error.to_json(), explain, extra).await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: String::new(),
            started: Instant::now(),
            passthrough: None,
            lease: None,
            record: Record::new(),
            _in_flight: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ctx._in_flight = Some(InFlight(Arc::clone(&self.in_flight)));
        ctx.request_id = self.ids.for_request(session.req_header());
        match self.dispatch(session, ctx).await? {
            Handled::Done => Ok(true),
            Handled::Passthrough(upstream) => {
                ctx.passthrough = Some(upstream);
                ctx.record.route = self.upstreams[upstream].config.route.as_str();
                ctx.record.upstream = Some(self.upstreams[upstream].name().to_owned());
                ctx.record.cache = "bypass";
                // The upstream never sees `Expect` (it is hop-by-hop here), so answer it now.
                if expects_continue(session.req_header()) {
                    session.write_continue_response().await?;
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let index = ctx.passthrough.unwrap_or(self.config.passthrough);
        let upstream = &self.upstreams[index];
        let Some(lease) = upstream.pool.select(0, &[]) else {
            return Error::e_explain(ErrorType::ConnectError, "no healthy backend");
        };
        let peer = upstream.peer(lease.backend()).await;
        ctx.lease = Some(lease);
        match peer {
            Ok(peer) => Ok(Box::new(peer)),
            Err(e) => Error::e_explain(ErrorType::ConnectError, e.message),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let index = ctx.passthrough.unwrap_or(self.config.passthrough);
        let path = upstream_request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let upstream = &self.upstreams[index];
        let backend = match &ctx.lease {
            Some(lease) => lease.backend(),
            None => &upstream.pool.backends[0],
        };
        prepare_headers(upstream_request, upstream, backend, &path)
            .map_err(|e| Error::explain(ErrorType::InternalError, e.message))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let index = ctx.passthrough.unwrap_or(self.config.passthrough);
        let upstream = &self.upstreams[index];
        // Pass-through answers are never cached.
        let explain = Explain {
            cache: Some("bypass"),
            ..Explain::served(
                &ctx.request_id,
                upstream.config.route.as_str(),
                upstream.name(),
            )
        };
        // pingora frames the pass-through body itself: keep its transfer-encoding choice.
        let framing = upstream_response
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .cloned();
        response::rewrite_upstream_header(upstream_response, &explain);
        upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
        if let Some(te) = framing {
            upstream_response.insert_header(http::header::TRANSFER_ENCODING, te)?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map(|h| h.status);
        let elapsed = ctx.started.elapsed();
        let label = status.as_ref().map_or("none", |s| s.as_str());
        self.metrics.record(&ctx.record, label, elapsed);
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.write(crate::metrics::access_log_line(
                &ctx.request_id,
                req.method.as_str(),
                req.uri.path(),
                status.map_or(0, |s| s.as_u16()),
                &ctx.record,
                elapsed,
            ));
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = ctx
            .passthrough
            .map(|i| self.upstreams[i].name())
            .unwrap_or("none");
        let error = match e.etype() {
            ErrorType::HTTPStatus(code) => ApiError {
                status: *code,
                message: e.to_string(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            },
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if ctx.passthrough.is_some() =>
            {
                ApiError::upstream_timeout(upstream, "pass-through")
            }
            _ if ctx.passthrough.is_some() => {
                ApiError::upstream_unreachable(upstream, &e.etype().as_str().to_lowercase())
            }
            _ => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
        };
        if session.response_written().is_none() {
            let explain = Explain::served(&ctx.request_id, "gateway", upstream);
            if let Err(write) = write_error(session, &error, &explain, &[]).await {
                log::debug!("could not send the error response: {write}");
            }
        }
        FailToProxy {
            error_code: error.status,
            can_reuse_downstream: false,
        }
    }
}

/// Whether the client waits for `100 Continue` before sending its body.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}
