//! When to try again, and when to give up on an upstream: the policy of the retry loop in
//! [`super::call`], apart from its I/O.
//!
//! Nothing is retried once a byte of the answer went to the client. Before that, a refused or
//! reset connection, a timeout, and 502/503/504 go to another backend after a jittered back-off;
//! 429 waits what `Retry-After` says, up to a cap. What is left of the failures sends the
//! request down the fallback chain, as does a local model server's 404 (the model is not pulled
//! there), and so does a 401 to the gateway's own key: the client can
//! do nothing about it, and the upstream's answer (which may quote the key) is not relayed.

use std::time::Duration;

use crate::config::RetryConfig;

/// The rules a retry loop follows; the parameters belong to the upstream that owns the policy.
pub trait Policy {
    /// What to do with an answer of `status` to a request that carried the gateway's own key
    /// (`own_key`) or not, from a local model server (`native`) or an OpenAI-compatible one.
    fn verdict(&self, status: u16, own_key: bool, native: bool) -> Verdict;

    /// After attempt number `attempt` (from 1) failed, `spent` into the upstream's time: how
    /// long to wait before the next attempt, or `None` to give up. `asked` is the wait the
    /// upstream asked for (`Retry-After`).
    fn next_try(&self, attempt: u32, spent: Duration, asked: Option<Duration>) -> Option<Duration>;
}

impl Policy for RetryConfig {
    fn verdict(&self, status: u16, own_key: bool, native: bool) -> Verdict {
        verdict(status, own_key, native)
    }

    fn next_try(&self, attempt: u32, spent: Duration, asked: Option<Duration>) -> Option<Duration> {
        // A longer wait than the cap is better spent on the fallback.
        if asked.is_some_and(|w| w > self.retry_after_cap) {
            return None;
        }
        let wait = asked
            .unwrap_or_default()
            .max(backoff(self, attempt, jitter()));
        (attempt < self.attempts && spent + wait <= self.budget).then_some(wait)
    }
}

/// What to do with an upstream's answer status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the client (success, or the client's own mistake).
    Relay,
    /// Try again (another backend), then fall back.
    Retry,
    /// Do not try this upstream again; fall back when the chain allows.
    Fallback,
    /// The upstream refused the gateway's credentials: fall back; at the chain's end the client
    /// gets a 502 that says the gateway is misconfigured, never the upstream's answer.
    Misconfigured,
}

/// The verdict on an answer with `status`; `own_key`: the request carried the gateway's key;
/// `native`: a local model server's answer, whose 404 says the model is not pulled there.
pub fn verdict(status: u16, own_key: bool, native: bool) -> Verdict {
    match status {
        401 if own_key => Verdict::Misconfigured,
        404 if native => Verdict::Fallback,
        429 | 502 | 503 | 504 => Verdict::Retry,
        500 | 408 => Verdict::Fallback,
        _ => Verdict::Relay,
    }
}

/// Whether a status says the backend itself is unwell (counts towards its ejection).
pub fn backend_failed(status: u16) -> bool {
    // Not 500: a request's own content can cause one, and it must not eject the backend for
    // every tenant; a broken server also refuses, times out or answers 502/503/504.
    matches!(status, 502..=504)
}

/// The back-off before retry number `retry` (1 for the first), doubling from `backoff` up to
/// `max_backoff`, scaled by `jitter` in [0, 1) to between half and all of it.
pub fn backoff(config: &RetryConfig, retry: u32, jitter: f64) -> Duration {
    let doubled = config
        .backoff
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    let full = doubled.min(config.max_backoff);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A `Retry-After` value in seconds (the HTTP-date form is not used by model APIs).
pub fn retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A number in [0, 1) for jitter, different on every call.
pub fn jitter() -> f64 {
    (crate::api::ids::random_u64(0) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(verdict(200, false, false), Verdict::Relay);
        assert_eq!(verdict(400, false, false), Verdict::Relay);
        assert_eq!(verdict(404, false, false), Verdict::Relay);
        for s in [429, 502, 503, 504] {
            assert_eq!(verdict(s, false, false), Verdict::Retry, "{s}");
        }
        assert_eq!(verdict(500, false, false), Verdict::Fallback);
        // A 401 is the client's business unless the gateway's own key was refused.
        assert_eq!(verdict(401, false, false), Verdict::Relay);
        assert_eq!(verdict(401, true, false), Verdict::Misconfigured);
        // A local model server's 404 is a model not pulled there: the cloud may have it.
        assert_eq!(verdict(404, false, true), Verdict::Fallback);
        assert!(backend_failed(503) && !backend_failed(429) && !backend_failed(400));
    }

    #[test]
    fn backoff_doubles_with_jitter_under_the_cap() {
        let c = RetryConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..RetryConfig::default()
        };
        assert_eq!(backoff(&c, 1, 0.999).as_millis(), 99);
        assert_eq!(backoff(&c, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&c, 2, 0.0), Duration::from_millis(100));
        assert_eq!(
            backoff(&c, 3, 0.0),
            Duration::from_millis(150),
            "capped at 300"
        );
        assert_eq!(backoff(&c, 40, 0.0), Duration::from_millis(150));
        let j: Vec<f64> = (0..8).map(|_| jitter()).collect();
        assert!(j.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(j.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn the_policy_stops_at_the_attempt_cap_the_budget_and_long_waits() {
        let c = RetryConfig {
            attempts: 3,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            budget: Duration::from_secs(1),
            retry_after_cap: Duration::from_secs(2),
        };
        let zero = Duration::ZERO;
        assert!(c.next_try(1, zero, None).is_some());
        assert!(c.next_try(2, zero, None).is_some());
        assert_eq!(c.next_try(3, zero, None), None, "three attempts in all");
        assert_eq!(
            c.next_try(1, Duration::from_millis(999), None),
            None,
            "over the budget"
        );
        let asked = Some(Duration::from_millis(300));
        assert_eq!(c.next_try(1, zero, asked), asked, "Retry-After is honoured");
        assert_eq!(
            c.next_try(1, zero, Some(Duration::from_secs(3))),
            None,
            "past the cap: fall back at once"
        );
        assert_eq!(c.verdict(503, false, false), Verdict::Retry);
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
    }
}
