//! The cache's part in a chat request: whether it is used, what the look-up found, and the
//! replay of a stored answer as JSON or SSE.

use std::sync::Arc;

use bytes::Bytes;

use super::downstream::{Downstream, Gone};
use super::explain::{self, Explain};
use super::{Incoming, Pipeline};
use crate::api::ChatRequest;
use crate::cache::{Cache, Entry, Flight, Found, Key, Use};
use crate::metrics::{self, Record};
use crate::route::Decision;
use crate::upstream::call::Transport;
use crate::vocab::CacheOutcome;

/// How one request uses the cache, and its key when it does.
pub(super) struct Cached<'p> {
    usage: Use,
    key: Option<(&'p Cache, Key)>,
    /// How long to wait for an identical request in flight: the upstream's total time limit.
    patience: std::time::Duration,
}

/// What the look-up found.
pub(super) enum Looked {
    /// A stored answer.
    Hit(Arc<Entry>),
    /// Nothing: go upstream (leading the flight identical requests wait on, when there is one).
    Miss(Option<Flight>),
}

impl<'p> Cached<'p> {
    /// Decides from the rule's policy, the request's temperature and its `Cache-Control`; the
    /// key names the tenant, the upstream and model, and the request's content.
    pub(super) fn of<T: Transport>(
        p: &'p Pipeline<T>,
        incoming: &Incoming<'_>,
        request: &ChatRequest,
        decision: &Decision<'_>,
        rec: &mut Record,
    ) -> Cached<'p> {
        let tenant = incoming.tenant;
        let usage = match &p.cache {
            Some(_) => Use::decide(
                true,
                decision.cache,
                request.temperature,
                incoming
                    .headers
                    .get(http::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok()),
            ),
            None => Use::BYPASS,
        };
        let upstream = &p.upstreams[decision.upstream];
        let key = match (&p.cache, usage.store) {
            (Some(cache), true) => Some((
                &**cache,
                cache.key(&tenant.id, upstream.name(), decision.model, request),
            )),
            _ => None,
        };
        rec.tenant = Some(tenant.id.clone());
        rec.tenant_label = Some(tenant.label().to_owned());
        rec.cache = Some(usage.outcome());
        Cached {
            usage,
            key,
            patience: upstream.config.timeouts.total,
        }
    }

    /// Looks the request up, waiting for an identical one in flight.
    pub(super) async fn look_up(&self) -> Looked {
        let Some((cache, key)) = self.key.filter(|_| self.usage.lookup) else {
            return Looked::Miss(None);
        };
        match cache.find(key, self.patience).await {
            Found::Entry(entry) => Looked::Hit(entry),
            Found::Lead(flight) => Looked::Miss(flight),
        }
    }

    /// Where a fresh answer is stored.
    pub(super) fn store_key(&self) -> Option<(&'p Cache, Key)> {
        self.key
    }
}

/// Answers from a stored entry, as JSON or as an SSE stream, whichever the client asked for;
/// its headers name the upstream that gave the answer, and its accounting prices that one.
pub(super) async fn replay<T: Transport, D: Downstream>(
    p: &Pipeline<T>,
    incoming: &Incoming<'_>,
    request: &ChatRequest,
    decision: &Decision<'_>,
    entry: &Entry,
    down: &mut D,
    rec: &mut Record,
) -> Result<(), Gone> {
    rec.cache = Some(CacheOutcome::Hit);
    let (body, content_type) = if request.stream {
        let sse = entry.completion.to_sse(request.include_usage);
        (Bytes::from(sse), "text/event-stream")
    } else {
        (entry.json.clone(), "application/json")
    };
    // The upstream that answered, when it is still configured; else the decided one.
    let served = &entry.served;
    let (upstream, model) = p
        .upstreams
        .iter()
        .position(|u| u.name() == &*served.upstream)
        .map_or((decision.upstream, decision.model), |i| (i, &*served.model));
    let route = if upstream == decision.upstream {
        decision.route
    } else {
        p.config.upstream(upstream).route
    };
    rec.route = Some(route);
    rec.upstream = Some(p.upstreams[upstream].name().to_owned());
    rec.model = Some(p.config.model_label(model).to_owned());
    let usage = (entry.completion.usage, entry.completion.output_chars());
    metrics::account(&p.config, rec, request, (upstream, model), usage, true);
    let explain = Explain {
        rule: Some(decision.rule),
        score: decision.score,
        cache: Some(CacheOutcome::Hit),
        standing: incoming.standing,
        cost: Some(rec.cost),
        ..Explain::served(incoming.request_id, route, p.upstreams[upstream].name())
    };
    let head = explain::sized_head(200, content_type, body.len(), &explain);
    down.head(head).await?;
    rec.first_byte = Some(incoming.started.elapsed());
    down.finish(Some(body)).await
}
