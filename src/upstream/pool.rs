//! An upstream's backends: which are healthy, and which one a request gets.
//!
//! Two judges decide whether a backend takes requests. Active checks (a `GET` every interval)
//! take it down after `unhealthy_after` failures and bring it back after `healthy_after`
//! successes. Passive checks watch real requests: `failures` in a row open its circuit for a
//! cool-down, after which one request probes it (half-open); success closes the circuit, failure
//! opens it again. A backend known to be down is never chosen, so no request waits on its
//! connect timeout.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderValue;

use super::resolve::Resolver;
use crate::api::{ChatRequest, Role};
use crate::config::{Balance, HealthConfig, UpstreamUrl};

/// One server of an upstream.
#[derive(Debug)]
pub struct Backend {
    /// Where it is.
    pub url: UpstreamUrl,
    /// Its name in headers and metrics: the upstream's name, with `/N` (from 1) when the
    /// upstream has several backends.
    pub label: String,
    pub(super) resolver: Arc<Resolver>,
    pub(super) host: HeaderValue,
    outstanding: AtomicUsize,
    state: Mutex<State>,
    /// Whether an active check has run yet.
    checked: std::sync::atomic::AtomicBool,
    /// What the checks found wrong that does not take it down (a model not pulled).
    problem: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct State {
    /// Down by active checks.
    down: bool,
    checks_ok: u32,
    checks_failed: u32,
    /// Failed requests in a row.
    failures: u32,
    /// The circuit is open until then; after it, requests probe it (half-open).
    open_until: Option<Instant>,
}

/// A backend's state, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Takes requests.
    Up,
    /// Failed its active health checks.
    Down,
    /// Ejected after failed requests, cooling down.
    Ejected,
    /// Cooled down: it takes requests again, the first answer closes the circuit and the
    /// first failure opens it again.
    HalfOpen,
}

impl BackendState {
    /// `up`, `down`, `ejected` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Ejected => "ejected",
            BackendState::HalfOpen => "half-open",
        }
    }
}

impl Backend {
    pub(super) fn new(url: UpstreamUrl, label: String) -> Result<Backend, String> {
        let host = HeaderValue::from_str(&url.host_header())
            .map_err(|_| format!("backend {label}: host is not a valid header"))?;
        Ok(Backend {
            resolver: Arc::new(Resolver::new(&url.host, url.port)),
            url,
            label,
            host,
            outstanding: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            checked: std::sync::atomic::AtomicBool::new(false),
            problem: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its state now.
    pub fn state(&self, now: Instant) -> BackendState {
        let s = self.lock();
        if s.down {
            BackendState::Down
        } else {
            match s.open_until {
                Some(until) if now < until => BackendState::Ejected,
                Some(_) => BackendState::HalfOpen,
                None => BackendState::Up,
            }
        }
    }

    /// Requests in progress on it.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Notes what the checks found wrong (`None`: nothing); true when that changed.
    pub fn set_problem(&self, problem: Option<String>) -> bool {
        let mut slot = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *slot != problem;
        *slot = problem;
        changed
    }

    /// What the checks found wrong that does not take it down, if anything.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether an active check has run on it yet.
    pub fn was_checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    /// Records an active check's result; true when this changed whether it is down.
    pub fn record_check(&self, ok: bool, health: &HealthConfig) -> bool {
        self.checked.store(true, Ordering::Release);
        let mut s = self.lock();
        if ok {
            s.checks_failed = 0;
            s.checks_ok = s.checks_ok.saturating_add(1);
            if s.down && s.checks_ok >= health.healthy_after {
                // Verified healthy: whatever the requests said before is over.
                *s = State::default();
                return true;
            }
        } else {
            s.checks_ok = 0;
            s.checks_failed = s.checks_failed.saturating_add(1);
            if !s.down && s.checks_failed >= health.unhealthy_after {
                s.down = true;
                return true;
            }
        }
        false
    }
}

/// A backend lent to one request: counted as outstanding until dropped (keep it for as long as
/// the answer streams). Say how the request went with [`Lease::succeeded`] or [`Lease::failed`];
/// a lease dropped without a word changes nothing.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    /// The backend's index.
    pub index: usize,
    /// Lent while half-open: a failure ejects at once.
    probe: bool,
}

impl Lease {
    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.pool.backends[self.index]
    }

    /// The backend answered (whatever the status, short of a sign it is broken): the circuit
    /// closes.
    pub fn succeeded(&mut self) {
        let mut s = self.backend().lock();
        s.failures = 0;
        s.open_until = None;
    }

    /// The request failed on this backend (refused, reset, timed out, 502/503/504): counts
    /// towards ejection; a failure while half-open ejects it again at once.
    pub fn failed(&mut self) {
        let cooldown = self.pool.health.cooldown;
        let threshold = self.pool.health.failures;
        let probe = self.probe;
        let label = self.backend().label.clone();
        let mut s = self.backend().lock();
        s.failures = s.failures.saturating_add(1);
        if probe || (s.open_until.is_none() && s.failures >= threshold) {
            s.open_until = Some(Instant::now() + cooldown);
            tracing::warn!(
                "backend {label} ejected for {cooldown:?} after {} failed request(s)",
                s.failures
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend().outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An upstream's backends and how one is chosen.
#[derive(Debug)]
pub struct Pool {
    /// The backends, in configuration order.
    pub backends: Vec<Backend>,
    balance: Balance,
    /// Thresholds and cool-down of the passive checks (and the active ones).
    pub health: HealthConfig,
    /// Requests one backend serves at once, at most.
    max_outstanding: Option<usize>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool of `backends`, all up at first.
    pub fn new(backends: Vec<Backend>, balance: Balance, health: HealthConfig) -> Pool {
        Pool {
            backends,
            balance,
            health,
            max_outstanding: None,
            next: AtomicUsize::new(0),
        }
    }

    /// Caps the requests each backend serves at once (`None`: no cap).
    pub fn with_max_outstanding(mut self, max: Option<usize>) -> Pool {
        self.max_outstanding = max;
        self
    }

    /// Whether every backend that could take a request is at `max_outstanding`: the request
    /// should go elsewhere at once rather than wait in the server's queue.
    pub fn saturated(&self) -> bool {
        let Some(max) = self.max_outstanding else {
            return false;
        };
        let now = Instant::now();
        let mut usable = self
            .backends
            .iter()
            .filter(|b| matches!(b.state(now), BackendState::Up | BackendState::HalfOpen))
            .peekable();
        usable.peek().is_some() && usable.all(|b| b.outstanding() >= max)
    }

    /// A backend for a request: never one that is down or ejected; one not in `tried` when
    /// there is such a one. `conversation` is the request's conversation key (for
    /// [`Balance::Conversation`]). `None` when no backend takes requests now (all down,
    /// or all at `max_outstanding`).
    pub fn select(self: &Arc<Self>, conversation: u64, tried: &[usize]) -> Option<Lease> {
        let now = Instant::now();
        if let [only] = &self.backends[..] {
            // The common case needs no list of candidates.
            return match only.state(now) {
                BackendState::Up => self.lease(0, false),
                BackendState::HalfOpen => self.lease(0, true),
                BackendState::Down | BackendState::Ejected => None,
            };
        }
        let states: Vec<BackendState> = self.backends.iter().map(|b| b.state(now)).collect();
        let room = |i: &usize| {
            self.max_outstanding
                .is_none_or(|max| self.backends[*i].outstanding() < max)
        };
        let usable =
            |i: &usize| matches!(states[*i], BackendState::Up | BackendState::HalfOpen) && room(i);
        let mut candidates: Vec<usize> = (0..self.backends.len())
            .filter(usable)
            .filter(|i| !tried.contains(i))
            .collect();
        if candidates.is_empty() {
            candidates = (0..self.backends.len()).filter(usable).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = match self.balance {
            Balance::RoundRobin => candidates[start % candidates.len()],
            Balance::LeastOutstanding => {
                let offset = start % candidates.len();
                let rotated = candidates[offset..].iter().chain(&candidates[..offset]);
                *rotated
                    .min_by_key(|i| self.backends[**i].outstanding())
                    .unwrap_or(&candidates[0])
            }
            Balance::Conversation => *candidates
                .iter()
                .max_by_key(|i| rendezvous(conversation, **i))
                .unwrap_or(&candidates[0]),
        };
        self.lease(index, states[index] == BackendState::HalfOpen)
    }

    fn lease(self: &Arc<Self>, index: usize, probe: bool) -> Option<Lease> {
        let outstanding = &self.backends[index].outstanding;
        match self.max_outstanding {
            // Taken only while below the cap, however many requests race for the last place.
            Some(max) => outstanding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?,
            None => outstanding.fetch_add(1, Ordering::AcqRel),
        };
        Some(Lease {
            pool: Arc::clone(self),
            index,
            probe,
        })
    }

    /// Whether requests must bring a conversation key: only for conversation balancing over
    /// several backends.
    pub fn wants_conversation(&self) -> bool {
        self.balance == Balance::Conversation && self.backends.len() > 1
    }

    /// Whether some backend takes requests now.
    pub fn any_available(&self) -> bool {
        let now = Instant::now();
        self.backends
            .iter()
            .any(|b| matches!(b.state(now), BackendState::Up | BackendState::HalfOpen))
    }
}

/// The rendezvous (highest random weight) score of backend `index` for `key`: each key prefers
/// the backend with the highest score, and losing one backend moves only its own keys.
fn rendezvous(key: u64, index: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, index).hash(&mut h);
    h.finish()
}

/// The conversation a request belongs to: a hash of its first system message and first user
/// message, which stay the same as the conversation grows.
pub fn conversation_key(req: &ChatRequest) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let first = |role: Role| {
        req.messages
            .iter()
            .find(|m| m.role == role)
            .map(|m| m.content.text())
    };
    first(Role::System).hash(&mut h);
    first(Role::User).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health() -> HealthConfig {
        HealthConfig {
            active: true,
            path: "/api/version".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 1,
            unhealthy_after: 2,
            failures: 2,
            cooldown: Duration::from_millis(50),
        }
    }

    fn pool(n: usize, balance: Balance) -> Arc<Pool> {
        let backends = (0..n)
            .map(|i| {
                let url = UpstreamUrl::parse(&format!("http://10.0.0.{i}:11434")).unwrap();
                Backend::new(url, format!("local/{}", i + 1)).unwrap()
            })
            .collect();
        Arc::new(Pool::new(backends, balance, health()))
    }

    fn pick(p: &Arc<Pool>) -> usize {
        p.select(0, &[]).map(|l| l.index).unwrap()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_the_down() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| pick(&p)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let h = health();
        assert!(!p.backends[1].record_check(false, &h));
        assert!(p.backends[1].record_check(false, &h), "down after two");
        assert!((0..10).all(|_| pick(&p) != 1));
        assert!(p.backends[1].record_check(true, &h), "back after one");
        assert!((0..10).any(|_| pick(&p) == 1));
    }

    #[test]
    fn least_outstanding_avoids_the_busy() {
        let p = pool(2, Balance::LeastOutstanding);
        let busy = p.select(0, &[]).unwrap();
        let busy_index = busy.index;
        for _ in 0..5 {
            assert_ne!(pick(&p), busy_index);
        }
        drop(busy);
    }

    #[test]
    fn a_conversation_stays_on_its_backend() {
        let p = pool(4, Balance::Conversation);
        let at = |key| p.select(key, &[]).unwrap().index;
        for key in [1u64, 99, 12345] {
            let first = at(key);
            assert!((0..5).all(|_| at(key) == first));
        }
        let spread: std::collections::HashSet<usize> = (0..64u64).map(at).collect();
        assert!(spread.len() >= 3, "{spread:?}");
        // Losing a backend moves only its own conversations.
        let before: Vec<usize> = (0..64u64).map(at).collect();
        let h = health();
        p.backends[0].record_check(false, &h);
        p.backends[0].record_check(false, &h);
        for (key, was) in before.iter().enumerate() {
            if *was != 0 {
                assert_eq!(at(key as u64), *was);
            }
        }
    }

    #[test]
    fn failures_eject_then_traffic_probes_it() {
        let p = pool(2, Balance::RoundRobin);
        for _ in 0..2 {
            p.select(0, &[1]).unwrap().failed();
        }
        assert_eq!(p.backends[0].state(Instant::now()), BackendState::Ejected);
        assert!((0..6).all(|_| pick(&p) == 1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(p.backends[0].state(Instant::now()), BackendState::HalfOpen);
        // Traffic flows while half-open: probes do not wait for each other.
        let mut probe = p.select(0, &[1]).unwrap();
        assert_eq!(probe.index, 0);
        assert_eq!(
            p.select(0, &[1]).unwrap().index,
            0,
            "a second request goes too"
        );
        probe.failed();
        assert_eq!(p.backends[0].state(Instant::now()), BackendState::Ejected);
        std::thread::sleep(Duration::from_millis(60));
        p.select(0, &[1]).unwrap().succeeded();
        assert_eq!(p.backends[0].state(Instant::now()), BackendState::Up);
    }

    #[test]
    fn retries_prefer_another_backend_and_none_means_none() {
        let p = pool(2, Balance::RoundRobin);
        assert_eq!(p.select(0, &[0]).unwrap().index, 1);
        assert_eq!(p.select(0, &[1]).unwrap().index, 0);
        let single = pool(1, Balance::RoundRobin);
        assert_eq!(
            single.select(0, &[0]).unwrap().index,
            0,
            "the only one again"
        );
        let h = health();
        single.backends[0].record_check(false, &h);
        single.backends[0].record_check(false, &h);
        assert!(single.select(0, &[]).is_none());
        assert!(!single.any_available());
    }
}
