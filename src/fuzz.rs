//! What the fuzz targets in `fuzz/` drive, kept here so that the inputs they found are replayed
//! by an ordinary test (`tests/fuzz_regressions.rs`): each function takes arbitrary bytes, runs
//! one of the gateway's readers of untrusted input on them, and checks what must hold whatever
//! the input. None may panic.

use std::sync::LazyLock;

use bytes::Bytes;

use crate::api::ChatRequest;
use crate::cache::Keyer;
use crate::config::{Config, DEFAULT_YAML};
use crate::upstream::answer::AnswerReader;
use crate::upstream::ollama;
use crate::upstream::scrub::Scrub;

/// The shipped configuration with a cloud key, so that every route is in force.
static CONFIG: LazyLock<Option<Config>> = LazyLock::new(|| {
    Config::from_yaml(DEFAULT_YAML, |name| {
        (name == "OPENAI_API_KEY").then(|| "sk-fuzz-key".to_owned())
    })
    .ok()
});

/// A split point in `data` drawn from its first byte, and the rest.
fn split(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => ((b as usize * rest.len()) / 256, rest),
        None => (0, data),
    }
}

/// A client's chat request body: parsed, classified, routed, explained, keyed for the cache,
/// and translated for a local model server.
pub fn request(data: &[u8]) {
    let Ok(req) = ChatRequest::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Some(config) = CONFIG.as_ref() else {
        return;
    };
    let decision = crate::route::decide(config, &req, None);
    let _ = crate::route::explain(config, &decision, &req);
    let _ = crate::classify::Features::of(&req);
    if let Some(upstream) = config.upstreams.first() {
        let _ = ollama::request_body(&req, "llama3.1:8b", upstream);
    }
}

/// The cache key: the same bytes give the same key, and two tenants never share one.
pub fn cache_key(data: &[u8]) {
    let Ok(req) = ChatRequest::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Ok(again) = ChatRequest::parse(Bytes::copy_from_slice(data)) else {
        panic!("the same bytes parsed once and not twice");
    };
    let keyer = Keyer::new();
    let a = keyer.key("tenant-a", "cloud", "gpt-4o", &req);
    assert_eq!(a, keyer.key("tenant-a", "cloud", "gpt-4o", &again));
    assert_ne!(a, keyer.key("tenant-b", "cloud", "gpt-4o", &req));
}

/// An upstream's SSE stream cut in two anywhere: relayed whole, read for its usage (whole, and
/// tallied only), and masked for a key.
pub fn sse(data: &[u8]) {
    let (at, body) = split(data);
    let strip = data.first().is_some_and(|b| b & 1 == 1);
    let (tallied, tallied_usage) =
        read_in_two(AnswerReader::sse(1 << 16, strip).tally_only(), body, at);
    let (plain_out, plain_usage) = read_in_two(AnswerReader::sse(1 << 16, strip), body, at);
    // A key spelled with `\u` escapes is the one thing a tally does not see through.
    if memchr::memmem::find(body, b"\\u").is_none() {
        assert_eq!(tallied, plain_out, "a tally relays what a full read relays");
        if plain_usage.is_some() {
            assert_eq!(tallied_usage, plain_usage, "a tally reads the usage");
        }
    }

    let mut reader = AnswerReader::sse(1 << 16, strip);
    let scrub = Scrub::new(["sk-fuzz-key"]);
    let mut masked = scrub.stream();
    let mut out = Vec::new();
    for piece in [&body[..at], &body[at..]] {
        let piece = masked.feed(Bytes::copy_from_slice(piece));
        out.extend_from_slice(&reader.feed(piece));
    }
    out.extend_from_slice(&reader.feed(masked.finish()));
    if let Some(rest) = reader.rest() {
        out.extend_from_slice(&rest);
    }
    let _ = reader.finish();
    assert!(!scrub.finds(&out), "a key went through the scrubber");
    if !strip {
        let whole = scrub.all(body);
        assert_eq!(
            out,
            &whole[..],
            "a stream is relayed as it came, keys masked"
        );
    }
}

/// What a reader passes on of `body` fed in two pieces (cut at `at`), and the usage it read.
fn read_in_two(
    mut reader: AnswerReader,
    body: &[u8],
    at: usize,
) -> (Vec<u8>, Option<crate::api::Usage>) {
    let mut out = Vec::new();
    for piece in [&body[..at], &body[at..]] {
        out.extend_from_slice(&reader.feed(Bytes::copy_from_slice(piece)));
    }
    if let Some(rest) = reader.rest() {
        out.extend_from_slice(&rest);
    }
    (out, reader.finish().usage)
}

/// A local model server's answers: an NDJSON stream cut anywhere, translated to OpenAI SSE, and
/// a whole JSON answer and an error body read.
pub fn ollama(data: &[u8]) {
    let (at, body) = split(data);
    let mut translator = ollama::StreamTranslator::new("llama3.1:8b");
    let mut reader = AnswerReader::written(1 << 16, false);
    translator.feed(&body[..at], &mut reader);
    translator.feed(&body[at..], &mut reader);
    translator.finish(&mut reader);
    let out = reader.take();
    // Whatever came in, what goes out is SSE events of JSON.
    for event in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let data = event
            .strip_prefix(b"data: ")
            .unwrap_or_else(|| panic!("not an SSE data line: {event:?}"));
        assert!(
            data == b"[DONE]" || serde_json::from_slice::<serde_json::Value>(data).is_ok(),
            "not JSON: {data:?}"
        );
    }
    let _ = ollama::completion(body, "local");
    let _ = ollama::error_message(body);
}

/// A configuration file: accepted or refused with errors, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text, |_| None);
    }
}
