//! The domain's live matching state: a `matching::LiveIndex` over every customer's *own*
//! profile record (what its own stream's activities said), the merge tree (live ids and
//! cluster sizes), the identifiers marked shared, and the companion identifiers seen with
//! each identifier (for the shared-identifier guardrail).
//!
//! Why a projection of `$all` kept in memory rather than a rebuild from customer streams
//! or a persisted snapshot: it is a pure function of the log, so restarts, redeliveries
//! and other writers (reviewers approving, splits from the API) are seen the same way.
//! It is built from position zero on the first decision after start (decoding only the
//! event types it needs) and caught up before every decision: the service's own appends
//! as they were (noted when the store commits them, `service::OwnAppends`), the log only
//! for what others wrote ([`MatchState::apply_known`] equals [`MatchState::apply`] of the
//! recorded event). Measured with
//! `examples/live_matching.rs` (release, embedded store, ~5 events per customer): 0.26 s
//! for 10k customers, 3.6 s for 100k, so about 36 s at 1M; past a few hundred thousand
//! customers a persisted snapshot (index + position) should replace the full read.
//!
//! Nothing here appends events: decisions with side effects live in `service`.

use std::collections::{HashMap, HashSet};

use matching::{Decision, Field, LiveIndex, Model, Record, ScoredCandidate, Thresholds};
use proto::customer::{ActivityRecordedV1, CustomerRegisteredV2, Identifier};
use proto::inbound::SubjectData;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use store::{GlobalPosition, RecordedEvent};

use crate::events::CustomerEvent;
use crate::identity;

/// Maps by customer id or identifier key, asked for every candidate and identifier of
/// every event: foldhash instead of std's SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Live probabilistic matching and its guardrails (the crm config's `[identity]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchingConfig {
    /// Score new customers against known ones at all.
    pub enabled: bool,
    /// Posterior match probability at or above which a new customer is merged automatically.
    pub merge_threshold: f64,
    /// At or above (and below `merge_threshold`): a review task. Below: distinct.
    pub review_threshold: f64,
    /// An identifier presented by more distinct customers than this is marked shared and no
    /// longer matched on (a shop's phone, a shared device).
    pub max_shared_identifier_customers: usize,
    /// A merge that would make a cluster (customers merged into one) larger than this goes to
    /// review instead.
    pub max_cluster_size: usize,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        MatchingConfig {
            enabled: true,
            merge_threshold: 0.9,
            review_threshold: 0.2,
            max_shared_identifier_customers: 5,
            max_cluster_size: 10,
        }
    }
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchingConfigError {
    #[error(
        "identity thresholds review_threshold {review} / merge_threshold {merge} must satisfy 0 ≤ review ≤ merge ≤ 1"
    )]
    Thresholds { merge: f64, review: f64 },
    #[error("identity.{name} is 0; it must be at least 1")]
    Zero { name: &'static str },
}

impl MatchingConfig {
    pub fn validate(&self) -> Result<(), MatchingConfigError> {
        let (merge, review) = (self.merge_threshold, self.review_threshold);
        if !((0.0..=1.0).contains(&merge) && (0.0..=1.0).contains(&review) && review <= merge) {
            return Err(MatchingConfigError::Thresholds { merge, review });
        }
        if self.max_shared_identifier_customers == 0 {
            return Err(MatchingConfigError::Zero {
                name: "max_shared_identifier_customers",
            });
        }
        if self.max_cluster_size == 0 {
            return Err(MatchingConfigError::Zero {
                name: "max_cluster_size",
            });
        }
        Ok(())
    }

    fn model(&self) -> Model {
        Model {
            thresholds: Thresholds {
                merge: self.merge_threshold,
                review: self.review_threshold,
            },
            ..Model::default()
        }
    }
}

/// The matching record of what one inbound observation says about its subject.
/// `identifiers` are the usable (normalised, not shared) ones.
pub fn record_of(subject: Option<&SubjectData>, identifiers: &[&Identifier]) -> Record {
    let mut r = Record::new();
    if let Some(s) = subject {
        r.set(Field::FullName, s.name.as_str());
        r.set(Field::Address1, s.address.as_str());
        r.set(Field::DateOfBirth, s.birth_date.as_str());
        r.set(Field::Suburb, s.region.as_str());
    }
    for field in [Field::Phone, Field::Email] {
        if let Some(id) = identifiers.iter().find(|i| i.kind == field.name()) {
            r.set(field, id.normalized.as_str());
        }
    }
    r
}

/// True when the record has nothing to compare.
pub fn is_empty(r: &Record) -> bool {
    Field::ALL.iter().all(|f| r.get(*f).is_none())
}

/// What applying a new customer's activity changes in the matching state, worked out when
/// it was decided ([`MatchState::best_new_candidate`]) so the catch-up does not normalise
/// its identifiers and record again.
#[derive(Debug)]
pub struct PreparedActivity {
    /// Keys of its identifiers not marked shared, in its subject's order.
    keys: Vec<String>,
    prepared: matching::Prepared,
}

/// The best candidate for a record, resolved to its live customer.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The live customer the matching record belongs to.
    pub customer_id: String,
    pub scored: ScoredCandidate,
}

impl Candidate {
    /// Stable digest of the per-field comparison levels: "the same evidence".
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for f in &self.scored.explanation.fields {
            h.update(f.field.name().as_bytes());
            h.update(b"=");
            h.update(f.level.as_bytes());
            h.update(b";");
        }
        hex::encode(&h.finalize()[..12])
    }

    pub fn is_merge(&self) -> bool {
        self.scored.decision == Decision::Merge
    }
}

fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Companion identifiers (key hashes) seen together with one identifier.
type Group = SmallVec<[u64; 2]>;
/// Groups of companions; groups that share an identifier are one customer.
type Groups = SmallVec<[Group; 1]>;

/// Identifier key hash → the companion identifiers (hashes) seen with it, in groups; groups
/// that share an identifier are one customer (the shared-identifier guardrail counts them).
///
/// Most identifiers have exactly one companion (a phone seen with one email): those take a
/// 16-byte entry in `one`; the others a list of groups in `many` (a 40-byte entry), which at
/// a million customers is the difference between ~35 and ~90 MiB.
#[derive(Debug, Default)]
struct Companions {
    one: hashbrown::HashMap<u64, u64>,
    many: hashbrown::HashMap<u64, Groups>,
}

impl Companions {
    /// Counts an event that presented `key` with `others`.
    fn add(&mut self, key: u64, others: &[u64]) {
        if others.is_empty() {
            return;
        }
        if let Some(&only) = self.one.get(&key) {
            if others == [only] {
                return;
            }
            self.one.remove(&key);
            self.many
                .insert(key, SmallVec::from_elem(SmallVec::from_slice(&[only]), 1));
        } else if let [only] = others
            && !self.many.contains_key(&key)
        {
            self.one.insert(key, *only);
            return;
        }
        let groups = self.many.entry(key).or_default();
        let mut merged: Group = SmallVec::from_slice(others);
        groups.retain(|g| {
            if g.iter().any(|x| others.contains(x)) {
                merged.extend_from_slice(g);
                false
            } else {
                true
            }
        });
        merged.sort_unstable();
        merged.dedup();
        groups.push(merged);
    }

    /// Distinct customers that would have presented `key` once an event presenting it with
    /// `others` is counted (`None` when `others` adds no new customer).
    fn customers_with(&self, key: u64, others: &[u64]) -> Option<usize> {
        if others.is_empty() {
            return None;
        }
        if let Some(only) = self.one.get(&key) {
            return (!others.contains(only)).then_some(2);
        }
        let groups = self.many.get(&key).map(|g| g.as_slice()).unwrap_or_default();
        if groups.iter().any(|g| g.iter().any(|x| others.contains(x))) {
            return None;
        }
        Some(groups.len() + 1)
    }

    /// Groups (customers) counted for `key`.
    #[cfg(test)]
    fn groups(&self, key: u64) -> usize {
        if self.one.contains_key(&key) {
            1
        } else {
            self.many.get(&key).map_or(0, |g| g.len())
        }
    }

    fn remove(&mut self, key: u64) {
        self.one.remove(&key);
        self.many.remove(&key);
    }
}

/// The event types the matching state follows; it only moves its position past the others.
const RELEVANT: [&str; 5] = [
    "ActivityRecordedV1",
    crate::events::CUSTOMER_REGISTERED,
    "CustomersMergedV1",
    "CustomerSplitV1",
    "IdentifierMarkedSharedV1",
];

/// The in-memory projection (see the module docs).
#[derive(Debug)]
pub struct MatchState {
    after: Option<GlobalPosition>,
    /// Every customer's own record (what its own activities said, later fields over earlier).
    index: LiveIndex,
    parent: FastMap<String, String>,
    children: FastMap<String, Vec<String>>,
    /// The companion identifiers seen with each identifier.
    companions: Companions,
    shared: HashSet<String, foldhash::fast::RandomState>,
    region: phonenumber::country::Id,
    shared_limit: usize,
}

impl MatchState {
    pub fn new(config: &MatchingConfig, region: phonenumber::country::Id) -> Self {
        let index = LiveIndex::new(config.model()).unwrap_or_default();
        MatchState {
            after: None,
            index,
            parent: FastMap::default(),
            children: FastMap::default(),
            companions: Companions::default(),
            shared: HashSet::default(),
            region,
            shared_limit: config.max_shared_identifier_customers,
        }
    }

    /// Last global position applied.
    pub fn position(&self) -> Option<GlobalPosition> {
        self.after
    }

    /// Customers with a profile record in the index.
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Applies one event of `$all` (any stream); unreadable events are skipped.
    pub fn apply(&mut self, e: &RecordedEvent) {
        self.after = Some(e.position);
        if !RELEVANT.contains(&e.event_type.as_str()) {
            return;
        }
        match CustomerEvent::from_recorded(e) {
            Ok(event) => self.apply_event(&event),
            Err(err) => {
                tracing::warn!(stream = %e.stream, error = %err, "matching state skips an unreadable event");
            }
        }
    }

    /// Applies the event at `position` as known without reading it back: `event` is what
    /// was appended there (`None`: an event [`MatchState::relevant`] says it ignores).
    /// Equal to [`MatchState::apply`] of the recorded event, without decoding it.
    pub fn apply_known(
        &mut self,
        position: GlobalPosition,
        event: Option<&CustomerEvent>,
        worked_out: Option<PreparedActivity>,
    ) {
        self.after = Some(position);
        match (event, worked_out) {
            // What the decision worked out is what applying the event would: unless one of
            // its identifiers has been marked shared since (the set only grows).
            (Some(event), Some(w)) if self.still_applies(&w) => {
                let customer_id = match event {
                    CustomerEvent::ActivityRecorded(a) => &a.customer_id,
                    CustomerEvent::RegisteredWith(r) => &r.customer_id,
                    other => return self.apply_event(other),
                };
                self.add_companions_of(&w.keys);
                self.index.upsert_prepared(customer_id, w.prepared);
            }
            (Some(event), _) => self.apply_event(event),
            (None, _) => {}
        }
    }

    /// Whether what a decision worked out is still what applying its activity would do:
    /// unless one of its identifiers has been marked shared since (the set only grows).
    pub fn still_applies(&self, worked_out: &PreparedActivity) -> bool {
        !worked_out.keys.iter().any(|k| self.shared.contains(k))
    }

    /// What applying a new customer's activity will change, worked out with its scoring
    /// ([`MatchState::best_new_candidate`]): `in_order` are the activity's identifiers that
    /// normalise, in the order its subject gives them, with their keys.
    pub fn best_new_candidate(
        &self,
        subject: Option<&SubjectData>,
        in_order: &[(String, Identifier)],
        record: &Record,
        exclude: &str,
    ) -> (Option<Candidate>, Option<PreparedActivity>) {
        let prepared = self.index.prepare(record);
        let best = if is_empty(record) {
            None
        } else {
            self.best_of(self.index.score_prepared_record(&prepared), exclude)
        };
        // As `apply_event` will see it: the identifiers not marked shared, in the subject's order.
        let kept: Vec<&(String, Identifier)> = in_order.iter().filter(|(k, _)| !self.shared.contains(k)).collect();
        let update = record_of(subject, &kept.iter().map(|(_, id)| id).collect::<Vec<_>>());
        let worked_out = (update == *record && !is_empty(record)).then(|| PreparedActivity {
            keys: kept.iter().map(|(k, _)| k.clone()).collect(),
            prepared,
        });
        (best, worked_out)
    }

    /// Whether applying `event` changes anything (the others only move the position).
    pub fn relevant(event: &CustomerEvent) -> bool {
        RELEVANT.contains(&event.type_name())
    }

    fn apply_event(&mut self, event: &CustomerEvent) {
        match event {
            // A registration's activity is its own.
            CustomerEvent::ActivityRecorded(ActivityRecordedV1 {
                customer_id,
                observation,
                ..
            })
            | CustomerEvent::RegisteredWith(CustomerRegisteredV2 {
                customer_id,
                observation,
                ..
            }) => {
                let subject = observation.as_ref().and_then(|o| o.subject.as_ref());
                let ids: Vec<Identifier> = subject
                    .map(|s| s.identifiers.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|raw| identity::normalise(raw, self.region).ok())
                    .filter(|i| !self.shared.contains(&identity::key(i)))
                    .collect();
                let keys: Vec<String> = ids.iter().map(identity::key).collect();
                self.add_companions_of(&keys);
                let update = record_of(subject, &ids.iter().collect::<Vec<_>>());
                if !is_empty(&update) {
                    self.index.upsert(customer_id, &update);
                }
            }
            CustomerEvent::Merged(m) => {
                let (survivor, absorbed) = (self.root(&m.survivor_id), self.root(&m.absorbed_id));
                if survivor != absorbed {
                    self.children
                        .entry(survivor.clone())
                        .or_default()
                        .push(absorbed.clone());
                    self.parent.insert(absorbed, survivor);
                }
            }
            CustomerEvent::Split(s) if self.parent.get(&s.restored_id) == Some(&s.survivor_id) => {
                self.parent.remove(&s.restored_id);
                if let Some(c) = self.children.get_mut(&s.survivor_id) {
                    c.retain(|x| x != &s.restored_id);
                }
            }
            CustomerEvent::MarkedShared(m) => {
                if let Some(id) = &m.identifier {
                    let key = identity::key(id);
                    self.companions.remove(key_hash(&key));
                    self.shared.insert(key);
                }
            }
            _ => {}
        }
    }

    /// Each of `keys` was seen with the others.
    fn add_companions_of(&mut self, keys: &[String]) {
        for k in keys {
            let others: Vec<u64> = keys.iter().filter(|o| *o != k).map(|o| key_hash(o)).collect();
            self.add_companions(k, &others);
        }
    }

    fn add_companions(&mut self, key: &str, others: &[u64]) {
        self.companions.add(key_hash(key), others);
    }

    /// Distinct customers that would have presented `key` once an event presenting it with
    /// `others` is counted (`None` when `others` adds no new customer).
    pub fn customers_with(&self, key: &str, others: &[&str]) -> Option<usize> {
        let others: SmallVec<[u64; 4]> = others.iter().map(|o| key_hash(o)).collect();
        self.companions.customers_with(key_hash(key), &others)
    }

    /// Limit of distinct customers per identifier.
    pub fn shared_limit(&self) -> usize {
        self.shared_limit
    }

    pub fn is_shared(&self, key: &str) -> bool {
        self.shared.contains(key)
    }

    /// The live customer a (possibly merged) customer belongs to.
    pub fn root(&self, id: &str) -> String {
        let mut current = id;
        for _ in 0..64 {
            match self.parent.get(current) {
                Some(p) => current = p,
                None => break,
            }
        }
        current.to_string()
    }

    /// Customers (streams) in the cluster of `id`'s live customer.
    pub fn cluster_size(&self, id: &str) -> usize {
        let mut stack = vec![self.root(id)];
        let mut n = 0;
        while let Some(c) = stack.pop() {
            n += 1;
            if n > 100_000 {
                break;
            }
            if let Some(ch) = self.children.get(&c) {
                stack.extend(ch.iter().cloned());
            }
        }
        n
    }

    /// The best-scoring live customer at or above the review threshold, other than
    /// `exclude`'s cluster.
    pub fn best_candidate(&self, record: &Record, exclude: &str) -> Option<Candidate> {
        if is_empty(record) {
            return None;
        }
        self.best_of(self.index.score_candidates(record), exclude)
    }

    /// [`MatchState::best_candidate`] for `customer`'s own record with `update` laid over it
    /// (an existing customer whose profile changed), other than its own cluster.
    pub fn best_candidate_over(&self, customer: &str, update: &Record) -> Option<Candidate> {
        self.best_of(self.index.score_candidates_over(customer, update), customer)
    }

    fn best_of(&self, scored: Vec<ScoredCandidate>, exclude: &str) -> Option<Candidate> {
        let excluded = self.root(exclude);
        scored.into_iter().find_map(|scored| {
            let customer_id = self.root(&scored.id);
            (customer_id != excluded).then_some(Candidate { customer_id, scored })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_that_overlap_are_one_customer() {
        let mut s = MatchState::new(&MatchingConfig::default(), phonenumber::country::Id::CN);
        s.add_companions("p", &[1, 2]);
        assert_eq!(s.customers_with("p", &["x"]), Some(2));
        s.add_companions("p", &[2, 3]);
        assert_eq!(s.companions.groups(key_hash("p")), 1);
        s.add_companions("p", &[4]);
        assert_eq!(s.companions.groups(key_hash("p")), 2);
        assert_eq!(s.customers_with("p", &[]), None);
    }

    #[test]
    fn one_companion_counts_like_a_group_of_one() {
        let mut s = MatchState::new(&MatchingConfig::default(), phonenumber::country::Id::CN);
        let (x, y) = (key_hash("x"), key_hash("y"));
        s.add_companions("p", &[x]);
        s.add_companions("p", &[x]);
        assert_eq!(s.companions.groups(key_hash("p")), 1);
        assert_eq!(s.customers_with("p", &["x"]), None);
        assert_eq!(s.customers_with("p", &["y"]), Some(2));
        assert_eq!(s.customers_with("p", &["y", "x"]), None);
        // A second customer's companion: the entry becomes a list of two groups.
        s.add_companions("p", &[y]);
        assert_eq!(s.companions.groups(key_hash("p")), 2);
        assert_eq!(s.customers_with("p", &["z"]), Some(3));
        // An event carrying both joins them into one customer.
        s.add_companions("p", &[x, y]);
        assert_eq!(s.companions.groups(key_hash("p")), 1);
        assert_eq!(s.customers_with("p", &["z"]), Some(2));
        s.companions.remove(key_hash("p"));
        assert_eq!(s.customers_with("p", &["z"]), Some(1));
    }

    #[test]
    fn thresholds_out_of_order_are_refused() {
        let c = MatchingConfig {
            merge_threshold: 0.1,
            review_threshold: 0.5,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("review_threshold 0.5"));
    }
}
