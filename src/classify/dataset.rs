//! Labelled routing data (rows shaped like the routing development set) and cross-validation.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;

use super::scorer::{auc, train, Example, Scorer, TrainOptions};
use super::Features;
use crate::api::ChatRequest;

/// One labelled row.
pub struct Row {
    /// The row's id.
    pub id: String,
    /// Where it comes from (reported per source).
    pub source: String,
    /// The request and its label.
    pub example: Example,
}

#[derive(Deserialize)]
struct RawRow {
    id: Option<String>,
    source: Option<String>,
    messages: Option<serde_json::Value>,
    /// True when the small model was good enough (so the request did not need the cloud).
    weak_ok: Option<bool>,
    /// The label stated directly.
    needs_cloud: Option<bool>,
    /// A feedback label line: the route the request took…
    route: Option<String>,
    /// …and what the application said of its answer.
    feedback: Option<RawFeedback>,
    /// A shadow label line: the judge's verdict (its label is `weak_ok`).
    judge: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawFeedback {
    score: f64,
}

impl RawRow {
    /// The label: stated, or read off feedback on a local answer (a good one did not need the
    /// cloud, a bad one did); `None` for feedback that says nothing about the local model.
    fn needs_cloud(&self) -> Option<bool> {
        if let Some(v) = self.needs_cloud.or(self.weak_ok.map(|ok| !ok)) {
            return Some(v);
        }
        match (&self.feedback, self.route.as_deref()) {
            (Some(f), Some("local")) => Some(f.score < 0.5),
            _ => None,
        }
    }
}

/// Reads a JSONL file of `{id, source, messages, weak_ok | needs_cloud}` rows, or the gateway's
/// feedback label lines. Each distinct source becomes a training group (see
/// [`Example::group`]).
pub fn load(path: &Path) -> Result<Vec<Row>, String> {
    load_counting(path).map(|(rows, _)| rows)
}

/// [`load`], also counting the gateway's label lines left out: those without their text (kept
/// without `store_text`), and feedback on an answer that was not the local model's.
pub fn load_counting(path: &Path) -> Result<(Vec<Row>, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut skipped = 0;
    let mut rows = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |e: String| format!("{}:{}: {e}", path.display(), n + 1);
        let raw: RawRow = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        // The gateway's own label lines may lack their text (kept without `store_text`).
        let feedback = raw.feedback.is_some() || raw.judge.is_some();
        let (needs_cloud, messages) = match (raw.needs_cloud(), &raw.messages) {
            (Some(label), Some(messages)) => (label, messages),
            _ if feedback => {
                skipped += 1;
                continue;
            }
            (None, _) => return Err(at("row has neither needs_cloud nor weak_ok".into())),
            (Some(_), None) => return Err(at("row has no messages".into())),
        };
        let body = serde_json::json!({"model": "auto", "messages": messages});
        let request =
            ChatRequest::parse(Bytes::from(body.to_string())).map_err(|e| at(e.message))?;
        let default_source = if raw.feedback.is_some() {
            "feedback"
        } else {
            "all"
        };
        let source = raw.source.unwrap_or_else(|| default_source.into());
        let group = match sources.iter().position(|s| *s == source) {
            Some(g) => g,
            None => {
                sources.push(source.clone());
                sources.len() - 1
            }
        };
        let id = raw.id.unwrap_or_else(|| format!("row-{}", n + 1));
        rows.push(Row {
            id: id.clone(),
            source,
            example: Example {
                id,
                request,
                needs_cloud,
                group,
            },
        });
    }
    Ok((rows, skipped))
}

/// The AUC of `scorer`'s scores on `rows`, per source: how well the scorer in force today tells
/// requests that need the cloud from those that do not, on the same rows a new one is judged on.
pub fn auc_of(rows: &[Row], scorer: &Scorer) -> BTreeMap<String, (f64, usize)> {
    let mut by_source: BTreeMap<String, (Vec<f64>, Vec<bool>)> = BTreeMap::new();
    for row in rows {
        let request = &row.example.request;
        let score = scorer.score(request, &Features::of(request));
        let entry = by_source.entry(row.source.clone()).or_default();
        entry.0.push(score);
        entry.1.push(row.example.needs_cloud);
    }
    by_source
        .into_iter()
        .map(|(source, (scores, labels))| {
            let n = labels.len();
            (source, (auc(&scores, &labels), n))
        })
        .collect()
}

/// The fold of a row: rows of one conversation (ids that differ only in a `-tN` turn suffix)
/// share a fold, so no turn is judged by a model that saw its sibling.
fn fold_of(id: &str, folds: usize) -> usize {
    let group = match id.rfind("-t") {
        Some(i) if id[i + 2..].chars().all(|c| c.is_ascii_digit()) && i + 2 < id.len() => &id[..i],
        _ => id,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % folds as u64) as usize
}

/// Out-of-fold scores and AUC per source.
pub struct CvReport {
    /// `(id, score)` of every row, scored by a model that did not see it.
    pub predictions: Vec<(String, f64)>,
    /// Held-out AUC per source, with the row count; `"all"` for every row.
    pub auc: BTreeMap<String, (f64, usize)>,
}

/// K-fold cross-validation.
pub fn cross_validate(rows: &[Row], folds: usize, opts: &TrainOptions) -> CvReport {
    let mut scores = vec![0.0; rows.len()];
    for k in 0..folds {
        let (train_rows, test_rows): (Vec<usize>, Vec<usize>) =
            (0..rows.len()).partition(|&i| fold_of(&rows[i].id, folds) != k);
        if test_rows.is_empty() || train_rows.is_empty() {
            continue;
        }
        let examples: Vec<Example> = train_rows
            .iter()
            .map(|&i| Example {
                id: rows[i].id.clone(),
                request: rows[i].example.request.clone(),
                needs_cloud: rows[i].example.needs_cloud,
                group: rows[i].example.group,
            })
            .collect();
        let model = train(&examples, opts);
        for &i in &test_rows {
            scores[i] = score(&model, &rows[i].example.request);
        }
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups.entry(r.source.clone()).or_default().push(i);
        groups.entry("all".into()).or_default().push(i);
    }
    let auc = groups
        .into_iter()
        .map(|(source, idx)| {
            let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
            let l: Vec<bool> = idx.iter().map(|&i| rows[i].example.needs_cloud).collect();
            (source, (auc(&s, &l), idx.len()))
        })
        .collect();
    CvReport {
        predictions: rows.iter().map(|r| r.id.clone()).zip(scores).collect(),
        auc,
    }
}

fn score(model: &Scorer, req: &ChatRequest) -> f64 {
    model.score(req, &Features::of(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_of_one_conversation_share_a_fold() {
        for folds in [3, 5, 7] {
            assert_eq!(
                fold_of("mtbench-81-t1", folds),
                fold_of("mtbench-81-t2", folds)
            );
            assert_eq!(fold_of("q-t", folds), fold_of("q-t", folds));
        }
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| fold_of(&format!("gsm8k-{i}"), 5))
            .collect();
        assert_eq!(spread.len(), 5);
    }
}
