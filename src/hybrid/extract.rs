//! Extractive shortening: the sentences of a part that bear on the question, kept verbatim and in
//! their order, the rest dropped. Sentences are scored with BM25 against the question's words;
//! the best ones are kept, each with the two sentences on either side (the answer often sits
//! next to the sentence that names its subject, in words the question does not use), until the
//! kept text reaches its target size. No model is called: it costs microseconds and never
//! changes a fact it keeps.

use std::ops::Range;

use crate::classify::estimate_tokens;

/// BM25's term-frequency saturation.
const K1: f64 = 1.2;
/// BM25's length normalization.
const B: f64 = 0.75;
/// How many sentences on each side of a matching sentence are kept with it.
const RADIUS: usize = 2;
/// Written where sentences were dropped.
pub const GAP: &str = " […] ";

/// Words too common to tell sentences apart.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "between", "both", "but", "by", "can", "could", "did", "do", "does",
    "doing", "each", "for", "from", "had", "has", "have", "having", "he", "her", "here", "him",
    "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more",
    "most", "my", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our",
    "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too",
    "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while",
    "who", "whom", "why", "will", "with", "would", "you", "your", "use", "using", "used", "get",
    "one", "way",
];

/// Keeps about `keep_tokens` of `text`: the sentences that score best against `question`, in
/// their original order, with [`GAP`] where sentences were left out.
pub fn extract(text: &str, question: &str, keep_tokens: u64) -> String {
    let units = sentences(text);
    if units.is_empty() || estimate_tokens(text) <= keep_tokens {
        return text.to_owned();
    }
    let mut query = terms(question);
    query.sort();
    query.dedup();
    let scores = bm25(&query, &count(text, &units, &query));

    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep = vec![false; units.len()];
    let mut kept = 0u64;
    let tokens: Vec<u64> = units
        .iter()
        .map(|r| estimate_tokens(&text[r.clone()]))
        .collect();
    let take = |i: usize, keep: &mut Vec<bool>, kept: &mut u64| {
        if !keep[i] {
            keep[i] = true;
            *kept += tokens[i];
        }
    };
    for (rank, &i) in order.iter().enumerate() {
        if kept >= keep_tokens && rank > 0 {
            break;
        }
        let radius = if scores[i] > 0.0 { RADIUS } else { 0 };
        for j in i.saturating_sub(radius)..(i + radius + 1).min(units.len()) {
            take(j, &mut keep, &mut kept);
        }
    }

    let mut out = String::with_capacity((kept as usize) * 5);
    let mut last: Option<usize> = None;
    for (i, range) in units.iter().enumerate().filter(|(i, _)| keep[*i]) {
        match last {
            // Next to the previous kept sentence: the original separator between them.
            Some(l) if l + 1 == i => out.push_str(&text[units[l].end..range.start]),
            Some(_) => out.push_str(GAP),
            None if i > 0 => out.push_str(GAP.trim_start()),
            None => {}
        }
        out.push_str(&text[range.clone()]);
        last = Some(i);
    }
    if last.is_some_and(|l| l + 1 < units.len()) {
        out.push_str(GAP.trim_end());
    }
    out
}

/// The sentences of `text`: lines, cut further after `.`, `?` or `!` followed by a space.
fn sentences(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let push = |from: usize, to: usize, out: &mut Vec<Range<usize>>| {
        let piece = &text[from..to];
        let lead = piece.len() - piece.trim_start().len();
        let trail = piece.len() - piece.trim_end().len();
        if lead + trail < piece.len() {
            out.push(from + lead..to - trail);
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let end_of_sentence = matches!(b, b'.' | b'?' | b'!')
            && bytes.get(i + 1).is_some_and(|n| *n == b' ')
            && i > start + 1;
        if b == b'\n' || end_of_sentence {
            let to = if b == b'\n' { i } else { i + 1 };
            push(start, to, &mut out);
            start = i + 1;
        }
        i += 1;
    }
    push(start, text.len(), &mut out);
    out
}

/// Words too common to tell sentences apart, for look-up.
static STOP: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
    std::sync::LazyLock::new(|| STOPWORDS.iter().copied().collect());

/// Calls `each` with every word of `text` that carries meaning: lower case, stop words out,
/// plural and verb endings cut (see [`stem`]); numbers kept whole.
fn each_term(text: &str, mut each: impl FnMut(&str)) {
    let mut lower = String::new();
    let mut stemmed = String::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        lower.clear();
        if word.is_ascii() {
            lower.push_str(word);
            lower.make_ascii_lowercase();
        } else {
            lower.extend(word.chars().flat_map(char::to_lowercase));
        }
        let digits = lower.bytes().all(|b| b.is_ascii_digit());
        if STOP.contains(lower.as_str()) || (lower.len() < 2 && !digits) {
            continue;
        }
        each(stem(&lower, &mut stemmed));
    }
}

/// The terms of a text, as [`each_term`] finds them.
fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_term(text, |t| out.push(t.to_owned()));
    out
}

/// A light stemmer: enough for "compressed", "compresses" and "compression" to meet at
/// "compress". Returns `word` cut, or `buf` when a letter had to be added.
fn stem<'a>(word: &'a str, buf: &'a mut String) -> &'a str {
    if word.len() <= 4 || word.bytes().any(|b| b.is_ascii_digit()) {
        return word;
    }
    for suffix in [
        "ations", "ation", "ions", "ion", "ings", "ing", "ies", "ed", "es", "ly", "s",
    ] {
        if suffix == "s" && word.ends_with("ss") {
            break;
        }
        if let Some(stem) = word.strip_suffix(suffix) {
            if stem.len() >= 3 {
                if suffix == "ies" {
                    buf.clear();
                    buf.push_str(stem);
                    buf.push('y');
                    return buf;
                }
                return stem;
            }
        }
    }
    word
}

/// Per sentence: how many terms it has, and how often each query term occurs in it.
struct Counts {
    lengths: Vec<u32>,
    /// `units × query` counts, row by row.
    tf: Vec<u16>,
}

/// Counts the query's terms in each sentence, in one pass over the text.
fn count(text: &str, units: &[Range<usize>], query: &[String]) -> Counts {
    let q = query.len();
    let mut counts = Counts {
        lengths: vec![0; units.len()],
        tf: vec![0; units.len() * q],
    };
    for (i, range) in units.iter().enumerate() {
        let row = &mut counts.tf[i * q..(i + 1) * q];
        let length = &mut counts.lengths[i];
        each_term(&text[range.clone()], |t| {
            *length += 1;
            if let Ok(k) = query.binary_search_by(|x| x.as_str().cmp(t)) {
                row[k] = row[k].saturating_add(1);
            }
        });
    }
    counts
}

/// BM25 scores of the sentences for the (sorted, distinct) query terms, document frequencies
/// taken over the sentences.
fn bm25(query: &[String], counts: &Counts) -> Vec<f64> {
    let q = query.len();
    let n = counts.lengths.len();
    let avg = counts.lengths.iter().map(|&l| f64::from(l)).sum::<f64>() / (n.max(1) as f64);
    let idf: Vec<f64> = (0..q)
        .map(|k| {
            let df = (0..n).filter(|&i| counts.tf[i * q + k] > 0).count() as f64;
            ((n as f64 - df + 0.5) / (df + 0.5) + 1.0).ln()
        })
        .collect();
    (0..n)
        .map(|i| {
            let len = f64::from(counts.lengths[i]);
            let norm = K1 * (1.0 - B + B * len / avg.max(1.0));
            (0..q)
                .map(|k| {
                    let tf = f64::from(counts.tf[i * q + k]);
                    if tf == 0.0 {
                        0.0
                    } else {
                        idf[k] * tf * (K1 + 1.0) / (tf + norm)
                    }
                })
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> String {
        let mut parts = Vec::new();
        for i in 0..60 {
            parts.push(format!(
                "Paragraph {i} is about nothing in particular and fills space."
            ));
        }
        parts.insert(
            37,
            "The default compression level is 6, a compromise between speed and size.".into(),
        );
        parts.join(" ")
    }

    #[test]
    fn the_sentence_that_answers_is_kept_verbatim_and_the_rest_dropped() {
        let text = document();
        let out = extract(&text, "How strongly does it compress by default?", 60);
        assert!(
            out.contains(
                "The default compression level is 6, a compromise between speed and size."
            ),
            "{out}"
        );
        assert!(estimate_tokens(&out) < estimate_tokens(&text) / 4, "{out}");
        assert!(out.contains(GAP.trim()), "gaps are marked: {out}");
        assert!(
            out.contains("Paragraph 36") && out.contains("Paragraph 37"),
            "neighbours: {out}"
        );
    }

    #[test]
    fn order_is_kept_and_short_texts_are_left_whole() {
        let text = "Alpha one. Beta two. Gamma three.";
        assert_eq!(extract(text, "beta", 100), text);
        let long = (0..50)
            .map(|i| format!("Line {i} mentions gamma."))
            .collect::<Vec<_>>()
            .join("\n");
        let out = extract(&long, "gamma line 40 and line 3", 80);
        let three = out.find("Line 3 ").expect("line 3 kept");
        let forty = out.find("Line 40 ").expect("line 40 kept");
        assert!(three < forty, "original order: {out}");
    }

    #[test]
    fn words_meet_at_their_stems() {
        let mut buf = String::new();
        assert_eq!(stem("compression", &mut buf), "compress");
        assert_eq!(stem("compressed", &mut buf), "compress");
        assert_eq!(stem("compress", &mut buf), "compress");
        assert_eq!(stem("libraries", &mut buf), "library");
        assert_eq!(
            terms("The zlib.compress() level"),
            ["zlib", "compress", "level"]
        );
    }
}
