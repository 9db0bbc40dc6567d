//! The hybrid stage over real sockets: a `switchyard` process, a local model mock speaking
//! Ollama's native API that writes deterministic summaries, and a cloud mock that records what
//! it was sent.

mod support;

use serde_json::{json, Value};
use support::*;

/// A local model that answers every summary request with `SUMMARY(<first words of the text>)`.
fn summarizer(req: &Recorded) -> Reply {
    let body = req.json();
    let text = body["messages"][1]["content"].as_str().unwrap_or_default();
    let head: Vec<&str> = text.split_whitespace().take(4).collect();
    let summary = format!("SUMMARY({})", head.join(" "));
    Reply::json(json!({
        "model": body["model"], "created_at": "2024-12-01T10:00:00Z",
        "message": {"role": "assistant", "content": summary},
        "done_reason": "stop", "done": true, "prompt_eval_count": 1200, "eval_count": 9
    }))
}

/// A cloud that answers with the last message it was sent, streamed when asked.
async fn cloud() -> Mock {
    Mock::start(|req: &Recorded| {
        let text = req.last_message();
        if req.json()["stream"] == json!(true) {
            Reply::Sse {
                events: stream_events("gpt-4o", &[&text]),
                pause: std::time::Duration::ZERO,
                split: false,
            }
        } else {
            Reply::json(completion("gpt-4o", &text))
        }
    })
    .await
}

fn config(local: &str, cloud: &str) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:{{PORT}}"
upstreams:
  local:
    kind: ollama
    route: local
    url: "{local}"
    model: llama3.1
    num_ctx: 8192
    retry: {{attempts: 1}}
  cloud:
    kind: openai
    route: cloud
    url: "{cloud}"
    model: gpt-4o
    api_key: "{CLOUD_KEY}"
models:
  - {{name: auto, upstream: local}}
default_route: {{upstream: cloud}}
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - name: long-context
      when:
        any:
          - {{feature: context_tokens, gt: 1500}}
          - {{feature: last_user_tokens, gt: 1500}}
      route: hybrid
hybrid:
  budget: 5s
"#
    )
}

fn document(topic: &str) -> String {
    (0..200)
        .map(|i| {
            format!(
                "{topic} note {i}: the limit of pool {i} is {} connections.",
                i * 4
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn rag(question: &str, stream: bool) -> Value {
    json!({
        "model": "auto",
        "stream": stream,
        "messages": [
            {"role": "system", "content": format!("Answer from the manual.\n\n{}", document("Manual"))},
            {"role": "user", "content": format!("<context>\n{}\n</context>\n{question}", document("Appendix"))}
        ]
    })
}

async fn post(gw: &Gateway, body: &Value) -> Response {
    chat(gw.addr(), body).await
}

#[tokio::test]
async fn the_cloud_receives_exactly_the_summaries_and_the_question() {
    let local = Mock::start(summarizer).await;
    let cloud = cloud().await;
    let gw = Gateway::start(&config(&local.url(), &cloud.url()));
    let question = "How many connections does pool 42 take at most?";
    let r = post(&gw, &rag(question, false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-route"), Some("hybrid"));
    assert_eq!(r.header("x-switchyard-hybrid"), Some("summarized"));
    let before: u64 = r
        .header("x-switchyard-tokens-before")
        .unwrap()
        .parse()
        .unwrap();
    let after: u64 = r
        .header("x-switchyard-tokens-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(before > 5000 && after < 200, "{before} -> {after}");

    let asked = local.requests();
    assert_eq!(asked.len(), 2, "two parts, one call each");
    for a in &asked {
        assert_eq!(a.path, "/api/chat");
        assert_eq!(a.json()["options"]["num_ctx"], 8192);
        assert!(a.header("authorization").is_none());
        assert!(!String::from_utf8_lossy(&a.body).contains(CLIENT_KEY));
    }
    let sent = cloud.requests();
    assert_eq!(sent.len(), 1);
    let messages = sent[0].json()["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "system", "content": "Answer from the manual.\n\nSUMMARY(Manual note 0: the)"},
            {"role": "user", "content": format!("<context>\nSUMMARY(Appendix note 0: the)\n</context>\n{question}")}
        ])
    );
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {CLOUD_KEY}").as_str())
    );

    // Streamed, and seen before: the summaries come from the cache, no local call.
    let r = post(&gw, &rag(question, true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-hybrid"), Some("summarized"));
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert!(
        r.text().contains("SUMMARY(Appendix note 0: the)"),
        "the cloud read the summary"
    );
    assert_eq!(
        local.requests().len(),
        2,
        "a context seen again is not summarized again"
    );
    let m = metrics(&gw).await;
    assert_eq!(
        value(&m, r#"switchyard_hybrid_summaries_total{source="cache"}"#),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"switchyard_hybrid_requests_total{outcome="summarized"}"#
        ),
        2.0
    );
    assert!(value(&m, "switchyard_hybrid_prompt_tokens_saved_total") > 10000.0);
}

#[tokio::test]
async fn without_a_local_model_the_original_goes_and_the_client_gets_its_answer() {
    let cloud = echo_cloud().await;
    let refused = format!("http://{}", refused_addr());
    let gw = Gateway::start(&config(&refused, &cloud.url()));
    let body = rag("How many connections does pool 7 take?", false);
    let r = post(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-switchyard-hybrid"),
        Some("skipped:local_failed")
    );
    let sent = cloud.requests();
    assert_eq!(
        sent[0].json()["messages"],
        body["messages"],
        "the original, unchanged"
    );
}

#[tokio::test]
async fn the_dry_run_shows_what_the_stage_would_shorten() {
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&config("http://127.0.0.1:9", &cloud.url()));
    let body = rag("How many connections does pool 42 take at most?", false);
    let r = request(
        gw.addr(),
        "POST",
        "/v1/route",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    let v = r.json();
    assert_eq!(v["route"], "hybrid");
    let parts = v["hybrid"]["parts"].as_array().expect("parts");
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p["kind"].as_str()).collect();
    assert_eq!(kinds, ["system", "document"]);
    assert!(parts.iter().all(|p| p["tokens"].as_u64().unwrap() > 2000));
    assert!(cloud.requests().is_empty(), "a dry run calls nothing");
}
