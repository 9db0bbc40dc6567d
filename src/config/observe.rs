//! The sections about what the gateway keeps and reports of each answer: `cache:`, `pricing:`
//! (with each upstream's `price:`) and `access_log:`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAccessLog, RawCache, RawPrice, RawPricing};
use super::{parse_duration, parse_size, Checker};

/// The exact response cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off: every answer says `x-switchyard-cache: bypass`.
    pub enabled: bool,
    /// How long an answer is served from the cache.
    pub ttl: Duration,
    /// The budget for all entries together, in bytes.
    pub max_bytes: u64,
    /// Answers larger than this are not stored.
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl: Duration::from_secs(600),
            max_bytes: 256 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// A model's price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// Per million prompt (input) tokens.
    pub input: f64,
    /// Per million completion (output) tokens.
    pub output: f64,
}

impl Price {
    /// What `prompt` input and `completion` output tokens cost, in dollars.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input + completion as f64 * self.output) / 1e6
    }
}

/// Prices by model name, and the model savings are measured against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    /// Upstream model names and their prices.
    pub models: HashMap<String, Price>,
    /// The cloud model every request is compared with: what it would have cost there.
    pub baseline: Option<(String, Price)>,
}

/// Where the one-line-per-request JSON access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Events among the log lines (`path: log`).
    Log,
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

impl Checker<'_> {
    pub(super) fn cache(&mut self, raw: Option<&RawCache>) -> CacheConfig {
        let d = CacheConfig::default();
        let Some(raw) = raw else { return d };
        let positive_size = |t: &str| match parse_size(t)? {
            0 => Err("must be more than 0".to_owned()),
            n => Ok(n),
        };
        CacheConfig {
            enabled: raw.enabled.as_ref().is_none_or(|b| b.value),
            ttl: self.parsed(
                "cache.ttl",
                raw.ttl.as_ref(),
                d.ttl,
                |t| match parse_duration(t)? {
                    d if d.is_zero() => Err("must be more than 0".into()),
                    d => Ok(d),
                },
            ),
            max_bytes: self.parsed(
                "cache.max_bytes",
                raw.max_bytes.as_ref(),
                d.max_bytes,
                positive_size,
            ),
            max_entry_bytes: self.parsed(
                "cache.max_entry_bytes",
                raw.max_entry_bytes.as_ref(),
                d.max_entry_bytes,
                positive_size,
            ),
        }
    }

    pub(super) fn price(&mut self, field: &str, raw: &RawPrice) -> Price {
        let mut one = |part: &str, value| {
            self.parsed(
                &format!("{field}.{part}"),
                Some(value),
                0.0,
                |t| match t.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    _ => Err(format!(
                        "`{t}` is not a price (US dollars per million tokens, 0 or more)"
                    )),
                },
            )
        };
        Price {
            input: one("input", &raw.input),
            output: one("output", &raw.output),
        }
    }

    pub(super) fn pricing(&mut self, raw: Option<&RawPricing>) -> Pricing {
        let Some(raw) = raw else {
            return Pricing::default();
        };
        let mut models = HashMap::new();
        for (name, price) in &raw.models.0 {
            let price = self.price(&format!("pricing.models.{name}"), price);
            models.insert(name.clone(), price);
        }
        let baseline = raw.baseline.as_ref().and_then(|b| {
            let name = self.text("pricing.baseline", b)?;
            match models.get(&name) {
                Some(price) => Some((name, *price)),
                None => {
                    self.error(
                        Some(b),
                        format!("pricing.baseline: `{name}` has no price in pricing.models"),
                    );
                    None
                }
            }
        });
        Pricing { models, baseline }
    }

    pub(super) fn access_log(&mut self, raw: Option<&RawAccessLog>) -> Option<AccessLogTarget> {
        let raw = raw?;
        if raw.enabled.as_ref().is_some_and(|b| !b.value) {
            return None;
        }
        let path = raw
            .path
            .as_ref()
            .and_then(|p| self.text("access_log.path", p))
            .unwrap_or_default();
        Some(match path.as_str() {
            "" | "-" | "stdout" => AccessLogTarget::Stdout,
            "log" => AccessLogTarget::Log,
            path => AccessLogTarget::File(self.base.join(path)),
        })
    }
}
