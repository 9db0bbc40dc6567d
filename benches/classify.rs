//! Classification cost against request size: features, the default rules and the scorer, on
//! requests of about 2 KB, 32 KB and 256 KB (a conversation that grows turn by turn).
//!
//! Run with `cargo bench --bench classify`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use switchyard::api::ChatRequest;
use switchyard::classify::Features;
use switchyard::config::{Config, DEFAULT_YAML};
use switchyard::route;

/// A conversation of about `size` bytes: a system prompt, then alternating turns of prose.
fn request(size: usize) -> ChatRequest {
    let turn = "Could you explain how the water cycle works, including evaporation, \
                condensation and precipitation, and why it matters for agriculture? ";
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are a patient teacher."})];
    let mut len = 0;
    let mut user = true;
    while len < size {
        let text = turn.repeat(4);
        len += text.len() + 40;
        messages.push(
            serde_json::json!({"role": if user { "user" } else { "assistant" }, "content": text}),
        );
        user = !user;
    }
    if !user {
        messages.push(serde_json::json!({"role": "user", "content": "And in deserts?"}));
    }
    let body = serde_json::json!({"model": "auto", "messages": messages}).to_string();
    ChatRequest::parse(Bytes::from(body)).expect("valid request")
}

fn classify(c: &mut Criterion) {
    let config = Config::from_yaml(DEFAULT_YAML, |n| {
        (n == "OPENAI_API_KEY").then(|| "sk-bench".to_owned())
    })
    .expect("default config");
    let mut group = c.benchmark_group("classify");
    for size in [2 << 10, 32 << 10, 256 << 10] {
        let req = request(size);
        group.throughput(Throughput::Bytes(req.body().len() as u64));
        group.bench_with_input(BenchmarkId::new("features", size), &req, |b, req| {
            b.iter(|| Features::of(black_box(req)))
        });
        group.bench_with_input(BenchmarkId::new("decide", size), &req, |b, req| {
            b.iter(|| route::decide(&config, black_box(req), None).route)
        });
    }
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
