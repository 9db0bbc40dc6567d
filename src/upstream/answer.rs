//! Reading an upstream's answer while it passes to the client.
//!
//! The gateway relays bytes as they arrive and, on the side, keeps what accounting and the cache
//! need: the usage, and the complete answer. A stream is cut into SSE events with a buffer, since
//! an event may be split across reads; when the gateway asked for the usage chunk on the client's
//! behalf (`stream_options.include_usage`), that one event is taken out of what the client gets.

use bytes::{Bytes, BytesMut};

use crate::api::{
    ApiError, Chunk, ChunkSink, Completion, EventKind, StreamAssembler, Usage, DONE_EVENT,
};

/// The longest SSE event buffered; a stream whose event grows past it is relayed without being
/// read, so a misbehaving upstream cannot make the gateway hold unbounded memory.
const MAX_EVENT: usize = 8 << 20;

/// What an answer turned out to be, once it ended.
#[derive(Debug, Default)]
pub struct Answer {
    /// The complete answer, when it was one (finished, error-free, within the size limit).
    pub completion: Option<Completion>,
    /// The usage the upstream reported.
    pub usage: Option<Usage>,
    /// Bytes of generated output seen, for estimating tokens when no usage came.
    pub output_bytes: usize,
    /// The body as received, for a JSON answer kept whole (what a cache hit replays verbatim).
    pub json: Option<Bytes>,
}

/// Watches one answer's body.
pub struct AnswerReader {
    mode: Mode,
}

enum Mode {
    Json {
        parts: Vec<Bytes>,
        len: usize,
        limit: usize,
    },
    Sse {
        /// Bytes not yet cut into events.
        pending: BytesMut,
        assembler: StreamAssembler,
        /// Drop the usage-only event from what the client gets.
        strip_usage: bool,
        /// Only the usage and the output's size are wanted: events without usage are scanned,
        /// not parsed.
        tally: Option<Tally>,
    },
    /// A stream the gateway writes itself from typed chunks (a translated one).
    Written {
        /// Rendered, not yet taken.
        out: Vec<u8>,
        assembler: StreamAssembler,
        strip_usage: bool,
    },
}

impl AnswerReader {
    /// A reader for a JSON answer, kept whole up to `limit` bytes.
    pub fn json(limit: usize) -> AnswerReader {
        AnswerReader {
            mode: Mode::Json {
                parts: Vec::new(),
                len: 0,
                limit,
            },
        }
    }

    /// A reader for an SSE stream, keeping up to `limit` bytes of output text; `strip_usage`
    /// removes the usage chunk the client did not ask for.
    pub fn sse(limit: usize, strip_usage: bool) -> AnswerReader {
        AnswerReader {
            mode: Mode::Sse {
                pending: BytesMut::new(),
                assembler: StreamAssembler::new(limit),
                strip_usage,
                tally: None,
            },
        }
    }

    /// Reads an SSE stream for its usage and size only, when nothing needs the answer itself
    /// (it will not be cached, judged or traced): only the events that carry usage (the last
    /// ones) are parsed, the others scanned for the length of their text. [`Answer::completion`]
    /// is then `None`.
    pub fn tally_only(mut self) -> AnswerReader {
        if let Mode::Sse { tally, .. } = &mut self.mode {
            *tally = Some(Tally::default());
        }
        self
    }

    /// A reader for a stream the gateway writes from typed chunks ([`ChunkSink`]); `take` gives
    /// what the client gets of it.
    pub fn written(limit: usize, strip_usage: bool) -> AnswerReader {
        AnswerReader {
            mode: Mode::Written {
                out: Vec::new(),
                assembler: StreamAssembler::new(limit),
                strip_usage,
            },
        }
    }

    /// What was written since the last call, for the client.
    pub fn take(&mut self) -> Bytes {
        match &mut self.mode {
            Mode::Written { out, .. } => Bytes::from(std::mem::take(out)),
            _ => Bytes::new(),
        }
    }

    /// Reads `chunk` and returns what the client gets of it now.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.mode {
            Mode::Json { parts, len, limit } => {
                *len += chunk.len();
                if *len <= *limit {
                    parts.push(chunk.clone());
                }
                chunk
            }
            Mode::Sse {
                pending,
                assembler,
                strip_usage,
                tally,
            } => {
                pending.extend_from_slice(&chunk);
                if !*strip_usage {
                    while let Some(end) = event_end(pending) {
                        look(assembler, tally, &pending[..end]);
                        bytes::Buf::advance(pending, end);
                    }
                    if pending.len() > MAX_EVENT {
                        // Nothing is held back here: forget the unreadable event.
                        pending.clear();
                        assembler.give_up();
                    }
                    return chunk;
                }
                // Pass on whole events only, so the usage event can be left out.
                let mut out = BytesMut::new();
                while let Some(event) = next_event(pending) {
                    if look(assembler, tally, &event) != EventKind::UsageOnly {
                        out.extend_from_slice(&event);
                    }
                }
                if pending.len() > MAX_EVENT {
                    // An event this long is no chat chunk: pass it on as it is, and stop
                    // holding bytes back.
                    *strip_usage = false;
                    assembler.give_up();
                    out.extend_from_slice(&pending.split());
                }
                out.freeze()
            }
            Mode::Written { .. } => chunk,
        }
    }

    /// Bytes held back at the end of the body (an event with no blank line after it), which
    /// the client still gets.
    pub fn rest(&mut self) -> Option<Bytes> {
        match &mut self.mode {
            Mode::Sse {
                pending,
                strip_usage: true,
                ..
            } if !pending.is_empty() => Some(pending.split().freeze()),
            _ => None,
        }
    }

    /// What the answer was, after its last byte.
    pub fn finish(self) -> Answer {
        match self.mode {
            Mode::Json { parts, len, limit } => {
                if len > limit {
                    return Answer::default();
                }
                let body = match parts.len() {
                    1 => parts.into_iter().next().unwrap_or_default(),
                    _ => {
                        let mut whole = BytesMut::with_capacity(len);
                        for p in &parts {
                            whole.extend_from_slice(p);
                        }
                        whole.freeze()
                    }
                };
                let completion = Completion::from_json(&body);
                Answer {
                    usage: completion.as_ref().and_then(|c| c.usage),
                    output_bytes: completion.as_ref().map_or(0, Completion::output_chars),
                    json: completion.as_ref().map(|_| body),
                    completion,
                }
            }
            Mode::Written { assembler, .. } => Answer {
                usage: assembler.usage(),
                output_bytes: assembler.output_bytes(),
                completion: assembler.finish(),
                json: None,
            },
            Mode::Sse {
                mut pending,
                mut assembler,
                mut tally,
                ..
            } => {
                // A last event may lack its blank line.
                if !pending.is_empty() {
                    pending.extend_from_slice(b"\n\n");
                    while let Some(event) = next_event(&mut pending) {
                        look(&mut assembler, &mut tally, &event);
                    }
                }
                let scanned = tally.as_ref().map_or(0, |t| t.output_bytes);
                Answer {
                    usage: assembler.usage(),
                    output_bytes: assembler.output_bytes() + scanned,
                    completion: assembler.finish().filter(|_| tally.is_none()),
                    json: None,
                }
            }
        }
    }
}

impl ChunkSink for AnswerReader {
    fn chunk(&mut self, chunk: &Chunk<'_>) {
        if let Mode::Written {
            out,
            assembler,
            strip_usage,
        } = &mut self.mode
        {
            if assembler.chunk(chunk) != EventKind::UsageOnly || !*strip_usage {
                chunk.write_sse(out);
            }
        }
    }

    fn done(&mut self) {
        if let Mode::Written { out, assembler, .. } = &mut self.mode {
            assembler.done();
            out.extend_from_slice(DONE_EVENT);
        }
    }

    fn error(&mut self, error: &ApiError) {
        if let Mode::Written { out, assembler, .. } = &mut self.mode {
            assembler.fail();
            out.extend_from_slice(&error.to_sse_event());
        }
    }
}

/// What a tally-only reader has counted of the events it did not parse.
#[derive(Debug, Default)]
struct Tally {
    /// The length of their text and tool-call arguments, as written (escapes included).
    output_bytes: usize,
}

/// Reads one event: parsed when it may carry usage or nothing but a tally is kept, else only
/// measured.
fn look(assembler: &mut StreamAssembler, tally: &mut Option<Tally>, event: &[u8]) -> EventKind {
    match tally {
        Some(t) if !carries_usage(event) => {
            t.output_bytes += text_bytes(event);
            EventKind::Chunk
        }
        _ => read_event(assembler, event),
    }
}

/// Whether an event holds a `"usage"` object (not `"usage": null`). A text that merely
/// mentions the word is escaped (`\"usage\"`) and does not match; a key spelled with `\u`
/// escapes is missed (no upstream writes one), which costs only the usage's precision.
fn carries_usage(event: &[u8]) -> bool {
    let mut rest = event;
    while let Some(at) = memchr::memmem::find(rest, b"\"usage\"") {
        rest = &rest[at + 7..];
        let after = rest.trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            if value.trim_ascii_start().first() == Some(&b'{') {
                return true;
            }
        }
    }
    false
}

/// The length of the `content`, `refusal` and `arguments` strings of an event, escapes
/// included (an estimate of the output's size, used only when no usage arrives).
fn text_bytes(event: &[u8]) -> usize {
    let mut total = 0;
    for key in [&b"\"content\""[..], b"\"refusal\"", b"\"arguments\""] {
        let mut rest = event;
        while let Some(at) = memchr::memmem::find(rest, key) {
            rest = &rest[at + key.len()..];
            let value = rest.trim_ascii_start();
            let Some(value) = value.strip_prefix(b":") else {
                continue;
            };
            let Some(string) = value.trim_ascii_start().strip_prefix(b"\"") else {
                continue;
            };
            let len = string_len(string);
            total += len;
            rest = &string[len..];
        }
    }
    total
}

/// The length of a JSON string's body up to its closing quote (or the end).
fn string_len(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(at) = memchr::memchr2(b'"', b'\\', &s[i..]) {
        i += at;
        if s[i] == b'"' {
            return i;
        }
        i += 2;
        if i >= s.len() {
            return s.len();
        }
    }
    s.len()
}

/// Cuts the next complete event (through its blank line) off the front of `buf`.
fn next_event(buf: &mut BytesMut) -> Option<Bytes> {
    let end = event_end(buf)?;
    Some(buf.split_to(end).freeze())
}

/// The end of the first event in `buf`: just past the first empty line (`\n\n`, `\r\n\r\n`,
/// or a mix).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + nl + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// Hands an event's data to the assembler.
fn read_event(assembler: &mut StreamAssembler, event: &[u8]) -> EventKind {
    let mut data: Option<Vec<u8>> = None;
    let mut single: Option<&[u8]> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        // Most events have one data line: read it in place.
        match (&mut data, single) {
            (None, None) => single = Some(value),
            (None, Some(first)) => {
                let mut joined = first.to_vec();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                data = Some(joined);
            }
            (Some(joined), _) => {
                joined.push(b'\n');
                joined.extend_from_slice(value);
            }
        }
    }
    match (data, single) {
        (Some(joined), _) => assembler.event(&joined),
        (None, Some(one)) => assembler.event(one),
        (None, None) => EventKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Choice, Completion, Usage};

    fn answer() -> Completion {
        Completion {
            id: "chatcmpl-9".into(),
            created: 5,
            model: "m".into(),
            system_fingerprint: None,
            choices: vec![Choice {
                index: 0,
                content: Some("Paris is the capital.".into()),
                finish_reason: Some("stop".into()),
                ..Choice::default()
            }],
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
            }),
        }
    }

    /// Feeds `bytes` in pieces of `size`, returning what the client got and the answer.
    fn feed_split(mut reader: AnswerReader, bytes: &[u8], size: usize) -> (Vec<u8>, Answer) {
        let mut out = Vec::new();
        for piece in bytes.chunks(size) {
            out.extend_from_slice(&reader.feed(Bytes::copy_from_slice(piece)));
        }
        if let Some(rest) = reader.rest() {
            out.extend_from_slice(&rest);
        }
        (out, reader.finish())
    }

    #[test]
    fn a_stream_split_anywhere_is_relayed_whole_and_read() {
        let a = answer();
        let sse = a.to_sse(true);
        for size in [1, 2, 7, 64, sse.len()] {
            let (out, got) = feed_split(AnswerReader::sse(1 << 20, false), &sse, size);
            assert_eq!(out, sse, "size {size}");
            assert_eq!(got.completion.as_ref(), Some(&a), "size {size}");
            assert_eq!(got.usage, a.usage);
        }
    }

    #[test]
    fn the_usage_chunk_the_client_did_not_ask_for_is_removed() {
        let a = answer();
        for size in [1, 3, 50, 10_000] {
            let (out, got) = feed_split(AnswerReader::sse(1 << 20, true), &a.to_sse(true), size);
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("\"choices\":[]"), "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            assert_eq!(got.usage, a.usage, "the gateway still reads it");
        }
    }

    #[test]
    fn a_tally_reads_the_usage_and_the_size_without_the_answer() {
        let mut a = answer();
        a.choices[0].content = Some("She said \"usage\": {fine} \\ ok".into());
        for strip in [false, true] {
            for size in [1, 5, 64, 10_000] {
                let plain = AnswerReader::sse(1 << 20, strip);
                let (_, whole) = feed_split(plain, &a.to_sse(true), size);
                let tally = AnswerReader::sse(1 << 20, strip).tally_only();
                let (out, got) = feed_split(tally, &a.to_sse(true), size);
                let (expected, _) =
                    feed_split(AnswerReader::sse(1 << 20, strip), &a.to_sse(true), size);
                assert_eq!(out, expected, "the client gets the same bytes");
                assert_eq!(got.usage, a.usage, "strip {strip}, size {size}");
                assert!(got.completion.is_none());
                // Escapes count as written: close to the text's size, never far.
                let text = whole.output_bytes;
                assert!(
                    got.output_bytes >= text && got.output_bytes <= text + 4,
                    "{} vs {text}",
                    got.output_bytes
                );
            }
        }
        // Without a usage event, the size still comes out.
        let (_, got) = feed_split(
            AnswerReader::sse(1 << 20, false).tally_only(),
            &a.to_sse(false),
            7,
        );
        assert_eq!(got.usage, None);
        assert!(got.output_bytes > 20);
    }

    #[test]
    fn usage_objects_are_told_from_nulls_and_mentions() {
        assert!(carries_usage(
            br#"data: {"choices":[],"usage": {"prompt_tokens":1}}"#
        ));
        assert!(carries_usage(br#"data: {"usage" :{"a":1}}"#));
        assert!(!carries_usage(
            br#"data: {"choices":[{"delta":{"content":"x"}}],"usage":null}"#
        ));
        assert!(!carries_usage(
            br#"data: {"delta":{"content":"the \"usage\": {x}"}}"#
        ));
        assert_eq!(text_bytes(br#"{"content":"ab\"c","arguments": "{}"}"#), 7);
        assert_eq!(text_bytes(br#"{"content":null}"#), 0);
        assert_eq!(text_bytes(br#"{"content":"unterminated\"#), 13);
    }

    #[test]
    fn crlf_events_and_multi_line_data_are_read() {
        let a = answer();
        let sse = String::from_utf8(a.to_sse(false))
            .unwrap()
            .replace("\n\n", "\r\n\r\n");
        let (out, got) = feed_split(AnswerReader::sse(1 << 20, true), sse.as_bytes(), 5);
        assert_eq!(out, sse.as_bytes());
        assert_eq!(
            got.completion.unwrap().choices[0].content,
            a.choices[0].content
        );

        let mut asm = StreamAssembler::new(100);
        let kind = read_event(&mut asm, b"data: [DO\ndata: NE]\n\n");
        // Two data lines join with a newline, which is not `[DONE]`.
        assert_eq!(kind, EventKind::Other);
    }

    #[test]
    fn a_json_answer_is_kept_whole() {
        let a = answer();
        let body = a.to_json();
        let (out, got) = feed_split(AnswerReader::json(1 << 20), &body, 10);
        assert_eq!(out, body);
        assert_eq!(got.json.as_deref(), Some(&body[..]));
        assert_eq!(got.usage, a.usage);
        assert_eq!(got.output_bytes, "Paris is the capital.".len());
        let (_, too_big) = feed_split(AnswerReader::json(10), &body, 10);
        assert!(too_big.completion.is_none() && too_big.json.is_none());
    }

    #[test]
    fn an_endless_event_is_relayed_unread() {
        let mut reader = AnswerReader::sse(1 << 20, true);
        let start = Bytes::from_static(b"data: {\"x\":\"");
        let mut out = reader.feed(start.clone());
        assert!(out.is_empty(), "held back until the event is whole");
        let junk = Bytes::from(vec![b'a'; MAX_EVENT]);
        out = reader.feed(junk);
        assert_eq!(
            out.len(),
            start.len() + MAX_EVENT,
            "passed on once it is too long"
        );
        assert_eq!(
            reader.feed(Bytes::from_static(b"b")),
            Bytes::from_static(b"b")
        );
        assert!(reader.finish().completion.is_none());
    }

    #[test]
    fn a_stream_without_done_has_usage_but_no_answer() {
        let a = answer();
        let sse = a.to_sse(true);
        let cut = sse.len() - "data: [DONE]\n\n".len();
        let (_, got) = feed_split(AnswerReader::sse(1 << 20, false), &sse[..cut], 9);
        assert!(got.completion.is_none());
        assert_eq!(got.usage, a.usage);
    }
}
