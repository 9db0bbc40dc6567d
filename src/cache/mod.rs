//! The exact response cache: deterministic answers stored once, replayed as JSON or SSE.
//!
//! A request is cacheable when it asks for `temperature: 0` or a routing rule says
//! `cache: always`; `Cache-Control: no-cache` on the request skips the look-up (the fresh answer
//! is stored), `no-store` skips the cache entirely. Only complete, successful answers are stored.
//! The key is what the client asked, as routed (see [`Keyer`]); the entry is the answer the
//! client got, from whichever upstream served it — a fallback's answer included, so that
//! repeats do not pay the cloud again while the local model is down — and it names that
//! upstream, which a replay reports.
//! Identical misses that arrive together are coalesced: the first goes upstream, the others wait
//! for its answer (and go upstream themselves if it fails).

mod key;
mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::api::{ChatRequest, Completion};
use crate::config::CacheConfig;
use crate::state::Shared;
use crate::vocab::{CacheOutcome, CachePolicy};
pub use key::{Key, Keyer};
pub use metrics::CacheMetrics;
use metrics::Looked;

/// How one request uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// Look for a stored answer.
    pub lookup: bool,
    /// Store the fresh answer.
    pub store: bool,
}

impl Use {
    /// Neither look nor store.
    pub const BYPASS: Use = Use {
        lookup: false,
        store: false,
    };

    /// Decides from the cache being on, the rule's policy, the request's temperature and its
    /// `Cache-Control` header.
    pub fn decide(
        enabled: bool,
        policy: CachePolicy,
        temperature: Option<f64>,
        cache_control: Option<&str>,
    ) -> Use {
        let cacheable = match policy {
            CachePolicy::Always => true,
            CachePolicy::Never => false,
            CachePolicy::Auto => temperature == Some(0.0),
        };
        if !enabled || !cacheable {
            return Use::BYPASS;
        }
        let directives = cache_control.unwrap_or_default();
        let has = |d: &str| {
            directives
                .split(',')
                .any(|x| x.trim().eq_ignore_ascii_case(d))
        };
        if has("no-store") {
            Use::BYPASS
        } else if has("no-cache") {
            Use {
                lookup: false,
                store: true,
            }
        } else {
            Use {
                lookup: true,
                store: true,
            }
        }
    }

    /// The `x-switchyard-cache` of an answer that did not come from the cache.
    pub fn outcome(self) -> CacheOutcome {
        if self.lookup {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Bypass
        }
    }
}

/// Which upstream and model answered a stored request: a replay names them and its accounting
/// prices them, whichever upstream the request was decided for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The upstream's configured name.
    pub upstream: Box<str>,
    /// The model it was asked for.
    pub model: Box<str>,
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// The answer, for an SSE replay.
    pub completion: Completion,
    /// The `chat.completion` body a non-streaming client gets.
    pub json: Bytes,
    /// Who answered.
    pub served: Served,
}

impl Entry {
    /// An entry for `completion` from `served`; `json` is the upstream's own body when the
    /// answer came as JSON.
    pub fn new(completion: Completion, json: Option<Bytes>, served: Served) -> Entry {
        let json = json.unwrap_or_else(|| Bytes::from(completion.to_json()));
        Entry {
            completion,
            json,
            served,
        }
    }

    /// The form other replicas read: a JSON array naming who answered, a newline, the body
    /// (JSON strings hold no raw newline, so the first one ends the array).
    fn to_shared(&self) -> Bytes {
        let who = serde_json::json!([&*self.served.upstream, &*self.served.model]).to_string();
        let mut out = Vec::with_capacity(who.len() + 1 + self.json.len());
        out.extend_from_slice(who.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.json);
        Bytes::from(out)
    }

    /// Reads what [`Entry::to_shared`] wrote; `None` for anything else.
    fn from_shared(stored: &Bytes) -> Option<Entry> {
        let cut = stored.iter().position(|&b| b == b'\n')?;
        let (upstream, model): (String, String) = serde_json::from_slice(&stored[..cut]).ok()?;
        let json = stored.slice(cut + 1..);
        let completion = Completion::from_json(&json)?;
        let served = Served {
            upstream: upstream.into(),
            model: model.into(),
        };
        Some(Entry::new(completion, Some(json), served))
    }

    /// Roughly what the entry occupies: its JSON and its text once more.
    fn weight(&self) -> u32 {
        let size = 2 * self.json.len() + 128;
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

/// The result of a look-up.
pub enum Lookup {
    /// A stored answer.
    Hit(Arc<Entry>),
    /// No answer: this request goes upstream and hands its answer to others waiting for it.
    Lead(Flight),
    /// The same request is upstream already: wait for its answer.
    Wait(Waiter),
}

/// Where a waiter hears of the answer of the request in flight (`None` until it lands).
pub type Waiter = watch::Receiver<Option<Arc<Entry>>>;

/// The requests in flight, by key.
type Flights = HashMap<Key, Waiter>;

/// What a look-up found, once any identical request in flight has been waited for.
pub enum Found {
    /// A stored answer, or the answer of the identical request that was in flight.
    Entry(Arc<Entry>),
    /// Nothing: go upstream, leading the flight when there is one to lead.
    Lead(Option<Flight>),
}

/// The cache and its in-flight requests.
pub struct Cache {
    store: moka::sync::Cache<Key, Arc<Entry>>,
    flights: Arc<Mutex<Flights>>,
    keyer: Keyer,
    max_entry_bytes: u64,
    ttl: Duration,
    metrics: CacheMetrics,
    /// Answers shared with the other replicas, when configured.
    shared: Option<Arc<Shared>>,
}

impl Cache {
    /// A cache with the configured size, lifetime and entry limit, counting into `metrics`;
    /// with `shared`, answers are also stored in, and looked for in, the replicas' shared store.
    pub fn new(config: &CacheConfig, metrics: CacheMetrics, shared: Option<Arc<Shared>>) -> Cache {
        let on_evict = metrics.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_k: &Key, e: &Arc<Entry>| e.weight())
            .time_to_live(config.ttl)
            .eviction_listener(move |_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => return,
                };
                on_evict.evicted(cause);
            })
            .build();
        Cache {
            store,
            flights: Arc::new(Mutex::new(HashMap::new())),
            keyer: Keyer::new(),
            max_entry_bytes: config.max_entry_bytes,
            ttl: config.ttl,
            metrics,
            shared,
        }
    }

    /// The key of a request for a tenant, upstream and model.
    pub fn key(&self, tenant: &str, upstream: &str, model: &str, req: &ChatRequest) -> Key {
        self.keyer.key(tenant, upstream, model, req)
    }

    /// Answers larger than this are not stored; the reader keeps at most this much.
    pub fn max_entry_bytes(&self) -> usize {
        usize::try_from(self.max_entry_bytes).unwrap_or(usize::MAX)
    }

    /// Looks `key` up; on a miss, either leads the upstream call or joins one in flight.
    pub fn lookup(&self, key: Key) -> Lookup {
        if let Some(entry) = self.store.get(&key) {
            return Lookup::Hit(entry);
        }
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = flights.get(&key) {
            return Lookup::Wait(rx.clone());
        }
        // The answer may have landed between the look-up and the lock.
        if let Some(entry) = self.store.get(&key) {
            return Lookup::Hit(entry);
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key, rx);
        Lookup::Lead(Flight {
            key,
            tx,
            flights: Arc::clone(&self.flights),
        })
    }

    /// Looks `key` up and counts the result, waiting (once, up to `patience`) for an
    /// identical request in flight.
    pub async fn find(&self, key: Key, patience: Duration) -> Found {
        match self.lookup(key) {
            Lookup::Hit(entry) => {
                self.metrics.lookup(Looked::Hit);
                Found::Entry(entry)
            }
            Lookup::Lead(flight) => {
                if let Some(entry) = self.look_up_shared(key, flight).await {
                    self.metrics.lookup(Looked::Hit);
                    return Found::Entry(entry);
                }
                self.metrics.lookup(Looked::Miss);
                // The flight was handed on: lead again, unless another request leads now.
                match self.lookup(key) {
                    Lookup::Hit(entry) => Found::Entry(entry),
                    Lookup::Lead(flight) => Found::Lead(Some(flight)),
                    Lookup::Wait(_) => Found::Lead(None),
                }
            }
            Lookup::Wait(rx) => {
                if let Some(entry) = wait(rx, patience).await {
                    self.metrics.lookup(Looked::Coalesced);
                    return Found::Entry(entry);
                }
                // The request in flight failed: try on our own, leading if nobody else does.
                self.metrics.lookup(Looked::Miss);
                match self.lookup(key) {
                    Lookup::Hit(entry) => Found::Entry(entry),
                    Lookup::Lead(flight) => Found::Lead(Some(flight)),
                    Lookup::Wait(_) => Found::Lead(None),
                }
            }
        }
    }

    /// An answer another replica stored, kept here and handed to those waiting on `flight`;
    /// `None` (and `flight` dropped, releasing them) when there is none.
    async fn look_up_shared(&self, key: Key, flight: Flight) -> Option<Arc<Entry>> {
        let stored = self.shared.as_ref()?.cached(key.0).await?;
        let entry = Arc::new(Entry::from_shared(&stored)?);
        self.store.insert(key, Arc::clone(&entry));
        flight.tx.send_replace(Some(Arc::clone(&entry)));
        Some(entry)
    }

    /// Stores an answer (when small enough) and hands it to the requests waiting on `flight`;
    /// with a shared store, the other replicas get it too.
    pub fn store(&self, key: Key, entry: Entry, flight: Option<Flight>) {
        let entry = Arc::new(entry);
        if entry.json.len() as u64 <= self.max_entry_bytes {
            self.store.insert(key, Arc::clone(&entry));
            self.metrics.stored();
            if let Some(shared) = &self.shared {
                let (shared, value, ttl) = (Arc::clone(shared), entry.to_shared(), self.ttl);
                tokio::spawn(async move { shared.store(key.0, value, ttl).await });
            }
        }
        if let Some(flight) = flight {
            flight.tx.send_replace(Some(entry));
        }
    }

    /// Entries stored now.
    pub fn entries(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.entry_count()
    }

    /// Bytes stored now (as weighed).
    pub fn bytes(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.weighted_size()
    }

    /// Brings the entry and byte gauges up to date.
    pub fn refresh(&self) {
        self.metrics.size(self.entries(), self.bytes());
    }
}

/// The request that went upstream for a key; waiters hear of its answer, or of its end when it
/// is dropped without one.
pub struct Flight {
    key: Key,
    tx: watch::Sender<Option<Arc<Entry>>>,
    flights: Arc<Mutex<Flights>>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Only this flight's own registration is removed.
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.key);
        }
    }
}

/// Waits up to `limit` for the answer of the request in flight; `None` when it failed, ended
/// without a storable answer, or took too long.
pub async fn wait(mut rx: Waiter, limit: Duration) -> Option<Arc<Entry>> {
    let got = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
    match got {
        Ok(Ok(entry)) => entry.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Choice, Completion};

    fn test_metrics() -> CacheMetrics {
        CacheMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    fn config() -> CacheConfig {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
            max_entry_bytes: 64 << 10,
        }
    }

    fn entry(text: &str) -> Entry {
        Entry::new(
            Completion {
                id: "c".into(),
                model: "m".into(),
                choices: vec![Choice {
                    content: Some(text.into()),
                    finish_reason: Some("stop".into()),
                    ..Choice::default()
                }],
                ..Completion::default()
            },
            None,
            served(),
        )
    }

    fn served() -> Served {
        Served {
            upstream: "cloud".into(),
            model: "gpt-4o".into(),
        }
    }

    #[test]
    fn the_shared_form_keeps_who_answered() {
        let stored = entry("hello").to_shared();
        let back = Entry::from_shared(&stored).expect("it reads back");
        assert_eq!(back.served, served());
        assert_eq!(back.json, entry("hello").json);
        assert_eq!(back.completion.choices[0].content.as_deref(), Some("hello"));
        // A bare body (no one named) or a broken head is no entry.
        assert!(Entry::from_shared(&entry("x").json).is_none());
        assert!(Entry::from_shared(&Bytes::from_static(b"[\"a\"]\n{}")).is_none());
    }

    #[test]
    fn when_the_cache_is_used() {
        let auto = CachePolicy::Auto;
        assert_eq!(
            Use::decide(true, auto, Some(0.0), None).outcome(),
            CacheOutcome::Miss
        );
        assert_eq!(Use::decide(true, auto, Some(0.7), None), Use::BYPASS);
        assert_eq!(Use::decide(true, auto, None, None), Use::BYPASS);
        assert_eq!(Use::decide(false, auto, Some(0.0), None), Use::BYPASS);
        assert_eq!(
            Use::decide(true, CachePolicy::Always, Some(1.0), None).outcome(),
            CacheOutcome::Miss
        );
        assert_eq!(
            Use::decide(true, CachePolicy::Never, Some(0.0), None),
            Use::BYPASS
        );
        let no_cache = Use::decide(true, auto, Some(0.0), Some("max-age=0, No-Cache"));
        assert!(!no_cache.lookup && no_cache.store);
        assert_eq!(no_cache.outcome(), CacheOutcome::Bypass);
        assert_eq!(
            Use::decide(true, auto, Some(0.0), Some("no-store")),
            Use::BYPASS
        );
    }

    #[tokio::test]
    async fn misses_coalesce_and_waiters_get_the_answer() {
        let cache = Cache::new(&config(), test_metrics(), None);
        let key = Key(1);
        let Lookup::Lead(flight) = cache.lookup(key) else {
            panic!("first look-up leads")
        };
        let Lookup::Wait(rx) = cache.lookup(key) else {
            panic!("second waits")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        cache.store(key, entry("hello"), Some(flight));
        let got = waiter.await.unwrap().expect("the leader's answer");
        assert_eq!(got.completion.choices[0].content.as_deref(), Some("hello"));
        assert!(matches!(cache.lookup(key), Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn a_failed_leader_releases_its_waiters() {
        let cache = Cache::new(&config(), test_metrics(), None);
        let key = Key(1);
        let Lookup::Lead(flight) = cache.lookup(key) else {
            panic!()
        };
        let Lookup::Wait(rx) = cache.lookup(key) else {
            panic!()
        };
        drop(flight);
        assert!(wait(rx, Duration::from_secs(5)).await.is_none());
        // The next request leads again.
        assert!(matches!(cache.lookup(key), Lookup::Lead(_)));
    }

    #[test]
    fn large_answers_are_not_stored_and_the_budget_evicts() {
        let registry = prometheus::Registry::new();
        let cfg = CacheConfig {
            max_bytes: 4096,
            max_entry_bytes: 1500,
            ..config()
        };
        let cache = Cache::new(&cfg, CacheMetrics::register(&registry).unwrap(), None);
        let big = Key(2);
        cache.store(big, entry(&"x".repeat(2000)), None);
        assert!(matches!(cache.lookup(big), Lookup::Lead(_)));
        for i in 0..20 {
            let k = Key(100 + i);
            cache.store(k, entry(&"y".repeat(400)), None);
        }
        assert!(cache.bytes() <= 4096, "{}", cache.bytes());
        let families = registry.gather();
        let count = |name: &str, cause: Option<&str>| -> f64 {
            families
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric())
                .filter(|m| cause.is_none_or(|c| m.get_label().iter().any(|l| l.value() == c)))
                .map(|m| m.get_counter().get_value())
                .sum()
        };
        let evictions = "switchyard_cache_evictions_total";
        assert!(count(evictions, Some("size")) > 0.0);
        assert_eq!(count(evictions, None), count(evictions, Some("size")));
        assert_eq!(
            count("switchyard_cache_stores_total", None),
            20.0,
            "the large answer was not stored"
        );
    }
}
