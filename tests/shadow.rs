//! Shadow judging over real sockets: local answers are also asked of the cloud after the client
//! has them, a judge model compares the two, and each verdict becomes a label line; within the
//! rate, never for a kept-local request.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn config(local: &str, cloud: &str, labels: &std::path::Path) -> String {
    two_upstreams(local, cloud, "")
        + &format!(
            r#"
routing:
  classify: [auto]
  upstreams: {{local: local, cloud: cloud, hybrid: cloud}}
  rules:
    - {{name: secrets, when: {{regex: ['(?i)password']}}, route: local, pin: true}}
    - {{name: all-local, route: local}}
  shadow:
    sample: 1
    judge: {{upstream: cloud, model: gpt-4o-mini}}
    max_per_minute: 2
    daily_budget_usd: 5
    labels: "{}"
    store_text: true
pricing:
  baseline: gpt-4o-2024-08-06
  models:
    gpt-4o-2024-08-06: {{input: 2.50, output: 10.00}}
    gpt-4o-mini: {{input: 0.15, output: 0.60}}
"#,
            labels.display()
        )
}

/// The cloud: a judge when asked to grade (it finds the two answers equal), else an answer.
fn cloud(req: &Recorded) -> Reply {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let grading = body["messages"][0]["content"]
        .as_str()
        .is_some_and(|s| s.contains("grading two answers"));
    let text = if grading {
        json!({"better": "tie", "a_acceptable": true, "b_acceptable": true}).to_string()
    } else {
        format!("cloud: {}", req.last_message())
    };
    let mut answer = completion(&model, &text);
    answer["usage"] = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
    Reply::json(answer)
}

fn local(req: &Recorded) -> Reply {
    Reply::json(completion(
        "llama-local",
        &format!("local: {}", req.last_message()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_are_judged_against_the_clouds_within_the_rate() {
    let local = Mock::start(local).await;
    let cloud = Mock::start(cloud).await;
    let labels = scratch_file("shadow.jsonl", "");
    let gw = Gateway::start(&config(&local.url(), &cloud.url(), &labels));
    let ask =
        |text: &str| json!({"model": "auto", "messages": [{"role": "user", "content": text}]});

    // Kept local: never shadowed. Then three ordinary local answers, two within the rate.
    for text in [
        "my password is hunter2",
        "what is a monad?",
        "name a prime",
        "and another",
    ] {
        let r = chat(gw.addr(), &ask(text)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-switchyard-route"), Some("local"));
        assert!(r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("local:"));
    }
    let until = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = complete_lines(&labels)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || Instant::now() > until {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    // A shadow task takes its place in the minute's allowance when it runs, after its answer
    // went out: which two of the three ordinary questions get one is up to the order the tasks
    // run in, but never the same one twice and never the kept-local one.
    let mut asked: Vec<&str> = Vec::new();
    for line in &lines {
        assert_eq!(line["source"], "shadow");
        assert_eq!(line["route"], "local");
        assert_eq!(line["rule"], "all-local");
        assert_eq!(line["served"]["upstream"], "local");
        assert_eq!(line["shadow"]["upstream"], "cloud");
        assert_eq!(line["judge"]["better"], "tie");
        assert_eq!(line["weak_ok"], true);
        assert!(line["cost_usd"].as_f64().unwrap() > 0.0);
        let question = line["messages"][0]["content"].as_str().unwrap();
        assert!(
            ["what is a monad?", "name a prime", "and another"].contains(&question),
            "{question}"
        );
        asked.push(question);
    }
    assert_ne!(asked[0], asked[1]);
    // What the cloud saw: each shadowed question once, and a judge's question with both answers;
    // nothing of the kept-local request.
    let seen: Vec<Value> = cloud
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| r.json())
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let judged: Vec<&Value> = seen
        .iter()
        .filter(|b| b["model"] == "gpt-4o-mini")
        .collect();
    assert_eq!(judged.len(), 2);
    for j in &judged {
        assert_eq!(j["response_format"]["type"], "json_object");
        let question = j["messages"][1]["content"].as_str().unwrap();
        assert!(
            question.contains("local: ") && question.contains("cloud: "),
            "{question}"
        );
    }
    assert!(seen.iter().all(|b| !b.to_string().contains("hunter2")));

    // The skipped request's shadow task runs after its answer went out: wait for its count.
    let skipped = r#"switchyard_shadow_total{result="skipped_rate"}"#;
    let until = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(&gw).await;
    while !text.contains(skipped) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics(&gw).await;
    }
    assert_eq!(
        value(&text, r#"switchyard_shadow_total{result="judged"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"switchyard_shadow_total{result="skipped_rate"}"#),
        1.0
    );
    assert!(value(&text, "switchyard_shadow_cost_usd_total") > 0.0);
}
