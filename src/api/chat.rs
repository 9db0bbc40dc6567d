//! The chat request, parsed once into a typed view that keeps the original bytes.
//!
//! The gateway reads what it needs to decide (model, stream, messages, a few parameters) and
//! forwards everything else untouched. Rewriting the model splices the new name into the original
//! bytes at the model value's offset instead of re-serializing the body: fields the gateway does
//! not know keep their exact spelling, and a large body is copied once instead of rebuilt.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ApiError;

/// The message roles OpenAI accepts.
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// One message, reduced to what classification and accounting read.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    pub role: String,
    /// The message's text.
    pub content: Content,
    /// How many tool calls an assistant message carries.
    pub tool_calls: usize,
}

/// A message's content: a string, or an array of parts of which only text is kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Content {
    /// No content (`null` or absent), as in an assistant message that only calls tools.
    #[default]
    None,
    /// Plain text.
    Text(String),
    /// Content parts: the text parts joined with newlines, and how many were images.
    Parts {
        /// The text parts, joined.
        text: String,
        /// The number of `image_url` parts.
        images: usize,
    },
}

impl Content {
    /// The text of the message, whatever its form.
    pub fn text(&self) -> &str {
        match self {
            Content::None => "",
            Content::Text(t) | Content::Parts { text: t, .. } => t,
        }
    }
}

/// A validated `POST /v1/chat/completions` request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    body: Bytes,
    /// Byte range of the model's JSON string (quotes included) in `body`.
    model_span: (usize, usize),
    /// Byte range of the `stream_options` value in `body`, when present.
    stream_options_span: Option<(usize, usize)>,
    /// The model the client asked for.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// The conversation.
    pub messages: Vec<Message>,
    /// `max_completion_tokens`, or the older `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `temperature`, when given.
    pub temperature: Option<f64>,
    /// How many tools are offered.
    pub tools: usize,
    /// Whether `tool_choice` was given.
    pub tool_choice: bool,
    /// `response_format.type`, when given (`text`, `json_object`, `json_schema`).
    pub response_format: Option<String>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<Vec<WireMessage<'a>>>,
    stream: Option<bool>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    tools: Option<Vec<IgnoredAny>>,
    tool_choice: Option<IgnoredAny>,
    #[serde(borrow)]
    response_format: Option<WireResponseFormat<'a>>,
}

#[derive(Deserialize)]
struct WireStreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    content: Option<Content>,
    tool_calls: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct WirePart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut text = String::new();
                let mut images = 0;
                while let Some(part) = seq.next_element::<WirePart<'de>>()? {
                    match (part.kind.as_ref(), part.text) {
                        ("text", Some(t)) => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(&t);
                        }
                        ("image_url", _) => images += 1,
                        _ => {}
                    }
                }
                Ok(Content::Parts { text, images })
            }
        }
        d.deserialize_any(V)
    }
}

impl ChatRequest {
    /// Parses and validates a request body, answering the 400 a client should see otherwise.
    pub fn parse(body: Bytes) -> Result<ChatRequest, ApiError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(if first.is_none() {
                ApiError::invalid_request(
                    "The request body is empty; a JSON object is expected",
                    None,
                    None,
                )
            } else {
                ApiError::invalid_request(
                    "The request body must be a JSON object",
                    None,
                    Some("invalid_type"),
                )
            });
        }
        let wire: Wire = serde_json::from_slice(&body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => ApiError::invalid_request(
                    format!("We could not parse the JSON body of your request: {e}"),
                    None,
                    Some("invalid_json"),
                ),
                Category::Data => ApiError::invalid_request(
                    format!("Invalid request body: {e}"),
                    None,
                    Some("invalid_type"),
                ),
            }
        })?;

        let raw_model = wire.model.ok_or_else(|| {
            ApiError::invalid_request(
                "Missing required parameter: 'model'.",
                Some("model"),
                Some("missing_required_parameter"),
            )
        })?;
        let model: Cow<str> = serde_json::from_str(raw_model.get()).map_err(|_| {
            ApiError::invalid_request(
                "Invalid type for 'model': expected a string.",
                Some("model"),
                Some("invalid_type"),
            )
        })?;
        if model.is_empty() {
            return Err(ApiError::invalid_request(
                "Invalid 'model': empty string.",
                Some("model"),
                Some("invalid_value"),
            ));
        }
        // Raw values borrow from `body`, so their addresses are offsets into it.
        let span = |raw: &RawValue| {
            let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            (start, start + raw.get().len())
        };
        let model_span = span(raw_model);
        let (stream_options_span, include_usage) = match wire.stream_options {
            None => (None, false),
            Some(raw) if raw.get() == "null" => (None, false),
            Some(raw) => {
                let options: WireStreamOptions = serde_json::from_str(raw.get()).map_err(|_| {
                    ApiError::invalid_request(
                        "Invalid type for 'stream_options': expected an object.",
                        Some("stream_options"),
                        Some("invalid_type"),
                    )
                })?;
                (Some(span(raw)), options.include_usage.unwrap_or(false))
            }
        };

        let wire_messages = wire.messages.ok_or_else(|| {
            ApiError::invalid_request(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            )
        })?;
        if wire_messages.is_empty() {
            return Err(ApiError::invalid_request(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                Some("messages"),
                Some("empty_array"),
            ));
        }
        let mut messages = Vec::with_capacity(wire_messages.len());
        for (i, m) in wire_messages.into_iter().enumerate() {
            let role = m.role.ok_or_else(|| {
                ApiError::invalid_request(
                    format!("Missing required parameter: 'messages[{i}].role'."),
                    Some(&format!("messages.[{i}].role")),
                    Some("missing_required_parameter"),
                )
            })?;
            if !ROLES.contains(&role.as_ref()) {
                return Err(ApiError::invalid_request(
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'."
                    ),
                    Some(&format!("messages.[{i}].role")),
                    Some("invalid_value"),
                ));
            }
            messages.push(Message {
                role: role.into_owned(),
                content: m.content.unwrap_or_default(),
                tool_calls: m.tool_calls.map_or(0, |t| t.len()),
            });
        }

        Ok(ChatRequest {
            model: model.into_owned(),
            model_span,
            stream_options_span,
            stream: wire.stream.unwrap_or(false),
            include_usage,
            messages,
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            temperature: wire.temperature,
            tools: wire.tools.map_or(0, |t| t.len()),
            tool_choice: wire.tool_choice.is_some(),
            response_format: wire.response_format.map(|f| f.kind.into_owned()),
            body,
        })
    }

    /// The body exactly as the client sent it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body with `model` replaced by `new_model`, every other byte unchanged.
    pub fn body_with_model(&self, new_model: &str) -> Bytes {
        self.upstream_body(new_model, false)
    }

    /// The body to send upstream: `model` replaced by `new_model` and, when `ask_usage` is set
    /// on a stream whose client did not ask for it, `stream_options.include_usage` turned on so
    /// that the gateway learns the token counts. Every other byte is unchanged.
    pub fn upstream_body(&self, new_model: &str, ask_usage: bool) -> Bytes {
        let add_usage = ask_usage && self.stream && !self.include_usage;
        if new_model == self.model && !add_usage {
            return self.body.clone();
        }
        let mut edits: Vec<((usize, usize), Vec<u8>)> = Vec::with_capacity(2);
        if new_model != self.model {
            // A &str always serializes to a JSON string.
            let quoted = serde_json::to_vec(new_model).unwrap_or_default();
            edits.push((self.model_span, quoted));
        }
        if add_usage {
            match self.stream_options_span {
                Some((start, end)) => {
                    // Keep the client's other stream options.
                    let mut options: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&self.body[start..end]).unwrap_or_default();
                    options.insert("include_usage".into(), serde_json::Value::Bool(true));
                    let text = serde_json::to_vec(&options).unwrap_or_default();
                    edits.push(((start, end), text));
                }
                None => {
                    // Right after the opening brace, which `parse` checked is there.
                    let brace = self.body.iter().position(|&b| b == b'{').unwrap_or(0) + 1;
                    let text = b"\"stream_options\":{\"include_usage\":true},".to_vec();
                    edits.push(((brace, brace), text));
                }
            }
        }
        edits.sort_by_key(|((start, _), _)| *start);
        let added: usize = edits.iter().map(|(_, t)| t.len()).sum();
        let mut out = BytesMut::with_capacity(self.body.len() + added);
        let mut at = 0;
        for ((start, end), text) in edits {
            out.extend_from_slice(&self.body[at..start]);
            out.extend_from_slice(&text);
            at = end;
        }
        out.extend_from_slice(&self.body[at..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(Bytes::from(text.to_owned()))
    }

    #[test]
    fn reads_the_fields_it_needs() {
        let r = parse(
            r#"{"model":"auto","stream":true,"stream_options":{"include_usage":true},
               "max_tokens":50,"temperature":0,"tools":[{"type":"function"},{"type":"function"}],
               "response_format":{"type":"json_schema","json_schema":{"name":"x"}},
               "messages":[{"role":"system","content":"Be brief."},
                           {"role":"user","content":[{"type":"text","text":"What is this?"},
                                                     {"type":"image_url","image_url":{"url":"data:,"}}]},
                           {"role":"assistant","content":null,"tool_calls":[{"id":"a"}]}],
               "unknown_field":{"kept":true}}"#,
        )
        .unwrap();
        assert_eq!(r.model, "auto");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.temperature, Some(0.0));
        assert_eq!(r.tools, 2);
        assert_eq!(r.response_format.as_deref(), Some("json_schema"));
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[0].content.text(), "Be brief.");
        assert_eq!(
            r.messages[1].content,
            Content::Parts {
                text: "What is this?".into(),
                images: 1
            }
        );
        assert_eq!(r.messages[2].tool_calls, 1);
        assert_eq!(r.messages[2].content, Content::None);
    }

    #[test]
    fn model_rewrite_changes_only_the_model_bytes() {
        let text = "{ \"temperature\" : 0.70,\n \"model\":\t\"gpt-4o\" , \"messages\":[{\"role\":\"user\",\"content\":\"model\"}], \"x\":1e3}";
        let r = parse(text).unwrap();
        let out = r.body_with_model("llama3.1:8b \"q4\"");
        let expected = text.replace("\"gpt-4o\"", "\"llama3.1:8b \\\"q4\\\"\"");
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        assert_eq!(r.body_with_model("gpt-4o"), *r.body());
    }

    #[test]
    fn usage_is_asked_for_without_touching_anything_else() {
        let text = r#"{"model":"auto","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let r = parse(text).unwrap();
        let out = r.upstream_body("small", true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "small");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "x");

        let text = r#"{"stream_options":{"include_usage":false,"other":1},"model":"auto","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let out = parse(text).unwrap().upstream_body("auto", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            text.replace(
                "\"include_usage\":false,\"other\":1",
                "\"include_usage\":true,\"other\":1"
            )
        );
        // Not a stream, or the client asked already: unchanged.
        for text in [
            r#"{"model":"auto","messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"auto","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        ] {
            assert_eq!(
                &parse(text).unwrap().upstream_body("auto", true)[..],
                text.as_bytes()
            );
        }
        assert_eq!(
            parse(r#"{"model":"m","stream_options":3,"messages":[{"role":"user","content":"x"}]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("stream_options")
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let r = parse(r#"{"model":"gpt\u002d4o","messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap();
        assert_eq!(r.model, "gpt-4o");
        assert_eq!(
            &r.body_with_model("x")[..],
            br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[test]
    fn bad_requests_get_the_openai_error_a_client_expects() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("", None, None),
            ("[1,2]", None, Some("invalid_type")),
            ("{\"model\":", None, Some("invalid_json")),
            (
                "{\"model\":\"m\",\"messages\":[]",
                None,
                Some("invalid_json"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                Some("missing_required_parameter"),
            ),
            (
                r#"{"model":3,"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                Some("invalid_type"),
            ),
            (
                r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                Some("invalid_value"),
            ),
            (
                r#"{"model":"m"}"#,
                Some("messages"),
                Some("missing_required_parameter"),
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                Some("messages"),
                Some("empty_array"),
            ),
            (r#"{"model":"m","messages":{}}"#, None, Some("invalid_type")),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                Some("messages.[0].role"),
                Some("missing_required_parameter"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                Some("messages.[0].role"),
                Some("invalid_value"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                None,
                Some("invalid_type"),
            ),
            (
                r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
                None,
                Some("invalid_type"),
            ),
            (
                r#"{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}"#,
                None,
                Some("invalid_type"),
            ),
        ];
        for (body, param, code) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.kind, "invalid_request_error", "{body}");
            assert_eq!(err.param.as_deref(), *param, "{body}: {}", err.message);
            assert_eq!(err.code, *code, "{body}: {}", err.message);
        }
    }

    #[test]
    fn nulls_mean_absent() {
        let r = parse(r#"{"model":"m","stream":null,"temperature":null,"messages":[{"role":"user","content":"x"}]}"#)
            .unwrap();
        assert!(!r.stream);
        assert_eq!(r.temperature, None);
    }
}
