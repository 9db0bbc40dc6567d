//! The scorer: a logistic model over the request's features, hashed word n-grams of the last
//! user message, and (the semantic scorer) a static embedding of that message. Its score in
//! [0, 1] says how likely the request needs the cloud model.
//!
//! The embedding part is linear in the mean of the tokens' vectors, so it is computed as the
//! weighted mean of one precomputed number per token: a table look-up per token.
//!
//! Fitting it ([`train`]) is plain, deterministic, full-batch gradient descent on the L2-
//! regularized log loss: the same rows give the same file, byte for byte.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::embedding::StaticTable;
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
    /// The semantic part, when the scorer was trained over a static embedding table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingWeights>,
    /// The table and each token's share of the logit, once attached.
    #[serde(skip)]
    semantic: Option<Semantic>,
}

/// The weights of the semantic part, as stored in the scorer file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbeddingWeights {
    /// The table: `builtin`, or a file name taken from the scorer file's folder.
    pub table: String,
    /// The table's SHA-256, so a scorer is never used with another table than its own.
    pub sha256: String,
    /// Tokens of the text read, at most.
    pub max_tokens: usize,
    /// Per dimension: mean of the embedding on the training rows.
    pub mean: Vec<f64>,
    /// Per dimension: standard deviation (1 when constant).
    pub scale: Vec<f64>,
    /// Per dimension: weight of the standardized value.
    pub weights: Vec<f64>,
    /// The labelled rows it was fitted on, to explain a score by its nearest neighbours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Neighbour>,
}

/// A labelled row the scorer was fitted on: its id, its label and its embedding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Neighbour {
    /// The row's id.
    pub id: String,
    /// Its label.
    pub needs_cloud: bool,
    /// Its embedding, rounded to three decimals.
    pub vector: Vec<f32>,
}

/// A table attached to a scorer, with the scorer's weights folded into one number per token.
#[derive(Clone)]
struct Semantic {
    table: Arc<StaticTable>,
    /// Per token: its vector's contribution to the logit.
    token_logit: Vec<f32>,
    /// What the means contribute, subtracted.
    offset: f64,
}

impl Semantic {
    /// Folds the weights into one number per token of `table`.
    fn fold(e: &EmbeddingWeights, table: Arc<StaticTable>) -> Semantic {
        let direction: Vec<f64> = e.weights.iter().zip(&e.scale).map(|(w, s)| w / s).collect();
        let offset = e.mean.iter().zip(&direction).map(|(m, d)| m * d).sum();
        let token_logit = table.project(&direction);
        Semantic {
            table,
            token_logit,
            offset,
        }
    }
}

impl std::fmt::Debug for Semantic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Semantic({} dims, {})",
            self.table.dims(),
            self.table.sha256()
        )
    }
}

impl PartialEq for Semantic {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.table, &other.table) && self.offset == other.offset
    }
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

/// The inputs of the model for one request: dense standardized features (then embedding
/// dimensions) and sparse n-grams.
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

/// The text the n-grams and the embedding read: the last user message.
pub fn last_user_text(req: &ChatRequest) -> &str {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == crate::api::Role::User)
        .map_or("", |m| m.content.text())
}

impl Scorer {
    /// The model's inputs for one request (the slow, explicit path that training uses).
    pub fn inputs(&self, req: &ChatRequest, features: &Features) -> Inputs {
        let mut dense: Vec<f64> = self
            .features
            .iter()
            .map(|fw| {
                let value = Feature::from_name(&fw.name).map_or(0.0, |f| features.get(f));
                (transform(value) - fw.mean) / fw.scale
            })
            .collect();
        if let (Some(e), Some(sem)) = (&self.embedding, &self.semantic) {
            let v = sem.table.embed(last_user_text(req), e.max_tokens);
            dense.extend(
                v.iter()
                    .zip(e.mean.iter().zip(&e.scale))
                    .map(|(x, (m, s))| (f64::from(*x) - m) / s),
            );
        }
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

    /// The logit from explicit inputs: what training fits, and what [`Scorer::score`] computes
    /// faster.
    #[cfg(test)]
    fn logit(&self, x: &Inputs) -> f64 {
        let embedding = self.embedding.as_ref().map_or(&[][..], |e| &e.weights[..]);
        let dense: f64 = x
            .dense
            .iter()
            .zip(
                self.features
                    .iter()
                    .map(|fw| fw.weight)
                    .chain(embedding.iter().copied()),
            )
            .map(|(v, w)| v * w)
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
        let mut logit = self.bias;
        for fw in &self.features {
            let value = Feature::from_name(&fw.name).map_or(0.0, |f| features.get(f));
            logit += (transform(value) - fw.mean) / fw.scale * fw.weight;
        }
        if self.ngram_bits > 0 {
            let buckets = ngram_buckets(last_user_text(req), self.ngram_bits);
            if !buckets.is_empty() {
                let sum: f64 = buckets
                    .iter()
                    .map(|&b| self.ngrams.get(b as usize).copied().unwrap_or(0.0))
                    .sum();
                logit += sum / (buckets.len() as f64).sqrt();
            }
        }
        logit += self.semantic_logit(last_user_text(req));
        sigmoid(logit)
    }

    /// The semantic part's share of the logit for `text`: the weighted mean of its tokens'
    /// numbers, less the offset of the means (a text without tokens sits at the zero vector).
    fn semantic_logit(&self, text: &str) -> f64 {
        let (Some(e), Some(sem)) = (&self.embedding, &self.semantic) else {
            return 0.0;
        };
        let (mut sum, mut total) = (0.0f32, 0.0f32);
        sem.table.tokens(text, e.max_tokens, |id, w| {
            sum += w * sem.token_logit.get(id).copied().unwrap_or(0.0);
            total += w;
        });
        let mean = if total > 0.0 { sum / total } else { 0.0 };
        f64::from(mean) - sem.offset
    }

    /// The embedding of `text` in the scorer's table, if it has one: for explanations.
    pub fn embed(&self, text: &str) -> Option<Vec<f32>> {
        let (e, sem) = (self.embedding.as_ref()?, self.semantic.as_ref()?);
        Some(sem.table.embed(text, e.max_tokens))
    }

    /// The semantic part's share of the logit for the request (0 for a surface scorer).
    pub fn semantic_share(&self, req: &ChatRequest) -> f64 {
        self.semantic_logit(last_user_text(req))
    }

    /// The `k` labelled rows whose embeddings are most like the request's (cosine similarity
    /// around the training mean), most similar first: `(id, needs_cloud, similarity)`.
    pub fn nearest(&self, req: &ChatRequest, k: usize) -> Vec<(&str, bool, f64)> {
        let (Some(e), Some(v)) = (&self.embedding, self.embed(last_user_text(req))) else {
            return Vec::new();
        };
        let centred: Vec<f64> = v
            .iter()
            .zip(&e.mean)
            .map(|(x, m)| f64::from(*x) - m)
            .collect();
        let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
        let n = norm(&centred);
        let mut out: Vec<(&str, bool, f64)> = e
            .examples
            .iter()
            .map(|ex| {
                let c: Vec<f64> = ex
                    .vector
                    .iter()
                    .zip(&e.mean)
                    .map(|(x, m)| f64::from(*x) - m)
                    .collect();
                let dot: f64 = c.iter().zip(&centred).map(|(a, b)| a * b).sum();
                let sim = if n > 0.0 {
                    dot / (n * norm(&c)).max(1e-12)
                } else {
                    0.0
                };
                (ex.id.as_str(), ex.needs_cloud, sim)
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
        out.truncate(k);
        out
    }

    /// The table the semantic part reads, as the file names it (`None` for a surface scorer).
    pub fn table_name(&self) -> Option<&str> {
        self.embedding.as_ref().map(|e| e.table.as_str())
    }

    /// What the scorer reads, for the start-up log.
    pub fn describe(&self) -> String {
        match (&self.embedding, &self.semantic) {
            (Some(e), Some(sem)) => format!(
                "semantic: {} surface features and a {}-dimension static embedding of the last user message ({} table, sha256 {}…)",
                self.features.len(),
                sem.table.dims(),
                e.table,
                &e.sha256[..e.sha256.len().min(12)]
            ),
            _ => format!(
                "surface features only ({} features{})",
                self.features.len(),
                if self.ngram_bits > 0 { ", hashed n-grams" } else { "" }
            ),
        }
    }

    /// Attaches the table the semantic part was trained on; refuses another one.
    pub fn attach(&mut self, table: Arc<StaticTable>) -> Result<(), String> {
        let Some(e) = &self.embedding else {
            return Err("the scorer has no semantic part to attach a table to".into());
        };
        if e.sha256 != table.sha256() {
            return Err(format!(
                "the table's SHA-256 is {}, the scorer was trained on {}",
                table.sha256(),
                e.sha256
            ));
        }
        if e.weights.len() != table.dims() {
            return Err(format!(
                "the scorer has {} embedding weights, the table {} dimensions",
                e.weights.len(),
                table.dims()
            ));
        }
        self.semantic = Some(Semantic::fold(e, table));
        Ok(())
    }

    /// Checks a loaded file: known feature names, weights of the declared size, finite numbers.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=2).contains(&self.version) {
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
        if let Some(e) = &self.embedding {
            let d = e.weights.len();
            if d == 0 || e.mean.len() != d || e.scale.len() != d {
                return Err(format!(
                    "embedding: {} weights, {} means and {} scales",
                    d,
                    e.mean.len(),
                    e.scale.len()
                ));
            }
            if e.mean.iter().chain(&e.weights).any(|v| !v.is_finite())
                || e.scale.iter().any(|v| !(v.is_finite() && *v > 0.0))
            {
                return Err("embedding: an invalid mean, scale or weight".into());
            }
            if e.max_tokens == 0 {
                return Err("embedding: max_tokens must be at least 1".into());
            }
            if let Some(ex) = e.examples.iter().find(|ex| ex.vector.len() != d) {
                return Err(format!(
                    "embedding: example `{}` has {} dimensions, not {d}",
                    ex.id,
                    ex.vector.len()
                ));
            }
        }
        Ok(())
    }
}

/// How a scorer is fitted.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Bits of the n-gram hash (0: no n-grams).
    pub ngram_bits: u32,
    /// Whether the surface features take part (off: the embedding alone, when there is one).
    pub features: bool,
    /// Surface features fixed to these weights (a hand-set prior) instead of fitted: the fit
    /// then learns only the intercept, the n-grams and the embedding on top of them.
    pub prior: Option<Vec<FeatureWeight>>,
    /// The static embedding table for a semantic scorer, and its name in the scorer file.
    pub table: Option<(Arc<StaticTable>, String)>,
    /// Tokens of the text the embedding reads, at most.
    pub max_tokens: usize,
    /// Whether a semantic scorer keeps its training rows' embeddings, to explain scores.
    pub keep_examples: bool,
    /// Whether each workload (source) gets its own intercept while fitting.
    pub group_intercepts: bool,
    /// L2 penalty on the feature weights.
    pub l2_features: f64,
    /// L2 penalty on the n-gram weights (stronger: there are many and they memorize).
    pub l2_ngrams: f64,
    /// L2 penalty on the embedding weights.
    pub l2_embedding: f64,
    /// Gradient steps.
    pub iterations: usize,
    /// Step size.
    pub learning_rate: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            ngram_bits: 12,
            features: true,
            prior: None,
            table: None,
            max_tokens: 128,
            keep_examples: true,
            group_intercepts: true,
            l2_features: 1e-3,
            l2_ngrams: 1e-2,
            l2_embedding: 0.1,
            iterations: 3000,
            learning_rate: 0.3,
        }
    }
}

/// One labelled training example.
pub struct Example {
    /// Its id (kept with a semantic scorer to name a request's nearest neighbours).
    pub id: String,
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

/// Mean and standard deviation (1 when constant) of `values`.
fn standardize(values: impl Iterator<Item = f64> + Clone, n: f64) -> (f64, f64) {
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, if var > 1e-12 { var.sqrt() } else { 1.0 })
}

/// Fits a scorer on `examples`.
pub fn train(examples: &[Example], opts: &TrainOptions) -> Scorer {
    let features: Vec<Features> = examples.iter().map(|e| Features::of(&e.request)).collect();
    let n = examples.len().max(1) as f64;
    let mut weights = Vec::with_capacity(Feature::ALL.len());
    if let Some(prior) = &opts.prior {
        weights = prior.clone();
    } else if opts.features {
        for f in Feature::ALL {
            let values = features.iter().map(|x| transform(x.get(f)));
            let (mean, scale) = standardize(values, n);
            weights.push(FeatureWeight {
                name: f.name().to_owned(),
                mean,
                scale,
                weight: 0.0,
            });
        }
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
        embedding: None,
        semantic: None,
    };
    if let Some((table, name)) = &opts.table {
        let vectors: Vec<Vec<f32>> = examples
            .iter()
            .map(|e| table.embed(last_user_text(&e.request), opts.max_tokens))
            .collect();
        let (mean, scale) = (0..table.dims())
            .map(|j| standardize(vectors.iter().map(|v| f64::from(v[j])), n))
            .unzip();
        let e = EmbeddingWeights {
            table: name.clone(),
            sha256: table.sha256().to_owned(),
            max_tokens: opts.max_tokens,
            mean,
            scale,
            weights: vec![0.0; table.dims()],
            examples: if opts.keep_examples {
                examples
                    .iter()
                    .zip(&vectors)
                    .map(|(ex, v)| Neighbour {
                        id: ex.id.clone(),
                        needs_cloud: ex.needs_cloud,
                        vector: v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        scorer.version = 2;
        scorer.semantic = Some(Semantic::fold(&e, table.clone()));
        scorer.embedding = Some(e);
    }
    let inputs: Vec<Inputs> = examples
        .iter()
        .zip(&features)
        .map(|(e, f)| scorer.inputs(&e.request, f))
        .collect();
    let labels: Vec<f64> = examples
        .iter()
        .map(|e| if e.needs_cloud { 1.0 } else { 0.0 })
        .collect();
    let group = |e: &Example| if opts.group_intercepts { e.group } else { 0 };
    let groups = examples.iter().map(|e| group(e) + 1).max().unwrap_or(1);
    let mut group_bias = vec![0.0; groups];
    let mut group_size = vec![0.0; groups];
    for e in examples {
        group_size[group(e)] += 1.0;
    }
    // The dense weights: features, then embedding dimensions, each with its own penalty.
    let n_features = scorer.features.len();
    let n_embedding = scorer.embedding.as_ref().map_or(0, |e| e.weights.len());
    let l2: Vec<f64> = std::iter::repeat_n(opts.l2_features, n_features)
        .chain(std::iter::repeat_n(opts.l2_embedding, n_embedding))
        .collect();
    let mut dense: Vec<f64> = scorer
        .features
        .iter()
        .map(|fw| fw.weight)
        .chain(std::iter::repeat_n(0.0, n_embedding))
        .collect();
    let frozen = if opts.prior.is_some() { n_features } else { 0 };
    let mut ngrams = vec![0.0; scorer.ngrams.len()];
    for _ in 0..opts.iterations {
        let mut g_bias = vec![0.0; groups];
        let mut g_dense = vec![0.0; dense.len()];
        let mut g_sparse = vec![0.0; ngrams.len()];
        for ((x, y), e) in inputs.iter().zip(&labels).zip(examples) {
            let mut z = group_bias[group(e)];
            z += x.dense.iter().zip(&dense).map(|(v, w)| v * w).sum::<f64>();
            z += x.sparse.iter().map(|&b| ngrams[b as usize]).sum::<f64>() * x.sparse_value;
            let err = sigmoid(z) - y;
            g_bias[group(e)] += err;
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
        for ((w, g), l2) in dense.iter_mut().zip(&g_dense).zip(&l2).skip(frozen) {
            *w -= opts.learning_rate * (g / n + l2 * *w);
        }
        for (w, g) in ngrams.iter_mut().zip(&g_sparse) {
            *w -= opts.learning_rate * (g / n + opts.l2_ngrams * *w);
        }
    }
    for (fw, w) in scorer.features.iter_mut().zip(&dense) {
        fw.weight = *w;
    }
    scorer.ngrams = ngrams;
    if let (Some(e), Some((table, _))) = (&mut scorer.embedding, &opts.table) {
        e.weights = dense[n_features..].to_vec();
        scorer.semantic = Some(Semantic::fold(e, table.clone()));
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
            id: text.to_owned(),
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
            &TrainOptions {
                iterations: 400,
                ..Default::default()
            },
        );
        let b = train(
            &rows,
            &TrainOptions {
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

    /// A table whose words "prove" and "theorem" point one way and "hello" and "friend" the
    /// other.
    fn table() -> Arc<StaticTable> {
        let tokens = [
            "[PAD]", "[UNK]", "hello", "there", "friend", "prove", "theorem", "the", "step",
        ];
        let weights = [0.0, 1.0, 1.0, 0.5, 1.0, 2.0, 2.0, 0.2, 1.0];
        let vectors = [
            0.0, 0.0, 0.1, 0.1, -1.0, 0.2, 0.0, 0.1, -0.8, -0.1, 1.0, 0.3, 0.9, -0.2, 0.1, 0.0,
            0.5, 0.5,
        ];
        let bytes = crate::classify::embedding::tests::file(&tokens, &weights, &vectors, 2);
        Arc::new(StaticTable::parse(&bytes).unwrap())
    }

    #[test]
    fn a_semantic_scorer_is_deterministic_and_its_fast_score_is_the_model() {
        let opts = TrainOptions {
            iterations: 300,
            table: Some((table(), "test.bin".into())),
            ..Default::default()
        };
        let rows = data();
        let a = train(&rows, &opts);
        let b = train(&rows, &opts);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, serde_json::to_string(&b).unwrap());
        a.validate().unwrap();
        let e = a.embedding.as_ref().unwrap();
        assert_eq!((e.weights.len(), e.examples.len()), (2, rows.len()));
        assert_eq!(e.examples[0].id, rows[0].id);

        // Read back from its file, the scorer needs its table, and gives the same scores.
        let mut loaded: Scorer = serde_json::from_str(&json).unwrap();
        assert_eq!(
            loaded.semantic_share(&rows[0].request),
            0.0,
            "not attached yet"
        );
        loaded.attach(table()).unwrap();
        for row in &rows {
            let f = Features::of(&row.request);
            let explicit = sigmoid(a.logit(&a.inputs(&row.request, &f)));
            let fast = loaded.score(&row.request, &f);
            assert!((explicit - fast).abs() < 1e-6, "{explicit} vs {fast}");
            assert_eq!(fast, loaded.score(&row.request, &f));
        }
        let near = loaded.nearest(&rows[1].request, 3);
        assert_eq!(near.len(), 3);
        assert!(
            near.iter().all(|n| n.1),
            "a hard request's neighbours are hard: {near:?}"
        );

        // Another table is refused.
        let other = crate::classify::embedding::tests::sample();
        let err = loaded
            .attach(Arc::new(StaticTable::parse(&other).unwrap()))
            .unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");
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
            &TrainOptions {
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
            &TrainOptions {
                iterations: 1,
                ngram_bits: 0,
                ..Default::default()
            },
        );
        s.features[0].name = "colour".into();
        assert!(s.validate().unwrap_err().contains("colour"));
    }
}
