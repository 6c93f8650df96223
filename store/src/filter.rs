//! A Bloom filter of the keys an embedded table holds, so a lookup of a key it does not hold
//! needs no B-tree descent: "absent" is certain, "present" may be wrong, and then the table
//! answers. False positives: 1% of absent keys while the filter has its first size, about 2%
//! once it has doubled (each growth adds a filter of twice the size at 0.85 times the rate).
//! Used for stream names in the embedded event store and for aliases and own views in the
//! view store, where most lookups ask for keys that do not exist (a new identifier's claim,
//! an alias of a customer never merged) on pages missing from the cache.
//!
//! Rule for writers: add a key *before* the commit that writes it, so a reader never gets
//! "absent" for a key it could see. Keys of commits that fail stay in (harmless).

use std::hash::{BuildHasher, Hasher};
use std::sync::RwLock;

use fastbloom::BloomFilter;

/// False positives allowed by the first filter (each later one allows 0.85 times the last).
const ERROR_RATE: f64 = 0.01;
/// Each filter added when the last is full holds this many times as many keys.
const GROWTH: usize = 2;
const TIGHTENING: f64 = 0.85;

/// Blocked Bloom filters (`fastbloom`), the newest taking the keys until it holds what it
/// was sized for, then a larger one. A key is hashed once (xxh3) for all of them. Measured
/// against the `growable-bloom-filter` crate it replaced (which hashes once too, but sets and
/// tests bits all over each filter, a `%` and a likely cache miss per bit): its checks and
/// inserts were ~4% of a 1M-row import's CPU.
pub struct KeyFilter(RwLock<Stages>);

struct Stages {
    filters: Vec<BloomFilter<512, KeyHash>>,
    /// Keys the newest filter took, and how many it was sized for.
    held: usize,
    capacity: usize,
    error_rate: f64,
}

impl Stages {
    fn contains(&self, hash: u64) -> bool {
        self.filters.iter().any(|f| f.contains(&hash))
    }
}

fn filter(capacity: usize, error_rate: f64) -> BloomFilter<512, KeyHash> {
    BloomFilter::with_false_pos(error_rate)
        .hasher(KeyHash)
        .expected_items(capacity)
}

/// The filters are given a key's xxh3 hash, which they use as it is.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = Passed;
    fn build_hasher(&self) -> Passed {
        Passed(0)
    }
}

#[derive(Default)]
struct Passed(u64);

impl Hasher for Passed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here (see `write_u64`); anything else still works.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl KeyFilter {
    /// An empty filter sized for about `expected` keys (it grows beyond).
    pub fn new(expected: usize) -> KeyFilter {
        let capacity = expected.max(1 << 16);
        KeyFilter(RwLock::new(Stages {
            filters: vec![filter(capacity, ERROR_RATE)],
            held: 0,
            capacity,
            error_rate: ERROR_RATE,
        }))
    }

    /// Whether `key` may be held (`false`: it certainly is not).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(hash(key))
    }

    pub fn add(&self, key: &[u8]) {
        let hash = hash(key);
        let mut stages = self.0.write().unwrap_or_else(|p| p.into_inner());
        // Keys are added again as their heads move between runs: count each once.
        if stages.contains(hash) {
            return;
        }
        if stages.held >= stages.capacity {
            stages.capacity = stages.capacity.saturating_mul(GROWTH);
            stages.error_rate *= TIGHTENING;
            stages.held = 0;
            let next = filter(stages.capacity, stages.error_rate);
            stages.filters.push(next);
        }
        stages.held += 1;
        if let Some(newest) = stages.filters.last_mut() {
            newest.insert(&hash);
        }
    }
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFilter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_key_is_never_reported_absent_and_few_others_are_present() {
        // Sized for 2^16 keys at least: 300k keys make three filters.
        let filter = KeyFilter::new(1000);
        for i in 0..300_000u32 {
            filter.add(format!("identity-email-{i:08x}").as_bytes());
        }
        assert_eq!(filter.0.read().unwrap().filters.len(), 3);
        assert!((0..300_000u32).all(|i| filter.may_hold(format!("identity-email-{i:08x}").as_bytes())));
        let false_positives = (300_000..400_000u32)
            .filter(|i| filter.may_hold(format!("identity-email-{i:08x}").as_bytes()))
            .count();
        assert!(
            false_positives < 3_000,
            "{false_positives} of 100000 absent keys reported present"
        );
    }
}
