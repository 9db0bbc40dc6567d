//! What the cache counts: look-ups by result, stores, evictions by cause, and its size.
//! Registered by this module, recorded through its methods.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The result of a look-up, as counted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Looked {
    Hit,
    Miss,
    /// Answered by an identical request that was in flight.
    Coalesced,
}

/// The cache's metrics.
#[derive(Clone)]
pub struct CacheMetrics {
    lookups: IntCounterVec,
    stores: IntCounter,
    evictions: IntCounterVec,
    entries: IntGauge,
    bytes: IntGauge,
}

impl CacheMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<CacheMetrics, prometheus::Error> {
        let m = CacheMetrics {
            lookups: IntCounterVec::new(
                Opts::new("switchyard_cache_lookups_total", "Response cache look-ups"),
                &["result"],
            )?,
            stores: IntCounter::new(
                "switchyard_cache_stores_total",
                "Answers stored in the response cache",
            )?,
            evictions: IntCounterVec::new(
                Opts::new(
                    "switchyard_cache_evictions_total",
                    "Entries that left the response cache",
                ),
                &["cause"],
            )?,
            entries: IntGauge::new("switchyard_cache_entries", "Entries in the response cache")?,
            bytes: IntGauge::new("switchyard_cache_bytes", "Bytes in the response cache")?,
        };
        registry.register(Box::new(m.lookups.clone()))?;
        registry.register(Box::new(m.stores.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.entries.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        Ok(m)
    }

    pub(super) fn lookup(&self, result: Looked) {
        let label = match result {
            Looked::Hit => "hit",
            Looked::Miss => "miss",
            Looked::Coalesced => "coalesced",
        };
        self.lookups.with_label_values(&[label]).inc();
    }

    pub(super) fn stored(&self) {
        self.stores.inc();
    }

    pub(super) fn evicted(&self, cause: &'static str) {
        self.evictions.with_label_values(&[cause]).inc();
    }

    pub(super) fn size(&self, entries: u64, bytes: u64) {
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
