//! The `hybrid:` section: how the local model (or the gateway itself) shortens long context
//! before a hybrid request goes to the cloud.

use std::time::Duration;

use super::raw::RawHybrid;
use super::{parse_duration, Checker, UpstreamConfig};
use crate::vocab::{Route, Shorten};

/// The instruction for summarizing a document; `{question}` is replaced by the question.
pub const DOCUMENT_PROMPT: &str = "You shorten documents for another assistant, who will answer a question from your text alone. \
Keep every fact, number, name, date, version, default value and code identifier that could bear on the question, word for word where you can. \
Leave out everything else. Write plain text without a preamble.\n\nThe question: {question}";

/// The instruction for summarizing the older turns of a conversation.
pub const HISTORY_PROMPT: &str = "You summarize the earlier part of a conversation for the assistant who continues it. \
Keep every fact the user stated (numbers, names, versions, paths, settings), every decision taken and every open question, word for word where you can. \
Write plain text without a preamble.";

/// Where a document sits in a message, told by these markers: `<tag>` (up to its closing tag),
/// a line prefix such as `Context:` (up to a `Question:` line or the last paragraph), or a
/// fence (```` ``` ````).
pub const MARKERS: [&str; 8] = [
    "<context>",
    "<document>",
    "<documents>",
    "Context:",
    "Documents:",
    "Document:",
    "Sources:",
    "```",
];

/// How the hybrid stage works.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridConfig {
    /// Off: hybrid requests go to their upstream unchanged.
    pub enabled: bool,
    /// How parts are shortened (a rule may say otherwise).
    pub method: Shorten,
    /// The upstream that summarizes (index into the upstreams); `None`: no local model, so
    /// abstractive shortening is skipped.
    pub summarizer: Option<usize>,
    /// The model asked to summarize; `None`: the summarizer upstream's own.
    pub model: Option<String>,
    /// The most time the whole stage may take; past it the original goes to the cloud.
    pub budget: Duration,
    /// The least share of the prompt's tokens worth saving; below it the original goes.
    pub min_saving: f64,
    /// Parts shorter than this (estimated tokens) are left as they are.
    pub min_part_tokens: u64,
    /// Conversation turns (a user message and what follows it) kept as they are; older ones
    /// become one summary.
    pub keep_last_turns: usize,
    /// Extractive: the share of a part's tokens kept.
    pub keep_ratio: f64,
    /// Abstractive: the most tokens one summary may take.
    pub summary_tokens: u64,
    /// Document markers.
    pub markers: Vec<String>,
    /// The instruction for documents (`{question}` is replaced by the question).
    pub document_prompt: String,
    /// The instruction for conversation history.
    pub history_prompt: String,
    /// How long a summary is reused.
    pub cache_ttl: Duration,
    /// The most summaries kept.
    pub cache_entries: u64,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            enabled: true,
            method: Shorten::Abstractive,
            summarizer: None,
            model: None,
            budget: Duration::from_secs(3),
            min_saving: 0.2,
            min_part_tokens: 400,
            keep_last_turns: 4,
            keep_ratio: 0.25,
            summary_tokens: 256,
            markers: MARKERS.iter().map(|m| (*m).to_owned()).collect(),
            document_prompt: DOCUMENT_PROMPT.to_owned(),
            history_prompt: HISTORY_PROMPT.to_owned(),
            cache_ttl: Duration::from_secs(3600),
            cache_entries: 10_000,
        }
    }
}

impl Checker<'_> {
    /// `hybrid:`; without it, the defaults, with the local route's upstream as the summarizer.
    pub(super) fn hybrid(
        &mut self,
        raw: Option<&RawHybrid>,
        upstreams: &[UpstreamConfig],
        names: &[String],
        local_route: Option<usize>,
    ) -> HybridConfig {
        let d = HybridConfig::default();
        // The local route's upstream, else the first enabled local upstream.
        let default_summarizer = local_route
            .filter(|&i| upstreams[i].route == Route::Local)
            .or_else(|| {
                upstreams
                    .iter()
                    .position(|u| u.route == Route::Local && u.enabled)
            });
        let Some(raw) = raw else {
            return HybridConfig {
                summarizer: default_summarizer,
                ..d
            };
        };
        let fraction = |t: &str| match t.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
            _ => Err(format!("`{t}` is not a number from 0 to 1")),
        };
        let count = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("`{t}` is not a whole number"))
        };
        let summarizer = match &raw.summarizer {
            None => default_summarizer,
            Some(text) => {
                let name = self.text("hybrid.summarizer", text).unwrap_or_default();
                let found = names.iter().position(|x| *x == name);
                if found.is_none() {
                    self.error(
                        Some(text),
                        format!("hybrid.summarizer: no upstream named `{name}`"),
                    );
                }
                found
            }
        };
        let markers = match &raw.markers {
            None => d.markers.clone(),
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, t)| self.text(&format!("hybrid.markers[{i}]"), t))
                .filter(|m| !m.trim().is_empty())
                .collect(),
        };
        let prompts = raw.prompts.as_ref();
        let prompt = |c: &mut Checker, field: &str, value, default: &str| match value {
            Some(t) => c.text(field, t).unwrap_or_else(|| default.to_owned()),
            None => default.to_owned(),
        };
        let document_prompt = prompt(
            self,
            "hybrid.prompts.document",
            prompts.and_then(|p| p.document.as_ref()),
            &d.document_prompt,
        );
        let history_prompt = prompt(
            self,
            "hybrid.prompts.history",
            prompts.and_then(|p| p.history.as_ref()),
            &d.history_prompt,
        );
        let cache = raw.cache.as_ref();
        HybridConfig {
            enabled: raw.enabled.as_ref().is_none_or(|b| b.value),
            method: self.parsed("hybrid.method", raw.method.as_ref(), d.method, str::parse),
            summarizer,
            model: raw
                .model
                .as_ref()
                .and_then(|m| self.text("hybrid.model", m))
                .filter(|m| !m.is_empty()),
            budget: self.parsed("hybrid.budget", raw.budget.as_ref(), d.budget, |t| {
                match parse_duration(t)? {
                    d if d.is_zero() => Err("must be more than 0".into()),
                    d => Ok(d),
                }
            }),
            min_saving: self.parsed(
                "hybrid.min_saving",
                raw.min_saving.as_ref(),
                d.min_saving,
                fraction,
            ),
            min_part_tokens: self.parsed(
                "hybrid.min_part_tokens",
                raw.min_part_tokens.as_ref(),
                d.min_part_tokens,
                count,
            ),
            keep_last_turns: self.parsed(
                "hybrid.keep_last_turns",
                raw.keep_last_turns.as_ref(),
                d.keep_last_turns,
                |t| count(t).map(|n| n as usize),
            ),
            keep_ratio: self.parsed(
                "hybrid.keep_ratio",
                raw.keep_ratio.as_ref(),
                d.keep_ratio,
                |t| match fraction(t)? {
                    0.0 => Err("must be more than 0".into()),
                    x => Ok(x),
                },
            ),
            summary_tokens: self.parsed(
                "hybrid.summary_tokens",
                raw.summary_tokens.as_ref(),
                d.summary_tokens,
                |t| match count(t)? {
                    0 => Err("must be more than 0".into()),
                    n => Ok(n),
                },
            ),
            markers,
            document_prompt,
            history_prompt,
            cache_ttl: self.parsed(
                "hybrid.cache.ttl",
                cache.and_then(|c| c.ttl.as_ref()),
                d.cache_ttl,
                parse_duration,
            ),
            cache_entries: self.parsed(
                "hybrid.cache.max_entries",
                cache.and_then(|c| c.max_entries.as_ref()),
                d.cache_entries,
                count,
            ),
        }
    }
}
