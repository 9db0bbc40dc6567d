//! The last requests the gateway answered, for the dashboard page: what was decided and what it
//! cost, never what was said. A bounded ring: the newest push out the oldest.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::Record;

/// How many requests are kept.
pub const KEPT: usize = 100;

/// How much of a path is kept: a client's path is as long as it likes.
const PATH_KEPT: usize = 120;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One answered request, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    /// Seconds since the Unix epoch, when it ended.
    pub time: f64,
    /// `x-request-id`.
    pub id: String,
    /// The path asked for.
    pub path: String,
    /// The status answered (0 when none was written).
    pub status: u16,
    /// The route, or `gateway`.
    pub route: &'static str,
    /// What decided the route.
    pub rule: Option<String>,
    /// The scorer's score.
    pub score: Option<f64>,
    /// The upstream that answered.
    pub upstream: Option<String>,
    /// `hit`, `miss`, `bypass` or `none`.
    pub cache: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// What it cost upstream, in US dollars.
    pub cost_usd: Option<f64>,
    /// From arrival to the end of the answer.
    pub latency_ms: f64,
    /// From arrival to the first byte of the answer.
    pub first_byte_ms: Option<f64>,
}

impl Recent {
    /// The entry for a finished request.
    pub fn of(id: &str, path: &str, status: u16, rec: &Record, elapsed: Duration) -> Recent {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Recent {
            time: (time * 1e3).round() / 1e3,
            id: id.to_owned(),
            path: cut(path, PATH_KEPT).to_owned(),
            status,
            route: rec.route_label(),
            rule: rec.rule.clone(),
            score: rec.score,
            upstream: rec.upstream.clone(),
            cache: rec.cache_label(),
            prompt_tokens: rec.usage.map(|u| u.prompt_tokens),
            completion_tokens: rec.usage.map(|u| u.completion_tokens),
            cost_usd: rec.usage.map(|_| rec.cost),
            latency_ms: ms(elapsed),
            first_byte_ms: rec.first_byte.map(ms),
        }
    }
}

/// The ring of the last [`KEPT`] requests.
#[derive(Debug, Default)]
pub struct Ring(Mutex<VecDeque<Recent>>);

impl Ring {
    /// Adds a request, pushing out the oldest when full.
    pub fn push(&self, entry: Recent) {
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The requests kept, newest first.
    pub fn newest_first(&self) -> Vec<Recent> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_requests_newest_first() {
        let ring = Ring::default();
        for n in 0..KEPT + 5 {
            let rec = Record::new();
            ring.push(Recent::of(
                &format!("req_{n}"),
                "/v1/chat/completions",
                200,
                &rec,
                Duration::ZERO,
            ));
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].id, format!("req_{}", KEPT + 4));
        assert_eq!(kept[KEPT - 1].id, "req_5");
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let path = format!("/{}", "é".repeat(200));
        let entry = Recent::of("r", &path, 404, &Record::new(), Duration::ZERO);
        assert!(entry.path.len() <= PATH_KEPT && path.starts_with(&entry.path));
    }
}
