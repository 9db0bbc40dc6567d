//! The answer side of the chat API: a complete `chat.completion`, assembled from a JSON body or
//! from a stream's chunks, and rendered back as either.
//!
//! The gateway reads answers for two reasons: token usage (for cost accounting) and the response
//! cache, which stores an answer once and replays it as JSON or as a well-formed SSE stream,
//! whichever form the next client asks for.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens read (`prompt_tokens`).
    pub prompt_tokens: u64,
    /// Tokens written (`completion_tokens`).
    pub completion_tokens: u64,
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut u = s.serialize_struct("Usage", 3)?;
        u.serialize_field("prompt_tokens", &self.prompt_tokens)?;
        u.serialize_field("completion_tokens", &self.completion_tokens)?;
        u.serialize_field(
            "total_tokens",
            &(self.prompt_tokens + self.completion_tokens),
        )?;
        u.end()
    }
}

/// A field of a JSON object that may be left out, be `null`, or hold a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Field<T> {
    /// Not written.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A value.
    Set(T),
}

impl<T> Field<T> {
    /// Whether the field is left out.
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Set(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

/// One `chat.completion.chunk` of a stream, as the gateway writes it (a translated stream, a
/// replay from the cache).
#[derive(Debug, Serialize)]
pub struct Chunk<'a> {
    /// The answer's id.
    pub id: &'a str,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix time of the answer's creation.
    pub created: u64,
    /// The model that answers.
    pub model: &'a str,
    /// The upstream's `system_fingerprint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<&'a str>,
    /// What the chunk adds, per choice (none in the usage chunk).
    pub choices: Vec<DeltaChoice<'a>>,
    /// `null` on every chunk but the last when the client asked for usage; the usage on that one.
    #[serde(skip_serializing_if = "Field::is_absent")]
    pub usage: Field<Usage>,
}

/// What a chunk adds to one choice.
#[derive(Debug, Serialize)]
pub struct DeltaChoice<'a> {
    /// The choice's index.
    pub index: u64,
    /// The addition.
    pub delta: Delta<'a>,
    /// Always `null`.
    pub logprobs: Option<()>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'a str>,
}

/// An addition to a choice's message.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    /// `assistant`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text.
    #[serde(skip_serializing_if = "Field::is_absent")]
    pub content: Field<&'a str>,
    /// A refusal's text.
    #[serde(skip_serializing_if = "Field::is_absent")]
    pub refusal: Field<&'a str>,
    /// Tool calls, or fragments of their arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<DeltaToolCall<'a>>,
}

/// A tool call, or a fragment of it, in a chunk.
#[derive(Debug, Serialize)]
pub struct DeltaToolCall<'a> {
    /// Its position among the choice's tool calls.
    pub index: usize,
    /// The call's id, on its first fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// `function`, on its first fragment.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The function's name and (a fragment of) its arguments.
    pub function: DeltaFunction<'a>,
}

/// The function part of a tool call fragment.
#[derive(Debug, Serialize)]
pub struct DeltaFunction<'a> {
    /// The name, on the first fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// A fragment of the arguments' JSON text.
    pub arguments: &'a str,
}

impl<'a> Chunk<'a> {
    /// A chunk of the answer `id` by `model`.
    pub fn new(id: &'a str, created: u64, model: &'a str) -> Chunk<'a> {
        Chunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            system_fingerprint: None,
            choices: Vec::new(),
            usage: Field::Absent,
        }
    }

    /// The same chunk with one choice's delta.
    pub fn with(mut self, index: u64, delta: Delta<'a>, finish_reason: Option<&'a str>) -> Self {
        self.choices.push(DeltaChoice {
            index,
            delta,
            logprobs: None,
            finish_reason,
        });
        self
    }

    /// Writes the chunk as one SSE event.
    pub fn write_sse(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        // Serializing these types into memory does not fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.extend_from_slice(b"\n\n");
    }
}

/// Receives a stream as typed pieces; the translations of local model servers write into one.
pub trait ChunkSink {
    /// One chunk.
    fn chunk(&mut self, chunk: &Chunk<'_>);
    /// The stream ended well (`[DONE]`).
    fn done(&mut self);
    /// The stream broke with this error; nothing follows.
    fn error(&mut self, error: &super::ApiError);
}

/// Renders the pieces as SSE.
impl ChunkSink for Vec<u8> {
    fn chunk(&mut self, chunk: &Chunk<'_>) {
        chunk.write_sse(self);
    }

    fn done(&mut self) {
        self.extend_from_slice(DONE_EVENT);
    }

    fn error(&mut self, error: &super::ApiError) {
        self.extend_from_slice(&error.to_sse_event());
    }
}

/// The event that ends a stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// One tool call of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    /// The call's id, which the tool's answer refers to.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments: a JSON text, as OpenAI sends it.
    pub arguments: String,
}

/// One choice of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Choice {
    /// Its position in `choices`.
    pub index: u64,
    /// The text, `None` when the model only called tools.
    pub content: Option<String>,
    /// A refusal, when the model gave one instead of content.
    pub refusal: Option<String>,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped (`stop`, `length`, `tool_calls`, `content_filter`).
    pub finish_reason: Option<String>,
}

/// A complete answer, whatever form it arrived in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Completion {
    /// The answer's id (`chatcmpl-…`).
    pub id: String,
    /// Unix time of its creation.
    pub created: u64,
    /// The model that answered, as the upstream named it.
    pub model: String,
    /// The upstream's `system_fingerprint`, when it gave one.
    pub system_fingerprint: Option<String>,
    /// The choices, by index.
    pub choices: Vec<Choice>,
    /// Token usage, when the upstream reported it.
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    message: Option<WireMessage<'a>>,
    #[serde(borrow)]
    delta: Option<WireMessage<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireCompletion<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object: Option<Cow<'a, str>>,
    created: Option<u64>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    system_fingerprint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

impl Completion {
    /// Reads a non-streaming `chat.completion` body; `None` when it is not one.
    pub fn from_json(body: &[u8]) -> Option<Completion> {
        let wire: WireCompletion = serde_json::from_slice(body).ok()?;
        if wire.error.is_some() || wire.object.as_deref() != Some("chat.completion") {
            return None;
        }
        let mut choices = Vec::new();
        for (i, c) in wire.choices?.into_iter().enumerate() {
            let message = c.message?;
            choices.push(Choice {
                index: c.index.unwrap_or(i as u64),
                content: message.content.map(Cow::into_owned),
                refusal: message.refusal.map(Cow::into_owned),
                tool_calls: message
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let f = t.function.unwrap_or(WireFunction {
                            name: None,
                            arguments: None,
                        });
                        ToolCall {
                            id: t.id.map(Cow::into_owned).unwrap_or_default(),
                            name: f.name.map(Cow::into_owned).unwrap_or_default(),
                            arguments: f.arguments.map(Cow::into_owned).unwrap_or_default(),
                        }
                    })
                    .collect(),
                finish_reason: c.finish_reason.map(Cow::into_owned),
            });
        }
        Some(Completion {
            id: wire.id.map(Cow::into_owned).unwrap_or_default(),
            created: wire.created.unwrap_or(0),
            model: wire.model.map(Cow::into_owned).unwrap_or_default(),
            system_fingerprint: wire.system_fingerprint.map(Cow::into_owned),
            choices,
            usage: wire.usage.map(|u| u.usage()),
        })
    }

    /// Whether every choice came to an end: only such answers are worth storing.
    pub fn is_complete(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.finish_reason.is_some())
    }

    /// How many characters of output the answer holds (text, refusals and tool arguments), for
    /// estimating its tokens when the upstream does not count them.
    pub fn output_chars(&self) -> usize {
        self.choices
            .iter()
            .map(|c| {
                c.content.as_deref().map_or(0, str::len)
                    + c.refusal.as_deref().map_or(0, str::len)
                    + c.tool_calls
                        .iter()
                        .map(|t| t.name.len() + t.arguments.len())
                        .sum::<usize>()
            })
            .sum()
    }

    /// The answer as a `chat.completion` JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = CompletionOut {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: self
                .choices
                .iter()
                .map(|c| ChoiceOut {
                    index: c.index,
                    message: MessageOut {
                        role: "assistant",
                        content: c.content.as_deref(),
                        refusal: c.refusal.as_deref(),
                        tool_calls: c
                            .tool_calls
                            .iter()
                            .map(|t| CallOut {
                                id: &t.id,
                                kind: "function",
                                function: FunctionOut {
                                    name: &t.name,
                                    arguments: &t.arguments,
                                },
                            })
                            .collect(),
                    },
                    logprobs: None,
                    finish_reason: c.finish_reason.as_deref(),
                })
                .collect(),
            usage: self.usage,
            system_fingerprint: self.system_fingerprint.as_deref(),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The answer as an SSE stream, the way OpenAI streams it: a first delta with the role, the
    /// content, each tool call, a last delta with the finish reason, the usage chunk when
    /// `include_usage` (and the usage is known), then `[DONE]`.
    pub fn to_sse(&self, include_usage: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.output_chars() * 2);
        let chunk = || Chunk {
            system_fingerprint: self.system_fingerprint.as_deref(),
            usage: if include_usage {
                Field::Null
            } else {
                Field::Absent
            },
            ..Chunk::new(&self.id, self.created, &self.model)
        };
        for c in &self.choices {
            let first = Delta {
                role: Some("assistant"),
                content: match (&c.content, &c.refusal) {
                    (Some(_), None) => Field::Set(""),
                    _ => Field::Null,
                },
                refusal: c.refusal.as_deref().map_or(Field::Null, Field::Set),
                tool_calls: Vec::new(),
            };
            chunk().with(c.index, first, None).write_sse(&mut out);
            if let Some(text) = c.content.as_deref().filter(|t| !t.is_empty()) {
                let delta = Delta {
                    content: Field::Set(text),
                    ..Delta::default()
                };
                chunk().with(c.index, delta, None).write_sse(&mut out);
            }
            for (i, t) in c.tool_calls.iter().enumerate() {
                let delta = Delta {
                    tool_calls: vec![DeltaToolCall {
                        index: i,
                        id: Some(&t.id),
                        kind: Some("function"),
                        function: DeltaFunction {
                            name: Some(&t.name),
                            arguments: &t.arguments,
                        },
                    }],
                    ..Delta::default()
                };
                chunk().with(c.index, delta, None).write_sse(&mut out);
            }
            let last = chunk().with(c.index, Delta::default(), c.finish_reason.as_deref());
            last.write_sse(&mut out);
        }
        // An answer whose upstream reported no usage replays without it, as it first came.
        if let Some(usage) = self.usage.filter(|_| include_usage) {
            let last = Chunk {
                usage: Field::Set(usage),
                ..chunk()
            };
            last.write_sse(&mut out);
        }
        out.extend_from_slice(DONE_EVENT);
        out
    }
}

/// A text the upstream sent, or left out.
fn field<'a>(text: &'a Option<Cow<'_, str>>) -> Field<&'a str> {
    match text {
        Some(t) => Field::Set(t.as_ref()),
        None => Field::Absent,
    }
}

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u64,
    message: MessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallOut<'a>>,
}

#[derive(Serialize)]
struct CallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// Builds a [`Completion`] from the `chat.completion.chunk` events of a stream.
#[derive(Debug, Default)]
pub struct StreamAssembler {
    completion: Completion,
    /// Bytes of output kept so far; past the limit the text is dropped (usage is still read).
    kept: usize,
    limit: usize,
    overflow: bool,
    /// `[DONE]` arrived.
    done: bool,
    /// An `error` event arrived.
    failed: bool,
}

/// What one SSE event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A chunk with choices (and maybe usage).
    Chunk,
    /// A chunk with no choices and usage: the `include_usage` chunk.
    UsageOnly,
    /// `data: [DONE]`.
    Done,
    /// Anything else: an error event, a comment, a chunk the gateway cannot read.
    Other,
}

impl StreamAssembler {
    /// An assembler that keeps at most `limit` bytes of output text.
    pub fn new(limit: usize) -> StreamAssembler {
        StreamAssembler {
            limit,
            ..StreamAssembler::default()
        }
    }

    /// Reads one event's data (the text after `data:`).
    pub fn event(&mut self, data: &[u8]) -> EventKind {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done();
            return EventKind::Done;
        }
        let Ok(wire) = serde_json::from_slice::<WireCompletion>(data) else {
            return EventKind::Other;
        };
        if wire.error.is_some() {
            self.failed = true;
            return EventKind::Other;
        }
        let chunk = Chunk {
            system_fingerprint: wire.system_fingerprint.as_deref(),
            choices: wire
                .choices
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| {
                    let delta = match &c.delta {
                        Some(d) => Delta {
                            role: None,
                            content: field(&d.content),
                            refusal: field(&d.refusal),
                            tool_calls: d
                                .tool_calls
                                .iter()
                                .flatten()
                                .map(|t| DeltaToolCall {
                                    index: t.index.unwrap_or(0) as usize,
                                    id: t.id.as_deref(),
                                    kind: None,
                                    function: DeltaFunction {
                                        name: t.function.as_ref().and_then(|f| f.name.as_deref()),
                                        arguments: t
                                            .function
                                            .as_ref()
                                            .and_then(|f| f.arguments.as_deref())
                                            .unwrap_or_default(),
                                    },
                                })
                                .collect(),
                        },
                        None => Delta::default(),
                    };
                    DeltaChoice {
                        index: c.index.unwrap_or(i as u64),
                        delta,
                        logprobs: None,
                        finish_reason: c.finish_reason.as_deref(),
                    }
                })
                .collect(),
            usage: match &wire.usage {
                Some(u) => Field::Set(u.usage()),
                None => Field::Absent,
            },
            ..Chunk::new(
                wire.id.as_deref().unwrap_or_default(),
                wire.created.unwrap_or(0),
                wire.model.as_deref().unwrap_or_default(),
            )
        };
        self.chunk(&chunk)
    }

    /// Adds one chunk of the answer.
    pub fn chunk(&mut self, chunk: &Chunk<'_>) -> EventKind {
        let c = &mut self.completion;
        if c.id.is_empty() {
            c.id = chunk.id.to_owned();
            c.created = chunk.created;
            c.model = chunk.model.to_owned();
        }
        if let Some(fp) = chunk.system_fingerprint {
            c.system_fingerprint = Some(fp.to_owned());
        }
        if let Field::Set(u) = chunk.usage {
            c.usage = Some(u);
        }
        if chunk.choices.is_empty() {
            return if matches!(chunk.usage, Field::Set(_)) {
                EventKind::UsageOnly
            } else {
                EventKind::Other
            };
        }
        for wc in &chunk.choices {
            let pos = match c.choices.iter().position(|x| x.index == wc.index) {
                Some(p) => p,
                None => {
                    c.choices.push(Choice {
                        index: wc.index,
                        ..Choice::default()
                    });
                    c.choices.len() - 1
                }
            };
            let choice = &mut c.choices[pos];
            if let Some(reason) = wc.finish_reason {
                choice.finish_reason = Some(reason.to_owned());
            }
            let delta = &wc.delta;
            let mut add = |to: &mut Option<String>, text: Field<&str>| {
                if let Field::Set(text) = text {
                    self.kept += text.len();
                    if self.kept > self.limit {
                        self.overflow = true;
                    } else {
                        to.get_or_insert_with(String::new).push_str(text);
                    }
                }
            };
            add(&mut choice.content, delta.content);
            add(&mut choice.refusal, delta.refusal);
            for t in &delta.tool_calls {
                let slot = t.index;
                if slot > choice.tool_calls.len() {
                    // A gap in tool-call indexes: the stream is not one the gateway can replay.
                    self.overflow = true;
                    continue;
                }
                if slot == choice.tool_calls.len() {
                    choice.tool_calls.push(ToolCall::default());
                }
                let call = &mut choice.tool_calls[slot];
                if let Some(id) = t.id {
                    call.id = id.to_owned();
                }
                if let Some(name) = t.function.name {
                    call.name.push_str(name);
                }
                self.kept += t.function.arguments.len();
                call.arguments.push_str(t.function.arguments);
            }
        }
        EventKind::Chunk
    }

    /// The stream ended with `[DONE]`.
    pub fn done(&mut self) {
        self.done = true;
    }

    /// The stream carried an error: it is no answer to keep.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Stops keeping the answer (it will not be complete); usage still counts.
    pub fn give_up(&mut self) {
        self.overflow = true;
    }

    /// The usage the stream reported, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.completion.usage
    }

    /// Output bytes seen, kept or not.
    pub fn output_bytes(&self) -> usize {
        self.kept
    }

    /// The complete answer: only when the stream ended with `[DONE]`, carried no error, every
    /// choice finished, and nothing was dropped.
    pub fn finish(self) -> Option<Completion> {
        let ok = self.done && !self.failed && !self.overflow && self.kept <= self.limit;
        (ok && self.completion.is_complete()).then_some(self.completion)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn events(sse: &[u8]) -> Vec<Vec<u8>> {
        let text = std::str::from_utf8(sse).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("{e}"))
                    .as_bytes()
                    .to_vec()
            })
            .collect()
    }

    fn answer() -> Completion {
        Completion {
            id: "chatcmpl-1".into(),
            created: 1700000000,
            model: "gpt-4o-2024-08-06".into(),
            system_fingerprint: Some("fp_1".into()),
            choices: vec![Choice {
                index: 0,
                content: Some("Hello \"there\"\n".into()),
                refusal: None,
                tool_calls: vec![],
                finish_reason: Some("stop".into()),
            }],
            usage: Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 4,
            }),
        }
    }

    #[test]
    fn json_round_trip() {
        let a = answer();
        let body = a.to_json();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body.starts_with(b"{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\""),
            "fields in OpenAI's order"
        );
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["total_tokens"], 13);
        assert_eq!(Completion::from_json(&body), Some(a));
    }

    #[test]
    fn sse_replay_is_what_openai_streams_and_assembles_back() {
        let a = answer();
        let sse = a.to_sse(true);
        let evs = events(&sse);
        assert_eq!(evs.last().unwrap(), b"[DONE]");
        let first: Value = serde_json::from_slice(&evs[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["usage"], Value::Null);
        let usage: Value = serde_json::from_slice(&evs[evs.len() - 2]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 9);

        let mut asm = StreamAssembler::new(1 << 20);
        let kinds: Vec<EventKind> = evs.iter().map(|e| asm.event(e)).collect();
        assert_eq!(kinds[kinds.len() - 2], EventKind::UsageOnly);
        assert_eq!(asm.finish(), Some(a.clone()));

        // Without include_usage there is no usage chunk and no `usage` key at all.
        let plain = a.to_sse(false);
        assert!(!String::from_utf8_lossy(&plain).contains("usage"));
        // Unknown usage is not made up.
        let unknown = Completion {
            usage: None,
            ..a.clone()
        };
        let evs = events(&unknown.to_sse(true));
        let usage_chunks = evs
            .iter()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(e).ok())
            .filter(|v| v["choices"] == serde_json::json!([]))
            .count();
        assert_eq!(usage_chunks, 0, "no usage chunk");
        let mut asm = StreamAssembler::new(1 << 20);
        for e in &evs {
            asm.event(e);
        }
        assert_eq!(asm.finish(), Some(unknown));
    }

    #[test]
    fn tool_calls_survive_both_forms() {
        let mut a = answer();
        a.choices[0].content = None;
        a.choices[0].finish_reason = Some("tool_calls".into());
        a.choices[0].tool_calls = vec![
            ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            },
            ToolCall {
                id: "call_2".into(),
                name: "get_time".into(),
                arguments: "{}".into(),
            },
        ];
        assert_eq!(Completion::from_json(&a.to_json()).as_ref(), Some(&a));
        let mut asm = StreamAssembler::new(1 << 20);
        for e in events(&a.to_sse(true)) {
            asm.event(&e);
        }
        assert_eq!(asm.finish(), Some(a));
    }

    #[test]
    fn streamed_fragments_are_joined() {
        let mut asm = StreamAssembler::new(1 << 20);
        let evs = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ];
        for e in evs {
            asm.event(e.as_bytes());
        }
        let c = asm.finish().unwrap();
        assert_eq!(c.choices[0].tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(c.choices[0].tool_calls[0].id, "call_a");
        assert_eq!(c.usage, None);
    }

    #[test]
    fn unfinished_or_failed_streams_give_nothing() {
        let a = answer();
        let evs = events(&a.to_sse(false));
        // No [DONE].
        let mut asm = StreamAssembler::new(1 << 20);
        for e in &evs[..evs.len() - 1] {
            asm.event(e);
        }
        assert_eq!(asm.finish(), None);
        // An error event.
        let mut asm = StreamAssembler::new(1 << 20);
        asm.event(&evs[0]);
        assert_eq!(
            asm.event(br#"{"error":{"message":"x","type":"server_error"}}"#),
            EventKind::Other
        );
        asm.event(b"[DONE]");
        assert_eq!(asm.finish(), None);
        // Too long to keep.
        let mut asm = StreamAssembler::new(4);
        for e in &evs {
            asm.event(e);
        }
        assert_eq!(asm.finish(), None);
    }

    #[test]
    fn non_completions_are_not_read_as_answers() {
        assert_eq!(
            Completion::from_json(b"{\"error\":{\"message\":\"x\"}}"),
            None
        );
        assert_eq!(Completion::from_json(b"{\"object\":\"list\"}"), None);
        assert_eq!(Completion::from_json(b"not json"), None);
    }
}
