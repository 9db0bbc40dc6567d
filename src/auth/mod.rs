//! Who is asking: the tenant a request belongs to.
//!
//! With gateway keys configured (`keys:`), a request must carry one (`Authorization: Bearer`,
//! or `api-key` / `x-api-key`): its SHA-256 is compared with the configured hashes, and the tenant
//! is the key's name. Without keys the gateway is open, and a tenant is the credential the client
//! presents: requests with the same bearer token are one tenant (named by a fingerprint of the
//! token, never by the token itself), requests without one are `anonymous`. The tenant keeps
//! cached answers apart and names the client in the metrics and the access log.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::config::KeyConfig;

/// A request's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The key's name; without keys, `anonymous` or `key-` and 32 hex digits of a keyed
    /// fingerprint of the bearer token.
    pub id: String,
    /// The key's index in the configuration, when keys are configured.
    pub key: Option<usize>,
}

impl Tenant {
    /// The tenant as the metrics name it: the key's name, or `anonymous` without keys (a
    /// fingerprint per client would let clients grow the number of series without bound).
    pub fn label(&self) -> &str {
        match self.key {
            Some(_) => &self.id,
            None => "anonymous",
        }
    }

    /// The tenant of a request with these headers when no keys are configured; `secret` keys
    /// the fingerprint (`Config::tenant_secret`).
    pub fn of(headers: &HeaderMap, secret: &[u8; 32]) -> Tenant {
        let id = match token(headers) {
            None => "anonymous".to_owned(),
            Some(token) => format!("key-{:032x}", fingerprint(secret, token)),
        };
        Tenant { id, key: None }
    }

    /// The tenant of a request: with `keys`, the key it carries (a 401 without one, with a wrong
    /// one, or with an expired one at `now`, in seconds since the Unix epoch); without, as
    /// [`Tenant::of`].
    pub fn authenticate(
        keys: &[KeyConfig],
        secret: &[u8; 32],
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Tenant, ApiError> {
        if keys.is_empty() {
            return Ok(Tenant::of(headers, secret));
        }
        let Some(token) = token(headers) else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
                "missing_api_key",
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token).into();
        let Some(index) = keys.iter().position(|k| k.sha256 == hash) else {
            return Err(ApiError::unauthorized(
                format!("Incorrect API key provided: {}.", redact(token)),
                "invalid_api_key",
            ));
        };
        let key = &keys[index];
        if key.expires.is_some_and(|end| now > end) {
            return Err(ApiError::unauthorized(
                format!("The API key `{}` has expired.", key.name),
                "expired_api_key",
            ));
        }
        Ok(Tenant {
            id: key.name.clone(),
            key: Some(index),
        })
    }
}

/// The credential a request carries: a bearer token, or an `api-key` / `x-api-key` header.
fn token(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| strip_bearer(v.as_bytes()).trim_ascii());
    bearer
        .or_else(|| headers.get("api-key").map(|v| v.as_bytes().trim_ascii()))
        .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii()))
        .filter(|t| !t.is_empty())
}

/// A key as OpenAI shows a wrong one: its first and last few characters.
fn redact(token: &[u8]) -> String {
    let text = String::from_utf8_lossy(token);
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

fn strip_bearer(value: &[u8]) -> &[u8] {
    match value.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => value,
    }
}

/// HMAC-SHA-256 of the token under `secret`, its first 128 bits: two tokens do not share a
/// tenant (and its cached answers) by accident, the same token is the same tenant across
/// restarts and replicas, and without the secret a fingerprint cannot be checked against
/// guessed tokens.
fn fingerprint(secret: &[u8; 32], token: &[u8]) -> u128 {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this branch cannot be reached.
        return 0;
    };
    mac.update(token);
    let tag = mac.finalize().into_bytes();
    let mut first = [0u8; 16];
    first.copy_from_slice(&tag[..16]);
    u128::from_be_bytes(first)
}

/// A fresh gateway key and its SHA-256 in hex: `sy-` and 48 hex digits of the operating
/// system's randomness.
pub fn new_key() -> Result<(String, String), String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the system: {e}"))?;
    let key = format!("sy-{}", hex(&bytes));
    let hash = hex(&Sha256::digest(key.as_bytes()));
    Ok((key, hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    fn tenant(auth: Option<&str>) -> String {
        Tenant::of(&headers(auth), &[7; 32]).id
    }

    #[test]
    fn tenants_follow_the_token_and_never_show_it() {
        assert_eq!(tenant(None), "anonymous");
        assert_eq!(tenant(Some("Bearer ")), "anonymous");
        let a = tenant(Some("Bearer sk-alpha-123"));
        assert_eq!(a, tenant(Some("bearer   sk-alpha-123")));
        assert_ne!(a, tenant(Some("Bearer sk-beta-456")));
        assert!(a.starts_with("key-") && a.len() == 36, "{a}");
        assert!(!a.contains("alpha"));
        // Keyed: another gateway secret gives another fingerprint of the same token.
        let h = headers(Some("Bearer sk-alpha-123"));
        assert_ne!(Tenant::of(&h, &[8; 32]).id, a);
        assert_eq!(Tenant::of(&h, &[7; 32]).id, a);
    }

    fn key(name: &str, secret: &str, expires: Option<u64>) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
            routes: None,
            models: None,
            force_route: false,
            requests_per_minute: None,
            tokens_per_minute: None,
            budget_day: None,
            budget_month: None,
            expires,
            admin: false,
        }
    }

    #[test]
    fn keys_let_in_who_belongs() {
        let keys = [
            key("team-a", "sy-aaaa", None),
            key("team-b", "sy-bbbb", Some(100)),
        ];
        let who =
            |auth: Option<&str>, now| Tenant::authenticate(&keys, &[7; 32], &headers(auth), now);
        assert_eq!(who(Some("Bearer sy-aaaa"), 50).unwrap().id, "team-a");
        assert_eq!(who(Some("Bearer sy-bbbb"), 50).unwrap().key, Some(1));
        let wrong = who(Some("Bearer sy-cccc-wrong-key"), 50).unwrap_err();
        assert_eq!((wrong.status, wrong.code), (401, Some("invalid_api_key")));
        assert!(
            !wrong.message.contains("sy-cccc-wrong-key"),
            "{}",
            wrong.message
        );
        assert_eq!(who(None, 50).unwrap_err().code, Some("missing_api_key"));
        assert_eq!(
            who(Some("Bearer sy-bbbb"), 101).unwrap_err().code,
            Some("expired_api_key")
        );
        let mut h = HeaderMap::new();
        h.insert("api-key", "sy-aaaa".parse().unwrap());
        assert_eq!(
            Tenant::authenticate(&keys, &[7; 32], &h, 0).unwrap().id,
            "team-a"
        );
    }

    #[test]
    fn new_keys_are_fresh_and_hash_to_what_is_printed() {
        let (k1, h1) = new_key().unwrap();
        let (k2, _) = new_key().unwrap();
        assert_ne!(k1, k2);
        assert!(k1.starts_with("sy-") && k1.len() == 51);
        assert_eq!(h1, hex(&Sha256::digest(k1.as_bytes())));
        assert_eq!(h1.len(), 64);
    }
}
