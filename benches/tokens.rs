//! What counting a prompt costs per request: the estimate alone, and the vocabulary count that
//! runs only when the estimate is near the context limit, on prompts of about 2 KB, 25 KB and
//! 50 KB against an 8192-token context (the size the embedded configuration asks Ollama for)
//! and a 128k one. The first use of a vocabulary loads its tables; that time is printed once.
//!
//! Run with `cargo bench --bench tokens`.

mod common;

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard::classify::estimate_prompt_tokens;
use switchyard::tokens::{prompt_tokens, Vocabulary};

fn tokens(c: &mut Criterion) {
    for v in [Vocabulary::Cl100k, Vocabulary::O200k] {
        let started = Instant::now();
        v.load();
        eprintln!("loading {v:?}: {:?}", started.elapsed());
    }
    let mut group = c.benchmark_group("tokens");
    for (kb, room) in [(2, 8192), (25, 8192), (50, 8192), (50, 131_072)] {
        let request = common::one_message(kb << 10);
        group.throughput(Throughput::Bytes((kb as u64) << 10));
        let id = format!("{kb}KB/{room}");
        group.bench_with_input(BenchmarkId::new("estimate", &id), &request, |b, r| {
            b.iter(|| estimate_prompt_tokens(black_box(&r.messages)))
        });
        group.bench_with_input(BenchmarkId::new("guard", &id), &request, |b, r| {
            b.iter(|| prompt_tokens(black_box(&r.messages), Some(Vocabulary::Cl100k), room))
        });
    }
    group.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
