//! BERT's uncased WordPiece tokenizer, as the sentence model behind the semantic scorer reads
//! text: clean the text (drop control characters, turn every space into a blank), space out CJK
//! ideographs, strip accents, lowercase, split at blanks and around punctuation, then cut each
//! word into the longest vocabulary pieces from the left (`##` marks a piece inside a word). A
//! word that cannot be cut, or is longer than the model allows, is one unknown token.
//!
//! Only the token ids are produced; nothing is allocated per token. ASCII text, the common case,
//! skips Unicode normalization altogether.

use unicode_general_category::{get_general_category, GeneralCategory as Cat};
use unicode_normalization::UnicodeNormalization;

/// The longest word a vocabulary may declare: longer words are always unknown.
pub const MAX_WORD_CHARS: usize = 128;

/// A WordPiece vocabulary and the rules to cut text with it.
pub struct WordPiece {
    /// Whole-word pieces (and pieces at a word's start), by text.
    starts: foldhash::HashMap<Box<str>, u32>,
    /// Pieces inside a word, by their text without the `##`.
    inner: foldhash::HashMap<Box<str>, u32>,
    /// The id of `[UNK]`.
    unknown: u32,
    /// Longer words (in characters) are unknown.
    max_word_chars: usize,
    /// The longest piece, in bytes: no look-up tries a longer one.
    longest: usize,
}

impl WordPiece {
    /// A tokenizer over `vocab` (token texts in id order) that must contain `[UNK]`.
    pub fn new<'a>(
        vocab: impl IntoIterator<Item = &'a str>,
        max_word_chars: usize,
    ) -> Result<WordPiece, String> {
        let mut starts = foldhash::HashMap::default();
        let mut inner = foldhash::HashMap::default();
        let mut longest = 0;
        let mut unknown = None;
        for (id, token) in vocab.into_iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| "vocabulary too large".to_owned())?;
            if token == "[UNK]" {
                unknown = Some(id);
            }
            let (map, text) = match token.strip_prefix("##") {
                Some(rest) if !rest.is_empty() => (&mut inner, rest),
                _ => (&mut starts, token),
            };
            longest = longest.max(text.len());
            // The first of two equal texts wins, as in the reference tokenizer's vocabulary.
            map.entry(text.into()).or_insert(id);
        }
        let unknown = unknown.ok_or("the vocabulary has no [UNK] token")?;
        if max_word_chars > MAX_WORD_CHARS {
            return Err(format!(
                "words of up to {max_word_chars} characters (at most {MAX_WORD_CHARS})"
            ));
        }
        Ok(WordPiece {
            starts,
            inner,
            unknown,
            max_word_chars,
            longest,
        })
    }

    /// Calls `emit` with the id of each token of `text`, in order, until it returns false.
    ///
    /// Blanks separate words whatever else a text holds, so the text is cut at them first; a
    /// piece of printable ASCII (most of them) takes a fast path that copies nothing unless a
    /// word has capitals, anything else the general one.
    pub fn tokenize(&self, text: &str, mut emit: impl FnMut(u32) -> bool) {
        let mut lower = [0u8; MAX_WORD_CHARS];
        let bytes = text.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            // One pass to the next blank, noting whether all of it is printable ASCII. Blanks
            // are ASCII, never inside a longer UTF-8 sequence, so the cuts are on characters.
            let mut end = start;
            let mut printable = true;
            while let Some(&b) = bytes.get(end) {
                if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                printable &= b.is_ascii_graphic();
                end += 1;
            }
            let chunk = &text[start..end];
            start = end + 1;
            if chunk.is_empty() {
                continue;
            }
            let go = if printable {
                self.printable(chunk, &mut lower, &mut emit)
            } else {
                self.general(chunk, &mut emit)
            };
            if !go {
                return;
            }
        }
    }

    /// Printable ASCII without blanks: words of letters and digits, and punctuation marks.
    fn printable(
        &self,
        chunk: &str,
        lower: &mut [u8; MAX_WORD_CHARS],
        emit: &mut impl FnMut(u32) -> bool,
    ) -> bool {
        let bytes = chunk.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            if bytes[start].is_ascii_punctuation() {
                if !self.pieces(&chunk[start..start + 1], emit) {
                    return false;
                }
                start += 1;
                continue;
            }
            let end = bytes[start..]
                .iter()
                .position(u8::is_ascii_punctuation)
                .map_or(bytes.len(), |p| start + p);
            let word = &chunk[start..end];
            start = end;
            let go = if !word.bytes().any(|b| b.is_ascii_uppercase()) {
                self.pieces(word, emit)
            } else if word.len() > self.max_word_chars {
                emit(self.unknown)
            } else {
                let lowered = &mut lower[..word.len()];
                lowered.copy_from_slice(word.as_bytes());
                lowered.make_ascii_lowercase();
                // ASCII stays UTF-8 when lowercased.
                match std::str::from_utf8(lowered) {
                    Ok(w) => self.pieces(w, emit),
                    Err(_) => emit(self.unknown),
                }
            };
            if !go {
                return false;
            }
        }
        true
    }

    /// Any text: Unicode cleaning, accents, case and punctuation, character by character.
    fn general(&self, text: &str, mut emit: impl FnMut(u32) -> bool) -> bool {
        let mut word = String::with_capacity(64);
        let mut go = true;
        let mut flush = |word: &mut String, go: &mut bool| {
            if *go && !word.is_empty() {
                *go = self.pieces(word, &mut emit);
            }
            word.clear();
        };
        for c in text.chars() {
            if !go {
                return false;
            }
            if c.is_ascii() {
                self.ascii(c, &mut word, &mut |w| flush(w, &mut go));
                continue;
            }
            // Clean: drop the replacement character and control characters.
            if c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if c.is_whitespace() {
                flush(&mut word, &mut go);
                continue;
            }
            if is_cjk(c) {
                flush(&mut word, &mut go);
                word.extend(std::iter::once(c).nfd());
                flush(&mut word, &mut go);
                continue;
            }
            // Strip accents (decompose, drop nonspacing marks), then lowercase.
            for d in std::iter::once(c).nfd() {
                if get_general_category(d) == Cat::NonspacingMark {
                    continue;
                }
                for l in d.to_lowercase() {
                    if l.is_ascii() {
                        self.ascii(l, &mut word, &mut |w| flush(w, &mut go));
                    } else if l.is_whitespace() {
                        flush(&mut word, &mut go);
                    } else if is_punctuation(l) {
                        flush(&mut word, &mut go);
                        word.push(l);
                        flush(&mut word, &mut go);
                    } else {
                        word.push(l);
                    }
                }
            }
        }
        flush(&mut word, &mut go);
        go
    }

    /// One ASCII character: a blank ends the word, punctuation is a word of its own, any other
    /// control character (vertical tab and form feed too) is dropped, the rest is lowercased
    /// into the word.
    fn ascii(&self, c: char, word: &mut String, flush: &mut impl FnMut(&mut String)) {
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            flush(word);
        } else if c.is_ascii_control() {
            // Dropped by the cleaner.
        } else if c.is_ascii_punctuation() {
            flush(word);
            word.push(c);
            flush(word);
        } else {
            word.push(c.to_ascii_lowercase());
        }
    }

    /// Cuts one word into pieces; returns what `emit` last returned.
    fn pieces(&self, word: &str, emit: &mut impl FnMut(u32) -> bool) -> bool {
        if word.len() > self.max_word_chars && word.chars().count() > self.max_word_chars {
            return emit(self.unknown);
        }
        // The common case: the whole word is a token.
        if let Some(&id) = self.starts.get(word) {
            return emit(id);
        }
        // Pieces are found first and emitted after, since a word with an uncuttable rest is
        // one unknown token as a whole. A piece is at least a character, so they fit.
        let mut found = [0u32; MAX_WORD_CHARS];
        let mut count = 0;
        let mut start = 0;
        while start < word.len() {
            let map = if start == 0 {
                &self.starts
            } else {
                &self.inner
            };
            let rest = &word[start..];
            let mut end = rest.len().min(self.longest);
            let mut hit = None;
            while end > 0 {
                if rest.is_char_boundary(end) {
                    if let Some(&id) = map.get(&rest[..end]) {
                        hit = Some(id);
                        break;
                    }
                }
                end -= 1;
            }
            let Some(id) = hit else {
                return emit(self.unknown);
            };
            let Some(slot) = found.get_mut(count) else {
                return emit(self.unknown);
            };
            *slot = id;
            count += 1;
            start += end;
        }
        found[..count].iter().all(|&id| emit(id))
    }
}

/// What the cleaner drops: control, format, private-use and surrogate characters (tab, newline
/// and carriage return are blanks). Unassigned code points are kept, as the reference does.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        Cat::Control | Cat::Format | Cat::PrivateUse | Cat::Surrogate
    )
}

/// ASCII punctuation and symbols, and every Unicode punctuation category.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            Cat::ConnectorPunctuation
                | Cat::DashPunctuation
                | Cat::ClosePunctuation
                | Cat::FinalPunctuation
                | Cat::InitialPunctuation
                | Cat::OtherPunctuation
                | Cat::OpenPunctuation
        )
}

/// CJK ideographs, each of which BERT treats as a word.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> WordPiece {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "runn", "##ing", ",", "!",
            "hello", "cafe", "中", "what", "?", "a",
        ];
        WordPiece::new(vocab, 12).unwrap()
    }

    fn ids(text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        tokenizer().tokenize(text, |id| {
            out.push(id);
            true
        });
        out
    }

    #[test]
    fn cuts_words_into_the_longest_pieces_and_isolates_punctuation() {
        assert_eq!(ids("UNaffable running!"), vec![4, 5, 6, 7, 8, 10]);
        assert_eq!(ids("hello,what?"), vec![11, 9, 14, 15]);
    }

    #[test]
    fn strips_accents_lowercases_and_spaces_out_ideographs() {
        assert_eq!(ids("Café"), vec![12]);
        assert_eq!(ids("CAFÉ中a"), vec![12, 13, 16]);
    }

    #[test]
    fn an_uncuttable_or_overlong_word_is_one_unknown_token() {
        assert_eq!(ids("unzzz hello"), vec![1, 11]);
        assert_eq!(ids("aaaaaaaaaaaaa"), vec![1], "13 characters, over 12");
    }

    #[test]
    fn control_characters_vanish_and_the_caller_can_stop() {
        assert_eq!(ids("hel\u{0}lo\u{200b}\tcafe"), vec![11, 12]);
        let mut seen = Vec::new();
        tokenizer().tokenize("hello hello hello", |id| {
            seen.push(id);
            seen.len() < 2
        });
        assert_eq!(seen, vec![11, 11]);
    }
}
