//! Token counts where they decide something: the cheap estimate everywhere, and a real
//! byte-pair tokenizer (OpenAI's `cl100k_base` and `o200k_base`) only when the estimate is close
//! enough to a limit that its error could change the decision.
//!
//! The estimate ([`estimate_prompt_tokens`]) is off by 14 % on average and 30 % at p90 per
//! message, so a prompt estimated at half a limit or below fits, and one estimated at twice it or
//! more does not; between the two the vocabulary counts. A long body far from any limit never pays
//! for a tokenization.

use crate::api::Message;
use crate::classify::{estimate_prompt_tokens, PER_MESSAGE};

/// A vocabulary the gateway can count exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary {
    /// GPT-4, GPT-3.5 and the text-embedding-3 models; Llama 3 stands in here too (its vocabulary
    /// holds `cl100k_base`'s 100k tokens, split the same way, and adds 28k mostly for other
    /// languages).
    Cl100k,
    /// GPT-4o, GPT-4.1, GPT-5 and the o-series.
    O200k,
}

/// How an upstream's prompts are counted (`upstreams.NAME.tokenizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// The vocabulary of the model's family, when its name says it; else the estimate.
    #[default]
    Auto,
    /// Always this vocabulary.
    Exact(Vocabulary),
    /// Never a vocabulary: the estimate only.
    Estimate,
}

impl Counting {
    /// Reads `auto`, `cl100k_base`, `o200k_base` or `estimate`.
    pub fn parse(text: &str) -> Result<Counting, String> {
        match text {
            "auto" => Ok(Counting::Auto),
            "cl100k_base" => Ok(Counting::Exact(Vocabulary::Cl100k)),
            "o200k_base" => Ok(Counting::Exact(Vocabulary::O200k)),
            "estimate" => Ok(Counting::Estimate),
            other => Err(format!(
                "`{other}` is not auto, cl100k_base, o200k_base or estimate"
            )),
        }
    }

    /// The vocabulary that counts prompts for `model`, if any.
    pub fn vocabulary(self, model: &str) -> Option<Vocabulary> {
        match self {
            Counting::Auto => Vocabulary::of_model(model),
            Counting::Exact(v) => Some(v),
            Counting::Estimate => None,
        }
    }
}

impl Vocabulary {
    /// The vocabulary of a model known by its name (OpenAI's families, Llama 3), else `None`.
    pub fn of_model(model: &str) -> Option<Vocabulary> {
        let m = model.trim().to_ascii_lowercase();
        // The part after a provider prefix (`openai/gpt-4o`, `meta-llama/llama-3.1-8b`).
        let m = m.rsplit('/').next().unwrap_or(&m);
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "chatgpt-4o",
            "o1",
            "o3",
            "o4",
        ];
        let cl100k = ["gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada"];
        let llama3 = ["llama3", "llama-3", "llama_3"];
        if o200k.iter().any(|p| family(m, p)) {
            Some(Vocabulary::O200k)
        } else if cl100k.iter().chain(&llama3).any(|p| family(m, p)) {
            Some(Vocabulary::Cl100k)
        } else {
            None
        }
    }

    /// The tokens of `text`. The tables load on first use (a fraction of a second); see
    /// [`Vocabulary::load`].
    pub fn count(self, text: &str) -> u64 {
        self.tokenizer().count(text) as u64
    }

    /// The tokens of `text` if they are `limit` or fewer, else `None`; the work stops about
    /// there, so a long text past a small limit costs what the limit does.
    pub fn count_within(self, text: &str, limit: u64) -> Option<u64> {
        let tokenizer = self.tokenizer();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let n = tokenizer.count_till_limit(&tokenizer.normalize(text), limit)?;
        Some(n as u64)
    }

    /// Loads the tables now, so that the first request near a limit does not wait for them.
    pub fn load(self) {
        let _ = self.tokenizer();
    }

    fn tokenizer(self) -> &'static bpe_openai::Tokenizer {
        match self {
            Vocabulary::Cl100k => bpe_openai::cl100k_base(),
            Vocabulary::O200k => bpe_openai::o200k_base(),
        }
    }
}

/// Whether `name` is `prefix` or one of its versions (`gpt-4o-mini`, `o1-preview`, `o3`), but
/// not another family that shares its first letters (`o1` is not `o10x`).
fn family(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', ':', '.', '@']))
}

/// A prompt's token count, and whether a vocabulary counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The tokens.
    pub tokens: u64,
    /// Counted by a vocabulary, not estimated.
    pub exact: bool,
}

/// The prompt tokens of `messages` as far as `room` (the tokens the prompt may take) needs them:
/// the estimate, unless it lies between half and twice `room` and `vocabulary` is known. A
/// counted prompt past `room` is reported as the larger of its estimate and `room + 1`: the
/// count stops at the limit.
pub fn prompt_tokens(messages: &[Message], vocabulary: Option<Vocabulary>, room: u64) -> Count {
    let estimate = estimate_prompt_tokens(messages);
    let near = estimate >= room / 2 && estimate <= room.saturating_mul(2);
    match vocabulary.filter(|_| near) {
        Some(v) => Count {
            tokens: prompt_tokens_within(messages, v, room)
                .unwrap_or_else(|| estimate.max(room.saturating_add(1))),
            exact: true,
        },
        None => Count {
            tokens: estimate,
            exact: false,
        },
    }
}

/// The prompt tokens of `messages` in `vocabulary` if they are `room` or fewer: each message's
/// text and framing, and the reply's start, framed as [`estimate_prompt_tokens`] frames them.
pub fn prompt_tokens_within(
    messages: &[Message],
    vocabulary: Vocabulary,
    room: u64,
) -> Option<u64> {
    let mut used = PER_MESSAGE;
    for m in messages {
        let left = room.checked_sub(used + PER_MESSAGE)?;
        used += PER_MESSAGE + vocabulary.count_within(m.content.text(), left)?;
    }
    (used <= room).then_some(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Role;

    fn user(text: &str) -> Vec<Message> {
        vec![Message::text(Role::User, text)]
    }

    #[test]
    fn models_map_to_their_vocabularies() {
        for (model, vocabulary) in [
            ("gpt-4o", Some(Vocabulary::O200k)),
            ("gpt-4o-mini-2024-07-18", Some(Vocabulary::O200k)),
            ("openai/gpt-4.1", Some(Vocabulary::O200k)),
            ("o3-mini", Some(Vocabulary::O200k)),
            ("gpt-4-turbo", Some(Vocabulary::Cl100k)),
            ("gpt-3.5-turbo", Some(Vocabulary::Cl100k)),
            ("llama3.1:8b", Some(Vocabulary::Cl100k)),
            ("meta-llama/Llama-3.2-3B-Instruct", Some(Vocabulary::Cl100k)),
            ("llama2:7b", None),
            ("llama-30b", None),
            ("qwen2.5:7b", None),
            ("o10x", None),
            ("gpt-40", None),
        ] {
            assert_eq!(Vocabulary::of_model(model), vocabulary, "{model}");
        }
        assert_eq!(Counting::Estimate.vocabulary("gpt-4o"), None);
        assert_eq!(
            Counting::parse("o200k_base").map(|c| c.vocabulary("qwen")),
            Ok(Some(Vocabulary::O200k))
        );
        assert!(Counting::parse("gpt2").is_err());
    }

    #[test]
    fn the_vocabularies_count_as_openai_does() {
        // Counts of OpenAI's own tokenizer for these strings.
        assert_eq!(Vocabulary::Cl100k.count("hello world"), 2);
        assert_eq!(Vocabulary::O200k.count("hello world"), 2);
        assert_eq!(Vocabulary::Cl100k.count(""), 0);
        // Numbers split in groups of three digits.
        assert_eq!(Vocabulary::Cl100k.count("1234567890"), 4);
    }

    #[test]
    fn far_from_the_room_the_estimate_decides() {
        let text = "word ".repeat(400);
        let estimated = estimate_prompt_tokens(&user(&text));
        let far_above = prompt_tokens(&user(&text), Some(Vocabulary::Cl100k), estimated / 3);
        assert_eq!(
            far_above,
            Count {
                tokens: estimated,
                exact: false
            }
        );
        let far_below = prompt_tokens(&user(&text), Some(Vocabulary::Cl100k), estimated * 3);
        assert!(!far_below.exact);
        let unknown = prompt_tokens(&user(&text), None, estimated);
        assert!(!unknown.exact);
    }

    #[test]
    fn near_the_room_the_vocabulary_decides_both_ways() {
        // Long words: the estimate (bytes / 4) is well above the real count.
        let words = user(&"internationalization ".repeat(200));
        let (estimated, real) = (
            estimate_prompt_tokens(&words),
            prompt_tokens_within(&words, Vocabulary::Cl100k, u64::MAX).unwrap(),
        );
        assert!(real < estimated, "{real} < {estimated}");
        let room = (real + estimated) / 2;
        let count = prompt_tokens(&words, Some(Vocabulary::Cl100k), room);
        assert_eq!(
            count,
            Count {
                tokens: real,
                exact: true
            }
        );
        assert!(
            count.tokens <= room && estimated > room,
            "it fits after all"
        );

        // Digits: three to a token, so the estimate is below the real count.
        let digits = user(&"1234567890".repeat(300));
        let (estimated, real) = (
            estimate_prompt_tokens(&digits),
            prompt_tokens_within(&digits, Vocabulary::Cl100k, u64::MAX).unwrap(),
        );
        assert!(real > estimated, "{real} > {estimated}");
        let room = (real + estimated) / 2;
        let count = prompt_tokens(&digits, Some(Vocabulary::Cl100k), room);
        assert!(
            count.exact && count.tokens > room && estimated <= room,
            "it does not fit"
        );
        assert_eq!(
            prompt_tokens_within(&digits, Vocabulary::Cl100k, real),
            Some(real)
        );
        assert_eq!(
            prompt_tokens_within(&digits, Vocabulary::Cl100k, real - 1),
            None
        );
    }

    /// The window is wide enough for the routing development set: no prompt's estimate is off
    /// by a factor of two, so no decision there is taken on a wrong estimate.
    #[test]
    fn on_the_routing_set_the_estimate_is_within_a_factor_of_two() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/routing-dev.jsonl");
        let text = std::fs::read_to_string(path).expect("the routing set");
        let mut rows = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
            let body = serde_json::json!({"model": "auto", "messages": row["messages"]});
            let request = crate::api::ChatRequest::parse(bytes::Bytes::from(body.to_string()))
                .expect("a valid request");
            let estimate = estimate_prompt_tokens(&request.messages);
            for v in [Vocabulary::Cl100k, Vocabulary::O200k] {
                let real = prompt_tokens_within(&request.messages, v, u64::MAX).unwrap();
                assert!(
                    2 * estimate >= real && estimate <= 2 * real,
                    "{}: estimated {estimate}, {real} in {v:?}",
                    row["id"]
                );
            }
            rows += 1;
        }
        assert_eq!(rows, 584);
    }
}
