//! Hostile and broken clients against a real `switchyard` process: slow or endless headers,
//! idle connections, oversized heads, malformed framing, smuggling, pipelining, and the
//! connection, request and memory caps. Every refusal is an OpenAI-shaped error, and nothing
//! of a refused request reaches an upstream.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The test configuration with tight limits, so that each can be crossed quickly.
fn limited(local: &str, cloud: &str, limits: &str) -> String {
    two_upstreams(local, cloud, "")
        .replace(
            "limits:\n  max_body_bytes: 2MiB\n",
            &format!("limits:\n  max_body_bytes: 2MiB\n{limits}"),
        )
        .replace("    require_api_key: true\n", "")
}

const TIGHT: &str = "  header_timeout: 1s\n  idle_timeout: 1s\n  body_timeout: 1s\n  max_headers: 20\n  max_header_bytes: 4KiB\n";

/// Sends `bytes` on a new connection and reads until the gateway closes it (or `wait` passes:
/// then `<open>` ends the text).
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let _ = conn.write_all(bytes).await;
    read_until_closed(&mut conn, wait).await
}

async fn read_until_closed(conn: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if read.is_err() {
        text.push_str("<open>");
    }
    text
}

/// The status and the `error` object of the one response in `text`, which must be an
/// OpenAI-shaped error on a closed connection.
fn refusal(text: &str) -> (u16, serde_json::Value) {
    assert!(
        !text.ends_with("<open>"),
        "the connection stays open: {text}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {text}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let e = v["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string() && e.get("param").is_some(), "{v}");
    (status, e)
}

fn chat_body(text: &str) -> String {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).to_string()
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_at_their_deadlines() {
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &cloud.url(), TIGHT));

    // Nothing sent: closed quietly.
    assert_eq!(exchange(gw.addr(), b"", WAIT).await, "");

    // A header trickled byte by byte past header_timeout: a 408, then the close.
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    let trickle = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let mut answer = String::new();
    for b in trickle.iter().chain(b"abcdefghijklmnopqrstuvwxyz".iter()) {
        if conn.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), conn.read(&mut probe)).await
        {
            answer.push_str(&String::from_utf8_lossy(&probe[..n]));
            break;
        }
    }
    answer.push_str(&read_until_closed(&mut conn, WAIT).await);
    let (status, e) = refusal(&answer);
    assert_eq!((status, e["code"].as_str()), (408, Some("request_timeout")));

    // Many slowloris connections at once are all cut, and the gateway answers meanwhile.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(gw.addr()).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-a: ")
            .await
            .unwrap();
        held.push(c);
    }
    let health = request(gw.addr(), "GET", "/health", &[], b"").await;
    assert_eq!(health.status, 200);
    for mut c in held {
        let (status, _) = refusal(&read_until_closed(&mut c, WAIT).await);
        assert_eq!(status, 408);
    }

    // A keep-alive connection idle past idle_timeout is closed after its answer.
    let mut conn = TcpStream::connect(gw.addr()).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut conn, WAIT).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && !text.ends_with("<open>"),
        "{text}"
    );

    let m = metrics(&gw).await;
    assert!(
        value(&m, "switchyard_limit_hits_total{limit=\"header_timeout\"}") >= 51.0,
        "{m}"
    );
    assert!(cloud.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_openai_errors_and_reach_no_upstream() {
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &cloud.url(), TIGHT));
    let addr = gw.addr();

    let mut many = b"GET /health HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..30 {
        many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (status, e) = refusal(&exchange(addr, &many, WAIT).await);
    assert_eq!(
        (status, e["code"].as_str()),
        (431, Some("request_header_fields_too_large"))
    );

    let mut thousand = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..1000 {
        thousand.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
    }
    thousand.extend_from_slice(b"\r\n");
    assert_eq!(refusal(&exchange(addr, &thousand, WAIT).await).0, 431);

    let big = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    assert_eq!(refusal(&exchange(addr, big.as_bytes(), WAIT).await).0, 431);

    let body = chat_body("smuggled?");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("an HTTP/0.9 line", b"GET /\r\n\r\n".to_vec(), 400, "malformed_request"),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, "malformed_request"),
        (
            "a listed Content-Length",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {0}, {0}\r\n\r\n{body}", body.len()).into_bytes(),
            400,
            "malformed_request",
        ),
        (
            "two Content-Length fields",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {0}\r\ncontent-length: {0}\r\n\r\n{body}", body.len()).into_bytes(),
            400,
            "malformed_request",
        ),
        (
            "a bad chunk size",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, bytes, want, code) in cases {
        let text = exchange(addr, &bytes, WAIT).await;
        let (status, e) = refusal(&text);
        assert_eq!(
            (status, e["code"].as_str()),
            (want, Some(code)),
            "{what}: {text}"
        );
    }

    // A body that never ends: 408 after body_timeout.
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"mo";
    let (status, e) = refusal(&exchange(addr, head, WAIT).await);
    assert_eq!((status, e["code"].as_str()), (408, Some("request_timeout")));

    assert!(cloud.requests().is_empty(), "{:?}", cloud.requests());
    let m = metrics(&gw).await;
    assert!(value(&m, "switchyard_limit_hits_total{limit=\"header_fields\"}") >= 2.0);
    assert!(value(&m, "switchyard_limit_hits_total{limit=\"malformed\"}") >= 5.0);
    assert!(value(&m, "switchyard_limit_hits_total{limit=\"body_timeout\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_wins_over_content_length_and_nothing_is_smuggled() {
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &cloud.url(), ""));
    let body = chat_body("first");
    let hidden = "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{hidden}",
        body.len()
    );
    let text = exchange(gw.addr(), raw.as_bytes(), WAIT).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("first"), "{text}");
    // The connection closes after the answer: the bytes after the chunked body are not served.
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(cloud.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &cloud.url(), ""));
    let mut raw = String::new();
    for nonce in ["alpha", "beta", "gamma"] {
        let body = chat_body(nonce);
        raw.push_str(&format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    raw.push_str("GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let text = exchange(gw.addr(), raw.as_bytes(), WAIT).await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 4, "{text}");
    let at = |s: &str| {
        text.find(s)
            .unwrap_or_else(|| panic!("{s} missing: {text}"))
    };
    assert!(at("alpha") < at("beta") && at("beta") < at("gamma") && at("gamma") < at("\"status\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_requests_past_their_caps_get_503_with_retry_after() {
    let slow = Mock::start(|req: &Recorded| Reply::Sse {
        events: stream_events("gpt-4o", &[&req.last_message(), " and", " more"]),
        pause: Duration::from_millis(700),
        split: false,
    })
    .await;
    let limits = "  max_connections: 4\n  max_in_flight: 2\n";
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &slow.url(), limits));
    let addr = gw.addr();

    // Two slow streams fill max_in_flight: a third request waits for nothing.
    let a = open_stream(addr, "gpt-4o", "one").await;
    let b = open_stream(addr, "gpt-4o", "two").await;
    assert_eq!((a.status, b.status), (200, 200));
    let r = chat(
        addr,
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;
    let e = r.assert_error(503);
    assert_eq!(e["code"], "server_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    // /health answers at the cap, to say why.
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);

    // Two more idle connections reach max_connections (4): the next one is refused.
    let _c = TcpStream::connect(addr).await.unwrap();
    let _d = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = exchange(addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n", WAIT).await;
    let (status, e) = refusal(&text);
    assert_eq!(
        (status, e["code"].as_str()),
        (503, Some("server_overloaded"))
    );
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");

    // Once the streams end, requests are served again.
    a.finish().await;
    b.finish().await;
    drop((_c, _d));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = chat(
        addr,
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "four"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, "switchyard_limit_hits_total{limit=\"in_flight\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "switchyard_limit_hits_total{limit=\"connections\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bodies_held_at_once_are_bounded() {
    let cloud = echo_cloud().await;
    let limits = "  max_buffered_bytes: 3MiB\n  body_timeout: 30s\n";
    let gw = Gateway::start(&limited(&refused_addr().to_string(), &cloud.url(), limits));
    let addr = gw.addr();

    // A slow client announces 2 MiB and sends a little of it: that much is set aside.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n{\"model\"")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another 1.5 MB body would pass 3 MiB: refused at once, with Retry-After.
    let pad = "x".repeat(1_500_000);
    let big = chat_body(&pad);
    let r = request(addr, "POST", "/v1/chat/completions", &[], big.as_bytes()).await;
    let e = r.assert_error(503);
    assert_eq!(e["code"], "server_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A small one still fits.
    let small = chat_body("small");
    let r = request(addr, "POST", "/v1/chat/completions", &[], small.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // When the slow client goes, its share is free again.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = request(addr, "POST", "/v1/chat/completions", &[], big.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_answer_too_large_to_hold_is_refused_with_502() {
    let huge = "y".repeat(3 << 20);
    let local = Mock::start(move |_| {
        Reply::json(json!({
            "model": "llama3.1:8b", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": huge},
            "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 5
        }))
    })
    .await;
    let cloud = echo_cloud().await;
    let yaml = limited(&local.url(), &cloud.url(), "  max_answer_bytes: 1MiB\n").replace(
        "    kind: openai\n    route: local",
        "    kind: ollama\n    route: local",
    );
    let gw = Gateway::start(&yaml);
    let r = chat(
        gw.addr(),
        &json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let e = r.assert_error(502);
    assert_eq!(e["code"], "upstream_answer_too_large");
    assert_eq!(local.requests().len(), 1);
}
