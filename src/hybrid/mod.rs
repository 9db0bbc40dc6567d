//! The hybrid stage: before a hybrid request goes to the cloud, its long parts (RAG documents
//! wherever they sit, the older turns of a conversation) are shortened, so that the expensive
//! model reads far fewer tokens.
//!
//! [`parts`] finds what can be shortened; [`extract`] keeps the sentences that bear on the
//! question, in microseconds and without a model; the abstractive path asks the local model for
//! summaries through a [`Summarizer`] (the pipeline's internal call), all parts at once, under a
//! time budget, with summaries cached so that a document or an old turn seen again is not
//! summarized again. Whatever goes wrong, the stage answers "leave the request as it was": a
//! client never gets an error caused by it.

pub mod extract;
mod metrics;
pub mod parts;

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{ChatRequest, Message, Usage};
use crate::classify::{estimate_prompt_tokens, estimate_tokens};
use crate::config::HybridConfig;
use crate::vocab::Shorten;
pub use metrics::HybridMetrics;
pub use parts::{At, Kind, Part, Plan};

/// The context assumed for a summarizer whose upstream does not say (`num_ctx`).
const DEFAULT_CONTEXT: u64 = 8192;
/// Room kept in the summarizer's context for the chat template and the instructions' framing.
const TEMPLATE_TOKENS: u64 = 64;
/// The smallest chunk worth a model call.
const MIN_CHUNK: u64 = 256;

/// Asks the summarizer model for one answer.
pub trait Summarizer: Sync {
    /// Sends `instructions` as the system message and `text` as the user message, asking for
    /// at most `max_tokens`; the answer's text and the tokens it took.
    fn summarize(
        &self,
        instructions: String,
        text: String,
        max_tokens: u64,
    ) -> impl Future<Output = Result<(String, Usage), String>> + Send;
}

/// What the stage did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The local model summarized its parts.
    Summarized,
    /// The gateway kept the sentences that matter.
    Extracted,
    /// Both: extracted to fit the local model, then summarized.
    Both,
    /// Nothing: the original goes on.
    Skipped(Skip),
}

/// Why the original request went on unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The stage is turned off.
    Disabled,
    /// Nothing long enough to shorten.
    NoParts,
    /// Abstractive shortening without a local upstream to summarize.
    NoSummarizer,
    /// The time budget ran out.
    Budget,
    /// The local model failed.
    LocalFailed,
    /// Shortening would save less than `min_saving`.
    SmallSaving,
}

impl Done {
    /// The `x-switchyard-hybrid` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Done::Summarized => "summarized",
            Done::Extracted => "extracted",
            Done::Both => "both",
            Done::Skipped(Skip::Disabled) => "skipped:disabled",
            Done::Skipped(Skip::NoParts) => "skipped:no_parts",
            Done::Skipped(Skip::NoSummarizer) => "skipped:no_summarizer",
            Done::Skipped(Skip::Budget) => "skipped:budget",
            Done::Skipped(Skip::LocalFailed) => "skipped:local_failed",
            Done::Skipped(Skip::SmallSaving) => "skipped:small_saving",
        }
    }
}

/// What the stage reports of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Prompt tokens the cloud would have read (estimated).
    pub before: u64,
    /// Prompt tokens it does read (estimated); `before` when skipped.
    pub after: u64,
    /// What was done.
    pub done: Done,
    /// Parts shortened.
    pub parts: usize,
    /// What the summarizer read and wrote for it (nothing for cached summaries).
    pub summarizer: Usage,
    /// How long the stage took.
    pub elapsed: Duration,
}

/// The stage's answer: the shortened conversation (`None`: send the original), and the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The messages to send instead of the request's own.
    pub messages: Option<Vec<Message>>,
    /// What happened.
    pub report: Report,
}

/// Where the summarizer is and what it takes.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    /// The model's name (part of the summary cache's key).
    pub name: &'a str,
    /// Its context in tokens, when known.
    pub context: Option<u64>,
}

/// The stage: its summary cache and its metrics; its settings come with each call, so a reload
/// takes effect at once.
pub struct Stage {
    summaries: moka::sync::Cache<u128, Arc<str>>,
    hashers: (RandomState, RandomState),
    metrics: HybridMetrics,
}

impl Stage {
    /// A stage with an empty summary cache sized by `config`, counting into `metrics`.
    pub fn new(config: &HybridConfig, metrics: HybridMetrics) -> Stage {
        Stage {
            summaries: moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .time_to_live(config.cache_ttl)
                .build(),
            hashers: (RandomState::new(), RandomState::new()),
            metrics,
        }
    }

    /// Shortens `request` by `method` within `config.budget`; `summarizer` is `None` when no
    /// local model is available.
    pub async fn run<S: Summarizer>(
        &self,
        config: &HybridConfig,
        request: &ChatRequest,
        method: Shorten,
        summarizer: Option<(&S, Model<'_>)>,
    ) -> Outcome {
        let started = Instant::now();
        let before = estimate_prompt_tokens(&request.messages);
        let report = |done, after, parts, summarizer| Report {
            before,
            after,
            done,
            parts,
            summarizer,
            elapsed: started.elapsed(),
        };
        let skip = |why: Skip, summarizer: Usage| Outcome {
            messages: None,
            report: report(Done::Skipped(why), before, 0, summarizer),
        };
        if !config.enabled {
            return self.count(skip(Skip::Disabled, Usage::default()));
        }
        let plan = parts::find(request, config);
        for (_, why) in &plan.left {
            self.metrics.left(*why);
        }
        if plan.parts.is_empty() {
            return self.count(skip(Skip::NoParts, Usage::default()));
        }
        let (done, texts, used) = match (method, summarizer) {
            (Shorten::Extractive, _) | (Shorten::Both, None) => (
                Done::Extracted,
                self.extract_all(config, request, &plan),
                Usage::default(),
            ),
            (Shorten::Abstractive, None) => {
                return self.count(skip(Skip::NoSummarizer, Usage::default()))
            }
            (method, Some((summarizer, model))) => {
                let left = config.budget.saturating_sub(started.elapsed());
                let work = self.summarize_all(config, request, &plan, method, summarizer, model);
                match tokio::time::timeout(left, work).await {
                    Err(_) => return self.count(skip(Skip::Budget, Usage::default())),
                    Ok(Err(used)) => return self.count(skip(Skip::LocalFailed, used)),
                    Ok(Ok((texts, used))) => {
                        let done = if method == Shorten::Both {
                            Done::Both
                        } else {
                            Done::Summarized
                        };
                        (done, texts, used)
                    }
                }
            }
        };
        let messages = parts::apply(request, &plan, &texts);
        let after = estimate_prompt_tokens(&messages);
        if (before.saturating_sub(after) as f64) < config.min_saving * before as f64 {
            return self.count(skip(Skip::SmallSaving, used));
        }
        self.count(Outcome {
            messages: Some(messages),
            report: report(done, after, plan.parts.len(), used),
        })
    }

    /// What the stage would shorten in `request`, for `/v1/route` and `switchyard route`.
    pub fn preview(config: &HybridConfig, request: &ChatRequest) -> serde_json::Value {
        let plan = parts::find(request, config);
        let parts: Vec<serde_json::Value> = plan
            .parts
            .iter()
            .map(|p| {
                let at = match &p.at {
                    At::Text { message, .. } => serde_json::json!({"message": message}),
                    At::Turns(r) => serde_json::json!({"messages": [r.start, r.end]}),
                };
                serde_json::json!({"kind": p.kind.as_str(), "tokens": p.tokens, "at": at})
            })
            .collect();
        serde_json::json!({
            "enabled": config.enabled,
            "method": config.method.as_str(),
            "question_tokens": estimate_tokens(&plan.question),
            "parts": parts,
            "prompt_tokens": estimate_prompt_tokens(&request.messages),
        })
    }

    fn count(&self, outcome: Outcome) -> Outcome {
        let r = &outcome.report;
        self.metrics
            .outcome(r.done.as_str(), r.before.saturating_sub(r.after), r.elapsed);
        outcome
    }

    /// Every part, extracted.
    fn extract_all(&self, config: &HybridConfig, req: &ChatRequest, plan: &Plan) -> Vec<String> {
        plan.parts
            .iter()
            .map(|p| {
                let keep = keep_tokens(config, p.tokens);
                extract::extract(&parts::text_of(req, p), &plan.question, keep)
            })
            .collect()
    }

    /// Every part, summarized at once; on failure, what the calls that came back used.
    async fn summarize_all<S: Summarizer>(
        &self,
        config: &HybridConfig,
        req: &ChatRequest,
        plan: &Plan,
        method: Shorten,
        summarizer: &S,
        model: Model<'_>,
    ) -> Result<(Vec<String>, Usage), Usage> {
        let work = plan.parts.iter().map(|part| async move {
            match part.kind {
                Kind::History => {
                    let question = plan.question.as_str();
                    self.history(config, req, part, question, method, summarizer, model)
                        .await
                }
                _ => {
                    let text = parts::text_of(req, part);
                    self.document(config, &text, &plan.question, method, summarizer, model)
                        .await
                }
            }
        });
        let results = futures::future::join_all(work).await;
        let mut used = Usage::default();
        let mut texts = Vec::with_capacity(results.len());
        let mut failed = false;
        for r in results {
            match r {
                Ok((text, u)) => {
                    add(&mut used, u);
                    texts.push(text);
                }
                Err(u) => {
                    add(&mut used, u);
                    failed = true;
                }
            }
        }
        if failed {
            Err(used)
        } else {
            Ok((texts, used))
        }
    }

    /// One document part: extracted first when it must fit the model (`both`), cut into chunks
    /// the model's context holds, each summarized (or found in the cache), joined.
    async fn document<S: Summarizer>(
        &self,
        config: &HybridConfig,
        text: &str,
        question: &str,
        method: Shorten,
        summarizer: &S,
        model: Model<'_>,
    ) -> Result<(String, Usage), Usage> {
        let instructions = config.document_prompt.replace("{question}", question);
        let capacity = capacity(config, &instructions, model);
        let extracted;
        let text = if method == Shorten::Both {
            extracted = extract::extract(text, question, fit(capacity));
            extracted.as_str()
        } else {
            text
        };
        self.chunked(config, &instructions, text, capacity, summarizer, model)
            .await
    }

    /// `text` cut into chunks of at most `capacity` tokens, each summarized (or found in the
    /// cache) at once, joined.
    async fn chunked<S: Summarizer>(
        &self,
        config: &HybridConfig,
        instructions: &str,
        text: &str,
        capacity: u64,
        summarizer: &S,
        model: Model<'_>,
    ) -> Result<(String, Usage), Usage> {
        let work = chunks(text, capacity)
            .into_iter()
            .map(|chunk| self.summary(config, instructions, chunk, summarizer, model));
        let mut used = Usage::default();
        let mut out = Vec::new();
        let mut failed = false;
        for r in futures::future::join_all(work).await {
            match r {
                Ok((summary, u)) => {
                    add(&mut used, u);
                    out.push(summary);
                }
                Err(u) => {
                    add(&mut used, u);
                    failed = true;
                }
            }
        }
        if failed {
            return Err(used);
        }
        Ok((out.join("\n\n"), used))
    }

    /// The older turns: the longest prefix summarized before is reused, and only the turns
    /// after it are summarized with that summary.
    #[allow(clippy::too_many_arguments)]
    async fn history<S: Summarizer>(
        &self,
        config: &HybridConfig,
        req: &ChatRequest,
        part: &Part,
        question: &str,
        method: Shorten,
        summarizer: &S,
        model: Model<'_>,
    ) -> Result<(String, Usage), Usage> {
        let At::Turns(range) = &part.at else {
            return Err(Usage::default());
        };
        let turns = &req.messages[range.clone()];
        // A chain of hashes: prefix k covers turns[..k].
        let mut chain = Vec::with_capacity(turns.len());
        let mut h = self.key(&["history", &config.history_prompt, model.name]);
        for m in turns {
            let text = parts::transcript(std::slice::from_ref(m));
            h = self.key(&[&h.to_string(), &text]);
            chain.push(h);
        }
        let found = (1..=turns.len())
            .rev()
            .find_map(|k| self.summaries.get(&chain[k - 1]).map(|s| (k, s)));
        let whole = chain[turns.len() - 1];
        if let Some((k, summary)) = &found {
            if *k == turns.len() {
                self.metrics.summary(true);
                return Ok((summary.to_string(), Usage::default()));
            }
        }
        let text = match &found {
            Some((k, summary)) => format!(
                "(summary of the conversation before)\n{summary}\n\n{}",
                parts::transcript(&turns[*k..])
            ),
            None => parts::transcript(turns),
        };
        // Longer than the model reads: extracted to fit (`both`), else summarized in chunks.
        let capacity = capacity(config, &config.history_prompt, model);
        let text = if method == Shorten::Both {
            extract::extract(&text, question, fit(capacity))
        } else {
            text
        };
        let instructions = &config.history_prompt;
        let (summary, used) = self
            .chunked(config, instructions, &text, capacity, summarizer, model)
            .await?;
        self.summaries.insert(whole, Arc::from(summary.as_str()));
        Ok((summary, used))
    }

    /// One chunk's summary, from the cache or the model.
    async fn summary<S: Summarizer>(
        &self,
        config: &HybridConfig,
        instructions: &str,
        chunk: &str,
        summarizer: &S,
        model: Model<'_>,
    ) -> Result<(String, Usage), Usage> {
        let key = self.key(&["document", instructions, model.name, chunk]);
        if let Some(summary) = self.summaries.get(&key) {
            self.metrics.summary(true);
            return Ok((summary.to_string(), Usage::default()));
        }
        let (summary, used) = summarizer
            .summarize(
                instructions.to_owned(),
                chunk.to_owned(),
                config.summary_tokens,
            )
            .await
            .map_err(|_| Usage::default())?;
        let summary = summary.trim().to_owned();
        if summary.is_empty() {
            return Err(used);
        }
        self.metrics.summary(false);
        self.summaries.insert(key, Arc::from(summary.as_str()));
        Ok((summary, used))
    }

    /// A 128-bit key over `pieces`, from two independently seeded hashers.
    fn key(&self, pieces: &[&str]) -> u128 {
        let mut a = self.hashers.0.build_hasher();
        let mut b = self.hashers.1.build_hasher();
        for p in pieces {
            p.hash(&mut a);
            p.hash(&mut b);
        }
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }
}

fn add(total: &mut Usage, more: Usage) {
    total.prompt_tokens += more.prompt_tokens;
    total.completion_tokens += more.completion_tokens;
}

/// What extraction keeps of a part of `tokens`.
fn keep_tokens(config: &HybridConfig, tokens: u64) -> u64 {
    ((tokens as f64 * config.keep_ratio) as u64).max(1)
}

/// The most tokens of text one summarizer call may read.
fn capacity(config: &HybridConfig, instructions: &str, model: Model<'_>) -> u64 {
    let context = model.context.unwrap_or(DEFAULT_CONTEXT);
    context
        .saturating_sub(config.summary_tokens + estimate_tokens(instructions) + TEMPLATE_TOKENS)
        .max(MIN_CHUNK)
}

/// What extraction aims at to fit `capacity`: a little less, for the sentence that crosses the
/// line and the marks where text was dropped.
fn fit(capacity: u64) -> u64 {
    capacity * 4 / 5
}

/// `text` cut at paragraph (else line, else word) boundaries into pieces of at most `tokens`.
fn chunks(text: &str, tokens: u64) -> Vec<&str> {
    if estimate_tokens(text) <= tokens {
        return vec![text];
    }
    let limit = (tokens as usize) * 4;
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > limit {
        let window = &text[start..floor_char(text, start + limit)];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| {
                window
                    .rfind(sep)
                    .filter(|&at| at > limit / 2)
                    .map(|at| at + sep.len())
            })
            .unwrap_or(window.len());
        out.push(&text[start..start + cut]);
        start += cut;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The largest char boundary at or before `at`.
fn floor_char(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests;
