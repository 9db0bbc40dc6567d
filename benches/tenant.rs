//! What keys and limits add to a request: finding the caller's key among twenty, and admitting
//! and settling a request against its request, token and budget limits, in this process's
//! memory and, when `SWITCHYARD_BENCH_REDIS` names a Redis (`redis://127.0.0.1:6379`), through
//! Redis shared by replicas.
//!
//! Run with `cargo bench --bench tenant`; for the Redis rows start one first:
//! `redis-server --port 6399 --save '' & SWITCHYARD_BENCH_REDIS=redis://127.0.0.1:6399 cargo bench --bench tenant`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use switchyard::auth::Tenant;
use switchyard::config::{Config, KeyConfig};
use switchyard::limit::{LimitMetrics, Limits};
use switchyard::state::Shared;

/// A configuration with twenty keys, each limited by requests, tokens and budgets, sharing state
/// through `redis` when given.
fn keyed(redis: Option<&str>) -> Config {
    let mut yaml = String::from(
        r#"
upstreams:
  cloud: {route: cloud, url: "https://api.openai.com", model: gpt-4o, api_key: sk-bench}
default_route: {upstream: cloud}
keys:
"#,
    );
    for i in 0..20 {
        let hash: [u8; 32] = Sha256::digest(format!("sy-bench-key-{i}")).into();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        yaml.push_str(&format!(
            "  - {{name: team-{i}, sha256: {hex}, requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, budget_usd: {{day: 1000000000, month: 1000000000}}}}\n"
        ));
    }
    if let Some(url) = redis {
        yaml.push_str(&format!("state: {{redis: \"{url}\", fail_open: false}}\n"));
    }
    Config::from_yaml(&yaml, |_| None).expect("bench config")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn authenticate(c: &mut Criterion) {
    let config = keyed(None);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sy-bench-key-19"),
    );
    let now = now();
    c.bench_function("tenant/authenticate_last_of_20_keys", |b| {
        b.iter(|| {
            Tenant::authenticate(
                black_box(&config.keys),
                &config.tenant_secret,
                black_box(&headers),
                now,
            )
        })
    });
}

/// Admits and settles one request with `limits` for `key`, the way a request is charged.
async fn admit_and_settle(limits: &Limits, key: &KeyConfig, now: u64) {
    if let Ok(charge) = limits.admit(key, 1200, 0.004, now).await {
        limits.settle(key, &charge, 900, 0.003, now).await;
    }
}

fn limits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let registry = prometheus::Registry::new();
    let memory = Limits::new(LimitMetrics::register(&registry).expect("metrics"), None);
    let config = keyed(None);
    let key = &config.keys[7];
    c.bench_function("tenant/admit_and_settle_in_memory", |b| {
        b.iter(|| runtime.block_on(admit_and_settle(&memory, key, now())))
    });

    let Ok(url) = std::env::var("SWITCHYARD_BENCH_REDIS") else {
        return;
    };
    let config = keyed(Some(&url));
    let registry = prometheus::Registry::new();
    let shared = Shared::connect(&config.state, &registry)
        .expect("state")
        .map(Arc::new);
    let limits = Limits::new(LimitMetrics::register(&registry).expect("metrics"), shared);
    let key = &config.keys[7];
    c.bench_function("tenant/admit_and_settle_through_redis", |b| {
        b.iter(|| runtime.block_on(admit_and_settle(&limits, key, now())))
    });
}

criterion_group!(benches, authenticate, limits);
criterion_main!(benches);
