//! The `state:` section: where counters and cached answers live when several replicas share them.

use std::time::Duration;

use super::raw::RawState;
use super::{parse_duration, Checker, Secret};

/// Shared state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// A Redis URL (`redis://[:password@]host:port/db`), secret since it may hold a password;
    /// `None`: every replica keeps its own state in memory.
    pub redis: Option<Secret>,
    /// With Redis unreachable: admit requests without counting them (`true`), or refuse them with
    /// 503 (`false`).
    pub fail_open: bool,
    /// The longest a Redis round trip may take before it counts as a failure.
    pub timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            redis: None,
            fail_open: true,
            timeout: Duration::from_millis(100),
        }
    }
}

impl Checker<'_> {
    /// `state:`.
    pub(super) fn state(&mut self, raw: Option<&RawState>) -> StateConfig {
        let d = StateConfig::default();
        let Some(raw) = raw else { return d };
        let redis = raw
            .redis
            .as_ref()
            .and_then(|r| self.text("state.redis", r))
            .filter(|r| !r.is_empty());
        if let (Some(url), Some(at)) = (&redis, &raw.redis) {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                self.error(
                    Some(at),
                    "state.redis: not a redis:// or rediss:// URL".to_owned(),
                );
            }
        }
        StateConfig {
            redis: redis.map(Secret),
            fail_open: raw.fail_open.as_ref().is_none_or(|b| b.value),
            timeout: self.parsed("state.timeout", raw.timeout.as_ref(), d.timeout, |t| {
                match parse_duration(t)? {
                    d if d.is_zero() => Err("must be more than 0".into()),
                    d => Ok(d),
                }
            }),
        }
    }
}
