//! What a request's trace says: the request as the GenAI conventions name it, the spans of its
//! classification and cache look-up, and at its end what the request became. Message text goes
//! in only when the configuration captures content.

use crate::api::{ChatRequest, Completion};
use crate::metrics::Record;
use crate::route::Decision;
use crate::telemetry::trace::{Context, Kind, Open, Span, Trace, Value};
use crate::vocab::CacheOutcome;

/// The request's own attributes on the server span.
pub fn asked(trace: &mut Trace, request: &ChatRequest) {
    trace.set("gen_ai.operation.name", "chat");
    trace.set("gen_ai.request.model", request.model.as_str());
    if let Some(n) = request.max_tokens {
        trace.set("gen_ai.request.max_tokens", n);
    }
    if let Some(t) = request.temperature {
        trace.set("gen_ai.request.temperature", t);
    }
    if let Some(p) = request.top_p {
        trace.set("gen_ai.request.top_p", p);
    }
    trace.set("gen_ai.request.stream", request.stream);
    if trace.capture_content {
        trace.set("gen_ai.input.messages", request.messages_json().to_string());
    }
}

/// The classification span: where the request was decided to go, and why.
pub fn decided(trace: &mut Trace, span: Open, decision: Option<&Decision<'_>>) {
    let mut attributes = Vec::new();
    if let Some(d) = decision {
        attributes.push(("switchyard.route", Value::from(d.route.as_str())));
        attributes.push(("switchyard.rule", Value::from(d.rule)));
        if let Some(score) = d.score {
            attributes.push(("switchyard.score", Value::from(score)));
        }
    }
    let error = decision.is_none().then(|| "refused".to_owned());
    trace.close(span, "classify", Kind::Internal, attributes, error);
}

/// The cache look-up span.
pub fn looked_up(trace: &mut Trace, span: Open, found: CacheOutcome) {
    let attributes = vec![("switchyard.cache", Value::from(found.as_str()))];
    trace.close(span, "cache lookup", Kind::Internal, attributes, None);
}

/// The answer's text, when content is captured.
pub fn answered(trace: &mut Trace, completion: &Completion) {
    if !trace.capture_content {
        return;
    }
    let messages: Vec<serde_json::Value> = completion
        .choices
        .iter()
        .map(|c| serde_json::json!({"role": "assistant", "content": c.content.as_deref().unwrap_or("")}))
        .collect();
    trace.set(
        "gen_ai.output.messages",
        serde_json::Value::from(messages).to_string(),
    );
}

/// Ends a request's trace: the server span gets what the request became (route, upstream,
/// cache, usage, cost, status) and its name, `chat {model}` for a chat as the GenAI conventions
/// name it, else the method (paths carry ids: not a name).
pub fn finished(
    mut t: Trace,
    rec: &Record,
    method: &str,
    path: &str,
    status: u16,
) -> (Context, Vec<Span>) {
    t.set("http.request.method", method);
    t.set("url.path", path);
    t.set("http.response.status_code", u64::from(status));
    t.set("switchyard.route", rec.route_label());
    t.set("switchyard.cache", rec.cache_label());
    t.set("switchyard.retries", u64::from(rec.retries));
    if let Some(rule) = &rec.rule {
        t.set("switchyard.rule", rule.as_str());
    }
    if let Some(score) = rec.score {
        t.set("switchyard.score", score);
    }
    if let Some(upstream) = &rec.upstream {
        t.set("switchyard.upstream", upstream.as_str());
    }
    if let Some(usage) = rec.usage {
        t.set("gen_ai.usage.input_tokens", usage.prompt_tokens);
        t.set("gen_ai.usage.output_tokens", usage.completion_tokens);
        t.set("switchyard.cost_usd", rec.cost);
        t.set("switchyard.baseline_cost_usd", rec.baseline_cost);
    }
    if let Some(h) = rec.hybrid {
        t.set("switchyard.hybrid.tokens_before", h.before);
        t.set("switchyard.hybrid.tokens_after", h.after);
    }
    let model = t.attributes.iter().find_map(|(k, v)| match v {
        Value::Str(m) if *k == "gen_ai.request.model" => Some(m.clone()),
        _ => None,
    });
    let name = match (path == "/v1/chat/completions", model) {
        (true, Some(model)) => format!("chat {model}"),
        (true, None) => "chat".to_owned(),
        (false, _) => method.to_owned(),
    };
    let error = (status >= 500 || status == 0).then(|| status.to_string());
    t.finish(name, error)
}
