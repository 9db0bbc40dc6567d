//! `POST /v1/chat/completions`: read the body, parse it once, decide, answer from the cache when
//! it can, else hand the request to [`super::forward`].

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

use super::forward::{forward, Job};
use super::response::{self, Explain};
use super::{expects_continue, write_error, Gateway};
use crate::api::{ApiError, ChatRequest};
use crate::auth::Tenant;
use crate::cache::{self, Cache, Entry, Flight, Key, Lookup, Use};
use crate::metrics::{self, Record};
use crate::route::{self, Route, Step};
use crate::upstream::answer::Answer;
use crate::upstream::pool::conversation_key;
use crate::upstream::Upstream;

/// Serves one chat request; `rec` collects what its metrics and access-log line report.
pub(super) async fn handle(
    gw: &Gateway,
    session: &mut Session,
    request_id: &str,
    started: Instant,
    rec: &mut Record,
) -> Result<()> {
    rec.cache = "bypass";
    let gateway = Explain {
        cache: Some("bypass"),
        ..Explain::gateway(request_id)
    };
    let body = match read_body(session, gw.config.max_body_bytes).await? {
        Ok(body) => body,
        Err(e) => {
            // The rest of an oversized body is not read: the connection cannot be reused.
            session.set_keepalive(None);
            return write_error(session, &e, &gateway, &[]).await;
        }
    };
    let request = match ChatRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return write_error(session, &e, &gateway, &[]).await,
    };

    let forced = match forced_route(gw, session.req_header()) {
        Ok(forced) => forced,
        Err(e) => return write_error(session, &e, &gateway, &[]).await,
    };
    let decision = route::decide(&gw.config, &request, forced);
    let upstream = &gw.upstreams[decision.upstream];
    let tenant = Tenant::of(&session.req_header().headers);
    rec.route = decision.route.as_str();
    rec.upstream = Some(upstream.name().to_owned());
    rec.rule = Some(decision.rule.to_owned());
    rec.model = Some(gw.config.model_label(decision.model).to_owned());
    gw.metrics
        .decisions
        .with_label_values(&[decision.route.as_str(), decision.rule])
        .inc();

    // The cache: a stored answer, an identical request already upstream, or a miss to lead.
    let usage_of_cache = match &gw.cache {
        Some(_) => Use::decide(
            true,
            decision.cache,
            request.temperature,
            session
                .req_header()
                .headers
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        ),
        None => Use::BYPASS,
    };
    let cached = match (&gw.cache, usage_of_cache.store) {
        (Some(cache), true) => cache
            .key(&tenant.id, upstream.name(), decision.model, request.body())
            .map(|key| (cache, key)),
        _ => None,
    };
    rec.tenant = Some(tenant.id);
    let mut flight = None;
    if let Some((cache, key)) = cached.filter(|_| usage_of_cache.lookup) {
        match look_up(gw, cache, key, upstream).await {
            Found::Entry(entry) => {
                let explain = Explain {
                    rule: Some(decision.rule),
                    score: decision.score,
                    cache: Some("hit"),
                    ..Explain::served(request_id, decision.route.as_str(), upstream.name())
                };
                return replay(
                    gw, session, &request, &entry, &explain, rec, &decision, started,
                )
                .await;
            }
            Found::Lead(f) => flight = f,
        }
    }
    rec.cache = usage_of_cache.label();
    let job = Job {
        gw,
        request_id,
        started,
        request: &request,
        decision: &decision,
        client_header: session.req_header().clone(),
        // Hashing the first messages is work only conversation balancing needs.
        conversation: if gw.upstreams.iter().any(|u| u.pool.wants_conversation()) {
            conversation_key(&request)
        } else {
            0
        },
        store: cached,
    };
    forward(&job, session, rec, flight).await
}

/// What the cache had for a request.
enum Found {
    /// A stored answer, or the answer of the identical request that was in flight.
    Entry(Arc<Entry>),
    /// Nothing: go upstream, leading the flight when there is one to lead.
    Lead(Option<Flight>),
}

/// Looks a key up, waiting (once, up to the upstream's total time limit) for an identical
/// request in flight; counts the result.
async fn look_up(gw: &Gateway, cache: &Cache, key: Key, upstream: &Upstream) -> Found {
    let count = |result: &str| gw.metrics.cache_lookups.with_label_values(&[result]).inc();
    match cache.lookup(key) {
        Lookup::Hit(entry) => {
            count("hit");
            Found::Entry(entry)
        }
        Lookup::Lead(flight) => {
            count("miss");
            Found::Lead(Some(flight))
        }
        Lookup::Wait(rx) => {
            if let Some(entry) = cache::wait(rx, upstream.config.timeouts.total).await {
                count("coalesced");
                return Found::Entry(entry);
            }
            // The request in flight failed: try on our own, leading if nobody else does now.
            count("miss");
            match cache.lookup(key) {
                Lookup::Hit(entry) => Found::Entry(entry),
                Lookup::Lead(flight) => Found::Lead(Some(flight)),
                Lookup::Wait(_) => Found::Lead(None),
            }
        }
    }
}

/// Answers from a stored entry, as JSON or as an SSE stream, whichever the client asked for.
#[allow(clippy::too_many_arguments)]
async fn replay(
    gw: &Gateway,
    session: &mut Session,
    request: &ChatRequest,
    entry: &Entry,
    explain: &Explain<'_>,
    rec: &mut Record,
    decision: &route::Decision<'_>,
    started: Instant,
) -> Result<()> {
    rec.cache = "hit";
    let (body, content_type) = if request.stream {
        let sse = entry.completion.to_sse(request.include_usage);
        (Bytes::from(sse), "text/event-stream")
    } else {
        (entry.json.clone(), "application/json")
    };
    let answer = Answer {
        usage: entry.completion.usage,
        output_bytes: entry.completion.output_chars(),
        ..Answer::default()
    };
    let step = Step {
        upstream: decision.upstream,
        model: decision.model,
    };
    account(gw, rec, request, &step, &answer, true);
    let header = response::sized_header(200, content_type, body.len(), explain);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    rec.first_byte = Some(started.elapsed());
    session.write_response_body(Some(body), true).await
}

/// Records an answer's tokens (reported, else estimated) and cost; a cache hit costs nothing.
pub(super) fn account(
    gw: &Gateway,
    rec: &mut Record,
    request: &ChatRequest,
    step: &Step<'_>,
    answer: &Answer,
    hit: bool,
) {
    let usage = answer.usage.unwrap_or_else(|| {
        rec.usage_estimated = true;
        metrics::estimate_usage(request, answer.output_bytes)
    });
    let (cost, baseline) = metrics::cost(&gw.config, step.upstream, step.model, usage);
    rec.usage = Some(usage);
    rec.cost = if hit { 0.0 } else { cost };
    rec.baseline_cost = baseline;
}

/// The route a client forces with `x-switchyard-route`, when the configuration allows it
/// (otherwise the header is ignored).
pub(super) fn forced_route(
    gw: &Gateway,
    req: &pingora::http::RequestHeader,
) -> std::result::Result<Option<Route>, ApiError> {
    let allowed = gw
        .config
        .routing
        .as_ref()
        .is_some_and(|r| r.allow_route_header);
    let Some(value) = req.headers.get("x-switchyard-route").filter(|_| allowed) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    Route::parse(text).map(Some).map_err(|e| {
        ApiError::invalid_request(
            format!("x-switchyard-route: {e}"),
            None,
            Some("invalid_route"),
        )
    })
}

/// Reads the whole request body, refusing it past `limit` bytes.
pub(super) async fn read_body(
    session: &mut Session,
    limit: u64,
) -> Result<Result<Bytes, ApiError>> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(ApiError::body_too_large(limit)));
    }
    if expects_continue(session.req_header()) {
        session.write_continue_response().await?;
    }
    let capacity = declared.unwrap_or(0).min(limit) as usize;
    let mut body = BytesMut::with_capacity(capacity);
    let mut first: Option<Bytes> = None;
    while let Some(chunk) = session.read_request_body().await? {
        if (body.len() + chunk.len()) as u64 > limit
            || first
                .as_ref()
                .is_some_and(|f| (f.len() + chunk.len()) as u64 > limit)
        {
            return Ok(Err(ApiError::body_too_large(limit)));
        }
        // A body that arrives in one chunk is kept as it is, without a copy.
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            Some(f) => {
                body.extend_from_slice(&f);
                body.extend_from_slice(&chunk);
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(Ok(first.unwrap_or_else(|| body.freeze())))
}
