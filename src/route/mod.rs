//! Which upstream and model a chat request goes to.
//!
//! In this version the choice is the model table of the configuration: a client-visible model
//! name maps to an upstream and the model name that upstream knows; names outside the table take
//! the default route.

pub mod passthrough;
pub mod shares;

use crate::api::ChatRequest;
use crate::classify::{Features, Intent};
use crate::config::{Config, ModelEntry, Routing};
pub use crate::vocab::Route;
use crate::vocab::{CachePolicy, Shorten};

/// Where one request goes, and why.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The model name to send upstream.
    pub model: &'a str,
    /// The route reported to the client.
    pub route: Route,
    /// What decided: a rule's name, `scorer`, `header`, `model-table` or `default-route`.
    pub rule: &'a str,
    /// The scorer's score of a classified request (whether or not the scorer decided).
    pub score: Option<f64>,
    /// The request's features, when it was classified.
    pub features: Option<Features>,
    /// What the deciding rule says about caching the answer.
    pub cache: CachePolicy,
    /// How the deciding rule wants a hybrid request shortened (else `hybrid.method`).
    pub shorten: Option<Shorten>,
    /// The deciding rule asks for structured output to be checked against its schema.
    pub validate: bool,
    /// A keep-local rule decided: the request never leaves the local side.
    pub pinned: bool,
    /// What the intent classifier said, when it was asked.
    pub intent: Option<std::sync::Arc<Intent>>,
}

impl Decision<'_> {
    /// Whether the rules left the request to the scorer, and rules on its intent could still
    /// decide it: the intent classifier is worth asking.
    pub fn wants_intent(&self, config: &Config) -> bool {
        self.rule == SCORER
            && config
                .routing
                .as_ref()
                .is_some_and(|r| r.classifier.is_some() && r.rules.uses_intent())
    }
}

/// The `rule` of a decision the scorer made.
pub const SCORER: &str = "scorer";

/// A scorer's decision revisited with the request's intent: the first rule on intents that
/// matches decides instead; else the scorer's decision stands. The intent is kept either way.
pub fn with_intent<'a>(
    config: &'a Config,
    req: &'a ChatRequest,
    decision: Decision<'a>,
    intent: std::sync::Arc<Intent>,
) -> Decision<'a> {
    let Some(routing) = &config.routing else {
        return decision;
    };
    let features = match &decision.features {
        Some(f) if decision.rule == SCORER => f,
        _ => return decision,
    };
    let decided = match routing.rules.first_intent_match(req, features, &intent) {
        Some(rule) => from_rule(config, routing, req, rule, decision.score, features.clone()),
        None => decision,
    };
    Decision {
        intent: Some(intent),
        ..decided
    }
}

/// Decides where `req` goes: a route forced by the client (already allowed by the caller), the
/// classifier for the models it covers, else the model table.
pub fn decide<'a>(config: &'a Config, req: &'a ChatRequest, forced: Option<Route>) -> Decision<'a> {
    decide_at(config, req, forced, None)
}

/// [`decide`], with the scorer's thresholds `(local_below, cloud_from)` given (when shares move
/// them) instead of the configured ones.
pub fn decide_at<'a>(
    config: &'a Config,
    req: &'a ChatRequest,
    forced: Option<Route>,
    thresholds: Option<(f64, f64)>,
) -> Decision<'a> {
    let entry = config.models.iter().find(|m| m.name == req.model);
    let Some(routing) = &config.routing else {
        return from_table(config, req, entry);
    };
    // Keep-local rules hold whatever model the request names or route it asks for.
    let mut features = None;
    if routing.rules.pins() {
        let f = Features::of(req);
        if let Some(rule) = routing.rules.first_pinned(req, &f) {
            return from_rule(config, routing, req, rule, None, f);
        }
        features = Some(f);
    }
    if let Some(route) = forced {
        return to_route(config, routing, req, route, "header", None, None, None);
    }
    let classified = routing.classify.contains(&req.model) || !routing.respect_explicit_model;
    if !classified {
        return from_table(config, req, entry);
    }
    let features = features.unwrap_or_else(|| Features::of(req));
    // The score is reported even when a rule decides: it tells how the scorer saw the request.
    let score = routing.scorer.score(req, &features);
    if let Some(rule) = routing.rules.first_match(req, &features) {
        return from_rule(config, routing, req, rule, Some(score), features);
    }
    let (local_below, cloud_from) = thresholds.unwrap_or((routing.local_below, routing.cloud_from));
    let route = if score < local_below {
        Route::Local
    } else if score < cloud_from {
        Route::Hybrid
    } else {
        Route::Cloud
    };
    to_route(
        config,
        routing,
        req,
        route,
        SCORER,
        None,
        Some(score),
        Some(features),
    )
}

/// The decision of a matching rule.
fn from_rule<'a>(
    config: &'a Config,
    routing: &'a Routing,
    req: &'a ChatRequest,
    rule: &'a crate::classify::Rule,
    score: Option<f64>,
    features: Features,
) -> Decision<'a> {
    let model = rule.model.as_deref();
    Decision {
        cache: rule.cache,
        shorten: rule.method,
        validate: rule.validate,
        pinned: rule.pin,
        ..to_route(
            config,
            routing,
            req,
            rule.route,
            &rule.name,
            model,
            score,
            Some(features),
        )
    }
}

fn from_table<'a>(
    config: &'a Config,
    req: &'a ChatRequest,
    entry: Option<&'a ModelEntry>,
) -> Decision<'a> {
    let (target, rule) = match entry {
        Some(m) => (&m.target, "model-table"),
        None => (&config.default_route, "default-route"),
    };
    Decision {
        upstream: target.upstream,
        model: target.model.as_deref().unwrap_or(&req.model),
        route: config.upstream(target.upstream).route,
        rule,
        score: None,
        features: None,
        cache: CachePolicy::Auto,
        shorten: None,
        validate: false,
        pinned: false,
        intent: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn to_route<'a>(
    config: &'a Config,
    routing: &'a Routing,
    req: &'a ChatRequest,
    route: Route,
    rule: &'a str,
    model: Option<&'a str>,
    score: Option<f64>,
    features: Option<Features>,
) -> Decision<'a> {
    let target = routing.target(route);
    let side = config.upstream(target.upstream).route;
    Decision {
        upstream: target.upstream,
        model: model.or(target.model.as_deref()).unwrap_or(&req.model),
        // A route whose upstream is disabled is served, and reported, by its fallback's side.
        route: if route == Route::Hybrid && side == Route::Cloud {
            Route::Hybrid
        } else {
            side
        },
        rule,
        score,
        features,
        cache: CachePolicy::Auto,
        shorten: None,
        validate: false,
        pinned: false,
        intent: None,
    }
}

/// One step of a request's plan: an upstream, and the model to ask it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The model name to send.
    pub model: &'a str,
}

/// Where a request may go, in order: the decision's upstream, then its fallback chain. A
/// fallback is asked for its own model (the primary's means nothing to it); disabled upstreams
/// are skipped and none is visited twice. A kept-local request's plan holds local upstreams
/// only, and may be empty.
pub fn plan<'a>(config: &'a Config, decision: &Decision<'a>) -> Vec<Step<'a>> {
    let mut steps = vec![Step {
        upstream: decision.upstream,
        model: decision.model,
    }];
    let mut visited = vec![decision.upstream];
    let mut at = decision.upstream;
    while let Some(next) = config.upstream(at).fallback {
        if visited.contains(&next) {
            break;
        }
        visited.push(next);
        at = next;
        let up = config.upstream(next);
        if up.enabled {
            steps.push(Step {
                upstream: next,
                model: up.model.as_deref().unwrap_or(decision.model),
            });
        }
    }
    if decision.pinned {
        steps.retain(|s| config.upstream(s.upstream).route == Route::Local);
    }
    steps
}

/// The dry-run answer of `POST /v1/route` and `switchyard route`.
///
/// For a hybrid request it adds what the hybrid stage would shorten (the parts found and their
/// sizes), without calling anything.
pub fn explain(config: &Config, decision: &Decision, request: &ChatRequest) -> serde_json::Value {
    let features = decision
        .features
        .as_ref()
        .map(|f| f.to_json())
        .unwrap_or_default();
    let mut out = serde_json::json!({
        "route": decision.route.as_str(),
        "rule": decision.rule,
        "score": decision.score,
        "model": decision.model,
        "upstream": config.upstream(decision.upstream).name,
        "features": features,
    });
    if let Some(intent) = &decision.intent {
        let score = Some(intent.score).filter(|s| s.is_finite());
        out["intent"] = serde_json::json!({"name": intent.name, "score": score});
    }
    let scorer = config.routing.as_ref().map(|r| &r.scorer);
    if let Some(scorer) = scorer.filter(|s| decision.score.is_some() && s.table_name().is_some()) {
        let nearest: Vec<serde_json::Value> = scorer
            .nearest(request, 5)
            .into_iter()
            .map(|(id, needs_cloud, similarity)| {
                serde_json::json!({"id": id, "needs_cloud": needs_cloud, "similarity": (similarity * 1000.0).round() / 1000.0})
            })
            .collect();
        out["semantic"] = serde_json::json!({
            "logit": scorer.semantic_share(request),
            "nearest": nearest,
        });
    }
    if decision.route == Route::Hybrid {
        let mut preview = crate::hybrid::Stage::preview(&config.hybrid, request);
        if let Some(method) = decision.shorten {
            preview["method"] = method.as_str().into();
        }
        out["hybrid"] = preview;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
upstreams:
  local: {kind: openai, route: local, url: "http://127.0.0.1:1", model: small}
  cloud: {kind: openai, route: cloud, url: "https://api.example.test", model: big, api_key: "${KEY:-}", require_api_key: true, fallback: local}
models:
  - {name: auto, upstream: local}
  - {name: gpt-4o, upstream: cloud, model: gpt-4o-2024-08-06}
default_route: {upstream: cloud}
"#;

    fn config(key: Option<&str>) -> Config {
        let key = key.map(str::to_owned);
        Config::from_yaml(YAML, move |n| if n == "KEY" { key.clone() } else { None })
            .expect("valid config")
    }

    fn req(model: &str) -> ChatRequest {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        ChatRequest::parse(bytes::Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn table_entries_map_to_upstream_and_model() {
        let c = config(Some("sk-test"));
        let r = req("auto");
        let d = decide(&c, &r, None);
        assert_eq!((d.upstream, d.model, d.route), (0, "small", Route::Local));
        let r = req("gpt-4o");
        let d = decide(&c, &r, None);
        assert_eq!(
            (d.upstream, d.model, d.route),
            (1, "gpt-4o-2024-08-06", Route::Cloud)
        );
    }

    #[test]
    fn unlisted_models_keep_their_name_on_the_default_route() {
        let c = config(Some("sk-test"));
        let r = req("gpt-4.1-nano");
        let d = decide(&c, &r, None);
        assert_eq!(
            (d.upstream, d.model, d.route),
            (1, "gpt-4.1-nano", Route::Cloud)
        );
    }

    #[test]
    fn without_a_key_cloud_traffic_goes_local_with_the_local_model() {
        let c = config(None);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        for name in ["gpt-4o", "auto", "anything-else"] {
            let r = req(name);
            let d = decide(&c, &r, None);
            assert_eq!(
                (d.upstream, d.model, d.route),
                (0, "small", Route::Local),
                "{name}"
            );
        }
    }

    const ROUTED: &str = r#"
upstreams:
  local: {route: local, url: "http://127.0.0.1:1", model: small}
  cloud: {route: cloud, url: "http://127.0.0.1:2", model: big, api_key: "${KEY:-}", require_api_key: true, fallback: local}
models:
  - {name: gpt-4o, upstream: cloud, model: gpt-4o}
default_route: {upstream: cloud}
routing:
  classify: [auto, smart]
  scorer: {local_below: 0.0, cloud_from: 1.0}
  rules:
    - {name: tools, when: {feature: tools, gt: 0}, route: cloud, model: big-tools}
    - {name: long, when: {feature: context_tokens, gt: 100}, route: hybrid}
    - name: hello
      when: {regex: ['(?i)^hello']}
      route: local
"#;

    fn routed(key: Option<&str>) -> Config {
        let key = key.map(str::to_owned);
        Config::from_yaml(ROUTED, move |n| if n == "KEY" { key.clone() } else { None }).unwrap()
    }

    fn chat(model: &str, text: &str, extra: serde_json::Value) -> ChatRequest {
        let mut body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        ChatRequest::parse(bytes::Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn classified_models_follow_rules_then_the_scorer() {
        let c = routed(Some("sk"));
        let long = "word ".repeat(200);
        let history = serde_json::json!({"messages": [
            {"role": "user", "content": long}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and now?"}]});
        let cases: Vec<(ChatRequest, Route, &str, &str)> = vec![
            (
                chat("auto", "hello there", serde_json::json!({})),
                Route::Local,
                "hello",
                "small",
            ),
            (
                chat("smart", "x", serde_json::json!({"tools": [{}]})),
                Route::Cloud,
                "tools",
                "big-tools",
            ),
            (chat("auto", "", history), Route::Hybrid, "long", "big"),
            // No rule: the scorer with thresholds 0 and 1 always says hybrid.
            (
                chat(
                    "auto",
                    "what is the capital of France?",
                    serde_json::json!({}),
                ),
                Route::Hybrid,
                "scorer",
                "big",
            ),
            // Explicit models keep the model table.
            (
                chat("gpt-4o", "hello", serde_json::json!({"tools": [{}]})),
                Route::Cloud,
                "model-table",
                "gpt-4o",
            ),
            (
                chat("other", "hello", serde_json::json!({})),
                Route::Cloud,
                "default-route",
                "other",
            ),
        ];
        for (req, route, rule, model) in &cases {
            let d = decide(&c, req, None);
            assert_eq!(
                (d.route, d.rule, d.model),
                (*route, *rule, *model),
                "{}",
                req.model
            );
            assert_eq!(
                d.score.is_some(),
                ["auto", "smart"].contains(&req.model.as_str())
            );
        }
    }

    #[test]
    fn a_forced_route_wins() {
        let c = routed(Some("sk"));
        let req = chat("auto", "hello", serde_json::json!({}));
        let d = decide(&c, &req, Some(Route::Cloud));
        assert_eq!(
            (d.route, d.rule, d.model, d.upstream),
            (Route::Cloud, "header", "big", 1)
        );
    }

    #[test]
    fn routes_of_a_disabled_cloud_are_served_and_reported_locally() {
        let c = routed(None);
        let req = chat("auto", "x", serde_json::json!({"tools": [{}]}));
        let d = decide(&c, &req, None);
        assert_eq!((d.route, d.upstream, d.rule), (Route::Local, 0, "tools"));
        let long = serde_json::json!({"messages": [{"role": "user", "content": "w ".repeat(400)}, {"role": "user", "content": "?"}]});
        let req = chat("auto", "", long);
        let d = decide(&c, &req, None);
        assert_eq!((d.route, d.model), (Route::Local, "small"));
    }

    #[test]
    fn plans_follow_the_fallback_chain_once() {
        let c = config(Some("sk"));
        let r = req("auto");
        let local = decide(&c, &r, None);
        // Local falls back to the cloud by default, with the cloud's own model.
        assert_eq!(
            plan(&c, &local),
            [
                Step {
                    upstream: 0,
                    model: "small"
                },
                Step {
                    upstream: 1,
                    model: "big"
                }
            ]
        );
        let r = req("gpt-4o");
        let cloud = decide(&c, &r, None);
        // The cloud falls back to local (configured); the chain stops before coming back.
        assert_eq!(
            plan(&c, &cloud),
            [
                Step {
                    upstream: 1,
                    model: "gpt-4o-2024-08-06"
                },
                Step {
                    upstream: 0,
                    model: "small"
                }
            ]
        );
        // A disabled cloud is no step at all.
        let c = config(None);
        let r = req("auto");
        assert_eq!(plan(&c, &decide(&c, &r, None)).len(), 1);
    }

    #[test]
    fn the_dry_run_explains_everything() {
        let c = routed(Some("sk"));
        let req = chat("auto", "hello", serde_json::json!({}));
        let v = explain(&c, &decide(&c, &req, None), &req);
        assert_eq!(v["route"], "local");
        assert_eq!(v["rule"], "hello");
        assert_eq!(v["upstream"], "local");
        assert_eq!(v["model"], "small");
        assert!(v["score"]
            .as_f64()
            .is_some_and(|s| (0.0..=1.0).contains(&s)));
        assert_eq!(v["features"]["messages"], 1.0);
        assert_eq!(
            v["features"].as_object().unwrap().len(),
            crate::classify::Feature::ALL.len()
        );
    }
}
