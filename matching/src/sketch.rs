//! Sketches of stored emails and phones: a few bytes per value, kept beside each live
//! customer, that tell which comparison levels of [`crate::compare`] a pair *can* reach
//! without reading either value. The live index uses them to bound a candidate's match
//! weight before it reads the candidate's entries (two cache misses per field at a
//! million customers): a candidate that shares only a common name with the query is
//! usually ruled out on its sketches alone.
//!
//! Every test here errs on the side of "reachable": hashes may collide, counts saturate,
//! and the Jaro–Winkler bound assumes every character that could match does. A level the
//! sketch calls unreachable is one [`crate::compare`] can never give the pair.

use crate::record::Field;
use crate::store::Entry;

/// The fields that are sketched, in the order of [`Sketches`].
pub(crate) const SKETCHED: [Field; 2] = [Field::Email, Field::Phone];

/// One sketch per field of [`SKETCHED`] (a default sketch where the value is missing).
pub(crate) type Sketches = [Sketch; SKETCHED.len()];

/// What a value's comparisons can be bounded by: hashes of its key and helper, its length
/// in characters, its first four bytes, and how many of its characters fall in each of 16
/// classes (`char as u32 % 16`: the ten digits get a class each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sketch {
    /// 4 bits per class, saturating at 15.
    counts: u64,
    /// The key's first four bytes, zero-padded.
    prefix: u32,
    key: u16,
    alt: u8,
    /// Characters of the key, saturating at 255.
    len: u8,
}

const SATURATED: u64 = 15;

/// The blocking keys' hash of one string: the sketch only needs equal strings to get
/// equal hashes.
fn hash(s: &str) -> u64 {
    crate::blocking::key_hash(0, &[s])
}

impl Sketch {
    pub fn of(entry: &Entry) -> Sketch {
        let key = entry.key();
        let mut counts = 0u64;
        let mut len = 0usize;
        for c in key.chars() {
            len += 1;
            let shift = 4 * (c as u32 % 16);
            if (counts >> shift) & SATURATED != SATURATED {
                counts += 1 << shift;
            }
        }
        let mut prefix = [0u8; 4];
        for (p, b) in prefix.iter_mut().zip(key.bytes()) {
            *p = b;
        }
        let (k, a) = (hash(key), hash(entry.alt()));
        Sketch {
            counts,
            prefix: u32::from_le_bytes(prefix),
            key: (k ^ (k >> 16) ^ (k >> 32) ^ (k >> 48)) as u16,
            alt: (a ^ (a >> 8) ^ (a >> 16) ^ (a >> 24) ^ (a >> 32) ^ (a >> 40) ^ (a >> 48) ^ (a >> 56)) as u8,
            len: u8::try_from(len).unwrap_or(u8::MAX),
        }
    }

    fn class_counts(self) -> impl Iterator<Item = u64> {
        (0..16).map(move |i| (self.counts >> (4 * i)) & SATURATED)
    }

    /// At least the number of characters to add and remove to turn one multiset of
    /// characters into the other (an edit changes it by at most two).
    fn count_distance(self, other: Sketch) -> u64 {
        self.class_counts()
            .zip(other.class_counts())
            .map(|(a, b)| a.abs_diff(b))
            .sum()
    }

    /// At most the number of characters the two values have in common (counted with
    /// repeats): what Jaro's matching characters cannot exceed.
    fn common_characters(self, other: Sketch) -> u64 {
        let shorter = u64::from(self.len.min(other.len));
        let mut common = 0;
        for (a, b) in self.class_counts().zip(other.class_counts()) {
            if a == SATURATED && b == SATURATED {
                return shorter;
            }
            common += a.min(b);
        }
        common.min(shorter)
    }

    /// Whether Jaro–Winkler (prefix scale 0.1, prefix up to 4) can reach `threshold`.
    fn jaro_winkler_may_reach(self, other: Sketch, threshold: f64) -> bool {
        if self.len == u8::MAX || other.len == u8::MAX {
            return true;
        }
        let m = self.common_characters(other) as f64;
        if m == 0.0 {
            return threshold <= 0.0;
        }
        // Jaro with no transpositions: the most the matching characters allow.
        let jaro = (m / f64::from(self.len) + m / f64::from(other.len) + 1.0) / 3.0;
        let (a, b) = (self.prefix.to_le_bytes(), other.prefix.to_le_bytes());
        let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count() as f64;
        jaro + prefix * 0.1 * (1.0 - jaro) >= threshold - 1e-9
    }

    /// The levels of [`crate::compare`] that `field` may give a query value (`self`, whose
    /// helper is `query_alt`) against a stored value (`stored`): bit `l` set when level `l`
    /// is possible. `None` for a field that is not sketched.
    pub fn reachable_levels(self, field: Field, query_alt: &str, stored: Sketch) -> Option<u8> {
        // Level 0: equal keys. Cannot be ruled out by anything below once the hashes agree.
        if self.key == stored.key {
            return Some(u8::MAX);
        }
        let alt = self.alt == stored.alt;
        let one_edit = self.len.abs_diff(stored.len) <= 1 && self.count_distance(stored) <= 2;
        let bit = |on: bool, level: u8| u8::from(on) << level;
        match field {
            // exact, same_local_part, one_edit, jaro_winkler_0.90, else
            Field::Email => Some(
                bit(!query_alt.is_empty() && alt, 1)
                    | bit(one_edit, 2)
                    | bit(self.jaro_winkler_may_reach(stored, 0.90), 3)
                    | bit(true, 4),
            ),
            // exact, same_last_8_digits, one_edit, else
            Field::Phone => Some(bit(query_alt.len() >= 7 && alt, 1) | bit(one_edit, 2) | bit(true, 3)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare_one;
    use crate::record::{FIELD_COUNT, Record};
    use crate::store::{Store, view_of};

    /// The level `compare` gives each pair is always among those its sketches allow, and
    /// the sketches rule out most levels of unrelated values.
    #[test]
    fn the_level_of_a_pair_is_always_reachable() {
        let emails = [
            "zhangwei1985@qq.com",
            "zhangwei1958@qq.com",
            "zhang.wei1985@qq.com",
            "zhangwei1985@163.com",
            "zhangwei198@qq.com",
            "liuyang88@163.com",
            "wz@x.cn",
            "wangfang_sh@sina.com",
            "wang.fang+crm@gmail.com",
            "wangfang@gmail.com",
            "王芳@例子.公司",
            "王芳@例子.中国",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@a.com",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab@a.com",
        ];
        let phones = [
            "13800138000",
            "13800138001",
            "13800183000",
            "1380013800",
            "+86 138 0013 8000",
            "13900138000",
            "15912345678",
            "0298765432",
            "0398765432",
            "11111111111111111111",
            "11111111111111111112",
        ];
        let store = Store::default();
        let all = [true; FIELD_COUNT];
        let mut ruled_out = 0;
        for (field, values) in [(Field::Email, &emails[..]), (Field::Phone, &phones[..])] {
            let i = field.index();
            for a in values {
                for b in values {
                    let pa = store.prepare(&Record::new().with(field, *a), &all);
                    let pb = store.prepare(&Record::new().with(field, *b), &all);
                    let (x, y) = (pa[i].as_ref().unwrap(), pb[i].as_ref().unwrap());
                    let level = compare_one(i, &view_of(&pa), &view_of(&pb));
                    let reachable = Sketch::of(x).reachable_levels(field, x.alt(), Sketch::of(y)).unwrap();
                    assert!(
                        reachable & (1 << level) != 0,
                        "{field}: {a} vs {b} is at level {level}, sketch allows {reachable:08b}"
                    );
                    ruled_out += (reachable.count_ones() < 3) as usize;
                }
            }
        }
        assert!(ruled_out > 50, "sketches rule out too little: {ruled_out}");
    }

    /// Random values and edits of them (a deterministic generator): every pair's level is
    /// reachable by its sketches.
    #[test]
    fn random_edits_never_reach_a_level_ruled_out() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let store = Store::default();
        let all = [true; FIELD_COUNT];
        let alphabets: [(Field, &[u8]); 2] = [(Field::Email, b"aeinguoszhwy19.@_"), (Field::Phone, b"0123456789")];
        for (field, alphabet) in alphabets {
            let i = field.index();
            for _ in 0..4000 {
                let len = 4 + next(20);
                let mut a: Vec<u8> = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
                if field == Field::Email {
                    a.extend_from_slice(b"@qq.com");
                }
                let mut b = a.clone();
                for _ in 0..next(4) {
                    let at = next(b.len());
                    match next(4) {
                        0 => b[at] = alphabet[next(alphabet.len())],
                        1 => b.insert(at, alphabet[next(alphabet.len())]),
                        2 if b.len() > 2 => {
                            b.remove(at);
                        }
                        _ if at + 1 < b.len() => b.swap(at, at + 1),
                        _ => {}
                    }
                }
                let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
                let pa = store.prepare(&Record::new().with(field, &a), &all);
                let pb = store.prepare(&Record::new().with(field, &b), &all);
                let (Some(x), Some(y)) = (pa[i].as_ref(), pb[i].as_ref()) else {
                    continue;
                };
                let level = compare_one(i, &view_of(&pa), &view_of(&pb));
                let reachable = Sketch::of(x).reachable_levels(field, x.alt(), Sketch::of(y)).unwrap();
                assert!(
                    reachable & (1 << level) != 0,
                    "{field}: {a} vs {b} is at level {level}, sketch allows {reachable:08b}"
                );
            }
        }
    }

    #[test]
    fn common_characters_bound_jaro_matches_and_saturate_safely() {
        let e = |s: &str| Sketch::of(&Entry::prepare(Field::Email, s).unwrap());
        assert_eq!(e("abc@x").common_characters(e("cba@x")), 5);
        assert_eq!(e("abc@x").count_distance(e("abd@x")), 2);
        let long = "a".repeat(40);
        let (p, q) = (e(&format!("{long}@x")), e(&format!("{long}b@x")));
        assert_eq!(p.common_characters(q), 42, "saturated classes count every character");
        assert!(p.jaro_winkler_may_reach(q, 0.9));
        assert!(!e("zhangwei@qq.com").jaro_winkler_may_reach(e("liuyang88@163.com"), 0.9));
    }
}
