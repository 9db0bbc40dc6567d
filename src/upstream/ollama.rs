//! Ollama's native chat API (`POST /api/chat`), translated to and from OpenAI's; the answer side
//! also reads Ollama's generate API and llama.cpp's completion API, which `raw` upstreams use.
//!
//! Requests: messages keep their roles (`developer` becomes `system`); content parts become text
//! and base64 `images`; an assistant's tool-call arguments (a JSON string for OpenAI) become
//! objects; a tool answer names its tool. Sampling parameters and `max_tokens` go into `options`
//! together with the configured `num_ctx`; `response_format` becomes `format`.
//!
//! Answers: a JSON answer becomes a `chat.completion`; a stream of NDJSON lines becomes OpenAI
//! SSE chunks as the lines arrive (a line split across reads waits for its end). Tool calls get
//! ids and string arguments. `prompt_eval_count` / `eval_count` become `usage`, always sent as
//! the stream's last chunk (the caller removes it when the client did not ask for it).

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{
    ids, ApiError, ChatRequest, Choice, Chunk, ChunkSink, Completion, Content, Delta,
    DeltaFunction, DeltaToolCall, Field, Part, Role, ToolCall, Usage,
};
use crate::config::UpstreamConfig;

/// The longest answer line read; a longer one fails the stream rather than grow without bound.
const MAX_LINE: usize = 8 << 20;

/// The request path of Ollama's chat API.
pub const CHAT_PATH: &str = "/api/chat";

/// Ollama's `options`: the sampling parameters, `max_tokens` and the context size.
#[derive(Serialize, Default)]
pub(super) struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_ctx: Option<u64>,
}

impl<'a> Options<'a> {
    /// The options of `req`, with the upstream's context size.
    pub(super) fn of(req: &'a ChatRequest, num_ctx: Option<u64>) -> Options<'a> {
        Options {
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            stop: &req.stop,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            num_predict: req.max_tokens,
            num_ctx,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.seed.is_none()
            && self.stop.is_empty()
            && self.frequency_penalty.is_none()
            && self.presence_penalty.is_none()
            && self.num_predict.is_none()
            && self.num_ctx.is_none()
    }
}

/// `format`: plain JSON, or a JSON schema the answer must follow.
#[derive(Serialize, Clone, Copy)]
#[serde(untagged)]
pub(super) enum Format<'a> {
    /// `"json"`.
    Json(&'static str),
    /// A schema.
    Schema(&'a Value),
}

/// The `/api/chat` body.
#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<OllamaMessageOut<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Options::is_empty")]
    options: Options<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Format<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a str>,
}

#[derive(Serialize)]
struct OllamaMessageOut<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OllamaCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
}

#[derive(Serialize)]
struct OllamaCallOut<'a> {
    function: OllamaFunctionOut<'a>,
}

#[derive(Serialize)]
struct OllamaFunctionOut<'a> {
    name: &'a str,
    /// Ollama takes the arguments as an object, OpenAI as a JSON text.
    arguments: Value,
}

/// Refuses what a local model server cannot do: more than one choice.
pub(super) fn check(req: &ChatRequest) -> Result<(), ApiError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(bad(
            "This model answers one choice per request: 'n' must be 1.",
            "n",
        ));
    }
    Ok(())
}

pub(super) fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param), Some("invalid_value"))
}

/// The `/api/chat` body for `req`, sent to `model` with the upstream's `num_ctx` and
/// `keep_alive`.
pub fn request_body(
    req: &ChatRequest,
    model: &str,
    upstream: &UpstreamConfig,
) -> Result<Bytes, ApiError> {
    check(req)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role {
            Role::Developer => "system",
            Role::Function => "tool",
            other => other.as_str(),
        };
        let mut tool_calls = Vec::with_capacity(m.tool_calls.len());
        for (j, call) in m.tool_calls.iter().enumerate() {
            let args = if call.arguments.trim().is_empty() {
                "{}"
            } else {
                &call.arguments
            };
            let arguments: Value = serde_json::from_str(args).map_err(|_| {
                bad(
                    "Tool call arguments must be a JSON object.",
                    &format!("messages.[{i}].tool_calls.[{j}].function.arguments"),
                )
            })?;
            tool_calls.push(OllamaCallOut {
                function: OllamaFunctionOut {
                    name: &call.name,
                    arguments,
                },
            });
        }
        // A tool answer names its tool in Ollama; OpenAI names the call it answers.
        let tool_name = m.tool_call_id.as_deref().and_then(|id| {
            req.messages[..i]
                .iter()
                .flat_map(|earlier| &earlier.tool_calls)
                .find(|call| call.id == id)
                .map(|call| call.name.as_str())
        });
        messages.push(OllamaMessageOut {
            role,
            content: m.content.text(),
            images: images(&m.content, i)?,
            tool_calls,
            tool_name,
        });
    }
    // Ollama has no tool_choice; `none` is honoured by not offering the tools.
    let tools: &[Value] = if req.tools_refused() { &[] } else { &req.tools };
    let body = ChatBody {
        model,
        messages,
        stream: req.stream,
        options: Options::of(req, upstream.num_ctx),
        format: format(req)?,
        tools,
        keep_alive: upstream.keep_alive.as_deref(),
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(&e.to_string()))
}

/// The base64 data of a message's images (Ollama takes no URLs).
pub(super) fn images(content: &Content, i: usize) -> Result<Vec<&str>, ApiError> {
    let Content::Parts { parts, .. } = content else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        if let Part::Image { url, .. } = part {
            let data = url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"))
                .map(|(_, data)| data)
                .ok_or_else(|| {
                    bad(
                        "Images must be sent as base64 data URLs (data:image/...;base64,...) to this model.",
                        &format!("messages.[{i}].content.[{j}].image_url.url"),
                    )
                })?;
            out.push(data);
        }
    }
    Ok(out)
}

/// `response_format` as Ollama's `format`: `"json"`, a JSON schema, or nothing.
pub(super) fn format(req: &ChatRequest) -> Result<Option<Format<'_>>, ApiError> {
    match req.response_format_type() {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(Format::Json("json"))),
        Some("json_schema") => match req.json_schema() {
            Some(schema) if schema.is_object() => Ok(Some(Format::Schema(schema))),
            _ => Err(bad(
                "response_format.json_schema.schema must be a JSON schema object.",
                "response_format.json_schema.schema",
            )),
        },
        Some(other) => Err(bad(
            format!("Unsupported response_format type '{other}'."),
            "response_format.type",
        )),
    }
}

/// One answer object of a local model server: a whole answer, or one line of a stream. The
/// fields of three dialects meet here: Ollama's chat (`message`) and generate (`response`) APIs,
/// and llama.cpp's completion API (`content`, `stop`, `tokens_*`).
#[derive(Deserialize)]
struct OllamaAnswer<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    message: Option<OllamaMessage<'a>>,
    #[serde(borrow)]
    response: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    done: bool,
    stop: Option<bool>,
    #[serde(borrow)]
    done_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_type: Option<Cow<'a, str>>,
    stopped_limit: Option<bool>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    tokens_evaluated: Option<u64>,
    tokens_predicted: Option<u64>,
    error: Option<Value>,
}

impl OllamaAnswer<'_> {
    /// The text this object adds.
    fn text(&self) -> Option<&str> {
        self.message
            .as_ref()
            .and_then(|m| m.content.as_deref())
            .or(self.response.as_deref())
            .or(self.content.as_deref())
    }

    /// Whether this object ends the answer.
    fn is_done(&self) -> bool {
        self.done || self.stop == Some(true)
    }

    /// Ollama's `done_reason`, or llama.cpp's stop type in Ollama's words.
    fn reason(&self) -> Option<&str> {
        let limit = self.stop_type.as_deref() == Some("limit") || self.stopped_limit == Some(true);
        if limit {
            Some("length")
        } else {
            self.done_reason.as_deref()
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self
                .prompt_eval_count
                .or(self.tokens_evaluated)
                .unwrap_or(0),
            completion_tokens: self.eval_count.or(self.tokens_predicted).unwrap_or(0),
        }
    }

    /// The error it reports: Ollama sends a string, llama.cpp an object with a message.
    fn error_message(&self) -> Option<String> {
        match self.error.as_ref()? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(
                other["message"]
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
            ),
        }
    }
}

#[derive(Deserialize)]
struct OllamaMessage<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    tool_calls: Option<Vec<OllamaToolCall>>,
}

#[derive(Deserialize)]
struct OllamaToolCall {
    function: OllamaFunction,
}

#[derive(Deserialize)]
struct OllamaFunction {
    name: String,
    arguments: Option<Value>,
}

impl OllamaToolCall {
    /// The call in OpenAI's form, with a fresh id and the arguments as a JSON text.
    fn to_openai(&self) -> ToolCall {
        ToolCall {
            id: ids::call_id(),
            name: self.function.name.clone(),
            arguments: match &self.function.arguments {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "{}".to_owned(),
            },
        }
    }
}

/// OpenAI's `finish_reason` for Ollama's `done_reason`.
fn finish_reason(done_reason: Option<&str>, tool_calls: bool) -> &'static str {
    match done_reason {
        _ if tool_calls => "tool_calls",
        Some("length") => "length",
        _ => "stop",
    }
}

/// A non-streaming answer of a local model server, as a `chat.completion`.
pub fn completion(body: &[u8], upstream: &str) -> Result<Completion, ApiError> {
    let answer: OllamaAnswer = serde_json::from_slice(body).map_err(|e| {
        ApiError::upstream_broken(upstream, &format!("unreadable Ollama answer: {e}"))
    })?;
    if let Some(message) = answer.error_message() {
        return Err(error(500, &message));
    }
    let calls: Vec<ToolCall> = answer
        .message
        .iter()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .map(OllamaToolCall::to_openai)
        .collect();
    let text = answer.text().unwrap_or_default();
    let finish = finish_reason(answer.reason(), !calls.is_empty());
    Ok(Completion {
        id: ids::completion_id(),
        created: ids::unix_now(),
        model: answer.model.as_deref().unwrap_or_default().to_owned(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            // An answer that only calls tools has no content, as OpenAI sends it.
            content: (calls.is_empty() || !text.is_empty()).then(|| text.to_owned()),
            refusal: None,
            tool_calls: calls,
            finish_reason: Some(finish.to_owned()),
        }],
        usage: Some(answer.usage()),
    })
}

/// The OpenAI error for an Ollama error answer (`{"error": "…"}`) with HTTP `status`.
pub fn error(status: u16, message: &str) -> ApiError {
    let lower = message.to_ascii_lowercase();
    if status == 404 || (lower.contains("model") && lower.contains("not found")) {
        return ApiError {
            status: 404,
            message: message.to_owned(),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        };
    }
    match status {
        400..=499 => ApiError {
            status,
            message: message.to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        },
        _ => ApiError {
            status: if status >= 500 { status } else { 500 },
            message: message.to_owned(),
            kind: "server_error",
            param: None,
            code: None,
        },
    }
}

/// The message of an Ollama error body, or the body itself when it is not one.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        error: String,
    }
    serde_json::from_slice::<E>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

/// Turns an NDJSON answer stream (or llama.cpp's SSE) into OpenAI chunks, line by line, written
/// into a [`ChunkSink`].
#[derive(Debug)]
pub struct StreamTranslator {
    pending: BytesMut,
    id: String,
    created: u64,
    model: String,
    started: bool,
    tool_calls: usize,
    done: bool,
    failed: bool,
}

impl StreamTranslator {
    /// A translator for one answer to a request sent to `model`.
    pub fn new(model: &str) -> StreamTranslator {
        StreamTranslator {
            pending: BytesMut::new(),
            id: ids::completion_id(),
            created: ids::unix_now(),
            model: model.to_owned(),
            started: false,
            tool_calls: 0,
            done: false,
            failed: false,
        }
    }

    /// Translates the complete lines in `piece` (with what was left of the last one).
    pub fn feed(&mut self, piece: &[u8], sink: &mut impl ChunkSink) {
        self.pending.extend_from_slice(piece);
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line = self.pending.split_to(nl + 1);
            self.line(&line[..nl], sink);
        }
        if self.pending.len() > MAX_LINE && !self.failed {
            self.pending.clear();
            self.fail(sink, "the model server sent a line too long to read");
        }
    }

    /// Translates what is left at the end of the body (a last line without its newline).
    pub fn finish(&mut self, sink: &mut impl ChunkSink) {
        if !self.pending.is_empty() {
            let rest = self.pending.split();
            self.line(&rest, sink);
        }
    }

    /// Whether the stream reached its last line (`done: true`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the server reported an error mid-stream (an error went to the sink).
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn line(&mut self, line: &[u8], sink: &mut impl ChunkSink) {
        let line = line.trim_ascii();
        // llama.cpp streams SSE: its lines are `data: {…}` and blank separators.
        let line = line.strip_prefix(b"data:").unwrap_or(line).trim_ascii();
        if line.is_empty() || self.done || self.failed {
            return;
        }
        let answer: OllamaAnswer = match serde_json::from_slice(line) {
            Ok(a) => a,
            Err(e) => {
                self.fail(sink, &format!("unreadable line from Ollama: {e}"));
                return;
            }
        };
        if let Some(message) = answer.error_message() {
            self.fail(sink, &message);
            return;
        }
        if let Some(model) = answer.model.as_deref().filter(|m| !m.is_empty()) {
            if !self.started {
                self.model = model.to_owned();
            }
        }
        let chunk = || Chunk::new(&self.id, self.created, &self.model);
        if !self.started {
            let first = Delta {
                role: Some("assistant"),
                content: Field::Set(""),
                ..Delta::default()
            };
            sink.chunk(&chunk().with(0, first, None));
        }
        if let Some(text) = answer.text().filter(|t| !t.is_empty()) {
            let delta = Delta {
                content: Field::Set(text),
                ..Delta::default()
            };
            sink.chunk(&chunk().with(0, delta, None));
        }
        let mut calls = 0;
        for call in answer
            .message
            .iter()
            .flat_map(|m| m.tool_calls.iter().flatten())
        {
            let call = call.to_openai();
            let delta = Delta {
                tool_calls: vec![DeltaToolCall {
                    index: self.tool_calls + calls,
                    id: Some(&call.id),
                    kind: Some("function"),
                    function: DeltaFunction {
                        name: Some(&call.name),
                        arguments: &call.arguments,
                    },
                }],
                ..Delta::default()
            };
            sink.chunk(&chunk().with(0, delta, None));
            calls += 1;
        }
        if answer.is_done() {
            let reason = finish_reason(answer.reason(), self.tool_calls + calls > 0);
            sink.chunk(&chunk().with(0, Delta::default(), Some(reason)));
            let usage = Chunk {
                usage: Field::Set(answer.usage()),
                ..chunk()
            };
            sink.chunk(&usage);
            sink.done();
        }
        self.started = true;
        self.tool_calls += calls;
        self.done = answer.is_done();
    }

    fn fail(&mut self, sink: &mut impl ChunkSink, message: &str) {
        self.failed = true;
        sink.error(&ApiError {
            status: 500,
            message: message.to_owned(),
            kind: "server_error",
            param: None,
            code: Some("upstream_error"),
        });
    }
}

#[cfg(test)]
mod tests;
