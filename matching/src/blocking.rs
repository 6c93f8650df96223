//! Blocking: the keys that decide which pairs are compared at all. A pair is a
//! candidate when it shares any key. Keys are tight (several fields or a
//! unique identifier) so candidate sets stay small at a million records, and
//! they overlap so one corrupted field does not hide a match. Buckets larger
//! than a cap are skipped: a key that common carries no evidence of identity.

use crate::record::Field;
use crate::store::{Entry, View};

/// FNV-1a over the rule id and key parts.
pub(crate) fn key_hash(rule: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(rule);
    h = h.wrapping_mul(0x0000_0100_0000_01b3);
    for part in parts {
        for &b in part.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn sorted<'a>(a: &'a str, b: &'a str) -> [&'a str; 2] {
    if a <= b { [a, b] } else { [b, a] }
}

fn get<'a>(v: &View<'a>, f: Field) -> Option<&'a Entry> {
    v[f.index()]
}

/// Fields combined two by two into blocking keys.
const PAIRED: [Field; 8] = [
    Field::GivenName,
    Field::Surname,
    Field::DateOfBirth,
    Field::Postcode,
    Field::StreetNumber,
    Field::Address1,
    Field::Address2,
    Field::Suburb,
];

/// Appends the blocking keys of one record to `out`.
pub(crate) fn keys(v: &View<'_>, out: &mut Vec<u64>) {
    let given = get(v, Field::GivenName);
    let surname = get(v, Field::Surname);
    if let (Some(g), Some(s)) = (given, surname) {
        out.push(key_hash(0, &sorted(g.key(), s.key())));
        if !g.alt().is_empty() && !s.alt().is_empty() {
            out.push(key_hash(1, &sorted(g.alt(), s.alt())));
        }
    }
    if let Some(f) = get(v, Field::FullName) {
        out.push(key_hash(2, &[f.alt()]));
    }
    if let Some(d) = get(v, Field::DateOfBirth) {
        let mut initials: Vec<char> = [given, surname]
            .into_iter()
            .flatten()
            .filter_map(Entry::initial)
            .collect();
        initials.dedup();
        for c in initials {
            let mut buf = [0u8; 4];
            out.push(key_hash(3, &[d.key(), c.encode_utf8(&mut buf)]));
        }
    }
    // Any two of these agreeing exactly: a duplicate with several corrupted
    // fields still keeps two intact, and two together are rare by chance.
    for (i, &f) in PAIRED.iter().enumerate() {
        let Some(x) = get(v, f) else { continue };
        for (j, &g) in PAIRED.iter().enumerate().skip(i + 1) {
            if let Some(y) = get(v, g) {
                out.push(key_hash(16 + (i * PAIRED.len() + j) as u8, &[x.key(), y.key()]));
            }
        }
    }
    if let Some(p) = get(v, Field::Phone)
        && p.key().len() >= 6
    {
        out.push(key_hash(7, &[p.alt()]));
    }
    if let Some(e) = get(v, Field::Email) {
        out.push(key_hash(8, &[e.alt(), e.key().rsplit('@').next().unwrap_or_default()]));
    }
    if let Some(id) = get(v, Field::NationalId) {
        out.push(key_hash(9, &[id.key()]));
    }
}
