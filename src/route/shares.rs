//! Shares instead of thresholds: with `routing.scorer.local_share` (and `hybrid_share`), the
//! score thresholds follow the scores of recent traffic so that those shares of the requests the
//! scorer decides go local (and hybrid), however the traffic changes.
//!
//! The window holds the last [`Shares::window`] scores; every [`REFRESH`] new scores the
//! thresholds become the window's quantiles at `local_share` and `local_share + hybrid_share`.
//! Until the window has [`MIN_SCORES`] scores, the configured thresholds hold. Requests a rule
//! decides are not counted: they are not the scorer's to share out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Scores between two recomputations of the thresholds.
pub const REFRESH: usize = 64;
/// Scores the window needs before it sets the thresholds.
pub const MIN_SCORES: usize = 128;

/// The target shares, the window of recent scores, and the thresholds they give.
#[derive(Debug)]
pub struct Shares {
    local: f64,
    hybrid: f64,
    window: usize,
    scores: Mutex<Window>,
    /// `local_below` and `cloud_from` now, as f64 bits, read without a lock.
    local_below: AtomicU64,
    cloud_from: AtomicU64,
}

#[derive(Debug, Default)]
struct Window {
    scores: VecDeque<f64>,
    since_refresh: usize,
    /// Scratch space for the quantiles, kept to avoid an allocation per refresh.
    sorted: Vec<f64>,
}

impl Shares {
    /// Shares `local` and `hybrid` (the rest goes to the cloud) over the last `window` scores,
    /// starting from the configured thresholds.
    pub fn new(
        local: f64,
        hybrid: f64,
        window: usize,
        local_below: f64,
        cloud_from: f64,
    ) -> Shares {
        Shares {
            local,
            hybrid,
            window: window.max(MIN_SCORES),
            scores: Mutex::new(Window::default()),
            local_below: AtomicU64::new(local_below.to_bits()),
            cloud_from: AtomicU64::new(cloud_from.to_bits()),
        }
    }

    /// `(local_below, cloud_from)` now.
    pub fn thresholds(&self) -> (f64, f64) {
        (
            f64::from_bits(self.local_below.load(Ordering::Relaxed)),
            f64::from_bits(self.cloud_from.load(Ordering::Relaxed)),
        )
    }

    /// How many scores the window holds at most.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The target shares, `(local, hybrid)`.
    pub fn targets(&self) -> (f64, f64) {
        (self.local, self.hybrid)
    }

    /// Counts a score the scorer decided on; moves the thresholds every [`REFRESH`] scores.
    pub fn observe(&self, score: f64) {
        if !score.is_finite() {
            return;
        }
        let mut w = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        if w.scores.len() == self.window {
            w.scores.pop_front();
        }
        w.scores.push_back(score);
        w.since_refresh += 1;
        if w.since_refresh < REFRESH || w.scores.len() < MIN_SCORES {
            return;
        }
        w.since_refresh = 0;
        let Window { scores, sorted, .. } = &mut *w;
        sorted.clear();
        sorted.extend(scores.iter().copied());
        sorted.sort_unstable_by(f64::total_cmp);
        // A request goes local when its score is below the threshold: the threshold is the
        // first score past the local share.
        let at = |share: f64| {
            let i = (share * sorted.len() as f64).round() as usize;
            match sorted.get(i) {
                Some(&s) => s,
                None => f64::INFINITY,
            }
        };
        let local_below = at(self.local);
        let cloud_from = at(self.local + self.hybrid).max(local_below);
        self.local_below
            .store(local_below.to_bits(), Ordering::Relaxed);
        self.cloud_from
            .store(cloud_from.to_bits(), Ordering::Relaxed);
    }

    /// The shares of the window's scores each route would get at today's thresholds:
    /// `(local, hybrid, cloud)`.
    pub fn current(&self) -> (f64, f64, f64) {
        let (local_below, cloud_from) = self.thresholds();
        let w = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.scores.len().max(1) as f64;
        let local = w.scores.iter().filter(|&&s| s < local_below).count() as f64;
        let hybrid = w
            .scores
            .iter()
            .filter(|&&s| s >= local_below && s < cloud_from)
            .count() as f64;
        (local / n, hybrid / n, (n - local - hybrid).max(0.0) / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeatable stream of scores spread over `[low, high)`.
    fn scores(n: usize, low: f64, high: f64, seed: u64) -> impl Iterator<Item = f64> {
        let mut x = seed;
        (0..n).map(move |_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            low + (high - low) * ((x >> 11) as f64 / (1u64 << 53) as f64)
        })
    }

    /// The routes `decided` requests took, as shares.
    fn routed(shares: &Shares, decided: &[f64]) -> (f64, f64, f64) {
        let (mut l, mut h, mut c) = (0.0, 0.0, 0.0);
        for &s in decided {
            let (local_below, cloud_from) = shares.thresholds();
            if s < local_below {
                l += 1.0;
            } else if s < cloud_from {
                h += 1.0;
            } else {
                c += 1.0;
            }
            shares.observe(s);
        }
        let n = decided.len() as f64;
        (l / n, h / n, c / n)
    }

    #[test]
    fn shares_hold_when_the_scores_shift() {
        let shares = Shares::new(0.6, 0.2, 1000, 0.5, 0.5);
        // Traffic whose scores sit low: after a window, 60 / 20 / 20.
        let first: Vec<f64> = scores(1000, 0.0, 0.4, 1).collect();
        routed(&shares, &first);
        let steady: Vec<f64> = scores(1000, 0.0, 0.4, 2).collect();
        let (l, h, c) = routed(&shares, &steady);
        assert!(
            (l - 0.6).abs() <= 0.05 && (h - 0.2).abs() <= 0.05,
            "{l} {h} {c}"
        );
        // Harder traffic: with fixed thresholds most of it would now go to the cloud. One window
        // later the shares are back.
        let harder: Vec<f64> = scores(1000, 0.5, 0.9, 3).collect();
        routed(&shares, &harder);
        let after: Vec<f64> = scores(1000, 0.5, 0.9, 4).collect();
        let (l, h, c) = routed(&shares, &after);
        assert!((l - 0.6).abs() <= 0.05, "local {l}");
        assert!((h - 0.2).abs() <= 0.05, "hybrid {h}");
        assert!((c - 0.2).abs() <= 0.05, "cloud {c}");
        let (local_below, cloud_from) = shares.thresholds();
        assert!(
            local_below > 0.5 && cloud_from > local_below,
            "{local_below} {cloud_from}"
        );
        let (l, h, _) = shares.current();
        assert!((l - 0.6).abs() <= 0.05 && (h - 0.2).abs() <= 0.05);
    }

    #[test]
    fn the_configured_thresholds_hold_until_the_window_fills() {
        let shares = Shares::new(0.5, 0.0, 1000, 0.3, 0.7);
        for s in scores(MIN_SCORES - 1, 0.8, 0.9, 5) {
            shares.observe(s);
        }
        assert_eq!(shares.thresholds(), (0.3, 0.7));
        for s in scores(REFRESH, 0.8, 0.9, 6) {
            shares.observe(s);
        }
        assert_ne!(shares.thresholds(), (0.3, 0.7));
        shares.observe(f64::NAN);
    }
}
