//! The response cache, usage and cost accounting, `/stats` and the access log, over real
//! sockets: a `switchyard` process between a raw HTTP client and mock upstreams that number
//! their answers, so a replayed answer is told from a fresh one.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const CACHE: &str = r#"
cache:
  ttl: 1m
  max_bytes: 4MiB
pricing:
  baseline: gpt-4o-2024-08-06
  models:
    gpt-4o-2024-08-06: {input: 2.50, output: 10.00}
    llama-local: {input: 0.10, output: 0.20}
"#;

async fn setup(pause: Duration, extra: &str) -> (Mock, Gateway) {
    let local = Mock::start(counting(pause)).await;
    let cloud = Mock::start(counting(pause)).await;
    let yaml = two_upstreams(&local.url(), &cloud.url(), "") + CACHE + extra;
    // The cloud mock is never asked here: every request names `auto`, which goes local.
    std::mem::forget(cloud);
    (local, Gateway::start(&yaml))
}

fn ask(text: &str) -> Value {
    json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

fn streamed(mut body: Value, include_usage: bool) -> Value {
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn post_as(gw: &Gateway, key: &str, body: &Value, extra: &[(&str, &str)]) -> Response {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

async fn post(gw: &Gateway, body: &Value) -> Response {
    post_as(gw, CLIENT_KEY, body, &[]).await
}

/// The data of each SSE event of a complete response body.
fn events(r: &Response) -> Vec<String> {
    let text = r.text();
    assert!(text.ends_with("\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e}"))
                .to_owned()
        })
        .collect()
}

/// The streamed text of an SSE response, checking the framing OpenAI clients rely on.
fn streamed_text(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let evs = events(r);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finished = false;
    for e in &evs[..evs.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("chunk JSON");
        assert_eq!(v["object"], "chat.completion.chunk");
        for c in v["choices"].as_array().unwrap() {
            text.push_str(c["delta"]["content"].as_str().unwrap_or_default());
            finished |= c["finish_reason"] == json!("stop");
        }
    }
    assert!(finished, "{evs:?}");
    text
}

/// The usage chunk of an SSE response, if there is one.
fn usage_chunk(r: &Response) -> Option<Value> {
    events(r)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).expect("chunk JSON"))
        .find(|v| v["choices"] == json!([]) && v["usage"].is_object())
}

fn content(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_answer_is_served_again_in_either_form() {
    let (local, gw) = setup(Duration::ZERO, "").await;
    let first = post(&gw, &ask("capital of France?")).await;
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(content(&first), "answer 1 to: capital of France?");

    // The same request with other key order and spacing: served from the cache, byte for byte.
    let respelled = r#"{ "temperature": 0.0,
        "messages": [ {"content": "capital of France?", "role": "user"} ], "model": "auto" }"#;
    let auth = format!("Bearer {CLIENT_KEY}");
    let second = request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        respelled.as_bytes(),
    )
    .await;
    assert_eq!(second.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(second.header("x-switchyard-route"), Some("local"));
    assert_eq!(second.body, first.body);
    assert_eq!(local.requests().len(), 1, "a hit makes no upstream call");

    // Asked as a stream, the stored answer replays as a well-formed SSE stream.
    let stream = post(&gw, &streamed(ask("capital of France?"), false)).await;
    assert_eq!(stream.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(streamed_text(&stream), "answer 1 to: capital of France?");
    assert!(usage_chunk(&stream).is_none(), "not asked for");
    let with_usage = post(&gw, &streamed(ask("capital of France?"), true)).await;
    let usage = usage_chunk(&with_usage).expect("usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], MOCK_USAGE.0);
    assert_eq!(local.requests().len(), 1);

    // Not deterministic, or told not to: the upstream answers.
    let mut warm = ask("capital of France?");
    warm["temperature"] = json!(0.7);
    assert_eq!(
        post(&gw, &warm).await.header("x-switchyard-cache"),
        Some("bypass")
    );
    let r = post_as(
        &gw,
        CLIENT_KEY,
        &ask("capital of France?"),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(r.header("x-switchyard-cache"), Some("bypass"));
    assert_eq!(content(&r), "answer 3 to: capital of France?");
    // no-cache skips the look-up but stores the fresh answer for the next request.
    let r = post_as(
        &gw,
        CLIENT_KEY,
        &ask("capital of France?"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(content(&r), "answer 4 to: capital of France?");
    assert_eq!(
        content(&post(&gw, &ask("capital of France?")).await),
        "answer 4 to: capital of France?"
    );
    assert_eq!(local.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_stored_and_served_as_json() {
    let (local, gw) = setup(Duration::ZERO, "").await;
    let first = post(&gw, &streamed(ask("name a colour"), false)).await;
    assert_eq!(first.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(streamed_text(&first), "answer 1 to: name a colour");
    // The gateway asked the upstream for usage; the client, which did not, never sees it.
    assert_eq!(
        local.requests()[0].json()["stream_options"]["include_usage"],
        true
    );
    assert!(usage_chunk(&first).is_none(), "{}", first.text());

    let second = post(&gw, &ask("name a colour")).await;
    assert_eq!(second.header("x-switchyard-cache"), Some("hit"));
    let body = second.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer 1 to: name a colour"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], MOCK_USAGE.1);
    assert_eq!(local.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_never_gets_another_tenants_answer() {
    let (local, gw) = setup(Duration::ZERO, "").await;
    let a = post_as(&gw, "sk-tenant-a", &ask("secret plan"), &[]).await;
    let b = post_as(&gw, "sk-tenant-b", &ask("secret plan"), &[]).await;
    assert_eq!(b.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(content(&a), "answer 1 to: secret plan");
    assert_eq!(content(&b), "answer 2 to: secret plan");
    let a_again = post_as(&gw, "sk-tenant-a", &ask("secret plan"), &[]).await;
    assert_eq!(content(&a_again), "answer 1 to: secret plan");
    assert_eq!(local.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_and_errors_are_not_stored() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let local = Mock::start(move |req: &Recorded| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let model = req.json()["model"].as_str().unwrap_or_default().to_owned();
        match n {
            // A stream that dies before its end, then an error, then a good answer.
            0 => Reply::DieMidStream(stream_events(&model, &["half an"])[..2].to_vec()),
            1 => Reply::error(500, "server_error", "The server had an error"),
            _ => Reply::json(completion(&model, "whole")),
        }
    })
    .await;
    let yaml = two_upstreams(&local.url(), &refused_addr().to_string(), "") + CACHE;
    let gw = Gateway::start(&yaml);

    let broken = post(&gw, &streamed(ask("q"), false)).await;
    assert!(broken.text().contains("\"error\""), "{}", broken.text());
    // The local 500 sends the request to the cloud, which refuses: the client gets the local
    // upstream's own answer, the more telling of the two.
    let error = post(&gw, &ask("q")).await;
    assert_eq!(error.status, 500);
    assert_eq!(error.header("x-switchyard-fallback"), Some("local->cloud"));
    let good = post(&gw, &ask("q")).await;
    assert_eq!(good.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(content(&good), "whole");
    let hit = post(&gw, &ask("q")).await;
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(local.requests().len(), 3);
}

#[tokio::test]
async fn a_fallbacks_answer_is_stored_and_replayed_naming_it() {
    // The local model is down (every call a 500); the cloud answers.
    let local = Mock::start(|_: &Recorded| Reply::error(500, "server_error", "GPU fell off")).await;
    let cloud = Mock::start(counting(Duration::ZERO)).await;
    let log = scratch_file("access.log", "");
    let yaml = two_upstreams(&local.url(), &cloud.url(), "")
        + CACHE
        + &format!("access_log:\n  path: \"{}\"\n", log.display());
    let gw = Gateway::start(&yaml);

    let fresh = post(&gw, &ask("repeat me")).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_eq!(fresh.header("x-switchyard-fallback"), Some("local->cloud"));
    assert_eq!(fresh.header("x-switchyard-cache"), Some("miss"));
    let tried_local = local.requests().len();

    // The repeat neither tries the failing local model nor pays the cloud again, and says where
    // its answer came from.
    for body in [ask("repeat me"), streamed(ask("repeat me"), false)] {
        let hit = post(&gw, &body).await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.header("x-switchyard-cache"), Some("hit"));
        assert_eq!(hit.header("x-switchyard-upstream"), Some("cloud"));
        assert_eq!(hit.header("x-switchyard-route"), Some("cloud"));
        assert_eq!(
            hit.header("x-switchyard-fallback"),
            None,
            "nothing fell back"
        );
    }
    let again = post(&gw, &ask("repeat me")).await;
    assert_eq!(content(&again), content(&fresh));
    assert_eq!(cloud.requests().len(), 1);
    assert_eq!(local.requests().len(), tried_local);

    // Metrics and the access log put the hits on the cloud upstream, at no cost.
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_requests_total{cache="hit",route="cloud",status="200",tenant="anonymous",upstream="cloud"}"#
        ),
        3.0,
        "{text}"
    );
    let mut chat = Vec::new();
    for _ in 0..100 {
        chat = complete_lines(&log)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["path"] == "/v1/chat/completions")
            .collect();
        if chat.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat.len(), 4);
    assert_eq!(chat[1]["cache"], "hit");
    assert_eq!(chat[1]["upstream"], "cloud");
    assert_eq!(chat[1]["cost_usd"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_misses_in_flight_make_one_upstream_call() {
    // Each stream takes about 6 × 60 ms: long enough for every request to arrive meanwhile.
    let (local, gw) = setup(Duration::from_millis(60), "").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = gw.addr();
        let body = if i % 2 == 0 {
            streamed(ask("same question"), false)
        } else {
            ask("same question")
        };
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {CLIENT_KEY}");
            request(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth)],
                body.to_string().as_bytes(),
            )
            .await
        }));
        if i == 0 {
            // Let the first one reach the upstream and lead.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let mut results = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("request task");
        let text = if i % 2 == 0 {
            streamed_text(&r)
        } else {
            content(&r)
        };
        results.push((r.header("x-switchyard-cache").map(str::to_owned), text));
    }
    assert_eq!(local.requests().len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|(_, text)| text == "answer 1 to: same question"));
    let misses = results
        .iter()
        .filter(|(c, _)| c.as_deref() == Some("miss"))
        .count();
    assert_eq!(misses, 1, "{results:?}");
    let text = metrics(&gw).await;
    assert_eq!(
        value(
            &text,
            r#"switchyard_cache_lookups_total{result="coalesced"}"#
        ),
        7.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cost_savings_and_stats_add_up() {
    let log = scratch_file("access.log", "");
    let extra = format!("access_log:\n  path: \"{}\"\n", log.display());
    let (local, gw) = setup(Duration::ZERO, &extra).await;
    // Two fresh answers (one streamed), one hit, one bad request; scrapes and probes between
    // them are not traffic.
    let fresh = post(&gw, &ask("zebra crossing")).await;
    let stream = post(&gw, &streamed(ask("yellow submarine"), false)).await;
    for path in [
        "/metrics",
        "/health",
        "/health/live",
        "/health/ready",
        "/stats",
    ] {
        request(gw.addr(), "GET", path, &[], b"").await;
    }
    let hit = post(&gw, &ask("zebra crossing")).await;
    post(&gw, &json!({"model": "auto", "messages": []})).await;
    assert_eq!(local.requests().len(), 2);
    // The cost rides on a JSON answer's head, and on a hit's (nothing); a stream's head goes
    // out before its cost is known.
    let (p, c) = MOCK_USAGE;
    let one = (p as f64 * 0.10 + c as f64 * 0.20) / 1e6;
    let said = |r: &Response| {
        r.header("x-switchyard-cost-usd")
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert!((said(&fresh).expect("a cost") - one).abs() < 1e-12);
    assert_eq!(said(&hit), Some(0.0));
    assert_eq!(said(&stream), None);

    let text = metrics(&gw).await;
    let series = |dir: &str| {
        format!(
            r#"switchyard_tokens_total{{direction="{dir}",model="llama-local",source="reported",tenant="anonymous",upstream="local"}}"#
        )
    };
    assert_eq!(value(&text, &series("prompt")), 2.0 * p as f64, "{text}");
    assert_eq!(value(&text, &series("completion")), 2.0 * c as f64);
    let spent = 2.0 * (p as f64 * 0.10 + c as f64 * 0.20) / 1e6;
    let baseline = 3.0 * (p as f64 * 2.50 + c as f64 * 10.00) / 1e6;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let cost = value(
        &text,
        r#"switchyard_cost_usd_total{model="llama-local",tenant="anonymous",upstream="local"}"#,
    );
    assert!(close(cost, spent), "{cost} vs {spent}\n{text}");
    let saved = value(
        &text,
        r#"switchyard_baseline_cost_usd_total{model="llama-local",tenant="anonymous",upstream="local"}"#,
    ) - cost;
    assert!(close(saved, baseline - spent), "{saved}");
    assert_eq!(
        value(
            &text,
            r#"switchyard_requests_total{cache="hit",route="local",status="200",tenant="anonymous",upstream="local"}"#
        ),
        1.0
    );
    assert_eq!(value(&text, "switchyard_cache_entries"), 2.0);
    assert!(value(&text, "switchyard_cache_bytes") > 0.0);

    let stats = request(gw.addr(), "GET", "/stats", &[], b"").await.json();
    assert_eq!(stats["requests"]["total"], 4.0);
    assert_eq!(stats["requests"]["errors"], 1.0);
    assert_eq!(stats["cache"]["hits"], 1.0);
    assert_eq!(stats["cache"]["hit_rate"], 1.0 / 3.0);
    assert_eq!(stats["requests"]["by_route"]["local"]["requests"], 3.0);
    let saved = stats["cost_usd"]["saved"].as_f64().unwrap();
    assert!((saved - (baseline - spent)).abs() < 1e-6, "{stats}");

    // One line per request; no message text, no key.
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = complete_lines(&log);
        if lines.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = lines.join("\n");
    for secret in [CLIENT_KEY, CLOUD_KEY, "zebra", "submarine", "answer 1"] {
        assert!(!all.contains(secret), "{secret} in the access log:\n{all}");
    }
    let chat: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chat.len(), 4, "{all}");
    assert_eq!(chat[0]["cache"], "miss");
    assert_eq!(chat[0]["prompt_tokens"], p);
    assert_eq!(chat[0]["route"], "local");
    assert_eq!(chat[0]["rule"], "model-table");
    assert!(chat[0]["tenant"].as_str().unwrap().starts_with("key-"));
    assert_eq!(chat[2]["cache"], "hit");
    assert_eq!(chat[2]["cost_usd"], 0.0);
    assert_eq!(chat[3]["status"], 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_estimated_when_the_upstream_gives_none() {
    // An upstream that ignores include_usage, as llama.cpp's server does.
    let local = Mock::start(|req: &Recorded| {
        let model = req.json()["model"].as_str().unwrap_or_default().to_owned();
        Reply::Sse {
            events: stream_events(&model, &["twelve chars"]),
            pause: Duration::ZERO,
            split: false,
        }
    })
    .await;
    let yaml = two_upstreams(&local.url(), &refused_addr().to_string(), "");
    let gw = Gateway::start(&yaml);
    let mut body = streamed(ask("hi"), false);
    body["temperature"] = json!(1);
    assert_eq!(streamed_text(&post(&gw, &body).await), "twelve chars");
    let text = metrics(&gw).await;
    let estimated = value(
        &text,
        r#"switchyard_tokens_total{direction="completion",model="llama-local",source="estimated",tenant="anonymous",upstream="local"}"#,
    );
    assert_eq!(
        estimated, 3.0,
        "12 bytes of output, about 4 a token\n{text}"
    );
}
