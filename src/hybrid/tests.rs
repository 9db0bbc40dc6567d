//! The stage with a scripted summarizer: what it shortens, in parallel, under its budget, with
//! its cache, and what it never touches.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::api::Role;

/// A summarizer that writes `SUMMARY[n]` for the n-th call, after `delay`, recording when each
/// call started and ended; it fails when `fail` is set.
#[derive(Default)]
struct Fake {
    delay: Duration,
    fail: bool,
    events: Mutex<Vec<String>>,
    inputs: Mutex<Vec<String>>,
}

impl Summarizer for Fake {
    async fn summarize(
        &self,
        _instructions: String,
        text: String,
        _max_tokens: u64,
    ) -> Result<(String, Usage), String> {
        let n = {
            let mut inputs = self.inputs.lock().unwrap();
            inputs.push(text.clone());
            inputs.len()
        };
        self.events.lock().unwrap().push(format!("start {n}"));
        tokio::time::sleep(self.delay).await;
        self.events.lock().unwrap().push(format!("end {n}"));
        if self.fail {
            return Err("the model server is down".into());
        }
        let usage = Usage {
            prompt_tokens: estimate_tokens(&text),
            completion_tokens: 5,
        };
        Ok((format!("SUMMARY[{n}]"), usage))
    }
}

fn stage(config: &HybridConfig) -> Stage {
    let metrics = HybridMetrics::register(&prometheus::Registry::new()).unwrap();
    Stage::new(config, metrics)
}

fn config() -> HybridConfig {
    HybridConfig {
        min_part_tokens: 100,
        keep_last_turns: 2,
        ..HybridConfig::default()
    }
}

fn model() -> Model<'static> {
    Model {
        name: "small",
        context: None,
    }
}

fn request(messages: serde_json::Value) -> ChatRequest {
    let body = json!({"model": "auto", "messages": messages}).to_string();
    ChatRequest::parse(Bytes::from(body)).unwrap()
}

fn document(topic: &str) -> String {
    (0..80)
        .map(|i| {
            format!(
                "Note {i} on {topic}: the value of setting {i} is {}.",
                i * 7
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn rag() -> ChatRequest {
    request(json!([
        {"role": "system", "content": format!("Answer from these notes.\n\n{}", document("alpha"))},
        {"role": "user", "content": "What is the value of setting 42?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"q\":\"setting 42\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": document("beta")},
        {"role": "user", "content": format!("Context:\n{}\n\nQuestion: and what is the value of setting 42?", document("gamma"))}
    ]))
}

async fn run(
    stage: &Stage,
    config: &HybridConfig,
    req: &ChatRequest,
    method: Shorten,
    fake: &Fake,
) -> Outcome {
    stage.run(config, req, method, Some((fake, model()))).await
}

#[tokio::test]
async fn parts_are_summarized_at_once_and_nothing_else_changes() {
    let c = config();
    let s = stage(&c);
    let fake = Fake {
        delay: Duration::from_millis(20),
        ..Fake::default()
    };
    let req = rag();
    let out = run(&s, &c, &req, Shorten::Abstractive, &fake).await;
    assert_eq!(out.report.done, Done::Summarized);
    assert_eq!(out.report.parts, 3);
    let events = fake.events.lock().unwrap().clone();
    assert!(
        events[..3].iter().all(|e| e.starts_with("start")),
        "three parts, all started before any ended: {events:?}"
    );
    let messages = out.messages.expect("shortened");
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    let before: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, before, "order and roles kept");
    assert_eq!(
        messages[0].content.text().lines().next(),
        Some("Answer from these notes."),
        "the introduction stays"
    );
    assert!(messages[0].content.text().contains("SUMMARY["));
    assert_eq!(
        messages[1], req.messages[1],
        "a short question is not touched"
    );
    assert_eq!(messages[2], req.messages[2], "the tool call is not touched");
    assert_eq!(
        messages[3].tool_call_id.as_deref(),
        Some("c1"),
        "the pair stays a pair"
    );
    let last = messages[4].content.text();
    assert!(last.starts_with("Context:\nSUMMARY["), "{last}");
    assert!(
        last.ends_with("Question: and what is the value of setting 42?"),
        "the question is never changed: {last}"
    );
    assert!(out.report.after * 5 < out.report.before, "{:?}", out.report);
    assert!(out.report.summarizer.prompt_tokens > 0);
}

#[tokio::test]
async fn extraction_keeps_the_answer_without_a_model() {
    let c = config();
    let s = stage(&c);
    let fake = Fake::default();
    let req = rag();
    let out = run(&s, &c, &req, Shorten::Extractive, &fake).await;
    assert_eq!(out.report.done, Done::Extracted);
    assert!(fake.inputs.lock().unwrap().is_empty(), "no model call");
    let messages = out.messages.unwrap();
    for i in [0, 3, 4] {
        assert!(
            messages[i]
                .content
                .text()
                .contains("the value of setting 42 is 294."),
            "message {i}: {}",
            messages[i].content.text()
        );
    }
    assert!(out.report.after * 2 < out.report.before, "{:?}", out.report);
}

#[tokio::test]
async fn an_expired_budget_or_a_failing_model_leaves_the_request_as_it_was() {
    let mut c = config();
    c.budget = Duration::from_millis(30);
    let s = stage(&c);
    let slow = Fake {
        delay: Duration::from_secs(5),
        ..Fake::default()
    };
    let out = run(&s, &c, &rag(), Shorten::Abstractive, &slow).await;
    assert_eq!(out.report.done, Done::Skipped(Skip::Budget));
    assert!(out.messages.is_none());
    assert_eq!(out.report.after, out.report.before);

    let c = config();
    let failing = Fake {
        fail: true,
        ..Fake::default()
    };
    let out = run(&s, &c, &rag(), Shorten::Abstractive, &failing).await;
    assert_eq!(out.report.done, Done::Skipped(Skip::LocalFailed));
    assert!(out.messages.is_none());

    let none: Option<(&Fake, Model)> = None;
    let out = s.run(&c, &rag(), Shorten::Abstractive, none).await;
    assert_eq!(out.report.done, Done::Skipped(Skip::NoSummarizer));
    let out = s.run(&c, &rag(), Shorten::Both, none).await;
    assert_eq!(
        out.report.done,
        Done::Extracted,
        "both without a model: extract"
    );
}

#[tokio::test]
async fn a_document_seen_again_is_not_summarized_again() {
    let c = config();
    let s = stage(&c);
    let fake = Fake::default();
    let first = run(&s, &c, &rag(), Shorten::Abstractive, &fake).await;
    let again = run(&s, &c, &rag(), Shorten::Abstractive, &fake).await;
    assert_eq!(
        fake.inputs.lock().unwrap().len(),
        3,
        "three parts, summarized once"
    );
    assert_eq!(first.messages, again.messages);
    assert_eq!(
        again.report.summarizer,
        Usage::default(),
        "cached summaries cost nothing"
    );
}

fn conversation(turns: usize) -> ChatRequest {
    let mut messages = vec![json!({"role": "system", "content": "You help with Python."})];
    for t in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Turn {t}: {}", "I have a question about my service. ".repeat(12))}));
        messages.push(json!({"role": "assistant", "content": format!("Answer {t}: {}", "Here is what the documentation says. ".repeat(12))}));
    }
    messages.push(json!({"role": "user", "content": "So which port did I say?"}));
    request(serde_json::Value::Array(messages))
}

#[tokio::test]
async fn a_growing_conversation_summarizes_only_its_new_old_turns() {
    let mut c = config();
    c.min_part_tokens = 150;
    let s = stage(&c);
    let fake = Fake::default();
    let out = run(&s, &c, &conversation(6), Shorten::Abstractive, &fake).await;
    let messages = out.messages.expect("shortened");
    // System, the summary, then the kept turns: turn 5 (two messages) and the question.
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[1].role, Role::System);
    assert!(messages[1].content.text().ends_with("SUMMARY[1]"));
    assert_eq!(messages[4].content.text(), "So which port did I say?");
    let first_input = fake.inputs.lock().unwrap()[0].clone();
    assert!(first_input.contains("Turn 0") && first_input.contains("Answer 4"));
    assert!(
        !first_input.contains("Turn 5"),
        "the kept turns are not summarized"
    );

    // Two turns later: only turns 5 and 6 are new among the old ones.
    let out = run(&s, &c, &conversation(8), Shorten::Abstractive, &fake).await;
    assert!(out.messages.is_some());
    let inputs = fake.inputs.lock().unwrap().clone();
    assert_eq!(inputs.len(), 2, "one call per request");
    let second = &inputs[1];
    assert!(
        second.contains("SUMMARY[1]"),
        "the earlier summary is reused: {second}"
    );
    assert!(second.contains("Turn 5") && second.contains("Answer 6"));
    assert!(
        !second.contains("Turn 0"),
        "turns already summarized are not read again"
    );
}

#[tokio::test]
async fn small_savings_and_short_requests_are_left_alone() {
    let c = config();
    let s = stage(&c);
    let fake = Fake::default();
    let short = request(json!([{"role": "user", "content": "Hello there!"}]));
    let out = run(&s, &c, &short, Shorten::Abstractive, &fake).await;
    assert_eq!(out.report.done, Done::Skipped(Skip::NoParts));

    let mut c = config();
    c.min_saving = 0.99;
    let out = run(&s, &c, &rag(), Shorten::Extractive, &fake).await;
    assert_eq!(out.report.done, Done::Skipped(Skip::SmallSaving));
    assert!(out.messages.is_none());
}

#[tokio::test]
async fn a_part_longer_than_the_model_reads_is_cut_into_chunks() {
    let mut c = config();
    c.summary_tokens = 100;
    let s = stage(&c);
    let fake = Fake::default();
    let req = request(json!([
        {"role": "user", "content": format!("{}\n\nWhat is setting 3?", document("delta").repeat(3))}
    ]));
    let small = Model {
        name: "small",
        context: Some(1024),
    };
    let out = s
        .run(&c, &req, Shorten::Abstractive, Some((&fake, small)))
        .await;
    let inputs = fake.inputs.lock().unwrap().clone();
    assert!(inputs.len() >= 3, "{} chunks", inputs.len());
    assert!(
        inputs.iter().all(|i| estimate_tokens(i) <= 1024),
        "each fits the context"
    );
    let text = out.messages.unwrap()[0].content.text().to_owned();
    assert!(text.contains("SUMMARY[1]") && text.contains(&format!("SUMMARY[{}]", inputs.len())));
    assert!(matches!(out.report.done, Done::Summarized));
}

#[tokio::test]
async fn history_longer_than_the_model_reads_is_cut_or_extracted_to_fit() {
    let mut c = config();
    c.summary_tokens = 64;
    // Only the history is long enough to shorten.
    c.min_part_tokens = 150;
    let small = Model {
        name: "small",
        context: Some(512),
    };
    for method in [Shorten::Abstractive, Shorten::Both] {
        let s = stage(&c);
        let fake = Fake::default();
        let out = s
            .run(&c, &conversation(30), method, Some((&fake, small)))
            .await;
        assert!(out.messages.is_some(), "{method:?}: {:?}", out.report);
        let inputs = fake.inputs.lock().unwrap().clone();
        assert!(
            inputs.iter().all(|i| estimate_tokens(i) <= 512),
            "{method:?}: every call fits the context"
        );
        if method == Shorten::Both {
            assert_eq!(inputs.len(), 1, "extracted to one call's worth");
        } else {
            assert!(inputs.len() > 1, "cut into chunks");
        }
    }
}
