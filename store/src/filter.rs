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

    /// Into the newest filter, or a new larger one when the newest holds what it was sized for.
    fn insert(&mut self, hash: u64) {
        if self.held >= self.capacity {
            self.capacity = self.capacity.saturating_mul(GROWTH);
            self.error_rate *= TIGHTENING;
            self.held = 0;
            let next = filter(self.capacity, self.error_rate);
            self.filters.push(next);
        }
        self.held += 1;
        if let Some(newest) = self.filters.last_mut() {
            newest.insert(&hash);
        }
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

/// A key's hash, as the filters take it ([`KeyFilter::add_hash`]): one hash for a key that
/// goes into several filters.
pub fn hash(key: &[u8]) -> u64 {
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
        self.add_hash(hash(key));
    }

    /// [`KeyFilter::add`] of a key's [`hash`].
    pub fn add_hash(&self, hash: u64) {
        let mut stages = self.0.write().unwrap_or_else(|p| p.into_inner());
        // Keys are added again as their heads move between runs: count each once.
        if stages.contains(hash) {
            return;
        }
        stages.insert(hash);
    }

    /// [`KeyFilter::add_hash`] of a key this filter was never given: a run's keys as the run
    /// is written (each once). Skips the check that counts a key once (a probe of every
    /// stage: ~a third of adding, measured in the store's writer).
    pub fn add_new_hash(&self, hash: u64) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(hash);
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

    #[test]
    fn keys_added_by_hash_are_held_like_keys_added_whole() {
        let (whole, hashed) = (KeyFilter::new(1000), KeyFilter::new(1000));
        for i in 0..100_000u32 {
            let key = format!("cust-{i:08x}");
            whole.add(key.as_bytes());
            hashed.add_new_hash(hash(key.as_bytes()));
        }
        // A key given again is counted once by `add_hash`.
        for i in 0..100_000u32 {
            hashed.add_hash(hash(format!("cust-{i:08x}").as_bytes()));
        }
        let stages = |f: &KeyFilter| f.0.read().unwrap().filters.len();
        assert_eq!(stages(&whole), stages(&hashed));
        assert!((0..100_000u32).all(|i| hashed.may_hold(format!("cust-{i:08x}").as_bytes())));
        // (`add` leaves out a key the filter already reports: a few bits fewer.)
        for f in [&whole, &hashed] {
            let false_positives = (100_000..150_000u32)
                .filter(|i| f.may_hold(format!("cust-{i:08x}").as_bytes()))
                .count();
            assert!(
                false_positives < 1_000,
                "{false_positives} of 50000 absent keys reported present"
            );
        }
    }
}
