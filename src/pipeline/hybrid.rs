//! The hybrid stage in the pipeline: a hybrid request is shortened before it goes down its
//! plan, the local model summarizing through the pipeline's own call (the same backends,
//! retries, translation and relay as any request, into a buffer instead of a client).

use std::time::Instant;

use http::HeaderMap;

use super::downstream::Collect;
use super::job::Job;
use super::{Incoming, Pipeline};
use crate::api::{ChatRequest, Completion, Message, Role, Usage};
use crate::auth::Tenant;
use crate::hybrid::{Model, Outcome, Summarizer};
use crate::metrics::Record;
use crate::route::Decision;
use crate::telemetry::trace::{Kind, Value};
use crate::upstream::call::Transport;
use crate::vocab::{CachePolicy, Route};

/// The largest summary answer read.
const SUMMARY_LIMIT: usize = 1 << 20;

/// The local model, asked through the pipeline.
struct Local<'p, T> {
    pipeline: &'p Pipeline<T>,
    upstream: usize,
    model: &'p str,
    request_id: &'p str,
}

impl<T: Transport> Summarizer for Local<'_, T> {
    async fn summarize(
        &self,
        instructions: String,
        text: String,
        max_tokens: u64,
    ) -> Result<(String, Usage), String> {
        let messages = vec![
            Message::text(Role::System, instructions),
            Message::text(Role::User, text),
        ];
        let mut request = ChatRequest::new(self.model, messages);
        request.max_tokens = Some(max_tokens);
        request.temperature = Some(0.0);
        request.write_body();
        let completion = self
            .pipeline
            .complete(self.request_id, &request, self.upstream)
            .await?;
        let text = completion
            .choices
            .first()
            .and_then(|c| c.content.clone())
            .ok_or("the summary came back empty")?;
        Ok((text, completion.usage.unwrap_or_default()))
    }
}

impl<T: Transport> Pipeline<T> {
    /// Shortens a hybrid request; `None` for any other. The saving and the summarizer's cost go
    /// into `rec`.
    pub(super) async fn shorten(
        &self,
        request_id: &str,
        request: &ChatRequest,
        decision: &Decision<'_>,
        rec: &mut Record,
    ) -> Option<Outcome> {
        if decision.route != Route::Hybrid {
            return None;
        }
        let config = &self.config.hybrid;
        let method = decision.shorten.unwrap_or(config.method);
        let local = config
            .summarizer
            .filter(|&i| self.config.upstreams[i].enabled)
            .and_then(|i| {
                let upstream = &self.config.upstreams[i];
                let model = config.model.as_deref().or(upstream.model.as_deref())?;
                let local = Local {
                    pipeline: self,
                    upstream: i,
                    model,
                    request_id,
                };
                let model = Model {
                    name: model,
                    context: upstream.num_ctx,
                };
                Some((local, model))
            });
        let summarizer = local.as_ref().map(|(l, m)| (l, *m));
        let span = rec.trace.as_ref().map(|t| t.open());
        let outcome = self.hybrid.run(config, request, method, summarizer).await;
        let report = outcome.report;
        rec.hybrid = Some(report);
        if let (Some(trace), Some(span)) = (rec.trace.as_deref_mut(), span) {
            let attributes = vec![
                ("switchyard.hybrid", Value::from(report.done.as_str())),
                (
                    "switchyard.hybrid.tokens_before",
                    Value::from(report.before),
                ),
                ("switchyard.hybrid.tokens_after", Value::from(report.after)),
            ];
            trace.close(span, "hybrid", Kind::Internal, attributes, None);
        }
        if let Some((local, _)) = &local {
            let price = self.config.price(local.upstream, local.model);
            rec.summarizer_cost = price.cost(
                report.summarizer.prompt_tokens,
                report.summarizer.completion_tokens,
            );
        }
        Some(outcome)
    }

    /// Asks `upstream` (and no fallback) for a complete answer to `request`, through the same
    /// call and relay as a client's request, into a buffer.
    pub(super) async fn complete(
        &self,
        request_id: &str,
        request: &ChatRequest,
        upstream: usize,
    ) -> Result<Completion, String> {
        let decision = Decision {
            upstream,
            model: &request.model,
            route: Route::Local,
            rule: "hybrid-summary",
            score: None,
            features: None,
            cache: CachePolicy::Never,
            shorten: None,
            validate: false,
            pinned: false,
            intent: None,
        };
        let headers = HeaderMap::new();
        let gateway = Tenant {
            id: String::new(),
            key: None,
        };
        let job = Job {
            incoming: Incoming {
                tenant: &gateway,
                standing: None,
                request_id,
                started: Instant::now(),
                headers: &headers,
                path: "/v1/chat/completions",
            },
            request,
            decision: &decision,
            conversation: 0,
            store: None,
            fallbacks: false,
            hybrid: None,
            escalated: None,
        };
        let mut down = Collect::new(SUMMARY_LIMIT);
        let mut rec = Record::new();
        let _ = job.run(self, &mut down, &mut rec, None).await;
        let name = self.upstreams[upstream].name();
        if down.status() != 200 || !down.ended {
            let body = String::from_utf8_lossy(&down.body);
            let snippet: String = body.chars().take(200).collect();
            return Err(format!("{name} answered {}: {snippet}", down.status()));
        }
        Completion::from_json(&down.body).ok_or_else(|| format!("{name}: unreadable answer"))
    }
}
