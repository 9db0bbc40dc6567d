//! Relaying an upstream's answer as it arrives: translated from a local model server's dialect
//! when the upstream speaks one, read on the side for its usage and for the cache, and ended
//! cleanly or visibly broken when the upstream fails midway.

use bytes::{Bytes, BytesMut};

use super::downstream::{Downstream, Gone};
use super::explain::{self, Explain};
use super::job::{upstream_error_answer, Job, Leg};
use super::Pipeline;
use crate::api::ApiError;
use crate::cache::{Entry, Flight};
use crate::config::UpstreamKind;
use crate::metrics::{self, Record};
use crate::upstream::answer::{Answer, AnswerReader};
use crate::upstream::call::{read_error_body, Answered, Exchange, ExchangeError, Transport};
use crate::upstream::ollama;

/// How much of an answer is kept to read its usage when the cache keeps less (or is off).
const KEEP_FOR_USAGE: usize = 4 << 20;

/// How much of an answer is kept to read it: what the cache may store, and at least enough for
/// its usage.
fn keep_for<T>(p: &Pipeline<T>) -> usize {
    p.cache
        .as_ref()
        .map_or(KEEP_FOR_USAGE, |c| c.max_entry_bytes().max(KEEP_FOR_USAGE))
}

/// How the answer's bytes change on their way to the client.
enum Translate {
    /// An OpenAI-compatible answer, as it is.
    Pass,
    /// A local model server's NDJSON (or llama.cpp SSE) stream, to OpenAI SSE.
    Stream(ollama::StreamTranslator),
}

/// Relays an answer the client gets, whatever its status; records usage and stores it.
pub(super) async fn relay<T: Transport, D: Downstream>(
    p: &Pipeline<T>,
    job: &Job<'_>,
    leg: &Leg<'_>,
    answered: Answered<T::Exchange>,
    down: &mut D,
    rec: &mut Record,
    flight: &mut Option<Flight>,
) -> Result<(), Gone> {
    let Answered {
        mut exchange,
        lease,
    } = answered;
    let upstream = leg.upstream;
    rec.route = Some(job.served_route(p, upstream));
    rec.upstream = Some(upstream.name().to_owned());
    rec.model = Some(p.config.model_label(leg.step.model).to_owned());
    if let Some(trace) = rec.trace.as_deref_mut() {
        trace.set("gen_ai.response.model", leg.step.model);
        if let Some(label) = leg.fallback.as_deref().or(job.escalated) {
            trace.set("switchyard.fallback", label);
        }
    }
    let backend = lease.backend().label.as_str();
    let explain = job.explain(p, rec, upstream, backend, leg.fallback.as_deref());
    let status = exchange.head().status.as_u16();
    let native = upstream.config.kind != UpstreamKind::OpenAi;

    if status >= 400 {
        // An error is read whole (it is small), so that a key it quotes is masked however it
        // is spelled.
        let body = read_error_body(&mut exchange).await;
        let mut head = explain::empty_head(status);
        head.headers = exchange.head().headers.clone();
        exchange.finish().await;
        let (head, body) = match upstream_error_answer(upstream, status, &body) {
            Ok(clean) => {
                upstream.scrub.headers(&mut head.headers);
                head.headers.remove(http::header::TRANSFER_ENCODING);
                head.headers.insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(clean.len()),
                );
                explain::rewrite_upstream_head(&mut head, &explain);
                (head, clean)
            }
            Err(error) => explain::error_answer(&error, &explain, &[]),
        };
        return down.respond(head, body).await;
    }
    if native && !job.request.stream {
        return relay_whole(p, job, leg, exchange, &explain, down, rec, flight).await;
    }
    let keep = keep_for(p);
    let (head, mut translate) = if native {
        let t = ollama::StreamTranslator::new(leg.step.model);
        (explain::sse_head(status, &explain), Translate::Stream(t))
    } else {
        let mut head = explain::empty_head(status);
        head.headers = exchange.head().headers.clone();
        upstream.scrub.headers(&mut head.headers);
        explain::rewrite_upstream_head(&mut head, &explain);
        if !explain::is_event_stream(&head) {
            // A JSON answer is read whole before any of it goes out, so that an upstream dying
            // in its middle is a clean 502, never a body cut short after a 200.
            return relay_json(p, job, leg, exchange, head, &explain, down, rec, flight).await;
        }
        (head, Translate::Pass)
    };
    let request = job.request;
    let strip_usage = request.stream && !request.include_usage;
    let mut reader = match &translate {
        Translate::Stream(_) => AnswerReader::written(keep, strip_usage),
        Translate::Pass => AnswerReader::sse(keep, strip_usage),
    };
    // The answer itself is wanted to store it, judge it, or trace it; else its usage is enough.
    if job.store.is_none() && !rec.shadow_wanted && rec.trace.is_none() {
        reader = reader.tally_only();
    }
    down.head(head).await?;

    let mut scrub = upstream.scrub.stream();
    loop {
        let next = match exchange.next().await {
            Ok(Some(piece)) => Ok(Some(scrub.feed(piece))),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let (out, ended) = match next {
            Ok(Some(piece)) => match &mut translate {
                Translate::Pass => (reader.feed(piece), false),
                Translate::Stream(t) => {
                    t.feed(&piece, &mut reader);
                    (reader.take(), false)
                }
            },
            Ok(None) => match &mut translate {
                Translate::Pass => (reader.feed(scrub.finish()), true),
                Translate::Stream(t) => {
                    t.feed(&scrub.finish(), &mut reader);
                    t.finish(&mut reader);
                    (reader.take(), true)
                }
            },
            Err(e) => {
                p.upstream_failed(job, leg, &e, "mid-response");
                exchange.finish().await;
                return end_broken(down, e.to_api(upstream.name())).await;
            }
        };
        if !out.is_empty() {
            if rec.first_byte.is_none() {
                rec.first_byte = Some(job.incoming.started.elapsed());
            }
            if let Err(gone) = down.body(out).await {
                // The client went away: stop the upstream's work too.
                exchange.finish().await;
                return Err(gone);
            }
        }
        if let Translate::Stream(t) = &translate {
            if t.failed() {
                // An error event went out instead of [DONE]: end here and close.
                exchange.finish().await;
                down.close_after();
                return down.finish(None).await;
            }
        }
        if !ended {
            continue;
        }
        exchange.finish().await;
        if let Translate::Stream(t) = &translate {
            if !t.is_done() {
                let error = ApiError::upstream_broken(upstream.name(), "the stream ended early");
                return end_broken(down, error).await;
            }
        }
        if let Some(rest) = reader.rest() {
            down.body(rest).await?;
        }
        if status == 200 {
            finish_answer(p, job, leg, rec, reader.finish(), flight);
        }
        return down.finish(None).await;
    }
}

/// A non-streaming answer of a local model server: read whole, translated, sent with its length.
#[allow(clippy::too_many_arguments)]
async fn relay_whole<T: Transport, D: Downstream>(
    p: &Pipeline<T>,
    job: &Job<'_>,
    leg: &Leg<'_>,
    exchange: T::Exchange,
    explain: &Explain<'_>,
    down: &mut D,
    rec: &mut Record,
    flight: &mut Option<Flight>,
) -> Result<(), Gone> {
    let upstream = leg.upstream;
    let body = match read_whole(p, job, leg, exchange).await {
        Ok(body) => body,
        Err(error) => {
            let (head, body) = explain::error_answer(&error, explain, &[]);
            return down.respond(head, body).await;
        }
    };
    let completion = match ollama::completion(&body, upstream.name()) {
        Ok(completion) => completion,
        Err(e) => {
            let (head, body) = explain::error_answer(&e, explain, &[]);
            return down.respond(head, body).await;
        }
    };
    let json = Bytes::from(completion.to_json());
    let answer = Answer {
        usage: completion.usage,
        output_bytes: completion.output_chars(),
        json: Some(json.clone()),
        completion: Some(completion),
    };
    finish_answer(p, job, leg, rec, answer, flight);
    rec.first_byte = Some(job.incoming.started.elapsed());
    let explain = Explain {
        cost: Some(rec.cost),
        ..*explain
    };
    down.respond(explain::json_head(200, json.len(), &explain), json)
        .await
}

/// An OpenAI-compatible JSON answer: read whole, masked, read for its usage, then sent with
/// its length.
#[allow(clippy::too_many_arguments)]
async fn relay_json<T: Transport, D: Downstream>(
    p: &Pipeline<T>,
    job: &Job<'_>,
    leg: &Leg<'_>,
    exchange: T::Exchange,
    mut head: super::Head,
    explain: &Explain<'_>,
    down: &mut D,
    rec: &mut Record,
    flight: &mut Option<Flight>,
) -> Result<(), Gone> {
    let body = match read_whole(p, job, leg, exchange).await {
        Ok(body) => leg.upstream.scrub.all(&body),
        Err(error) => {
            let (head, body) = explain::error_answer(&error, explain, &[]);
            return down.respond(head, body).await;
        }
    };
    let keep = keep_for(p);
    let mut reader = AnswerReader::json(keep);
    let body = reader.feed(body);
    if head.status == http::StatusCode::OK {
        finish_answer(p, job, leg, rec, reader.finish(), flight);
        explain::cost_header(&mut head.headers, rec.cost);
    }
    rec.first_byte = Some(job.incoming.started.elapsed());
    head.headers.remove(http::header::TRANSFER_ENCODING);
    head.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    down.respond(head, body).await
}

/// Reads a whole answer body, up to `limits.max_answer_bytes`; the error the client gets when
/// the upstream fails in the middle or sends more.
async fn read_whole<T: Transport>(
    p: &Pipeline<T>,
    job: &Job<'_>,
    leg: &Leg<'_>,
    mut exchange: T::Exchange,
) -> Result<Bytes, ApiError> {
    let upstream = leg.upstream;
    let limit = p.config.limits.max_answer_bytes;
    let mut body = BytesMut::new();
    let mut first: Option<Bytes> = None;
    let result = loop {
        match exchange.next().await {
            Ok(Some(chunk)) => {
                let held = body.len() + first.as_ref().map_or(0, Bytes::len);
                if (held + chunk.len()) as u64 > limit {
                    break Err(ApiError::answer_too_large(upstream.name(), limit));
                }
                // An answer that arrives in one chunk is kept as it is, without a copy.
                match first.take() {
                    None if body.is_empty() => first = Some(chunk),
                    Some(f) => {
                        body.extend_from_slice(&f);
                        body.extend_from_slice(&chunk);
                    }
                    None => body.extend_from_slice(&chunk),
                }
            }
            Ok(None) => break Ok(first.unwrap_or_else(|| body.freeze())),
            Err(e) => {
                p.upstream_failed(job, leg, &e, "mid-response");
                break Err(e.to_api(upstream.name()));
            }
        }
    };
    exchange.finish().await;
    result
}

/// Accounts a complete successful answer and stores it under the request's key, naming the
/// upstream that gave it (a fallback's answer too: repeats then skip the failing first upstream
/// as well as the paid one).
fn finish_answer<T>(
    p: &Pipeline<T>,
    job: &Job<'_>,
    leg: &Leg<'_>,
    rec: &mut Record,
    answer: Answer,
    flight: &mut Option<Flight>,
) {
    metrics::account(
        &p.config,
        rec,
        job.request,
        (leg.step.upstream, leg.step.model),
        (answer.usage, answer.output_bytes),
        false,
    );
    if let (Some(trace), Some(completion)) = (rec.trace.as_deref_mut(), &answer.completion) {
        super::traced::answered(trace, completion);
    }
    if rec.shadow_wanted {
        rec.shadow_answer = answer
            .completion
            .as_ref()
            .and_then(|c| c.choices.first())
            .and_then(|c| c.content.clone());
    }
    let Some((cache, key)) = job.store else {
        return;
    };
    if let Some(completion) = answer.completion {
        let entry = Entry::new(completion, answer.json, leg.served());
        cache.store(key, entry, flight.take());
    }
}

/// Ends a stream whose upstream failed midway: an error event the SDKs raise, a clean end, and
/// the connection closed after it.
async fn end_broken<D: Downstream>(down: &mut D, error: ApiError) -> Result<(), Gone> {
    down.close_after();
    down.body(Bytes::from(error.to_sse_event())).await?;
    down.finish(None).await
}

impl<T> Pipeline<T> {
    /// Logs an upstream failure and counts it.
    fn upstream_failed(&self, job: &Job<'_>, leg: &Leg<'_>, e: &ExchangeError, when: &str) {
        tracing::warn!(
            "request {}: upstream {} failed {when}: {e:?}",
            job.incoming.request_id,
            leg.upstream.name()
        );
        self.upstream_metrics
            .failure(leg.upstream.name(), e.reason());
    }
}
