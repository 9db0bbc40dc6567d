//! Finding what a hybrid request can lose weight on: long system messages, long tool results,
//! long earlier user messages, the document part of the last user message, and the turns of a
//! conversation older than the ones kept. What is never touched: the question itself, message
//! order and roles, a tool call and its result as a pair, images, and anything short.

use std::ops::Range;

use crate::api::{ChatRequest, Content, Message, Part as ContentPart, Role};
use crate::classify::estimate_tokens;
use crate::config::HybridConfig;

/// Up to this many tokens of trailing paragraphs count as the question of a message whose
/// document is not marked.
const QUESTION_TOKENS: u64 = 200;

/// A leading paragraph this short (an introduction such as "Answer from these documents:") stays
/// when the rest of its message is shortened.
const INTRO_TOKENS: u64 = 60;

/// What a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A system (or developer) message, or the document in one.
    System,
    /// A tool's result.
    ToolResult,
    /// An earlier user message (kept turns only).
    User,
    /// The document part of the last user message.
    Document,
    /// The conversation's older turns, which become one summary message.
    History,
}

impl Kind {
    /// The spelling in `/v1/route` and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::ToolResult => "tool_result",
            Kind::User => "user",
            Kind::Document => "document",
            Kind::History => "history",
        }
    }
}

/// One part to shorten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is.
    pub kind: Kind,
    /// Where it is.
    pub at: At,
    /// Its estimated tokens.
    pub tokens: u64,
}

/// Where a part is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// A byte range of one message's text.
    Text {
        /// The message's index.
        message: usize,
        /// The range in its text.
        range: Range<usize>,
    },
    /// The messages in this range, replaced by one summary message.
    Turns(Range<usize>),
}

/// Why a message was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Shorter than `min_part_tokens`.
    Short,
    /// It carries images (or parts the gateway does not read).
    Images,
}

/// What the stage would shorten in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The question the parts are read against: the last user message without its document.
    pub question: String,
    /// The parts, in message order (history first).
    pub parts: Vec<Part>,
    /// Messages long enough to shorten that were left alone, and why.
    pub left: Vec<(usize, Left)>,
}

/// Finds the parts of `req` worth shortening.
pub fn find(req: &ChatRequest, config: &HybridConfig) -> Plan {
    let messages = &req.messages;
    let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) else {
        return Plan::default();
    };
    let mut plan = Plan::default();
    let min = config.min_part_tokens;

    // The question, and the document in front of it.
    let last = &messages[last_user];
    let text = last.content.text();
    plan.question = text.to_owned();
    if estimate_tokens(text) >= min {
        match readable(last) {
            Err(why) => plan.left.push((last_user, why)),
            Ok(text) => {
                if let Some((doc, question)) = split_question(text, &config.markers) {
                    plan.question = question;
                    let tokens = estimate_tokens(&text[doc.clone()]);
                    if tokens >= min {
                        plan.parts.push(Part {
                            kind: Kind::Document,
                            at: At::Text {
                                message: last_user,
                                range: doc,
                            },
                            tokens,
                        });
                    }
                }
            }
        }
    }

    // The older turns: everything from the first non-system message up to the first of the
    // turns kept (a turn starts at a user message, so a tool call stays with its result).
    let first = messages
        .iter()
        .position(|m| !m.role.is_system())
        .unwrap_or(messages.len());
    let user_starts: Vec<usize> = (first..=last_user)
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    let keep = config.keep_last_turns.max(1);
    let cut = if user_starts.len() > keep {
        user_starts[user_starts.len() - keep]
    } else {
        first
    };
    let mut history_done = false;
    if cut > first + 1 {
        let turns = &messages[first..cut];
        let tokens: u64 = turns.iter().map(message_tokens).sum();
        if tokens >= min {
            if let Some(i) = (first..cut).find(|&i| readable(&messages[i]).is_err()) {
                plan.left.push((i, Left::Images));
            } else {
                plan.parts.push(Part {
                    kind: Kind::History,
                    at: At::Turns(first..cut),
                    tokens,
                });
                history_done = true;
            }
        }
    }

    // Long single messages outside the history and the last user message.
    for (i, m) in messages.iter().enumerate() {
        let in_history = history_done && (first..cut).contains(&i);
        if i == last_user || in_history || m.role == Role::Assistant {
            continue;
        }
        let kind = match m.role {
            Role::System | Role::Developer => Kind::System,
            Role::Tool | Role::Function => Kind::ToolResult,
            _ => Kind::User,
        };
        let tokens = message_tokens(m);
        if tokens < min {
            continue;
        }
        let text = match readable(m) {
            Ok(text) => text,
            Err(why) => {
                plan.left.push((i, why));
                continue;
            }
        };
        let range = document_in(text, &config.markers);
        let tokens = estimate_tokens(&text[range.clone()]);
        if tokens < min {
            plan.left.push((i, Left::Short));
            continue;
        }
        plan.parts.push(Part {
            kind,
            at: At::Text { message: i, range },
            tokens,
        });
    }
    plan.parts.sort_by_key(|p| match &p.at {
        At::Turns(r) => (r.start, 0),
        At::Text { message, range } => (*message, range.start + 1),
    });
    plan
}

/// The text of a part: a range of a message, or the older turns as a transcript.
pub fn text_of<'r>(req: &'r ChatRequest, part: &Part) -> std::borrow::Cow<'r, str> {
    match &part.at {
        At::Text { message, range } => {
            std::borrow::Cow::Borrowed(&req.messages[*message].content.text()[range.clone()])
        }
        At::Turns(range) => std::borrow::Cow::Owned(transcript(&req.messages[range.clone()])),
    }
}

/// Turns as plain text, one speaker per paragraph, tool calls spelled out.
pub fn transcript(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(m.role.as_str());
        out.push_str(": ");
        out.push_str(m.content.text());
        for call in &m.tool_calls {
            out.push_str(&format!("\n(calls {}({}))", call.name, call.arguments));
        }
    }
    out
}

/// The conversation with each part replaced by its shortened text (`texts`, in the plan's
/// order): a range of a message by the text, the older turns by one system message.
pub fn apply(req: &ChatRequest, plan: &Plan, texts: &[String]) -> Vec<Message> {
    let mut messages = req.messages.clone();
    let mut turns = None;
    for (part, short) in plan.parts.iter().zip(texts) {
        match &part.at {
            At::Text { message, range } => {
                let m = &mut messages[*message];
                let text = m.content.text();
                let mut new = String::with_capacity(text.len() - range.len() + short.len());
                new.push_str(&text[..range.start]);
                new.push_str(short);
                new.push_str(&text[range.end..]);
                m.content = Content::Text(new);
            }
            At::Turns(range) => turns = Some((range.clone(), short)),
        }
    }
    if let Some((range, summary)) = turns {
        let text = format!("Summary of the earlier conversation:\n{summary}");
        let message = Message::text(Role::System, text);
        messages.splice(range, [message]);
    }
    messages
}

/// A message's text when the stage may rewrite it: plain text, or text parts only.
fn readable(m: &Message) -> Result<&str, Left> {
    match &m.content {
        Content::Parts { parts, text } => {
            if parts.iter().all(|p| matches!(p, ContentPart::Text(_))) {
                Ok(text)
            } else {
                Err(Left::Images)
            }
        }
        other => Ok(other.text()),
    }
}

/// A message's estimated tokens, tool calls included.
fn message_tokens(m: &Message) -> u64 {
    estimate_tokens(m.content.text())
        + m.tool_calls
            .iter()
            .map(|c| estimate_tokens(&c.arguments) + 8)
            .sum::<u64>()
}

/// The document in a message that is all document but for a short introduction: the marked
/// part when markers say where it is, else everything after a short first paragraph.
fn document_in(text: &str, markers: &[String]) -> Range<usize> {
    if let Some(range) = marked(text, markers) {
        return range;
    }
    let body = trimmed(text, 0..text.len());
    if let Some(end) = text[body.clone()].find("\n\n").map(|e| body.start + e) {
        if estimate_tokens(&text[body.start..end]) <= INTRO_TOKENS {
            return trimmed(text, end..body.end);
        }
    }
    body
}

/// Splits the last user message into its document and its question: the marked document, or
/// (without markers) the long part before the trailing paragraphs that hold the question.
/// Returns the document's range and the question's text (the message without the document and
/// its markers); `None` when there is no document to split off.
pub fn split_question(text: &str, markers: &[String]) -> Option<(Range<usize>, String)> {
    let doc = match marked(text, markers) {
        Some(range) => range,
        None => {
            // Without markers, the closing paragraphs must hold a question: a long text to
            // translate or rewrite has none, and must reach the cloud whole.
            let body = trimmed(text, 0..text.len());
            let start = question_start(&text[body.clone()])? + body.start;
            if !asks(&text[start..body.end]) {
                return None;
            }
            trimmed(text, body.start..start)
        }
    };
    if doc.is_empty() {
        return None;
    }
    let mut question = String::with_capacity(text.len() - doc.len() + 1);
    question.push_str(&text[..doc.start]);
    question.push('\n');
    question.push_str(&text[doc.end..]);
    let mut question = question.trim().to_owned();
    for m in markers {
        question = question.replace(m.as_str(), " ");
        question = question.replace(&closing(m), " ");
    }
    let question = question.split_whitespace().collect::<Vec<_>>().join(" ");
    Some((doc, question))
}

/// Whether a text asks something: a question mark, or an opening word that asks or instructs.
fn asks(text: &str) -> bool {
    const OPENINGS: [&str; 24] = [
        "what",
        "how",
        "why",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "is",
        "are",
        "can",
        "could",
        "does",
        "do",
        "should",
        "would",
        "explain",
        "summarize",
        "list",
        "describe",
        "compare",
        "answer",
        "tell",
    ];
    if text.contains('?') {
        return true;
    }
    let first = text
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_lowercase();
    OPENINGS.contains(&first.as_str())
}

/// Where the question begins in a text without markers: the trailing paragraphs up to the
/// first (from the end) that asks something, within [`QUESTION_TOKENS`]; or the last
/// sentences when the text is one paragraph.
fn question_start(text: &str) -> Option<usize> {
    let mut end = text.len();
    let mut tokens = 0;
    for (at, _) in text.rmatch_indices("\n\n") {
        let paragraph = &text[at..end];
        tokens += estimate_tokens(paragraph);
        if tokens > QUESTION_TOKENS {
            break;
        }
        if asks(paragraph) {
            return Some(at).filter(|&a| a > 0);
        }
        end = at;
    }
    // One paragraph (or no paragraph that asks): its last sentences.
    let mut cut = None;
    for (at, _) in text.match_indices(['.', '?', '!']) {
        let after = &text[at + 1..];
        if after.starts_with(char::is_whitespace) && estimate_tokens(after) <= QUESTION_TOKENS {
            cut = Some(at + 1);
            break;
        }
    }
    cut.filter(|&c| c > 0 && c < text.len())
}

/// The range a marker gives: the inside of `<tag>…</tag>` (first opening to last closing), the
/// fenced blocks (first fence to last), or the text after a `Label:` line prefix (up to a
/// `Question:` line, or the trailing question paragraphs).
fn marked(text: &str, markers: &[String]) -> Option<Range<usize>> {
    let lower = text.to_ascii_lowercase();
    for m in markers {
        let m_lower = m.to_ascii_lowercase();
        if m.starts_with('<') && m.ends_with('>') {
            let close = closing(&m_lower);
            let (Some(open), Some(end)) = (lower.find(&m_lower), lower.rfind(&close)) else {
                continue;
            };
            let start = open + m_lower.len();
            if start < end {
                return Some(trimmed(text, start..end));
            }
        } else if m.chars().all(|c| c == '`' || c == '~') {
            let (Some(open), Some(close)) = (text.find(m.as_str()), text.rfind(m.as_str())) else {
                continue;
            };
            if open < close {
                return Some(open..close + m.len());
            }
        } else if let Some(at) = line_start(&lower, &m_lower) {
            let start = at + m.len();
            let rest = &lower[start..];
            let end = ["\nquestion:", "\nquestion :", "\nq:", "\nquery:"]
                .iter()
                .filter_map(|q| rest.find(q))
                .min()
                .map(|e| start + e)
                .or_else(|| question_start(&text[start..]).map(|q| start + q))
                .unwrap_or(text.len());
            if start < end {
                return Some(trimmed(text, start..end));
            }
        }
    }
    None
}

/// Where `needle` starts a line of `hay`.
fn line_start(hay: &str, needle: &str) -> Option<usize> {
    hay.match_indices(needle)
        .map(|(at, _)| at)
        .find(|&at| at == 0 || hay.as_bytes()[at - 1] == b'\n')
}

/// `</tag>` for `<tag>`.
fn closing(marker: &str) -> String {
    match marker.strip_prefix('<') {
        Some(rest) if marker.ends_with('>') => format!("</{rest}"),
        _ => marker.to_owned(),
    }
}

/// `range` without the whitespace at its ends.
fn trimmed(text: &str, range: Range<usize>) -> Range<usize> {
    let inner = &text[range.clone()];
    let start = range.start + (inner.len() - inner.trim_start().len());
    let end = range.end - (inner.len() - inner.trim_end().len());
    start..end.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn config() -> HybridConfig {
        HybridConfig {
            min_part_tokens: 50,
            keep_last_turns: 2,
            ..HybridConfig::default()
        }
    }

    fn request(messages: serde_json::Value) -> ChatRequest {
        let body = json!({"model": "auto", "messages": messages}).to_string();
        ChatRequest::parse(Bytes::from(body)).expect("valid request")
    }

    fn doc(words: usize) -> String {
        (0..words)
            .map(|i| format!("Sentence {i} says something about the library."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_marked_document_is_split_from_its_question() {
        let d = doc(40);
        for (text, question) in [
            (
                format!("<context>\n{d}\n</context>\nWhat does sentence 3 say?"),
                "What does sentence 3 say?",
            ),
            (
                format!("Context:\n{d}\n\nQuestion: What does sentence 3 say?"),
                "Question: What does sentence 3 say?",
            ),
            (
                format!("Use this:\n```\n{d}\n```\nWhat does sentence 3 say?"),
                "Use this: What does sentence 3 say?",
            ),
            (
                format!("{d}\n\nWhat does sentence 3 say?"),
                "What does sentence 3 say?",
            ),
        ] {
            let req = request(json!([{"role": "user", "content": text}]));
            let plan = find(&req, &config());
            assert_eq!(plan.question, question, "{text}");
            assert_eq!(plan.parts.len(), 1, "{text}");
            assert_eq!(plan.parts[0].kind, Kind::Document);
            let got = text_of(&req, &plan.parts[0]).into_owned();
            assert!(
                got.contains("Sentence 0") && got.contains("Sentence 39"),
                "{got}"
            );
            assert!(
                !got.contains("What does"),
                "the question is never a part: {got}"
            );
        }
    }

    #[test]
    fn system_tool_and_history_parts_are_found_and_short_or_image_messages_left() {
        let d = doc(40);
        let req = request(json!([
            {"role": "system", "content": format!("Answer from this documentation:\n\n{d}")},
            {"role": "user", "content": format!("first question {d}")},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": d},
            {"role": "user", "content": [{"type": "text", "text": d}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "the question"}
        ]));
        let plan = find(&req, &config());
        let kinds: Vec<Kind> = plan.parts.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [Kind::System, Kind::History]);
        assert_eq!(
            plan.parts[1].at,
            At::Turns(1..6),
            "the tool call stays with its result"
        );
        let system = text_of(&req, &plan.parts[0]).into_owned();
        assert!(
            system.starts_with("Sentence 0"),
            "the introduction stays: {system}"
        );
        assert_eq!(plan.left, [(6, Left::Images)]);
        assert_eq!(plan.question, "the question");

        let mut c = config();
        c.keep_last_turns = 4;
        let plan = find(&req, &c);
        let kinds: Vec<Kind> = plan.parts.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [Kind::System, Kind::User, Kind::ToolResult]);
    }

    #[test]
    fn a_long_text_without_a_question_is_not_split() {
        let text = format!("Translate into French:\n\n{}\n\n{}", doc(40), doc(3));
        let req = request(json!([{"role": "user", "content": text}]));
        assert!(find(&req, &config()).parts.is_empty());
    }

    #[test]
    fn nothing_short_is_touched() {
        let req = request(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"}
        ]));
        let plan = find(&req, &config());
        assert!(plan.parts.is_empty());
        assert_eq!(plan.question, "What is the capital of France?");
    }
}
