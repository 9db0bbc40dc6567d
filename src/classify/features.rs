//! What the classifier knows about a request: numbers computed in one pass over the parsed view.

use crate::api::{ChatRequest, Role};

/// A numeric feature of a request, by the name rules and the scorer use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Estimated tokens of the whole prompt (every message, with per-message overhead).
    Tokens,
    /// Estimated tokens of the last user message.
    LastUserTokens,
    /// Estimated tokens of system and developer messages.
    SystemTokens,
    /// Estimated tokens of everything before the last user message except system text: earlier
    /// turns and tool results (the part hybrid routing can shorten).
    ContextTokens,
    /// Number of messages.
    Messages,
    /// Number of user messages.
    UserTurns,
    /// Number of tools offered.
    Tools,
    /// 1 when `tool_choice` is given.
    ToolChoice,
    /// 1 when `response_format` is `json_object`.
    JsonObject,
    /// 1 when `response_format` is `json_schema`.
    JsonSchema,
    /// Number of image parts.
    Images,
    /// Number of fenced code blocks (```) in user text.
    CodeBlocks,
    /// Math markers in the last user message: digit-operator-digit runs and TeX commands.
    Math,
    /// Runs of digits in the last user message.
    Numbers,
    /// Question marks in the last user message.
    Questions,
    /// `max_tokens` / `max_completion_tokens`, 0 when absent.
    MaxTokens,
    /// `temperature`, 1 when absent (OpenAI's default).
    Temperature,
    /// 1 when `stream` is true.
    Stream,
    /// Sentences in the last user message.
    Sentences,
    /// Words of nine letters or more in the last user message (a proxy for technical prose).
    LongWords,
    /// Programming markers in the last user message (keywords, fences, call syntax).
    CodeWords,
    /// Reasoning and analysis verbs in the last user message (prove, derive, explain why, …).
    ReasoningWords,
    /// Creative and conversational requests in the last user message (story, poem, pretend, …).
    CreativeWords,
}

impl Feature {
    /// Every feature, in a fixed order (the scorer's weight order).
    pub const ALL: [Feature; 23] = [
        Feature::Tokens,
        Feature::LastUserTokens,
        Feature::SystemTokens,
        Feature::ContextTokens,
        Feature::Messages,
        Feature::UserTurns,
        Feature::Tools,
        Feature::ToolChoice,
        Feature::JsonObject,
        Feature::JsonSchema,
        Feature::Images,
        Feature::CodeBlocks,
        Feature::Math,
        Feature::Numbers,
        Feature::Questions,
        Feature::MaxTokens,
        Feature::Temperature,
        Feature::Stream,
        Feature::Sentences,
        Feature::LongWords,
        Feature::CodeWords,
        Feature::ReasoningWords,
        Feature::CreativeWords,
    ];

    /// The name used in YAML, JSON and the scorer file.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tokens => "tokens",
            Feature::LastUserTokens => "last_user_tokens",
            Feature::SystemTokens => "system_tokens",
            Feature::ContextTokens => "context_tokens",
            Feature::Messages => "messages",
            Feature::UserTurns => "user_turns",
            Feature::Tools => "tools",
            Feature::ToolChoice => "tool_choice",
            Feature::JsonObject => "json_object",
            Feature::JsonSchema => "json_schema",
            Feature::Images => "images",
            Feature::CodeBlocks => "code_blocks",
            Feature::Math => "math",
            Feature::Numbers => "numbers",
            Feature::Questions => "questions",
            Feature::MaxTokens => "max_tokens",
            Feature::Temperature => "temperature",
            Feature::Stream => "stream",
            Feature::Sentences => "sentences",
            Feature::LongWords => "long_words",
            Feature::CodeWords => "code_words",
            Feature::ReasoningWords => "reasoning_words",
            Feature::CreativeWords => "creative_words",
        }
    }

    /// The feature with this name.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The values of every [`Feature`] for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    values: [f64; Feature::ALL.len()],
}

/// Tokens OpenAI's chat format adds per message (role and separators).
const MESSAGE_OVERHEAD: u64 = 4;

impl Features {
    /// Computes the features of `req` in one pass over its messages.
    pub fn of(req: &ChatRequest) -> Features {
        let mut f = Features {
            values: [0.0; Feature::ALL.len()],
        };
        let last_user = req.messages.iter().rposition(|m| m.role == Role::User);
        let (mut total, mut system, mut context, mut users, mut images, mut code) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for (i, m) in req.messages.iter().enumerate() {
            let text = m.content.text();
            let tokens = estimate_tokens(text) + MESSAGE_OVERHEAD;
            total += tokens;
            match m.role {
                Role::System | Role::Developer => system += tokens,
                Role::User => {
                    users += 1;
                    code += (text.matches("```").count() / 2) as u64;
                    if Some(i) != last_user {
                        context += tokens;
                    }
                }
                _ => {
                    if last_user.is_none_or(|l| i < l) {
                        context += tokens;
                    }
                }
            }
            images += m.content.images() as u64;
        }
        let last = last_user.map_or("", |i| req.messages[i].content.text());
        let scan = scan_text(last);
        f.set(Feature::Tokens, total as f64);
        f.set(Feature::LastUserTokens, estimate_tokens(last) as f64);
        f.set(Feature::SystemTokens, system as f64);
        f.set(Feature::ContextTokens, context as f64);
        f.set(Feature::Messages, req.messages.len() as f64);
        f.set(Feature::UserTurns, users as f64);
        f.set(Feature::Tools, req.tools.len() as f64);
        f.set(Feature::ToolChoice, req.tool_choice.is_some() as u8 as f64);
        let format = req.response_format_type();
        f.set(
            Feature::JsonObject,
            (format == Some("json_object")) as u8 as f64,
        );
        f.set(
            Feature::JsonSchema,
            (format == Some("json_schema")) as u8 as f64,
        );
        f.set(Feature::Images, images as f64);
        f.set(Feature::CodeBlocks, code as f64);
        f.set(Feature::Math, scan.math as f64);
        f.set(Feature::Numbers, scan.numbers as f64);
        f.set(Feature::Questions, scan.questions as f64);
        f.set(Feature::MaxTokens, req.max_tokens.unwrap_or(0) as f64);
        f.set(Feature::Temperature, req.temperature.unwrap_or(1.0));
        f.set(Feature::Stream, req.stream as u8 as f64);
        f.set(Feature::Sentences, scan.sentences as f64);
        f.set(Feature::LongWords, scan.long_words as f64);
        let words = keyword_counts(last);
        f.set(Feature::CodeWords, words[0] as f64);
        f.set(Feature::ReasoningWords, words[1] as f64);
        f.set(Feature::CreativeWords, words[2] as f64);
        f
    }

    /// The value of one feature.
    pub fn get(&self, feature: Feature) -> f64 {
        self.values[feature as usize]
    }

    fn set(&mut self, feature: Feature, value: f64) {
        self.values[feature as usize] = value;
    }

    /// Every feature by name, as JSON (the dry run's and the label lines' `features`).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter()
            .map(|(f, v)| (f.name().to_owned(), serde_json::json!(v)))
            .collect()
    }

    /// Every feature with its value, in [`Feature::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, f64)> + '_ {
        Feature::ALL.into_iter().map(|f| (f, self.get(f)))
    }
}

/// Tokens a chat request adds per message for its role and framing, as OpenAI counts them.
pub const PER_MESSAGE: u64 = 3;

/// An estimate of the prompt tokens of a conversation: its messages' text, and the few tokens
/// each message and the reply's start add.
pub fn estimate_prompt_tokens(messages: &[crate::api::Message]) -> u64 {
    let text: u64 = messages
        .iter()
        .map(|m| estimate_tokens(m.content.text()) + PER_MESSAGE)
        .sum();
    text + PER_MESSAGE
}

/// Estimates the tokens of `text` for GPT-4-class and Llama 3 tokenizers without a vocabulary.
///
/// English averages about four bytes per token; characters outside ASCII (CJK, Cyrillic,
/// emoji) take about one token each. The estimate counts ASCII bytes / 4 plus one token per
/// non-ASCII character, rounded up. Its measured error is in the README.
pub fn estimate_tokens(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let ascii = count_bytes(bytes, |b| b < 0x80);
    // Lead bytes of multi-byte characters.
    let other = count_bytes(bytes, |b| b >= 0xC0);
    ascii.div_ceil(4) + other
}

/// Counts the bytes for which `pred` holds. Byte-wide counters over runs of 255 bytes let the
/// compiler test 16 or 32 bytes per instruction; a `u64` counter per byte is several times slower.
fn count_bytes(bytes: &[u8], pred: impl Fn(u8) -> bool) -> u64 {
    bytes
        .chunks(255)
        .map(|chunk| {
            let mut n: u8 = 0;
            for &b in chunk {
                n += u8::from(pred(b));
            }
            u64::from(n)
        })
        .sum()
}

struct Scan {
    math: u64,
    numbers: u64,
    questions: u64,
    sentences: u64,
    long_words: u64,
}

/// The keyword group of a lowercase word: 0 code, 1 reasoning, 2 creative or conversational.
fn keyword_group(word: &[u8]) -> Option<usize> {
    match word {
        b"def" | b"fn" | b"func" | b"class" | b"struct" | b"impl" | b"import" | b"return"
        | b"function" | b"const" | b"let" | b"var" | b"public" | b"static" | b"void"
        | b"select" | b"where" | b"python" | b"javascript" | b"typescript" | b"java" | b"rust"
        | b"golang" | b"sql" | b"regex" | b"api" | b"code" | b"program" | b"script"
        | b"compile" | b"bug" | b"debug" | b"refactor" | b"implement" => Some(0),
        b"prove" | b"proof" | b"derive" | b"derivation" | b"theorem" | b"lemma" | b"justify"
        | b"analyze" | b"analyse" | b"evaluate" | b"compare" | b"contrast" | b"reason"
        | b"reasoning" | b"deduce" | b"infer" | b"implies" | b"probability" | b"integral"
        | b"derivative" | b"equation" | b"optimize" | b"optimise" | b"algorithm"
        | b"complexity" | b"calculate" | b"solve" => Some(1),
        b"story" | b"poem" | b"poetry" | b"haiku" | b"song" | b"lyrics" | b"joke" | b"pretend"
        | b"imagine" | b"roleplay" | b"character" | b"persona" | b"blog" | b"email" | b"letter"
        | b"slogan" | b"tweet" | b"rewrite" | b"rephrase" | b"paraphrase" | b"translate"
        | b"summarize" | b"summarise" | b"greet" | b"hello" | b"hi" | b"thanks" => Some(2),
        _ => None,
    }
}

/// Counts code, reasoning and creative keywords in one pass over the words of `text`, plus
/// code punctuation (fences, arrows, empty calls, includes) that no word shows.
fn keyword_counts(text: &str) -> [usize; 3] {
    let mut counts = [0usize; 3];
    let mut word = [0u8; 12];
    for w in text.as_bytes().split(|b| !b.is_ascii_alphanumeric()) {
        if w.is_empty() || w.len() > word.len() {
            continue;
        }
        let lower = &mut word[..w.len()];
        lower.copy_from_slice(w);
        lower.make_ascii_lowercase();
        if let Some(g) = keyword_group(lower) {
            counts[g] += 1;
        }
    }
    counts[0] += ["```", "=>", "->", "()", "#include"]
        .iter()
        .map(|m| text.matches(m).count())
        .sum::<usize>();
    counts
}

/// One byte pass over the last user message for math markers, numbers and questions.
fn scan_text(text: &str) -> Scan {
    let b = text.as_bytes();
    let mut s = Scan {
        math: 0,
        numbers: 0,
        questions: 0,
        sentences: 0,
        long_words: 0,
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            s.numbers += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b',') {
                i += 1;
            }
            // digit [spaces] operator [spaces] digit
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j < b.len()
                && matches!(
                    b[j],
                    b'+' | b'-' | b'*' | b'/' | b'^' | b'=' | b'%' | b'<' | b'>'
                )
            {
                j += 1;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if j < b.len()
                    && (b[j].is_ascii_digit() || b[j].is_ascii_alphabetic() || b[j] == b'(')
                {
                    s.math += 1;
                }
            }
            continue;
        }
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            if i - start >= 9 {
                s.long_words += 1;
            }
            continue;
        }
        if matches!(c, b'.' | b'!' | b'?') && b.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            s.sentences += 1;
        }
        match c {
            b'?' => s.questions += 1,
            b'\\' => {
                let rest = &b[i + 1..];
                if [
                    &b"frac"[..],
                    b"sqrt",
                    b"int",
                    b"sum",
                    b"prod",
                    b"lim",
                    b"cdot",
                    b"times",
                    b"pi",
                ]
                .iter()
                .any(|cmd| rest.starts_with(cmd))
                {
                    s.math += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn features(body: serde_json::Value) -> Features {
        Features::of(&ChatRequest::parse(Bytes::from(body.to_string())).unwrap())
    }

    #[test]
    fn counts_what_a_request_carries() {
        let f = features(serde_json::json!({
            "model": "auto", "stream": true, "max_tokens": 99, "temperature": 0,
            "tools": [{}, {}], "tool_choice": "auto",
            "response_format": {"type": "json_schema", "json_schema": {}},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question?"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "What is 12 + 30? And \\frac{1}{2}?"},
                                              {"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        }));
        assert_eq!(f.get(Feature::Messages), 4.0);
        assert_eq!(f.get(Feature::UserTurns), 2.0);
        assert_eq!(f.get(Feature::Tools), 2.0);
        assert_eq!(f.get(Feature::ToolChoice), 1.0);
        assert_eq!(f.get(Feature::JsonSchema), 1.0);
        assert_eq!(f.get(Feature::JsonObject), 0.0);
        assert_eq!(f.get(Feature::Images), 1.0);
        assert_eq!(f.get(Feature::Math), 2.0, "12 + 30 and \\frac");
        assert_eq!(f.get(Feature::Numbers), 4.0, "12, 30, 1, 2");
        assert_eq!(f.get(Feature::Questions), 2.0);
        assert_eq!(f.get(Feature::MaxTokens), 99.0);
        assert_eq!(f.get(Feature::Temperature), 0.0);
        assert_eq!(f.get(Feature::Stream), 1.0);
        assert_eq!(f.get(Feature::SystemTokens), (3 + 4) as f64);
        let context = estimate_tokens("first question?") + estimate_tokens("an answer") + 8;
        assert_eq!(f.get(Feature::ContextTokens), context as f64);
        let total: f64 = [
            "Be brief.",
            "first question?",
            "an answer",
            "What is 12 + 30? And \\frac{1}{2}?",
        ]
        .iter()
        .map(|t| (estimate_tokens(t) + 4) as f64)
        .sum();
        assert_eq!(f.get(Feature::Tokens), total);
    }

    #[test]
    fn defaults_when_absent() {
        let f = features(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "```a``` ```b```"}]}),
        );
        assert_eq!(f.get(Feature::Temperature), 1.0);
        assert_eq!(f.get(Feature::MaxTokens), 0.0);
        assert_eq!(f.get(Feature::CodeBlocks), 2.0);
        assert_eq!(f.get(Feature::ContextTokens), 0.0);
    }

    #[test]
    fn token_estimate() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("日本語"), 3);
    }

    #[test]
    fn names_round_trip() {
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(f));
        }
        assert_eq!(Feature::from_name("colour"), None);
    }
}
