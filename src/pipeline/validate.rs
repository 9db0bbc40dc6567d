//! Structured output on the local model, checked before it goes back: a request whose rule says
//! `validate: true` and that asks for a JSON schema, a JSON object or one forced tool call is
//! answered by the local model in full, the answer is checked, and when it does not hold the
//! request goes to the cloud instead, transparently. A streaming client gets the checked answer
//! replayed as SSE.

use bytes::Bytes;
use serde_json::Value;

use super::downstream::{Downstream, Gone};
use super::explain::{self, Explain};
use super::{Incoming, Pipeline};
use crate::api::{ChatRequest, Completion};
use crate::cache::{Cache, Entry, Flight, Key, Served};
use crate::metrics::{self, Record};
use crate::route::Decision;
use crate::upstream::call::Transport;

/// What a checked answer must hold.
pub(super) enum Expect {
    /// Content that is valid JSON under this schema.
    Schema(jsonschema::Validator),
    /// Content that is a JSON object.
    Object,
    /// A call of this function, with arguments valid under its parameters' schema.
    Call(String, Option<jsonschema::Validator>),
}

/// How a check ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checked {
    /// The answer holds.
    Valid,
    /// The answer came but does not hold.
    Invalid,
    /// No answer came (the local model failed).
    Failed,
}

impl Checked {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Checked::Valid => "valid",
            Checked::Invalid => "invalid",
            Checked::Failed => "failed",
        }
    }
}

/// What `request` asks its answer to hold, when it asks something checkable.
pub(super) fn expectation(request: &ChatRequest) -> Option<Expect> {
    if let Some(name) = request.forced_function() {
        let parameters = request
            .tools
            .iter()
            .find(|t| t["function"]["name"] == name)
            .map(|t| &t["function"]["parameters"])
            .filter(|p| p.is_object());
        return Some(Expect::Call(name.to_owned(), parameters.and_then(compile)));
    }
    match request.response_format_type() {
        Some("json_schema") => request.json_schema().and_then(compile).map(Expect::Schema),
        Some("json_object") => Some(Expect::Object),
        _ => None,
    }
}

/// A validator for a client's schema; `None` when it is not one the gateway can use (the
/// request then goes on without a check). Never panics on what a client sends.
fn compile(schema: &Value) -> Option<jsonschema::Validator> {
    std::panic::catch_unwind(|| jsonschema::validator_for(schema).ok())
        .ok()
        .flatten()
}

/// Whether `completion` holds what was expected.
pub(super) fn holds(expect: &Expect, completion: &Completion) -> bool {
    let Some(choice) = completion.choices.first() else {
        return false;
    };
    let parse = |text: &str| serde_json::from_str::<Value>(text.trim()).ok();
    match expect {
        Expect::Schema(v) => choice
            .content
            .as_deref()
            .and_then(parse)
            .is_some_and(|json| v.is_valid(&json)),
        Expect::Object => choice
            .content
            .as_deref()
            .and_then(parse)
            .is_some_and(|json| json.is_object()),
        Expect::Call(name, v) => choice.tool_calls.first().is_some_and(|call| {
            call.name == *name
                && parse(&call.arguments).is_some_and(|args| {
                    args.is_object() && v.as_ref().is_none_or(|v| v.is_valid(&args))
                })
        }),
    }
}

/// A decided request, its cache slot, and where its answer goes.
pub(super) struct Checking<'a> {
    pub incoming: Incoming<'a>,
    pub request: &'a ChatRequest,
    pub decision: &'a Decision<'a>,
    pub store: Option<(&'a Cache, Key)>,
}

impl<T: Transport> Pipeline<T> {
    /// Asks the local model for the whole answer and checks it. `Ok(None)` when it holds and
    /// was sent; `Ok(Some(outcome))` when the request must go to the cloud instead.
    pub(super) async fn checked<D: Downstream>(
        &self,
        c: &Checking<'_>,
        expect: &Expect,
        flight: &mut Option<Flight>,
        down: &mut D,
        rec: &mut Record,
    ) -> Result<Option<Checked>, Gone> {
        let whole = c.request.without_stream();
        let upstream = c.decision.upstream;
        let completion = match self.complete(c.incoming.request_id, &whole, upstream).await {
            Ok(completion) => completion,
            Err(e) => {
                tracing::warn!(
                    "request {}: the local model gave no answer to check: {e}",
                    c.incoming.request_id
                );
                self.counts.checked(Checked::Failed);
                return Ok(Some(Checked::Failed));
            }
        };
        if !holds(expect, &completion) {
            self.counts.checked(Checked::Invalid);
            return Ok(Some(Checked::Invalid));
        }
        self.counts.checked(Checked::Valid);
        let json = Bytes::from(completion.to_json());
        metrics::account(
            &self.config,
            rec,
            c.request,
            (upstream, c.decision.model),
            (completion.usage, completion.output_chars()),
            false,
        );
        let (body, content_type) = if c.request.stream {
            let sse = completion.to_sse(c.request.include_usage);
            (Bytes::from(sse), "text/event-stream")
        } else {
            (json.clone(), "application/json")
        };
        if let Some((cache, key)) = c.store {
            let served = Served {
                upstream: self.upstreams[upstream].name().into(),
                model: c.decision.model.into(),
            };
            cache.store(
                key,
                Entry::new(completion, Some(json), served),
                flight.take(),
            );
        }
        let explain = Explain {
            rule: Some(c.decision.rule),
            score: c.decision.score,
            cache: rec.cache,
            standing: c.incoming.standing,
            cost: Some(rec.cost),
            ..Explain::served(
                c.incoming.request_id,
                c.decision.route,
                self.upstreams[upstream].name(),
            )
        };
        let head = explain::sized_head(200, content_type, body.len(), &explain);
        down.head(head).await?;
        rec.first_byte = Some(c.incoming.started.elapsed());
        down.finish(Some(body)).await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Choice, ToolCall};
    use serde_json::json;

    fn request(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        ChatRequest::parse(Bytes::from(body.to_string())).unwrap()
    }

    fn answer(content: Option<&str>, call: Option<(&str, &str)>) -> Completion {
        Completion {
            choices: vec![Choice {
                content: content.map(str::to_owned),
                tool_calls: call
                    .map(|(name, args)| ToolCall {
                        id: "c".into(),
                        name: name.into(),
                        arguments: args.into(),
                    })
                    .into_iter()
                    .collect(),
                finish_reason: Some("stop".into()),
                ..Choice::default()
            }],
            ..Completion::default()
        }
    }

    #[test]
    fn answers_are_checked_against_what_was_asked() {
        let schema = request(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p",
            "schema": {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}}}}),
        );
        let e = expectation(&schema).expect("a schema");
        assert!(holds(&e, &answer(Some(r#"{"age": 41}"#), None)));
        assert!(
            !holds(&e, &answer(Some(r#"{"age": "41"}"#), None)),
            "wrong type"
        );
        assert!(
            !holds(&e, &answer(Some(r#"{"name": "x"}"#), None)),
            "missing field"
        );
        assert!(
            !holds(&e, &answer(Some("Sure! {\"age\": 41}"), None)),
            "not JSON"
        );

        let object = request(json!({"response_format": {"type": "json_object"}}));
        let e = expectation(&object).unwrap();
        assert!(holds(&e, &answer(Some(" {\"a\":1} "), None)));
        assert!(!holds(&e, &answer(Some("[1]"), None)));

        let call = request(json!({
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
        let e = expectation(&call).unwrap();
        assert!(holds(
            &e,
            &answer(None, Some(("get_weather", r#"{"city":"Paris"}"#)))
        ));
        assert!(!holds(
            &e,
            &answer(None, Some(("get_weather", r#"{"town":"Paris"}"#)))
        ));
        assert!(!holds(
            &e,
            &answer(None, Some(("get_time", r#"{"city":"Paris"}"#)))
        ));
        assert!(!holds(&e, &answer(Some("It is sunny."), None)));

        assert!(expectation(&request(json!({}))).is_none());
        let broken = request(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p",
            "schema": {"type": 12, "$ref": "http://example.test/x.json"}}}}),
        );
        assert!(
            expectation(&broken).is_none(),
            "an unusable schema is not checked"
        );
    }
}
