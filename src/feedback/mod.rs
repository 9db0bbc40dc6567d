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

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{ApiError, ChatRequest};
use crate::config::FeedbackConfig;
use crate::metrics::Record;
use crate::state::Shared;

/// The requests that may still be labelled.
pub struct Records {
    /// The record of each request (a label line's fields), by tenant and request id.
    kept: moka::sync::Cache<String, Arc<Value>>,
    config: FeedbackConfig,
    shared: Option<Arc<Shared>>,
    /// Appends to the labels file one line at a time.
    file: Mutex<()>,
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
            kept: moka::sync::Cache::builder()
                .max_capacity(config.max_records)
                .time_to_live(config.retention)
                .build(),
            config: config.clone(),
            shared,
            file: Mutex::new(()),
        }
    }

    /// Keeps a served chat request (`request` when its text is to be kept).
    pub fn keep(&self, request_id: &str, rec: &Record, request: Option<&ChatRequest>) {
        let Some(tenant) = rec.tenant.clone() else {
            return;
        };
        let text = request.filter(|_| self.config.store_text);
        let fields = label_fields(request_id, rec, text);
        let key = key(&tenant, request_id);
        if let Some(shared) = &self.shared {
            let (shared, key, value) = (Arc::clone(shared), key.clone(), fields.to_string());
            let ttl = self.config.retention;
            tokio::spawn(async move { shared.put_record(&key, value, ttl).await });
        }
        self.kept.insert(key, Arc::new(fields));
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
        let kept = match self.kept.get(&key) {
            Some(kept) => Some(kept),
            None => match &self.shared {
                Some(shared) => shared
                    .record(&key)
                    .await
                    .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                    .map(Arc::new),
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
        let mut line = (*kept).clone();
        line["feedback"] =
            json!({"score": posted.score, "comment": comment, "time": crate::api::ids::unix_now()});
        if let Some(path) = &self.config.labels {
            let _one_at_a_time = self.file.lock().unwrap_or_else(|e| e.into_inner());
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                tracing::error!("feedback: cannot append to {}: {e}", path.display());
                return Err(ApiError::internal("the feedback could not be stored"));
            }
        }
        Ok(line)
    }
}

/// Where a tenant's request is kept: the tenant's id hashed (ids hold key fingerprints) and the
/// request id.
fn key(tenant: &str, request_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(tenant.as_bytes());
    let mut hex = String::with_capacity(32 + 1 + request_id.len());
    for b in &digest[..16] {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.push(':');
    hex.push_str(request_id);
    hex
}

/// A label line's fields for a served request: what was decided and on what features, and the
/// messages when `text` is given.
pub fn label_fields(request_id: &str, rec: &Record, text: Option<&ChatRequest>) -> Value {
    let mut fields = json!({
        "id": request_id,
        "time": crate::api::ids::unix_now(),
        "tenant": rec.tenant_label(),
        "route": rec.route_label(),
        "rule": rec.rule,
        "score": rec.score,
        "upstream": rec.upstream,
        "model": rec.model,
        "features": rec.features.as_ref().map(|f| f.to_json()).unwrap_or_default(),
    });
    if let Some(request) = text {
        fields["messages"] = request.messages_json();
    }
    fields
}
