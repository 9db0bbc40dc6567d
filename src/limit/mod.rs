//! What each key may spend: requests and tokens a minute, US dollars a day and a month.
//!
//! A request is charged when it is admitted: one request, and its estimated tokens (the prompt
//! plus `max_tokens`, or `default_max_tokens`) and their estimated cost. When its answer ends,
//! the charge is corrected by the usage reported (or estimated). Rates are estimated with
//! pingora's sliding-window [`Rate`]; budgets are sums per UTC day and month. A refusal says
//! when the window frees enough for the request (`Retry-After`, `x-ratelimit-reset-*`).

mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::api::ApiError;
use crate::config::{days_from_civil, KeyConfig};
use crate::state::{Ask, Shared, Verdict};
pub use metrics::LimitMetrics;

/// The window of the per-minute limits.
const MINUTE: Duration = Duration::from_secs(60);

/// What a key has left, for the `x-ratelimit-*` headers (`Default`: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
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
    /// False when the shared counters could not be reached and the request went uncounted.
    pub counted: bool,
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

/// The limits of every key: this process's counters, or the replicas' shared ones.
pub struct Limits {
    requests: Rate,
    tokens: Rate,
    spend: Mutex<HashMap<String, Spend>>,
    metrics: LimitMetrics,
    shared: Option<Arc<Shared>>,
}

impl Limits {
    /// Empty counters, counting refusals into `metrics`; the counters are `shared`'s when
    /// given.
    pub fn new(metrics: LimitMetrics, shared: Option<Arc<Shared>>) -> Limits {
        Limits {
            requests: Rate::new(MINUTE),
            tokens: Rate::new(MINUTE),
            spend: Mutex::new(HashMap::new()),
            metrics,
            shared,
        }
    }

    /// Admits a request of `tokens` estimated tokens costing `cost` for `key` at `now` (seconds
    /// since the Unix epoch), charging it; or refuses it, charging nothing. With shared state the
    /// counters are Redis's; when Redis fails, the request is admitted uncounted (`fail_open`,
    /// or a key without limits) or refused with 503.
    pub async fn admit(
        &self,
        key: &KeyConfig,
        tokens: u64,
        cost: f64,
        now: u64,
    ) -> Result<Charge, Box<Refusal>> {
        let Some(shared) = &self.shared else {
            return self.admit_here(key, tokens, cost, now);
        };
        let ask = ask(key, tokens, cost, now);
        let Some(v) = shared.admit(&ask).await else {
            if shared.fail_open || !key.is_limited() {
                return Ok(Charge {
                    tokens,
                    cost,
                    counted: false,
                    standing: Standing::default(),
                });
            }
            return Err(Box::new(Refusal {
                error: ApiError {
                    status: 503,
                    message: "The gateway cannot check this key's limits right now; please retry."
                        .into(),
                    kind: "server_error",
                    param: None,
                    code: Some("limits_unavailable"),
                },
                retry_after: 1.0,
                standing: Standing::default(),
            }));
        };
        let counts = Counts::of(&v, ask.window.1);
        let standing = self.judge(key, tokens, cost, &counts, now)?;
        if v.code != 0 {
            // Redis counted otherwise between the read and the script (another replica): its
            // word holds.
            let kind = match v.code {
                2 => "tokens",
                3 => "budget_day",
                4 => "budget_month",
                _ => "requests",
            };
            self.metrics.refused(&key.name, kind);
            let error = ApiError::rate_limited(
                format!(
                    "Rate limit reached for key `{}`. Please try again shortly.",
                    key.name
                ),
                code(kind),
            );
            return Err(Box::new(Refusal {
                error,
                retry_after: 1.0,
                standing,
            }));
        }
        Ok(Charge {
            tokens,
            cost,
            counted: true,
            standing: counts.after(key, tokens),
        })
    }

    /// [`Limits::admit`] on this process's own counters.
    fn admit_here(
        &self,
        key: &KeyConfig,
        tokens: u64,
        cost: f64,
        now: u64,
    ) -> Result<Charge, Box<Refusal>> {
        let name = key.name.as_str();
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = current(spend.entry(key.name.clone()).or_default(), now);
        let counts = Counts {
            requests: window(&self.requests, name),
            tokens: window(&self.tokens, name),
            spent: (s.day_usd, s.month_usd),
        };
        self.judge(key, tokens, cost, &counts, now)?;
        s.day_usd += cost;
        s.month_usd += cost;
        drop(spend);
        self.requests.observe(&name, 1);
        self.tokens.observe(&name, tokens as isize);
        Ok(Charge {
            tokens,
            cost,
            counted: true,
            standing: counts.after(key, tokens),
        })
    }

    /// Whether a request fits `counts`: the key's standing as it is, or the refusal.
    fn judge(
        &self,
        key: &KeyConfig,
        tokens: u64,
        cost: f64,
        counts: &Counts,
        now: u64,
    ) -> Result<Standing, Box<Refusal>> {
        let name = key.name.as_str();
        let standing = counts.after(key, 0);
        let refuse = |kind: &'static str, message: String, wait: f64| {
            self.metrics.refused(name, kind);
            Err(Box::new(Refusal {
                error: ApiError::rate_limited(message, code(kind)),
                retry_after: wait,
                standing,
            }))
        };
        if let Some(limit) = key.requests_per_minute {
            let w = counts.requests;
            if w.count + 1.0 > limit as f64 {
                let wait = w.wait(w.count + 1.0 - limit as f64);
                return refuse(
                    "requests",
                    format!("Rate limit reached for key `{name}`: {limit} requests per minute. Please try again in {}.", duration(wait)),
                    wait,
                );
            }
        }
        if let Some(limit) = key.tokens_per_minute {
            let w = counts.tokens;
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
        let (day, month) = counts.spent;
        if let Some(budget) = key.budget_day.filter(|b| day + cost > *b) {
            return refuse(
                "budget_day",
                format!("Key `{name}` has used its daily budget of ${budget:.2}. It renews at midnight UTC."),
                (86_400 - now % 86_400) as f64,
            );
        }
        if let Some(budget) = key.budget_month.filter(|b| month + cost > *b) {
            return refuse(
                "budget_month",
                format!("Key `{name}` has used its monthly budget of ${budget:.2}. It renews on the first of the month, UTC."),
                seconds_to_next_month(now) as f64,
            );
        }
        Ok(standing)
    }

    /// Corrects a charge by what the answer used: `tokens` and `cost` replace the estimate.
    pub async fn settle(&self, key: &KeyConfig, charge: &Charge, tokens: u64, cost: f64, now: u64) {
        if !charge.counted {
            return;
        }
        let delta = tokens as i64 - charge.tokens as i64;
        if let Some(shared) = &self.shared {
            let ask = ask(key, 0, 0.0, now);
            shared.settle(&ask, delta, cost - charge.cost).await;
            return;
        }
        let name = key.name.as_str();
        self.tokens.observe(&name, delta as isize);
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = current(spend.entry(key.name.clone()).or_default(), now);
        s.day_usd = (s.day_usd + cost - charge.cost).max(0.0);
        s.month_usd = (s.month_usd + cost - charge.cost).max(0.0);
    }

    /// What `key` has spent today and this month, in US dollars, and its standing; the spend is
    /// `None` (and the standing empty) when the shared counters cannot be read.
    pub async fn report(&self, key: &KeyConfig, now: u64) -> (Option<(f64, f64)>, Standing) {
        if let Some(shared) = &self.shared {
            let a = ask(key, 0, 0.0, now);
            let Some(v) = shared.counts(&a).await else {
                return (None, Standing::default());
            };
            let counts = Counts::of(&v, a.window.1);
            return (Some(v.spent), counts.after(key, 0));
        }
        let name = key.name.as_str();
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = *current(spend.entry(key.name.clone()).or_default(), now);
        drop(spend);
        let counts = Counts {
            requests: window(&self.requests, name),
            tokens: window(&self.tokens, name),
            spent: (s.day_usd, s.month_usd),
        };
        (Some((s.day_usd, s.month_usd)), counts.after(key, 0))
    }
}

/// A key's counts: its two windows and what it spent today and this month.
struct Counts {
    requests: Window,
    tokens: Window,
    spent: (f64, f64),
}

impl Counts {
    /// The counts Redis holds, `fraction` of the way into the current minute.
    fn of(v: &Verdict, fraction: f64) -> Counts {
        let left = MINUTE.as_secs_f64() * (1.0 - fraction);
        let window = |(prev, curr): (f64, f64)| Window {
            count: prev * (1.0 - fraction) + curr,
            prev,
            curr,
            left,
        };
        Counts {
            requests: window(v.requests),
            tokens: window(v.tokens),
            spent: v.spent,
        }
    }

    /// The key's standing once a request of `tokens` more (and one request, when `tokens` is
    /// counted) is in.
    fn after(&self, key: &KeyConfig, tokens: u64) -> Standing {
        let one = u64::from(tokens > 0);
        Standing {
            requests: key.requests_per_minute.map(|l| {
                let w = self.requests;
                (l, w.left(l, one), w.clear())
            }),
            tokens: key.tokens_per_minute.map(|l| {
                let w = self.tokens;
                (l, w.left(l, tokens), w.clear())
            }),
        }
    }
}

/// What an admission asks of the shared counters at `now`.
fn ask(key: &KeyConfig, tokens: u64, cost: f64, now: u64) -> Ask<'_> {
    let minute = MINUTE.as_secs();
    let day = now / 86_400;
    Ask {
        key: &key.name,
        window: (now / minute, (now % minute) as f64 / minute as f64),
        day,
        month: month_of(day),
        requests_limit: key.requests_per_minute,
        tokens: (tokens, key.tokens_per_minute),
        cost: (cost, key.budget_day, key.budget_month),
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
        Limits::new(
            LimitMetrics::register(&prometheus::Registry::new()).unwrap(),
            None,
        )
    }

    #[tokio::test]
    async fn requests_past_the_limit_are_refused_with_a_wait() {
        let l = limits();
        let k = key(Some(3), None, None);
        for left in [2, 1, 0] {
            let c = l.admit(&k, 10, 0.0, 1_000).await.unwrap();
            assert_eq!(c.standing.requests.map(|r| r.1), Some(left));
        }
        let r = l.admit(&k, 10, 0.0, 1_000).await.unwrap_err();
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

    #[tokio::test]
    async fn tokens_are_charged_on_the_estimate_and_corrected_by_the_usage() {
        let l = limits();
        let k = key(None, Some(1000), None);
        let c = l.admit(&k, 900, 0.0, 0).await.unwrap();
        assert!(l.admit(&k, 200, 0.0, 0).await.is_err(), "900 + 200 > 1000");
        l.settle(&k, &c, 100, 0.0, 0).await;
        let c2 = l.admit(&k, 200, 0.0, 0).await.expect("only 100 were used");
        assert_eq!(c2.standing.tokens.map(|t| t.1), Some(700));
        let too_big = l.admit(&k, 5000, 0.0, 0).await.unwrap_err();
        assert_eq!(too_big.error.code, Some("tokens_limit_exceeded"));
    }

    #[tokio::test]
    async fn budgets_hold_for_their_day_and_renew_the_next() {
        let l = limits();
        let k = key(None, None, Some(1.0));
        let noon = 20_000 * 86_400 + 43_200;
        let c = l.admit(&k, 0, 0.8, noon).await.unwrap();
        let r = l.admit(&k, 0, 0.3, noon).await.unwrap_err();
        assert_eq!(r.error.code, Some("insufficient_quota"));
        assert_eq!(r.retry_after, 43_200.0, "until midnight UTC");
        l.settle(&k, &c, 0, 0.5, noon).await;
        assert!(
            l.admit(&k, 0, 0.3, noon).await.is_ok(),
            "the answer cost less than estimated"
        );
        assert!(
            l.admit(&k, 0, 0.9, noon + 86_400).await.is_ok(),
            "a new day"
        );
        assert_eq!(l.report(&k, noon + 86_400).await.0.map(|s| s.0), Some(0.9));
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
