//! How an upstream stays answerable: its backends and how one is chosen, health checks, retries,
//! and (for Ollama and raw servers) the context size and what happens past it.

use std::time::Duration;

use super::raw::{RawHealth, RawRetry, RawUpstream};
use super::{parse_duration, Checker, RawApi, UpstreamKind};

/// How a request picks one of an upstream's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// The backend with the fewest requests in progress.
    LeastOutstanding,
    /// By a hash of the conversation's first messages, so a conversation stays on the backend
    /// whose KV cache already holds its prefix.
    Conversation,
}

impl Balance {
    fn parse(text: &str) -> Result<Balance, String> {
        match text {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_outstanding" => Ok(Balance::LeastOutstanding),
            "conversation" => Ok(Balance::Conversation),
            other => Err(format!(
                "`{other}` is not round_robin, least_outstanding or conversation"
            )),
        }
    }
}

/// Active and passive health checking of each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks on; off, only passive checks judge a backend.
    pub active: bool,
    /// The path requested with GET (Ollama: `/api/version`; OpenAI-compatible: `/v1/models`).
    pub path: String,
    /// Time between two checks of a backend.
    pub interval: Duration,
    /// A check that takes longer failed.
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down backend back.
    pub healthy_after: u32,
    /// Consecutive failed checks that take a backend down.
    pub unhealthy_after: u32,
    /// Consecutive failed requests that eject a backend (the circuit opens).
    pub failures: u32,
    /// How long an ejected backend rests before one request probes it (half-open).
    pub cooldown: Duration,
}

/// Retries of one upstream's requests, before anything was sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// The first back-off; each retry doubles it, with jitter.
    pub backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one gives up on this upstream at once.
    pub retry_after_cap: Duration,
    /// The most time retries may add to a request (back-offs and failed attempts together).
    pub budget: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            retry_after_cap: Duration::from_secs(5),
            budget: Duration::from_secs(10),
        }
    }
}

/// What happens to a request whose estimated prompt exceeds the upstream's `num_ctx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextOverflow {
    /// Send it to the next upstream of the fallback chain (a 400 when there is none).
    Fallback,
    /// Answer 400 `context_length_exceeded`.
    Reject,
}

impl Checker<'_> {
    pub(super) fn balance(&mut self, name: &str, up: &RawUpstream) -> Balance {
        self.parsed(
            &format!("upstreams.{name}.balance"),
            up.balance.as_ref(),
            Balance::RoundRobin,
            Balance::parse,
        )
    }

    pub(super) fn health(
        &mut self,
        name: &str,
        kind: UpstreamKind,
        raw_api: RawApi,
        raw: Option<&RawHealth>,
    ) -> HealthConfig {
        let default_path = match (kind, raw_api) {
            (UpstreamKind::OpenAi, _) => "/v1/models",
            (UpstreamKind::Ollama, _) | (UpstreamKind::Raw, RawApi::OllamaGenerate) => {
                "/api/version"
            }
            (UpstreamKind::Raw, RawApi::LlamaCpp) => "/health",
        };
        let field = |f: &str| format!("upstreams.{name}.health.{f}");
        let d = HealthConfig {
            active: true,
            path: default_path.to_owned(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy_after: 1,
            unhealthy_after: 2,
            failures: 3,
            cooldown: Duration::from_secs(10),
        };
        let Some(raw) = raw else { return d };
        let path = match raw.path.as_ref().and_then(|p| self.text(&field("path"), p)) {
            Some(p) if p.starts_with('/') => p,
            Some(p) => {
                self.error(
                    raw.path.as_ref(),
                    format!("{}: `{p}` must start with /", field("path")),
                );
                d.path.clone()
            }
            None => d.path.clone(),
        };
        HealthConfig {
            active: raw.active.as_ref().is_none_or(|b| b.value),
            path,
            interval: self.positive_duration(&field("interval"), raw.interval.as_ref(), d.interval),
            timeout: self.positive_duration(&field("timeout"), raw.timeout.as_ref(), d.timeout),
            healthy_after: self.count(&field("healthy_after"), raw.healthy_after.as_ref(), 1),
            unhealthy_after: self.count(&field("unhealthy_after"), raw.unhealthy_after.as_ref(), 2),
            failures: self.count(&field("failures"), raw.failures.as_ref(), d.failures),
            cooldown: self.positive_duration(&field("cooldown"), raw.cooldown.as_ref(), d.cooldown),
        }
    }

    pub(super) fn retry(&mut self, name: &str, raw: Option<&RawRetry>) -> RetryConfig {
        let d = RetryConfig::default();
        let Some(raw) = raw else { return d };
        let field = |f: &str| format!("upstreams.{name}.retry.{f}");
        RetryConfig {
            attempts: self.count(&field("attempts"), raw.attempts.as_ref(), d.attempts),
            backoff: self.positive_duration(&field("backoff"), raw.backoff.as_ref(), d.backoff),
            max_backoff: self.positive_duration(
                &field("max_backoff"),
                raw.max_backoff.as_ref(),
                d.max_backoff,
            ),
            retry_after_cap: self.parsed(
                &field("retry_after_cap"),
                raw.retry_after_cap.as_ref(),
                d.retry_after_cap,
                parse_duration,
            ),
            budget: self.parsed(
                &field("budget"),
                raw.budget.as_ref(),
                d.budget,
                parse_duration,
            ),
        }
    }

    pub(super) fn context_overflow(&mut self, name: &str, up: &RawUpstream) -> ContextOverflow {
        self.parsed(
            &format!("upstreams.{name}.context_overflow"),
            up.context_overflow.as_ref(),
            ContextOverflow::Fallback,
            |t| match t {
                "fallback" => Ok(ContextOverflow::Fallback),
                "reject" => Ok(ContextOverflow::Reject),
                other => Err(format!("`{other}` is not fallback or reject")),
            },
        )
    }

    fn positive_duration(
        &mut self,
        field: &str,
        value: Option<&super::raw::Text>,
        default: Duration,
    ) -> Duration {
        self.parsed(field, value, default, |t| match parse_duration(t)? {
            d if d.is_zero() => Err("must be more than 0".into()),
            d => Ok(d),
        })
    }

    /// A whole number of at least 1.
    pub(super) fn count(
        &mut self,
        field: &str,
        value: Option<&super::raw::Text>,
        default: u32,
    ) -> u32 {
        self.parsed(field, value, default, |t| match t.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("`{t}` is not a whole number of at least 1")),
        })
    }
}
