//! Who is asking: the tenant a request belongs to.
//!
//! Until gateway keys are configured, a tenant is the credential the client presents: requests
//! with the same `Authorization` bearer token are one tenant, requests without one are
//! `anonymous`. The tenant keeps cached answers apart and names the client in the access log by
//! a fingerprint of its token, never by the token itself.

use http::HeaderMap;

/// A request's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// `anonymous`, or `key-` and 16 hex digits of a fingerprint of the bearer token.
    pub id: String,
}

impl Tenant {
    /// The tenant of a request with these headers.
    pub fn of(headers: &HeaderMap) -> Tenant {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .map(|v| strip_bearer(v).trim_ascii())
            .filter(|t| !t.is_empty());
        let id = match token {
            None => "anonymous".to_owned(),
            Some(token) => format!("key-{:016x}", fingerprint(token)),
        };
        Tenant { id }
    }
}

fn strip_bearer(value: &[u8]) -> &[u8] {
    match value.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => value,
    }
}

/// FNV-1a, 64 bits: stable across restarts (log lines stay comparable), and far too short to
/// give back a token.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(auth: Option<&str>) -> String {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        Tenant::of(&h).id
    }

    #[test]
    fn tenants_follow_the_token_and_never_show_it() {
        assert_eq!(tenant(None), "anonymous");
        assert_eq!(tenant(Some("Bearer ")), "anonymous");
        let a = tenant(Some("Bearer sk-alpha-123"));
        assert_eq!(a, tenant(Some("bearer   sk-alpha-123")));
        assert_ne!(a, tenant(Some("Bearer sk-beta-456")));
        assert!(a.starts_with("key-") && a.len() == 20, "{a}");
        assert!(!a.contains("alpha"));
    }
}
