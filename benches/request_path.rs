//! The gateway's own work per chat request, without sockets: parse the body once, look the
//! model up, splice the new model name into the bytes, and rewrite the client's header for the
//! upstream; then the whole pipeline (parse, decide, cache, call, relay, account) against a
//! scripted upstream, as JSON and as a 20-event stream. Everything else a request costs is
//! pingora's HTTP handling and the kernel's.
//!
//! Run with `cargo bench --bench request_path`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::hint::black_box;
use switchyard::api::ChatRequest;
use switchyard::config::{Config, TraceConfig};
use switchyard::metrics::Record;
use switchyard::pipeline::{Collect, Incoming, Pipeline};
use switchyard::route;
use switchyard::telemetry::trace::Trace;
use switchyard::upstream::scripted::{Reply, Scripted};
use switchyard::upstream::{request_head, Upstream};

/// The headers the official Python SDK sends.
fn client_header() -> HeaderMap {
    let mut req = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8080"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.11.7"),
        ("authorization", "Bearer sk-client"),
        ("x-stainless-async", "false"),
        ("x-stainless-retry-count", "0"),
        ("content-length", "1409"),
    ] {
        req.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    req
}

fn config() -> Config {
    let yaml = r#"
upstreams:
  local: {route: local, url: "http://127.0.0.1:11434", model: llama3.1}
  cloud: {route: cloud, url: "https://api.openai.com", model: gpt-4o, api_key: sk-bench}
models:
  - {name: auto, upstream: local}
  - {name: gpt-4o, upstream: cloud, model: gpt-4o-2024-08-06}
default_route: {upstream: cloud}
"#;
    Config::from_yaml(yaml, |_| None).expect("bench config")
}

fn request_path(c: &mut Criterion) {
    let body = common::chat_body("gpt-4o", 0.7);
    let config = config();
    let upstreams: Vec<Upstream> = config
        .upstreams
        .iter()
        .cloned()
        .map(|u| Upstream::new(u).expect("upstream"))
        .collect();
    let header = client_header();

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| ChatRequest::parse(black_box(body.clone())).expect("valid"))
    });
    let parsed = ChatRequest::parse(body.clone()).expect("valid");
    group.bench_function("decide_and_rewrite_model", |b| {
        b.iter(|| {
            let d = route::decide(&config, black_box(&parsed), None);
            parsed.body_with_model(d.model)
        })
    });
    let post = Method::POST;
    let path = "/v1/chat/completions";
    group.bench_function("upstream_header", |b| {
        b.iter(|| {
            let up = &upstreams[1];
            request_head(&post, black_box(&header), up, &up.pool.backends[0], path).expect("header")
        })
    });
    group.bench_function("all", |b| {
        b.iter(|| {
            let req = ChatRequest::parse(black_box(body.clone())).expect("valid");
            let d = route::decide(&config, &req, None);
            let out = req.body_with_model(d.model);
            let up = &upstreams[d.upstream];
            let h = request_head(&post, &header, up, &up.pool.backends[0], path).expect("header");
            (out, h)
        })
    });
    group.finish();
}

/// A JSON answer and a stream of 20 content events, as the load benchmark's mock sends them.
fn answers() -> (Reply, Reply) {
    let json = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"The Roman empire rose, ruled and fell."},"finish_reason":"stop"}],"usage":{"prompt_tokens":320,"completion_tokens":12,"total_tokens":332}}"#;
    let mut events = String::new();
    for i in 0..20 {
        events.push_str(&format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    events.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":320,\"completion_tokens\":20,\"total_tokens\":340}}\n\ndata: [DONE]\n\n");
    (
        Reply::json(json),
        Reply::pieces("text/event-stream", &[&events]),
    )
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let headers = client_header();
    let tenant = switchyard::auth::Tenant::of(&headers, &[0; 32]);
    let mut group = c.benchmark_group("pipeline");
    // A trace recorded for every request (its spans built, not exported): what tracing costs
    // when it is on; `json` and `stream` carry no trace, as every request does with it off.
    let traced = TraceConfig {
        endpoint: "http://127.0.0.1:4318/v1/traces".into(),
        service_name: "switchyard".into(),
        sample: 1.0,
        capture_content: false,
        timeout: std::time::Duration::from_secs(1),
    };
    for (name, stream, trace) in [
        ("json", false, false),
        ("stream", true, false),
        ("json_traced", false, true),
    ] {
        let p = Pipeline::new(config(), Scripted::new()).expect("pipeline");
        let (json, sse) = answers();
        p.transport()
            .always("cloud", if stream { sse } else { json });
        let mut body = common::chat_body("gpt-4o", 0.7).to_vec();
        if stream {
            // `{"model":…` becomes `{"stream":true,"model":…`.
            body.splice(1..1, b"\"stream\":true,".iter().copied());
        }
        let body = bytes::Bytes::from(body);
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let incoming = Incoming {
                        tenant: &tenant,
                        standing: None,
                        request_id: "req-bench",
                        started: std::time::Instant::now(),
                        headers: &headers,
                        path: "/v1/chat/completions",
                    };
                    let mut down = Collect::new(1 << 20);
                    let mut rec = Record::new();
                    if trace {
                        rec.trace = Trace::start(None, &traced).map(Box::new);
                    }
                    let _ = p.chat(incoming, body.clone(), &mut down, &mut rec).await;
                    if let Some(t) = rec.trace.take() {
                        std::hint::black_box(t.finish("chat gpt-4o".into(), None));
                    }
                    p.transport().take_sent();
                    down
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_path, pipeline);
criterion_main!(benches);
