//! Endpoints the gateway answers itself: the model list, the health report, the routing dry
//! run, `/metrics` and `/stats`.

use pingora::proxy::Session;
use pingora::Result;
use serde::Serialize;

use super::session::read_body;
use super::{write_error, write_json, write_whole, Ctx, Gateway};
use crate::api::ApiError;
use crate::auth::Tenant;
use crate::pipeline::{explain, Explain};

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// Paths the operator's tools read (scrapes, probes, dashboard refreshes): neither counted as
/// requests nor written to the access log.
pub(super) fn is_operational(path: &str) -> bool {
    matches!(
        path,
        "/metrics" | "/stats" | "/health" | "/health/live" | "/health/ready" | "/ui"
    )
}

fn explain(ctx: &Ctx) -> Explain<'_> {
    Explain::gateway(&ctx.request_id)
}

fn model_object<'a>(gw: &Gateway, id: &'a str) -> ModelObject<'a> {
    ModelObject {
        id,
        object: "model",
        created: gw.started_unix,
        owned_by: "switchyard",
    }
}

/// `GET /v1/models`: the client-visible model names, as OpenAI lists models.
pub(super) async fn models(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    let list = ModelList {
        object: "list",
        data: ctx
            .config()
            .models
            .iter()
            .map(|m| model_object(gw, &m.name))
            .collect(),
    };
    let body = serde_json::to_vec(&list).unwrap_or_default();
    write_json(session, 200, body, &explain(ctx)).await
}

/// `GET /v1/models/{id}`: one model, or 404 as OpenAI answers for an unknown one.
pub(super) async fn model(gw: &Gateway, session: &mut Session, ctx: &Ctx, id: &str) -> Result<()> {
    match ctx.config().models.iter().find(|m| m.name == id) {
        Some(m) => {
            let body = serde_json::to_vec(&model_object(gw, &m.name)).unwrap_or_default();
            write_json(session, 200, body, &explain(ctx)).await
        }
        None => write_error(session, &ApiError::model_not_found(id), &explain(ctx), &[]).await,
    }
}

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    upstreams: Vec<UpstreamHealth<'a>>,
}

#[derive(Serialize)]
struct UpstreamHealth<'a> {
    name: &'a str,
    route: &'static str,
    kind: &'static str,
    enabled: bool,
    /// Some backend takes requests.
    available: bool,
    backends: Vec<BackendHealth>,
}

#[derive(Serialize)]
struct BackendHealth {
    url: String,
    state: &'static str,
    outstanding: usize,
    /// What the checks found wrong (a model not pulled), when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// `GET /health`: the gateway's version and uptime, and each upstream's backends as the health
/// checks see them (`up`, `down`, `ejected`, `half-open`). `status` is `ok` when every enabled
/// upstream has a backend taking requests, else `degraded` (still 200: the gateway itself is
/// serving, and falls back where it can).
pub(super) async fn health(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    let now = std::time::Instant::now();
    let upstreams: Vec<UpstreamHealth> = ctx
        .pipeline
        .upstreams
        .iter()
        .map(|u| UpstreamHealth {
            name: u.name(),
            route: u.config.route.as_str(),
            kind: u.config.kind.as_str(),
            enabled: u.config.enabled,
            available: u.config.enabled && u.pool.any_available(),
            backends: u
                .pool
                .backends
                .iter()
                .map(|b| BackendHealth {
                    url: format!("{}:{}", b.url.host, b.url.port),
                    state: b.state(now).as_str(),
                    outstanding: b.outstanding(),
                    problem: b.problem(),
                })
                .collect(),
        })
        .collect();
    let all_up = upstreams.iter().filter(|u| u.enabled).all(|u| u.available);
    let report = Health {
        status: if all_up { "ok" } else { "degraded" },
        version: crate::VERSION,
        uptime_seconds: gw.started.elapsed().as_secs(),
        upstreams,
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    write_json(session, 200, body, &explain(ctx)).await
}

/// `GET /health/live`: the process answers (for a liveness probe; it says nothing of upstreams).
pub(super) async fn live(session: &mut Session, ctx: &Ctx) -> Result<()> {
    write_json(session, 200, br#"{"status":"ok"}"#.to_vec(), &explain(ctx)).await
}

/// `GET /health/ready`: 200 when this replica can serve, 503 (with why) before the first round
/// of health checks and while no route can serve. A cloud upstream counts as able to serve
/// whatever its checks say: its outage is every replica's, and taking them all out of the load
/// balancer would only turn its errors into refused connections.
pub(super) async fn ready(session: &mut Session, ctx: &Ctx) -> Result<()> {
    let (status, body) = match readiness(&ctx.pipeline.upstreams) {
        Ok(()) => (200, serde_json::json!({"status": "ready"})),
        Err(why) => (
            503,
            serde_json::json!({"status": "not_ready", "reason": why}),
        ),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    write_json(session, status, body, &explain(ctx)).await
}

/// Whether the upstreams let this replica serve; why not, when they do not.
fn readiness(
    upstreams: &[std::sync::Arc<crate::upstream::Upstream>],
) -> std::result::Result<(), &'static str> {
    let enabled = || upstreams.iter().filter(|u| u.config.enabled);
    let unchecked = enabled()
        .filter(|u| u.config.health.active)
        .any(|u| u.pool.backends.iter().any(|b| !b.was_checked()));
    if unchecked {
        return Err("the first health checks have not finished");
    }
    let serves =
        enabled().any(|u| u.config.route == crate::vocab::Route::Cloud || u.pool.any_available());
    if serves {
        Ok(())
    } else {
        Err("no upstream can serve")
    }
}

/// `POST /v1/route`: the routing decision for a chat request, without contacting any model
/// (the intent classifier is asked, when rules need it).
pub(super) async fn route(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    let gateway = explain(ctx);
    let (body, _held) = match read_body(session, &gw.body_limits(ctx)).await? {
        Ok(read) => read,
        Err(e) => {
            gw.conn_metrics.refused_request(&e);
            session.set_keepalive(None);
            return write_error(session, &e, &gateway, &[]).await;
        }
    };
    let request = match crate::api::ChatRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return write_error(session, &e, &gateway, &[]).await,
    };
    let headers = &session.req_header().headers;
    let secret = ctx.config().tenant_secret;
    let tenant = ctx
        .tenant
        .clone()
        .unwrap_or_else(|| Tenant::of(headers, &secret));
    let decided = ctx
        .pipeline
        .decide(&tenant, headers, &request, &ctx.request_id)
        .await;
    let decision = match decided {
        Ok(d) => d,
        Err(e) => return write_error(session, &e, &gateway, &[]).await,
    };
    let body = serde_json::to_vec(&crate::route::explain(ctx.config(), &decision, &request))
        .unwrap_or_default();
    let answer = Explain {
        rule: Some(decision.rule),
        score: decision.score,
        ..Explain::served(
            &ctx.request_id,
            decision.route,
            ctx.upstream(decision.upstream).name(),
        )
    };
    write_json(session, 200, body, &answer).await
}

/// `POST /v1/feedback`: a label for a chat request this tenant sent (see [`crate::feedback`]).
pub(super) async fn feedback(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    let gateway = explain(ctx);
    let mut limits = gw.body_limits(ctx);
    limits.max = limits.max.min(64 << 10);
    let (body, _held) = match read_body(session, &limits).await? {
        Ok(read) => read,
        Err(e) => {
            gw.conn_metrics.refused_request(&e);
            session.set_keepalive(None);
            return write_error(session, &e, &gateway, &[]).await;
        }
    };
    let tenant = ctx.tenant.as_ref().map_or("", |t| t.id.as_str());
    match ctx.pipeline.records.label(tenant, &body).await {
        Ok(line) => {
            let answer = serde_json::json!({
                "object": "feedback",
                "request_id": line["id"],
                "score": line["feedback"]["score"],
            });
            write_json(session, 200, answer.to_string().into_bytes(), &gateway).await
        }
        Err(e) => write_error(session, &e, &gateway, &[]).await,
    }
}

/// Brings the gauges that are read rather than counted up to date.
fn refresh_gauges(gw: &Gateway, ctx: &Ctx) {
    let in_flight = gw.in_flight.load(std::sync::atomic::Ordering::Acquire);
    ctx.pipeline.metrics.set_in_flight(in_flight);
    ctx.pipeline.refresh_gauges();
}

/// `GET /stats`: a JSON summary for people.
pub(super) async fn stats(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    refresh_gauges(gw, ctx);
    let mut summary = crate::metrics::stats(&ctx.pipeline.metrics, gw.started.elapsed());
    if let Some(shares) = &ctx.pipeline.shares {
        let (local_below, cloud_from) = shares.thresholds();
        let (local, hybrid, cloud) = shares.current();
        let now = crate::api::ids::unix_now();
        let (want_local, want_hybrid) = shares.aimed(now);
        summary["routing"] = serde_json::json!({
            "local_below": local_below,
            "cloud_from": cloud_from,
            "window": shares.window(),
            "target": {"local": want_local, "hybrid": want_hybrid},
            "shares": {"local": local, "hybrid": hybrid, "cloud": cloud},
        });
        if let Some(budget) = &shares.config().cloud_budget {
            summary["routing"]["cloud_budget"] = serde_json::json!({
                "daily_usd": budget.daily_usd,
                "spent_today_usd": shares.spent_today(now),
                "max_local_share": budget.max_local_share,
            });
        }
    }
    let body = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    write_json(session, 200, body, &explain(ctx)).await
}

/// `GET /stats` for a key that is not an admin: its own spend and what it has left.
pub(super) async fn own_stats(session: &mut Session, ctx: &Ctx) -> Result<()> {
    let Some(key) = ctx.key() else {
        let error = ApiError::forbidden("/stats is for gateway keys.", None, "admin_only");
        return write_error(session, &error, &explain(ctx), &[]).await;
    };
    let body = serde_json::to_vec_pretty(&ctx.pipeline.key_report(key).await).unwrap_or_default();
    write_json(session, 200, body, &explain(ctx)).await
}

/// `GET /metrics`: Prometheus' text format.
pub(super) async fn metrics(gw: &Gateway, session: &mut Session, ctx: &Ctx) -> Result<()> {
    refresh_gauges(gw, ctx);
    let body = ctx.pipeline.metrics.render();
    let content_type = crate::metrics::CONTENT_TYPE;
    let head = explain::sized_head(200, content_type, body.len(), &explain(ctx));
    write_whole(session, head, bytes::Bytes::from(body)).await
}

/// The dashboard page: one self-contained HTML file, scripts and styles inline, nothing fetched
/// from elsewhere.
const UI_PAGE: &str = include_str!("ui.html");

/// `GET /ui`: the dashboard page. Its policy lets it run its own inline code and ask this gateway
/// for data, and nothing else: no other origin, no frames.
pub(super) async fn ui(session: &mut Session, ctx: &Ctx) -> Result<()> {
    let mut head = crate::pipeline::explain::sized_head(
        200,
        "text/html; charset=utf-8",
        UI_PAGE.len(),
        &explain(ctx),
    );
    let policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                  connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                  frame-ancestors 'none'";
    for (name, value) in [
        (http::header::CONTENT_SECURITY_POLICY, policy),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::REFERRER_POLICY, "no-referrer"),
    ] {
        head.headers
            .insert(name, http::HeaderValue::from_static(value));
    }
    super::write_whole(session, head, bytes::Bytes::from_static(UI_PAGE.as_bytes())).await
}
