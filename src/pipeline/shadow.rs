//! Shadow judging: a sample of the answers one side gave is also asked of the other side, after
//! the client has its answer, and a judge model compares the two. Each verdict is a label for
//! retraining the routing on this team's prompts and models.
//!
//! The judge reads the request and the two answers in a random order (to spread its position
//! bias) and answers with [`JUDGE_INSTRUCTIONS`]' JSON. A label says whether the local answer
//! was as good as the cloud's (`weak_ok`), which `switchyard train` reads. Shadowing spends the
//! gateway's own `daily_budget_usd`, never a tenant's; it skips requests a keep-local rule holds,
//! keys that may not use the other side, and cache hits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::{Counter, IntCounterVec, Opts, Registry};
use serde_json::{json, Value};

use super::Pipeline;
use crate::api::ids::{random_u64, unix_now};
use crate::api::{ChatRequest, Completion, Message, Role};
use crate::config::{KeyConfig, ShadowConfig};
use crate::metrics::Record;
use crate::route::Decision;
use crate::upstream::call::Transport;
use crate::vocab::{CacheOutcome, Route};

/// What the judge is told. Its answer is JSON: which answer serves the user better, and whether
/// each is acceptable on its own.
pub const JUDGE_INSTRUCTIONS: &str = "You are grading two answers to the same request. \
Decide which answer serves the user better: correct, complete, and following the request's \
instructions; length and style matter only as far as the user asked for them. Reply with JSON \
only, exactly: {\"better\": \"A\" or \"B\" or \"tie\", \"a_acceptable\": true or false, \
\"b_acceptable\": true or false}.";

/// The most of the request's text the judge reads.
const REQUEST_CHARS: usize = 16_000;

/// A served answer to shadow, once the client has it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The request, asking for one whole answer.
    request: ChatRequest,
    /// The side that answered, and its answer.
    served: (Route, String, String, String),
    /// The other side: its upstream and model.
    other: (usize, String),
    /// The label's fields known when the request was served.
    fields: Value,
}

/// Shadowing's running state: the minute's count, the day's spend, and its metrics.
pub struct Shadow {
    minute: AtomicU64,
    day: Mutex<(u64, f64)>,
    results: IntCounterVec,
    spent: Counter,
    file: crate::feedback::LabelFile,
}

impl Shadow {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> Result<Shadow, prometheus::Error> {
        let results = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_total",
                "Shadowed requests, by result (judged, failed, skipped_rate, skipped_budget)",
            ),
            &["result"],
        )?;
        let spent = Counter::new(
            "switchyard_shadow_cost_usd_total",
            "What shadow answers and their judging cost, in US dollars",
        )?;
        registry.register(Box::new(results.clone()))?;
        registry.register(Box::new(spent.clone()))?;
        Ok(Shadow {
            minute: AtomicU64::new(0),
            day: Mutex::new((0, 0.0)),
            results,
            spent,
            file: crate::feedback::LabelFile::default(),
        })
    }

    /// Takes a place in this minute's allowance; the minute and its count share one word.
    fn admit_rate(&self, per_minute: u32) -> bool {
        let now = unix_now() / 60;
        let mut current = self.minute.load(Ordering::Relaxed);
        loop {
            let (minute, count) = (current >> 20, current & 0xF_FFFF);
            let count = if minute == now { count } else { 0 };
            if count >= u64::from(per_minute) {
                return false;
            }
            let next = (now << 20) | (count + 1);
            match self
                .minute
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether today's budget has room left.
    fn within_budget(&self, budget: f64) -> bool {
        let today = unix_now() / 86_400;
        let day = self.day.lock().unwrap_or_else(|e| e.into_inner());
        day.0 != today || day.1 < budget
    }

    fn spend(&self, usd: f64) {
        let today = unix_now() / 86_400;
        let mut day = self.day.lock().unwrap_or_else(|e| e.into_inner());
        if day.0 != today {
            *day = (today, 0.0);
        }
        day.1 += usd;
        self.spent.inc_by(usd.max(0.0));
    }

    fn count(&self, result: &str) {
        self.results.with_label_values(&[result]).inc();
    }
}

fn sampled(share: f64) -> bool {
    share > 0.0 && (random_u64(0x5348_4144) as f64) < share * (u64::MAX as f64)
}

impl<T: Transport> Pipeline<T> {
    /// Whether this request's answer is to be shadowed: decided before it is served, so that
    /// the answer is kept as it passes.
    pub(super) fn shadow_wanted(&self, decision: &Decision<'_>, key: Option<&KeyConfig>) -> bool {
        let Some(config) = self.shadow_config() else {
            return false;
        };
        let other = match decision.route {
            Route::Local => Route::Cloud,
            Route::Cloud => Route::Local,
            Route::Hybrid => return false,
        };
        let share = if decision.route == Route::Local {
            config.sample
        } else {
            config.reverse_sample
        };
        !decision.pinned && key.is_none_or(|k| k.allows_route(other)) && sampled(share)
    }

    fn shadow_config(&self) -> Option<&ShadowConfig> {
        self.config.routing.as_ref()?.shadow.as_ref()
    }

    /// The shadow job for a served request, when it was sampled and its answer kept.
    pub(super) fn shadow_job(
        &self,
        request_id: &str,
        request: &ChatRequest,
        rec: &mut Record,
    ) -> Option<Job> {
        let answer = rec.shadow_answer.take()?;
        let config = self.shadow_config()?;
        let routing = self.config.routing.as_ref()?;
        if rec.cache == Some(CacheOutcome::Hit) {
            return None;
        }
        let served = rec.route?;
        let other = match served {
            Route::Local => routing.target(Route::Cloud),
            Route::Cloud => routing.target(Route::Local),
            Route::Hybrid => return None,
        };
        let model = other.model.clone().unwrap_or_else(|| request.model.clone());
        let text = Some(request).filter(|_| config.store_text);
        let mut fields = crate::feedback::label_fields(request_id, rec, text);
        fields["source"] = json!("shadow");
        fields["route"] = json!(served.as_str());
        Some(Job {
            request: request.without_stream(),
            served: (
                served,
                answer,
                rec.upstream.clone().unwrap_or_default(),
                rec.model.clone().unwrap_or_default(),
            ),
            other: (other.upstream, model),
            fields,
        })
    }

    /// Asks the other side and the judge, within the rate and the budget, and appends the
    /// label. Runs after the client has its answer.
    pub async fn shadow(&self, job: Job) {
        let Some(config) = self.shadow_config() else {
            return;
        };
        let shadow = &self.shadow;
        if !shadow.admit_rate(config.max_per_minute) {
            return shadow.count("skipped_rate");
        }
        if !shadow.within_budget(config.daily_budget_usd) {
            return shadow.count("skipped_budget");
        }
        let id = job.fields["id"].as_str().unwrap_or("").to_owned();
        let (other_upstream, other_model) = &job.other;
        let mut asked = job.request.with_messages(job.request.messages.clone());
        asked.model = other_model.clone();
        asked.write_body();
        let other = match self.complete(&id, &asked, *other_upstream).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("shadow of {id}: the other side failed: {e}");
                return shadow.count("failed");
            }
        };
        let mut cost = self.priced(*other_upstream, other_model, &other);
        let (served_route, served_text, served_upstream, served_model) = &job.served;
        let other_text = text_of(&other);
        let (local_text, cloud_text) = match served_route {
            Route::Local => (served_text.as_str(), other_text.as_str()),
            _ => (other_text.as_str(), served_text.as_str()),
        };
        // The local answer is A or B by a coin flip.
        let local_first = random_u64(0x4a55_4447) & 1 == 0;
        let (a, b) = if local_first {
            (local_text, cloud_text)
        } else {
            (cloud_text, local_text)
        };
        let judge = &config.judge;
        let judge_model = judge.model.clone().unwrap_or_default();
        let mut question = ChatRequest::new(
            &judge_model,
            vec![
                Message::text(Role::System, JUDGE_INSTRUCTIONS),
                Message::text(Role::User, judge_prompt(&job.request, a, b)),
            ],
        );
        question.temperature = Some(0.0);
        question.response_format = Some(json!({"type": "json_object"}));
        question.write_body();
        let verdict = match self.complete(&id, &question, judge.upstream).await {
            Ok(c) => {
                cost += self.priced(judge.upstream, &judge_model, &c);
                serde_json::from_str::<Value>(&text_of(&c)).ok()
            }
            Err(e) => {
                tracing::warn!("shadow of {id}: the judge failed: {e}");
                None
            }
        };
        shadow.spend(cost);
        let Some(verdict) = verdict.filter(|v| v["better"].is_string()) else {
            return shadow.count("failed");
        };
        let (local_letter, cloud_letter) = if local_first { ("a", "b") } else { ("b", "a") };
        let better = verdict["better"]
            .as_str()
            .unwrap_or("")
            .to_ascii_lowercase();
        let local_acceptable = verdict[format!("{local_letter}_acceptable")].as_bool();
        let cloud_acceptable = verdict[format!("{cloud_letter}_acceptable")].as_bool();
        let better_side = match better.as_str() {
            b if b == local_letter => "local",
            b if b == cloud_letter => "cloud",
            _ => "tie",
        };
        let mut line = job.fields;
        line["time"] = json!(unix_now());
        line["served"] = json!({"upstream": served_upstream, "model": served_model});
        line["shadow"] =
            json!({"upstream": self.upstreams[*other_upstream].name(), "model": other_model});
        line["judge"] = json!({
            "model": judge_model,
            "better": better_side,
            "local_acceptable": local_acceptable,
            "cloud_acceptable": cloud_acceptable,
            "local_first": local_first,
        });
        // The local model was enough when the judge did not prefer the cloud's answer.
        line["weak_ok"] = json!(better_side != "cloud");
        line["cost_usd"] = json!(cost);
        shadow.count("judged");
        if let Some(path) = &config.labels {
            if let Err(e) = shadow.file.append(path, &line) {
                tracing::error!("shadow: cannot append to {}: {e}", path.display());
            }
        }
    }

    fn priced(&self, upstream: usize, model: &str, c: &Completion) -> f64 {
        let usage = c.usage.unwrap_or_default();
        self.config
            .price(upstream, model)
            .cost(usage.prompt_tokens, usage.completion_tokens)
    }
}

fn text_of(c: &Completion) -> String {
    c.choices
        .first()
        .and_then(|c| c.content.clone())
        .unwrap_or_default()
}

/// The judge's question: the conversation (its end, when long) and the two answers.
fn judge_prompt(request: &ChatRequest, a: &str, b: &str) -> String {
    let mut conversation = String::new();
    for m in &request.messages {
        conversation.push_str(m.role.as_str());
        conversation.push_str(": ");
        conversation.push_str(m.content.text());
        conversation.push('\n');
    }
    if conversation.len() > REQUEST_CHARS {
        let mut start = conversation.len() - REQUEST_CHARS;
        while !conversation.is_char_boundary(start) {
            start += 1;
        }
        conversation = conversation[start..].to_owned();
    }
    format!("Request:\n{conversation}\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n")
}
