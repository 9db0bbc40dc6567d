//! Classification cost against request size: features, the default rules and the scorer, on
//! requests of about 2 KB, 32 KB and 256 KB (a conversation that grows turn by turn), with the
//! built-in semantic scorer and with the surface scorer alone; the semantic scorer on one user
//! message of 2 KB (the text it reads); and loading its embedding table.
//!
//! Run with `cargo bench --bench classify`.

mod common;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;
use switchyard::api::ChatRequest;
use switchyard::classify::{Features, StaticTable};
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

/// The default configuration, with the built-in scorer or the one in `conf/` named `scorer`.
fn config(scorer: Option<&str>) -> Config {
    let yaml = match scorer {
        None => DEFAULT_YAML.to_owned(),
        Some(file) => {
            DEFAULT_YAML.replacen("  scorer:\n", &format!("  scorer:\n    file: {file}\n"), 1)
        }
    };
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    Config::from_yaml_in(
        &yaml,
        |n| (n == "OPENAI_API_KEY").then(|| "sk-bench".to_owned()),
        &conf,
    )
    .expect("default config")
}

fn classify(c: &mut Criterion) {
    let semantic = config(None);
    let surface = config(Some("scorer-surface.json"));
    let mut group = c.benchmark_group("classify");
    for size in [2 << 10, 32 << 10, 256 << 10] {
        let req = request(size);
        group.throughput(Throughput::Bytes(req.body().len() as u64));
        group.bench_with_input(BenchmarkId::new("features", size), &req, |b, req| {
            b.iter(|| Features::of(black_box(req)))
        });
        group.bench_with_input(BenchmarkId::new("decide", size), &req, |b, req| {
            b.iter(|| route::decide(&semantic, black_box(req), None).route)
        });
        group.bench_with_input(BenchmarkId::new("decide_surface", size), &req, |b, req| {
            b.iter(|| route::decide(&surface, black_box(req), None).route)
        });
    }
    let req = common::one_message(2 << 10);
    group.throughput(Throughput::Bytes(req.body().len() as u64));
    group.bench_function("decide_one_2k_message", |b| {
        b.iter(|| route::decide(&semantic, black_box(&req), None).route)
    });
    group.bench_function("decide_one_2k_message_surface", |b| {
        b.iter(|| route::decide(&surface, black_box(&req), None).route)
    });
    group.finish();

    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/minilm-l6-static.bin");
    let mut group = c.benchmark_group("table");
    group.sample_size(10);
    group.bench_function("load", |b| {
        b.iter(|| StaticTable::load(black_box(&table)).expect("table"))
    });
    let loaded = StaticTable::load(&table).expect("table");
    let req = common::one_message(2 << 10);
    let text = switchyard::classify::scorer::last_user_text(&req);
    group.sample_size(50);
    group.bench_function("tokens_of_2k_message_first_128", |b| {
        b.iter(|| {
            let mut n = 0.0f32;
            loaded.tokens(black_box(text), 128, |_, w| n += w);
            n
        })
    });
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
