//! The hybrid stage's own work, without a model: extraction from one document, and the whole
//! extractive stage (finding the parts, extracting, rebuilding the conversation) on RAG requests
//! of about 4,000 and 16,000 tokens. And the abstractive stage against a model that takes 20 ms
//! per summary, with one part and with three: parts are summarized at once, so three take about
//! the time of one.
//!
//! Run with `cargo bench --bench hybrid`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use switchyard::api::{ChatRequest, Usage};
use switchyard::config::HybridConfig;
use switchyard::hybrid::{extract, HybridMetrics, Model, Stage, Summarizer};
use switchyard::vocab::Shorten;

/// Never called: the extractive stage asks no model.
struct NoModel;

impl Summarizer for NoModel {
    async fn summarize(&self, _: String, _: String, _: u64) -> Result<(String, Usage), String> {
        Err("no model".into())
    }
}

/// A model that takes 20 ms to write any summary.
struct SlowModel;

impl Summarizer for SlowModel {
    async fn summarize(&self, _: String, text: String, _: u64) -> Result<(String, Usage), String> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Ok((format!("summary of {} bytes", text.len()), Usage::default()))
    }
}

/// A documentation-like text of about `tokens` tokens.
fn document(tokens: usize) -> String {
    let mut out = String::new();
    let mut i = 0;
    while out.len() < tokens * 4 {
        out.push_str(&format!(
            "The function setting_{i}() returns the value of option {i}; its default is {} and it may be changed at run time with configure(option_{i}=...). ",
            i * 7
        ));
        if i % 5 == 4 {
            out.push_str("\n\n");
        }
        i += 1;
    }
    out
}

fn request(doc: &str) -> ChatRequest {
    let body = serde_json::json!({"model": "auto", "messages": [
        {"role": "system", "content": "Answer from the documentation."},
        {"role": "user", "content": format!("Context:\n{doc}\n\nQuestion: What does option 42 default to?")}
    ]});
    ChatRequest::parse(Bytes::from(body.to_string())).expect("valid")
}

fn hybrid(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let config = HybridConfig {
        method: Shorten::Extractive,
        ..HybridConfig::default()
    };
    let metrics = HybridMetrics::register(&prometheus::Registry::new()).expect("registry");
    let stage = Stage::new(&config, metrics);
    let none: Option<(&NoModel, Model)> = None;
    let mut group = c.benchmark_group("hybrid");
    for tokens in [4_000, 16_000] {
        let doc = document(tokens);
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_function(format!("extract_{tokens}"), |b| {
            b.iter(|| {
                extract::extract(
                    black_box(&doc),
                    "What does option 42 default to?",
                    tokens as u64 / 4,
                )
            })
        });
        let req = request(&doc);
        group.bench_function(format!("stage_extractive_{tokens}"), |b| {
            b.iter(|| {
                runtime.block_on(stage.run(&config, black_box(&req), Shorten::Extractive, none))
            })
        });
    }
    group.finish();

    let timed = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let abstractive = HybridConfig::default();
    let model = Model {
        name: "slow",
        context: None,
    };
    let mut group = c.benchmark_group("hybrid_parallel");
    group.sample_size(20);
    let one = request(&document(2_000));
    let three = {
        let doc = document(2_000);
        let body = serde_json::json!({"model": "auto", "messages": [
            {"role": "system", "content": doc.replace("option", "setting")},
            {"role": "user", "content": "Search the docs."},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": doc.replace("option", "flag")},
            {"role": "user", "content": format!("Context:\n{doc}\n\nQuestion: What does option 42 default to?")}
        ]});
        ChatRequest::parse(Bytes::from(body.to_string())).expect("valid")
    };
    for (name, req) in [
        ("one_part_20ms_model", &one),
        ("three_parts_20ms_model", &three),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                // A new stage each time: no summary comes from the cache.
                let registry = prometheus::Registry::new();
                let metrics = HybridMetrics::register(&registry).expect("registry");
                let stage = Stage::new(&abstractive, metrics);
                let outcome = timed.block_on(stage.run(
                    &abstractive,
                    black_box(req),
                    Shorten::Abstractive,
                    Some((&SlowModel, model)),
                ));
                assert!(outcome.messages.is_some());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hybrid);
criterion_main!(benches);
