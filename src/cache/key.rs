//! The cache key: a 128-bit hash of the request as the upstream would see it, in canonical form.
//!
//! The key is computed from the one parse of the request (its typed view), never from its bytes
//! again. Two requests share a key when they ask the same upstream model the same thing: object
//! key order, whitespace and number spelling (`0` against `0.0`) do not matter, and neither do
//! `stream` and `stream_options`, since a stored answer replays in either form. The tenant is
//! part of the key, so one tenant never receives another's answer. The hash is SHA-256 (cut to
//! 128 bits): nobody can craft two requests that collide, and every replica computes the same
//! key for the same request, so replicas can share answers.

use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};

use serde_json::{Map, Value};

use crate::api::{ChatRequest, Content, Message, Part};

/// A cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub u128);

/// Computes keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct Keyer;

impl Keyer {
    /// A keyer.
    pub fn new() -> Keyer {
        Keyer
    }

    /// The key of `req` sent to `model` on `upstream` for `tenant`.
    pub fn key(&self, tenant: &str, upstream: &str, model: &str, req: &ChatRequest) -> Key {
        let mut sha = Sha(Sha256::new());
        let h = &mut sha;
        tenant.hash(h);
        upstream.hash(h);
        model.hash(h);
        h.write_usize(req.messages.len());
        for m in &req.messages {
            message(m, h);
        }
        req.max_tokens.hash(h);
        for n in [
            req.temperature,
            req.top_p,
            req.frequency_penalty,
            req.presence_penalty,
        ] {
            number(n, h);
        }
        req.seed.hash(h);
        req.n.hash(h);
        req.stop.hash(h);
        optional(req.response_format.as_ref(), h);
        h.write_usize(req.tools.len());
        for tool in &req.tools {
            canonical(tool, h);
        }
        optional(req.tool_choice.as_ref(), h);
        object(&req.extra, h);
        let digest = sha.0.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Key(u128::from_be_bytes(first))
    }
}

fn message(m: &Message, h: &mut impl Hasher) {
    h.write(m.role.as_str().as_bytes());
    match &m.content {
        Content::None => h.write_u8(0),
        Content::Text(t) => {
            h.write_u8(1);
            t.hash(h);
        }
        Content::Parts { parts, .. } => {
            h.write_u8(2);
            h.write_usize(parts.len());
            for part in parts {
                match part {
                    Part::Text(t) => {
                        h.write_u8(0);
                        t.hash(h);
                    }
                    Part::Image { url, detail } => {
                        h.write_u8(1);
                        url.hash(h);
                        detail.hash(h);
                    }
                    Part::Other(v) => {
                        h.write_u8(2);
                        canonical(v, h);
                    }
                }
            }
        }
    }
    h.write_usize(m.tool_calls.len());
    for call in &m.tool_calls {
        (&call.id, &call.name, &call.arguments).hash(h);
    }
    m.tool_call_id.hash(h);
    m.name.hash(h);
    object(&m.extra, h);
}

/// An optional number, hashed by value.
fn number(n: Option<f64>, h: &mut impl Hasher) {
    match n {
        None => h.write_u8(0),
        // 0.0 and -0.0 are one number.
        Some(f) => h.write_u64((f + 0.0).to_bits()),
    }
}

fn optional(v: Option<&Value>, h: &mut impl Hasher) {
    match v {
        None => h.write_u8(0xff),
        Some(v) => canonical(v, h),
    }
}

fn object(map: &Map<String, Value>, h: &mut impl Hasher) {
    h.write_usize(map.len());
    // Sorted here: serde_json's map keeps insertion order when a dependency asks it to.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    for k in keys {
        k.hash(h);
        canonical(&map[k], h);
    }
}

/// Feeds what `Hash` writes to SHA-256.
struct Sha(Sha256);

impl Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Unused: the key is the digest itself.
    fn finish(&self) -> u64 {
        0
    }
}

/// Hashes a value with type tags, objects in key order, and numbers by value.
fn canonical(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            h.write_u8(u8::from(*b));
        }
        Value::Number(n) => {
            h.write_u8(2);
            // 0, 0.0 and 0e0 are one number; integers beyond f64's exact range keep their text.
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) if i.unsigned_abs() < 1 << 53 => h.write_u64((i as f64).to_bits()),
                (None, Some(u), _) if u < 1 << 53 => h.write_u64((u as f64).to_bits()),
                (None, None, Some(f)) => h.write_u64((f + 0.0).to_bits()),
                _ => n.to_string().hash(h),
            }
        }
        Value::String(s) => {
            h.write_u8(3);
            s.hash(h);
        }
        Value::Array(items) => {
            h.write_u8(4);
            h.write_usize(items.len());
            for item in items {
                canonical(item, h);
            }
        }
        Value::Object(map) => {
            h.write_u8(5);
            object(map, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(body: &str) -> ChatRequest {
        ChatRequest::parse(Bytes::from(body.to_owned())).expect("a valid request")
    }

    fn key(k: &Keyer, body: &str) -> Key {
        k.key("t", "cloud", "gpt-4o", &parse(body))
    }

    #[test]
    fn order_whitespace_numbers_and_framing_do_not_matter() {
        let k = Keyer::new();
        let a = key(
            &k,
            r#"{"model":"auto","temperature":0,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"b":1,"a":2}}}],"user":{"id":1,"team":"x"}}"#,
        );
        let b = key(
            &k,
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ],
                "user": {"team": "x", "id": 1.0},
                "tools":[{"function":{"parameters":{"a":2.0,"b":1e0},"name":"f"},"type":"function"}],
                "temperature": 0.0, "stream": true, "stream_options": {"include_usage": true},
                "model": "something-else" }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn content_parameters_tenant_upstream_and_model_do_matter() {
        let k = Keyer::new();
        let base = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;
        let one = key(&k, base);
        for other in [
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi","name":"ann"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"logit_bias":{"50256":-100}}"#,
            r#"{"model":"m","temperature":0,"stop":"x","messages":[{"role":"user","content":"hi"}]}"#,
        ] {
            assert_ne!(one, key(&k, other), "{other}");
        }
        let image = |data: &str| {
            key(
                &k,
                &format!(
                    r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}]}}]}}"#
                ),
            )
        };
        assert_ne!(image("AA"), image("AB"), "two images are two requests");
        let req = parse(base);
        assert_ne!(one, k.key("u", "cloud", "gpt-4o", &req));
        assert_ne!(one, k.key("t", "local", "gpt-4o", &req));
        assert_ne!(one, k.key("t", "cloud", "gpt-4o-mini", &req));
    }

    #[test]
    fn keys_are_the_same_in_every_process() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(key(&Keyer::new(), body), key(&Keyer::new(), body));
    }
}
