//! The chat request, parsed once into a typed view that keeps the original bytes.
//!
//! Everything any part of the gateway reads comes from this one parse: classification and
//! accounting read the messages, the translations to Ollama's and llama.cpp's APIs read the
//! messages and the sampling parameters, the cache key hashes the whole view. Fields the gateway
//! has no use for are kept as JSON values in `extra`, so that the view is the whole request.
//!
//! An OpenAI-compatible upstream gets the client's own bytes: rewriting the model splices the
//! new name into the body at the model value's offset instead of re-serializing it, so fields
//! keep their exact spelling and a large body is copied once instead of rebuilt.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{ApiError, ToolCall};

/// Who speaks in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `system`.
    System,
    /// `developer`, the newer name of `system` for reasoning models.
    Developer,
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
    /// `tool`: a tool's answer to a call.
    Tool,
    /// `function`: the older form of `tool`.
    Function,
}

impl Role {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => return None,
        })
    }

    /// Whether the message instructs the model (`system` or `developer`).
    pub fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: Content,
    /// The tool calls of an assistant message, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
    /// The speaker's (or function's) name, when given.
    pub name: Option<String>,
    /// Other fields, kept as they came.
    pub extra: Map<String, Value>,
}

/// A message's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Content {
    /// No content (`null` or absent), as in an assistant message that only calls tools.
    #[default]
    None,
    /// Plain text.
    Text(String),
    /// Content parts, with their text parts joined by newlines for those who only read text.
    Parts {
        /// The text parts, joined.
        text: String,
        /// The parts, in order.
        parts: Vec<Part>,
    },
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// `{"type":"text","text":…}`.
    Text(String),
    /// `{"type":"image_url","image_url":{"url":…,"detail":…}}`.
    Image {
        /// An `https:` or `data:` URL.
        url: String,
        /// `auto`, `low` or `high`, when given.
        detail: Option<String>,
    },
    /// Any other part (audio, files), kept as it came.
    Other(Value),
}

impl Message {
    /// A plain text message.
    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message {
            role,
            content: Content::Text(text.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
            extra: Map::new(),
        }
    }
}

impl Content {
    /// The text of the message, whatever its form.
    pub fn text(&self) -> &str {
        match self {
            Content::None => "",
            Content::Text(t) | Content::Parts { text: t, .. } => t,
        }
    }

    /// How many images the message carries.
    pub fn images(&self) -> usize {
        match self {
            Content::Parts { parts, .. } => parts
                .iter()
                .filter(|p| matches!(p, Part::Image { .. }))
                .count(),
            _ => 0,
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
    /// Which name `max_tokens` came under (`max_tokens` or `max_completion_tokens`), for a
    /// body written again.
    max_tokens_name: &'static str,
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
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `n`: how many choices.
    pub n: Option<u64>,
    /// `stop`: the sequences that end the answer (a single string becomes one).
    pub stop: Vec<String>,
    /// `response_format`, as it came.
    pub response_format: Option<Value>,
    /// The tools offered, as they came.
    pub tools: Vec<Value>,
    /// `tool_choice`, as it came.
    pub tool_choice: Option<Value>,
    /// Every other field, kept as it came.
    pub extra: Map<String, Value>,
}

/// The top-level fields the view types; any other goes to `extra`.
struct Wire<'a> {
    model: Option<&'a RawValue>,
    messages: Option<Vec<WireMessage<'a>>>,
    stream: Option<bool>,
    stream_options: Option<&'a RawValue>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    n: Option<u64>,
    stop: Option<Stop>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    extra: Map<String, Value>,
}

/// `stop`: a string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct WireStreamOptions {
    include_usage: Option<bool>,
}

struct WireMessage<'a> {
    role: Option<Cow<'a, str>>,
    content: Option<Content>,
    tool_calls: Option<Vec<WireToolCall>>,
    tool_call_id: Option<String>,
    name: Option<String>,
    extra: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    /// A JSON text as OpenAI sends it; anything else is kept as its JSON text.
    arguments: Option<Value>,
}

impl WireToolCall {
    fn into_call(self) -> ToolCall {
        let (name, arguments) = match self.function {
            Some(f) => (
                f.name.unwrap_or_default(),
                match f.arguments {
                    Some(Value::String(s)) => s,
                    None | Some(Value::Null) => String::new(),
                    Some(other) => other.to_string(),
                },
            ),
            None => (String::new(), String::new()),
        };
        ToolCall {
            id: self.id.unwrap_or_default(),
            name,
            arguments,
        }
    }
}

/// Takes one field's value, refusing a field given twice.
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = map.next_value()?;
    Ok(())
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Wire<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a chat completion request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
                let mut w = Wire {
                    model: None,
                    messages: None,
                    stream: None,
                    stream_options: None,
                    max_tokens: None,
                    max_completion_tokens: None,
                    temperature: None,
                    top_p: None,
                    seed: None,
                    frequency_penalty: None,
                    presence_penalty: None,
                    n: None,
                    stop: None,
                    response_format: None,
                    tools: None,
                    tool_choice: None,
                    extra: Map::new(),
                };
                // Known fields given twice are refused; `null` means absent.
                let mut seen_model = false;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "model" => {
                            if seen_model {
                                return Err(de::Error::duplicate_field("model"));
                            }
                            seen_model = true;
                            w.model = Some(map.next_value()?);
                        }
                        "messages" => once(&mut w.messages, &mut map, "messages")?,
                        "stream" => once(&mut w.stream, &mut map, "stream")?,
                        "stream_options" => {
                            once(&mut w.stream_options, &mut map, "stream_options")?
                        }
                        "max_tokens" => once(&mut w.max_tokens, &mut map, "max_tokens")?,
                        "max_completion_tokens" => once(
                            &mut w.max_completion_tokens,
                            &mut map,
                            "max_completion_tokens",
                        )?,
                        "temperature" => once(&mut w.temperature, &mut map, "temperature")?,
                        "top_p" => once(&mut w.top_p, &mut map, "top_p")?,
                        "seed" => once(&mut w.seed, &mut map, "seed")?,
                        "frequency_penalty" => {
                            once(&mut w.frequency_penalty, &mut map, "frequency_penalty")?
                        }
                        "presence_penalty" => {
                            once(&mut w.presence_penalty, &mut map, "presence_penalty")?
                        }
                        "n" => once(&mut w.n, &mut map, "n")?,
                        "stop" => once(&mut w.stop, &mut map, "stop")?,
                        "response_format" => {
                            once(&mut w.response_format, &mut map, "response_format")?
                        }
                        "tools" => once(&mut w.tools, &mut map, "tools")?,
                        "tool_choice" => once(&mut w.tool_choice, &mut map, "tool_choice")?,
                        _ => {
                            let value: Value = map.next_value()?;
                            w.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for WireMessage<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireMessage<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireMessage<'de>, A::Error> {
                let mut m = WireMessage {
                    role: None,
                    content: None,
                    tool_calls: None,
                    tool_call_id: None,
                    name: None,
                    extra: Map::new(),
                };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "role" => once(&mut m.role, &mut map, "role")?,
                        "content" => once(&mut m.content, &mut map, "content")?,
                        "tool_calls" => once(&mut m.tool_calls, &mut map, "tool_calls")?,
                        "tool_call_id" => once(&mut m.tool_call_id, &mut map, "tool_call_id")?,
                        "name" => once(&mut m.name, &mut map, "name")?,
                        _ => {
                            let value: Value = map.next_value()?;
                            m.extra.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
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
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Value>()? {
                    let part = Part::from_value(part);
                    if let Part::Text(t) = &part {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    parts.push(part);
                }
                Ok(Content::Parts { text, parts })
            }
        }
        d.deserialize_any(V)
    }
}

impl Part {
    /// Reads a part; one the gateway does not know, or a malformed one, is kept as it came.
    fn from_value(value: Value) -> Part {
        let Value::Object(mut map) = value else {
            return Part::Other(value);
        };
        match map.get("type").and_then(Value::as_str) {
            Some("text") if map.get("text").is_some_and(Value::is_string) => {
                match map.remove("text") {
                    Some(Value::String(t)) => Part::Text(t),
                    _ => Part::Other(Value::Object(map)),
                }
            }
            Some("image_url") if map["image_url"]["url"].is_string() => {
                let image = &mut map["image_url"];
                let detail = image["detail"].as_str().map(str::to_owned);
                match image["url"].take() {
                    Value::String(url) => Part::Image { url, detail },
                    _ => Part::Other(Value::Object(map)),
                }
            }
            _ => Part::Other(Value::Object(map)),
        }
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
            let name = m.role.ok_or_else(|| {
                ApiError::invalid_request(
                    format!("Missing required parameter: 'messages[{i}].role'."),
                    Some(&format!("messages.[{i}].role")),
                    Some("missing_required_parameter"),
                )
            })?;
            let role = Role::parse(&name).ok_or_else(|| {
                ApiError::invalid_request(
                    format!(
                        "Invalid value: '{name}'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'."
                    ),
                    Some(&format!("messages.[{i}].role")),
                    Some("invalid_value"),
                )
            })?;
            messages.push(Message {
                role,
                content: m.content.unwrap_or_default(),
                tool_calls: m
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(WireToolCall::into_call)
                    .collect(),
                tool_call_id: m.tool_call_id,
                name: m.name,
                extra: m.extra,
            });
        }
        if let Some(format) = &wire.response_format {
            if !format["type"].is_string() {
                return Err(ApiError::invalid_request(
                    "Invalid type for 'response_format': expected an object with a 'type'.",
                    Some("response_format"),
                    Some("invalid_type"),
                ));
            }
        }

        Ok(ChatRequest {
            model: model.into_owned(),
            model_span,
            stream_options_span,
            max_tokens_name: if wire.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            stream: wire.stream.unwrap_or(false),
            include_usage,
            messages,
            max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
            temperature: wire.temperature,
            top_p: wire.top_p,
            seed: wire.seed,
            frequency_penalty: wire.frequency_penalty,
            presence_penalty: wire.presence_penalty,
            n: wire.n,
            stop: match wire.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(list)) => list,
            },
            response_format: wire.response_format,
            tools: wire.tools.unwrap_or_default(),
            tool_choice: wire.tool_choice,
            extra: wire.extra,
            body,
        })
    }

    /// `response_format.type`, when given (`text`, `json_object`, `json_schema`).
    pub fn response_format_type(&self) -> Option<&str> {
        self.response_format.as_ref()?["type"].as_str()
    }

    /// The JSON schema of a `json_schema` response format.
    pub fn json_schema(&self) -> Option<&Value> {
        let format = self.response_format.as_ref()?;
        (format["type"] == "json_schema")
            .then(|| format["json_schema"].get("schema"))
            .flatten()
    }

    /// The function a `tool_choice` forces the model to call, when it forces one.
    pub fn forced_function(&self) -> Option<&str> {
        self.tool_choice.as_ref()?["function"]["name"].as_str()
    }

    /// `tool_choice: "none"`: the model may not call the tools offered.
    pub fn tools_refused(&self) -> bool {
        self.tool_choice.as_ref().and_then(Value::as_str) == Some("none")
    }

    /// A request for `model` with these messages and nothing else set; change its fields, then
    /// [`ChatRequest::write_body`].
    pub fn new(model: &str, messages: Vec<Message>) -> ChatRequest {
        let mut req = ChatRequest {
            body: Bytes::new(),
            model_span: (0, 0),
            stream_options_span: None,
            max_tokens_name: "max_tokens",
            model: model.to_owned(),
            stream: false,
            include_usage: false,
            messages,
            max_tokens: None,
            temperature: None,
            top_p: None,
            seed: None,
            frequency_penalty: None,
            presence_penalty: None,
            n: None,
            stop: Vec::new(),
            response_format: None,
            tools: Vec::new(),
            tool_choice: None,
            extra: Map::new(),
        };
        req.write_body();
        req
    }

    /// The same request with other messages, its body written anew from the typed view.
    pub fn with_messages(&self, messages: Vec<Message>) -> ChatRequest {
        let mut req = ChatRequest {
            body: self.body.clone(),
            model_span: self.model_span,
            stream_options_span: self.stream_options_span,
            max_tokens_name: self.max_tokens_name,
            model: self.model.clone(),
            stream: self.stream,
            include_usage: self.include_usage,
            messages,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            n: self.n,
            stop: self.stop.clone(),
            response_format: self.response_format.clone(),
            tools: self.tools.clone(),
            tool_choice: self.tool_choice.clone(),
            extra: self.extra.clone(),
        };
        req.write_body();
        req
    }

    /// The messages as `[{role, content}]` with their text only (for label lines and traces
    /// that keep text).
    pub fn messages_json(&self) -> serde_json::Value {
        self.messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role.as_str(), "content": m.content.text()}))
            .collect()
    }

    /// The same request asking for one whole answer instead of a stream.
    pub fn without_stream(&self) -> ChatRequest {
        let mut req = self.with_messages(self.messages.clone());
        req.stream = false;
        req.include_usage = false;
        req.stream_options_span = None;
        req.write_body();
        req
    }

    /// Writes the body again from the typed view (the model first, so its span is known; the
    /// client's `stream_options` as they were).
    pub fn write_body(&mut self) {
        let stream_options = self
            .stream_options_span
            .map(|(start, end)| self.body.slice(start..end));
        let text: usize = self.messages.iter().map(|m| m.content.text().len()).sum();
        let mut out: Vec<u8> = Vec::with_capacity(text + 512);
        // Writing JSON into memory does not fail.
        let put = |out: &mut Vec<u8>, key: &str, value: &dyn erased::Json| {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            value.write(out);
        };
        out.extend_from_slice(b"{\"model\":");
        let start = out.len();
        let _ = serde_json::to_writer(&mut out, &self.model);
        self.model_span = (start, out.len());
        put(&mut out, "messages", &self.messages);
        if self.stream {
            put(&mut out, "stream", &true);
        }
        self.stream_options_span = stream_options.map(|raw| {
            out.extend_from_slice(b",\"stream_options\":");
            let start = out.len();
            out.extend_from_slice(&raw);
            (start, out.len())
        });
        if let Some(n) = self.max_tokens {
            put(&mut out, self.max_tokens_name, &n);
        }
        for (key, value) in [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if let Some(v) = value {
                put(&mut out, key, &v);
            }
        }
        if let Some(seed) = self.seed {
            put(&mut out, "seed", &seed);
        }
        if let Some(n) = self.n {
            put(&mut out, "n", &n);
        }
        if !self.stop.is_empty() {
            put(&mut out, "stop", &self.stop);
        }
        if let Some(format) = &self.response_format {
            put(&mut out, "response_format", format);
        }
        if !self.tools.is_empty() {
            put(&mut out, "tools", &self.tools);
        }
        if let Some(choice) = &self.tool_choice {
            put(&mut out, "tool_choice", choice);
        }
        for (key, value) in &self.extra {
            put(&mut out, key, value);
        }
        out.push(b'}');
        self.body = Bytes::from(out);
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

/// Values written into a body one by one.
mod erased {
    /// A value serde can write as JSON.
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize + ?Sized> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            // Writing JSON into memory does not fail.
            let _ = serde_json::to_writer(out, self);
        }
    }
}

/// A message as OpenAI takes it.
impl serde::Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("role", self.role.as_str())?;
        m.serialize_entry("content", &self.content)?;
        if let Some(name) = &self.name {
            m.serialize_entry("name", name)?;
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    serde_json::json!({"id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            m.serialize_entry("tool_calls", &calls)?;
        }
        if let Some(id) = &self.tool_call_id {
            m.serialize_entry("tool_call_id", id)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Content as OpenAI takes it: `null`, a string, or the parts.
impl serde::Serialize for Content {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::None => s.serialize_none(),
            Content::Text(t) => s.serialize_str(t),
            Content::Parts { parts, .. } => s.collect_seq(parts),
        }
    }
}

impl serde::Serialize for Part {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Part::Text(t) => serde_json::json!({"type": "text", "text": t}).serialize(s),
            Part::Image { url, detail } => {
                let mut image = serde_json::json!({"url": url});
                if let Some(d) = detail {
                    image["detail"] = Value::String(d.clone());
                }
                serde_json::json!({"type": "image_url", "image_url": image}).serialize(s)
            }
            Part::Other(v) => v.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(Bytes::from(text.to_owned()))
    }

    #[test]
    fn deeply_nested_json_is_a_clear_error_not_a_crash() {
        for depth in [200, 100_000] {
            let deep = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let e = ChatRequest::parse(Bytes::from(deep)).unwrap_err();
            assert_eq!(e.status, 400, "{}", e.message);
        }
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
        assert_eq!(r.tools.len(), 2);
        assert_eq!(r.response_format_type(), Some("json_schema"));
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[0].content.text(), "Be brief.");
        assert_eq!(
            r.messages[1].content,
            Content::Parts {
                text: "What is this?".into(),
                parts: vec![
                    Part::Text("What is this?".into()),
                    Part::Image {
                        url: "data:,".into(),
                        detail: None
                    }
                ]
            }
        );
        assert_eq!(r.messages[1].content.images(), 1);
        assert_eq!(r.messages[2].tool_calls.len(), 1);
        assert_eq!(r.messages[2].tool_calls[0].id, "a");
        assert_eq!(r.messages[2].content, Content::None);
        assert_eq!(r.extra["unknown_field"]["kept"], true);
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
    fn everything_the_translations_need_is_read_once() {
        let r = parse(
            r#"{"model":"m","top_p":0.9,"seed":7,"stop":"END","n":1,"frequency_penalty":0.5,
               "presence_penalty":-0.5,"max_completion_tokens":9,"max_tokens":99,
               "tool_choice":{"type":"function","function":{"name":"get_weather"}},
               "messages":[
                 {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                 {"role":"tool","tool_call_id":"call_1","content":"18C","x_note":1},
                 {"role":"user","name":"ann","content":[{"type":"input_audio","input_audio":{"data":"AAA","format":"wav"}}]}]}"#,
        )
        .unwrap();
        assert_eq!((r.top_p, r.seed, r.n), (Some(0.9), Some(7), Some(1)));
        assert_eq!(r.stop, ["END"]);
        assert_eq!(r.max_tokens, Some(9), "max_completion_tokens wins");
        assert_eq!(r.forced_function(), Some("get_weather"));
        assert!(!r.tools_refused());
        let call = &r.messages[0].tool_calls[0];
        assert_eq!(
            (
                call.id.as_str(),
                call.name.as_str(),
                call.arguments.as_str()
            ),
            ("call_1", "get_weather", r#"{"city":"Paris"}"#)
        );
        assert_eq!(r.messages[1].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.messages[1].extra["x_note"], 1);
        assert_eq!(r.messages[2].name.as_deref(), Some("ann"));
        assert!(matches!(
            &r.messages[2].content,
            Content::Parts { parts, .. } if matches!(&parts[0], Part::Other(v) if v["type"] == "input_audio")
        ));
        let stop_list =
            parse(r#"{"model":"m","stop":["a","b"],"messages":[{"role":"user","content":"x"}]}"#)
                .unwrap();
        assert_eq!(stop_list.stop, ["a", "b"]);
        for bad in [
            r#"{"model":"m","stop":5,"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","response_format":{"schema":{}},"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","role":"system","content":"x"}]}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, Some("invalid_type"), "{bad}");
        }
    }

    #[test]
    fn a_body_written_again_reads_back_the_same() {
        let text = r#"{"temperature":0.5,"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1},
            "max_completion_tokens":9,"seed":3,"stop":["a"],"response_format":{"type":"json_object"},
            "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto","user":"u-1",
            "messages":[{"role":"system","content":"Be brief."},
              {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},
              {"role":"tool","tool_call_id":"c","content":"18C","x_note":2},
              {"role":"user","name":"ann","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:,","detail":"low"}}]}]}"#;
        let r = parse(text).unwrap();
        let mut messages = r.messages.clone();
        messages[0].content = Content::Text("Be very brief.".into());
        let again = r.with_messages(messages);
        let reread = ChatRequest::parse(again.body().clone()).unwrap();
        assert_eq!(reread.messages, again.messages);
        assert_eq!(reread.messages[0].content.text(), "Be very brief.");
        let (a, b) = (&reread, &r);
        assert_eq!(a.model, b.model);
        assert_eq!((a.stream, a.include_usage), (b.stream, b.include_usage));
        assert_eq!(a.max_tokens, b.max_tokens);
        assert_eq!((a.temperature, a.seed), (b.temperature, b.seed));
        assert_eq!(a.stop, b.stop);
        assert_eq!(a.response_format, b.response_format);
        assert_eq!(a.tools, b.tools);
        assert_eq!(a.tool_choice, b.tool_choice);
        assert_eq!(a.extra, b.extra);
        let v: Value = serde_json::from_slice(again.body()).unwrap();
        assert_eq!(v["max_completion_tokens"], 9, "under the name it came");
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": false, "x": 1})
        );
        // The spans are right: the model splice and the usage request still work.
        let up: Value = serde_json::from_slice(&again.upstream_body("big", true)).unwrap();
        assert_eq!(up["model"], "big");
        assert_eq!(up["stream_options"]["include_usage"], true);

        let fresh = ChatRequest::new("small", reread.messages[..1].to_vec());
        let v: Value = serde_json::from_slice(fresh.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "small", "messages": [{"role": "system", "content": "Be very brief."}]})
        );
    }

    #[test]
    fn nulls_mean_absent() {
        let r = parse(r#"{"model":"m","stream":null,"temperature":null,"messages":[{"role":"user","content":"x"}]}"#)
            .unwrap();
        assert!(!r.stream);
        assert_eq!(r.temperature, None);
    }
}
