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
    messages: serde_json::Value,
    /// True when the small model was good enough (so the request did not need the cloud).
    weak_ok: Option<bool>,
    /// The label stated directly.
    needs_cloud: Option<bool>,
}

/// Reads a JSONL file of `{id, source, messages, weak_ok | needs_cloud}` rows. Each distinct
/// source becomes a training group (see [`Example::group`]).
pub fn load(path: &Path) -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |e: String| format!("{}:{}: {e}", path.display(), n + 1);
        let raw: RawRow = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let needs_cloud = match (raw.needs_cloud, raw.weak_ok) {
            (Some(v), _) => v,
            (None, Some(ok)) => !ok,
            (None, None) => return Err(at("row has neither needs_cloud nor weak_ok".into())),
        };
        let body = serde_json::json!({"model": "auto", "messages": raw.messages});
        let request =
            ChatRequest::parse(Bytes::from(body.to_string())).map_err(|e| at(e.message))?;
        let source = raw.source.unwrap_or_else(|| "all".into());
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
    Ok(rows)
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
