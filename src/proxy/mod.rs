//! The pingora glue: one `ProxyHttp` implementation that dispatches each request.
//!
//! - `POST /v1/chat/completions`: the body is read here, then the [`pipeline`](crate::pipeline)
//!   serves the request and writes its answer through a [`session::SessionDownstream`];
//!   answered from `request_filter` (pingora's own forwarding is not used for these; see
//!   `upstream::client`).
//! - `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /stats`, `POST /v1/route`: answered
//!   by the gateway itself ([`local`]).
//! - any other `/v1/` path: pingora's ordinary proxy path to the pass-through upstream, with the
//!   client's credentials replaced.
//! - anything else: 404.

mod conn;
mod local;
mod probe;
mod reload;
mod request_id;
mod server;
mod session;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::api::{ids, ApiError};
use crate::auth::Tenant;
use crate::config::{Config, KeyConfig};
use crate::metrics::{AccessLog, Record};
use crate::pipeline::{explain, traced, Explain, Incoming, Pipeline};
use crate::telemetry::trace::{self, Exporter, Trace};
use crate::upstream::client::Pooled;
use crate::upstream::{request_head, Upstream};
use crate::vocab::CacheOutcome;
pub use probe::probe;
pub use server::run;
use session::{expects_continue, read_body, SessionDownstream};

/// The gateway: the chat pipeline on pingora's client connections, and what the glue itself
/// keeps (request ids, the requests in flight, the access log).
pub struct Gateway {
    /// The pipeline of the configuration now in force; a reload swaps it, and each request keeps
    /// the one it started with.
    pipeline: Arc<ArcSwap<Pipeline<Pooled>>>,
    started: Instant,
    started_unix: u64,
    in_flight: Arc<AtomicUsize>,
    ids: request_id::Generator,
    access_log: Option<AccessLog>,
    /// What the connection and request limits refused or cut.
    conn_metrics: conn::ConnMetrics,
    /// Bytes of request bodies being read now, all clients together.
    buffered: Arc<AtomicU64>,
    /// Where finished traces go, when traces are on (settings read at start).
    traces: Option<(crate::config::TraceConfig, Exporter)>,
}

impl Gateway {
    /// Builds the gateway for a validated configuration.
    pub fn new(config: Config) -> std::result::Result<Gateway, String> {
        let access_log = match &config.access_log {
            Some(target) => Some(AccessLog::open(target).map_err(|e| format!("access log: {e}"))?),
            None => None,
        };
        let traces = match &config.telemetry.traces {
            Some(t) => Some((t.clone(), Exporter::start(t)?)),
            None => None,
        };
        let pipeline = Pipeline::new(config, Pooled::new())?;
        let conn_metrics = conn::ConnMetrics::register(pipeline.metrics.registry())
            .map_err(|e| format!("metrics: {e}"))?;
        Ok(Gateway {
            pipeline: Arc::new(ArcSwap::from_pointee(pipeline)),
            started: Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            ids: request_id::Generator::new(),
            access_log,
            conn_metrics,
            buffered: Arc::new(AtomicU64::new(0)),
            traces,
        })
    }

    /// The background service that checks the upstreams' backends (those of the configuration
    /// in force, whatever reloads happen).
    pub fn health_checks(&self) -> crate::upstream::health::HealthChecks {
        let pipeline = Arc::clone(&self.pipeline);
        crate::upstream::health::HealthChecks::new(Box::new(move || {
            pipeline.load().upstreams.clone()
        }))
    }

    /// What reloads the configuration: the pipeline it swaps.
    pub fn reloader(&self) -> reload::Reloader {
        reload::Reloader::new(Arc::clone(&self.pipeline))
    }

    /// The limits in force now.
    pub fn limits(&self) -> crate::config::Limits {
        self.pipeline.load().config.limits
    }

    /// Reads the limits in force, whatever reloads happen.
    fn limits_source(&self) -> Box<dyn Fn() -> crate::config::Limits + Send + Sync> {
        let pipeline = Arc::clone(&self.pipeline);
        Box::new(move || pipeline.load().config.limits)
    }

    /// What a request body of `ctx`'s configuration may take.
    fn body_limits(&self, ctx: &Ctx) -> session::BodyLimits {
        let limits = &ctx.config().limits;
        session::BodyLimits {
            max: limits.max_body_bytes,
            timeout: limits.body_timeout,
            held: Arc::clone(&self.buffered),
            max_held: limits.max_buffered_bytes,
        }
    }

    /// The number of requests being served now; the drain on SIGTERM waits for it to reach 0.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }
}

impl Ctx {
    fn config(&self) -> &Config {
        &self.pipeline.config
    }

    fn upstream(&self, index: usize) -> &Upstream {
        &self.pipeline.upstreams[index]
    }

    /// The key of the request's tenant, when keys are configured.
    fn key(&self) -> Option<&KeyConfig> {
        self.tenant.as_ref()?.key.map(|i| &self.config().keys[i])
    }

    /// Whether the request may read the gateway's own reports: without keys, anyone; with keys,
    /// an admin key.
    fn may_read_reports(&self) -> bool {
        self.config().keys.is_empty() || self.key().is_some_and(|k| k.admin)
    }
}

/// How much of a pass-through error answer is read (the rest is dropped).
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Per-request state.
pub struct Ctx {
    /// The pipeline (and configuration) this request is served with, from start to end.
    pipeline: Arc<Pipeline<Pooled>>,
    request_id: String,
    started: Instant,
    /// Set for pass-through requests: the upstream pingora forwards to.
    passthrough: Option<usize>,
    /// The backend of a pass-through request, once chosen.
    lease: Option<crate::upstream::Lease>,
    /// What is known of the request, for its metrics and access-log line.
    record: Record,
    /// Who asks, once authenticated (every path but `/health`).
    tenant: Option<Tenant>,
    /// Masks the upstream's key in a pass-through answer's body.
    scrub: Option<crate::upstream::scrub::ScrubStream>,
    /// A pass-through error answer being read whole, to be relayed masked or wrapped: its
    /// upstream status and what came of its body.
    error: Option<(u16, Vec<u8>)>,
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
            "/v1/chat/completions" | "/v1/route" | "/v1/feedback" => Some(http::Method::POST),
            "/v1/models" | "/health" | "/health/live" | "/health/ready" | "/metrics" | "/stats"
            | "/ui" => Some(http::Method::GET),
            _ => None,
        };
        if let Some(required) = required.filter(|r| *r != method) {
            let error = ApiError::method_not_allowed(method.as_str(), &path, required.as_str());
            let allow = [(http::header::ALLOW, required.as_str())];
            write_error(session, &error, &Explain::gateway(&ctx.request_id), &allow).await?;
            return Ok(Handled::Done);
        }
        match path.as_str() {
            "/v1/chat/completions" => self.chat(session, ctx).await?,
            "/stats" if !ctx.may_read_reports() => local::own_stats(session, ctx).await?,
            "/metrics" if !ctx.may_read_reports() => {
                let error =
                    ApiError::forbidden(format!("{path} is for admin keys."), None, "admin_only");
                write_error(session, &error, &Explain::gateway(&ctx.request_id), &[]).await?;
            }
            "/metrics" => local::metrics(self, session, ctx).await?,
            "/stats" => local::stats(self, session, ctx).await?,
            "/v1/route" => local::route(self, session, ctx).await?,
            "/v1/feedback" => local::feedback(self, session, ctx).await?,
            "/v1/models" => local::models(self, session, ctx).await?,
            "/health" => local::health(self, session, ctx).await?,
            "/health/live" => local::live(session, ctx).await?,
            "/health/ready" => local::ready(session, ctx).await?,
            "/ui" if ctx.config().serves_ui() => local::ui(session, ctx).await?,
            // Other methods on a model (DELETE of a fine-tune) are the provider's business.
            p if p.starts_with("/v1/models/") && method == http::Method::GET => {
                local::model(self, session, ctx, &p["/v1/models/".len()..]).await?
            }
            p if p.starts_with("/v1/") => {
                if let Err(error) = crate::route::passthrough::check(&method, p) {
                    let allow = [(http::header::ALLOW, crate::route::passthrough::METHODS)];
                    let extra = if error.status == 405 { &allow[..] } else { &[] };
                    write_error(session, &error, &Explain::gateway(&ctx.request_id), extra).await?;
                    return Ok(Handled::Done);
                }
                return Ok(Handled::Passthrough(ctx.config().passthrough));
            }
            _ => {
                let error = ApiError::unknown_path(method.as_str(), &path);
                write_error(session, &error, &Explain::gateway(&ctx.request_id), &[]).await?;
            }
        }
        Ok(Handled::Done)
    }

    /// `POST /v1/chat/completions`: reads the body, then the pipeline answers.
    async fn chat(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.record.cache = Some(CacheOutcome::Bypass);
        let (body, _held) = match read_body(session, &self.body_limits(ctx)).await? {
            Ok(read) => read,
            Err(e) => {
                self.conn_metrics.refused_request(&e);
                // The rest of an oversized body is not read: the connection cannot be reused.
                session.set_keepalive(None);
                let explain = Explain {
                    cache: Some(CacheOutcome::Bypass),
                    ..Explain::gateway(&ctx.request_id)
                };
                return write_error(session, &e, &explain, &[]).await;
            }
        };
        // The pipeline writes to the session while it reads the request's head: keep a copy.
        let head = session.req_header();
        let headers = head.headers.clone();
        let path = head
            .uri
            .path_and_query()
            .map_or("/v1/chat/completions", |p| p.as_str())
            .to_owned();
        let secret = ctx.config().tenant_secret;
        let tenant = ctx
            .tenant
            .clone()
            .unwrap_or_else(|| Tenant::of(&headers, &secret));
        let incoming = Incoming {
            tenant: &tenant,
            standing: None,
            request_id: &ctx.request_id,
            started: ctx.started,
            headers: &headers,
            path: &path,
        };
        let mut down = SessionDownstream::new(session);
        let served = ctx
            .pipeline
            .chat(incoming, body, &mut down, &mut ctx.record)
            .await;
        down.into_result(served)
    }
}

/// Writes a complete response.
async fn write_whole(
    session: &mut Session,
    head: crate::pipeline::Head,
    body: Bytes,
) -> Result<()> {
    session
        .write_response_header(Box::new(ResponseHeader::from(head)), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Writes a complete JSON response.
async fn write_json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    explain: &Explain<'_>,
) -> Result<()> {
    let head = explain::json_head(status, body.len(), explain);
    write_whole(session, head, Bytes::from(body)).await
}

/// Writes an OpenAI-shaped error response.
async fn write_error(
    session: &mut Session,
    error: &ApiError,
    explain: &Explain<'_>,
    extra: &[(HeaderName, &str)],
) -> Result<()> {
    let (mut head, body) = explain::error_answer(error, explain, extra);
    if error.code == Some("server_overloaded")
        && !head.headers.contains_key(http::header::RETRY_AFTER)
    {
        head.headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    write_whole(session, head, body).await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            pipeline: self.pipeline.load_full(),
            request_id: String::new(),
            started: Instant::now(),
            passthrough: None,
            scrub: None,
            error: None,
            lease: None,
            record: Record::new(),
            tenant: None,
            _in_flight: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        conn::admitted(session);
        // Requests a client sends before the previous answer are served in turn, not dropped.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let serving = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        ctx._in_flight = Some(InFlight(Arc::clone(&self.in_flight)));
        ctx.request_id = self.ids.for_request(session.req_header());
        let head = session.req_header();
        // Past the cap, refuse before any work; `/health` still answers, to tell why.
        let health = matches!(
            head.uri.path(),
            "/health" | "/health/live" | "/health/ready"
        );
        if serving > ctx.config().limits.max_in_flight && !health {
            self.conn_metrics.refused("in_flight");
            let e = ApiError::overloaded("too many requests in flight");
            session.set_keepalive(None);
            write_error(session, &e, &Explain::gateway(&ctx.request_id), &[]).await?;
            return Ok(true);
        }
        if head.version == http::Version::HTTP_11 && !head.headers.contains_key(http::header::HOST)
        {
            // RFC 9112: a server must answer 400 to an HTTP/1.1 request without Host.
            let e = ApiError::invalid_request(
                "HTTP/1.1 requests must carry a Host header.",
                None,
                Some("missing_host"),
            );
            write_error(session, &e, &Explain::gateway(&ctx.request_id), &[]).await?;
            return Ok(true);
        }
        if let Some(e) = session::ambiguous_framing(&head.headers) {
            self.conn_metrics.refused("malformed");
            session.set_keepalive(None);
            write_error(session, &e, &Explain::gateway(&ctx.request_id), &[]).await?;
            return Ok(true);
        }
        if let Some((config, _)) = self
            .traces
            .as_ref()
            .filter(|_| !local::is_operational(head.uri.path()))
        {
            let parent = head
                .headers
                .get(trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok());
            ctx.record.trace = Trace::start(parent, config).map(Box::new);
        }
        // The dashboard page is code, not data: what it shows comes from `/stats`, `/health` and
        // `/v1/route`, each asked with the key its reader types in.
        let public = health || head.uri.path() == "/ui";
        if !public {
            let headers = &session.req_header().headers;
            match Tenant::authenticate(
                &ctx.config().keys,
                &ctx.config().tenant_secret,
                headers,
                ids::unix_now(),
            ) {
                Ok(tenant) => {
                    ctx.record.tenant = Some(tenant.id.clone());
                    ctx.record.tenant_label = Some(tenant.label().to_owned());
                    ctx.tenant = Some(tenant);
                }
                Err(e) => {
                    write_error(session, &e, &Explain::gateway(&ctx.request_id), &[]).await?;
                    return Ok(true);
                }
            }
        }
        match self.dispatch(session, ctx).await? {
            Handled::Done => Ok(true),
            Handled::Passthrough(index) => {
                let pipeline = Arc::clone(&ctx.pipeline);
                let upstream = &pipeline.upstreams[index];
                let side = upstream.config.route;
                if let Some(key) = ctx.key().filter(|k| !k.allows_route(side)) {
                    let e = ApiError::forbidden(
                        format!("The key `{}` may not use the {side} route.", key.name),
                        None,
                        "route_not_allowed",
                    );
                    write_error(session, &e, &Explain::gateway(&ctx.request_id), &[]).await?;
                    return Ok(true);
                }
                ctx.passthrough = Some(index);
                ctx.record.route = Some(upstream.config.route);
                ctx.record.upstream = Some(upstream.name().to_owned());
                ctx.record.cache = Some(CacheOutcome::Bypass);
                // The upstream never sees `Expect` (it is hop-by-hop here), so answer it now.
                if expects_continue(session) {
                    session.write_continue_response().await?;
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let index = ctx.passthrough.unwrap_or(ctx.config().passthrough);
        let upstream = ctx.upstream(index);
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
        let index = ctx.passthrough.unwrap_or(ctx.config().passthrough);
        let path = upstream_request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let upstream = ctx.upstream(index);
        let backend = match &ctx.lease {
            Some(lease) => lease.backend(),
            None => &upstream.pool.backends[0],
        };
        let method = upstream_request.method.clone();
        let mut head = request_head(&method, &upstream_request.headers, upstream, backend, &path)
            .map_err(|e| Error::explain(ErrorType::InternalError, e.message))?;
        // A traced pass-through request's upstream continues the trace under its server span.
        if let Some(t) = &ctx.record.trace {
            if let Ok(v) = http::HeaderValue::from_str(&t.context.header(t.root)) {
                head.headers.insert(trace::TRACEPARENT, v);
            }
        }
        *upstream_request = RequestHeader::from(head);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let index = ctx.passthrough.unwrap_or(ctx.config().passthrough);
        let pipeline = Arc::clone(&ctx.pipeline);
        let upstream = &pipeline.upstreams[index];
        // Pass-through answers are never cached.
        let explain = Explain {
            cache: Some(CacheOutcome::Bypass),
            ..Explain::served(&ctx.request_id, upstream.config.route, upstream.name())
        };
        // pingora frames the pass-through body itself: keep its transfer-encoding choice.
        let framing = upstream_response
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .cloned();
        let mut head = upstream_response.as_owned_parts();
        let scrub = upstream.scrub.clone();
        scrub.headers(&mut head.headers);
        let status = head.status.as_u16();
        if status >= 400 {
            // Read whole, then relayed masked or wrapped (see `response_body_filter`).
            ctx.error = Some((status, Vec::new()));
            if status == 401 && upstream.config.api_key.is_some() {
                head.status = http::StatusCode::BAD_GATEWAY;
            }
            head.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        explain::rewrite_upstream_head(&mut head, &explain);
        head.headers.remove(http::header::TRANSFER_ENCODING);
        if let Some(te) = framing {
            head.headers.insert(http::header::TRANSFER_ENCODING, te);
        }
        // Masking changes the body's length: send it chunked.
        if !scrub.is_empty() && ctx.error.is_none() {
            ctx.scrub = Some(scrub.stream());
        }
        let rewritten = ctx.scrub.is_some() || ctx.error.is_some();
        let had_length = rewritten && head.headers.remove(http::header::CONTENT_LENGTH).is_some();
        if had_length || ctx.error.is_some() {
            head.headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        *upstream_response = ResponseHeader::from(head);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some((status, read)) = &mut ctx.error {
            if let Some(chunk) = body.take() {
                let room = ERROR_BODY_LIMIT.saturating_sub(read.len());
                read.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if end_of_stream {
                let index = ctx.passthrough.unwrap_or(ctx.pipeline.config.passthrough);
                let upstream = &ctx.pipeline.upstreams[index];
                let answer = crate::pipeline::upstream_error_answer(upstream, *status, read);
                *body = Some(answer.unwrap_or_else(|e| Bytes::from(e.to_json())));
            }
            return Ok(None);
        }
        // A pass-through answer that repeats the upstream's key has it masked, also when the
        // key is cut across chunks.
        if let Some(scrub) = &mut ctx.scrub {
            let mut out = bytes::BytesMut::new();
            if let Some(chunk) = body.take() {
                out.extend_from_slice(&scrub.feed(chunk));
            }
            if end_of_stream {
                out.extend_from_slice(&scrub.finish());
            }
            *body = (!out.is_empty()).then(|| out.freeze());
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if session.as_downstream_mut().is_body_done() {
            conn::finished(session);
        } else {
            // A body left unread (a refused request's) is not drained: the connection closes.
            session.set_keepalive(None);
        }
        // Scrapes, probes and dashboard refreshes are the operator's reads, not traffic.
        if local::is_operational(session.req_header().uri.path()) {
            return;
        }
        let status = session.response_written().map(|h| h.status);
        let elapsed = ctx.started.elapsed();
        let label = status.as_ref().map_or("none", |s| s.as_str());
        ctx.pipeline.metrics.record(&ctx.record, label, elapsed);
        let req = session.req_header();
        let code = status.map_or(0, |s| s.as_u16());
        let entry =
            crate::metrics::Recent::of(&ctx.request_id, req.uri.path(), code, &ctx.record, elapsed);
        ctx.pipeline.metrics.remember(entry);
        // Shadow judging starts once the client has its answer, and never holds it up.
        if let Some(job) = ctx.record.shadow_job.take() {
            let pipeline = Arc::clone(&ctx.pipeline);
            tokio::spawn(async move { pipeline.shadow(*job).await });
        }
        if let (Some((_, exporter)), Some(t)) = (&self.traces, ctx.record.trace.take()) {
            let method = req.method.as_str();
            let (context, spans) = traced::finished(*t, &ctx.record, method, req.uri.path(), code);
            exporter.send(context, spans);
        }
        if let Some(log) = &self.access_log {
            log.write(
                &ctx.request_id,
                req.method.as_str(),
                req.uri.path(),
                code,
                &ctx.record,
                elapsed,
            );
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = ctx
            .passthrough
            .map(|i| ctx.upstream(i).name())
            .unwrap_or("none");
        let from_client = *e.esource() == pingora::ErrorSource::Downstream;
        let error = match e.etype() {
            _ if from_client => match session::malformed(e) {
                Some(error) => error,
                None if matches!(e.etype(), ErrorType::ReadTimedout) => {
                    ApiError::request_timeout("body", ctx.config().limits.body_timeout)
                }
                None => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
            },
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
            let explain = Explain {
                upstream,
                ..Explain::gateway(&ctx.request_id)
            };
            if let Err(write) = write_error(session, &error, &explain, &[]).await {
                tracing::debug!("could not send the error response: {write}");
            }
        }
        FailToProxy {
            error_code: error.status,
            can_reuse_downstream: false,
        }
    }
}
