//! Static token embeddings: one vector and one weight per WordPiece token, distilled from a
//! sentence model (`tools/distill.py`). A text's embedding is the weighted mean of its tokens'
//! vectors, a table look-up per token instead of a transformer pass.
//!
//! The file (little-endian): the magic `SYSTATIC`, `u32` version 1, vocabulary size `V`,
//! dimensions `D`, the longest word in characters; `u32` length and the `V` token texts joined
//! by newlines; `V` `f32` weights; `V × D` IEEE half-precision vectors; and the SHA-256 of
//! everything before it. A file that does not match is refused with what is wrong.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use super::wordpiece::WordPiece;

const MAGIC: &[u8; 8] = b"SYSTATIC";

/// The table compiled into the binary: all-MiniLM-L6-v2's tokens, distilled (see the README).
pub(crate) const BUILTIN: &[u8] = include_bytes!("../../conf/minilm-l6-static.bin");

/// The built-in table, read once per process.
pub fn builtin() -> Result<Arc<StaticTable>, String> {
    static TABLE: OnceLock<Result<Arc<StaticTable>, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            StaticTable::parse(BUILTIN)
                .map(Arc::new)
                .map_err(|e| format!("built-in table: {e}"))
        })
        .clone()
}

/// A loaded table.
pub struct StaticTable {
    tokenizer: WordPiece,
    weights: Vec<f32>,
    /// Kept at half precision: only training and explanations read them; scoring reads one
    /// number per token.
    vectors: Vec<half::f16>,
    dims: usize,
    sha256: String,
}

/// Reads the file's fields in order, failing on a short file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated: the file ends inside its {what}"));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl std::fmt::Debug for StaticTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StaticTable({} tokens × {} dims, sha256 {})",
            self.weights.len(),
            self.dims,
            self.sha256
        )
    }
}

impl StaticTable {
    /// Loads and checks the table at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<StaticTable, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        StaticTable::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks and reads a table from its bytes.
    pub fn parse(bytes: &[u8]) -> Result<StaticTable, String> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a static embedding table (no SYSTATIC header)".into());
        }
        let Some(body_len) = bytes.len().checked_sub(32) else {
            return Err("truncated: no checksum".into());
        };
        let (body, digest) = bytes.split_at(body_len);
        let actual: [u8; 32] = Sha256::digest(body).into();
        if actual[..] != digest[..] {
            return Err("checksum mismatch: the file is truncated or damaged".into());
        }
        let mut r = Reader {
            bytes: body,
            at: MAGIC.len(),
        };
        let version = r.u32("header")?;
        if version != 1 {
            return Err(format!("unsupported table version {version}"));
        }
        let vocab = r.u32("header")? as usize;
        let dims = r.u32("header")? as usize;
        let max_word = r.u32("header")? as usize;
        if vocab == 0 || dims == 0 || dims > 4096 {
            return Err(format!(
                "implausible size: {vocab} tokens of {dims} dimensions"
            ));
        }
        let text_len = r.u32("header")? as usize;
        let text = std::str::from_utf8(r.take(text_len, "vocabulary")?)
            .map_err(|_| "the vocabulary is not UTF-8".to_owned())?;
        let tokens: Vec<&str> = text.split('\n').collect();
        if tokens.len() != vocab {
            return Err(format!(
                "the header says {vocab} tokens, the vocabulary holds {}",
                tokens.len()
            ));
        }
        let tokenizer = WordPiece::new(tokens, max_word)?;
        let weights: Vec<f32> = r
            .take(vocab * 4, "weights")?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let vectors: Vec<half::f16> = r
            .take(vocab * dims * 2, "vectors")?
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
            .collect();
        if r.at != body.len() {
            return Err(format!("{} bytes after the vectors", body.len() - r.at));
        }
        if weights.iter().any(|v| !v.is_finite()) || vectors.iter().any(|v| !v.is_finite()) {
            return Err("a weight or vector is not a finite number".into());
        }
        Ok(StaticTable {
            tokenizer,
            weights,
            vectors,
            dims,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// Dimensions of a vector.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The file's SHA-256 (its last 32 bytes), in hex: what a scorer trained on it records.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Calls `each` with the id and weight of each token of `text` that has a weight, up to
    /// `max_tokens` tokens.
    pub fn tokens(&self, text: &str, max_tokens: usize, mut each: impl FnMut(usize, f32)) {
        let mut seen = 0;
        self.tokenizer.tokenize(text, |id| {
            let id = id as usize;
            let w = self.weights.get(id).copied().unwrap_or(0.0);
            if w > 0.0 {
                each(id, w);
            }
            seen += 1;
            seen < max_tokens
        });
    }

    /// The embedding of `text`: the weighted mean of the vectors of its first `max_tokens`
    /// tokens; zeros for a text without a weighted token.
    pub fn embed(&self, text: &str, max_tokens: usize) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.dims];
        let mut total = 0.0f32;
        self.tokens(text, max_tokens, |id, w| {
            let v = &self.vectors[id * self.dims..(id + 1) * self.dims];
            for (s, x) in sum.iter_mut().zip(v) {
                *s += w * x.to_f32();
            }
            total += w;
        });
        if total > 0.0 {
            for s in &mut sum {
                *s /= total;
            }
        }
        sum
    }

    /// Each token's vector projected on `direction`: a linear model over embeddings is then a
    /// weighted mean of one number per token.
    pub fn project(&self, direction: &[f64]) -> Vec<f32> {
        self.vectors
            .chunks_exact(self.dims)
            .map(|v| {
                v.iter()
                    .zip(direction)
                    .map(|(x, d)| f64::from(x.to_f32()) * d)
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// The token ids of `text`, all of them: for checking the tokenizer against the reference.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.tokenizer.tokenize(text, |id| {
            out.push(id);
            true
        });
        out
    }

    /// The weight of token `id` (0 for specials and unknown ids).
    pub fn weight(&self, id: usize) -> f32 {
        self.weights.get(id).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small table in the file format: tokens, weights, and `dims`-dimensional vectors.
    pub(crate) fn file(tokens: &[&str], weights: &[f32], vectors: &[f32], dims: u32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for v in [1, tokens.len() as u32, dims, 100] {
            out.extend(v.to_le_bytes());
        }
        let text = tokens.join("\n");
        out.extend((text.len() as u32).to_le_bytes());
        out.extend(text.as_bytes());
        for w in weights {
            out.extend(w.to_le_bytes());
        }
        for v in vectors {
            out.extend(half::f16::from_f32(*v).to_le_bytes());
        }
        let digest: [u8; 32] = Sha256::digest(&out).into();
        out.extend(digest);
        out
    }

    pub(crate) fn sample() -> Vec<u8> {
        file(
            &["[PAD]", "[UNK]", "hello", "world", "##s"],
            &[0.0, 1.0, 1.0, 3.0, 1.0],
            &[0., 0., 1., 1., 1., 0., 0., 1., 0.5, 0.5],
            2,
        )
    }

    #[test]
    fn embeds_a_text_as_the_weighted_mean_of_its_tokens() {
        let t = StaticTable::parse(&sample()).unwrap();
        assert_eq!(t.dims(), 2);
        assert_eq!(
            t.embed("Hello worlds", 100),
            vec![0.3, 0.7],
            "(1·hello + 3·world + 1·##s) / 5"
        );
        assert_eq!(t.embed("", 100), vec![0.0, 0.0]);
        assert_eq!(
            t.embed("hello world", 1),
            vec![1.0, 0.0],
            "first token only"
        );
        assert_eq!(t.project(&[1.0, -1.0]), vec![0.0, 0.0, 1.0, -1.0, 0.0]);
    }

    #[test]
    fn a_damaged_or_truncated_file_is_refused_with_the_reason() {
        let good = sample();
        let cut = &good[..good.len() - 7];
        assert!(StaticTable::parse(cut).unwrap_err().contains("checksum"));
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert!(StaticTable::parse(&flipped)
            .unwrap_err()
            .contains("checksum"));
        assert!(StaticTable::parse(b"{\"version\":1}")
            .unwrap_err()
            .contains("SYSTATIC"));
        let short = file(&["[UNK]", "a"], &[1.0, 1.0], &[0.0, 1.0], 2);
        assert!(StaticTable::parse(&short).unwrap_err().contains("vectors"));
        let no_unk = file(&["a"], &[1.0], &[1.0], 1);
        assert!(StaticTable::parse(&no_unk).unwrap_err().contains("[UNK]"));
    }
}
