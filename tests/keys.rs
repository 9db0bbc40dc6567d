//! Gateway keys over real sockets: who gets in, what each key may use, and who reads the
//! gateway's own reports.

mod support;

use serde_json::json;
use support::*;

/// SHA-256 of the test keys (`switchyard key new` prints such lines).
const TEAM_A: &str = "sy-team-a-0123456789";
const TEAM_B: &str = "sy-team-b-0123456789";
const ADMIN: &str = "sy-admin-0123456789";
const EXPIRED: &str = "sy-expired-0123456789";

fn config(local: &str, cloud: &str) -> String {
    two_upstreams(local, cloud, "")
        + &format!(
            r#"
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - {{name: all-local, route: local}}
keys:
  - name: team-a
    sha256: {}
    models: [auto]
    routes: [local]
  - name: team-b
    sha256: {}
    force_route: true
  - name: admin
    sha256: {}
    admin: true
  - name: old
    sha256: {}
    expires: 2020-01-31
"#,
            sha256(TEAM_A),
            sha256(TEAM_B),
            sha256(ADMIN),
            sha256(EXPIRED)
        )
}

async fn post(
    gw: &Gateway,
    key: Option<&str>,
    body: serde_json::Value,
    extra: &[(&str, &str)],
) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
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

fn ask(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn only_keys_get_in_and_each_uses_what_it_may() {
    let local = echo_cloud().await;
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&config(&local.url(), &cloud.url()));

    for (key, code) in [
        (None, "missing_api_key"),
        (Some("sy-nobody"), "invalid_api_key"),
        (Some(EXPIRED), "expired_api_key"),
    ] {
        let r = post(&gw, key, ask("auto"), &[]).await;
        let e = r.assert_error(401);
        assert_eq!(e["code"], code, "{key:?}");
    }
    assert!(
        local.requests().is_empty() && cloud.requests().is_empty(),
        "nothing reached an upstream"
    );

    let r = post(&gw, Some(TEAM_A), ask("auto"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = local.requests();
    assert_eq!(sent.len(), 1);
    assert!(!String::from_utf8_lossy(&sent[0].body).contains(TEAM_A));
    assert!(
        sent[0].header("authorization").is_none(),
        "the gateway key never reaches an upstream"
    );

    let r = post(&gw, Some(TEAM_A), ask("gpt-4o"), &[]).await;
    assert_eq!(r.assert_error(403)["code"], "model_not_allowed");

    // team-b may force a route; team-a's header is ignored.
    let r = post(
        &gw,
        Some(TEAM_B),
        ask("auto"),
        &[("x-switchyard-route", "cloud")],
    )
    .await;
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));
    assert_eq!(cloud.requests().len(), 1);
    let r = post(
        &gw,
        Some(TEAM_A),
        ask("auto"),
        &[("x-switchyard-route", "cloud")],
    )
    .await;
    assert_eq!(r.header("x-switchyard-route"), Some("local"));

    // Reports: admin only; health stays open for probes.
    for key in [None, Some(TEAM_A)] {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = request(gw.addr(), "GET", "/metrics", &headers, b"").await;
        assert!(r.status == 401 || r.status == 403, "{key:?}: {}", r.status);
    }
    let r = get_as(gw.addr(), "/metrics", ADMIN).await;
    assert_eq!(r.status, 200);
    // Each key's traffic under its name; refused strangers are `anonymous`, never themselves.
    let text = r.text();
    let served = |tenant: &str, route: &str| {
        value(
            &text,
            &format!(
                r#"switchyard_requests_total{{cache="bypass",route="{route}",status="200",tenant="{tenant}",upstream="{route}"}}"#
            ),
        )
    };
    assert_eq!(served("team-a", "local"), 2.0, "{text}");
    assert_eq!(served("team-b", "cloud"), 1.0, "{text}");
    assert!(!text.contains("sy-nobody") && !text.contains("tenant=\"old\""));
    let stats = get_as(gw.addr(), "/stats", ADMIN).await;
    let by_tenant = &stats.json()["by_tenant"];
    assert_eq!(
        by_tenant["team-a"]["requests"], 3.0,
        "two answers and the 403: {by_tenant}"
    );
    assert_eq!(by_tenant["team-b"]["requests"], 1.0, "{by_tenant}");
    assert_eq!(
        request(gw.addr(), "GET", "/health", &[], b"").await.status,
        200
    );

    // The access log and the cache name the key; no key appears anywhere in the log.
    let log = gw.log();
    for secret in [TEAM_A, TEAM_B, ADMIN] {
        assert!(!log.contains(secret), "a key in the log");
    }
}

#[tokio::test]
async fn a_key_held_to_local_never_falls_back_to_the_cloud() {
    let cloud = echo_cloud().await;
    let refused = format!("http://{}", refused_addr());
    let gw = Gateway::start(&config(&refused, &cloud.url()));
    let r = post(&gw, Some(TEAM_A), ask("auto"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(cloud.requests().is_empty(), "team-a may not use the cloud");
    let r = post(&gw, Some(TEAM_B), ask("auto"), &[]).await;
    assert_eq!(r.status, 200, "team-b falls back as usual");
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
}

const LIMITED: &str = "sy-limited-0123456789";
const THRIFTY: &str = "sy-thrifty-0123456789";

fn limited_config(local: &str, cloud: &str) -> String {
    two_upstreams(local, cloud, "")
        + &format!(
            r#"
pricing:
  models:
    llama-local: {{input: 1000, output: 1000}}
keys:
  - name: limited
    sha256: {}
    requests_per_minute: 2
    tokens_per_minute: 4000
  - name: thrifty
    sha256: {}
    budget_usd: {{day: 0.05}}
"#,
            sha256(LIMITED),
            sha256(THRIFTY)
        )
}

#[tokio::test]
async fn limits_refuse_with_the_headers_openai_clients_read() {
    let local = echo_cloud().await;
    let cloud = echo_cloud().await;
    let gw = Gateway::start(&limited_config(&local.url(), &cloud.url()));

    let too_big = json!({"model": "auto", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, Some(LIMITED), too_big, &[]).await;
    assert_eq!(r.assert_error(429)["code"], "tokens_limit_exceeded");

    let r = post(&gw, Some(LIMITED), ask("auto"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("4000"));
    let left: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        left < 4000 - 1000,
        "charged the prompt and the default max_tokens: {left}"
    );
    assert_eq!(post(&gw, Some(LIMITED), ask("auto"), &[]).await.status, 200);
    let r = post(&gw, Some(LIMITED), ask("auto"), &[]).await;
    assert_eq!(r.assert_error(429)["code"], "rate_limit_exceeded");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&wait), "{wait}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    assert_eq!(
        local.requests().len(),
        2,
        "refused requests reach no upstream"
    );

    // The budget: each answer costs about a quarter of the day's; the one that would pass it is
    // refused. A request whose estimate alone is over the budget is refused at once.
    let small =
        json!({"model": "auto", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let mut served = 0;
    let refused = loop {
        let r = post(&gw, Some(THRIFTY), small.clone(), &[]).await;
        if r.status != 200 || served == 10 {
            break r;
        }
        served += 1;
    };
    assert!((2..10).contains(&served), "{served} answers fit the budget");
    assert_eq!(refused.assert_error(429)["code"], "insufficient_quota");
    assert_eq!(post(&gw, Some(THRIFTY), ask("auto"), &[]).await.status, 429);
    let own = request(
        gw.addr(),
        "GET",
        "/stats",
        &[("authorization", &format!("Bearer {THRIFTY}"))],
        b"",
    )
    .await;
    let v = own.json();
    assert_eq!(v["key"], "thrifty");
    assert!(v["spent_usd"]["day"].as_f64().unwrap() > 0.0, "{v}");
    let m = metrics_as(&gw, None).await;
    assert!(
        m.is_empty() || !m.contains("switchyard_requests_total"),
        "metrics are not open once keys exist"
    );
}

async fn metrics_as(gw: &Gateway, key: Option<&str>) -> String {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(gw.addr(), "GET", "/metrics", &headers, b"")
        .await
        .text()
}

#[tokio::test]
async fn the_dashboard_page_is_served_without_a_key_and_its_data_is_not() {
    let gw = Gateway::start(&config("http://127.0.0.1:9", "http://127.0.0.1:9"));
    let page = request(gw.addr(), "GET", "/ui", &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").expect("a policy");
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    assert!(page.text().contains("<title>Switchyard</title>"));
    assert_eq!(
        request(gw.addr(), "GET", "/stats", &[], b"").await.status,
        401
    );
    let stats = get_as(gw.addr(), "/stats", ADMIN).await;
    assert!(stats.json()["recent"].is_array(), "{}", stats.text());

    // Off means off; and without keys, a gateway listening beyond loopback keeps it to itself
    // unless told otherwise.
    let off = config("http://127.0.0.1:9", "http://127.0.0.1:9").replacen(
        "  drain_timeout: 5s\n",
        "  drain_timeout: 5s\n  ui: off\n",
        1,
    );
    let gw = Gateway::start(&off);
    assert_eq!(request(gw.addr(), "GET", "/ui", &[], b"").await.status, 404);
    let open = two_upstreams("http://127.0.0.1:9", "http://127.0.0.1:9", "").replacen(
        "127.0.0.1:{PORT}",
        "0.0.0.0:{PORT}",
        1,
    );
    let gw = Gateway::start(&open);
    assert_eq!(request(gw.addr(), "GET", "/ui", &[], b"").await.status, 404);
    let gw = Gateway::start(&open.replacen(
        "  drain_timeout: 5s\n",
        "  drain_timeout: 5s\n  ui: on\n",
        1,
    ));
    assert_eq!(request(gw.addr(), "GET", "/ui", &[], b"").await.status, 200);
}

#[tokio::test]
async fn feedback_labels_a_keys_own_requests_only() {
    let local =
        Mock::start(|req: &Recorded| Reply::json(completion("llama-local", &req.last_message())))
            .await;
    let labels = scratch_file("labels.jsonl", "");
    let yaml = config(&local.url(), "http://127.0.0.1:9")
        + &format!("feedback:\n  labels: \"{}\"\n", labels.display());
    let gw = Gateway::start(&yaml);
    let secret = "the password is swordfish";
    let asked = post(
        &gw,
        Some(TEAM_A),
        json!({"model": "auto", "messages": [{"role": "user", "content": secret}]}),
        &[],
    )
    .await;
    assert_eq!(asked.status, 200);
    let id = asked.header("x-request-id").expect("an id").to_owned();
    let addr = gw.addr();
    let feedback = |key: &'static str, body: serde_json::Value| async move {
        post_as(addr, "/v1/feedback", key, &body).await
    };

    let other = feedback(TEAM_B, json!({"request_id": id, "score": 0})).await;
    assert_eq!(other.assert_error(404)["code"], "request_not_found");
    let unknown = feedback(TEAM_A, json!({"request_id": "req_nope", "score": 1})).await;
    assert_eq!(unknown.assert_error(404)["code"], "request_not_found");
    let out_of_range = feedback(TEAM_A, json!({"request_id": id, "score": 1.5})).await;
    assert_eq!(out_of_range.assert_error(400)["param"], "score");
    feedback(TEAM_A, json!({"id": id})).await.assert_error(400);
    assert_eq!(
        std::fs::read_to_string(&labels).unwrap(),
        "",
        "nothing labelled yet"
    );

    let ok = feedback(
        TEAM_A,
        json!({"request_id": id, "score": 0.0, "comment": "wrong answer"}),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["request_id"], id.as_str());
    let text = std::fs::read_to_string(&labels).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let label = &lines[0];
    assert_eq!(label["id"], id.as_str());
    assert_eq!(label["tenant"], "team-a");
    assert_eq!(label["route"], "local");
    assert_eq!(label["rule"], "all-local");
    assert_eq!(label["feedback"]["score"], 0.0);
    assert_eq!(label["feedback"]["comment"], "wrong answer");
    assert!(
        label["features"]["last_user_tokens"].as_f64().unwrap() > 0.0,
        "{label}"
    );
    assert!(
        !text.contains("swordfish"),
        "no message text without store_text: {text}"
    );
    // Feedback is the gateway's own: it never reaches an upstream.
    assert_eq!(local.requests().len(), 1);
}
