//! Upstream kinds and resilience over real sockets: Ollama's native API translated both ways,
//! several backends with health checks, retries before the first byte, and fallback to the
//! cloud.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// A gateway whose `local` upstream has `backends` (Ollama's native API unless `kind` says
/// otherwise) and whose cloud is at `cloud`; `extra` goes into the local upstream's block.
fn config(kind: &str, backends: &[String], cloud: &str, extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
server:
  listen: "127.0.0.1:{{PORT}}"
  drain_timeout: 2s
upstreams:
  local:
    kind: {kind}
    route: local
    backends: [{list}]
    model: "llama3.1:8b"
    keep_alive: 10m
    health: {{interval: 100ms, timeout: 500ms, failures: 2, cooldown: 200ms}}
    retry: {{attempts: 2, backoff: 10ms, max_backoff: 50ms}}
    timeouts: {{connect: 1s, first_byte: 2s, idle: 2s, total: 10s}}
{extra}
  cloud:
    kind: openai
    route: cloud
    url: "{cloud}"
    model: gpt-4o
    api_key: "{CLOUD_KEY}"
    health: {{interval: 100ms}}
models:
  - {{name: auto, upstream: local}}
  - {{name: gpt-4o, upstream: cloud}}
default_route: {{upstream: cloud}}
"#
    )
}

fn ask(text: &str) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": text}]})
}

fn events(r: &Response) -> Vec<Value> {
    let text = r.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data event")).expect("JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_answers_become_openai_answers() {
    let local = Mock::start(ollama).await;
    let cloud = Mock::start(|_| Reply::error(500, "server_error", "unused")).await;
    let extra = "    num_ctx: 8192";
    let gw = Gateway::start(&config("ollama", &[local.url()], &cloud.url(), extra));

    let mut body = ask("hello");
    body["temperature"] = json!(0.3);
    body["max_tokens"] = json!(40);
    body["response_format"] = json!({"type": "json_object"});
    let r = chat(gw.addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 26, "completion_tokens": 7, "total_tokens": 33})
    );
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));

    let sent = &local.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/api/chat")
    );
    assert!(sent.header("authorization").is_none());
    let sent = sent.json();
    assert_eq!(sent["model"], "llama3.1:8b");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["format"], "json");
    assert_eq!(sent["keep_alive"], "10m");
    assert_eq!(
        sent["options"],
        json!({"temperature": 0.3, "num_predict": 40, "num_ctx": 8192})
    );

    // Streamed, with every NDJSON line split across two TCP writes.
    let mut body = ask("stream me");
    body["stream"] = json!(true);
    let r = chat(gw.addr(), &body).await;
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let evs = events(&r);
    let text: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: stream me");
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(
        evs.iter()
            .all(|e| !e["choices"].as_array().unwrap().is_empty()),
        "no usage chunk unless asked"
    );
    body["stream_options"] = json!({"include_usage": true});
    let evs = events(&chat(gw.addr(), &body).await);
    let last = evs.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);

    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_tokens_total{direction="prompt",model="llama3.1:8b",source="reported",tenant="anonymous",upstream="local"}"#
        ),
        3.0 * 26.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_tool_calls_and_errors() {
    let local = Mock::start(ollama).await;
    let gw = Gateway::start(&config(
        "ollama",
        &[local.url()],
        &refused_addr().to_string(),
        "",
    ));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut body = ask("weather?");
    body["tools"] = tools.clone();
    let v = chat(gw.addr(), &body).await.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(local.requests()[0].json()["tools"], tools);

    body["stream"] = json!(true);
    let evs = events(&chat(gw.addr(), &body).await);
    let delta = &evs[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(delta["index"], 0);
    assert_eq!(delta["function"]["name"], "get_weather");
    assert_eq!(
        evs.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Ollama's own errors, in OpenAI's shape.
    let yaml = config("ollama", &[local.url()], &refused_addr().to_string(), "")
        .replace("model: \"llama3.1:8b\"", "model: \"missing-model\"");
    let gw = Gateway::start(&yaml);
    let e = chat(gw.addr(), &ask("x")).await.assert_error(404);
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("missing-model"));

    // With a cloud to fall back to, a model not pulled locally costs the client nothing, and
    // /health says what to do about it.
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let yaml = config("ollama", &[local.url()], &cloud.url(), "")
        .replace("model: \"llama3.1:8b\"", "model: \"missing-model\"");
    let gw = Gateway::start(&yaml);
    let r = chat(gw.addr(), &ask("x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    let mut problem = Value::Null;
    for _ in 0..100 {
        let h = request(gw.addr(), "GET", "/health", &[], b"").await.json();
        problem = h["upstreams"][0]["backends"][0]["problem"].clone();
        if problem.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        problem
            .as_str()
            .is_some_and(|p| p.contains("ollama pull missing-model")),
        "{problem}"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            r#"switchyard_fallbacks_total{from="local",reason="model_missing",to="cloud"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_past_num_ctx_is_never_silently_truncated() {
    let local = Mock::start(ollama).await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let long = "word ".repeat(2000);
    let gw = Gateway::start(&config(
        "ollama",
        &[local.url()],
        &cloud.url(),
        "    num_ctx: 1024",
    ));
    let r = chat(gw.addr(), &ask(&long)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));
    assert!(local.requests().is_empty());
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_context_overflows_total{action="fallback",upstream="local"}"#
        ),
        1.0
    );

    let extra = "    num_ctx: 1024\n    context_overflow: reject";
    let gw = Gateway::start(&config("ollama", &[local.url()], &cloud.url(), extra));
    let e = chat(gw.addr(), &ask(&long)).await.assert_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["param"], "messages");
    assert!(local.requests().is_empty() && cloud.requests().len() == 1);

    // A prompt that fits, with a completion asked for that does not: the context holds both.
    let short = "word ".repeat(400);
    let mut body = ask(&short);
    assert_eq!(
        chat(gw.addr(), &body).await.status,
        200,
        "the prompt alone fits"
    );
    body["max_tokens"] = json!(900);
    let e = chat(gw.addr(), &body).await.assert_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("900 in the completion"),
        "{e}"
    );
    assert_eq!(local.requests().len(), 1);

    // Long words: estimated (bytes / 4) past the context, but near it, so the model's
    // vocabulary counts them (Llama 3's, `cl100k_base`), and they fit.
    let words = ask(&"internationalization ".repeat(250));
    assert_eq!(chat(gw.addr(), &words).await.status, 200);
    assert_eq!(local.requests().len(), 2);
    let extra = "    num_ctx: 1024\n    context_overflow: reject\n    tokenizer: estimate";
    let estimating = Gateway::start(&config("ollama", &[local.url()], &cloud.url(), extra));
    let e = chat(estimating.addr(), &words).await.assert_error(400);
    assert_eq!(
        e["code"], "context_length_exceeded",
        "the estimate alone refuses them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_backends_under_load_loses_no_request() {
    let a = Mock::start(ollama).await;
    let b = Mock::start(ollama).await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let gw = Arc::new(Gateway::start(&config(
        "ollama",
        &[a.url(), b.url()],
        &cloud.url(),
        "",
    )));

    // Sends `n` requests from 8 concurrent clients; every one must succeed.
    let load = |n: usize| {
        let gw = Arc::clone(&gw);
        async move {
            let done = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for c in 0..8 {
                let (gw, done) = (Arc::clone(&gw), Arc::clone(&done));
                tasks.push(tokio::spawn(async move {
                    for i in 0..n / 8 {
                        let r = chat(gw.addr(), &ask(&format!("client {c} request {i}"))).await;
                        assert_eq!(r.status, 200, "{}", r.text());
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("a client failed");
            }
            done.load(Ordering::SeqCst)
        }
    };

    assert_eq!(load(80).await, 80);
    let (before_a, before_b) = (a.requests().len(), b.requests().len());
    assert!(
        before_a > 10 && before_b > 10,
        "round robin: {before_a} / {before_b}"
    );

    // One backend dies under load: every request still succeeds, on the other one.
    let running = tokio::spawn(load(160));
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.stop();
    assert_eq!(running.await.unwrap(), 160);
    assert!(cloud.requests().is_empty(), "the other backend took it all");

    // Both die: the cloud answers, and once both are known down no request tries them.
    b.stop();
    assert_eq!(load(40).await, 40);
    let failures = |text: &str| {
        value(
            text,
            r#"switchyard_upstream_failures_total{reason="unreachable",upstream="local"}"#,
        )
    };
    let mut h = Value::Null;
    for _ in 0..60 {
        h = request(gw.addr(), "GET", "/health", &[], b"").await.json();
        if h["upstreams"][0]["available"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h["upstreams"][0]["available"], false, "{h}");
    let seen = failures(&metrics(&gw).await);
    let r = chat(gw.addr(), &ask("both down")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(load(40).await, 40);
    let text = metrics(&gw).await;
    assert_eq!(failures(&text), seen, "known-down backends are not tried");
    assert!(
        value(
            &text,
            r#"switchyard_fallbacks_total{from="local",reason="no_healthy_backend",to="cloud"}"#
        ) >= 41.0,
        "{text}"
    );

    // One comes back: health checks see it, and local traffic returns to it.
    let back = Mock::start_on(b.addr, ollama).await;
    let mut served = false;
    for _ in 0..60 {
        let r = chat(gw.addr(), &ask("are you back?")).await;
        assert_eq!(r.status, 200);
        if r.header("x-switchyard-route") == Some("local") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "traffic returned to the restarted backend");
    assert!(!back.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried_after_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let local = Mock::start(move |req: &Recorded| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::RateLimited {
                retry_after: "0.2".into(),
            }
        } else {
            Reply::json(completion("llama3.1:8b", &req.last_message()))
        }
    })
    .await;
    let gw = Gateway::start(&config(
        "openai",
        &[local.url()],
        &refused_addr().to_string(),
        "",
    ));
    let r = chat(gw.addr(), &ask("again")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(local.requests().len(), 2);
    assert_eq!(r.header("x-switchyard-fallback"), None);
    assert_eq!(r.header("x-switchyard-retries"), Some("1"));
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_retries_total{reason="rate_limited",upstream="local"}"#
        ),
        1.0
    );

    // A Retry-After longer than the cap is not waited for: the request falls back at once.
    let always = Mock::start(|_| Reply::RateLimited {
        retry_after: "120".into(),
    })
    .await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let gw = Gateway::start(&config("openai", &[always.url()], &cloud.url(), ""));
    let r = chat(gw.addr(), &ask("busy")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(always.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_local_model_times_out_into_the_cloud() {
    let local = Mock::start(|_| Reply::Hang).await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let yaml = config("openai", &[local.url()], &cloud.url(), "")
        .replace("first_byte: 2s", "first_byte: 300ms")
        .replace("attempts: 2", "attempts: 1");
    let gw = Gateway::start(&yaml);
    let r = chat(gw.addr(), &ask("hello?")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello?");
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_fallbacks_total{from="local",reason="timeout",to="cloud"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_started_is_never_retried() {
    let local = Mock::start(|_| {
        Reply::DieMidStream(stream_events("llama3.1:8b", &["par", "tial"])[..3].to_vec())
    })
    .await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let gw = Gateway::start(&config("openai", &[local.url()], &cloud.url(), ""));
    let mut body = ask("go");
    body["stream"] = json!(true);
    let r = chat(gw.addr(), &body).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("par") && text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(local.requests().len(), 1);
    assert!(cloud.requests().is_empty());
}

/// llama.cpp's server: `POST /completion` answers JSON, or SSE (without `[DONE]`) when streaming.
fn llama_cpp(req: &Recorded) -> Reply {
    if req.path != "/completion" {
        return Reply::error(404, "not_found_error", "File Not Found");
    }
    let body = req.json();
    let last = " the answer";
    if body["stream"] != json!(true) {
        return Reply::json(json!({"content": last, "stop": true, "stop_type": "eos",
            "tokens_predicted": 2, "tokens_evaluated": 30, "truncated": false}));
    }
    Reply::Sse {
        events: vec![
            json!({"content": " the", "stop": false}).to_string(),
            json!({"content": " answer", "stop": false}).to_string(),
            json!({"content": "", "stop": true, "stop_type": "limit", "tokens_predicted": 2, "tokens_evaluated": 30})
                .to_string(),
        ],
        pause: Duration::ZERO,
        split: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upstreams_get_a_rendered_llama_prompt() {
    let local = Mock::start(llama_cpp).await;
    let extra = "    raw_api: llamacpp";
    let gw = Gateway::start(&config(
        "raw",
        &[local.url()],
        &refused_addr().to_string(),
        extra,
    ));
    let body = json!({"model": "auto", "max_tokens": 8, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]});
    let v = chat(gw.addr(), &body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], " the answer");
    assert_eq!(v["usage"]["prompt_tokens"], 30);
    let sent = local.requests()[0].json();
    assert_eq!(
        sent["prompt"],
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(sent["n_predict"], 8);

    let mut body = body;
    body["stream"] = json!(true);
    let evs = events(&chat(gw.addr(), &body).await);
    let text: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, " the answer");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_request_counts_as_outstanding_until_it_ends() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let handler = |gate: Arc<tokio::sync::Notify>| {
        move |req: &Recorded| {
            if req.json()["stream"] == json!(true) {
                Reply::Gated {
                    first: stream_events("llama3.1:8b", &["slow"])[..2].to_vec(),
                    gate: Arc::clone(&gate),
                    rest: stream_events("llama3.1:8b", &["slow"])[2..].to_vec(),
                }
            } else {
                Reply::json(completion("llama3.1:8b", &req.last_message()))
            }
        }
    };
    let a = Mock::start(handler(Arc::clone(&gate))).await;
    let b = Mock::start(handler(Arc::clone(&gate))).await;
    let yaml = config(
        "openai",
        &[a.url(), b.url()],
        &refused_addr().to_string(),
        "    balance: least_outstanding",
    )
    // Health checks are not what this test is about: on a loaded machine a slow one could take
    // the idle backend out of the choice.
    .replace(
        "health: {interval: 100ms, timeout: 500ms,",
        "health: {interval: 60s, timeout: 10s,",
    );
    let gw = Gateway::start(&yaml);
    let mut body = ask("stream");
    body["stream"] = json!(true);
    let mut stream = open(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    )
    .await;
    assert!(stream.next_event().await.is_some(), "the stream started");
    let busy = if a.requests().len() == 1 { &a } else { &b };
    for i in 0..4 {
        assert_eq!(chat(gw.addr(), &ask(&format!("q{i}"))).await.status, 200);
    }
    assert_eq!(
        busy.requests().len(),
        1,
        "the streaming backend got nothing more"
    );
    gate.notify_waiters();
    while stream.next_event().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_health_path_marks_a_backend_down_and_a_refused_key_does_not() {
    // The health path answers 404 (a URL with one /v1 too many looks like this), then 401.
    let status = Arc::new(AtomicUsize::new(404));
    let calls = Arc::new(AtomicUsize::new(0));
    let (answer, seen) = (Arc::clone(&status), Arc::clone(&calls));
    let local = Mock::start(move |req: &Recorded| {
        if req.path == "/not-here" {
            seen.fetch_add(1, Ordering::SeqCst);
            let code = answer.load(Ordering::SeqCst) as u16;
            return Reply::error(code, "invalid_request_error", "no");
        }
        Reply::json(completion("llama3.1:8b", &req.last_message()))
    })
    .await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let yaml = config("openai", &[local.url()], &cloud.url(), "").replace(
        "health: {interval: 100ms,",
        "health: {path: /not-here, interval: 50ms, unhealthy_after: 1,",
    );
    let gw = Gateway::start(&yaml);
    // The backend's state in /health, once it is `want` (or the last one seen).
    let state_becomes = |want: &'static str| {
        let addr = gw.addr();
        async move {
            let mut h = Value::Null;
            for _ in 0..100 {
                h = request(addr, "GET", "/health", &[], b"").await.json();
                if h["upstreams"][0]["backends"][0]["state"] == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            h["upstreams"][0]["backends"][0]["state"].clone()
        }
    };
    assert_eq!(state_becomes("down").await, "down");
    let r = chat(gw.addr(), &ask("hi")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
    assert!(gw.log().contains("/not-here answered 404"), "{}", gw.log());
    // Ready: the cloud can serve.
    assert_eq!(
        request(gw.addr(), "GET", "/health/ready", &[], b"")
            .await
            .status,
        200
    );

    status.store(401, Ordering::SeqCst);
    assert_eq!(state_becomes("up").await, "up");
    assert!(gw.log().contains("refused with 401"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_too_small_for_the_prompt_is_skipped() {
    // The cloud is primary and fails; its fallback, a local model with a small context, cannot
    // take the prompt: the client hears of the cloud's failure, not of the local context.
    let local = Mock::start(ollama).await;
    let cloud = Mock::start(|_| Reply::error(503, "server_error", "The cloud is overloaded")).await;
    let yaml = config("ollama", &[local.url()], &cloud.url(), "    num_ctx: 1024").replace(
        "    health: {interval: 100ms}\n",
        "    fallback: local\n    retry: {attempts: 1}\n",
    );
    let gw = Gateway::start(&yaml);
    let long = "word ".repeat(2000);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": long}]});
    let r = chat(gw.addr(), &body).await;
    let e = r.assert_error(503);
    assert_eq!(e["message"], "The cloud is overloaded");
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("cloud->local"));
    assert!(local.requests().is_empty());
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_context_overflows_total{action="reject",upstream="local"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_local_model_spills_to_the_cloud_at_once() {
    // A local server that takes its time with every answer; the gateway lets it serve one
    // request at a time.
    let local = Mock::start(|req: &Recorded| Reply::Sse {
        events: stream_events("llama3.1:8b", &[&req.last_message(), " done"]),
        pause: Duration::from_millis(250),
        split: false,
    })
    .await;
    let cloud =
        Mock::start(|req: &Recorded| Reply::json(completion("gpt-4o", &req.last_message()))).await;
    let gw = Gateway::start(&config(
        "openai",
        &[local.url()],
        &cloud.url(),
        "    max_outstanding: 1",
    ));

    let busy = open_stream(gw.addr(), "auto", "first").await;
    assert_eq!(busy.status, 200);
    assert_eq!(busy.header("x-switchyard-upstream"), Some("local"));
    // The local server is full: the next request goes to the cloud without waiting.
    let r = chat(gw.addr(), &ask("second")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(local.requests().len(), 1, "the full server was not asked");
    busy.finish().await;
    // Free again: local serves.
    let r = chat(gw.addr(), &ask("third")).await;
    assert_eq!(r.header("x-switchyard-upstream"), Some("local"));
    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            r#"switchyard_fallbacks_total{from="local",reason="saturated",to="cloud"}"#
        ),
        Some(1.0),
        "{m}"
    );
}
