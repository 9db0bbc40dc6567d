//! Sending a decided chat request down its plan: the decision's upstream, then its fallbacks,
//! each called with its retry policy until one answers; when none does, the client hears the
//! failure that mattered.

use bytes::Bytes;
use http::HeaderName;

use super::downstream::{Downstream, Gone};
use super::explain::{self, Explain};
use super::job::{upstream_error_answer, Job, Leg};
use super::metrics::Overflow;
use super::{relay, Pipeline};
use crate::api::ApiError;
use crate::cache::Flight;
use crate::config::{ContextOverflow, UpstreamKind};
use crate::metrics::Record;
use crate::route;
use crate::telemetry::trace::{Kind, Open, Value};
use crate::tokens;
use crate::upstream::call::{self, CallError, Failure, Outgoing, Transport};
use crate::upstream::{ollama, raw, Upstream};
use crate::vocab::Reason;

impl Job<'_> {
    /// Sends the request down its plan; writes the answer or the last failure.
    pub(super) async fn run<T: Transport, D: Downstream>(
        &self,
        p: &Pipeline<T>,
        down: &mut D,
        rec: &mut Record,
        mut flight: Option<Flight>,
    ) -> Result<(), Gone> {
        let mut plan = route::plan(&p.config, self.decision);
        if !self.fallbacks {
            plan.truncate(1);
        }
        if plan.is_empty() {
            // Only a kept-local request's plan can be empty: its local side is disabled.
            let error = ApiError::kept_local(self.decision.rule);
            let (head, body) =
                explain::error_answer(&error, &Explain::gateway(self.incoming.request_id), &[]);
            return down.respond(head, body).await;
        }
        // A key's fallbacks stay on the routes it may use.
        if let Some(key) = self.incoming.tenant.key.map(|i| &p.config.keys[i]) {
            let first = plan[0];
            plan.retain(|s| *s == first || key.allows_route(p.config.upstream(s.upstream).route));
        }
        let primary = p.upstreams[self.decision.upstream].name();
        // The last failure, and the last error an upstream answered itself (a 429, a 503 with
        // its message), which tells the client more than a later fallback's refused connection.
        let mut last = (Failure::Api(ApiError::no_healthy_backend(primary)), 0);
        let mut answered: Option<(Failure, usize)> = None;
        let mut reason = Reason::NoHealthyBackend;
        for (n, step) in plan.iter().enumerate() {
            let upstream = &*p.upstreams[step.upstream];
            if n > 0 {
                let from = p.upstreams[plan[n - 1].upstream].name();
                tracing::info!(
                    "request {}: falling back from {from} to {} ({reason})",
                    self.incoming.request_id,
                    upstream.name()
                );
                p.counts.fallback(from, upstream.name(), reason);
            }
            let leg = Leg {
                upstream,
                step: *step,
                fallback: (n > 0).then(|| format!("{primary}->{}", upstream.name())),
            };
            if let Some((error, can_fall_back)) = self.overflows(p, &leg, n + 1 < plan.len()) {
                if n == 0 && !can_fall_back {
                    let name = upstream.name();
                    return self.reply_error(p, &leg, name, &error, down, rec).await;
                }
                // A fallback that cannot take the prompt is skipped: the client then gets the
                // earlier upstream's failure, which is what went wrong.
                if n == 0 {
                    last = (Failure::Api(error), n);
                }
                reason = Reason::ContextOverflow;
                continue;
            }
            let (path, body) = match self.upstream_body(upstream, step.model) {
                Ok(b) => b,
                Err(e) => {
                    return self
                        .reply_error(p, &leg, upstream.name(), &e, down, rec)
                        .await
                }
            };
            let outgoing = Outgoing {
                headers: self.incoming.headers,
                path,
                body: &body,
                conversation: self.conversation,
                request_id: self.incoming.request_id,
                trace: rec.trace.as_ref().map(|t| t.context),
            };
            let mut observe = |a: call::Attempt<'_>| attempted(rec, upstream, step.model, a);
            let tried = call::call(
                &p.transport,
                upstream,
                outgoing,
                &p.upstream_metrics,
                &mut observe,
            );
            match tried.await {
                Ok(answer) => {
                    return relay::relay(p, self, &leg, answer, down, rec, &mut flight).await
                }
                Err(CallError::Refused(e)) => {
                    return self
                        .reply_error(p, &leg, upstream.name(), &e, down, rec)
                        .await
                }
                Err(CallError::Failed { last: l, reason: r }) => {
                    reason = r;
                    match l {
                        Failure::Answer { .. } => answered = Some((l, n)),
                        Failure::Api(_) => last = (l, n),
                    }
                }
            }
        }
        // Nothing answered: the client gets the last word an upstream said, else the last error.
        let (failure, at) = answered.unwrap_or(last);
        let at = &*p.upstreams[plan[at].upstream];
        let fallback = (plan.len() > 1).then(|| {
            let end = p.upstreams[plan[plan.len() - 1].upstream].name();
            format!("{primary}->{end}")
        });
        rec.route = Some(self.served_route(p, at));
        rec.upstream = Some(at.name().to_owned());
        let explain = self.explain(p, rec, at, at.name(), fallback.as_deref());
        let (head, body) = match failure {
            Failure::Api(_) if self.decision.pinned => {
                let error = ApiError::kept_local(self.decision.rule);
                explain::error_answer(&error, &explain, &[])
            }
            Failure::Api(error) => explain::error_answer(&error, &explain, &[]),
            Failure::Answer {
                status,
                body,
                retry_after,
            } => {
                let extra: Vec<(HeaderName, &str)> = retry_after
                    .as_deref()
                    .map(|v| (http::header::RETRY_AFTER, v))
                    .into_iter()
                    .collect();
                match upstream_error_answer(at, status, &body) {
                    Ok(clean) => {
                        let mut head = explain::json_head(status, clean.len(), &explain);
                        for (name, value) in extra {
                            if let Ok(v) = http::HeaderValue::from_str(value) {
                                head.headers.insert(name, v);
                            }
                        }
                        (head, clean)
                    }
                    Err(error) => explain::error_answer(&error, &explain, &extra),
                }
            }
        };
        down.respond(head, body).await
    }

    /// When the prompt is past the leg's context size (estimated, or counted in the model's
    /// vocabulary when the estimate is near it): counts it, and gives the error and whether the
    /// configuration lets it fall back (`None` when it fits).
    fn overflows<T: Transport>(
        &self,
        p: &Pipeline<T>,
        leg: &Leg<'_>,
        more: bool,
    ) -> Option<(ApiError, bool)> {
        let config = &leg.upstream.config;
        let limit = config.num_ctx?;
        // The context holds the answer too: room for the completion the client asked for.
        let completion = self.request.max_tokens.unwrap_or(0);
        let room = limit.saturating_sub(completion);
        let vocabulary = config.tokenizer.vocabulary(leg.step.model);
        let prompt = tokens::prompt_tokens(&self.request.messages, vocabulary, room).tokens;
        if prompt <= room {
            return None;
        }
        let can_fall_back =
            leg.upstream.config.context_overflow == ContextOverflow::Fallback && more;
        let action = if can_fall_back {
            Overflow::Fallback
        } else {
            Overflow::Reject
        };
        p.counts.context_overflow(leg.upstream.name(), action);
        let error =
            ApiError::context_length_exceeded(leg.upstream.name(), prompt, completion, limit);
        Some((error, can_fall_back))
    }

    /// The path and body for `upstream`, in its dialect.
    fn upstream_body<'s>(
        &'s self,
        upstream: &Upstream,
        model: &str,
    ) -> Result<(&'s str, Bytes), ApiError> {
        Ok(match upstream.config.kind {
            // Streams are asked for their usage chunk so that tokens and cost are known; the
            // client gets it only if it asked for it itself.
            UpstreamKind::OpenAi => (self.incoming.path, self.request.upstream_body(model, true)),
            UpstreamKind::Ollama => (
                ollama::CHAT_PATH,
                ollama::request_body(self.request, model, &upstream.config)?,
            ),
            UpstreamKind::Raw => (
                raw::path(upstream.config.raw_api),
                raw::request_body(self.request, model, &upstream.config)?,
            ),
        })
    }

    /// Answers an error that is the client's own business.
    async fn reply_error<T: Transport, D: Downstream>(
        &self,
        p: &Pipeline<T>,
        leg: &Leg<'_>,
        backend: &str,
        error: &ApiError,
        down: &mut D,
        rec: &Record,
    ) -> Result<(), Gone> {
        let fallback = leg.fallback.as_deref();
        let explain = self.explain(p, rec, leg.upstream, backend, fallback);
        let (head, body) = explain::error_answer(error, &explain, &[]);
        down.respond(head, body).await
    }
}

/// Counts an attempt past the first as a retry, and records its span when the request is traced.
fn attempted(rec: &mut Record, upstream: &Upstream, model: &str, a: call::Attempt<'_>) {
    if a.number > 1 {
        rec.retries += 1;
    }
    let (Some(trace), Some(span)) = (rec.trace.as_deref_mut(), a.span) else {
        return;
    };
    let provider = match upstream.config.kind {
        UpstreamKind::OpenAi => "openai",
        UpstreamKind::Ollama | UpstreamKind::Raw => "ollama",
    };
    let mut attributes = vec![
        ("gen_ai.operation.name", Value::from("chat")),
        ("gen_ai.provider.name", Value::from(provider)),
        ("gen_ai.request.model", Value::from(model)),
        ("switchyard.upstream", Value::from(upstream.name())),
        ("switchyard.backend", Value::from(a.backend)),
        ("switchyard.attempt", Value::from(u64::from(a.number))),
    ];
    let error = match a.outcome {
        Ok(status) => {
            attributes.push(("http.response.status_code", Value::from(u64::from(status))));
            (status >= 400).then(|| status.to_string())
        }
        Err(reason) => {
            attributes.push(("error.type", Value::from(reason)));
            Some(reason.to_owned())
        }
    };
    let open = Open::at(span, a.started);
    trace.close(
        open,
        format!("chat {model}"),
        Kind::Client,
        attributes,
        error,
    );
}
