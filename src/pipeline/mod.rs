//! What a chat request goes through, from its body to its answer: parse, decide, the cache, the
//! plan with its fallbacks, the upstream call, the relay of the answer, and its accounting.
//!
//! The pipeline knows nothing of pingora. Upstreams are reached through a
//! [`Transport`](crate::upstream::call::Transport) and answers go to a [`Downstream`], so the
//! same code answers a client's connection, fills a buffer for the gateway's own use, or runs
//! in a unit test against a scripted upstream.

mod cached;
pub mod downstream;
pub mod explain;
mod forward;
mod hybrid;
mod intent;
mod job;
mod metrics;
mod relay;
mod shadow;
#[cfg(test)]
mod tests;
pub mod traced;
mod validate;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use crate::api::ids;
use crate::api::{ApiError, ChatRequest};
use crate::auth::Tenant;
use crate::cache::{Cache, CacheMetrics, Flight};
use crate::config::{Config, KeyConfig};
use crate::hybrid::{HybridMetrics, Stage};
use crate::limit::{Charge, LimitMetrics, Limits, Refusal, Standing};
use crate::metrics::{Metrics, Record};
use crate::route::shares::Shares;
use crate::route::{self, Decision};
use crate::state::Shared;
use crate::upstream::call::Transport;
use crate::upstream::metrics::UpstreamMetrics;
use crate::upstream::Upstream;
use crate::vocab::{self, CacheOutcome, Route};
pub use downstream::{Collect, Downstream, Gone, Head};
pub use explain::Explain;
pub use job::upstream_error_answer;
pub use metrics::PipelineMetrics;
pub use shadow::{Job as ShadowJob, JUDGE_INSTRUCTIONS};

/// A chat request as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// When it arrived.
    pub started: Instant,
    /// The client's headers.
    pub headers: &'a HeaderMap,
    /// The path and query the client asked for (sent on to OpenAI-compatible upstreams).
    pub path: &'a str,
    /// Who asks (authenticated by the caller).
    pub tenant: &'a Tenant,
    /// What the tenant's key has left after this request, when it has limits (set by the
    /// pipeline).
    pub standing: Option<Standing>,
}

/// The configuration, the upstreams and the state every chat request shares.
pub struct Pipeline<T> {
    /// The configuration it runs.
    pub config: Arc<Config>,
    /// The upstreams, in configuration order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// The response cache, when enabled.
    pub cache: Option<Arc<Cache>>,
    /// The request metrics and the registry of all metrics.
    pub metrics: Arc<Metrics>,
    transport: T,
    counts: PipelineMetrics,
    upstream_metrics: UpstreamMetrics,
    cache_metrics: CacheMetrics,
    /// The hybrid stage and its summary cache.
    hybrid: Arc<Stage>,
    /// The keys' limits and budgets.
    limits: Arc<Limits>,
    /// The replicas' shared state, when configured (kept across reloads).
    shared: Option<Arc<Shared>>,
    /// Some upstream balances by conversation, so requests need their conversation key.
    conversations: bool,
    /// The served chat requests that may still be labelled (kept across reloads).
    pub records: Arc<crate::feedback::Records>,
    /// The thresholds that follow the configured shares, when shares are configured (kept
    /// across reloads that keep the same shares).
    pub shares: Option<Arc<Shares>>,
    /// Shadow judging's rate, budget and metrics (kept across reloads).
    shadow: Arc<shadow::Shadow>,
    /// The intent classifier, when configured (kept, with its answers, across reloads that
    /// leave it as it was).
    classifier: Option<Arc<intent::Classifier>>,
    intent_metrics: intent::IntentMetrics,
}

impl<T: Transport> Pipeline<T> {
    /// Builds the pipeline for a validated configuration, reaching upstreams through `transport`.
    pub fn new(config: Config, transport: T) -> Result<Pipeline<T>, String> {
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = Metrics::new().map_err(|e| format!("metrics: {e}"))?;
        let registry = metrics.registry();
        let failed = |e: prometheus::Error| format!("metrics: {e}");
        let counts = PipelineMetrics::register(registry).map_err(failed)?;
        let upstream_metrics = UpstreamMetrics::register(registry).map_err(failed)?;
        let cache_metrics = CacheMetrics::register(registry).map_err(failed)?;
        let hybrid_metrics = HybridMetrics::register(registry).map_err(failed)?;
        let hybrid = Arc::new(Stage::new(&config.hybrid, hybrid_metrics));
        let shared = Shared::connect(&config.state, registry)?.map(Arc::new);
        let limits = Arc::new(Limits::new(
            LimitMetrics::register(registry).map_err(failed)?,
            shared.clone(),
        ));
        let cache = config.cache.enabled.then(|| {
            let shared = shared.clone();
            Arc::new(Cache::new(&config.cache, cache_metrics.clone(), shared))
        });
        preload_vocabularies(&config);
        let records = Arc::new(crate::feedback::Records::new(
            &config.feedback,
            shared.clone(),
        ));
        let shares = shares_for(&config, None);
        let shadow = Arc::new(shadow::Shadow::register(registry).map_err(failed)?);
        let intent_metrics = intent::IntentMetrics::register(registry).map_err(failed)?;
        let classifier = classifier_for(&config, None, &intent_metrics)?;
        Ok(Pipeline {
            classifier,
            intent_metrics,
            shadow,
            records,
            shares,
            conversations: upstreams.iter().any(|u| u.pool.wants_conversation()),
            config: Arc::new(config),
            upstreams,
            cache,
            metrics: Arc::new(metrics),
            transport,
            counts,
            upstream_metrics,
            cache_metrics,
            hybrid,
            limits,
            shared,
        })
    }

    /// The pipeline for a new configuration, keeping what must survive a reload: the metrics,
    /// the response and summary caches, the limits' counters, the connection pool, and every
    /// upstream whose settings did not change (its backends' health and pooled connections
    /// with it). The cache's own settings take effect at the next start.
    pub fn reloaded(&self, config: Config) -> Result<Pipeline<T>, String>
    where
        T: Clone,
    {
        let upstreams = config
            .upstreams
            .iter()
            .map(|c| match self.upstreams.iter().find(|u| u.config == *c) {
                Some(same) => Ok(Arc::clone(same)),
                None => Upstream::new(c.clone()).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cache = match (&self.cache, config.cache.enabled) {
            (_, false) => None,
            (Some(cache), true) => Some(Arc::clone(cache)),
            (None, true) => Some(Arc::new(Cache::new(
                &config.cache,
                self.cache_metrics.clone(),
                self.shared.clone(),
            ))),
        };
        preload_vocabularies(&config);
        let shares = shares_for(&config, self.shares.as_ref());
        let classifier = classifier_for(&config, self.classifier.as_ref(), &self.intent_metrics)?;
        Ok(Pipeline {
            classifier,
            intent_metrics: self.intent_metrics.clone(),
            conversations: upstreams.iter().any(|u| u.pool.wants_conversation()),
            config: Arc::new(config),
            upstreams,
            cache,
            metrics: Arc::clone(&self.metrics),
            transport: self.transport.clone(),
            counts: self.counts.clone(),
            upstream_metrics: self.upstream_metrics.clone(),
            cache_metrics: self.cache_metrics.clone(),
            hybrid: Arc::clone(&self.hybrid),
            limits: Arc::clone(&self.limits),
            shared: self.shared.clone(),
            records: Arc::clone(&self.records),
            shares,
            shadow: Arc::clone(&self.shadow),
        })
    }

    /// Serves one chat request: parse, decide, answer from the cache when it can, else send it
    /// down its plan. `rec` collects what its metrics and access-log line report.
    pub async fn chat<D: Downstream>(
        &self,
        incoming: Incoming<'_>,
        body: Bytes,
        down: &mut D,
        rec: &mut Record,
    ) -> Result<(), Gone> {
        rec.cache = Some(CacheOutcome::Bypass);
        let request = match ChatRequest::parse(body) {
            Ok(r) => r,
            Err(e) => return self.refuse(&incoming, &e, down).await,
        };
        let span = rec.trace.as_ref().map(|t| t.open());
        let decided = self
            .decide(
                incoming.tenant,
                incoming.headers,
                &request,
                incoming.request_id,
            )
            .await;
        if let (Some(trace), Some(span)) = (rec.trace.as_deref_mut(), span) {
            traced::asked(trace, &request);
            traced::decided(trace, span, decided.as_ref().ok());
        }
        let decision = match decided {
            Ok(d) => d,
            Err(e) => return self.refuse(&incoming, &e, down).await,
        };
        self.note(&decision, rec);
        if let (Some(shares), Some(score)) = (&self.shares, decision.score) {
            // Shares count what the scorer decides; rules decide the rest.
            if decision.rule == route::SCORER {
                shares.observe(score, ids::unix_now());
            }
        }
        let mut incoming = incoming;
        let key = incoming.tenant.key.map(|i| &self.config.keys[i]);
        let charge = match key {
            None => None,
            Some(key) => match self.admit(key, &request, &decision).await {
                Ok(charge) => Some(charge),
                Err(refusal) => return self.refuse_limit(&incoming, refusal, down).await,
            },
        };
        incoming.standing = charge.map(|c| c.standing);
        let request_id = incoming.request_id;
        rec.shadow_wanted = self.shadow_wanted(&decision, key);
        let served = self.serve(incoming, &request, &decision, down, rec).await;
        self.records.keep(request_id, rec, Some(&request));
        if served.is_ok() {
            rec.shadow_job = self.shadow_job(request_id, &request, rec).map(Box::new);
        }
        if let Some(shares) = self
            .shares
            .as_ref()
            .filter(|s| s.config().cloud_budget.is_some())
        {
            shares.spend(self.cloud_cost(rec), ids::unix_now());
        }
        if let (Some(key), Some(charge)) = (key, charge) {
            // What the answer used upstream (estimated when the upstream said nothing); a
            // failed request and a cache hit used nothing.
            let used = match rec.cache {
                Some(CacheOutcome::Hit) => 0,
                _ => rec
                    .usage
                    .map_or(0, |u| u.prompt_tokens + u.completion_tokens),
            };
            self.limits
                .settle(key, &charge, used, rec.cost, ids::unix_now())
                .await;
        }
        served
    }

    /// Serves a decided, admitted request: the cache, a checked local answer, the hybrid
    /// stage, the plan.
    async fn serve<D: Downstream>(
        &self,
        incoming: Incoming<'_>,
        request: &ChatRequest,
        decision: &Decision<'_>,
        down: &mut D,
        rec: &mut Record,
    ) -> Result<(), Gone> {
        let cached = cached::Cached::of(self, &incoming, request, decision, rec);
        let span = rec.trace.as_ref().map(|t| t.open());
        let looked = cached.look_up().await;
        if let (Some(trace), Some(span)) = (rec.trace.as_deref_mut(), span) {
            let found = match &looked {
                cached::Looked::Hit(_) => CacheOutcome::Hit,
                cached::Looked::Miss(_) => rec.cache.unwrap_or(CacheOutcome::Bypass),
            };
            traced::looked_up(trace, span, found);
        }
        let mut flight = match looked {
            cached::Looked::Hit(entry) => {
                return cached::replay(self, &incoming, request, decision, &entry, down, rec).await
            }
            cached::Looked::Miss(flight) => flight,
        };
        if decision.validate && decision.route == Route::Local {
            if let Some(expect) = validate::expectation(request) {
                let checking = validate::Checking {
                    incoming,
                    request,
                    decision,
                    store: cached.store_key(),
                };
                match self
                    .checked(&checking, &expect, &mut flight, down, rec)
                    .await?
                {
                    None => return Ok(()),
                    Some(_) => return self.escalate(checking, flight, down, rec).await,
                }
            }
        }
        let shortened;
        let outcome = self
            .shorten(incoming.request_id, request, decision, rec)
            .await;
        let (sent, hybrid) = match outcome {
            Some(o) => match o.messages {
                Some(messages) => {
                    shortened = request.with_messages(messages);
                    (&shortened, Some(o.report))
                }
                None => (request, Some(o.report)),
            },
            None => (request, None),
        };
        let job = job::Job {
            incoming,
            request: sent,
            decision,
            conversation: self.conversation_key(request),
            store: cached.store_key(),
            fallbacks: true,
            hybrid,
            escalated: None,
        };
        job.run(self, down, rec, flight).await
    }

    /// Charges a keyed request to its key's limits: its estimated tokens (the prompt and
    /// `max_tokens`, or the configured default) and their cost at the decided upstream.
    async fn admit(
        &self,
        key: &KeyConfig,
        request: &ChatRequest,
        decision: &Decision<'_>,
    ) -> Result<Charge, Box<Refusal>> {
        let prompt = crate::classify::estimate_prompt_tokens(&request.messages);
        let completion = request
            .max_tokens
            .unwrap_or(self.config.limits.default_max_tokens);
        let price = self.config.price(decision.upstream, decision.model);
        let cost = price.cost(prompt, completion);
        self.limits
            .admit(key, prompt + completion, cost, ids::unix_now())
            .await
    }

    /// Answers a request over its key's limits: a 429 with `Retry-After` and `x-ratelimit-*`.
    async fn refuse_limit<D: Downstream>(
        &self,
        incoming: &Incoming<'_>,
        refusal: Box<Refusal>,
        down: &mut D,
    ) -> Result<(), Gone> {
        let explain = Explain {
            cache: Some(CacheOutcome::Bypass),
            standing: Some(refusal.standing),
            ..Explain::gateway(incoming.request_id)
        };
        let wait = (refusal.retry_after.ceil() as u64).max(1).to_string();
        let extra = [(http::header::RETRY_AFTER, wait.as_str())];
        let (head, body) = explain::error_answer(&refusal.error, &explain, &extra);
        down.respond(head, body).await
    }

    /// Sends a request whose local answer did not hold its structure to the next upstream of its
    /// plan (the cloud), which answers it whatever it says; without one, the plan runs as usual.
    /// Its answer is stored under the request's key, naming the upstream that gave it.
    async fn escalate<D: Downstream>(
        &self,
        checking: validate::Checking<'_>,
        flight: Option<Flight>,
        down: &mut D,
        rec: &mut Record,
    ) -> Result<(), Gone> {
        let validate::Checking {
            incoming,
            request,
            decision,
            store,
        } = checking;
        let plan = route::plan(&self.config, decision);
        let (escalated, label);
        let (decision, fallbacks, label) = match plan.get(1) {
            Some(next) => {
                let from = self.upstreams[decision.upstream].name();
                let to = self.upstreams[next.upstream].name();
                self.counts
                    .fallback(from, to, crate::vocab::Reason::InvalidOutput);
                escalated = Decision {
                    upstream: next.upstream,
                    model: next.model,
                    route: self.config.upstream(next.upstream).route,
                    ..decision.clone()
                };
                label = format!("{from}->{to}");
                (&escalated, false, Some(label.as_str()))
            }
            None => (decision, true, None),
        };
        rec.route = Some(decision.route);
        let job = job::Job {
            incoming,
            request,
            decision,
            conversation: self.conversation_key(request),
            store,
            fallbacks,
            hybrid: None,
            escalated: label,
        };
        job.run(self, down, rec, flight).await
    }

    /// Where `request` goes: a route the client forces with `x-switchyard-route` (when its key,
    /// or without keys the configuration, allows it), the classifier, or the model table; a 403
    /// for a model or route the tenant's key may not use.
    pub async fn decide<'a>(
        &'a self,
        tenant: &Tenant,
        headers: &HeaderMap,
        request: &'a ChatRequest,
        request_id: &str,
    ) -> Result<Decision<'a>, ApiError> {
        let key = tenant.key.map(|i| &self.config.keys[i]);
        if let Some(key) = key.filter(|k| !k.allows_model(&request.model)) {
            return Err(ApiError::forbidden(
                format!(
                    "The key `{}` may not use the model `{}`.",
                    key.name, request.model
                ),
                Some("model"),
                "model_not_allowed",
            ));
        }
        let forced = self.forced_route(tenant, headers)?;
        let thresholds = self.shares.as_ref().map(|s| s.thresholds());
        let mut decision = route::decide_at(&self.config, request, forced, thresholds);
        if decision.wants_intent(&self.config) {
            decision = self.with_intent(request, decision, request_id).await;
        }
        if let Some(key) = key.filter(|k| !k.allows_route(decision.route)) {
            return Err(ApiError::forbidden(
                format!(
                    "The key `{}` may not use the {} route, where this request goes.",
                    key.name, decision.route
                ),
                None,
                "route_not_allowed",
            ));
        }
        Ok(decision)
    }

    /// A scorer's decision revisited with the request's intent, when the classifier gives one.
    async fn with_intent<'a>(
        &'a self,
        request: &'a ChatRequest,
        decision: Decision<'a>,
        request_id: &str,
    ) -> Decision<'a> {
        let (Some(classifier), Some(text)) =
            (&self.classifier, crate::classify::intent::question(request))
        else {
            return decision;
        };
        let known = classifier
            .intent(&self.transport, &self.upstream_metrics, request_id, text)
            .await;
        match known {
            Some(intent) => route::with_intent(&self.config, request, decision, intent),
            None => decision,
        }
    }

    /// The route a client forces, when its key (without keys: the configuration) allows it;
    /// otherwise the header is ignored.
    fn forced_route(
        &self,
        tenant: &Tenant,
        headers: &HeaderMap,
    ) -> Result<Option<Route>, ApiError> {
        let allowed = match tenant.key {
            Some(i) => self.config.keys[i].force_route,
            None => self
                .config
                .routing
                .as_ref()
                .is_some_and(|r| r.allow_route_header),
        };
        let Some(value) = headers.get(vocab::header::ROUTE).filter(|_| allowed) else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or_default().trim();
        text.parse::<Route>().map(Some).map_err(|e| {
            ApiError::invalid_request(
                format!("{}: {e}", vocab::header::ROUTE),
                None,
                Some("invalid_route"),
            )
        })
    }

    /// What a served request cost on the cloud side: nothing when a local upstream answered,
    /// else the answer's cost without the local summarizer's part.
    fn cloud_cost(&self, rec: &Record) -> f64 {
        let local = rec.upstream.as_deref().is_some_and(|name| {
            self.config
                .upstreams
                .iter()
                .any(|u| u.name == name && u.route == Route::Local)
        });
        if local {
            0.0
        } else {
            (rec.cost - rec.summarizer_cost).max(0.0)
        }
    }

    /// Writes the decision into the record and counts it.
    fn note(&self, decision: &Decision<'_>, rec: &mut Record) {
        let upstream = &self.upstreams[decision.upstream];
        rec.route = Some(decision.route);
        rec.upstream = Some(upstream.name().to_owned());
        rec.rule = Some(decision.rule.to_owned());
        rec.score = decision.score;
        rec.features = decision.features.clone();
        rec.model = Some(self.config.model_label(decision.model).to_owned());
        self.counts.decision(decision.route, decision.rule);
    }

    /// The conversation key, which only conversation balancing needs (hashing the first
    /// messages is work otherwise wasted).
    fn conversation_key(&self, request: &ChatRequest) -> u64 {
        if self.conversations {
            crate::upstream::pool::conversation_key(request)
        } else {
            0
        }
    }

    /// Answers a request the gateway refuses before any route was chosen.
    async fn refuse<D: Downstream>(
        &self,
        incoming: &Incoming<'_>,
        error: &ApiError,
        down: &mut D,
    ) -> Result<(), Gone> {
        let explain = Explain {
            cache: Some(CacheOutcome::Bypass),
            ..Explain::gateway(incoming.request_id)
        };
        let (head, body) = explain::error_answer(error, &explain, &[]);
        down.respond(head, body).await
    }

    /// What a key has spent and has left, for its own `/stats`.
    pub async fn key_report(&self, key: &KeyConfig) -> serde_json::Value {
        // Unknown (null) rather than zero when the shared counters cannot be read.
        let (spent, standing) = self.limits.report(key, ids::unix_now()).await;
        let window = |w: Option<(u64, u64, f64)>| {
            w.map(|(limit, left, reset)| {
                serde_json::json!({"limit": limit, "remaining": left, "reset_seconds": reset})
            })
        };
        serde_json::json!({
            "key": key.name,
            "spent_usd": {"day": spent.map(|s| s.0), "month": spent.map(|s| s.1)},
            "budget_usd": {"day": key.budget_day, "month": key.budget_month},
            "requests_per_minute": window(standing.requests),
            "tokens_per_minute": window(standing.tokens),
        })
    }

    /// The transport the upstreams are reached through.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Brings the gauges that are read rather than counted up to date.
    pub fn refresh_gauges(&self) {
        self.upstream_metrics.refresh(&self.upstreams);
        self.counts.shares(self.shares.as_deref(), ids::unix_now());
        if let Some(cache) = &self.cache {
            cache.refresh();
        }
    }
}

/// Loads, on a thread of its own, the vocabularies the context guards of `config` count in (the
/// models of the upstreams with a `num_ctx`, and of the model table's entries that go there),
/// so that the first request near a limit does not wait tens of milliseconds for them.
fn preload_vocabularies(config: &Config) {
    let guarded = |i: usize| config.upstream(i).num_ctx.is_some();
    let upstream_models = config
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| Some((i, u.model.as_deref()?)));
    let table_models = config.models.iter().map(|m| {
        let model = m.target.model.as_deref().unwrap_or(&m.name);
        (m.target.upstream, model)
    });
    let mut wanted: Vec<crate::tokens::Vocabulary> = upstream_models
        .chain(table_models)
        .filter(|&(i, _)| guarded(i))
        .filter_map(|(i, model)| config.upstream(i).tokenizer.vocabulary(model))
        .collect();
    wanted.sort_by_key(|v| *v as u8);
    wanted.dedup();
    if !wanted.is_empty() {
        std::thread::spawn(move || wanted.into_iter().for_each(|v| v.load()));
    }
}

/// The intent classifier of `config`: `kept` when it serves the same settings (its answers stay),
/// else a new one.
fn classifier_for(
    config: &Config,
    kept: Option<&Arc<intent::Classifier>>,
    metrics: &intent::IntentMetrics,
) -> Result<Option<Arc<intent::Classifier>>, String> {
    let Some(wanted) = config.routing.as_ref().and_then(|r| r.classifier.as_ref()) else {
        return Ok(None);
    };
    match kept {
        Some(same) if same.serves(wanted) => Ok(Some(Arc::clone(same))),
        _ => Ok(Some(Arc::new(intent::Classifier::new(
            wanted,
            metrics.clone(),
        )?))),
    }
}

/// The shares component for `config`: `kept` when its configuration is the same, one that
/// carries on from it when that changed (its window, thresholds and the day's cloud spend),
/// none without shares.
fn shares_for(config: &Config, kept: Option<&Arc<Shares>>) -> Option<Arc<Shares>> {
    let routing = config.routing.as_ref()?;
    let wanted = routing.shares.as_ref()?;
    Some(match kept {
        Some(s) if s.config() == wanted => Arc::clone(s),
        Some(s) => Arc::new(Shares::reloaded(wanted, s)),
        None => Arc::new(Shares::new(wanted, routing.local_below, routing.cloud_from)),
    })
}
