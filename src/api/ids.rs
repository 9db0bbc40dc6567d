//! Ids and randomness: answer and tool-call ids the gateway makes, the clock they carry, and the
//! random numbers behind them (and behind retry jitter and request ids).

use std::hash::{BuildHasher, Hasher};

/// A random number, different on every call (seeded by the standard library's per-process
/// random keys, mixed with `salt`).
pub fn random_u64(salt: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.finish()
}

/// `n` random hex digits.
pub fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        out.push_str(&format!("{:016x}", random_u64(out.len() as u64)));
    }
    out.truncate(n);
    out
}

/// A fresh answer id, as OpenAI spells them: `chatcmpl-` and 24 hex digits.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", random_hex(24))
}

/// A fresh tool-call id: `call_` and 24 hex digits.
pub fn call_id() -> String {
    format!("call_{}", random_hex(24))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_well_formed() {
        let (a, b) = (completion_id(), completion_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "chatcmpl-".len() + 24);
        assert!(a["chatcmpl-".len()..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit()));
        assert!(call_id().starts_with("call_"));
        assert_eq!(random_hex(40).len(), 40);
        assert!(unix_now() > 1_700_000_000);
    }
}
