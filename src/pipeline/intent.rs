//! Asking the team's intent classifier (`routing.classifier`) about a request the rules left to
//! the scorer, within its time budget; answers are kept per message hash.
//!
//! A classifier that fails or is slow never fails a request: the request is routed without its
//! intent, and the miss is counted. Three misses in a row rest the classifier for five seconds
//! (no request waits on it meanwhile); then the next requests try it again.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use crate::classify::intent::{self, Intent};
use crate::config::ClassifierConfig;
use crate::upstream::call::{self, Exchange, ExchangeError, Outgoing, Transport};
use crate::upstream::metrics::UpstreamMetrics;
use crate::upstream::Upstream;
use crate::vocab::Reason;

/// Misses in a row that rest the classifier.
const MISSES_TO_REST: u32 = 3;
/// How long it rests.
const REST: Duration = Duration::from_secs(5);
/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// How one request's question went, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Cached,
    Timeout,
    Error,
    Resting,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Cached => "cached",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Resting => "resting",
        }
    }
}

/// The classifier's metrics, registered once and kept across reloads.
#[derive(Clone)]
pub struct IntentMetrics {
    questions: IntCounterVec,
    seconds: Histogram,
}

impl IntentMetrics {
    /// Registers `switchyard_intent_requests_total{result}` and `switchyard_intent_seconds`.
    pub fn register(registry: &Registry) -> Result<IntentMetrics, prometheus::Error> {
        let m = IntentMetrics {
            questions: IntCounterVec::new(
                Opts::new(
                    "switchyard_intent_requests_total",
                    "Requests whose intent was asked of the classifier, by result (answered, \
                     cached, timeout, error, resting)",
                ),
                &["result"],
            )?,
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "switchyard_intent_seconds",
                    "Time requests waited for the intent classifier (cached answers excluded)",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
        };
        registry.register(Box::new(m.questions.clone()))?;
        registry.register(Box::new(m.seconds.clone()))?;
        Ok(m)
    }

    fn count(&self, outcome: Outcome) {
        self.questions.with_label_values(&[outcome.as_str()]).inc();
    }
}

/// The classifier of one configuration: its address, its answers so far, its rest.
pub struct Classifier {
    config: ClassifierConfig,
    upstream: Upstream,
    answers: moka::sync::Cache<u64, Arc<Intent>>,
    hasher: foldhash::quality::RandomState,
    misses: AtomicU32,
    resting_until: Mutex<Option<Instant>>,
    metrics: IntentMetrics,
}

impl Classifier {
    /// The classifier `config` describes.
    pub fn new(config: &ClassifierConfig, metrics: IntentMetrics) -> Result<Classifier, String> {
        Ok(Classifier {
            upstream: Upstream::new(config.upstream.clone())?,
            answers: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build(),
            hasher: foldhash::quality::RandomState::default(),
            misses: AtomicU32::new(0),
            resting_until: Mutex::new(None),
            config: config.clone(),
            metrics,
        })
    }

    /// Whether this classifier serves `config` (a reload keeps it, and its answers, when so).
    pub fn serves(&self, config: &ClassifierConfig) -> bool {
        self.config == *config
    }

    /// The intent of `text`: a kept answer, else the classifier's within the budget; `None`
    /// when it failed, was slow or rests.
    pub async fn intent<T: Transport>(
        &self,
        transport: &T,
        metrics: &UpstreamMetrics,
        request_id: &str,
        text: &str,
    ) -> Option<Arc<Intent>> {
        let key = self.hasher.hash_one(text);
        if let Some(known) = self.answers.get(&key) {
            self.metrics.count(Outcome::Cached);
            return Some(known);
        }
        if self.resting() {
            self.metrics.count(Outcome::Resting);
            return None;
        }
        let started = Instant::now();
        let asked = tokio::time::timeout(
            self.config.timeout,
            self.ask(transport, metrics, request_id, text),
        )
        .await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match asked {
            Ok(Ok(intent)) => {
                let intent = Arc::new(intent);
                self.answers.insert(key, Arc::clone(&intent));
                self.misses.store(0, Ordering::Relaxed);
                self.metrics.count(Outcome::Answered);
                return Some(intent);
            }
            Ok(Err(Miss::Failed(e))) => {
                tracing::warn!("request {request_id}: intent classifier: {e}");
                Outcome::Error
            }
            Ok(Err(Miss::Late)) | Err(_) => {
                tracing::warn!(
                    "request {request_id}: intent classifier: no answer within {:?}",
                    self.config.timeout
                );
                Outcome::Timeout
            }
        };
        self.metrics.count(outcome);
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 >= MISSES_TO_REST {
            self.misses.store(0, Ordering::Relaxed);
            if let Ok(mut until) = self.resting_until.lock() {
                *until = Some(Instant::now() + REST);
            }
            tracing::warn!(
                "intent classifier rests for {REST:?} after {MISSES_TO_REST} misses in a row"
            );
        }
        None
    }

    fn resting(&self) -> bool {
        let Ok(mut until) = self.resting_until.lock() else {
            return false;
        };
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// One question and its answer, read whole.
    async fn ask<T: Transport>(
        &self,
        transport: &T,
        metrics: &UpstreamMetrics,
        request_id: &str,
        text: &str,
    ) -> Result<Intent, Miss> {
        let body = bytes::Bytes::from(intent::ask_body(text));
        let headers = HeaderMap::new();
        let path = if self.config.upstream.backends[0].path_prefix.is_empty() {
            "/"
        } else {
            ""
        };
        let outgoing = Outgoing {
            headers: &headers,
            path,
            body: &body,
            conversation: 0,
            request_id,
            trace: None,
        };
        let answered = call::call(transport, &self.upstream, outgoing, metrics, &mut |_| {})
            .await
            .map_err(|e| match e {
                call::CallError::Failed {
                    reason: Reason::Timeout,
                    ..
                } => Miss::Late,
                call::CallError::Refused(e) => Miss::Failed(e.message),
                call::CallError::Failed { last, .. } => Miss::Failed(match last {
                    call::Failure::Api(e) => e.message,
                    call::Failure::Answer { status, .. } => format!("it answered {status}"),
                }),
            })?;
        let mut exchange = answered.exchange;
        let status = exchange.head().status;
        if !status.is_success() {
            exchange.finish().await;
            return Err(Miss::Failed(format!("it answered {}", status.as_u16())));
        }
        let mut read = Vec::new();
        loop {
            match exchange.next().await {
                Ok(Some(piece)) if read.len() + piece.len() > MAX_ANSWER => {
                    return Err(Miss::Failed(format!("an answer over {MAX_ANSWER} bytes")))
                }
                Ok(Some(piece)) => read.extend_from_slice(&piece),
                Ok(None) => break,
                Err(ExchangeError::Timeout(_)) => return Err(Miss::Late),
                Err(e) => return Err(Miss::Failed(e.to_api(self.upstream.name()).message)),
            }
        }
        exchange.finish().await;
        Intent::parse(&read).map_err(Miss::Failed)
    }
}

/// Why a question got no intent.
enum Miss {
    /// The budget ran out.
    Late,
    /// Anything else, said for the log.
    Failed(String),
}
