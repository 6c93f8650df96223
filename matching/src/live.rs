//! The live path: an incremental index of known customers that scores one
//! incoming record against its blocked candidates with the same model and
//! comparisons as the batch engine, and explains every score. Term
//! frequencies follow the index as records come and go.

use std::collections::HashMap;
use std::hash::BuildHasher;

use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use crate::blocking;
use crate::compare::{Levels, NULL_LEVEL, compare, compare_one};
use crate::model::Weights;
use crate::record::{FIELD_COUNT, Record};
use crate::sketch::{SKETCHED, Sketch, Sketches};
use crate::store::{PreparedRecord, Row, Store, view_of};
use crate::{Explanation, MatchError, Model};

/// What to do with a scored pair under the model's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Merge,
    Review,
    Distinct,
}

/// A record normalised once to be scored and then stored ([`LiveIndex::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared(PreparedRecord, Row);

/// One known customer scored against an incoming record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredCandidate {
    pub id: String,
    /// log2 odds of a match.
    pub match_weight: f64,
    pub probability: f64,
    pub decision: Decision,
    pub explanation: Explanation,
}

/// Slots sharing one blocking key (two or more): up to four are kept inline (no allocation).
type Posting = SmallVec<[u32; 4]>;

/// One customer's place in the index: its row (its id is in [`LiveIndex::ids`] under the
/// same slot number).
#[derive(Debug)]
struct Slot {
    row: Row,
    /// Its email and phone sketched, so a candidate can be ruled out before its entries
    /// are read (~2 cache misses a field at a million customers).
    sketches: Sketches,
    /// False once removed (the slot waits in the free list).
    live: bool,
}

/// A customer id as the index keeps it: the 16 bytes of a canonical (lower-case,
/// hyphenated) UUID, which every id the domain makes is, or else its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IdKey<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> IdKey<'a> {
    fn of(id: &'a str) -> IdKey<'a> {
        if id.len() == 36
            && let Ok(u) = uuid::Uuid::try_parse(id)
        {
            let mut buf = [0u8; 36];
            if u.hyphenated().encode_lower(&mut buf) == id {
                return IdKey::Uuid(u.into_bytes());
            }
        }
        IdKey::Text(id)
    }
}

/// Every slot's customer id: a UUID's 16 bytes at the slot's place (no allocation, no
/// offsets: ~36 B per customer less than text spans at a million customers); any other id
/// in a map by slot.
#[derive(Debug, Default)]
struct Ids {
    uuids: Vec<[u8; 16]>,
    other: HashMap<u32, Box<str>>,
}

impl Ids {
    fn set(&mut self, slot: u32, id: IdKey<'_>) {
        let i = slot as usize;
        if self.uuids.len() <= i {
            self.uuids.resize(i + 1, [0; 16]);
        }
        match id {
            IdKey::Uuid(bytes) => {
                self.uuids[i] = bytes;
                self.other.remove(&slot);
            }
            IdKey::Text(text) => {
                self.other.insert(slot, text.into());
            }
        }
    }

    fn get(&self, slot: u32) -> IdKey<'_> {
        match self.other.get(&slot) {
            Some(text) => IdKey::Text(text),
            None => IdKey::Uuid(self.uuids.get(slot as usize).copied().unwrap_or_default()),
        }
    }

    fn text(&self, slot: u32) -> String {
        match self.get(slot) {
            IdKey::Uuid(bytes) => uuid::Uuid::from_bytes(bytes).hyphenated().to_string(),
            IdKey::Text(text) => text.to_string(),
        }
    }
}

/// Blocking key → the slots that have it. Most keys belong to one customer (a phone, an
/// email): those take a 16-byte entry of their own instead of a 32-byte list entry, which
/// matters at a million customers; keys shared by several slots have a list.
#[derive(Debug, Default)]
struct Postings {
    single: hashbrown::HashMap<u64, u32>,
    multi: hashbrown::HashMap<u64, Posting>,
}

impl Postings {
    fn add(&mut self, key: u64, slot: u32) {
        if let Some(list) = self.multi.get_mut(&key) {
            list.push(slot);
        } else if let Some(first) = self.single.remove(&key) {
            self.multi.insert(key, SmallVec::from_slice(&[first, slot]));
        } else {
            self.single.insert(key, slot);
        }
    }

    fn remove(&mut self, key: u64, slot: u32) {
        if self.single.get(&key) == Some(&slot) {
            self.single.remove(&key);
        } else if let Some(list) = self.multi.get_mut(&key) {
            list.retain(|s| *s != slot);
            if let [last] = list[..] {
                self.multi.remove(&key);
                self.single.insert(key, last);
            } else if list.is_empty() {
                self.multi.remove(&key);
            }
        }
    }

    fn get(&self, key: u64) -> Option<&[u32]> {
        match self.single.get(&key) {
            Some(slot) => Some(std::slice::from_ref(slot)),
            None => self.multi.get(&key).map(|l| l.as_slice()),
        }
    }
}

/// Incremental blocking index over known customers.
///
/// Memory (measured through `crm bench import`): each customer costs its slot (row: one
/// vocabulary id per field, and 32 bytes of email and phone sketches), its id (16 bytes
/// for a UUID), an id-map entry (the slot number, hashed by the id), its blocking keys (a
/// slot number for a key nobody else has, inline lists otherwise) and its distinct values'
/// vocabulary entries. Raw records are not kept: an update is laid over the stored entries
/// ([`LiveIndex::upsert`]).
#[derive(Debug)]
pub struct LiveIndex {
    model: Model,
    weights: Weights,
    store: Store,
    slots: Vec<Slot>,
    /// Every slot's customer id.
    ids: Ids,
    free: Vec<u32>,
    /// Live slots, hashed by their id.
    by_id: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    postings: Postings,
    /// Per field, the most it can add to a match weight ([`Weights::field_bound`]).
    bounds: [f64; FIELD_COUNT],
    /// Fields in the order a candidate is compared: the one that can count most against
    /// a match first, so most candidates are ruled out after a field or two.
    order: [usize; FIELD_COUNT],
    max_block_size: usize,
    max_candidates: usize,
    population_floor: usize,
}

const ALL_FIELDS: [bool; FIELD_COUNT] = [true; FIELD_COUNT];

impl Default for LiveIndex {
    fn default() -> Self {
        Self::with_model(Model::default())
    }
}

impl LiveIndex {
    /// An empty index scoring with `model` (validated).
    pub fn new(model: Model) -> Result<Self, MatchError> {
        model.validate()?;
        Ok(Self::with_model(model))
    }

    fn with_model(model: Model) -> Self {
        let weights = model.weights();
        let bounds = std::array::from_fn(|i| weights.field_bound(i));
        let mut order: [usize; FIELD_COUNT] = std::array::from_fn(|i| i);
        order.sort_by(|&a, &b| weights.field_floor(a).total_cmp(&weights.field_floor(b)));
        LiveIndex {
            weights,
            bounds,
            order,
            model,
            store: Store::default(),
            slots: Vec::new(),
            ids: Ids::default(),
            free: Vec::new(),
            by_id: hashbrown::HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            postings: Postings::default(),
            max_block_size: 200,
            max_candidates: 250,
            population_floor: 100_000,
        }
    }

    /// Keys shared by more customers than this are not used to find candidates.
    pub fn set_max_block_size(&mut self, size: usize) {
        self.max_block_size = size.max(1);
    }

    /// The prior assumes at least this many customers: a young index must not
    /// make every arrival look like a likely duplicate.
    pub fn set_population_floor(&mut self, customers: usize) {
        self.population_floor = customers.max(2);
    }

    fn population(&self) -> usize {
        (self.len() + 1).max(self.population_floor)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds a customer, replacing any record already stored under `id`.
    pub fn insert(&mut self, id: impl Into<String>, record: &Record) {
        let id: String = id.into();
        let (prepared, hints) = self.store.prepare_hinted(record, &ALL_FIELDS);
        self.put(&id, prepared, hints);
    }

    /// Adds a customer, or lays `update` over its stored record: the fields `update` has
    /// replace the stored ones, the others stay. Equivalent to `insert` with the overlaid raw
    /// record (normalisation is per field), without keeping raw records.
    pub fn upsert(&mut self, id: &str, update: &Record) {
        let (prepared, hints) = self.overlaid(id, update);
        self.put(id, prepared, hints);
    }

    /// Normalises `record` once for [`LiveIndex::score_prepared_record`] and
    /// [`LiveIndex::upsert_prepared`] (a new customer is scored, then stored).
    pub fn prepare(&self, record: &Record) -> Prepared {
        let (prepared, hints) = self.store.prepare_hinted(record, &ALL_FIELDS);
        Prepared(prepared, hints)
    }

    /// [`LiveIndex::score_candidates`] of a prepared record.
    pub fn score_prepared_record(&self, record: &Prepared) -> Vec<ScoredCandidate> {
        self.score_prepared(&record.0)
    }

    /// [`LiveIndex::upsert`] of a prepared record (the same result, without normalising
    /// it again).
    pub fn upsert_prepared(&mut self, id: &str, update: Prepared) {
        let (prepared, hints) = self.over_base(id, update.0, update.1);
        self.put(id, prepared, hints);
    }

    /// `update` normalised, with `base`'s stored entries for the fields it lacks (`update`
    /// alone when `base` is unknown); and the ids of its values in the store, where known.
    fn overlaid(&self, base: &str, update: &Record) -> (PreparedRecord, Row) {
        let (prepared, hints) = self.store.prepare_hinted(update, &ALL_FIELDS);
        self.over_base(base, prepared, hints)
    }

    /// `prepared` with `base`'s stored entries for the fields it lacks (and their ids in
    /// `hints`).
    fn over_base(&self, base: &str, mut prepared: PreparedRecord, mut hints: Row) -> (PreparedRecord, Row) {
        if let Some(slot) = self.slot_of(base) {
            let row = &self.slots[slot as usize].row;
            for (i, (field, entry)) in prepared.iter_mut().zip(self.store.view(row)).enumerate() {
                if field.is_none() {
                    *field = entry.cloned();
                    hints[i] = row[i];
                }
            }
        }
        (prepared, hints)
    }

    /// The live slot of `id`.
    fn slot_of(&self, id: &str) -> Option<u32> {
        let key = IdKey::of(id);
        self.by_id
            .find(self.hasher.hash_one(key), |&s| self.ids.get(s) == key)
            .copied()
    }

    fn put(&mut self, id: &str, prepared: PreparedRecord, hints: Row) {
        self.remove(id);
        let sketches = sketches_of(&view_of(&prepared));
        let row = self.store.intern_hinted(prepared, &hints);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    row: [crate::store::NULL; FIELD_COUNT],
                    sketches: Sketches::default(),
                    live: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let key = IdKey::of(id);
        self.ids.set(slot, key);
        let i = slot as usize;
        let mut keys = Vec::new();
        blocking::keys(&self.store.view(&row), &mut keys);
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            self.postings.add(k, slot);
        }
        self.slots[i].row = row;
        self.slots[i].sketches = sketches;
        self.slots[i].live = true;
        let hash = self.hasher.hash_one(key);
        self.by_id
            .insert_unique(hash, slot, |&s| self.hasher.hash_one(self.ids.get(s)));
    }

    /// Removes a customer (after a merge or an erasure); false when unknown.
    pub fn remove(&mut self, id: &str) -> bool {
        let key = IdKey::of(id);
        let found = self
            .by_id
            .find_entry(self.hasher.hash_one(key), |&s| self.ids.get(s) == key);
        let Ok(entry) = found else {
            return false;
        };
        let (slot, _) = entry.remove();
        let slot_state = &mut self.slots[slot as usize];
        slot_state.live = false;
        let row = slot_state.row;
        let mut keys = Vec::new();
        blocking::keys(&self.store.view(&row), &mut keys);
        for k in keys {
            self.postings.remove(k, slot);
        }
        self.store.release(&row);
        self.free.push(slot);
        true
    }

    /// Scores `record` against every customer sharing a blocking key and
    /// returns those at or above the review threshold, best first.
    pub fn score_candidates(&self, record: &Record) -> Vec<ScoredCandidate> {
        self.score_prepared(&self.store.prepare(record, &ALL_FIELDS))
    }

    /// [`LiveIndex::score_candidates`] for `update` laid over `base`'s stored record (as
    /// [`LiveIndex::upsert`] would store it); `update` alone when `base` is unknown.
    pub fn score_candidates_over(&self, base: &str, update: &Record) -> Vec<ScoredCandidate> {
        self.score_prepared(&self.overlaid(base, update).0)
    }

    /// An empty record has no blocking keys, hence no candidates.
    fn score_prepared(&self, prepared: &PreparedRecord) -> Vec<ScoredCandidate> {
        let query = view_of(prepared);
        let mut keys = Vec::new();
        blocking::keys(&query, &mut keys);
        // Most selective keys first, until the candidate budget is spent.
        let mut lists: Vec<&[u32]> = keys
            .iter()
            .filter_map(|&k| self.postings.get(k))
            .filter(|l| l.len() <= self.max_block_size)
            .collect();
        lists.sort_by_key(|l| l.len());
        let mut candidates: Vec<u32> = Vec::new();
        for list in lists {
            if !candidates.is_empty() && candidates.len() + list.len() > self.max_candidates {
                break;
            }
            candidates.extend_from_slice(list);
        }
        candidates.sort_unstable();
        candidates.dedup();
        // Touch every candidate's slot (both its cache lines) before scoring any: these loads
        // are independent, so their cache misses overlap, where inside the scoring each
        // waited for the one before (at a million customers, reaching the ~45 random slots
        // was half the time of scoring).
        let touched = candidates.iter().fold(0u32, |acc, &slot| {
            let s = &self.slots[slot as usize];
            acc ^ s.row[0] ^ s.row[FIELD_COUNT - 1] ^ u32::from(s.live)
        });
        std::hint::black_box(touched);
        let non_null = std::array::from_fn(|i| self.store.columns[i].non_null);
        let t = self.model.thresholds;
        let prior = self.weights.prior_weight(self.population());
        let at_review = crate::model::weight_at(t.review);
        let query_sketches = sketches_of(&query);
        let query_bounds = self.query_bounds(&query);
        let mut scored: Vec<ScoredCandidate> = candidates
            .into_iter()
            .filter_map(|slot| {
                let s = &self.slots[slot as usize];
                if !s.live {
                    return None;
                }
                let bounds = self.candidate_bounds(&query_bounds, &query, &query_sketches, s);
                let row = &s.row;
                let stored = self.store.view(row);
                let levels = self.levels_unless_below(prior, at_review, &query, &stored, &non_null, &bounds)?;
                let weight = self.weights.match_weight(prior, &levels, &stored, &non_null);
                let probability = crate::model::probability(weight);
                if probability < t.review {
                    return None;
                }
                let decision = if probability >= t.merge {
                    Decision::Merge
                } else {
                    Decision::Review
                };
                let explanation = self.weights.explain(prior, &levels, &stored, &non_null);
                Some(ScoredCandidate {
                    id: self.ids.text(slot),
                    match_weight: weight,
                    probability,
                    decision,
                    explanation,
                })
            })
            .collect();
        scored.sort_by(|a, b| b.match_weight.total_cmp(&a.match_weight).then_with(|| a.id.cmp(&b.id)));
        scored
    }

    /// Per field, the most it can add to `query`'s match weight against any candidate: a
    /// field the query lacks adds nothing.
    fn query_bounds(&self, query: &crate::store::View<'_>) -> [f64; FIELD_COUNT] {
        std::array::from_fn(|i| if query[i].is_some() { self.bounds[i] } else { 0.0 })
    }

    /// Per field, the most it can add to `query`'s match weight against the candidate in
    /// slot `s`, from what the slot holds without reading its entries: nothing for a field
    /// either side lacks, the best level its sketch allows for an email or a phone.
    fn candidate_bounds(
        &self,
        query_bounds: &[f64; FIELD_COUNT],
        query: &crate::store::View<'_>,
        query_sketches: &Sketches,
        s: &Slot,
    ) -> [f64; FIELD_COUNT] {
        let mut bounds = *query_bounds;
        for (bound, &id) in bounds.iter_mut().zip(&s.row) {
            if id == crate::store::NULL {
                *bound = 0.0;
            }
        }
        for (k, field) in SKETCHED.iter().enumerate() {
            let i = field.index();
            if let Some(q) = query[i]
                && s.row[i] != crate::store::NULL
                && let Some(reachable) = query_sketches[k].reachable_levels(*field, q.alt(), s.sketches[k])
            {
                bounds[i] = self.weights.reachable_bound(i, reachable);
            }
        }
        bounds
    }

    /// The comparison levels of a candidate, or `None` as soon as the fields compared so far
    /// show that its match weight stays below `at_review` (the weight of the review
    /// probability) whatever the others are (each field not yet compared is counted at its
    /// `bounds` entry: at most [`Weights::field_bound`], less when
    /// [`LiveIndex::candidate_bounds`] knows more). Those candidates would be dropped anyway;
    /// the others get exactly the levels of `compare`.
    fn levels_unless_below(
        &self,
        prior: f64,
        at_review: f64,
        query: &crate::store::View<'_>,
        stored: &crate::store::View<'_>,
        non_null: &[u64; FIELD_COUNT],
        bounds: &[f64; FIELD_COUNT],
    ) -> Option<Levels> {
        // Covers the rounding of summing the same weights in another order, and of the
        // probability's inverse.
        const SLACK: f64 = 1e-9;
        let mut levels: Levels = [NULL_LEVEL; FIELD_COUNT];
        let mut bound = prior + bounds.iter().sum::<f64>();
        if bound + SLACK < at_review {
            return None;
        }
        for &i in &self.order {
            levels[i] = compare_one(i, query, stored);
            bound += self.weights.level_weight(i, levels[i], stored, non_null) - bounds[i];
            if bound + SLACK < at_review {
                return None;
            }
        }
        Some(levels)
    }

    /// Explains the score of two records directly (no index, no term frequencies).
    pub fn explain_pair(&self, a: &Record, b: &Record) -> Explanation {
        let empty = Store::default();
        let (pa, pb) = (empty.prepare(a, &ALL_FIELDS), empty.prepare(b, &ALL_FIELDS));
        let (va, vb) = (view_of(&pa), view_of(&pb));
        self.weights.explain(
            self.weights.prior_weight(self.len() + 1),
            &compare(&va, &vb),
            &vb,
            &[0; FIELD_COUNT],
        )
    }
}

/// The sketches of a record's email and phone (default where it has none).
fn sketches_of(view: &crate::store::View<'_>) -> Sketches {
    std::array::from_fn(|k| view[SKETCHED[k].index()].map(Sketch::of).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Field;

    #[test]
    fn a_freed_slot_takes_its_new_id_and_updates_keep_their_slot() {
        let person = |phone: &str| Record::new().with(Field::FullName, "王伟").with(Field::Phone, phone);
        let a = "0192f0c1-7e3a-7b2c-9d4e-5f6a7b8c9d0e";
        let mut index = LiveIndex::default();
        index.insert(a, &person("13800138000"));
        index.insert("customer-b", &person("13900139000"));
        let slot = index.slot_of(a).expect("a is indexed");
        for _ in 0..3 {
            index.upsert(a, &person("13800138000"));
        }
        assert_eq!(index.slot_of(a), Some(slot), "an update keeps its slot");
        assert_eq!(index.slots.len(), 2);
        assert_eq!(index.ids.other.len(), 1, "a UUID id takes no text of its own");
        assert!(index.remove(a));
        assert!(!index.remove(a));
        index.insert("customer-c", &person("13800138000"));
        assert_eq!(index.len(), 2);
        assert_eq!(index.slot_of(a), None);
        let c = index.slot_of("customer-c").expect("c is indexed");
        assert_eq!(c, slot, "the freed slot is taken again");
        assert_eq!(index.ids.text(c), "customer-c");
        // And back: the slot's text entry goes when a UUID takes it.
        index.remove("customer-c");
        index.insert(a, &person("13800138000"));
        assert_eq!(index.ids.other.len(), 1);
        let found: Vec<String> = index
            .score_candidates(&person("13800138000"))
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(found, vec![a.to_string()]);
    }

    #[test]
    fn an_intern_with_any_hint_stores_what_one_without_stores() {
        use crate::store::NULL;
        let record = |name: &str, phone: &str| Record::new().with(Field::FullName, name).with(Field::Phone, phone);
        let seen = [record("王伟", "13800138000"), record("李娜", "13900139000")];
        let (mut hinted, mut plain) = (Store::default(), Store::default());
        for r in &seen {
            hinted.intern(hinted.prepare(r, &ALL_FIELDS));
            plain.intern(plain.prepare(r, &ALL_FIELDS));
        }
        let new = record("王伟", "13700137000");
        let (prepared, found) = hinted.prepare_hinted(&new, &ALL_FIELDS);
        let (name, phone) = (Field::FullName.index(), Field::Phone.index());
        assert_eq!(found[name], 0, "the known name is found when prepared");
        assert_eq!(found[phone], NULL, "the new phone is not");
        // Hints as found, none, naming another value (the other name) and out of range:
        // each gives the row and counts a plain intern gives.
        let mut wrong = found;
        wrong[name] = 1;
        wrong[phone] = 7;
        let expected = plain.intern(plain.prepare(&new, &ALL_FIELDS));
        for hints in [found, [NULL; FIELD_COUNT], wrong] {
            let mut store = Store::default();
            for r in &seen {
                store.intern(store.prepare(r, &ALL_FIELDS));
            }
            assert_eq!(store.intern_hinted(prepared.clone(), &hints), expected, "{hints:?}");
            let counts = |s: &Store| -> Vec<Vec<u32>> {
                s.columns
                    .iter()
                    .map(|c| c.entries.iter().map(|e| e.count).collect())
                    .collect()
            };
            assert_eq!(counts(&store), counts(&plain), "{hints:?}");
            assert_eq!(store.columns[name].non_null, plain.columns[name].non_null);
        }
    }

    #[test]
    fn only_canonical_uuids_are_kept_as_bytes() {
        let canonical = "0192f0c1-7e3a-7b2c-9d4e-5f6a7b8c9d0e";
        assert!(matches!(IdKey::of(canonical), IdKey::Uuid(_)));
        // Other spellings of the same UUID are other ids: kept as they were written.
        for other in [
            "0192F0C1-7E3A-7B2C-9D4E-5F6A7B8C9D0E",
            "0192f0c17e3a7b2c9d4e5f6a7b8c9d0e",
            "{0192f0c1-7e3a-7b2c-9d4e-5f6a7b8c9d0e}",
            "customer-1",
        ] {
            assert_eq!(IdKey::of(other), IdKey::Text(other));
        }
        let mut index = LiveIndex::default();
        let upper = "0192F0C1-7E3A-7B2C-9D4E-5F6A7B8C9D0E";
        let r = Record::new().with(Field::FullName, "王伟");
        index.insert(canonical, &r);
        index.insert(upper, &r);
        assert_eq!(index.len(), 2);
        assert_eq!(index.ids.text(index.slot_of(upper).unwrap()), upper);
        assert_eq!(index.ids.text(index.slot_of(canonical).unwrap()), canonical);
    }

    #[test]
    fn postings_move_between_one_slot_and_a_list() {
        let mut p = Postings::default();
        p.add(7, 1);
        assert_eq!(p.get(7), Some(&[1][..]));
        p.add(7, 2);
        p.add(7, 3);
        assert_eq!(p.get(7), Some(&[1, 2, 3][..]));
        p.remove(7, 1);
        p.remove(7, 3);
        assert_eq!(p.get(7), Some(&[2][..]));
        assert!(p.multi.is_empty(), "a key left with one slot takes the single map");
        p.remove(7, 9);
        assert_eq!(
            p.get(7),
            Some(&[2][..]),
            "removing a slot the key lacks changes nothing"
        );
        p.remove(7, 2);
        assert_eq!(p.get(7), None);
        assert!(p.single.is_empty() && p.multi.is_empty());
    }

    /// Generated people (30% duplicates), every stored-query pair at the prior that puts it
    /// just above the review threshold (never ruled out: it would be dropped wrongly) and
    /// just below (ruled out, or else given exactly the levels of a full comparison).
    #[test]
    fn candidates_ruled_out_early_are_exactly_ones_scoring_below_review() {
        let mut csv_bytes = Vec::new();
        crate::generate::generate(600, 0.3, 7, &mut csv_bytes).unwrap();
        let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
        let fields: Vec<Option<Field>> = reader.headers().unwrap().iter().map(Field::from_header).collect();
        let records: Vec<Record> = reader
            .records()
            .map(|row| {
                let row = row.unwrap();
                fields
                    .iter()
                    .zip(row.iter())
                    .filter_map(|(f, v)| Some((*f)?).filter(|_| !v.is_empty()).map(|f| (f, v)))
                    .fold(Record::new(), |r, (f, v)| r.with(f, v))
            })
            .collect();
        let (stored, queries) = records.split_at(400);
        let mut index = LiveIndex::default();
        for (i, r) in stored.iter().enumerate() {
            index.insert(i.to_string(), r);
        }
        let at_review = crate::model::weight_at(index.model.thresholds.review);
        let non_null = std::array::from_fn(|i| index.store.columns[i].non_null);
        let mut ruled_out = 0;
        for q in queries {
            let prepared = index.store.prepare(q, &ALL_FIELDS);
            let query = view_of(&prepared);
            let query_bounds = index.query_bounds(&query);
            let query_sketches = sketches_of(&query);
            for s in index.slots.iter().filter(|s| s.live) {
                let stored = index.store.view(&s.row);
                let full = compare(&query, &stored);
                let evidence = index.weights.match_weight(0.0, &full, &stored, &non_null);
                // Priors that put this pair just above and just below the review threshold;
                // with the bounds of the fields alone and with what the slot's sketches allow.
                let above = at_review - evidence + 1e-6;
                let sketched = index.candidate_bounds(&query_bounds, &query, &query_sketches, s);
                for bounds in [&index.bounds, &sketched] {
                    assert_eq!(
                        index.levels_unless_below(above, at_review, &query, &stored, &non_null, bounds),
                        Some(full),
                        "a pair just above review was ruled out"
                    );
                    match index.levels_unless_below(above - 2e-6, at_review, &query, &stored, &non_null, bounds) {
                        None => ruled_out += 1,
                        Some(levels) => assert_eq!(levels, full),
                    }
                }
            }
        }
        assert!(ruled_out > 0, "no pair just below review was ruled out early");
    }
}
