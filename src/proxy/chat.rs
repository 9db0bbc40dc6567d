//! `POST /v1/chat/completions`: read the body, parse it once, decide, rewrite, exchange, relay.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::response::{self, Explain};
use super::{expects_continue, write_error, Gateway, Served};
use crate::api::{ApiError, ChatRequest};
use crate::route::{self, Route};
use crate::upstream::client::{Exchange, ExchangeError};
use crate::upstream::{prepare_headers, Upstream};

/// The largest non-JSON upstream error body read to build an OpenAI-shaped error from it.
const ERROR_BODY_LIMIT: usize = 64 << 10;

pub(super) async fn handle(
    gw: &Gateway,
    session: &mut Session,
    request_id: &str,
    started: Instant,
    served: &mut Served,
) -> Result<()> {
    let gateway = Explain::gateway(request_id);
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
    *served = Served {
        route: decision.route.as_str(),
        upstream: Some(decision.upstream),
    };
    gw.metrics
        .decisions
        .with_label_values(&[decision.route.as_str(), decision.rule])
        .inc();
    let explain = Explain {
        rule: Some(decision.rule),
        score: decision.score,
        ..Explain::served(request_id, decision.route.as_str(), upstream.name())
    };
    let body = request.body_with_model(decision.model);

    let mut header = session.req_header().clone();
    let path = header
        .uri
        .path_and_query()
        .map_or("/v1/chat/completions", |p| p.as_str())
        .to_owned();
    if let Err(e) = prepare_headers(&mut header, upstream, &path) {
        return write_error(session, &e, &explain, &[]).await;
    }
    // The gateway reads the answer (errors, and later usage): ask for it uncompressed.
    header.remove_header(&http::header::ACCEPT_ENCODING);
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;

    let mut exchange = match Exchange::start(&gw.connector, upstream, header, body).await {
        Ok(x) => x,
        Err(e) => {
            record_failure(gw, request_id, upstream, &e, "before the answer");
            return write_error(session, &e.to_api(upstream.name()), &explain, &[]).await;
        }
    };

    let mut resp = exchange.header().clone();
    let status = resp.status.as_u16();
    if status >= 400 && !response::is_json(&resp) {
        let body = read_error_body(&mut exchange).await;
        exchange.finish(&gw.connector).await;
        let error = response::wrap_upstream_error(status, upstream.name(), &body);
        return write_error(session, &error, &explain, &[]).await;
    }
    let streaming = response::is_event_stream(&resp);
    response::rewrite_upstream_header(&mut resp, &explain);
    session.write_response_header(Box::new(resp), false).await?;

    let mut first_chunk = true;
    loop {
        match exchange.next().await {
            Ok(Some(chunk)) => {
                if std::mem::take(&mut first_chunk) {
                    gw.metrics
                        .first_chunk
                        .with_label_values(&[served.route, upstream.name()])
                        .observe(started.elapsed().as_secs_f64());
                }
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    // The client went away: stop the upstream's work too.
                    exchange.finish(&gw.connector).await;
                    return Err(e);
                }
            }
            Ok(None) => {
                exchange.finish(&gw.connector).await;
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
