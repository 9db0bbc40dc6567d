//! The `feedback:` section: how long served requests can be labelled, and where labels go.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawFeedback;
use super::{parse_duration, Checker};

/// How feedback is kept (`feedback:`).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackConfig {
    /// How long a request can be labelled after it was served.
    pub retention: Duration,
    /// Records kept at most (the oldest go first).
    pub max_records: u64,
    /// Where labelled records are appended, one JSON line each; `None` keeps labels in memory
    /// only (they still count in the metrics).
    pub labels: Option<PathBuf>,
    /// Keep the request's messages in its record, so that labels can retrain on text.
    pub store_text: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            retention: Duration::from_secs(24 * 3600),
            max_records: 100_000,
            labels: None,
            store_text: false,
        }
    }
}

impl Checker<'_> {
    /// `feedback:`.
    pub(super) fn feedback(&mut self, raw: Option<&RawFeedback>) -> FeedbackConfig {
        let d = FeedbackConfig::default();
        let Some(raw) = raw else { return d };
        FeedbackConfig {
            retention: self.parsed(
                "feedback.retention",
                raw.retention.as_ref(),
                d.retention,
                |t| match parse_duration(t)? {
                    d if d.is_zero() => Err("must be more than 0".into()),
                    d => Ok(d),
                },
            ),
            max_records: self.parsed(
                "feedback.max_records",
                raw.max_records.as_ref(),
                d.max_records,
                |t| {
                    t.parse::<u64>()
                        .map_err(|_| format!("`{t}` is not a whole number"))
                },
            ),
            labels: raw
                .labels
                .as_ref()
                .and_then(|p| self.text("feedback.labels", p))
                .filter(|p| !p.is_empty())
                .map(|p| self.base.join(p)),
            store_text: raw.store_text.as_ref().is_some_and(|b| b.value),
        }
    }
}
