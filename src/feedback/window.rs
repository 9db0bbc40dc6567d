//! A bounded store of recent records: the newest `capacity` of them, none older than the
//! retention. Records arrive in time order, so each shard is a queue in arrival order beside a
//! map for look-ups; keeping one costs a short lock, a map insert and a queue push, and the
//! oldest fall off the front as new ones come.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shards, so that requests on different threads rarely wait on one lock.
const SHARDS: usize = 16;

/// Recent values by key, bounded in number and age.
pub struct Window<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: foldhash::fast::RandomState,
    per_shard: usize,
    retention: u64,
}

struct Shard<V> {
    /// Each key's newest value, with the second it was kept and its entry's number.
    by_key: HashMap<Arc<str>, (u64, u64, V)>,
    /// Entries in the order they were kept: the second, the entry's number, the key.
    order: VecDeque<(u64, u64, Arc<str>)>,
    /// The next entry's number.
    next: u64,
}

impl<V: Clone> Window<V> {
    /// A window of at most `capacity` values (spread over the shards), each kept for
    /// `retention`.
    pub fn new(capacity: u64, retention: Duration) -> Window<V> {
        Window::with_shards(SHARDS, capacity, retention)
    }

    fn with_shards(shards: usize, capacity: u64, retention: Duration) -> Window<V> {
        Window {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        by_key: HashMap::new(),
                        order: VecDeque::new(),
                        next: 0,
                    })
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            per_shard: (capacity as usize).div_ceil(shards).max(1),
            retention: retention.as_secs().max(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard<V>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Keeps `value` under `key` at `now` (unix seconds), in place of an older one.
    pub fn insert(&self, key: &str, value: V, now: u64) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let key: Arc<str> = Arc::from(key);
        let number = shard.next;
        shard.next += 1;
        shard.order.push_back((now, number, Arc::clone(&key)));
        shard.by_key.insert(key, (now, number, value));
        let per_shard = self.per_shard;
        let oldest_kept = now.saturating_sub(self.retention);
        while let Some((at, _, _)) = shard.order.front() {
            let too_many = shard.order.len() > per_shard;
            if !too_many && *at > oldest_kept {
                break;
            }
            let Some((_, number, gone)) = shard.order.pop_front() else {
                break;
            };
            // A key kept again later has a newer entry: leave that one.
            if shard
                .by_key
                .get(&gone)
                .is_some_and(|(_, n, _)| *n == number)
            {
                shard.by_key.remove(&gone);
            }
        }
    }

    /// The value under `key`, unless it is older than the retention at `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<V> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard
            .by_key
            .get(key)
            .filter(|(at, _, _)| *at > now.saturating_sub(self.retention))
            .map(|(_, _, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_are_kept_and_the_oldest_leave_by_number() {
        let w: Window<u32> = Window::with_shards(1, 3, Duration::from_secs(60));
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            w.insert(k, i as u32, 1000);
        }
        assert_eq!(w.get("a", 1000), None, "the fourth pushed the first out");
        assert_eq!(w.get("b", 1000), Some(1));
        assert_eq!(w.get("d", 1000), Some(3));
    }

    #[test]
    fn records_leave_by_age() {
        let w: Window<u32> = Window::with_shards(1, 100, Duration::from_secs(10));
        w.insert("old", 1, 100);
        assert_eq!(w.get("old", 109), Some(1));
        assert_eq!(
            w.get("old", 110),
            None,
            "past the retention, even before it is dropped"
        );
        w.insert("new", 2, 200);
        let shard = w.shards[0].lock().unwrap();
        assert!(
            !shard.by_key.contains_key("old"),
            "dropped when a newer one came"
        );
        assert_eq!(shard.order.len(), 1);
    }

    #[test]
    fn a_key_kept_again_holds_its_newest_value() {
        for second in [11, 10] {
            let w: Window<u32> = Window::with_shards(1, 2, Duration::from_secs(60));
            w.insert("a", 1, 10);
            w.insert("a", 2, second);
            assert_eq!(w.get("a", 11), Some(2));
            // The first entry's turn to leave does not take the second with it, even when both
            // were kept in the same second.
            w.insert("b", 3, 12);
            assert_eq!(w.get("a", 12), Some(2), "kept again at {second}");
            assert_eq!(w.get("b", 12), Some(3));
        }
    }

    #[test]
    fn many_shards_hold_about_the_capacity() {
        let w: Window<u32> = Window::new(1600, Duration::from_secs(60));
        for i in 0..10_000u32 {
            w.insert(&format!("k{i}"), i, 1000);
        }
        let kept = (0..10_000u32)
            .filter(|i| w.get(&format!("k{i}"), 1000).is_some())
            .count();
        assert!((1200..=1600).contains(&kept), "{kept} kept");
        assert_eq!(w.get("k9999", 1000), Some(9999), "the newest stays");
    }
}
