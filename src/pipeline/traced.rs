//! What the pipeline writes into a request's trace: the request as the GenAI conventions name
//! it, and the spans of its classification and cache look-up. Message text goes in only when
//! the configuration captures content.

use crate::api::{ChatRequest, Completion};
use crate::route::Decision;
use crate::telemetry::trace::{Kind, Open, Trace, Value};
use crate::vocab::CacheOutcome;

/// The request's own attributes on the server span.
pub(super) fn asked(trace: &mut Trace, request: &ChatRequest) {
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
pub(super) fn decided(trace: &mut Trace, span: Open, decision: Option<&Decision<'_>>) {
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
pub(super) fn looked_up(trace: &mut Trace, span: Open, found: CacheOutcome) {
    let attributes = vec![("switchyard.cache", Value::from(found.as_str()))];
    trace.close(span, "cache lookup", Kind::Internal, attributes, None);
}

/// The answer's text, when content is captured.
pub(super) fn answered(trace: &mut Trace, completion: &Completion) {
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
