//! The pipeline driven without a socket: a scripted upstream, a collecting downstream.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::{Collect, Incoming, Pipeline};
use crate::config::Config;
use crate::metrics::Record;
use crate::upstream::call::ExchangeError;
use crate::upstream::scripted::{Reply, Scripted};
use crate::vocab::{CacheOutcome, Route};

const YAML: &str = r#"
upstreams:
  local:
    route: local
    backends: ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    balance: round_robin
    model: small
    retry: {attempts: 2, backoff: 1ms, max_backoff: 2ms, retry_after_cap: 1s, budget: 5s}
    health: {failures: 10}
  cloud:
    route: cloud
    url: "http://10.0.0.3:8000"
    model: big
    api_key: sk-upstream-secret
    retry: {attempts: 1}
  native:
    kind: ollama
    route: local
    url: "http://10.0.0.4:11434"
    model: llama3.1
    fallback: none
models:
  - {name: auto, upstream: local}
  - {name: native, upstream: native}
default_route: {upstream: cloud}
cache: {enabled: true}
"#;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"big","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

fn pipeline() -> Pipeline<Scripted> {
    let config = Config::from_yaml(YAML, |_| None).expect("test config");
    Pipeline::new(config, Scripted::new()).expect("pipeline")
}

fn body(model: &str, extra: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"The capital of France?"}}]{extra}}}"#
    ))
}

/// Serves one request with these client headers; returns what the client got and the record.
async fn serve(p: &Pipeline<Scripted>, body: Bytes, headers: &HeaderMap) -> (Collect, Record) {
    let tenant = crate::auth::Tenant::of(headers, &p.config.tenant_secret);
    let incoming = Incoming {
        tenant: &tenant,
        standing: None,
        request_id: "req-test",
        started: Instant::now(),
        headers,
        path: "/v1/chat/completions",
    };
    let mut down = Collect::new(1 << 20);
    let mut rec = Record::new();
    let _ = p.chat(incoming, body, &mut down, &mut rec).await;
    (down, rec)
}

/// The value of one series in the rendered metrics (0 when absent).
fn metric(p: &Pipeline<Scripted>, series: &str) -> f64 {
    let text = String::from_utf8(p.metrics.render()).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn retries_then_falls_back_then_relays_the_stream() {
    let p = pipeline();
    let t = &p.transport;
    t.script("local/1", [Reply::status(503, r#"{"error":"busy"}"#, &[])]);
    t.script(
        "local/2",
        [Reply::Fail(ExchangeError::Unreachable("refused".into()))],
    );
    let events = [
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Par\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"is.\"},\"finish_reason\":\"stop\"}]}\n",
        "\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n",
    ];
    t.script("cloud", [Reply::pieces("text/event-stream", &events)]);

    let (got, rec) = serve(&p, body("auto", r#","stream":true"#), &HeaderMap::new()).await;

    let sent = t.take_sent();
    let order: Vec<&str> = sent.iter().map(|s| s.backend.as_str()).collect();
    assert_eq!(
        order,
        ["local/1", "local/2", "cloud"],
        "two tries, then the fallback"
    );
    assert_eq!(sent[0].json()["model"], "small");
    assert_eq!(
        sent[2].json()["model"],
        "big",
        "the fallback gets its own model"
    );
    assert_eq!(
        sent[2].json()["stream_options"]["include_usage"],
        true,
        "usage is asked for on the client's behalf"
    );
    assert_eq!(
        sent[2].head.headers["authorization"],
        "Bearer sk-upstream-secret"
    );
    assert!(sent[0].head.headers.get("authorization").is_none());

    assert_eq!(got.status(), 200);
    assert_eq!(got.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(got.header("x-switchyard-route"), Some("cloud"));
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(
        text.contains("\"Par\"") && text.contains("\"is.\""),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the client did not ask for the usage chunk: {text}"
    );
    assert!(got.ended && !got.closed);

    assert_eq!(rec.route, Some(Route::Cloud));
    assert_eq!(rec.usage.map(|u| u.prompt_tokens), Some(9));
    let retries = r#"switchyard_retries_total{reason="status",upstream="local"}"#;
    assert_eq!(metric(&p, retries), 1.0);
    let fell = r#"switchyard_fallbacks_total{from="local",reason="unreachable",to="cloud"}"#;
    assert_eq!(metric(&p, fell), 1.0);
}

#[tokio::test]
async fn a_rate_limit_past_the_cap_falls_back_and_the_client_hears_it() {
    let p = pipeline();
    let t = &p.transport;
    let limited = Reply::status(
        429,
        r#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        &[("retry-after", "30")],
    );
    t.script("local/1", [limited]);
    t.script("cloud", [Reply::Fail(ExchangeError::Timeout("first byte"))]);
    let (got, _) = serve(&p, body("auto", ""), &HeaderMap::new()).await;
    let order: Vec<String> = t.take_sent().into_iter().map(|s| s.backend).collect();
    assert_eq!(order, ["local/1", "cloud"], "a 30 s wait is not waited for");
    assert_eq!(
        got.status(),
        429,
        "the upstream's own word beats a later timeout"
    );
    assert_eq!(got.header("retry-after"), Some("30"));
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_and_a_broken_json_answer_is_a_502() {
    let p = pipeline();
    let t = &p.transport;
    let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"small\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Par\"},\"finish_reason\":null}]}\n\n";
    t.script(
        "local/1",
        [Reply::pieces("text/event-stream", &[first]).then_break()],
    );
    let (got, _) = serve(&p, body("auto", r#","stream":true"#), &HeaderMap::new()).await;
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(text.starts_with(first), "{text}");
    assert!(text.contains("data: {\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(got.closed, "ended cleanly, connection closed");
    assert_eq!(
        t.take_sent().len(),
        1,
        "nothing is retried once bytes went out"
    );

    t.script(
        "local/2",
        [Reply::pieces("application/json", &[&ANSWER[..40]]).then_break()],
    );
    let (got, _) = serve(&p, body("auto", ""), &HeaderMap::new()).await;
    assert_eq!(
        got.status(),
        502,
        "a broken JSON body is never relayed in part"
    );
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test]
async fn a_deterministic_answer_is_served_again_from_the_cache_as_json_or_sse() {
    let p = pipeline();
    let t = &p.transport;
    t.script("local/1", [Reply::json(ANSWER)]);
    let (first, rec) = serve(&p, body("auto", r#","temperature":0"#), &HeaderMap::new()).await;
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(rec.cache, Some(CacheOutcome::Miss));
    assert_eq!(&first.body[..], ANSWER.as_bytes());

    let (again, rec) = serve(&p, body("auto", r#","temperature":0.0"#), &HeaderMap::new()).await;
    assert_eq!(again.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(rec.cache, Some(CacheOutcome::Hit));
    assert_eq!(&again.body[..], ANSWER.as_bytes());

    let stream = r#","temperature":0,"stream":true"#;
    let (sse, _) = serve(&p, body("auto", stream), &HeaderMap::new()).await;
    let text = String::from_utf8(sse.body.to_vec()).unwrap();
    assert!(text.contains("\"Paris.\"") && text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        t.take_sent().len(),
        1,
        "one upstream call for three answers"
    );

    let mut other = HeaderMap::new();
    other.insert("authorization", HeaderValue::from_static("Bearer sk-other"));
    t.script("local/2", [Reply::json(ANSWER)]);
    let (theirs, _) = serve(&p, body("auto", r#","temperature":0"#), &other).await;
    assert_eq!(
        theirs.header("x-switchyard-cache"),
        Some("miss"),
        "another tenant never gets this tenant's answer"
    );
}

#[tokio::test]
async fn ollama_lines_become_openai_chunks() {
    let p = pipeline();
    let t = &p.transport;
    let lines = [
        "{\"model\":\"llama3.1\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Pa\"},\"done\":false}\n{\"model\":\"llama3.1\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"con",
        "tent\":\"ris.\"},\"done\":false}\n",
        "{\"model\":\"llama3.1\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":12,\"eval_count\":3}\n",
    ];
    t.script("native", [Reply::pieces("application/x-ndjson", &lines)]);
    let stream = r#","stream":true,"stream_options":{"include_usage":true}"#;
    let (got, rec) = serve(&p, body("native", stream), &HeaderMap::new()).await;
    let sent = t.take_sent();
    assert_eq!(sent[0].head.uri.path(), "/api/chat");
    assert_eq!(sent[0].json()["model"], "llama3.1");
    assert_eq!(
        got.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    let contents: Vec<String> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(contents.concat(), "Paris.");
    assert!(text.contains("\"prompt_tokens\":12"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(rec.usage.map(|u| u.completion_tokens), Some(3));
}

#[tokio::test]
async fn a_bad_body_gets_an_openai_error_and_reaches_no_upstream() {
    let p = pipeline();
    let (got, rec) = serve(&p, Bytes::from_static(b"{\"model\":"), &HeaderMap::new()).await;
    assert_eq!(got.status(), 400);
    assert_eq!(got.header("x-switchyard-route"), Some("gateway"));
    assert_eq!(rec.route, None);
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    assert!(p.transport.take_sent().is_empty());
}

const HYBRID_YAML: &str = r#"
upstreams:
  local:
    route: local
    url: "http://10.0.0.1:8000"
    model: small
    retry: {attempts: 1}
  cloud:
    route: cloud
    url: "http://10.0.0.3:8000"
    model: big
    api_key: sk-upstream-secret
    retry: {attempts: 1}
models:
  - {name: auto, upstream: local}
default_route: {upstream: cloud}
routing:
  classify: [auto]
  upstreams: {local: local, cloud: cloud, hybrid: cloud}
  rules:
    - name: long-document
      when: {feature: tokens, gt: 300}
      route: hybrid
hybrid:
  min_part_tokens: 100
  summary_tokens: 64
"#;

fn hybrid_pipeline() -> Pipeline<Scripted> {
    let config = Config::from_yaml(HYBRID_YAML, |_| None).expect("test config");
    Pipeline::new(config, Scripted::new()).expect("pipeline")
}

fn rag_body(stream: bool) -> Bytes {
    let doc: String = (0..120)
        .map(|i| format!("Fact {i}: the setting number {i} defaults to {}.", i * 3))
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({
        "model": "auto",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": format!("Context:\n{doc}\n\nQuestion: What does setting 77 default to?")}
        ]
    });
    Bytes::from(body.to_string())
}

fn summary(text: &str) -> Reply {
    Reply::json(
        &serde_json::json!({
            "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": "small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 12, "total_tokens": 912}
        })
        .to_string(),
    )
}

#[tokio::test]
async fn a_hybrid_request_reaches_the_cloud_with_its_document_summarized() {
    let p = hybrid_pipeline();
    let t = &p.transport;
    t.script("local", [summary("Setting 77 defaults to 231.")]);
    t.script("cloud", [Reply::json(ANSWER)]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-client"),
    );
    let (got, rec) = serve(&p, rag_body(false), &headers).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.header("x-switchyard-route"), Some("hybrid"));
    assert_eq!(got.header("x-switchyard-hybrid"), Some("summarized"));
    let before: u64 = got
        .header("x-switchyard-tokens-before")
        .unwrap()
        .parse()
        .unwrap();
    let after: u64 = got
        .header("x-switchyard-tokens-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(after * 10 < before, "{before} -> {after}");

    let sent = t.take_sent();
    let order: Vec<&str> = sent.iter().map(|s| s.backend.as_str()).collect();
    assert_eq!(order, ["local", "cloud"]);
    let ask = sent[0].json();
    assert_eq!(ask["model"], "small");
    assert_eq!(ask["temperature"], 0.0);
    assert_eq!(ask["max_tokens"], 64);
    assert!(ask["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("What does setting 77 default to?"));
    assert!(
        sent[0].head.headers.get("authorization").is_none(),
        "no key reaches the local model"
    );

    let cloud = sent[1].json();
    assert_eq!(cloud["model"], "big");
    assert_eq!(
        cloud["messages"][0],
        serde_json::json!({"role": "system", "content": "Answer briefly."})
    );
    assert_eq!(
        cloud["messages"][1]["content"],
        "Context:\nSetting 77 defaults to 231.\n\nQuestion: What does setting 77 default to?",
        "exactly the summary in place of the document, the question intact"
    );
    assert_eq!(&got.body[..], ANSWER.as_bytes());
    let h = rec.hybrid.expect("a hybrid report");
    assert_eq!(h.summarizer.prompt_tokens, 900);
    assert!(rec.baseline_cost >= rec.cost);
}

#[tokio::test]
async fn a_failing_local_model_sends_the_original_and_the_client_never_knows() {
    let p = hybrid_pipeline();
    let t = &p.transport;
    t.script(
        "local",
        [Reply::status(500, r#"{"error":"model crashed"}"#, &[])],
    );
    t.script("cloud", [Reply::json(ANSWER)]);
    let (got, _) = serve(&p, rag_body(false), &HeaderMap::new()).await;
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.header("x-switchyard-hybrid"),
        Some("skipped:local_failed")
    );
    assert_eq!(
        got.header("x-switchyard-tokens-before"),
        got.header("x-switchyard-tokens-after")
    );
    let sent = t.take_sent();
    assert_eq!(sent.len(), 2, "a summary never falls back to the cloud");
    let original: serde_json::Value = serde_json::from_slice(&rag_body(false)).unwrap();
    assert_eq!(
        sent[1].json()["messages"],
        original["messages"],
        "the original goes on"
    );

    // A streaming client gets the cloud's stream as usual.
    t.script("local", [summary("Setting 77 defaults to 231.")]);
    let events = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"231\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    t.script("cloud", [Reply::pieces("text/event-stream", &[events])]);
    let (got, _) = serve(&p, rag_body(true), &HeaderMap::new()).await;
    assert_eq!(got.header("x-switchyard-hybrid"), Some("summarized"));
    assert!(String::from_utf8_lossy(&got.body).ends_with("data: [DONE]\n\n"));
}

fn validating_pipeline() -> Pipeline<Scripted> {
    let yaml = HYBRID_YAML.replace(
        "  rules:\n",
        "  rules:\n    - name: schema-on-local\n      when: {feature: json_schema, eq: 1}\n      route: local\n      validate: true\n",
    );
    let config = Config::from_yaml(&yaml, |_| None).expect("test config");
    Pipeline::new(config, Scripted::new()).expect("pipeline")
}

fn schema_body(stream: bool) -> Bytes {
    let body = serde_json::json!({
        "model": "auto", "stream": stream,
        "messages": [{"role": "user", "content": "Ann is 41. Extract the person."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {
            "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]}}}
    });
    Bytes::from(body.to_string())
}

#[tokio::test]
async fn structured_output_from_the_local_model_is_checked_and_escalated_when_wrong() {
    let p = validating_pipeline();
    let t = &p.transport;
    // Valid: the local answer goes back, as JSON and replayed as a stream.
    t.script(
        "local",
        [
            summary(r#"{"name":"Ann","age":41}"#),
            summary(r#"{"name":"Ann","age":41}"#),
        ],
    );
    let (got, _) = serve(&p, schema_body(false), &HeaderMap::new()).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.header("x-switchyard-route"), Some("local"));
    assert!(got.header("x-switchyard-fallback").is_none());
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        r#"{"name":"Ann","age":41}"#
    );
    let (got, _) = serve(&p, schema_body(true), &HeaderMap::new()).await;
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(
        text.contains(r#"{\"name\":\"Ann\",\"age\":41}"#) && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let sent = t.take_sent();
    assert!(
        sent.iter().all(|s| s.backend == "local"),
        "the cloud was never asked"
    );
    assert_eq!(
        sent[1].json()["stream"],
        serde_json::Value::Null,
        "the local answer is asked whole"
    );

    // Invalid (a string for an integer): the cloud answers, the client sees an ordinary answer.
    t.script("local", [summary(r#"{"name":"Ann","age":"forty-one"}"#)]);
    t.script("cloud", [Reply::json(ANSWER)]);
    let (got, rec) = serve(&p, schema_body(false), &HeaderMap::new()).await;
    assert_eq!(got.status(), 200);
    assert_eq!(&got.body[..], ANSWER.as_bytes());
    assert_eq!(got.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(got.header("x-switchyard-route"), Some("cloud"));
    assert_eq!(rec.route, Some(Route::Cloud));
    let order: Vec<String> = t.take_sent().into_iter().map(|s| s.backend).collect();
    assert_eq!(order, ["local", "cloud"]);
    let checks = r#"switchyard_structured_output_checks_total{result="invalid"}"#;
    assert_eq!(metric(&p, checks), 1.0);
    assert_eq!(
        metric(
            &p,
            r#"switchyard_structured_output_checks_total{result="valid"}"#
        ),
        2.0
    );
    let fell = r#"switchyard_fallbacks_total{from="local",reason="invalid_output",to="cloud"}"#;
    assert_eq!(metric(&p, fell), 1.0);

    // A streaming client whose local answer fails the check gets the cloud's stream.
    t.script("local", [summary("Ann is forty-one.")]);
    let events = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"{}\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    t.script("cloud", [Reply::pieces("text/event-stream", &[events])]);
    let (got, _) = serve(&p, schema_body(true), &HeaderMap::new()).await;
    assert_eq!(got.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(String::from_utf8_lossy(&got.body), events);
    let sent = t.take_sent();
    assert_eq!(
        sent[1].json()["stream"],
        true,
        "the cloud is asked for a stream"
    );
}

#[test]
fn a_reload_keeps_unchanged_upstreams_the_cache_and_the_counters() {
    let config = Config::from_yaml(YAML, |_| None).expect("test config");
    let p = Pipeline::new(config, crate::upstream::client::Pooled::new()).expect("pipeline");
    let changed = YAML.replace("http://10.0.0.3:8000", "http://10.0.0.9:8000");
    let next = p
        .reloaded(Config::from_yaml(&changed, |_| None).expect("new config"))
        .expect("reloaded");
    assert!(
        Arc::ptr_eq(&p.upstreams[0], &next.upstreams[0]),
        "local: unchanged, kept"
    );
    assert!(
        Arc::ptr_eq(&p.upstreams[2], &next.upstreams[2]),
        "native: unchanged, kept"
    );
    assert!(
        !Arc::ptr_eq(&p.upstreams[1], &next.upstreams[1]),
        "cloud: a new URL"
    );
    assert_eq!(next.upstreams[1].pool.backends[0].url.host, "10.0.0.9");
    let (a, b) = (p.cache.as_ref().unwrap(), next.cache.as_ref().unwrap());
    assert!(Arc::ptr_eq(a, b), "the cache survives");
    assert!(Arc::ptr_eq(&p.metrics, &next.metrics));
    assert!(Arc::ptr_eq(&p.limits, &next.limits));
}

#[tokio::test]
async fn the_upstream_key_never_reaches_the_client() {
    const KEY: &str = "sk-upstream-secret";
    let p = pipeline();
    let t = &p.transport;

    // Quoted in a JSON error body and in a header (JSON-escaped forms: `upstream::scrub`).
    let quoted = format!(
        r#"{{"error":{{"message":"Bad request for key {KEY}","type":"invalid_request_error","param":null,"code":null}}}}"#
    );
    let echo = format!("Bearer {KEY}");
    t.script(
        "cloud",
        [Reply::status(400, &quoted, &[("x-echo", echo.as_str())])],
    );
    let (got, _) = serve(&p, body("gpt-4o", ""), &HeaderMap::new()).await;
    assert_eq!(got.status(), 400);
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(!text.contains(KEY) && text.contains("***"), "{text}");
    assert_eq!(got.header("x-echo"), Some("Bearer ***"));

    // Refused: the client hears that the gateway is misconfigured, not about its own key.
    t.script(
        "cloud",
        [Reply::status(
            401,
            &format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#),
            &[],
        )],
    );
    let (got, _) = serve(&p, body("gpt-4o", ""), &HeaderMap::new()).await;
    assert_eq!(got.status(), 502);
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_auth_failed");
    assert!(!String::from_utf8_lossy(&got.body).contains(KEY));

    // In a stream, cut across two pieces.
    let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"big\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    t.script(
        "cloud",
        [Reply::pieces(
            "text/event-stream",
            &[
                event,
                "data: {\"error\":{\"message\":\"key sk-upst",
                "ream-secret revoked\",\"type\":\"server_error\"}}\n\n",
                "data: [DONE]\n\n",
            ],
        )],
    );
    let (got, _) = serve(&p, body("gpt-4o", r#","stream":true"#), &HeaderMap::new()).await;
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(text.starts_with(event), "{text}");
    assert!(
        !text.contains(KEY) && text.contains("key *** revoked"),
        "{text}"
    );
}

#[tokio::test]
async fn answers_that_blame_the_request_never_eject_a_backend() {
    use crate::upstream::pool::BackendState;
    let p = pipeline();
    let t = &p.transport;
    let broken = r#"{"error":{"message":"cannot process this input","type":"server_error","param":null,"code":null}}"#;
    t.always("local/1", Reply::status(500, broken, &[]));
    t.always(
        "local/2",
        Reply::status(
            429,
            r#"{"error":{"message":"slow down","type":"requests","param":null,"code":null}}"#,
            &[],
        ),
    );
    t.always("cloud", Reply::json(ANSWER));
    for _ in 0..12 {
        let (got, _) = serve(&p, body("auto", ""), &HeaderMap::new()).await;
        assert_eq!(got.status(), 200, "the cloud answers");
    }
    let local = &p.upstreams[0];
    let now = std::time::Instant::now();
    for backend in &local.pool.backends {
        assert_eq!(
            backend.state(now),
            BackendState::Up,
            "{}: a 500 or 429 says the server is alive",
            backend.label
        );
    }
}
