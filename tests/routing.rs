//! Classification over real sockets: rule and score headers on proxied answers, the forced
//! route header, the dry-run endpoint and command, and reproducible training.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::*;

fn echo(req: &Recorded) -> Reply {
    let model = req.json()["model"].as_str().unwrap_or_default().to_owned();
    Reply::json(completion(&model, &format!("echo: {}", req.last_message())))
}

fn routed_config(local: &str, cloud: &str, allow_header: bool) -> String {
    format!(
        r#"{}
routing:
  classify: [auto]
  allow_route_header: {allow_header}
  scorer: {{local_below: 0.0, cloud_from: 0.0}}
  rules:
    - {{name: tools, when: {{feature: tools, gt: 0}}, route: cloud, model: gpt-4o-tools}}
    - name: greeting
      when: {{regex: ['(?i)^\W*hello']}}
      route: local
"#,
        two_upstreams(local, cloud, "")
    )
}

const FORCE: [(&str, &str); 1] = [("x-switchyard-route", "cloud")];

fn chat_body(text: &str, tools: bool) -> serde_json::Value {
    let mut body = json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    }
    body
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, "POST", path, &all, body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_answers_explain_the_decision() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let gw = Gateway::start(&routed_config(&local.url(), &cloud.url(), false));

    let r = post(
        gw.addr(),
        "/v1/chat/completions",
        &chat_body("Hello!", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-route"), Some("local"));
    assert_eq!(r.header("x-switchyard-rule"), Some("greeting"));
    let score: f64 = r
        .header("x-switchyard-score")
        .expect("score header")
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&score));

    let r = post(
        gw.addr(),
        "/v1/chat/completions",
        &chat_body("call f", true),
        &[],
    )
    .await;
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));
    assert_eq!(r.header("x-switchyard-rule"), Some("tools"));
    assert_eq!(
        cloud.requests()[0].json()["model"],
        "gpt-4o-tools",
        "the rule's model is sent"
    );

    // No rule matches: the scorer decides (thresholds at 0: always cloud).
    let r = post(
        gw.addr(),
        "/v1/chat/completions",
        &chat_body("Name a colour.", false),
        &[],
    )
    .await;
    assert_eq!(r.header("x-switchyard-rule"), Some("scorer"));
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));

    // An explicit model is not classified.
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]});
    let r = post(gw.addr(), "/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.header("x-switchyard-rule"), Some("model-table"));
    assert!(r.header("x-switchyard-score").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_header_is_honoured_only_where_allowed() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let closed = Gateway::start(&routed_config(&local.url(), &cloud.url(), false));
    let open = Gateway::start(&routed_config(&local.url(), &cloud.url(), true));

    let decided = |gw: &Gateway, headers: &'static [(&'static str, &'static str)]| {
        let addr = gw.addr();
        async move {
            let r = post(
                addr,
                "/v1/chat/completions",
                &chat_body("Hello", false),
                headers,
            )
            .await;
            let header = |n: &str| r.header(n).map(str::to_owned);
            (header("x-switchyard-route"), header("x-switchyard-rule"))
        }
    };
    let expected = |route: &str, rule: &str| (Some(route.to_owned()), Some(rule.to_owned()));
    assert_eq!(
        decided(&closed, &FORCE).await,
        expected("local", "greeting")
    );
    assert_eq!(decided(&open, &FORCE).await, expected("cloud", "header"));
    let e = post(
        open.addr(),
        "/v1/chat/completions",
        &chat_body("Hello", false),
        &[("x-switchyard-route", "moon")],
    )
    .await
    .assert_error(400);
    assert_eq!(e["code"], "invalid_route");
    // The header is the gateway's: it never reaches an upstream.
    for r in local.requests().iter().chain(cloud.requests().iter()) {
        assert!(r.header("x-switchyard-route").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_endpoint_and_command_agree_and_contact_nobody() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let yaml = routed_config(&local.url(), &cloud.url(), false);
    let gw = Gateway::start(&yaml);
    let body = chat_body("call f", true);

    let r = post(gw.addr(), "/v1/route", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (
            v["route"].as_str(),
            v["rule"].as_str(),
            v["upstream"].as_str()
        ),
        (Some("cloud"), Some("tools"), Some("cloud"))
    );
    assert_eq!(v["model"], "gpt-4o-tools");
    assert_eq!(v["features"]["tools"], 1.0);
    assert!(v["score"].is_number());
    // The semantic scorer explains itself by the labelled rows nearest to the request.
    let nearest = v["semantic"]["nearest"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(nearest.len(), 5, "{v}");
    assert!(nearest[0]["id"].is_string() && nearest[0]["similarity"].as_f64() <= Some(1.0));
    assert!(v["semantic"]["logit"].is_number());
    post(
        gw.addr(),
        "/v1/route",
        &json!({"model": "auto", "messages": []}),
        &[],
    )
    .await
    .assert_error(400);
    let r = request(gw.addr(), "GET", "/v1/route", &[], b"").await;
    r.assert_error(405);
    assert!(
        local.requests().is_empty() && cloud.requests().is_empty(),
        "a dry run sends nothing upstream"
    );

    let config = scratch_file("routed.yaml", &yaml.replace("{PORT}", "1"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["route", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline, v, "the command says what the endpoint says");

    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["route", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an empty request is an error");
}

#[test]
fn training_is_reproducible() {
    let mut rows = String::new();
    for i in 0..40 {
        let (text, ok) = if i % 2 == 0 {
            (format!("hello friend number {i}"), true)
        } else {
            (
                format!(
                    "prove that the integral of x^{i} is x^{}/{} step by step",
                    i + 1,
                    i + 1
                ),
                false,
            )
        };
        rows.push_str(
            &json!({"id": format!("r{i}"), "source": if i % 4 < 2 { "a" } else { "b" },
            "messages": [{"role": "user", "content": text}], "weak_ok": ok})
            .to_string(),
        );
        rows.push('\n');
    }
    let data = scratch_file("rows.jsonl", &rows);
    let run = |out: &std::path::Path, predictions: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["train", "--iterations", "300", "--folds", "4", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .arg("--predictions")
            .arg(predictions)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let (a, b) = (scratch_file("a.json", ""), scratch_file("b.json", ""));
    let (pa, pb) = (scratch_file("a.jsonl", ""), scratch_file("b.jsonl", ""));
    let report = run(&a, &pa);
    run(&b, &pb);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same data, same file"
    );
    assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    assert!(
        report.contains("cross-validated AUC") && report.contains(" a ") && report.contains(" b "),
        "{report}"
    );
    let predictions = std::fs::read_to_string(&pa).unwrap();
    assert_eq!(predictions.lines().count(), 40);
    let first: serde_json::Value =
        serde_json::from_str(predictions.lines().next().unwrap()).unwrap();
    assert!(first["score"].is_number() && first["route"].is_string());

    // The fitted file is a scorer the gateway accepts.
    let scorer = std::fs::read_to_string(&a).unwrap();
    let yaml = format!(
        "{}routing:\n  scorer: {{file: {}}}\n",
        two_upstreams("http://127.0.0.1:1", "http://127.0.0.1:2", "").replace("{PORT}", "1"),
        a.display()
    );
    let config = scratch_file("with-scorer.yaml", &yaml);
    let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{scorer}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_shipped_scorer_is_what_fitting_the_development_set_gives() {
    // The command the README gives for rebuilding conf/scorer.json.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = scratch_file("refit.json", "");
    let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(root)
        .args([
            "train",
            "--data",
            "tests/data/routing-dev.jsonl",
            "--prior",
            "surface",
            "--folds",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let refit = std::fs::read_to_string(&out).unwrap();
    let shipped = std::fs::read_to_string(root.join("conf/scorer.json")).unwrap();
    assert!(
        refit == shipped,
        "conf/scorer.json differs from a fresh fit on tests/data/routing-dev.jsonl"
    );
    let v: serde_json::Value = serde_json::from_str(&refit).unwrap();
    assert_eq!(v["embedding"]["table"], "builtin");
    assert_eq!(
        v["embedding"]["examples"].as_array().map(Vec::len),
        Some(584)
    );
}

#[test]
fn check_says_which_scorer_is_in_force() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = two_upstreams("http://127.0.0.1:1", "http://127.0.0.1:2", "").replace("{PORT}", "1");
    let surface = root.join("conf/scorer-surface.json");
    for (routing, says) in [
        ("routing: {}\n".to_owned(), "scorer: semantic"),
        (
            format!("routing:\n  scorer: {{file: {}}}\n", surface.display()),
            "scorer: surface features only",
        ),
    ] {
        let config = scratch_file("which-scorer.yaml", &format!("{base}{routing}"));
        let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && stdout.contains(says), "{stdout}");
    }
}

/// Keep-local rules: personal data stays on the local side, whatever model is named or route
/// forced, and with the local side down it gets a clear 503 rather than the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_local_requests_never_reach_the_cloud() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let yaml = routed_config(&local.url(), &cloud.url(), true).replacen(
        "  rules:\n",
        "  rules:\n    - name: personal-data\n      when: {regex: ['[\\w.+-]+@[\\w-]+\\.[\\w.]+', '\\b(?:\\d[ -]?){13,16}\\b'], target: all}\n      route: local\n      pin: true\n",
        1,
    );
    let gw = Gateway::start(&yaml);
    let email = "Write to ann.lee@example.com about the invoice.";
    let card = "My card is 4111 1111 1111 1111, is it valid?";
    let gpt =
        |text: &str| json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]});
    let cases = [
        (chat_body(email, false), vec![]),
        (gpt(card), vec![]),
        (chat_body(email, true), FORCE.to_vec()),
        (
            json!({"model": "gpt-4o", "messages": [
                {"role": "system", "content": format!("Context: {card}")},
                {"role": "user", "content": "Summarize the context."}
            ]}),
            FORCE.to_vec(),
        ),
    ];
    for (body, headers) in &cases {
        let r = post(gw.addr(), "/v1/chat/completions", body, headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-rule"), Some("personal-data"));
        assert_eq!(r.header("x-switchyard-route"), Some("local"));
    }
    assert_eq!(local.requests().len(), cases.len());
    // An ordinary request still goes where it is asked.
    let r = post(gw.addr(), "/v1/chat/completions", &gpt("hi"), &[]).await;
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));
    let before = cloud.requests().len();

    // The local side down: kept requests get a 503 and the cloud still sees none of them; the
    // others fall back as usual.
    local.stop();
    for (body, headers) in &cases {
        let r = post(gw.addr(), "/v1/chat/completions", body, headers).await;
        let e = r.assert_error(503);
        assert_eq!(e["code"], "local_only_unavailable", "{e}");
        assert!(e["message"].as_str().unwrap().contains("personal-data"));
    }
    assert_eq!(
        cloud.requests().len(),
        before,
        "nothing kept local reached the cloud"
    );
    for req in cloud.requests() {
        let text = req.json().to_string();
        assert!(
            !text.contains("ann.lee") && !text.contains("4111"),
            "{text}"
        );
    }
    let r = post(
        gw.addr(),
        "/v1/chat/completions",
        &chat_body("hello there", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-fallback"), Some("local->cloud"));
}

#[test]
fn only_a_local_rule_can_keep_requests_local() {
    let yaml = routed_config("http://127.0.0.1:1", "http://127.0.0.1:2", false).replacen(
        "route: cloud, model: gpt-4o-tools}",
        "route: cloud, model: gpt-4o-tools, pin: true}",
        1,
    );
    let errors = switchyard::config::Config::from_yaml(&yaml, |_| None).expect_err("refused");
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("pin: only a `route: local` rule")),
        "{errors:?}"
    );
}

/// Sends `n` chat requests of varied words and lengths (so of varied scores), one after the
/// other; returns the route each took.
async fn varied_traffic(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let words = [
        "prove",
        "list",
        "why",
        "poem",
        "sum",
        "explain",
        "code",
        "hi",
        "translate",
        "compare",
    ];
    let mut routes = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!(
            "{} {} {}",
            words[i % words.len()],
            "detail ".repeat(i % 37),
            words[(i * 7) % words.len()]
        );
        let r = post(addr, "/v1/chat/completions", &chat_body(&text, false), &[]).await;
        assert_eq!(r.status, 200);
        routes.push(
            r.header("x-switchyard-route")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    routes
}

/// Shares instead of thresholds: the thresholds move so that the configured share of the
/// scorer's decisions goes local, and `/stats` shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_follow_the_configured_shares() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let yaml = routed_config(&local.url(), &cloud.url(), false).replacen(
        "scorer: {local_below: 0.0, cloud_from: 0.0}",
        "scorer: {local_share: 0.5, hybrid_share: 0, window: 200}",
        1,
    );
    let gw = Gateway::start(&yaml);
    varied_traffic(gw.addr(), 400).await;
    let stats = request(gw.addr(), "GET", "/stats", &[], b"").await.json();
    let routing = &stats["routing"];
    let share = routing["shares"]["local"].as_f64().expect("live shares");
    assert!((share - 0.5).abs() <= 0.1, "{routing}");
    assert_eq!(routing["target"]["local"], 0.5);
    assert!(routing["local_below"].as_f64().unwrap() > 0.0, "{routing}");
}

/// A daily cloud budget: as what the cloud answers cost runs through it, the local share rises
/// to its ceiling, and `/stats` shows the spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_share_rises_as_the_cloud_budget_runs_out() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    // Each cloud answer (10 prompt and 3 completion tokens) costs $0.000055: the budget is half
    // spent after about 18 of them and gone after 37.
    let yaml = routed_config(&local.url(), &cloud.url(), false).replacen(
        "scorer: {local_below: 0.0, cloud_from: 0.0}",
        "scorer: {local_share: 0.3, window: 200, \
         cloud_budget: {daily_usd: 0.002, max_local_share: 0.9}}",
        1,
    ) + "pricing:\n  models:\n    gpt-4o: {input: 2.50, output: 10.00}\n";
    let gw = Gateway::start(&yaml);
    let routes = varied_traffic(gw.addr(), 400).await;
    let stats = request(gw.addr(), "GET", "/stats", &[], b"").await.json();
    let routing = &stats["routing"];
    assert_eq!(routing["target"]["local"], 0.9, "{routing}");
    assert_eq!(routing["cloud_budget"]["daily_usd"], 0.002, "{routing}");
    let spent = routing["cloud_budget"]["spent_today_usd"].as_f64().unwrap();
    assert!(spent >= 0.002, "{routing}");
    // What the cloud answered is what was counted.
    let cloud_answers = routes.iter().filter(|r| *r == "cloud").count();
    assert!(
        (spent - cloud_answers as f64 * 0.000055).abs() < 1e-9,
        "{spent} {cloud_answers}"
    );
    let live = routing["shares"]["local"].as_f64().expect("live shares");
    assert!((live - 0.9).abs() <= 0.1, "{routing}");
    let text = metrics(&gw).await;
    assert_eq!(
        value(&text, r#"switchyard_cloud_budget_usd{kind="daily"}"#),
        0.002
    );
    let counted = value(&text, r#"switchyard_cloud_budget_usd{kind="spent"}"#);
    assert!((counted - spent).abs() < 1e-9, "{text}");
    assert_eq!(
        value(&text, r#"switchyard_routing_share_target{route="local"}"#),
        0.9
    );
    let last = &routes[300..];
    let local_last = last.iter().filter(|r| *r == "local").count();
    assert!(local_last >= 75, "{local_last} of the last 100 went local");
    let local_first = routes[128..228].iter().filter(|r| *r == "local").count();
    assert!(local_first < local_last, "{local_first} {local_last}");
}

/// The retraining loop: the gateway's own feedback labels train a scorer, reported next to the
/// scorer in force, and the result is a scorer file the configuration accepts.
#[test]
fn feedback_labels_train_a_scorer_the_gateway_accepts() {
    let mut lines = String::new();
    for i in 0..48 {
        let (text, score) = if i % 2 == 0 {
            (format!("thanks, that helps {i}"), 1.0)
        } else {
            (
                format!("derive the closed form of the recurrence a_{i} step by step"),
                0.0,
            )
        };
        let mut line = json!({
            "id": format!("req_{i}"), "tenant": "team-a", "route": "local", "rule": "scorer",
            "messages": [{"role": "user", "content": text}],
            "feedback": {"score": score, "comment": ""}
        });
        if i % 8 == 7 {
            // Kept without text, or about a cloud answer: nothing to learn from.
            line.as_object_mut().unwrap().remove("messages");
        } else if i % 8 == 6 {
            line["route"] = json!("cloud");
        }
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let data = scratch_file("labels.jsonl", &lines);
    let out = scratch_file("scorer.json", "");
    let o = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["train", "--iterations", "200", "--folds", "3", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(report.contains("12 feedback line(s) left out"), "{report}");
    assert!(report.contains("the scorer in force today"), "{report}");
    assert!(report.contains("feedback"), "{report}");
    let yaml = routed_config("http://127.0.0.1:1", "http://127.0.0.1:2", false)
        .replacen(
            "scorer: {local_below: 0.0, cloud_from: 0.0}",
            &format!("scorer: {{file: \"{}\"}}", out.display()),
            1,
        )
        .replace("{PORT}", "8080");
    switchyard::config::Config::from_yaml(&yaml, |_| None).expect("the trained scorer loads");
}

/// An intent classifier: `refund` and `invoice` texts are billing (sure), `price` is billing
/// (unsure), `slow` hangs, `broken` gets a 500; anything else is chit-chat.
fn classifier(req: &Recorded) -> Reply {
    let text = req.json()["text"].as_str().unwrap_or_default().to_owned();
    if text.contains("slow") {
        return Reply::Hang;
    }
    if text.contains("broken") {
        return Reply::error(500, "server_error", "down");
    }
    let (intent, score) = if text.contains("refund") || text.contains("invoice") {
        ("billing", 0.95)
    } else if text.contains("price") {
        ("billing", 0.4)
    } else {
        ("chitchat", 0.9)
    };
    Reply::json(json!({"intent": intent, "score": score}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_intent_ask_the_teams_classifier_only_when_the_other_rules_leave_it_open() {
    let local = Mock::start(echo).await;
    let cloud = Mock::start(echo).await;
    let intents = Mock::start(classifier).await;
    let yaml = format!(
        r#"{}
routing:
  classify: [auto]
  scorer: {{local_below: 0.0, cloud_from: 0.0}}
  classifier: {{url: "{}/intent", timeout: 200ms}}
  rules:
    - name: billing
      when: {{all: [{{feature: intent, in: [billing, refunds]}}, {{feature: intent_score, ge: 0.8}}]}}
      route: local
    - {{name: tools, when: {{feature: tools, gt: 0}}, route: cloud}}
"#,
        two_upstreams(&local.url(), &cloud.url(), ""),
        intents.url()
    );
    let gw = Gateway::start(&yaml);
    let addr = gw.addr();
    let chat = |text: &str, tools: bool| {
        let body = chat_body(text, tools);
        async move { post(addr, "/v1/chat/completions", &body, &[]).await }
    };

    // A plain rule decides: the classifier is not asked, though its rule comes first.
    let r = chat("refund my order", true).await;
    assert_eq!(r.header("x-switchyard-rule"), Some("tools"));
    assert!(intents.requests().is_empty());

    // Left to the scorer (which says cloud), the intent decides: sure billing goes local.
    let r = chat("refund my order", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-rule"), Some("billing"));
    assert_eq!(r.header("x-switchyard-route"), Some("local"));
    let asked = intents.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].path, "/intent");
    assert_eq!(asked[0].json(), json!({"text": "refund my order"}));
    assert_eq!(asked[0].header("authorization"), None, "no key is sent");
    // The same message again: the answer kept is used.
    let r = chat("refund my order", false).await;
    assert_eq!(r.header("x-switchyard-rule"), Some("billing"));
    assert_eq!(intents.requests().len(), 1);

    // Unsure billing and other intents leave the scorer's decision.
    let r = chat("what is the price", false).await;
    assert_eq!(r.header("x-switchyard-rule"), Some("scorer"));
    assert_eq!(r.header("x-switchyard-route"), Some("cloud"));

    // The dry run shows what the classifier said.
    let explained = post(gw.addr(), "/v1/route", &chat_body("an invoice", false), &[])
        .await
        .json();
    assert_eq!(explained["rule"], "billing", "{explained}");
    assert_eq!(
        explained["intent"],
        json!({"name": "billing", "score": 0.95})
    );

    // A classifier that hangs or fails costs a request its budget at most, and no answer.
    let started = std::time::Instant::now();
    let r = chat("slow refund", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-rule"), Some("scorer"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let r = chat("broken refund", false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-rule"), Some("scorer"));
    // A third miss in a row rests it: the next new question is not sent.
    chat("broken refund again", false).await;
    let before = intents.requests().len();
    let r = chat("refund, once more", false).await;
    assert_eq!(r.header("x-switchyard-rule"), Some("scorer"));
    assert_eq!(intents.requests().len(), before, "resting: not asked");

    let m = metrics(&gw).await;
    for (result, n) in [
        ("answered", 3.0),
        ("cached", 1.0),
        ("timeout", 1.0),
        ("error", 2.0),
        ("resting", 1.0),
    ] {
        let series = format!("switchyard_intent_requests_total{{result=\"{result}\"}}");
        assert_eq!(value(&m, &series), n, "{series}\n{m}");
    }
    assert!(sample(&m, "switchyard_intent_seconds_count").is_some());
}

#[test]
fn intent_rules_are_checked_when_the_configuration_loads() {
    let base =
        two_upstreams("http://127.0.0.1:1", "http://127.0.0.1:2", "").replace("{PORT}", "8080");
    let load = |routing: &str| {
        let yaml = format!("{base}\nrouting:\n{routing}");
        switchyard::config::Config::from_yaml(&yaml, |_| None)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    };
    let rule = "  rules:\n    - {name: faq, when: {feature: intent, in: [faq]}, route: local}\n";
    let with = "  classifier: {url: \"http://127.0.0.1:3/intent\"}\n";
    assert!(load(&format!("{with}{rule}")).is_ok());
    let e = load(rule).unwrap_err();
    assert!(e.contains("needs routing.classifier"), "{e}");
    let pinned = "  rules:\n    - {name: faq, when: {feature: intent, in: [faq]}, route: local, pin: true}\n";
    let e = load(&format!("{with}{pinned}")).unwrap_err();
    assert!(
        e.contains("keep-local rule cannot look at the intent"),
        "{e}"
    );
    let compared = "  rules:\n    - {name: faq, when: {feature: intent, eq: 1}, route: local}\n";
    let e = load(&format!("{with}{compared}")).unwrap_err();
    assert!(e.contains("takes `in: [...]`"), "{e}");
    let misplaced =
        "  rules:\n    - {name: faq, when: {feature: tools, in: [faq]}, route: local}\n";
    let e = load(&format!("{with}{misplaced}")).unwrap_err();
    assert!(e.contains("`in` goes with `feature: intent`"), "{e}");
}
