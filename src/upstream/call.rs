//! One call to one upstream: pick a backend, send, and follow the retry policy until there is
//! an answer to relay or the upstream has failed.
//!
//! The wire is behind [`Transport`], so the loop runs the same against pingora's pooled client
//! connections ([`super::client::Pooled`]) and against a scripted fake in tests.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use super::metrics::UpstreamMetrics;
use super::retry::{self, Policy, Verdict};
use super::{request_head, Backend, Lease, Upstream};
use crate::api::ApiError;
use crate::vocab::Reason;

/// The largest upstream error body kept (to pass on, or to build an OpenAI error from).
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// No connection could be made, or it was refused or reset before any answer.
    Unreachable(String),
    /// A time limit passed; names which one.
    Timeout(&'static str),
    /// The connection failed after the answer had started.
    Broken(String),
}

impl ExchangeError {
    /// The reason, for metrics.
    pub fn reason(&self) -> Reason {
        match self {
            ExchangeError::Unreachable(_) => Reason::Unreachable,
            ExchangeError::Timeout(_) => Reason::Timeout,
            ExchangeError::Broken(_) => Reason::Broken,
        }
    }

    /// The error the client sees.
    pub fn to_api(&self, upstream: &str) -> ApiError {
        match self {
            ExchangeError::Unreachable(detail) => ApiError::upstream_unreachable(upstream, detail),
            ExchangeError::Timeout(what) => ApiError::upstream_timeout(upstream, what),
            ExchangeError::Broken(detail) => ApiError::upstream_broken(upstream, detail),
        }
    }
}

/// Sends requests to backends.
pub trait Transport: Send + Sync {
    /// An exchange in progress.
    type Exchange: Exchange;

    /// Sends `head` and `body` to `backend` of `upstream` and waits for the answer's head,
    /// within the upstream's timeouts.
    fn send(
        &self,
        upstream: &Upstream,
        backend: &Backend,
        head: http::request::Parts,
        body: Bytes,
    ) -> impl Future<Output = Result<Self::Exchange, ExchangeError>> + Send;
}

/// An exchange whose answer's head has arrived.
pub trait Exchange: Send {
    /// The answer's head.
    fn head(&self) -> &http::response::Parts;

    /// The next piece of the body (everything that has arrived by now), or `None` at its end.
    fn next(&mut self) -> impl Future<Output = Result<Option<Bytes>, ExchangeError>> + Send;

    /// Ends the exchange: its connection goes back to the pool when the answer was read to the
    /// end, else it is closed (which also stops the upstream's work).
    fn finish(self) -> impl Future<Output = ()> + Send;
}

/// A request on its way to one upstream.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The client's headers, the template of the upstream's.
    pub headers: &'a HeaderMap,
    /// The path (and query) the upstream is asked for, below its URL's prefix.
    pub path: &'a str,
    /// The body, already in the upstream's dialect.
    pub body: &'a Bytes,
    /// The conversation key, for backends chosen by conversation.
    pub conversation: u64,
    /// The request's id, for log lines.
    pub request_id: &'a str,
    /// The trace the request is recorded in, when it is: each attempt sends a `traceparent`
    /// naming its own span.
    pub trace: Option<crate::telemetry::trace::Context>,
}

/// One try of a call, reported to the caller when it ends (at the answer's head, or its
/// failure).
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// 1 for the first try of this upstream, 2 for its first retry, …
    pub number: u32,
    /// The backend's label.
    pub backend: &'a str,
    /// The span id its `traceparent` named, when traced.
    pub span: Option<[u8; 8]>,
    /// When it started.
    pub started: std::time::SystemTime,
    /// The status the backend answered, or why there was none.
    pub outcome: Result<u16, &'static str>,
}

/// An answer to relay, and the lease on the backend that gives it (held until the answer has
/// been relayed, so that a stream counts as outstanding on its backend).
pub struct Answered<E> {
    /// The exchange, its head read.
    pub exchange: E,
    /// The backend's lease.
    pub lease: Lease,
}

/// The last word of an upstream that could not answer.
#[derive(Debug)]
pub enum Failure {
    /// The gateway's own error (unreachable, timeout, no backend).
    Api(ApiError),
    /// The upstream's error answer, as it was.
    Answer {
        /// Its status.
        status: u16,
        /// Its body, up to 64 KiB.
        body: Vec<u8>,
        /// Its `Retry-After`.
        retry_after: Option<String>,
    },
}

/// How a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The request cannot be addressed to this upstream (the client's mistake): answer it.
    Refused(ApiError),
    /// The upstream could not answer before its first byte; the next of the chain may.
    Failed {
        /// The last failure.
        last: Failure,
        /// Why, for the fallback metric.
        reason: Reason,
    },
}

/// Calls `upstream`: its backends in turn, with back-off, within its retry policy; tells
/// `observe` of each attempt as it ends.
pub async fn call<T: Transport>(
    transport: &T,
    upstream: &Upstream,
    request: Outgoing<'_>,
    metrics: &UpstreamMetrics,
    observe: &mut (dyn FnMut(Attempt<'_>) + Send),
) -> Result<Answered<T::Exchange>, CallError> {
    let policy = &upstream.config.retry;
    let began = Instant::now();
    let mut tried = Vec::new();
    let mut last = None;
    for n in 1.. {
        let Some(mut lease) = upstream.pool.select(request.conversation, &tried) else {
            if let Some(last) = last {
                return Err(last);
            }
            let (error, reason) = if upstream.pool.saturated() {
                (
                    ApiError::upstream_saturated(upstream.name()),
                    Reason::Saturated,
                )
            } else {
                (
                    ApiError::no_healthy_backend(upstream.name()),
                    Reason::NoHealthyBackend,
                )
            };
            return Err(CallError::Failed {
                last: Failure::Api(error),
                reason,
            });
        };
        tried.push(lease.index);
        let mut head =
            json_post(upstream, lease.backend(), &request).map_err(CallError::Refused)?;
        let span = request.trace.map(|t| {
            let span = crate::telemetry::trace::span_id();
            if let Ok(v) = http::HeaderValue::from_str(&t.header(span)) {
                head.headers.insert(crate::telemetry::trace::TRACEPARENT, v);
            }
            span
        });
        let mut attempt = Attempt {
            number: n,
            backend: lease.backend().label.as_str(),
            span,
            started: std::time::SystemTime::now(),
            outcome: Err("unreachable"),
        };
        let sent = Instant::now();
        let (failure, reason, asked) = match transport
            .send(upstream, lease.backend(), head, request.body.clone())
            .await
        {
            Ok(exchange) => {
                metrics.answered(upstream.name(), sent.elapsed());
                let status = exchange.head().status.as_u16();
                attempt.outcome = Ok(status);
                observe(attempt);
                let native = upstream.config.kind != crate::config::UpstreamKind::OpenAi;
                let verdict = policy.verdict(status, upstream.config.api_key.is_some(), native);
                if verdict == Verdict::Relay {
                    lease.succeeded();
                    return Ok(Answered { exchange, lease });
                }
                if verdict == Verdict::Misconfigured {
                    lease.succeeded();
                    tracing::error!(
                        "request {}: upstream {} refused the gateway's api_key (401)",
                        request.request_id,
                        upstream.name()
                    );
                    exchange.finish().await;
                    return Err(CallError::Failed {
                        last: Failure::Api(ApiError::upstream_auth_failed(upstream.name())),
                        reason: Reason::Credentials,
                    });
                }
                if retry::backend_failed(status) {
                    lease.failed();
                } else {
                    // It answered (429, 500, 408): alive, whatever it thinks of the request.
                    lease.succeeded();
                }
                tracing::warn!(
                    "request {}: upstream {} answered {status}",
                    request.request_id,
                    upstream.name()
                );
                let (failure, asked) = refusal(exchange, status).await;
                let reason = match status {
                    429 => Reason::RateLimited,
                    404 if native => Reason::ModelMissing,
                    _ => Reason::Status,
                };
                if verdict == Verdict::Fallback {
                    return Err(CallError::Failed {
                        last: failure,
                        reason,
                    });
                }
                (failure, reason, asked)
            }
            Err(e) => {
                attempt.outcome = Err(e.reason().as_str());
                observe(attempt);
                lease.failed();
                tracing::warn!(
                    "request {}: upstream {} failed before the answer: {e:?}",
                    request.request_id,
                    upstream.name()
                );
                metrics.failure(upstream.name(), e.reason());
                (Failure::Api(e.to_api(upstream.name())), e.reason(), None)
            }
        };
        drop(lease);
        let failed = CallError::Failed {
            last: failure,
            reason,
        };
        let Some(wait) = policy.next_try(n, began.elapsed(), asked) else {
            return Err(failed);
        };
        metrics.retry(upstream.name(), reason);
        last = Some(failed);
        tokio::time::sleep(wait).await;
    }
    unreachable!("the attempt loop returns")
}

/// The head of the request: the client's headers made the upstream's, and the body's framing.
fn json_post(
    upstream: &Upstream,
    backend: &Backend,
    request: &Outgoing<'_>,
) -> Result<http::request::Parts, ApiError> {
    let post = http::Method::POST;
    let mut head = request_head(&post, request.headers, upstream, backend, request.path)?;
    let h = &mut head.headers;
    // The gateway reads the answer (usage, the cache, errors): ask for it uncompressed.
    h.remove(http::header::ACCEPT_ENCODING);
    h.remove(http::header::TRANSFER_ENCODING);
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(request.body.len()),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(head)
}

/// Reads an upstream's error answer: its body (up to 64 KiB) and the wait it asks for.
async fn refusal<E: Exchange>(
    mut exchange: E,
    status: u16,
) -> (Failure, Option<std::time::Duration>) {
    let retry_after = exchange
        .head()
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_error_body(&mut exchange).await;
    exchange.finish().await;
    let asked = retry_after.as_deref().and_then(retry::retry_after);
    let failure = Failure::Answer {
        status,
        body,
        retry_after,
    };
    (failure, asked)
}

/// Reads up to 64 KiB of an error body; a failure leaves what was read.
pub async fn read_error_body<E: Exchange>(exchange: &mut E) -> Vec<u8> {
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
