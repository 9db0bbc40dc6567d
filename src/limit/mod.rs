//! What each key may spend: requests and tokens a minute, US dollars a day and a month.
//!
//! A request is charged when it is admitted: one request, and its estimated tokens (the prompt
//! plus `max_tokens`, or `default_max_tokens`) and their estimated cost. When its answer ends,
//! the charge is corrected by the usage reported (or estimated). Rates are estimated with
//! pingora's sliding-window [`Rate`]; budgets are sums per UTC day and month. A refusal says
//! when the window frees enough for the request (`Retry-After`, `x-ratelimit-reset-*`).

mod metrics;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::api::ApiError;
use crate::config::{days_from_civil, KeyConfig};
pub use metrics::LimitMetrics;

/// The window of the per-minute limits.
const MINUTE: Duration = Duration::from_secs(60);

/// What a key has left, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Requests: the limit, what is left, seconds until the window is clear.
    pub requests: Option<(u64, u64, f64)>,
    /// Tokens: the limit, what is left, seconds until the window is clear.
    pub tokens: Option<(u64, u64, f64)>,
}

/// A refusal: the OpenAI-shaped 429, how long to wait, and the key's standing.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The error.
    pub error: ApiError,
    /// Seconds until the request would be admitted.
    pub retry_after: f64,
    /// What the key has left.
    pub standing: Standing,
}

/// What was charged for an admitted request, settled when its answer ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// Tokens charged on the estimate.
    pub tokens: u64,
    /// US dollars charged on the estimate.
    pub cost: f64,
    /// The key's standing after the charge.
    pub standing: Standing,
}

/// Spend in the current UTC day and month.
#[derive(Debug, Clone, Copy, Default)]
struct Spend {
    day: u64,
    day_usd: f64,
    month: u64,
    month_usd: f64,
}

/// The limits of every key, in this process.
pub struct Limits {
    requests: Rate,
    tokens: Rate,
    spend: Mutex<HashMap<String, Spend>>,
    metrics: LimitMetrics,
}

impl Limits {
    /// Empty counters, counting refusals into `metrics`.
    pub fn new(metrics: LimitMetrics) -> Limits {
        Limits {
            requests: Rate::new(MINUTE),
            tokens: Rate::new(MINUTE),
            spend: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Admits a request of `tokens` estimated tokens costing `cost` for `key` at `now` (seconds
    /// since the Unix epoch), charging it; or refuses it, charging nothing.
    pub fn admit(
        &self,
        key: &KeyConfig,
        tokens: u64,
        cost: f64,
        now: u64,
    ) -> Result<Charge, Box<Refusal>> {
        let name = key.name.as_str();
        let requests = key
            .requests_per_minute
            .map(|l| (l, window(&self.requests, name)));
        let used_tokens = key
            .tokens_per_minute
            .map(|l| (l, window(&self.tokens, name)));
        let standing = |extra_requests: u64, extra_tokens: u64| Standing {
            requests: requests.map(|(l, w)| (l, w.left(l, extra_requests), w.clear())),
            tokens: used_tokens.map(|(l, w)| (l, w.left(l, extra_tokens), w.clear())),
        };
        let refuse = |kind: &'static str, message: String, wait: f64| {
            self.metrics.refused(name, kind);
            Err(Box::new(Refusal {
                error: ApiError::rate_limited(message, code(kind)),
                retry_after: wait,
                standing: standing(0, 0),
            }))
        };
        if let Some((limit, w)) = requests {
            if w.count + 1.0 > limit as f64 {
                let wait = w.wait(w.count + 1.0 - limit as f64);
                return refuse(
                    "requests",
                    format!("Rate limit reached for key `{name}`: {limit} requests per minute. Please try again in {}.", duration(wait)),
                    wait,
                );
            }
        }
        if let Some((limit, w)) = used_tokens {
            if tokens > limit {
                return refuse(
                    "tokens",
                    format!("Request too large for key `{name}`: about {tokens} tokens against a limit of {limit} tokens per minute."),
                    0.0,
                );
            }
            if w.count + tokens as f64 > limit as f64 {
                let wait = w.wait(w.count + tokens as f64 - limit as f64);
                return refuse(
                    "tokens",
                    format!("Rate limit reached for key `{name}`: {limit} tokens per minute. Please try again in {}.", duration(wait)),
                    wait,
                );
            }
        }
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = current(spend.entry(key.name.clone()).or_default(), now);
        if let Some(budget) = key.budget_day.filter(|b| s.day_usd + cost > *b) {
            let wait = (86_400 - now % 86_400) as f64;
            drop(spend);
            return refuse(
                "budget_day",
                format!("Key `{name}` has used its daily budget of ${budget:.2}. It renews at midnight UTC."),
                wait,
            );
        }
        if let Some(budget) = key.budget_month.filter(|b| s.month_usd + cost > *b) {
            let wait = seconds_to_next_month(now) as f64;
            drop(spend);
            return refuse(
                "budget_month",
                format!("Key `{name}` has used its monthly budget of ${budget:.2}. It renews on the first of the month, UTC."),
                wait,
            );
        }
        s.day_usd += cost;
        s.month_usd += cost;
        drop(spend);
        self.requests.observe(&name, 1);
        self.tokens.observe(&name, tokens as isize);
        Ok(Charge {
            tokens,
            cost,
            standing: standing(1, tokens),
        })
    }

    /// Corrects a charge by what the answer used: `tokens` and `cost` replace the estimate.
    pub fn settle(&self, key: &KeyConfig, charge: &Charge, tokens: u64, cost: f64, now: u64) {
        let name = key.name.as_str();
        self.tokens
            .observe(&name, tokens as isize - charge.tokens as isize);
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = current(spend.entry(key.name.clone()).or_default(), now);
        s.day_usd = (s.day_usd + cost - charge.cost).max(0.0);
        s.month_usd = (s.month_usd + cost - charge.cost).max(0.0);
    }

    /// What `key` has spent today and this month, in US dollars, and its standing.
    pub fn report(&self, key: &KeyConfig, now: u64) -> (f64, f64, Standing) {
        let name = key.name.as_str();
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = *current(spend.entry(key.name.clone()).or_default(), now);
        drop(spend);
        let standing = Standing {
            requests: key.requests_per_minute.map(|l| {
                let w = window(&self.requests, name);
                (l, w.left(l, 0), w.clear())
            }),
            tokens: key.tokens_per_minute.map(|l| {
                let w = window(&self.tokens, name);
                (l, w.left(l, 0), w.clear())
            }),
        };
        (s.day_usd, s.month_usd, standing)
    }
}

/// The error code of a refusal.
fn code(kind: &str) -> &'static str {
    match kind {
        "requests" => "rate_limit_exceeded",
        "tokens" => "tokens_limit_exceeded",
        _ => "insufficient_quota",
    }
}

/// A key's sliding window: the events counted over the last minute, and how fast the count
/// falls.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Events in the last minute (the previous minute weighted by what is left of it).
    count: f64,
    /// Events of the previous minute-window.
    prev: f64,
    /// Events of the current one.
    curr: f64,
    /// Seconds left in the current window.
    left: f64,
}

fn window(rate: &Rate, key: &str) -> Window {
    rate.rate_with(&key, |c: RateComponents| {
        let prev = c.prev_samples.max(0) as f64;
        let curr = c.curr_samples.max(0) as f64;
        let secs = c.interval.as_secs_f64();
        Window {
            count: prev * (1.0 - c.current_interval_fraction) + curr,
            prev,
            curr,
            left: secs * (1.0 - c.current_interval_fraction),
        }
    })
}

impl Window {
    /// What is left of `limit` after `extra` more.
    fn left(&self, limit: u64, extra: u64) -> u64 {
        (limit as f64 - self.count - extra as f64).max(0.0) as u64
    }

    /// Seconds until `excess` events have left the window.
    fn wait(&self, excess: f64) -> f64 {
        let minute = MINUTE.as_secs_f64();
        // The previous window's events leave at an even pace until the current one ends...
        let from_prev = self.prev * self.left / minute;
        if self.prev > 0.0 && excess <= from_prev {
            return excess * minute / self.prev;
        }
        // ...then the current window's, over the next minute.
        let rest = excess - from_prev;
        let after = if self.curr > 0.0 {
            rest * minute / self.curr
        } else {
            0.0
        };
        (self.left + after).min(self.left + minute)
    }

    /// Seconds until the window is clear.
    fn clear(&self) -> f64 {
        if self.curr > 0.0 {
            self.left + MINUTE.as_secs_f64()
        } else if self.prev > 0.0 {
            self.left
        } else {
            0.0
        }
    }
}

/// The spend of the current day and month, reset when they changed.
fn current(s: &mut Spend, now: u64) -> &mut Spend {
    let day = now / 86_400;
    let month = month_of(day);
    if s.day != day {
        s.day = day;
        s.day_usd = 0.0;
    }
    if s.month != month {
        s.month = month;
        s.month_usd = 0.0;
    }
    s
}

/// The first day (since the epoch) of the month holding `day`.
fn month_of(day: u64) -> u64 {
    let (y, m, _) = civil_from_days(day);
    days_from_civil(y, m, 1)
}

/// Seconds from `now` to the start of the next UTC month.
fn seconds_to_next_month(now: u64) -> u64 {
    let (y, m, _) = civil_from_days(now / 86_400);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(ny, nm, 1) * 86_400 - now
}

/// The date of a day since the epoch.
fn civil_from_days(day: u64) -> (u32, u32, u32) {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u32, m as u32, d as u32)
}

/// A duration as OpenAI's rate-limit headers write it: `250ms`, `1.5s`, `6m0s`.
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).ceil() as u64);
    }
    if secs < 60.0 {
        return format!("{}s", (secs * 10.0).ceil() / 10.0);
    }
    let whole = secs.ceil() as u64;
    format!("{}m{}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u64>, tpm: Option<u64>, day: Option<f64>) -> KeyConfig {
        KeyConfig {
            name: "team".into(),
            sha256: [0; 32],
            routes: None,
            models: None,
            force_route: false,
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            budget_day: day,
            budget_month: None,
            expires: None,
            admin: false,
        }
    }

    fn limits() -> Limits {
        Limits::new(LimitMetrics::register(&prometheus::Registry::new()).unwrap())
    }

    #[test]
    fn requests_past_the_limit_are_refused_with_a_wait() {
        let l = limits();
        let k = key(Some(3), None, None);
        for left in [2, 1, 0] {
            let c = l.admit(&k, 10, 0.0, 1_000).unwrap();
            assert_eq!(c.standing.requests.map(|r| r.1), Some(left));
        }
        let r = l.admit(&k, 10, 0.0, 1_000).unwrap_err();
        assert_eq!(
            (r.error.status, r.error.code),
            (429, Some("rate_limit_exceeded"))
        );
        assert!(
            r.retry_after > 0.0 && r.retry_after <= 120.0,
            "{}",
            r.retry_after
        );
        assert_eq!(r.standing.requests.map(|r| r.1), Some(0));
    }

    #[test]
    fn tokens_are_charged_on_the_estimate_and_corrected_by_the_usage() {
        let l = limits();
        let k = key(None, Some(1000), None);
        let c = l.admit(&k, 900, 0.0, 0).unwrap();
        assert!(l.admit(&k, 200, 0.0, 0).is_err(), "900 + 200 > 1000");
        l.settle(&k, &c, 100, 0.0, 0);
        let c2 = l.admit(&k, 200, 0.0, 0).expect("only 100 were used");
        assert_eq!(c2.standing.tokens.map(|t| t.1), Some(700));
        let too_big = l.admit(&k, 5000, 0.0, 0).unwrap_err();
        assert_eq!(too_big.error.code, Some("tokens_limit_exceeded"));
    }

    #[test]
    fn budgets_hold_for_their_day_and_renew_the_next() {
        let l = limits();
        let k = key(None, None, Some(1.0));
        let noon = 20_000 * 86_400 + 43_200;
        let c = l.admit(&k, 0, 0.8, noon).unwrap();
        let r = l.admit(&k, 0, 0.3, noon).unwrap_err();
        assert_eq!(r.error.code, Some("insufficient_quota"));
        assert_eq!(r.retry_after, 43_200.0, "until midnight UTC");
        l.settle(&k, &c, 0, 0.5, noon);
        assert!(
            l.admit(&k, 0, 0.3, noon).is_ok(),
            "the answer cost less than estimated"
        );
        assert!(l.admit(&k, 0, 0.9, noon + 86_400).is_ok(), "a new day");
        assert_eq!(l.report(&k, noon + 86_400).0, 0.9);
    }

    #[test]
    fn calendar_and_durations() {
        assert_eq!(civil_from_days(days_from_civil(2026, 12, 1)), (2026, 12, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let dec31 = days_from_civil(2026, 12, 31) * 86_400 + 86_399;
        assert_eq!(seconds_to_next_month(dec31), 1);
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(1.5), "1.5s");
        assert_eq!(duration(360.0), "6m0s");
    }
}
