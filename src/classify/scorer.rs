//! The scorer: a logistic model over the request's features and hashed word n-grams of the last
//! user message. Its score in [0, 1] says how likely the request needs the cloud model.
//!
//! Fitting it ([`train`]) is plain, deterministic, full-batch gradient descent on the L2-
//! regularized log loss: the same rows give the same file, byte for byte.

use serde::{Deserialize, Serialize};

use super::features::{Feature, Features};
use crate::api::ChatRequest;

/// A fitted scorer, as stored in `scorer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scorer {
    /// Format version of the file.
    pub version: u32,
    /// Intercept.
    pub bias: f64,
    /// Per feature: name, mean and scale of `ln(1 + value)` on the training rows, and weight.
    pub features: Vec<FeatureWeight>,
    /// Bits of the n-gram hash: `2^bits` weights.
    pub ngram_bits: u32,
    /// One weight per hash bucket.
    pub ngrams: Vec<f64>,
}

/// One standardized feature's weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureWeight {
    /// The feature's name.
    pub name: String,
    /// Mean of the transformed value.
    pub mean: f64,
    /// Standard deviation of the transformed value (1 when constant).
    pub scale: f64,
    /// Weight.
    pub weight: f64,
}

/// The inputs of the model for one request: dense standardized features and sparse n-grams.
#[derive(Debug, Clone)]
pub struct Inputs {
    dense: Vec<f64>,
    /// Hash buckets of the n-grams present, each with value `1/sqrt(count)`.
    sparse: Vec<u32>,
    sparse_value: f64,
}

fn transform(x: f64) -> f64 {
    x.max(0.0).ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// FNV-1a, 64 bits: stable across runs and platforms, unlike the standard library's hasher.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b' ');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Hash buckets of the unigrams and bigrams of `text` (words: runs of letters and digits).
fn ngram_buckets(text: &str, bits: u32) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::with_capacity(words.len() * 2);
    for (i, w) in words.iter().enumerate() {
        out.push((fnv(&[w]) & mask) as u32);
        if i + 1 < words.len() {
            out.push((fnv(&[w, words[i + 1]]) & mask) as u32);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn last_user_text(req: &ChatRequest) -> &str {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == crate::api::Role::User)
        .map_or("", |m| m.content.text())
}

impl Scorer {
    /// The model's inputs for one request.
    pub fn inputs(&self, req: &ChatRequest, features: &Features) -> Inputs {
        let dense = self
            .features
            .iter()
            .map(|fw| {
                let value = Feature::from_name(&fw.name).map_or(0.0, |f| features.get(f));
                (transform(value) - fw.mean) / fw.scale
            })
            .collect();
        let sparse = if self.ngram_bits == 0 {
            Vec::new()
        } else {
            ngram_buckets(last_user_text(req), self.ngram_bits)
        };
        let sparse_value = if sparse.is_empty() {
            0.0
        } else {
            1.0 / (sparse.len() as f64).sqrt()
        };
        Inputs {
            dense,
            sparse,
            sparse_value,
        }
    }

    fn logit(&self, x: &Inputs) -> f64 {
        let dense: f64 = x
            .dense
            .iter()
            .zip(&self.features)
            .map(|(v, fw)| v * fw.weight)
            .sum();
        let sparse: f64 = x
            .sparse
            .iter()
            .map(|&b| self.ngrams.get(b as usize).copied().unwrap_or(0.0))
            .sum::<f64>()
            * x.sparse_value;
        self.bias + dense + sparse
    }

    /// The score of a request: the probability that it needs the cloud model.
    pub fn score(&self, req: &ChatRequest, features: &Features) -> f64 {
        sigmoid(self.logit(&self.inputs(req, features)))
    }

    /// Checks a loaded file: known feature names, weights of the declared size, finite numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("unsupported scorer version {}", self.version));
        }
        for fw in &self.features {
            if Feature::from_name(&fw.name).is_none() {
                return Err(format!("unknown feature `{}`", fw.name));
            }
            if !(fw.mean.is_finite()
                && fw.scale.is_finite()
                && fw.scale > 0.0
                && fw.weight.is_finite())
            {
                return Err(format!(
                    "feature `{}` has an invalid mean, scale or weight",
                    fw.name
                ));
            }
        }
        if self.ngram_bits > 24 {
            return Err("ngram_bits above 24".into());
        }
        let expected = if self.ngram_bits == 0 {
            0
        } else {
            1usize << self.ngram_bits
        };
        if self.ngrams.len() != expected {
            return Err(format!(
                "{} n-gram weights for ngram_bits {} (expected {expected})",
                self.ngrams.len(),
                self.ngram_bits
            ));
        }
        if !self.bias.is_finite() || self.ngrams.iter().any(|w| !w.is_finite()) {
            return Err("non-finite weight".into());
        }
        Ok(())
    }
}

/// How a scorer is fitted.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Bits of the n-gram hash (0: no n-grams).
    pub ngram_bits: u32,
    /// L2 penalty on the feature weights.
    pub l2_features: f64,
    /// L2 penalty on the n-gram weights (stronger: there are many and they memorize).
    pub l2_ngrams: f64,
    /// Gradient steps.
    pub iterations: usize,
    /// Step size.
    pub learning_rate: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            ngram_bits: 12,
            l2_features: 1e-3,
            l2_ngrams: 1e-2,
            iterations: 3000,
            learning_rate: 0.3,
        }
    }
}

/// One labelled training example.
pub struct Example {
    /// The request.
    pub request: ChatRequest,
    /// True when the request needs the cloud model.
    pub needs_cloud: bool,
    /// The workload the example comes from (0 when there is one).
    ///
    /// Training gives each workload its own intercept, so that the weights learn what makes a
    /// request harder than others *of its kind*, not which kind of workload fails more often.
    /// That is what routing one team's traffic needs; the saved intercept is their average.
    pub group: usize,
}

/// Fits a scorer on `examples`.
pub fn train(examples: &[Example], opts: TrainOptions) -> Scorer {
    let features: Vec<Features> = examples.iter().map(|e| Features::of(&e.request)).collect();
    let n = examples.len().max(1) as f64;
    let mut weights = Vec::with_capacity(Feature::ALL.len());
    for f in Feature::ALL {
        let values: Vec<f64> = features.iter().map(|x| transform(x.get(f))).collect();
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let scale = if var > 1e-12 { var.sqrt() } else { 1.0 };
        weights.push(FeatureWeight {
            name: f.name().to_owned(),
            mean,
            scale,
            weight: 0.0,
        });
    }
    let mut scorer = Scorer {
        version: 1,
        bias: 0.0,
        features: weights,
        ngram_bits: opts.ngram_bits,
        ngrams: if opts.ngram_bits == 0 {
            Vec::new()
        } else {
            vec![0.0; 1 << opts.ngram_bits]
        },
    };
    let inputs: Vec<Inputs> = examples
        .iter()
        .zip(&features)
        .map(|(e, f)| scorer.inputs(&e.request, f))
        .collect();
    let labels: Vec<f64> = examples
        .iter()
        .map(|e| if e.needs_cloud { 1.0 } else { 0.0 })
        .collect();
    let groups = examples.iter().map(|e| e.group + 1).max().unwrap_or(1);
    let mut group_bias = vec![0.0; groups];
    let mut group_size = vec![0.0; groups];
    for e in examples {
        group_size[e.group] += 1.0;
    }
    let dims = scorer.features.len();
    for _ in 0..opts.iterations {
        let mut g_bias = vec![0.0; groups];
        let mut g_dense = vec![0.0; dims];
        let mut g_sparse = vec![0.0; scorer.ngrams.len()];
        for ((x, y), e) in inputs.iter().zip(&labels).zip(examples) {
            let err = sigmoid(scorer.logit(x) - scorer.bias + group_bias[e.group]) - y;
            g_bias[e.group] += err;
            for (g, v) in g_dense.iter_mut().zip(&x.dense) {
                *g += err * v;
            }
            for &b in &x.sparse {
                g_sparse[b as usize] += err * x.sparse_value;
            }
        }
        for (b, (g, size)) in group_bias.iter_mut().zip(g_bias.iter().zip(&group_size)) {
            if *size > 0.0 {
                *b -= opts.learning_rate * g / size;
            }
        }
        for (fw, g) in scorer.features.iter_mut().zip(&g_dense) {
            fw.weight -= opts.learning_rate * (g / n + opts.l2_features * fw.weight);
        }
        for (w, g) in scorer.ngrams.iter_mut().zip(&g_sparse) {
            *w -= opts.learning_rate * (g / n + opts.l2_ngrams * *w);
        }
    }
    scorer.bias = group_bias
        .iter()
        .zip(&group_size)
        .map(|(b, s)| b * s)
        .sum::<f64>()
        / n;
    scorer
}

/// Area under the ROC curve of `scores` against `labels` (1 = needs cloud); ties count half.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    // Rank sum of the positives, with tied scores sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += pairs[i..j].iter().filter(|p| p.1).count() as f64 * avg_rank;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn example(text: &str, needs_cloud: bool) -> Example {
        let body =
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]});
        Example {
            request: ChatRequest::parse(Bytes::from(body.to_string())).unwrap(),
            needs_cloud,
            group: 0,
        }
    }

    fn data() -> Vec<Example> {
        let mut v = Vec::new();
        for i in 0..20 {
            v.push(example(&format!("hello there friend {i}"), false));
            v.push(example(&format!("prove the theorem about integrals and derive {i} = {i} * 2 step by step, then prove it again"), true));
        }
        v
    }

    #[test]
    fn learns_a_separable_signal_and_is_deterministic() {
        let rows = data();
        let a = train(
            &rows,
            TrainOptions {
                iterations: 400,
                ..Default::default()
            },
        );
        let b = train(
            &rows,
            TrainOptions {
                iterations: 400,
                ..Default::default()
            },
        );
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        a.validate().unwrap();
        let scores: Vec<f64> = rows
            .iter()
            .map(|e| a.score(&e.request, &Features::of(&e.request)))
            .collect();
        let labels: Vec<bool> = rows.iter().map(|e| e.needs_cloud).collect();
        assert_eq!(auc(&scores, &labels), 1.0);
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn auc_handles_ties_and_order() {
        assert_eq!(auc(&[0.1, 0.9], &[false, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.1], &[false, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
    }

    #[test]
    fn validation_rejects_broken_files() {
        let mut s = train(
            &data(),
            TrainOptions {
                iterations: 1,
                ngram_bits: 4,
                ..Default::default()
            },
        );
        s.validate().unwrap();
        s.ngrams.pop();
        assert!(s.validate().is_err());
        let mut s = train(
            &data(),
            TrainOptions {
                iterations: 1,
                ngram_bits: 0,
                ..Default::default()
            },
        );
        s.features[0].name = "colour".into();
        assert!(s.validate().unwrap_err().contains("colour"));
    }
}
