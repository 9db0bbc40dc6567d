//! The gateway's own work around answers, without sockets: computing a cache key, serving a hit
//! (look-up and replay as JSON or as SSE), and reading a relayed stream for its usage and the
//! cache.
//!
//! Run with `cargo bench --bench cache`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard::api::{ChatRequest, Choice, Completion, Usage};
use switchyard::cache::{Cache, CacheMetrics, Entry, Lookup, Served};
use switchyard::config::CacheConfig;
use switchyard::upstream::answer::AnswerReader;

/// A ~1 KB answer.
fn answer() -> Completion {
    Completion {
        id: "chatcmpl-bench".into(),
        created: 1_700_000_000,
        model: "llama3.1:8b".into(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            content: Some(
                "The Roman empire rose from a city state to rule the Mediterranean. ".repeat(15),
            ),
            finish_reason: Some("stop".into()),
            ..Choice::default()
        }],
        usage: Some(Usage {
            prompt_tokens: 350,
            completion_tokens: 240,
        }),
    }
}

/// An SSE stream of that answer cut into ~4-byte tokens, the way a model streams it.
fn token_stream() -> Vec<Bytes> {
    let a = answer();
    let text = a.choices[0].content.clone().unwrap_or_default();
    let mut events = Vec::new();
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({"id": a.id, "object": "chat.completion.chunk", "created": a.created,
            "model": a.model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    events.push(chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    ));
    for piece in text.as_bytes().chunks(4) {
        let piece = String::from_utf8_lossy(piece);
        events.push(chunk(
            serde_json::json!({"content": piece}),
            serde_json::Value::Null,
        ));
    }
    events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn cache(c: &mut Criterion) {
    let body = common::chat_body("auto", 0.0);
    let config = CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(600),
        max_bytes: 64 << 20,
        max_entry_bytes: 1 << 20,
    };
    let metrics = CacheMetrics::register(&prometheus::Registry::new()).expect("new registry");
    let cache = Cache::new(&config, metrics, None);
    let parsed = ChatRequest::parse(body.clone()).expect("valid");
    let key = cache.key("key-0123456789abcdef", "local", "llama3.1:8b", &parsed);
    let served = Served {
        upstream: "local".into(),
        model: "llama3.1:8b".into(),
    };
    cache.store(key, Entry::new(answer(), None, served), None);

    let mut group = c.benchmark_group("cache");
    group.bench_function("key", |b| {
        b.iter(|| {
            cache.key(
                "key-0123456789abcdef",
                "local",
                "llama3.1:8b",
                black_box(&parsed),
            )
        })
    });
    group.bench_function("hit_json", |b| {
        b.iter(|| {
            let req = ChatRequest::parse(black_box(body.clone())).expect("valid");
            let key = cache.key("key-0123456789abcdef", "local", "llama3.1:8b", &req);
            match cache.lookup(key) {
                Lookup::Hit(entry) => entry.json.clone(),
                _ => panic!("a stored answer"),
            }
        })
    });
    group.bench_function("hit_sse", |b| {
        b.iter(|| {
            let req = ChatRequest::parse(black_box(body.clone())).expect("valid");
            let key = cache.key("key-0123456789abcdef", "local", "llama3.1:8b", &req);
            match cache.lookup(key) {
                Lookup::Hit(entry) => entry.completion.to_sse(false),
                _ => panic!("a stored answer"),
            }
        })
    });
    let stream = token_stream();
    group.bench_function(format!("read_stream_{}_events", stream.len()), |b| {
        b.iter(|| {
            let mut reader = AnswerReader::sse(1 << 20, true);
            for event in &stream {
                black_box(reader.feed(event.clone()));
            }
            reader.finish()
        })
    });
    group.finish();
}

criterion_group!(benches, cache);
criterion_main!(benches);
