//! A decided chat request and the upstream of its plan being tried: what the forward chain and
//! the relay both read, and the headers that explain their answers.

use super::explain::{self, Explain};
use super::{Incoming, Pipeline};
use crate::api::{ApiError, ChatRequest};
use crate::cache::{Cache, Key, Served};
use crate::config::UpstreamKind;
use crate::metrics::Record;
use crate::route::{Decision, Step};
use crate::upstream::{ollama, Upstream};
use crate::vocab::Route;

/// A decided request on its way upstream.
pub(super) struct Job<'a> {
    pub incoming: Incoming<'a>,
    pub request: &'a ChatRequest,
    pub decision: &'a Decision<'a>,
    /// The conversation key, for backends chosen by conversation.
    pub conversation: u64,
    /// Where a complete answer is stored: the key of what the client asked.
    pub store: Option<(&'a Cache, Key)>,
    /// Whether the plan's fallbacks are tried (not for the gateway's own calls).
    pub fallbacks: bool,
    /// What the hybrid stage did, for its headers.
    pub hybrid: Option<crate::hybrid::Report>,
    /// `from->to` when the request was sent on after its first upstream's answer was refused
    /// (structured output that did not hold).
    pub escalated: Option<&'a str>,
}

/// One upstream of the plan, as it is tried.
pub(super) struct Leg<'a> {
    pub upstream: &'a Upstream,
    pub step: Step<'a>,
    /// `x-switchyard-fallback` for its answers: `first->this`, when it is not the first.
    pub fallback: Option<String>,
}

impl Leg<'_> {
    /// Who answers on this leg, as a cache entry names it.
    pub(super) fn served(&self) -> Served {
        Served {
            upstream: self.upstream.name().into(),
            model: self.step.model.into(),
        }
    }
}

impl Job<'_> {
    /// The gateway's headers for an answer from `upstream` (through `backend`, its label), with
    /// what `rec` knows so far (the cache's part, the retries).
    pub(super) fn explain<'e, T>(
        &'e self,
        p: &Pipeline<T>,
        rec: &Record,
        upstream: &Upstream,
        backend: &'e str,
        fallback: Option<&'e str>,
    ) -> Explain<'e> {
        Explain {
            rule: Some(self.decision.rule),
            score: self.decision.score,
            cache: rec.cache,
            retries: Some(rec.retries),
            fallback: fallback.or(self.escalated),
            hybrid: self.hybrid,
            standing: self.incoming.standing,
            ..Explain::served(
                self.incoming.request_id,
                self.served_route(p, upstream),
                backend,
            )
        }
    }

    /// The route reported for an answer from `upstream`: the decided one, unless a fallback of
    /// the other side served it.
    pub(super) fn served_route<T>(&self, p: &Pipeline<T>, upstream: &Upstream) -> Route {
        if std::ptr::eq(upstream, &*p.upstreams[self.decision.upstream]) {
            self.decision.route
        } else {
            upstream.config.route
        }
    }
}

/// An OpenAI error for an upstream's error answer that is not one already.
/// An upstream's error answer as the client gets it: `Ok` with an OpenAI-compatible upstream's
/// JSON object, relayed as written but with the gateway's keys masked however they are spelled;
/// `Err` with the OpenAI-shaped error that replaces anything else (a local model server's
/// dialect, an HTML page, a refusal of the gateway's own key).
pub fn upstream_error_answer(
    upstream: &Upstream,
    status: u16,
    body: &[u8],
) -> Result<bytes::Bytes, ApiError> {
    if status == 401 && upstream.config.api_key.is_some() {
        return Err(ApiError::upstream_auth_failed(upstream.name()));
    }
    if upstream.config.kind == UpstreamKind::OpenAi && explain::is_json_body(body) {
        if let Some(clean) = upstream.scrub.json(body) {
            return Ok(clean);
        }
    }
    Err(upstream_error(upstream, status, &upstream.scrub.all(body)))
}

/// The OpenAI-shaped error for an upstream's error answer `body` (masked already).
pub(super) fn upstream_error(upstream: &Upstream, status: u16, body: &[u8]) -> ApiError {
    match upstream.config.kind {
        UpstreamKind::Ollama | UpstreamKind::Raw => {
            ollama::error(status, &ollama::error_message(body))
        }
        UpstreamKind::OpenAi => explain::wrap_upstream_error(status, upstream.name(), body),
    }
}
