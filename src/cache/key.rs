//! The cache key: a 128-bit hash of the request as the upstream would see it, in canonical form.
//!
//! Two requests share a key when they ask the same upstream model the same thing: object key
//! order, whitespace and number spelling (`0` against `0.0`) do not matter, and neither do
//! `stream` and `stream_options`, since a stored answer replays in either form. The tenant is
//! part of the key, so one tenant never receives another's answer. The hashers are seeded at
//! random when the gateway starts, so nobody can craft two requests that collide.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

use serde_json::Value;

/// A cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub u128);

/// Top-level fields that do not change the answer's content, only its framing.
const FRAMING: [&str; 2] = ["stream", "stream_options"];

/// Computes keys with two independently seeded hashers.
pub struct Keyer {
    a: RandomState,
    b: RandomState,
}

impl Default for Keyer {
    fn default() -> Self {
        Keyer::new()
    }
}

impl Keyer {
    /// A keyer with fresh random seeds.
    pub fn new() -> Keyer {
        Keyer {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    /// The key of `body` (a JSON object) sent to `model` on `upstream` for `tenant`; `None`
    /// when the body is not a JSON object.
    pub fn key(&self, tenant: &str, upstream: &str, model: &str, body: &[u8]) -> Option<Key> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let Value::Object(map) = value else {
            return None;
        };
        let mut ha = self.a.build_hasher();
        let mut hb = self.b.build_hasher();
        let mut both = Both(&mut ha, &mut hb);
        tenant.hash(&mut both);
        upstream.hash(&mut both);
        model.hash(&mut both);
        let mut keys: Vec<&String> = map
            .keys()
            .filter(|k| !FRAMING.contains(&k.as_str()) && k.as_str() != "model")
            .collect();
        keys.sort_unstable();
        both.write_usize(keys.len());
        for k in keys {
            k.hash(&mut both);
            canonical(&map[k], &mut both);
        }
        Some(Key(
            (u128::from(ha.finish()) << 64) | u128::from(hb.finish())
        ))
    }
}

/// Feeds one value to both hashers.
struct Both<'a, A: Hasher, B: Hasher>(&'a mut A, &'a mut B);

impl<A: Hasher, B: Hasher> Hasher for Both<'_, A, B> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
        self.1.write(bytes);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
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
            h.write_usize(map.len());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            for k in keys {
                k.hash(h);
                canonical(&map[k], h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &Keyer, body: &str) -> Key {
        k.key("t", "cloud", "gpt-4o", body.as_bytes()).unwrap()
    }

    #[test]
    fn order_whitespace_numbers_and_framing_do_not_matter() {
        let k = Keyer::new();
        let a = key(
            &k,
            r#"{"model":"auto","temperature":0,"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"b":1,"a":2}}}]}"#,
        );
        let b = key(
            &k,
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ],
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
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":["hi"]}]}"#,
        ] {
            assert_ne!(one, key(&k, other), "{other}");
        }
        let body = base.as_bytes();
        assert_ne!(Some(one), k.key("u", "cloud", "gpt-4o", body));
        assert_ne!(Some(one), k.key("t", "local", "gpt-4o", body));
        assert_ne!(Some(one), k.key("t", "cloud", "gpt-4o-mini", body));
        assert_eq!(k.key("t", "cloud", "gpt-4o", b"[1]"), None);
    }

    #[test]
    fn seeds_differ_between_keyers() {
        let body = r#"{"messages":[]}"#;
        assert_ne!(key(&Keyer::new(), body), key(&Keyer::new(), body));
    }
}
