//! What a team's own intent classifier says about a request, and the words exchanged with it.
//!
//! The classifier is a service on the team's network (`routing.classifier`): it gets the last user
//! message as `{"text": "…"}` and answers `{"intent": "billing", "score": 0.93}`. Rules match the
//! answer with `{feature: intent, in: [...]}` and `{feature: intent_score, ge: …}`. Calling it is
//! the pipeline's business; this module only knows the words.

use crate::api::{ChatRequest, Role};

/// An intent, as the classifier named it, with its confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// The label (`billing`, `faq`, …).
    pub name: String,
    /// Its confidence from 0 to 1; NaN when the classifier gave none (no score condition holds).
    pub score: f64,
}

/// Longest intent label kept; a longer one is a broken classifier, not a label.
const MAX_NAME: usize = 200;

impl Intent {
    /// Reads a classifier's answer: an object with a string `intent` and an optional number
    /// `score` from 0 to 1.
    pub fn parse(body: &[u8]) -> Result<Intent, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let name = value
            .get("intent")
            .and_then(|i| i.as_str())
            .ok_or("no string `intent` in the answer")?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!(
                "`intent` must be 1 to {MAX_NAME} bytes, not {}",
                name.len()
            ));
        }
        let score = match value.get("score") {
            None | Some(serde_json::Value::Null) => f64::NAN,
            Some(s) => match s.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => x,
                _ => return Err(format!("`score` must be a number from 0 to 1, not {s}")),
            },
        };
        Ok(Intent {
            name: name.to_owned(),
            score,
        })
    }
}

/// The text the classifier is asked about: the last user message, `None` when there is none
/// (or it is empty).
pub fn question(req: &ChatRequest) -> Option<&str> {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.text())
        .filter(|t| !t.trim().is_empty())
}

/// The body sent to the classifier for `text`.
pub fn ask_body(text: &str) -> Vec<u8> {
    serde_json::json!({ "text": text }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn answers_are_read_strictly() {
        let i = Intent::parse(br#"{"intent": "billing", "score": 0.93, "extra": 1}"#).unwrap();
        assert_eq!(i.name, "billing");
        assert_eq!(i.score, 0.93);
        let no_score = Intent::parse(br#"{"intent": "faq"}"#).unwrap();
        assert!(no_score.score.is_nan());
        for bad in [
            &br#"{"score": 0.5}"#[..],
            br#"{"intent": 3}"#,
            br#"{"intent": ""}"#,
            br#"{"intent": "x", "score": 1.5}"#,
            br#"{"intent": "x", "score": "high"}"#,
            b"<html>",
        ] {
            assert!(
                Intent::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_question_is_the_last_user_message() {
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "refund my \"order\""}]},
        ]});
        let req = ChatRequest::parse(Bytes::from(body.to_string())).unwrap();
        assert_eq!(question(&req), Some("refund my \"order\""));
        let sent: serde_json::Value = serde_json::from_slice(&ask_body("a \"b\"\n")).unwrap();
        assert_eq!(sent["text"], "a \"b\"\n");
        let none =
            serde_json::json!({"model": "m", "messages": [{"role": "system", "content": "s"}]});
        let req = ChatRequest::parse(Bytes::from(none.to_string())).unwrap();
        assert_eq!(question(&req), None);
    }
}
