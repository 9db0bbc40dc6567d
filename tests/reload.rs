//! Reloading the configuration: SIGHUP swaps in a new file (a rule, a key, a limit and an
//! upstream URL change for the next request) while a stream that started before it finishes on
//! the old one; an invalid file is refused and the old one keeps serving.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::sync::Notify;

const TEAM: &str = "sy-reload-team-0123456789";
const NEWCOMER: &str = "sy-reload-new-0123456789";

fn config(
    port: u16,
    local: &str,
    cloud: &str,
    rule_route: &str,
    rpm: u64,
    newcomer: bool,
) -> String {
    let mut keys = format!(
        "keys:\n  - name: team\n    sha256: {}\n    requests_per_minute: {rpm}\n",
        sha256(TEAM)
    );
    if newcomer {
        keys.push_str(&format!(
            "  - name: newcomer\n    sha256: {}\n",
            sha256(NEWCOMER)
        ));
    }
    format!(
        r#"
server:
  listen: "127.0.0.1:{port}"
upstreams:
  local: {{kind: openai, route: local, url: "{local}", model: llama-local, fallback: none}}
  cloud: {{kind: openai, route: cloud, url: "{cloud}", model: gpt-4o, api_key: "{CLOUD_KEY}"}}
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - {{name: everything-{rule_route}, route: {rule_route}}}
{keys}"#
    )
}

async fn ask(gw: &Gateway, key: &str) -> Response {
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "hello"}]});
    chat_as(gw.addr(), key, &body).await
}

#[tokio::test]
async fn sighup_changes_rules_keys_limits_and_upstreams_and_spares_the_stream_in_flight() {
    let gate = Arc::new(Notify::new());
    let g = Arc::clone(&gate);
    let events = stream_events("llama-local", &["old ", "config"]);
    let local = Mock::start(move |req: &Recorded| {
        if req.json()["stream"] == json!(true) {
            Reply::Gated {
                first: events[..2].to_vec(),
                gate: Arc::clone(&g),
                rest: events[2..].to_vec(),
            }
        } else {
            Reply::json(completion("llama-local", "local answer"))
        }
    })
    .await;
    let old_cloud = echo_cloud().await;
    let new_cloud = echo_cloud().await;
    let port = free_port();
    let yaml = config(port, &local.url(), &old_cloud.url(), "local", 100, false);
    let mut gw = Gateway::start(&yaml.replace(&port.to_string(), "{PORT}"));

    // A stream starts on the old configuration and waits mid-way.
    let auth = format!("Bearer {TEAM}");
    let body = json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "stream"}]});
    let mut stream = open(
        gw.addr(),
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(stream.status, 200);
    assert!(stream.next_event().await.is_some());

    // The new file: everything to the cloud, at a new URL; team down to 1 request a minute; a
    // new key.
    let next = config(gw.port, &local.url(), &new_cloud.url(), "cloud", 1, true);
    std::fs::write(&gw.config, next).unwrap();
    gw.hangup();
    let until = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let r = ask(&gw, NEWCOMER).await;
        if r.status == 200 || Instant::now() > until {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first.status, 200, "the new key works: {}", first.text());
    assert_eq!(first.header("x-switchyard-rule"), Some("everything-cloud"));
    assert_eq!(new_cloud.requests().len(), 1, "the new upstream URL");
    assert!(old_cloud.requests().is_empty());
    assert_eq!(
        ask(&gw, TEAM).await.status,
        429,
        "the new limit, on the counts kept: the stream used the one request a minute allows"
    );
    assert!(gw.running(), "SIGHUP never ends the process");

    // The stream that started before finishes untouched.
    gate.notify_one();
    let mut text = String::new();
    let mut done = false;
    while let Some(e) = stream.next_event().await {
        if e == "[DONE]" {
            done = true;
            break;
        }
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        text.push_str(
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    assert!(done, "ended with [DONE]");
    assert_eq!(text, "old config");

    // An invalid file is refused; the configuration in force keeps serving.
    std::fs::write(&gw.config, "upstreams: {broken: {route: sideways}}\n").unwrap();
    gw.hangup();
    let until = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("configuration reload refused") && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.log().contains("configuration reload refused"),
        "{}",
        gw.log()
    );
    assert_eq!(ask(&gw, NEWCOMER).await.status, 200);
    assert!(gw.running());
}
