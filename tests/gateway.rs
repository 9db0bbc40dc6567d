//! The gateway over real sockets: a real `switchyard` process between a raw HTTP client and
//! mock upstreams.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::sync::Notify;

/// Answers like OpenAI: echoes the last message, streams when asked, with the model it received.
fn echo(req: &Recorded) -> Reply {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let text = format!("echo: {}", req.last_message());
    if body["stream"] == json!(true) {
        Reply::Sse {
            events: stream_events(&model, &[&text]),
            pause: Duration::ZERO,
            split: false,
        }
    } else {
        Reply::json(completion(&model, &text))
    }
}

fn user(text: &str) -> serde_json::Value {
    json!([{"role": "user", "content": text}])
}

async fn echo_pair() -> (Mock, Mock, Gateway) {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let gw = Gateway::start(&two_upstreams(&local.url(), &cloud.url(), ""));
    (local, cloud, gw)
}

fn no_secret_leaks(mocks: &[&Mock]) {
    for mock in mocks {
        for r in mock.requests() {
            let all = format!("{:?}", r.headers);
            assert!(
                !all.contains(CLIENT_KEY),
                "client key reached an upstream: {all}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_answer_is_relayed_with_model_and_key_rewritten() {
    let (local, cloud, gw) = echo_pair().await;
    let sent = json!({"model": "gpt-4o", "messages": user("hello"), "temperature": 0.25, "x_custom": {"a": [1, 2]}});
    let resp = chat(gw.addr(), &sent).await;

    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.complete);
    let body = resp.json();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello");
    assert_eq!(
        body["model"], "gpt-4o-2024-08-06",
        "the upstream saw the rewritten model"
    );
    assert_eq!(resp.header("x-switchyard-route"), Some("cloud"));
    assert_eq!(resp.header("x-switchyard-upstream"), Some("cloud"));
    let id = resp.header("x-request-id").expect("request id");
    assert!(
        id.starts_with("req_") && id != "req_mock",
        "the gateway's own id: {id}"
    );
    assert_eq!(
        resp.header("x-switchyard-upstream-request-id"),
        Some("req_mock")
    );
    assert!(resp.header("openai-organization").is_none() && resp.header("set-cookie").is_none());
    assert!(!resp.text().contains(CLOUD_KEY));

    let seen = cloud.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {CLOUD_KEY}").as_str())
    );
    assert_eq!(r.header("host"), Some(cloud.addr.to_string().as_str()));
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-4o-2024-08-06");
    assert_eq!(
        r.json(),
        expected,
        "every other field passes through unchanged"
    );
    assert!(local.requests().is_empty());
    no_secret_leaks(&[&local, &cloud]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_upstream_gets_its_model_and_no_credentials() {
    let (local, cloud, gw) = echo_pair().await;
    let resp = chat(gw.addr(), &json!({"model": "auto", "messages": user("hi")})).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-switchyard-route"), Some("local"));
    assert_eq!(resp.header("x-switchyard-upstream"), Some("local"));
    let seen = local.requests();
    assert_eq!(seen[0].json()["model"], "llama-local");
    assert!(
        seen[0].header("authorization").is_none(),
        "no key for an upstream without one"
    );
    assert!(cloud.requests().is_empty());

    // A model outside the table keeps its name and takes the default route.
    let resp = chat(
        gw.addr(),
        &json!({"model": "gpt-4.1-nano", "messages": user("x")}),
    )
    .await;
    assert_eq!(resp.json()["model"], "gpt-4.1-nano");
    assert_eq!(resp.header("x-switchyard-route"), Some("cloud"));
    no_secret_leaks(&[&local, &cloud]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_id_is_echoed() {
    let (_local, _cloud, gw) = echo_pair().await;
    let body = json!({"model": "auto", "messages": user("hi")}).to_string();
    let resp = request(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[("x-request-id", "trace-42")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(resp.header("x-request-id"), Some("trace-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_arrives_incrementally() {
    let gate = Arc::new(Notify::new());
    let events = stream_events("gpt-4o", &["Hel", "lo"]);
    let (first, rest) = events.split_at(2);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let g = Arc::clone(&gate);
    let cloud = Mock::start(move |_| Reply::Gated {
        first: first.clone(),
        gate: Arc::clone(&g),
        rest: rest.clone(),
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let mut s = open_stream(gw.addr(), "gpt-4o", "hi").await;
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    assert_eq!(s.header("x-switchyard-route"), Some("cloud"));

    // The first two events arrive while the mock still holds the rest back.
    let e1 = tokio::time::timeout(Duration::from_secs(5), s.next_event())
        .await
        .expect("first event in time");
    let e1: serde_json::Value = serde_json::from_str(&e1.expect("an event")).unwrap();
    assert_eq!(e1["choices"][0]["delta"]["role"], "assistant");
    let e2 = tokio::time::timeout(Duration::from_secs(5), s.next_event())
        .await
        .expect("second event in time");
    assert!(e2.unwrap().contains("Hel"));

    gate.notify_one();
    let mut text = String::new();
    let mut done = false;
    while let Some(e) = s.next_event().await {
        if e == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        text.push_str(
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    assert_eq!(text, "lo");
    assert!(
        done && s.complete(),
        "stream ends with [DONE] and a complete body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_dripped_events_arrive_whole_and_in_order() {
    let pieces: Vec<String> = (0..20).map(|i| format!("p{i} ")).collect();
    let cloud = Mock::start(move |_| Reply::Sse {
        events: stream_events(
            "gpt-4o",
            &pieces.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        pause: Duration::from_millis(3),
        split: true,
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let mut s = open_stream(gw.addr(), "gpt-4o", "hi").await;
    let mut text = String::new();
    let mut events = 0;
    while let Some(e) = s.next_event().await {
        events += 1;
        if e != "[DONE]" {
            let v: serde_json::Value =
                serde_json::from_str(&e).unwrap_or_else(|err| panic!("{err}: {e}"));
            text.push_str(
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(events, 23);
    assert_eq!(text, (0..20).map(|i| format!("p{i} ")).collect::<String>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_body_arrives_byte_exact() {
    let (_local, cloud, gw) = echo_pair().await;
    let filler: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let sent = json!({"model": "gpt-4o", "messages": user(&filler)});
    let resp = chat(gw.addr(), &sent).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = cloud.requests();
    let body = &seen[0].body;
    assert!(body.len() > 1 << 20);
    let expected = sent
        .to_string()
        .replace("\"gpt-4o\"", "\"gpt-4o-2024-08-06\"");
    assert!(
        body == expected.as_bytes(),
        "the upstream got the body byte for byte"
    );
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        format!("echo: {filler}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let (local, cloud, gw) = echo_pair().await;
    let a = gw.addr();

    let e = request(a, "POST", "/v1/chat/completions", &[], b"{not json")
        .await
        .assert_error(400);
    assert_eq!(e["type"], "invalid_request_error");
    let e = request(a, "POST", "/v1/chat/completions", &[], b"[]")
        .await
        .assert_error(400);
    assert_eq!(e["code"], "invalid_type");
    let e = chat(a, &json!({"model": "auto"})).await.assert_error(400);
    assert_eq!(e["param"], "messages");
    let e = chat(a, &json!({"model": "auto", "messages": []}))
        .await
        .assert_error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("messages"), Some("empty_array"))
    );
    let e = chat(a, &json!({"messages": user("x")}))
        .await
        .assert_error(400);
    assert_eq!(e["param"], "model");

    // Over limits.max_body_bytes (2 MiB here): 413, announced or not.
    let big = vec![b' '; 3 << 20];
    request(a, "POST", "/v1/chat/completions", &[], &big)
        .await
        .assert_error(413);
    let chunked = {
        let mut body = Vec::new();
        for _ in 0..3 {
            body.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
            body.extend(std::iter::repeat_n(b' ', 1 << 20));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        body
    };
    request(
        a,
        "POST",
        "/v1/chat/completions",
        &[("transfer-encoding", "chunked")],
        &chunked,
    )
    .await
    .assert_error(413);

    let e = request(a, "GET", "/nowhere", &[], b"")
        .await
        .assert_error(404);
    assert!(e["message"].as_str().unwrap().contains("/nowhere"));
    let r = request(a, "GET", "/v1/chat/completions", &[], b"").await;
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(a, "DELETE", "/health", &[], b"").await;
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("GET"));

    assert!(
        local.requests().is_empty() && cloud.requests().is_empty(),
        "nothing bad was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_504() {
    let hang = Mock::start(|_| Reply::Hang).await;
    let timeouts = "    timeouts: {connect: 1s, first_byte: 300ms, idle: 300ms, total: 5s}\n    retry: {attempts: 1}";
    let gw = cloud_only(&hang.url(), timeouts);

    // Local refuses, then its fallback, the cloud, times out: the client gets the last error.
    let r = chat(gw.addr(), &json!({"model": "auto", "messages": user("x")})).await;
    let e = r.assert_error(504);
    assert_eq!(e["code"], "upstream_timeout");
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
    // The other way round: the cloud times out, then local refuses.
    let r = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("x")}),
    )
    .await;
    let e = r.assert_error(502);
    assert_eq!(e["code"], "upstream_unreachable");
    assert_eq!(r.header("x-switchyard-upstream"), Some("local"));
    assert_eq!(r.header("x-switchyard-fallback"), Some("cloud->local"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_times_out_with_an_error_event() {
    let gate = Arc::new(Notify::new());
    let g = Arc::clone(&gate);
    let cloud = Mock::start(move |_| Reply::Gated {
        first: stream_events("gpt-4o", &["a"])[..2].to_vec(),
        gate: Arc::clone(&g),
        rest: vec![],
    })
    .await;
    let timeouts = "    timeouts: {connect: 1s, first_byte: 2s, idle: 300ms, total: 5s}";
    let gw = cloud_only(&cloud.url(), timeouts);
    let mut s = open_stream(gw.addr(), "gpt-4o", "hi").await;
    assert_eq!(s.status, 200);
    let mut last = String::new();
    while let Some(e) = s.next_event().await {
        last = e;
    }
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_mid_stream_ends_with_an_sse_error_event() {
    let cloud = Mock::start(|_| {
        Reply::DieMidStream(stream_events("gpt-4o", &["par", "tial"])[..3].to_vec())
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let body = json!({"model": "gpt-4o", "stream": true, "messages": user("hi")}).to_string();
    let keep_alive = [("connection", "keep-alive")];
    let mut s = open(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &keep_alive,
        body.as_bytes(),
    )
    .await;
    assert_eq!(s.status, 200);
    let mut events = Vec::new();
    while let Some(e) = s.next_event().await {
        events.push(e);
    }
    assert_eq!(
        events.len(),
        4,
        "three relayed events and the error: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a broken stream never claims [DONE]"
    );
    let err: serde_json::Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("cloud"));
    assert!(
        s.complete(),
        "the stream itself ends cleanly after the error event"
    );
    assert!(s.closed_after_body().await, "and the connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_mid_json_body_is_a_clean_502_never_a_cut_answer() {
    let full = completion("gpt-4o", &"x".repeat(5000)).to_string();
    let cloud = Mock::start(move |_| Reply::DieMidBody(full.clone())).await;
    let gw = cloud_only(&cloud.url(), "");
    let resp = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("x")}),
    )
    .await;
    // The JSON answer is read whole before anything goes out: the client gets an error it can
    // act on, on a connection that stays usable.
    let e = resp.assert_error(502);
    assert!(
        e["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("upstream_")),
        "{e}"
    );
    assert!(resp.complete);
    assert!(!resp.text().contains("xxxxx"), "{}", resp.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_keep_their_status_and_shape() {
    let cloud = Mock::start(|req| match req.last_message().as_str() {
        "429" => Reply::error(429, "rate_limit_error", "Rate limit reached"),
        _ => Reply::Full {
            status: 502,
            content_type: "text/html",
            body: "<html><h1>502 Bad Gateway</h1></html>".into(),
        },
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let r = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("429")}),
    )
    .await;
    let e = r.assert_error(429);
    assert_eq!(e["message"], "Rate limit reached");
    assert_eq!(e["type"], "rate_limit_error");
    let e = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("html")}),
    )
    .await
    .assert_error(502);
    assert!(
        e["message"].as_str().unwrap().contains("502 Bad Gateway"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_openai_paths_pass_through_with_the_upstream_key() {
    let cloud = Mock::start(|req| {
        assert_eq!(req.path, "/v1/embeddings");
        Reply::json(json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": req.json()["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let auth = format!("Bearer {CLIENT_KEY}");
    let body = json!({"model": "text-embedding-3-small", "input": "hi"}).to_string();
    let r = request(
        gw.addr(),
        "POST",
        "/v1/embeddings",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.1, 0.2]));
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
    assert!(r.header("x-request-id").is_some());
    let seen = cloud.requests();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CLOUD_KEY}").as_str())
    );
    assert_eq!(
        seen[0].json()["model"],
        "text-embedding-3-small",
        "pass-through is unchanged"
    );
    no_secret_leaks(&[&cloud]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_get_their_own_answer() {
    let (local, cloud, gw) = echo_pair().await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let nonce = format!("nonce-{i}-{}", i * 7919);
                let model = if i % 2 == 0 { "auto" } else { "gpt-4o" };
                let stream = i % 3 == 0;
                let body = json!({"model": model, "stream": stream, "messages": user(&nonce)});
                let resp = chat(addr, &body).await;
                assert_eq!(resp.status, 200);
                let text = resp.text();
                assert!(
                    text.contains(&format!("echo: {nonce}\"")),
                    "request {i} got: {text}"
                );
                let others = text.matches("echo: nonce-").count();
                assert_eq!(others, 1, "exactly one answer in the body");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(local.requests().len() + cloud.requests().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered() {
    let (_local, _cloud, gw) = echo_pair().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"model": "auto", "messages": user("hi")}).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(900), conn.read(&mut buf))
        .await
        .expect("100 Continue comes before a client's 1 s wait")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_health_are_served_by_the_gateway() {
    let (local, _cloud, gw) = echo_pair().await;
    let r = request(gw.addr(), "GET", "/v1/models", &[], b"").await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["auto", "gpt-4o"]);
    assert_eq!(r.json()["object"], "list");
    let r = request(gw.addr(), "GET", "/v1/models/auto", &[], b"").await;
    assert_eq!(r.json()["id"], "auto");
    request(gw.addr(), "GET", "/v1/models/nope", &[], b"")
        .await
        .assert_error(404);

    let h = request(gw.addr(), "GET", "/health", &[], b"").await.json();
    assert_eq!(h["status"], "ok");
    let port = local.addr.port();
    assert_eq!(
        h["upstreams"][0],
        json!({"name": "local", "route": "local", "kind": "openai", "enabled": true, "available": true,
               "backends": [{"url": format!("127.0.0.1:{port}"), "state": "up", "outstanding": 0}]})
    );
    drop(local);

    // With fast health checks, a local upstream that refuses is soon reported down.
    let checks = "    health: {interval: 100ms, timeout: 500ms}";
    let gw2 = cloud_only(&_cloud.url(), checks);
    let mut h = serde_json::Value::Null;
    for _ in 0..100 {
        h = request(gw2.addr(), "GET", "/health", &[], b"").await.json();
        if h["status"] == "degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["upstreams"][0]["available"], false);
    assert_eq!(h["upstreams"][0]["backends"][0]["state"], "down");
    assert_eq!(h["upstreams"][1]["available"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    let cloud = Mock::start(|_| Reply::Sse {
        events: stream_events("gpt-4o", &["a", "b", "c", "d", "e"]),
        pause: Duration::from_millis(150),
        split: false,
    })
    .await;
    let mut gw = cloud_only(&cloud.url(), "");
    let mut s = open_stream(gw.addr(), "gpt-4o", "hi").await;
    assert!(s.next_event().await.is_some());
    gw.terminate();
    let mut rest = Vec::new();
    while let Some(e) = s.next_event().await {
        rest.push(e);
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("[DONE]"),
        "the stream finished: {rest:?}"
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        gw.log()
    );
}

#[test]
fn a_taken_port_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = two_upstreams("http://127.0.0.1:1", "http://127.0.0.1:1", "")
        .replace("{PORT}", &port.to_string());
    let path = std::env::temp_dir().join(format!("switchyard-port-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn check_reports_every_error_with_its_line() {
    let path = std::env::temp_dir().join(format!("switchyard-check-{}.yaml", std::process::id()));
    std::fs::write(&path, "server:\n  listen: nowhere\nupstreams:\n  a:\n    route: sideways\n    url: http://x\ndefault_route:\n  upstream: b\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2, column 11"), "{err}");
    assert!(err.contains("line 5, column 12"), "{err}");
    assert!(err.contains("line 8"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", "conf/switchyard.yaml"])
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("OPENAI_API_KEY").count() + err.matches("disabled").count(),
        1,
        "one warning line: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_to_a_dead_upstream_is_an_openai_502() {
    let gw = cloud_only(&format!("http://{}", refused_addr()), "");
    let r = embeddings(gw.addr()).await;
    let e = r.assert_error(502);
    assert_eq!(e["code"], "upstream_unreachable");
    assert_eq!(r.header("x-switchyard-upstream"), Some("cloud"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_clients_are_served() {
    let (_local, cloud, gw) = echo_pair().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    for stream in [false, true] {
        let body =
            json!({"model": "gpt-4o", "stream": stream, "messages": user("over h2")}).to_string();
        let req = http::Request::post(format!("http://{}/v1/chat/completions", gw.addr()))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(bytes::Bytes::from(body), true).unwrap();
        let resp = resp.await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-route"], "cloud");
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("echo: over h2"), "{text}");
        assert_eq!(text.contains("data: [DONE]"), stream, "{text}");
    }
    // The upstream was spoken to in HTTP/1.1 whatever the client spoke.
    let seen = cloud.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.version == "HTTP/1.1"),
        "{:?}",
        seen.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_and_used() {
    let (cloud, pem) = Mock::start_tls(echo).await;
    let url = format!("https://localhost:{}", cloud.addr.port());
    let yaml = two_upstreams(&refused_addr().to_string(), &url, "");
    let roots = scratch_file("roots.pem", &pem);
    let roots = roots.to_str().unwrap();

    let gw = Gateway::start_with_env(&yaml, &[("SSL_CERT_FILE", roots)]);
    for _ in 0..3 {
        let resp = chat(
            gw.addr(),
            &json!({"model": "gpt-4o", "messages": user("secure")}),
        )
        .await;
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), gw.log());
        assert_eq!(
            resp.json()["choices"][0]["message"]["content"],
            "echo: secure"
        );
    }
    let seen = cloud.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].header("host"),
        Some(format!("localhost:{}", cloud.addr.port()).as_str())
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CLOUD_KEY}").as_str())
    );

    // A certificate the gateway does not trust is refused, not used.
    let untrusting = Gateway::start_with_env(&yaml, &[("SSL_CERT_FILE", "/dev/null")]);
    let e = chat(
        untrusting.addr(),
        &json!({"model": "gpt-4o", "messages": user("x")}),
    )
    .await
    .assert_error(502);
    assert_eq!(e["code"], "upstream_unreachable");
    assert_eq!(
        cloud.requests().len(),
        3,
        "nothing was sent over the untrusted connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_to_a_silent_upstream_times_out_with_a_504() {
    let hang = Mock::start(|_| Reply::Hang).await;
    let timeouts = "    timeouts: {connect: 1s, first_byte: 300ms, idle: 300ms, total: 5s}";
    let gw = cloud_only(&hang.url(), timeouts);
    let r = embeddings(gw.addr()).await;
    let e = r.assert_error(504);
    assert_eq!(e["code"], "upstream_timeout");
}

/// A minimal embeddings request (a pass-through path).
async fn embeddings(addr: std::net::SocketAddr) -> Response {
    let body = br#"{"model":"m","input":"x"}"#;
    request(
        addr,
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_was_served() {
    let (local, _cloud, gw2) = echo_pair().await;
    for _ in 0..3 {
        assert_eq!(
            chat(gw2.addr(), &json!({"model": "auto", "messages": user("x")}))
                .await
                .status,
            200
        );
    }
    let body = json!({"model": "auto", "stream": true, "messages": user("x")});
    assert_eq!(chat(gw2.addr(), &body).await.status, 200);
    chat(gw2.addr(), &json!({"model": "auto", "messages": []}))
        .await
        .assert_error(400);
    assert_eq!(local.requests().len(), 4);

    let r = request(gw2.addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    let text = r.text();
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        get(
            r#"switchyard_requests_total{cache="bypass",route="local",status="200",tenant="anonymous",upstream="local"}"#
        ),
        4.0
    );
    assert_eq!(
        get(
            r#"switchyard_requests_total{cache="bypass",route="gateway",status="400",tenant="anonymous",upstream="none"}"#
        ),
        1.0
    );
    assert_eq!(
        get(r#"switchyard_request_duration_seconds_count{route="local",upstream="local"}"#),
        4.0
    );
    assert_eq!(
        get(r#"switchyard_time_to_first_token_seconds_count{route="local",upstream="local"}"#),
        4.0
    );
    assert_eq!(
        get(r#"switchyard_routing_decisions_total{route="local",rule="model-table"}"#),
        4.0
    );
    assert_eq!(
        get("switchyard_in_flight_requests"),
        1.0,
        "the scrape itself is in flight"
    );

    // Failures are counted by upstream and reason; the retry and the fallback too.
    let dead = cloud_only(&format!("http://{}", refused_addr()), "");
    let r = chat(
        dead.addr(),
        &json!({"model": "gpt-4o", "messages": user("x")}),
    )
    .await;
    r.assert_error(502);
    assert_eq!(r.header("x-switchyard-fallback"), Some("cloud->local"));
    assert_eq!(
        r.header("x-switchyard-retries"),
        Some("2"),
        "one on each upstream"
    );
    let text = request(dead.addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    for (series, value) in [
        (
            r#"switchyard_upstream_failures_total{reason="unreachable",upstream="cloud"}"#,
            2.0,
        ),
        (
            r#"switchyard_upstream_failures_total{reason="unreachable",upstream="local"}"#,
            2.0,
        ),
        (
            r#"switchyard_retries_total{reason="unreachable",upstream="cloud"}"#,
            1.0,
        ),
        (
            r#"switchyard_fallbacks_total{from="cloud",reason="unreachable",to="local"}"#,
            1.0,
        ),
        (
            r#"switchyard_requests_total{cache="bypass",route="local",status="502",tenant="anonymous",upstream="local"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_keeps_the_upstream_key_and_stays_on_clean_v1_paths() {
    // An upstream that quotes the key it was sent, in its error message.
    let cloud = Mock::start(|req| {
        let sent = req.header("authorization").unwrap_or_default().to_owned();
        Reply::error(
            401,
            "invalid_request_error",
            &format!("Incorrect API key provided: {sent}"),
        )
    })
    .await;
    let gw = cloud_only(&cloud.url(), "");
    let body = json!({"model": "text-embedding-3-small", "input": "hi"}).to_string();
    let r = request(
        gw.addr(),
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await;
    // The upstream refused the gateway's own key: the client hears that the gateway is
    // misconfigured, not that its own key is wrong, and nothing of the upstream's answer.
    let e = r.assert_error(502);
    assert_eq!(e["code"], "upstream_auth_failed");
    assert!(!r.text().contains(CLOUD_KEY), "{}", r.text());
    assert_eq!(cloud.requests().len(), 1);

    // Methods the API does not use, and paths that could resolve elsewhere, never leave.
    let r = request(gw.addr(), "TRACE", "/v1/x", &[], b"").await;
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    for path in [
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/admin",
        "/v1/files%2Fx",
        "/v1//files",
    ] {
        let r = request(gw.addr(), "GET", path, &[], b"").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_url", "{path}");
    }
    assert_eq!(
        cloud.requests().len(),
        1,
        "none of those reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_key_is_in_no_log_line_even_at_trace_level() {
    let cloud = Mock::start(|req| {
        if req.path == "/v1/chat/completions" {
            Reply::json(completion("gpt-4o", "hi"))
        } else {
            Reply::json(json!({"object": "list", "data": []}))
        }
    })
    .await;
    let gw = Gateway::start_with_env(
        &two_upstreams(&refused_addr().to_string(), &cloud.url(), ""),
        &[("RUST_LOG", "trace")],
    );
    let r = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("hello")}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(gw.addr(), "GET", "/v1/files", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let log = gw.log();
    assert!(log.len() > 1000, "trace logging is on: {log}");
    assert!(
        !log.contains(CLOUD_KEY),
        "the key is in the log: {}",
        log.lines()
            .filter(|l| l.contains(CLOUD_KEY))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_request_without_host_is_refused() {
    let (local, cloud, gw) = echo_pair().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"model": "auto", "messages": user("hi")}).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("missing_host"), "{text}");
    assert!(local.requests().is_empty() && cloud.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_a_stream_it_can_read() {
    let local = Mock::start(|_| Reply::Sse {
        events: stream_events("llama-local", &["Hel", "lo"]),
        pause: Duration::ZERO,
        split: false,
    })
    .await;
    let cloud = Mock::start(|_| Reply::json(completion("gpt-4o", "no"))).await;
    let gw = Gateway::start(&two_upstreams(&local.url(), &cloud.url(), ""));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"model": "auto", "stream": true, "messages": user("hi")}).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection at the end of the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("http/1.") && head.contains(" 200"),
        "{head}"
    );
    assert!(!head.contains("chunked"), "{head}");
    assert!(body.starts_with("data: {"), "no chunk sizes: {body}");
    assert!(
        body.contains("\"hel\"") && body.trim_end().ends_with("data: [done]"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_readiness_and_the_healthcheck_command() {
    // A local model that refuses connections, and no cloud: alive, but not ready.
    let yaml = format!(
        r#"
server:
  listen: "127.0.0.1:{{PORT}}"
upstreams:
  local:
    kind: ollama
    route: local
    url: "{}"
    health: {{interval: 100ms, timeout: 200ms, unhealthy_after: 1}}
default_route:
  upstream: local
"#,
        refused_addr()
    );
    let gw = Gateway::start(&yaml);
    let live = request(gw.addr(), "GET", "/health/live", &[], b"").await;
    assert_eq!(
        (live.status, live.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let mut ready = request(gw.addr(), "GET", "/health/ready", &[], b"").await;
    for _ in 0..50 {
        if ready.json()["reason"] == "no upstream can serve" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = request(gw.addr(), "GET", "/health/ready", &[], b"").await;
    }
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["reason"], "no upstream can serve");

    let healthcheck = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["healthcheck", "--url", &url])
            .output()
            .expect("run switchyard healthcheck")
    };
    let base = format!("http://127.0.0.1:{}", gw.port);
    assert!(healthcheck(format!("{base}/health/live")).status.success());
    let not_ready = healthcheck(format!("{base}/health/ready"));
    assert!(!not_ready.status.success());
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("503"));
    let nobody = healthcheck(format!("http://{}/health/live", refused_addr()));
    assert!(!nobody.status.success());
}

#[tokio::test]
async fn logs_are_json_lines_when_configured() {
    let yaml = two_upstreams("http://127.0.0.1:9", "http://127.0.0.1:9", "")
        + "telemetry:\n  log_format: json\naccess_log:\n  path: log\n";
    let gw = Gateway::start(&yaml);
    // A request that fails upstream, so that the gateway has something to say about it.
    let r = chat(
        gw.addr(),
        &json!({"model": "gpt-4o", "messages": user("x")}),
    )
    .await;
    assert_eq!(r.status, 502);
    // The request's access event is written once its answer is out: wait for it.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = gw.log();
    while !log.contains("\"target\":\"access\"") && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = gw.log();
    }
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "no {field}: {line}");
        }
    }
    assert!(lines.iter().any(|l| l.contains("listening on")), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"WARN\"") && l.contains("upstream")),
        "{log}"
    );
    // The access log is one event among them, its fields typed.
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "access")
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert_eq!(access[0]["status"], 502);
    assert_eq!(access[0]["path"], "/v1/chat/completions");
    assert_eq!(
        access[0]["retries"], 2,
        "one on each upstream: {}",
        access[0]
    );
}
