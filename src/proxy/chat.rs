//! `POST /v1/chat/completions`: read the body, parse it once, decide, rewrite, exchange, relay.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::response::{self, Explain};
use super::{expects_continue, write_error, Gateway};
use crate::api::{ApiError, ChatRequest};
use crate::auth::Tenant;
use crate::cache::{self, Cache, Entry, Flight, Key, Lookup, Use};
use crate::metrics::{self, Record};
use crate::route::{self, Route};
use crate::upstream::answer::{Answer, AnswerReader};
use crate::upstream::client::{Exchange, ExchangeError};
use crate::upstream::{prepare_headers, Upstream};

/// The largest non-JSON upstream error body read to build an OpenAI-shaped error from it.
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// How much of an answer is kept to read its usage when the cache keeps less (or is off).
const KEEP_FOR_USAGE: usize = 4 << 20;

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
    let explain = Explain {
        rule: Some(decision.rule),
        score: decision.score,
        cache: Some(rec.cache),
        ..Explain::served(request_id, decision.route.as_str(), upstream.name())
    };
    // Streams are asked for their usage chunk so that tokens and cost are known; the client
    // gets it only if it asked for it itself.
    let body = request.upstream_body(decision.model, true);

    let mut header = session.req_header().clone();
    let path = header
        .uri
        .path_and_query()
        .map_or("/v1/chat/completions", |p| p.as_str())
        .to_owned();
    if let Err(e) = prepare_headers(&mut header, upstream, &path) {
        return write_error(session, &e, &explain, &[]).await;
    }
    // The gateway reads the answer (usage, the cache, errors): ask for it uncompressed.
    header.remove_header(&http::header::ACCEPT_ENCODING);
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;

    let sent = Instant::now();
    let mut exchange = match Exchange::start(&gw.connector, upstream, header, body).await {
        Ok(x) => x,
        Err(e) => {
            record_failure(gw, request_id, upstream, &e, "before the answer");
            return write_error(session, &e.to_api(upstream.name()), &explain, &[]).await;
        }
    };
    gw.metrics
        .upstream_latency
        .with_label_values(&[upstream.name()])
        .observe(sent.elapsed().as_secs_f64());

    let mut resp = exchange.header().clone();
    let status = resp.status.as_u16();
    if status >= 400 && !response::is_json(&resp) {
        let body = read_error_body(&mut exchange).await;
        exchange.finish(&gw.connector).await;
        let error = response::wrap_upstream_error(status, upstream.name(), &body);
        return write_error(session, &error, &explain, &[]).await;
    }
    let streaming = response::is_event_stream(&resp);
    let keep = gw
        .cache
        .as_ref()
        .map_or(KEEP_FOR_USAGE, |c| c.max_entry_bytes().max(KEEP_FOR_USAGE));
    let mut reader = if streaming {
        AnswerReader::sse(keep, request.stream && !request.include_usage)
    } else {
        AnswerReader::json(keep)
    };
    response::rewrite_upstream_header(&mut resp, &explain);
    session.write_response_header(Box::new(resp), false).await?;

    loop {
        match exchange.next().await {
            Ok(Some(chunk)) => {
                let out = reader.feed(chunk);
                if out.is_empty() {
                    continue;
                }
                if rec.first_byte.is_none() {
                    rec.first_byte = Some(started.elapsed());
                }
                if let Err(e) = session.write_response_body(Some(out), false).await {
                    // The client went away: stop the upstream's work too.
                    exchange.finish(&gw.connector).await;
                    return Err(e);
                }
            }
            Ok(None) => {
                exchange.finish(&gw.connector).await;
                if let Some(rest) = reader.rest() {
                    session.write_response_body(Some(rest), false).await?;
                }
                let answer = reader.finish();
                if status == 200 {
                    account(gw, rec, &request, &decision, &answer, false);
                    if let (Some((cache, key)), Some(completion)) = (cached, answer.completion) {
                        cache.store(key, Entry::new(completion, answer.json), flight.take());
                        gw.metrics.cache_stores.inc();
                    }
                }
                return session.write_response_body(None, true).await;
            }
            Err(e) => {
                record_failure(gw, request_id, upstream, &e, "mid-response");
                exchange.finish(&gw.connector).await;
                let error = e.to_api(upstream.name());
                if streaming {
                    // A stream ends with an error event the SDKs raise, then a clean end of the
                    // body; the connection is closed after it.
                    session.set_keepalive(None);
                    let event = Bytes::from(error.to_sse_event());
                    session.write_response_body(Some(event), false).await?;
                    return session.write_response_body(None, true).await;
                }
                // Ending a JSON body "cleanly" would hand the client a truncated answer that
                // looks complete: fail so that the connection is closed mid-body.
                return Error::e_explain(ErrorType::ReadError, error.message);
            }
        }
    }
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
    account(gw, rec, request, decision, &answer, true);
    let header = response::sized_header(200, content_type, body.len(), explain);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    rec.first_byte = Some(started.elapsed());
    session.write_response_body(Some(body), true).await
}

/// Records an answer's tokens (reported, else estimated) and cost; a cache hit costs nothing.
fn account(
    gw: &Gateway,
    rec: &mut Record,
    request: &ChatRequest,
    decision: &route::Decision<'_>,
    answer: &Answer,
    hit: bool,
) {
    let usage = answer.usage.unwrap_or_else(|| {
        rec.usage_estimated = true;
        metrics::estimate_usage(request, answer.output_bytes)
    });
    let (cost, baseline) = metrics::cost(&gw.config, decision.upstream, decision.model, usage);
    rec.usage = Some(usage);
    rec.cost = if hit { 0.0 } else { cost };
    rec.baseline_cost = baseline;
}

/// Logs an upstream failure and counts it by upstream and reason.
fn record_failure(
    gw: &Gateway,
    request_id: &str,
    upstream: &Upstream,
    e: &ExchangeError,
    when: &str,
) {
    log::warn!(
        "request {request_id}: upstream {} failed {when}: {e:?}",
        upstream.name()
    );
    gw.metrics
        .upstream_failures
        .with_label_values(&[upstream.name(), e.reason()])
        .inc();
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

/// Reads up to [`ERROR_BODY_LIMIT`] of an upstream's error body; failures leave what was read.
async fn read_error_body(exchange: &mut Exchange) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = exchange.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= ERROR_BODY_LIMIT {
            out.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    out
}
