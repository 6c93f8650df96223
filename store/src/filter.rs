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

use std::sync::RwLock;

use growable_bloom_filter::GrowableBloom;

/// False positives allowed by the first filter (each later one allows 0.85 times the last).
const ERROR_RATE: f64 = 0.01;

pub struct KeyFilter(RwLock<GrowableBloom>);

impl KeyFilter {
    /// An empty filter sized for about `expected` keys (it grows beyond).
    pub fn new(expected: usize) -> KeyFilter {
        KeyFilter(RwLock::new(GrowableBloom::new(ERROR_RATE, expected.max(1 << 16))))
    }

    /// Whether `key` may be held (`false`: it certainly is not).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(key)
    }

    pub fn add(&self, key: &[u8]) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(key);
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
        let filter = KeyFilter::new(1000);
        for i in 0..100_000u32 {
            filter.add(format!("identity-email-{i:08x}").as_bytes());
        }
        assert!((0..100_000u32).all(|i| filter.may_hold(format!("identity-email-{i:08x}").as_bytes())));
        let false_positives = (100_000..200_000u32)
            .filter(|i| filter.may_hold(format!("identity-email-{i:08x}").as_bytes()))
            .count();
        assert!(
            false_positives < 3_000,
            "{false_positives} of 100000 absent keys reported present"
        );
    }
}
