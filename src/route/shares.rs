//! Shares instead of thresholds: with `routing.scorer.local_share` (and `hybrid_share`), the
//! score thresholds follow the scores of recent traffic so that those shares of the requests the
//! scorer decides go local (and hybrid), however the traffic changes.
//!
//! The window holds the last [`Shares::window`] scores; every [`REFRESH`] new scores the
//! thresholds become the window's quantiles at `local_share` and `local_share + hybrid_share`.
//! Until the window has [`MIN_SCORES`] scores, the configured thresholds hold. Requests a rule
//! decides are not counted: they are not the scorer's to share out.
//!
//! With a daily cloud budget (`routing.scorer.cloud_budget`), what the cloud side costs is
//! counted per UTC day; once half the budget is spent, the local share rises in step with the
//! spend, up to `max_local_share` when the budget is gone. The hybrid share stays as configured
//! while there is room for it (local and hybrid together never pass 1). The spend is this
//! replica's own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::SharesConfig;

/// Scores between two recomputations of the thresholds.
pub const REFRESH: usize = 64;
/// Scores the window needs before it sets the thresholds.
pub const MIN_SCORES: usize = 128;

/// The target shares, the window of recent scores, and the thresholds they give.
#[derive(Debug)]
pub struct Shares {
    config: SharesConfig,
    window: usize,
    scores: Mutex<Window>,
    /// The UTC day (days since the epoch) and what the cloud side cost in it, in US dollars.
    spent: Mutex<(u64, f64)>,
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
    /// The configured shares (the rest goes to the cloud) over the last `config.window` scores,
    /// starting from the configured thresholds.
    pub fn new(config: &SharesConfig, local_below: f64, cloud_from: f64) -> Shares {
        Shares {
            config: config.clone(),
            window: config.window.max(MIN_SCORES),
            scores: Mutex::new(Window::default()),
            spent: Mutex::new((0, 0.0)),
            local_below: AtomicU64::new(local_below.to_bits()),
            cloud_from: AtomicU64::new(cloud_from.to_bits()),
        }
    }

    /// Shares for a reloaded `config` that keep what `kept` learnt: its thresholds, its window
    /// of scores when the window's size is the same, and the day's cloud spend.
    pub fn reloaded(config: &SharesConfig, kept: &Shares) -> Shares {
        let (local_below, cloud_from) = kept.thresholds();
        let shares = Shares::new(config, local_below, cloud_from);
        if shares.window == kept.window {
            let scores = kept.scores.lock().unwrap_or_else(|e| e.into_inner());
            let mut w = shares.scores.lock().unwrap_or_else(|e| e.into_inner());
            w.scores.clone_from(&scores.scores);
        }
        *shares.spent.lock().unwrap_or_else(|e| e.into_inner()) =
            *kept.spent.lock().unwrap_or_else(|e| e.into_inner());
        shares
    }

    /// The configuration these shares follow.
    pub fn config(&self) -> &SharesConfig {
        &self.config
    }

    /// Counts `usd` spent on the cloud side at `now` (seconds since the epoch).
    pub fn spend(&self, usd: f64, now: u64) {
        if self.config.cloud_budget.is_none() || usd.is_nan() || usd <= 0.0 {
            return;
        }
        let today = now / 86_400;
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if spent.0 != today {
            *spent = (today, 0.0);
        }
        spent.1 += usd;
    }

    /// What the cloud side cost today at `now`, in US dollars.
    pub fn spent_today(&self, now: u64) -> f64 {
        let spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if spent.0 == now / 86_400 {
            spent.1
        } else {
            0.0
        }
    }

    /// The local and hybrid shares aimed at `now`: the configured ones, with the local share
    /// raised as the day's cloud budget runs out.
    pub fn aimed(&self, now: u64) -> (f64, f64) {
        let (local, hybrid) = (self.config.local, self.config.hybrid);
        let Some(budget) = &self.config.cloud_budget else {
            return (local, hybrid);
        };
        let used = if budget.daily_usd > 0.0 {
            self.spent_today(now) / budget.daily_usd
        } else {
            1.0
        };
        // Nothing moves in the first half of the budget; the second half moves it all the way.
        let pressure = ((used - 0.5) / 0.5).clamp(0.0, 1.0);
        let local = local * (1.0 - pressure) + budget.max_local_share.max(local) * pressure;
        (local, hybrid.min(1.0 - local))
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

    /// Counts a score the scorer decided on at `now` (seconds since the epoch); moves the
    /// thresholds every [`REFRESH`] scores.
    pub fn observe(&self, score: f64, now: u64) {
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
        let (local, hybrid) = self.aimed(now);
        let local_below = at(local);
        let cloud_from = at(local + hybrid).max(local_below);
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
    use crate::config::CloudBudget;

    /// A moment in a day, for the tests' clock.
    const NOW: u64 = 20_000 * 86_400 + 3_600;

    fn without_budget(
        local: f64,
        hybrid: f64,
        window: usize,
        local_below: f64,
        cloud_from: f64,
    ) -> Shares {
        let config = SharesConfig {
            local,
            hybrid,
            window,
            cloud_budget: None,
        };
        Shares::new(&config, local_below, cloud_from)
    }

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
            shares.observe(s, NOW);
        }
        let n = decided.len() as f64;
        (l / n, h / n, c / n)
    }

    #[test]
    fn shares_hold_when_the_scores_shift() {
        let shares = without_budget(0.6, 0.2, 1000, 0.5, 0.5);
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
        let shares = without_budget(0.5, 0.0, 1000, 0.3, 0.7);
        for s in scores(MIN_SCORES - 1, 0.8, 0.9, 5) {
            shares.observe(s, NOW);
        }
        assert_eq!(shares.thresholds(), (0.3, 0.7));
        for s in scores(REFRESH, 0.8, 0.9, 6) {
            shares.observe(s, NOW);
        }
        assert_ne!(shares.thresholds(), (0.3, 0.7));
        shares.observe(f64::NAN, NOW);
    }

    #[test]
    fn the_local_share_rises_as_the_days_cloud_budget_runs_out() {
        let config = SharesConfig {
            local: 0.5,
            hybrid: 0.2,
            window: 1000,
            cloud_budget: Some(CloudBudget {
                daily_usd: 10.0,
                max_local_share: 0.9,
            }),
        };
        let shares = Shares::new(&config, 0.5, 0.5);
        routed(&shares, &scores(1000, 0.0, 1.0, 7).collect::<Vec<_>>());
        let (l, h, _) = routed(&shares, &scores(1000, 0.0, 1.0, 8).collect::<Vec<_>>());
        assert!(
            (l - 0.5).abs() <= 0.05 && (h - 0.2).abs() <= 0.05,
            "{l} {h}"
        );

        // The first half of the budget changes nothing.
        shares.spend(4.0, NOW);
        assert_eq!(shares.aimed(NOW), (0.5, 0.2));
        // Three quarters spent: the local share is half way to its ceiling.
        shares.spend(3.5, NOW);
        let (local, hybrid) = shares.aimed(NOW);
        assert!((local - 0.7).abs() < 1e-9 && (hybrid - 0.2).abs() < 1e-9);
        routed(&shares, &scores(1000, 0.0, 1.0, 9).collect::<Vec<_>>());
        let (l, h, _) = routed(&shares, &scores(1000, 0.0, 1.0, 10).collect::<Vec<_>>());
        assert!(
            (l - 0.7).abs() <= 0.05 && (h - 0.2).abs() <= 0.05,
            "{l} {h}"
        );
        // Spent: the ceiling, and the hybrid share makes room.
        shares.spend(5.0, NOW);
        assert_eq!(shares.spent_today(NOW), 12.5);
        routed(&shares, &scores(1000, 0.0, 1.0, 11).collect::<Vec<_>>());
        let (l, h, c) = routed(&shares, &scores(1000, 0.0, 1.0, 12).collect::<Vec<_>>());
        assert!(
            (l - 0.9).abs() <= 0.05 && (h - 0.1).abs() <= 0.05,
            "{l} {h} {c}"
        );
        assert!(c <= 0.05, "{c}");

        // A new UTC day starts from the configured shares.
        let tomorrow = NOW + 86_400;
        assert_eq!(shares.spent_today(tomorrow), 0.0);
        assert_eq!(shares.aimed(tomorrow), (0.5, 0.2));
        shares.spend(1.0, tomorrow);
        assert_eq!(shares.spent_today(tomorrow), 1.0);

        // A reload keeps the day's spend and what the window learnt.
        let raised = SharesConfig {
            local: 0.6,
            ..config
        };
        let reloaded = Shares::reloaded(&raised, &shares);
        assert_eq!(reloaded.spent_today(tomorrow), 1.0);
        assert_eq!(reloaded.thresholds(), shares.thresholds());
        assert_eq!(reloaded.current(), shares.current());
    }
}
