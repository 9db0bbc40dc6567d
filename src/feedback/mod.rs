//! Labels from the applications: `POST /v1/feedback` attaches a score (a thumbs up or down) to a
//! chat request the gateway served, so the routing can be retrained on this team's own traffic.
//!
//! The gateway keeps a record of each chat request for `feedback.retention` (what was decided,
//! the features the decision read, never the text unless `feedback.store_text`), in memory and,
//! with shared state, in Redis, so that feedback reaching any replica finds it. Records are kept
//! by tenant and request id: a key may label only its own requests (another's, like an unknown
//! id, is a 404), and a client reusing another's request id cannot touch that one's record.
//! Feedback on a record is appended, with the record, to the `feedback.labels` file: one JSON
//! line per label, which `switchyard train` reads.

mod window;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{ApiError, ChatRequest};
use crate::config::FeedbackConfig;
use crate::metrics::Record;
use crate::state::Shared;
use window::Window;

/// A file of label lines, appended to one line at a time (feedback's and shadow judging's).
#[derive(Debug, Default)]
pub struct LabelFile(Mutex<()>);

impl LabelFile {
    /// Appends `line` to the file at `path`, creating it. The line goes out in one write, so
    /// that another process appending to the same file (a second replica) cannot cut into it.
    pub fn append(&self, path: &std::path::Path, line: &Value) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        let _one_at_a_time = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(&bytes)
    }
}

/// The requests that may still be labelled.
pub struct Records {
    /// The record of each request, by tenant and request id.
    kept: Window<Arc<Kept>>,
    config: FeedbackConfig,
    shared: Option<Arc<Shared>>,
    /// The labels file.
    file: LabelFile,
}

/// A client's feedback, as it is posted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    request_id: String,
    score: f64,
    #[serde(default)]
    comment: Option<String>,
}

/// The longest comment kept.
const COMMENT_BYTES: usize = 4096;

impl Records {
    /// An empty store for `config`, with the replicas' shared state when there is one.
    pub fn new(config: &FeedbackConfig, shared: Option<Arc<Shared>>) -> Records {
        Records {
            kept: Window::new(config.max_records, config.retention),
            config: config.clone(),
            shared,
            file: LabelFile::default(),
        }
    }

    /// Keeps a served chat request (`request` when its text is to be kept). Cheap: the label
    /// line is written only if feedback comes.
    pub fn keep(&self, request_id: &str, rec: &Record, request: Option<&ChatRequest>) {
        let Some(tenant) = rec.tenant.as_deref() else {
            return;
        };
        let kept = Kept::of(rec, request.filter(|_| self.config.store_text));
        let now = kept.time;
        let key = key(tenant, request_id);
        if let Some(shared) = &self.shared {
            let value = kept.fields(request_id).to_string();
            let (shared, key, ttl) = (Arc::clone(shared), key.clone(), self.config.retention);
            tokio::spawn(async move { shared.put_record(&key, value, ttl).await });
        }
        self.kept.insert(&key, Arc::new(kept), now);
    }

    /// Takes `body` as feedback from `tenant`: the label line written (and returned), or the
    /// client's error.
    pub async fn label(&self, tenant: &str, body: &[u8]) -> Result<Value, ApiError> {
        let posted: Posted = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_request(
                format!("The feedback is not valid: {e}. Send {{\"request_id\": \"…\", \"score\": 0 to 1, \"comment\": \"…\"}}."),
                None,
                Some("invalid_feedback"),
            )
        })?;
        if !(0.0..=1.0).contains(&posted.score) {
            return Err(ApiError::invalid_request(
                format!("score must be from 0 to 1, not {}.", posted.score),
                Some("score"),
                Some("invalid_value"),
            ));
        }
        let key = key(tenant, &posted.request_id);
        let kept = match self.kept.get(&key, crate::api::ids::unix_now()) {
            Some(kept) => Some(kept.fields(&posted.request_id)),
            None => match &self.shared {
                Some(shared) => shared
                    .record(&key)
                    .await
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok()),
                None => None,
            },
        };
        let kept = kept.ok_or_else(|| {
                ApiError::not_found(
                    format!(
                        "No request `{}` to label: unknown, older than the retention, or another key's.",
                        posted.request_id
                    ),
                    "request_not_found",
                )
            })?;
        let mut comment = posted.comment.unwrap_or_default();
        if comment.len() > COMMENT_BYTES {
            let mut end = COMMENT_BYTES;
            while !comment.is_char_boundary(end) {
                end -= 1;
            }
            comment.truncate(end);
        }
        let mut line = kept;
        line["feedback"] =
            json!({"score": posted.score, "comment": comment, "time": crate::api::ids::unix_now()});
        if let Some(path) = &self.config.labels {
            if let Err(e) = self.file.append(path, &line) {
                tracing::error!("feedback: cannot append to {}: {e}", path.display());
                return Err(ApiError::internal("the feedback could not be stored"));
            }
        }
        Ok(line)
    }
}

/// Where a tenant's request is kept: the tenant's id (a key's name, or a keyed fingerprint of
/// the client's token, never the token) and the request id.
fn key(tenant: &str, request_id: &str) -> String {
    format!("{tenant}:{request_id}")
}

/// What is kept of a served request until feedback may come: what was decided, on what
/// features, and the messages when they are kept.
#[derive(Debug, Clone)]
pub struct Kept {
    time: u64,
    tenant: String,
    route: &'static str,
    rule: Option<String>,
    score: Option<f64>,
    upstream: Option<String>,
    model: Option<String>,
    features: Option<crate::classify::Features>,
    messages: Option<Value>,
}

impl Kept {
    /// The record of `rec`, with the messages of `text` when given.
    pub fn of(rec: &Record, text: Option<&ChatRequest>) -> Kept {
        Kept {
            time: crate::api::ids::unix_now(),
            tenant: rec.tenant_label().to_owned(),
            route: rec.route_label(),
            rule: rec.rule.clone(),
            score: rec.score,
            upstream: rec.upstream.clone(),
            model: rec.model.clone(),
            features: rec.features.clone(),
            messages: text.map(ChatRequest::messages_json),
        }
    }

    /// Its label line's fields for `request_id` (without a verdict).
    pub fn fields(&self, request_id: &str) -> Value {
        let mut fields = json!({
            "id": request_id,
            "time": self.time,
            "tenant": self.tenant,
            "route": self.route,
            "rule": self.rule,
            "score": self.score,
            "upstream": self.upstream,
            "model": self.model,
            "features": self.features.as_ref().map(|f| f.to_json()).unwrap_or_default(),
        });
        if let Some(messages) = &self.messages {
            fields["messages"] = messages.clone();
        }
        fields
    }
}

/// A label line's fields for a served request: what was decided and on what features, and the
/// messages when `text` is given.
pub fn label_fields(request_id: &str, rec: &Record, text: Option<&ChatRequest>) -> Value {
    Kept::of(rec, text).fields(request_id)
}
