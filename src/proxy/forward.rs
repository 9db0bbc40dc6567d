//! Sending a decided chat request upstream: down the fallback chain, retrying each upstream's
//! backends before anything reached the client, then relaying the answer (translated from
//! Ollama's API when the upstream speaks it) while reading its usage and keeping it for the
//! cache.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::response::{self, Explain};
use super::{write_error, write_json, Gateway};
use crate::api::{ApiError, ChatRequest};
use crate::cache::{Cache, Entry, Flight, Key};
use crate::config::{ContextOverflow, UpstreamKind};
use crate::metrics::{self, Record};
use crate::route::{self, Decision, Step};
use crate::upstream::answer::{Answer, AnswerReader};
use crate::upstream::client::{Exchange, ExchangeError};
use crate::upstream::retry::{self, Verdict};
use crate::upstream::{ollama, prepare_headers, raw, Lease, Upstream};

/// The largest upstream error body kept (to pass on, or to build an OpenAI error from).
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// How much of an answer is kept to read its usage when the cache keeps less (or is off).
pub(super) const KEEP_FOR_USAGE: usize = 4 << 20;

/// A request on its way upstream, and what is needed to answer it.
pub(super) struct Job<'a> {
    pub gw: &'a Gateway,
    pub request_id: &'a str,
    pub started: Instant,
    pub request: &'a ChatRequest,
    pub decision: &'a Decision<'a>,
    /// The client's request header, the template of every upstream request header.
    pub client_header: RequestHeader,
    /// The conversation key, for backends chosen by conversation.
    pub conversation: u64,
    /// Where a complete answer of the first upstream is stored, and who waits for it.
    pub store: Option<(&'a Cache, Key)>,
}

/// One upstream of the plan, as it is tried.
struct Leg<'a> {
    upstream: &'a Upstream,
    step: Step<'a>,
    /// `x-switchyard-fallback` for its answers: `first->this`, when it is not the first.
    fallback: Option<String>,
    /// The plan's first upstream: its answers may be stored (the cache key names it).
    first: bool,
}

/// How one upstream of the chain ended.
enum Tried {
    /// The client got an answer (or an error that is the client's own business).
    Answered,
    /// The upstream could not answer before its first byte; the next one may.
    Failed { last: Failure, reason: &'static str },
}

/// The last word of a failed upstream, passed on when no fallback answers either.
enum Failure {
    /// The gateway's own error.
    Api(ApiError),
    /// The upstream's error answer, kept as it was.
    Answer {
        status: u16,
        body: Vec<u8>,
        retry_after: Option<String>,
    },
}

/// Sends the request down its plan; writes the answer or the last error.
pub(super) async fn forward(
    job: &Job<'_>,
    session: &mut Session,
    rec: &mut Record,
    mut flight: Option<Flight>,
) -> Result<()> {
    let gw = job.gw;
    let plan = route::plan(&gw.config, job.decision);
    // The last failure and the plan step it came from.
    let mut last = (
        Failure::Api(ApiError::no_healthy_backend(
            gw.upstreams[job.decision.upstream].name(),
        )),
        0,
    );
    // The last error an upstream answered itself (a 429, a 503 with its message) tells the
    // client more than a later fallback's refused connection.
    let mut answered: Option<(Failure, usize)> = None;
    let mut reason = "";
    for (n, step) in plan.iter().enumerate() {
        let upstream = &gw.upstreams[step.upstream];
        let fallback = (n > 0).then(|| format!("{}->{}", plan[0].name(gw), upstream.name()));
        if n > 0 {
            let from = gw.upstreams[plan[n - 1].upstream].name();
            log::info!(
                "request {}: falling back from {from} to {} ({reason})",
                job.request_id,
                upstream.name()
            );
            gw.metrics
                .fallbacks
                .with_label_values(&[from, upstream.name(), reason])
                .inc();
        }
        if let Some(limit) = upstream.config.num_ctx {
            let estimated = metrics::estimate_usage(job.request, 0).prompt_tokens;
            if estimated > limit {
                let can_fall_back = upstream.config.context_overflow == ContextOverflow::Fallback
                    && n + 1 < plan.len();
                let action = if can_fall_back { "fallback" } else { "reject" };
                gw.metrics
                    .context_overflows
                    .with_label_values(&[upstream.name(), action])
                    .inc();
                let error = ApiError::context_length_exceeded(upstream.name(), estimated, limit);
                if can_fall_back || n > 0 {
                    // A fallback that cannot take the prompt is skipped: the client then gets
                    // the earlier upstream's failure, which is what went wrong.
                    if n == 0 {
                        last = (Failure::Api(error), n);
                    }
                    reason = "context_overflow";
                    continue;
                }
                let explain = explain(
                    job,
                    rec.cache,
                    upstream,
                    upstream.name(),
                    fallback.as_deref(),
                );
                return write_error(session, &error, &explain, &[]).await;
            }
        }
        let leg = Leg {
            upstream,
            step: *step,
            fallback,
            first: n == 0,
        };
        match attempt(job, session, rec, &leg, &mut flight).await? {
            Tried::Answered => return Ok(()),
            Tried::Failed { last: l, reason: r } => {
                reason = r;
                match l {
                    Failure::Answer { .. } => answered = Some((l, n)),
                    Failure::Api(_) => last = (l, n),
                }
            }
        }
    }
    // Nothing answered: the client gets the last word an upstream said, else the last error.
    let (last, at) = answered.unwrap_or(last);
    let at = &gw.upstreams[plan[at].upstream];
    let fallback = (plan.len() > 1)
        .then(|| format!("{}->{}", plan[0].name(gw), plan[plan.len() - 1].name(gw)));
    rec.route = served_route(job, at);
    rec.upstream = Some(at.name().to_owned());
    let explain = explain(job, rec.cache, at, at.name(), fallback.as_deref());
    match last {
        Failure::Api(error) => write_error(session, &error, &explain, &[]).await,
        Failure::Answer {
            status,
            body,
            retry_after,
        } => {
            let extra: Vec<(&'static str, &str)> = retry_after
                .as_deref()
                .map(|v| ("retry-after", v))
                .into_iter()
                .collect();
            if at.config.kind == UpstreamKind::OpenAi && response::is_json_body(&body) {
                write_json(session, status, body, &explain, &extra).await
            } else {
                let error = upstream_error(at, status, &body);
                write_error(session, &error, &explain, &extra).await
            }
        }
    }
}

impl Step<'_> {
    fn name<'g>(&self, gw: &'g Gateway) -> &'g str {
        gw.upstreams[self.upstream].name()
    }
}

/// The gateway's headers for an answer from `upstream` (through `backend`, its label).
fn explain<'a>(
    job: &'a Job<'_>,
    cache: &'static str,
    upstream: &'a Upstream,
    backend: &'a str,
    fallback: Option<&'a str>,
) -> Explain<'a> {
    Explain {
        rule: Some(job.decision.rule),
        score: job.decision.score,
        cache: Some(cache),
        fallback,
        ..Explain::served(job.request_id, served_route(job, upstream), backend)
    }
}

/// The route reported for an answer from `upstream`: the decided one, unless a fallback of the
/// other side served it.
fn served_route(job: &Job<'_>, upstream: &Upstream) -> &'static str {
    if upstream.config.name == job.gw.upstreams[job.decision.upstream].config.name {
        job.decision.route.as_str()
    } else {
        upstream.config.route.as_str()
    }
}

/// An OpenAI error for an upstream's error answer that is not one already.
fn upstream_error(upstream: &Upstream, status: u16, body: &[u8]) -> ApiError {
    match upstream.config.kind {
        UpstreamKind::Ollama | UpstreamKind::Raw => {
            ollama::error(status, &ollama::error_message(body))
        }
        UpstreamKind::OpenAi => response::wrap_upstream_error(status, upstream.name(), body),
    }
}

/// Tries one upstream: its backends in turn, with back-off, within its retry budget.
async fn attempt(
    job: &Job<'_>,
    session: &mut Session,
    rec: &mut Record,
    leg: &Leg<'_>,
    flight: &mut Option<Flight>,
) -> Result<Tried> {
    let gw = job.gw;
    let (upstream, step) = (leg.upstream, &leg.step);
    let fallback = leg.fallback.as_deref();
    let policy = upstream.config.retry;
    let began = Instant::now();
    let mut tried = Vec::new();
    let mut last: Option<(Failure, &'static str)> = None;
    for attempt in 1.. {
        let Some(mut lease) = upstream.pool.select(job.conversation, &tried) else {
            let (last, reason) = last.unwrap_or((
                Failure::Api(ApiError::no_healthy_backend(upstream.name())),
                "no_healthy_backend",
            ));
            return Ok(Tried::Failed { last, reason });
        };
        tried.push(lease.index);
        let (header, body) = match upstream_request(job, upstream, &lease, step.model) {
            Ok(r) => r,
            Err(e) => {
                let label = lease.backend().label.clone();
                let explain = explain(job, rec.cache, upstream, &label, fallback);
                write_error(session, &e, &explain, &[]).await?;
                return Ok(Tried::Answered);
            }
        };
        let sent = Instant::now();
        let exchange = match upstream.peer(lease.backend()).await {
            Ok(peer) => {
                let timeouts = upstream.config.timeouts;
                Exchange::start(&gw.connector, peer, timeouts, header, body).await
            }
            Err(e) => Err(ExchangeError::Unreachable(e.message)),
        };
        let (failure, reason, mut wait) = match exchange {
            Ok(exchange) => {
                gw.metrics
                    .upstream_latency
                    .with_label_values(&[upstream.name()])
                    .observe(sent.elapsed().as_secs_f64());
                let status = exchange.header().status.as_u16();
                let verdict = retry::verdict(status);
                if verdict == Verdict::Relay {
                    lease.succeeded();
                    let label = lease.backend().label.clone();
                    // The lease lives until the answer has been relayed: a streaming request
                    // stays outstanding on its backend.
                    let relayed = relay(job, session, rec, leg, &label, exchange, flight).await;
                    drop(lease);
                    relayed?;
                    return Ok(Tried::Answered);
                }
                let retry_after = exchange
                    .header()
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let mut exchange = exchange;
                let body = read_error_body(&mut exchange).await;
                exchange.finish(&gw.connector).await;
                if retry::backend_failed(status) {
                    lease.failed();
                } else {
                    drop(lease);
                }
                log::warn!(
                    "request {}: upstream {} answered {status}",
                    job.request_id,
                    upstream.name()
                );
                let reason = if status == 429 {
                    "rate_limited"
                } else {
                    "status"
                };
                let wait = retry_after.as_deref().and_then(retry::retry_after);
                let failure = Failure::Answer {
                    status,
                    body,
                    retry_after,
                };
                if verdict == Verdict::Fallback || wait.is_some_and(|w| w > policy.retry_after_cap)
                {
                    return Ok(Tried::Failed {
                        last: failure,
                        reason,
                    });
                }
                (failure, reason, wait.unwrap_or_default())
            }
            Err(e) => {
                lease.failed();
                record_failure(gw, job.request_id, upstream, &e, "before the answer");
                (
                    Failure::Api(e.to_api(upstream.name())),
                    e.reason(),
                    Default::default(),
                )
            }
        };
        wait = wait.max(retry::backoff(&policy, attempt, retry::jitter()));
        if attempt >= policy.attempts || began.elapsed() + wait > policy.budget {
            return Ok(Tried::Failed {
                last: failure,
                reason,
            });
        }
        gw.metrics
            .retries
            .with_label_values(&[upstream.name(), reason])
            .inc();
        last = Some((failure, reason));
        tokio::time::sleep(wait).await;
    }
    unreachable!("the attempt loop returns")
}

/// The request header and body for `upstream` through `lease`'s backend.
fn upstream_request(
    job: &Job<'_>,
    upstream: &Upstream,
    lease: &Lease,
    model: &str,
) -> std::result::Result<(RequestHeader, Bytes), ApiError> {
    let (path, body) = match upstream.config.kind {
        // Streams are asked for their usage chunk so that tokens and cost are known; the
        // client gets it only if it asked for it itself.
        UpstreamKind::OpenAi => {
            let path = job
                .client_header
                .uri
                .path_and_query()
                .map_or("/v1/chat/completions", |p| p.as_str());
            (path, job.request.upstream_body(model, true))
        }
        UpstreamKind::Ollama => (
            ollama::CHAT_PATH,
            ollama::request_body(job.request, model, &upstream.config)?,
        ),
        UpstreamKind::Raw => (
            raw::path(upstream.config.raw_api),
            raw::request_body(job.request, model, &upstream.config)?,
        ),
    };
    let mut header = job.client_header.clone();
    prepare_headers(&mut header, upstream, lease.backend(), path)?;
    // The gateway reads the answer (usage, the cache, errors): ask for it uncompressed.
    header.remove_header(&http::header::ACCEPT_ENCODING);
    header.remove_header(&http::header::TRANSFER_ENCODING);
    let set = |h: &mut RequestHeader, k: http::HeaderName, v: String| {
        h.insert_header(k, v)
            .map_err(|_| ApiError::internal("cannot set a header"))
    };
    set(
        &mut header,
        http::header::CONTENT_LENGTH,
        body.len().to_string(),
    )?;
    set(
        &mut header,
        http::header::CONTENT_TYPE,
        "application/json".into(),
    )?;
    Ok((header, body))
}

/// How the answer's bytes change on their way to the client.
enum Translate {
    /// An OpenAI-compatible answer, as it is.
    Pass,
    /// Ollama's NDJSON stream, to SSE.
    OllamaStream(ollama::StreamTranslator),
}

/// Relays an answer the client gets, whatever its status; records usage and stores it.
async fn relay(
    job: &Job<'_>,
    session: &mut Session,
    rec: &mut Record,
    leg: &Leg<'_>,
    backend: &str,
    mut exchange: Exchange,
    flight: &mut Option<Flight>,
) -> Result<()> {
    let gw = job.gw;
    let (upstream, step, fallback) = (leg.upstream, &leg.step, leg.fallback.as_deref());
    rec.route = served_route(job, upstream);
    rec.upstream = Some(upstream.name().to_owned());
    rec.model = Some(gw.config.model_label(step.model).to_owned());
    let explain = explain(job, rec.cache, upstream, backend, fallback);
    let request = job.request;
    let mut resp = exchange.header().clone();
    let status = resp.status.as_u16();
    let native = upstream.config.kind != UpstreamKind::OpenAi;

    if status >= 400 && (native || !response::is_json(&resp)) {
        let body = read_error_body(&mut exchange).await;
        exchange.finish(&gw.connector).await;
        let error = upstream_error(upstream, status, &body);
        return write_error(session, &error, &explain, &[]).await;
    }
    let keep = gw
        .cache
        .as_ref()
        .map_or(KEEP_FOR_USAGE, |c| c.max_entry_bytes().max(KEEP_FOR_USAGE));

    let (streaming, mut translate) = if native {
        if !request.stream {
            return relay_whole_ollama(job, session, rec, leg, exchange, &explain, flight).await;
        }
        resp = sse_header(status);
        let t = ollama::StreamTranslator::new(step.model);
        (true, Translate::OllamaStream(t))
    } else {
        (response::is_event_stream(&resp), Translate::Pass)
    };
    let mut reader = if streaming {
        AnswerReader::sse(keep, request.stream && !request.include_usage)
    } else {
        AnswerReader::json(keep)
    };
    response::rewrite_upstream_header(&mut resp, &explain);
    session.write_response_header(Box::new(resp), false).await?;

    loop {
        let next = exchange.next().await;
        let (chunk, ended) = match next {
            Ok(Some(chunk)) => match &mut translate {
                Translate::Pass => (chunk, false),
                Translate::OllamaStream(t) => (t.feed(&chunk), false),
            },
            Ok(None) => match &mut translate {
                Translate::Pass => (Bytes::new(), true),
                Translate::OllamaStream(t) => (t.finish(), true),
            },
            Err(e) => {
                record_failure(gw, job.request_id, upstream, &e, "mid-response");
                exchange.finish(&gw.connector).await;
                return end_broken(session, e.to_api(upstream.name()), streaming).await;
            }
        };
        if !chunk.is_empty() {
            let out = reader.feed(chunk);
            if !out.is_empty() {
                if rec.first_byte.is_none() {
                    rec.first_byte = Some(job.started.elapsed());
                }
                if let Err(e) = session.write_response_body(Some(out), false).await {
                    // The client went away: stop the upstream's work too.
                    exchange.finish(&gw.connector).await;
                    return Err(e);
                }
            }
        }
        if let Translate::OllamaStream(t) = &translate {
            if t.failed() {
                // An error event went out instead of [DONE]: end here and close.
                exchange.finish(&gw.connector).await;
                session.set_keepalive(None);
                return session.write_response_body(None, true).await;
            }
        }
        if !ended {
            continue;
        }
        exchange.finish(&gw.connector).await;
        if let Translate::OllamaStream(t) = &translate {
            if !t.is_done() {
                let error = ApiError::upstream_broken(upstream.name(), "the stream ended early");
                return end_broken(session, error, true).await;
            }
        }
        if let Some(rest) = reader.rest() {
            session.write_response_body(Some(rest), false).await?;
        }
        let answer = reader.finish();
        if status == 200 {
            finish_answer(job, rec, leg, answer, flight);
        }
        return session.write_response_body(None, true).await;
    }
}

/// A non-streaming Ollama answer: read whole, translated, sent with its length.
async fn relay_whole_ollama(
    job: &Job<'_>,
    session: &mut Session,
    rec: &mut Record,
    leg: &Leg<'_>,
    mut exchange: Exchange,
    explain: &Explain<'_>,
    flight: &mut Option<Flight>,
) -> Result<()> {
    let gw = job.gw;
    let upstream = leg.upstream;
    let mut body = BytesMut::new();
    loop {
        match exchange.next().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                record_failure(gw, job.request_id, upstream, &e, "mid-response");
                exchange.finish(&gw.connector).await;
                return write_error(session, &e.to_api(upstream.name()), explain, &[]).await;
            }
        }
    }
    exchange.finish(&gw.connector).await;
    let json = match ollama::completion(&body, upstream.name()) {
        Ok(json) => json,
        Err(e) => return write_error(session, &e, explain, &[]).await,
    };
    let mut reader = AnswerReader::json(json.len());
    let json = reader.feed(Bytes::from(json));
    finish_answer(job, rec, leg, reader.finish(), flight);
    rec.first_byte = Some(job.started.elapsed());
    let header = response::json_header(200, json.len(), explain);
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(json), true).await
}

/// Accounts a complete successful answer and stores it when it came from the first upstream.
fn finish_answer(
    job: &Job<'_>,
    rec: &mut Record,
    leg: &Leg<'_>,
    answer: Answer,
    flight: &mut Option<Flight>,
) {
    super::chat::account(job.gw, rec, job.request, &leg.step, &answer, false);
    let Some((cache, key)) = job.store.filter(|_| leg.first) else {
        return;
    };
    if let Some(completion) = answer.completion {
        cache.store(key, Entry::new(completion, answer.json), flight.take());
        job.gw.metrics.cache_stores.inc();
    }
}

/// Ends an answer whose upstream failed midway: a stream gets an error event the SDKs raise and
/// a clean end; a JSON body is cut, so the client never takes it for a complete answer.
async fn end_broken(session: &mut Session, error: ApiError, streaming: bool) -> Result<()> {
    session.set_keepalive(None);
    if streaming {
        let event = Bytes::from(error.to_sse_event());
        session.write_response_body(Some(event), false).await?;
        return session.write_response_body(None, true).await;
    }
    Error::e_explain(ErrorType::ReadError, error.message)
}

/// The header of a translated stream.
fn sse_header(status: u16) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, Some(4))
        .unwrap_or_else(|_| ResponseHeader::build(200, Some(4)).expect("200 is a valid status"));
    let _ = resp.insert_header(
        http::header::CONTENT_TYPE,
        "text/event-stream; charset=utf-8",
    );
    let _ = resp.insert_header(http::header::CACHE_CONTROL, "no-cache");
    resp
}

/// Logs an upstream failure and counts it by upstream and reason.
pub(super) fn record_failure(
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
