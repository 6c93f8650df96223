//! Identity resolution: decides which customer an inbound event belongs to and
//! appends the customer events. Deterministic and idempotent: event ids derive
//! from the inbound event id and the role of each output, so a redelivered
//! inbound event appends nothing new.
//!
//! Order of writes (each step is safe to repeat after a crash):
//! 1. merges: `CustomersMergedV1` in the survivor, then `MergedIntoV1` in the absorbed;
//! 2. the customer stream gets one append: a new customer's `CustomerRegisteredV2`
//!    (registration, the identifiers this event attaches, and its activity), or a
//!    returning customer's `IdentifierAttachedV2` for the identifiers this event attaches
//!    and `ActivityRecordedV1`. The registration or attachment claims the reservation of
//!    each identifier nobody owned ([`EventStore::append_claiming`]): the embedded store
//!    takes the reservations and the events in one commit, and `claimant` of each
//!    reservation is that event; a store without a key index first writes
//!    `IdentifierClaimedV1` to each reservation stream (expected: no stream), and a retry
//!    after a crash in between recognises the claim as its own by its cause;
//! 3. live probabilistic matching (only for an event no identifier resolved): the new
//!    customer's stream is complete first, then above the merge threshold it is merged
//!    into the matching customer (`CustomersMergedV1` rule "probabilistic", then
//!    `MergedIntoV1`, which stays the last event of the absorbed stream); in the review
//!    band a `MatchReviewRequestedV1` goes to `review-<id>`, keyed by the pair and the
//!    evidence fingerprint so the same evidence is never proposed twice.
//!
//! Guardrails: an identifier presented by more than `max_shared_identifier_customers`
//! distinct customers gets `IdentifierMarkedSharedV1` in its reservation stream and is not
//! matched on again; a merge that would make a cluster larger than `max_cluster_size`
//! becomes a review task.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use proto::InboundEvent;
use proto::customer::*;
use store::{EventStore, ExpectedRevision, GlobalPosition, StoreError};

use crate::events::{CUSTOMER_REGISTERED, CustomerEvent, MERGED_INTO};
use crate::identity::{self, IdentifierError};
use crate::matcher::{self, Candidate, MatchState, MatchingConfig, PreparedActivity};

/// How many times a decision is retried after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stream {stream} holds an unreadable event: {source}")]
    Corrupt {
        stream: String,
        #[source]
        source: crate::events::EventDecodeError,
    },
    #[error("identifier reservation {stream} points at customer {customer}, whose stream does not exist")]
    DanglingClaim { stream: String, customer: String },
    #[error("gave up on inbound event {0} after {MAX_ATTEMPTS} concurrent-write conflicts")]
    Contended(String),
}

impl DomainError {
    /// Worth retrying later (the store is down), as opposed to a problem with this event.
    pub fn is_transient(&self) -> bool {
        matches!(self, DomainError::Store(StoreError::Unavailable(_) | StoreError::Io(_)))
            // A new customer's claims are written just before its stream: another process
            // can see the claim in between. Later the stream is there.
            || matches!(self, DomainError::Contended(_) | DomainError::DanglingClaim { .. })
    }
}

/// Domain settings.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Region for phone numbers without a country code.
    pub default_region: phonenumber::country::Id,
    /// Live probabilistic matching and its guardrails.
    pub matching: MatchingConfig,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            default_region: phonenumber::country::Id::CN,
            matching: MatchingConfig::default(),
        }
    }
}

/// What the service decided for one inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub customer_id: String,
    /// The event created this customer (or, for a probabilistic merge, created the
    /// customer that was then absorbed into `customer_id`).
    pub created: bool,
    /// Customers absorbed into `customer_id` because of this event.
    pub absorbed: Vec<String>,
    /// Identifiers the event carried that could not be used, with why.
    pub unusable_identifiers: Vec<String>,
    /// Customer events appended (0 for a redelivery).
    pub appended: usize,
    /// A review task this event proposed.
    pub review: Option<String>,
}

/// The customer id a new customer created by the inbound event `inbound_event_id`, received
/// at `recorded_at_us`, gets: a UUIDv7 whose time is the receipt (ms) and whose other bits
/// are a hash of the event id. Deterministic (a redelivery carries its receipt time with
/// it), and customers created together get neighbouring ids, so their keys in the store and
/// in the views are neighbours: sled then inserts into a few hot pages instead of all over
/// the tree (measured: a 300k-row import 2.9k → 3.6k rows/s).
pub fn new_customer_id(inbound_event_id: &str, recorded_at_us: i64) -> String {
    let mut bytes = *proto::derived_id_of(&["customer/", inbound_event_id]).as_bytes();
    let ms = u64::try_from(recorded_at_us.div_euclid(1000)).unwrap_or(0);
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (bytes[6] & 0x0F); // version 7
    bytes[8] = 0x80 | (bytes[8] & 0x3F); // RFC 9562 variant
    uuid::Uuid::from_bytes(bytes).to_string()
}

pub(crate) fn event_id(inbound: &str, role: &str) -> uuid::Uuid {
    proto::derived_id_of(&[inbound, "/", role])
}

/// [`event_id`] of role `<role>/<key>`: one event per identifier of the inbound event (its
/// claim marker), or per set of them (its attachment: the keys joined by newlines).
pub(crate) fn keyed_event_id(inbound: &str, role: &str, key: &str) -> uuid::Uuid {
    proto::derived_id_of(&[inbound, "/", role, "/", key])
}

/// The review of a pair with given evidence: the same pair and fingerprint give the same id.
pub fn review_id(a: &str, b: &str, fingerprint: &str) -> String {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    proto::derived_id(&format!("review/{a}/{b}/{fingerprint}")).to_string()
}

/// Stream of a review task.
pub fn review_stream(review_id: &str) -> String {
    format!("review-{review_id}")
}

/// Who owns an identifier: the customer and the inbound event that claimed it.
struct Claim {
    customer: String,
    cause: String,
    /// The claimant is the registration or attachment itself (the embedded store writes
    /// claim and event in one commit), so the identifier is attached already. A marker
    /// (`IdentifierClaimedV1`) may precede its event: a crash can come in between.
    attached: bool,
}

/// A live customer and where its stream began.
pub(crate) struct Live {
    pub id: String,
    pub first: GlobalPosition,
}

/// Follows `MergedIntoV1` links to the live customer (a customer whose stream ends
/// with `MergedIntoV1` is merged; `CustomerRestoredV1` after it makes it live again).
pub(crate) async fn live_customer(store: &dyn EventStore, customer: &str, via: &str) -> Result<Live, DomainError> {
    let id = live_id(store, customer, via).await?;
    let first = stream_start(store, &id).await?;
    Ok(Live { id, first })
}

/// [`live_customer`] without where its stream began (one read less: most events name one
/// live customer, and only two or more are ordered by age).
async fn live_id(store: &dyn EventStore, customer: &str, via: &str) -> Result<String, DomainError> {
    let mut current = customer.to_string();
    for _ in 0..64 {
        let stream = identity::customer_stream(&current);
        let Some(last) = store.read_last(&stream).await? else {
            return Err(DomainError::DanglingClaim {
                stream: via.to_string(),
                customer: current,
            });
        };
        // Only a merge's last event is decoded (most streams end with an activity).
        if last.event_type != MERGED_INTO {
            return Ok(current);
        }
        match CustomerEvent::from_recorded(&last) {
            Ok(CustomerEvent::MergedInto(m)) => current = m.survivor_id,
            Ok(_) => return Ok(current),
            Err(source) => return Err(DomainError::Corrupt { stream, source }),
        }
    }
    Err(DomainError::Contended(format!(
        "merge chain from {customer} is longer than 64"
    )))
}

/// Where the customer's stream began (its first event's log position).
async fn stream_start(store: &dyn EventStore, customer: &str) -> Result<GlobalPosition, DomainError> {
    let first = store.read_stream(&identity::customer_stream(customer), 0, 1).await?;
    Ok(first.first().map(|e| e.position).unwrap_or_default())
}

/// Appends a merge: `CustomersMergedV1` in the survivor, then `MergedIntoV1` in the absorbed.
/// Event ids derive from `cause` (an inbound event id or a review id). `own`: the appends
/// the matching state may take as known ([`OwnAppends`]).
pub(crate) async fn append_merge(
    store: &Arc<dyn EventStore>,
    own: Option<&Arc<OwnAppends>>,
    survivor: &str,
    absorbed: &str,
    evidence: MergeEvidence,
    provenance: &Provenance,
    cause: &str,
) -> Result<usize, DomainError> {
    let rule = evidence.rule.clone();
    let merged = CustomerEvent::Merged(CustomersMergedV1 {
        survivor_id: survivor.to_string(),
        absorbed_id: absorbed.to_string(),
        evidence: Some(evidence),
        provenance: Some(provenance.clone()),
    });
    let into = CustomerEvent::MergedInto(MergedIntoV1 {
        customer_id: absorbed.to_string(),
        survivor_id: survivor.to_string(),
        provenance: Some(provenance.clone()),
    });
    let mut appended = 0;
    for (stream, event, role) in [
        (survivor, merged, format!("merge/{absorbed}")),
        (absorbed, into, format!("merged-into/{survivor}")),
    ] {
        let events = vec![(event, event_id(cause, &role))];
        appended += append_typed(
            store,
            own,
            &identity::customer_stream(stream),
            ExpectedRevision::StreamExists,
            events,
        )
        .await?
        .appended;
    }
    metrics::counter!("domain_customers_merged_total", "rule" => rule).increment(1);
    Ok(appended)
}

/// Appends typed events to one stream and, given `own`, notes them for the matching state.
pub(crate) async fn append_typed(
    store: &Arc<dyn EventStore>,
    own: Option<&Arc<OwnAppends>>,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<(CustomerEvent, uuid::Uuid)>,
) -> Result<store::AppendOutcome, StoreError> {
    let events = events.into_iter().map(|(e, id)| (e, id, None)).collect();
    append_claiming(store, own.map(|own| (own, None)), stream, expected, events, Vec::new()).await
}

/// An event for [`append_claiming`]: the event, its id, and what to write when not the
/// event's own encoding. Given only for an activity or a registration, written from the
/// inbound event's parts ([`crate::events::ActivityParts`]); the event is then what the
/// matching state notes: a new customer's registration without its observation (see
/// [`OwnAppends`]).
type Outgoing = (CustomerEvent, uuid::Uuid, Option<Vec<u8>>);

/// [`append_typed`] that also claims identifiers ([`EventStore::append_claiming`]); the
/// activity among `events` is noted with what its decision worked out for the matching state.
async fn append_claiming(
    store: &Arc<dyn EventStore>,
    own: Option<(&Arc<OwnAppends>, Option<PreparedActivity>)>,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<Outgoing>,
    claims: Vec<store::Claim>,
) -> Result<store::AppendOutcome, StoreError> {
    let (events, new): (Vec<CustomerEvent>, Vec<store::NewEvent>) = events
        .into_iter()
        .map(|(e, id, data)| {
            let new = match data {
                Some(data) => e.to_new_encoded(id, data),
                None => e.to_new(id),
            };
            (e, new)
        })
        .unzip();
    let on_commit = own.map(|(own, worked_out)| {
        // Noted when committed: before the catch-up can meet these events in the log.
        let (own, noting) = (own.clone(), store.clone());
        Box::new(move |out: &store::AppendOutcome| {
            own.note(noting.as_ref(), out, events.into_iter(), worked_out);
        }) as store::OnCommit
    });
    store.append_claiming(stream, expected, new, claims, on_commit).await
}

/// What this service appended, by log position, not yet applied to the matching state:
/// the catch-up before a decision applies these as they are instead of reading them back
/// from the store and decoding them (most of the log, under one import, is the domain's
/// own appends). Only where the store numbers its log consecutively
/// ([`EventStore::position_at`]) and an append wrote every event it was given, so each
/// event's position is known; anything else (other writers, redeliveries) is read from the
/// log as before. A pure function of the log still: a noted event is the one at its position.
///
/// A new customer's registration (its activity) is noted with what its decision worked out
/// ([`PreparedActivity`]) and without its observation, which only that needs. Should it no
/// longer apply (one of its identifiers marked shared since), the catch-up reads the
/// activity back from the log instead.
#[derive(Default)]
pub struct OwnAppends {
    events: std::sync::Mutex<BTreeMap<GlobalPosition, Noted>>,
}

/// A noted event ([`MatchState::relevant`] ones only) and, for a new customer's registration,
/// what its decision worked out for the matching state. Boxed: the map's inserts and
/// removals shift entries within a node, and an activity is several hundred bytes.
type Noted = Option<Box<(CustomerEvent, Option<PreparedActivity>)>>;

/// Most events noted and not yet applied; past it the notes are dropped (read back instead),
/// so a long run of decisions that never catch up cannot grow memory.
const OWN_APPENDS_MAX: usize = 4_096;

impl OwnAppends {
    fn note(
        &self,
        store: &dyn EventStore,
        out: &store::AppendOutcome,
        events: impl ExactSizeIterator<Item = CustomerEvent>,
        mut worked_out: Option<PreparedActivity>,
    ) {
        let n = events.len();
        let Some(last) = out.position else { return };
        if out.appended != n || n == 0 {
            return;
        }
        let mut noted = self.lock();
        if noted.len() + n > OWN_APPENDS_MAX {
            noted.clear();
        }
        for (i, event) in events.enumerate() {
            let Some(position) = store.position_at(Some(last), i as i64 + 1 - n as i64) else {
                return;
            };
            let prepared = match event {
                CustomerEvent::ActivityRecorded(_) | CustomerEvent::RegisteredWith(_) => worked_out.take(),
                _ => None,
            };
            noted.insert(
                position,
                MatchState::relevant(&event).then(|| Box::new((event, prepared))),
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<GlobalPosition, Noted>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the noted events that directly follow the state's position (each outside
    /// the lock: the store's writer notes meanwhile); forgets those it has passed. Returns
    /// the next noted position, if any.
    fn apply_next(&self, store: &dyn EventStore, state: &mut MatchState) -> Option<GlobalPosition> {
        loop {
            let next = store.position_at(state.position(), 1)?;
            let event = {
                let mut noted = self.lock();
                while let Some(entry) = noted.first_entry()
                    && *entry.key() < next
                {
                    entry.remove();
                }
                match noted.first_entry() {
                    Some(entry) if *entry.key() == next => entry.remove(),
                    Some(entry) => return Some(*entry.key()),
                    None => return None,
                }
            };
            let (event, worked_out) = event.map_or((None, None), |noted| {
                let (e, w) = *noted;
                (Some(e), w)
            });
            if worked_out.as_ref().is_some_and(|w| !state.still_applies(w)) {
                // Noted without its observation: the caller reads it from the log.
                return Some(next);
            }
            state.apply_known(next, event.as_ref(), worked_out);
        }
    }
}

/// Evidence of a probabilistic comparison.
fn probabilistic_evidence(c: &Candidate, decided_by: String) -> MergeEvidence {
    let x = &c.scored.explanation;
    MergeEvidence {
        rule: "probabilistic".into(),
        identifiers: Vec::new(),
        score: c.scored.probability,
        comparisons: x
            .fields
            .iter()
            .map(|f| FieldComparison {
                field: f.field.name().to_string(),
                level: f.level.clone(),
                weight: f.weight,
            })
            .collect(),
        decided_by,
        match_weight: x.match_weight,
        prior_weight: x.prior_weight,
        review_id: String::new(),
    }
}

/// What the live matching decided for an event that matched nobody by identifiers.
enum Probabilistic {
    Distinct,
    Merge(Candidate),
    Review(Candidate, &'static str),
}

/// Notable matching outcomes, each logged once and counted.
mod emit {
    pub fn identifier_marked_shared(kind: &str, customers: usize, limit: usize) {
        tracing::info!(kind, customers, limit, "identifier marked shared; no longer matched on");
        metrics::counter!("domain_identifiers_marked_shared_total").increment(1);
    }
    pub fn review_requested(reason: &str, probability: f64) {
        tracing::debug!(reason, probability, "match review requested");
        metrics::counter!("domain_match_reviews_requested_total", "reason" => reason.to_string()).increment(1);
    }
    pub fn scored(elapsed: std::time::Duration) {
        metrics::histogram!("domain_match_scoring_seconds").record(elapsed.as_secs_f64());
    }
}

pub struct CustomerService {
    store: Arc<dyn EventStore>,
    config: DomainConfig,
    matching: tokio::sync::Mutex<MatchState>,
    /// This service's appends the matching state has not applied yet.
    own: Arc<OwnAppends>,
}

impl CustomerService {
    pub fn new(store: Arc<dyn EventStore>, config: DomainConfig) -> Self {
        let matching = tokio::sync::Mutex::new(MatchState::new(&config.matching, config.default_region));
        CustomerService {
            store,
            config,
            matching,
            own: Arc::default(),
        }
    }

    /// Where appends are noted for the matching state: nowhere when matching is off.
    fn own(&self) -> Option<&Arc<OwnAppends>> {
        self.config.matching.enabled.then_some(&self.own)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    /// Resolves identity for one inbound event and appends the customer events.
    pub async fn handle(&self, event: &InboundEvent) -> Result<Resolution, DomainError> {
        self.handle_encoded(event, None).await
    }

    /// [`Self::handle`] given the event's observation as it was encoded
    /// ([`proto::observation_bytes`] of its payload): a new customer's registration embeds
    /// those bytes instead of encoding the observation again (an import row's registration:
    /// ~6,400 → ~2,400 instructions).
    pub async fn handle_encoded(
        &self,
        event: &InboundEvent,
        observation_encoded: Option<&[u8]>,
    ) -> Result<Resolution, DomainError> {
        for _ in 0..MAX_ATTEMPTS {
            match self.try_handle(event, observation_encoded).await {
                Err(DomainError::Store(StoreError::WrongExpectedRevision { stream, .. })) => {
                    tracing::debug!(%stream, event_id = event.event_id(), "lost a concurrent write; deciding again");
                    metrics::counter!("domain_decision_retries_total").increment(1);
                }
                other => return other,
            }
        }
        Err(DomainError::Contended(event.event_id().to_string()))
    }

    /// Brings the matching state up to the store's tip and returns it locked.
    pub async fn matching_state(&self) -> Result<tokio::sync::MutexGuard<'_, MatchState>, DomainError> {
        let mut state = self.matching.lock().await;
        let tip = self.store.last_position();
        let at_tip = |state: &MatchState| tip.is_some_and(|tip| state.position().is_some_and(|p| p >= tip));
        // Nothing appended since the last catch-up: no read (most calls, under load).
        if at_tip(&state) {
            return Ok(state);
        }
        loop {
            // This service's own appends as they were; the log only for the rest.
            let next_noted = self.own.apply_next(self.store.as_ref(), &mut state);
            if at_tip(&state) {
                break;
            }
            let max = match (next_noted, self.store.position_at(state.position(), 1)) {
                (Some(noted), Some(next)) => usize::try_from(noted.commit.saturating_sub(next.commit)).unwrap_or(1),
                _ => 10_000,
            };
            let events = self.store.read_all(state.position(), max.clamp(1, 10_000)).await?;
            if events.is_empty() {
                break;
            }
            for e in &events {
                state.apply(e);
            }
        }
        Ok(state)
    }

    /// Who holds the identifier whose reservation is `stream`: the registration or
    /// attachment that claimed it (embedded store), or an `IdentifierClaimedV1` in the
    /// reservation stream itself (stores without a key index, and claims made before
    /// `append_claiming`).
    async fn claim_of(&self, stream: &str) -> Result<Option<Claim>, DomainError> {
        let Some(held) = self.store.claimant(stream).await? else {
            return Ok(None);
        };
        match crate::events::ClaimHolder::decode(&held.event_type, &held.data) {
            Ok(holder) => Ok(holder.map(|h| Claim {
                customer: h.customer_id,
                cause: h.provenance.map(|p| p.inbound_event_id).unwrap_or_default(),
                attached: h.attached,
            })),
            Err(source) => Err(DomainError::Corrupt {
                stream: stream.to_string(),
                source,
            }),
        }
    }

    /// Marks attached the identifiers of `claims` that this very inbound event claimed with
    /// a marker (stores without a key index) and that the customer it registered holds: a
    /// channel's retry received later. The marker is written before the registration and a
    /// crash can come in between, so a marker alone does not say so; the registration,
    /// the customer's first event, does. (Only redeliveries reach the read.)
    async fn registered_by(
        &self,
        inbound_id: &str,
        claims: &mut BTreeMap<String, Option<Claim>>,
    ) -> Result<(), DomainError> {
        let mut customers: Vec<String> = claims
            .values()
            .flatten()
            .filter(|c| c.cause == inbound_id && !c.attached)
            .map(|c| c.customer.clone())
            .collect();
        customers.sort();
        customers.dedup();
        for customer in customers {
            let stream = identity::customer_stream(&customer);
            let first = self.store.read_stream(&stream, 0, 1).await?;
            let Some(first) = first.first().filter(|e| e.event_type == CUSTOMER_REGISTERED) else {
                continue;
            };
            let registered = match CustomerEvent::from_recorded(first) {
                Ok(CustomerEvent::RegisteredWith(r)) => r,
                Ok(_) => continue,
                Err(source) => return Err(DomainError::Corrupt { stream, source }),
            };
            if registered.provenance.is_none_or(|p| p.inbound_event_id != inbound_id) {
                continue;
            }
            for held in &registered.identifiers {
                if let Some(Some(claim)) = claims.get_mut(&identity::key(held))
                    && claim.customer == customer
                {
                    claim.attached = true;
                }
            }
        }
        Ok(())
    }

    /// Proposes a review of `customer` against `candidate` unless this pair with this
    /// evidence was proposed before (pending, approved or rejected).
    async fn propose_review(
        &self,
        customer: &str,
        candidate: &str,
        evidence: MergeEvidence,
        fingerprint: String,
        reason: &'static str,
        provenance: &Provenance,
    ) -> Result<(Option<String>, usize), DomainError> {
        let id = review_id(customer, candidate, &fingerprint);
        let stream = review_stream(&id);
        if self.store.stream_revision(&stream).await?.is_some() {
            return Ok((None, 0));
        }
        emit::review_requested(reason, evidence.score);
        let request = CustomerEvent::ReviewRequested(MatchReviewRequestedV1 {
            review_id: id.clone(),
            customer_id: customer.to_string(),
            candidate_id: candidate.to_string(),
            evidence: Some(evidence),
            fingerprint,
            reason: reason.to_string(),
            provenance: Some(provenance.clone()),
        });
        let events = vec![(request, event_id(&format!("review/{id}"), "requested"))];
        let out = append_typed(&self.store, self.own(), &stream, ExpectedRevision::Any, events).await?;
        Ok((Some(id), out.appended))
    }

    async fn try_handle(
        &self,
        event: &InboundEvent,
        observation_encoded: Option<&[u8]>,
    ) -> Result<Resolution, DomainError> {
        let inbound_id = event.event_id().to_string();
        let header = event.header().map(Cow::Borrowed).unwrap_or_default();
        let provenance = Provenance {
            inbound_event_id: inbound_id.clone(),
            channel: header.channel.clone(),
            channel_instance: header.channel_instance.clone(),
            source_ref: header.source_ref.clone(),
            occurred_at_us: header.occurred_at_us,
            recorded_at_us: header.recorded_at_us,
        };
        let matching = self.config.matching.clone();
        let subject = event.observation().and_then(|o| o.subject.as_ref());

        // Normalise; unusable identifiers are reported, never matched on.
        let mut identifiers: BTreeMap<String, Identifier> = BTreeMap::new();
        // The same, in the subject's order and with repeats (as the matching state reads them).
        let mut in_order: Vec<(String, Identifier)> = Vec::new();
        let mut unusable = Vec::new();
        let raws = subject.map(|s| s.identifiers.as_slice()).unwrap_or_default();
        for raw in raws {
            match identity::normalise(raw, self.config.default_region) {
                Ok(id) => {
                    let key = identity::key(&id);
                    if matching.enabled {
                        in_order.push((key.clone(), id.clone()));
                    }
                    identifiers.entry(key).or_insert(id);
                }
                Err(e @ IdentifierError::MissingScope { .. }) | Err(e @ IdentifierError::Value(_)) => {
                    unusable.push(format!("{}={:?}: {e}", raw.kind, raw.value))
                }
            }
        }
        if matching.enabled && !identifiers.is_empty() {
            let state = self.matching_state().await?;
            identifiers.retain(|key, id| {
                let shared = state.is_shared(key);
                if shared {
                    unusable.push(format!("{}={:?}: shared by several customers", id.kind, id.raw));
                }
                !shared
            });
        }

        // Who owns what.
        let reservations: BTreeMap<String, String> = identifiers
            .iter()
            .map(|(key, id)| (key.clone(), identity::reservation_of_key(&id.kind, key)))
            .collect();
        let mut claims: BTreeMap<String, Option<Claim>> = BTreeMap::new();
        for (key, reservation) in &reservations {
            claims.insert(key.clone(), self.claim_of(reservation).await?);
        }
        self.registered_by(&inbound_id, &mut claims).await?;
        let mut appended = 0;

        // Guardrail: an owned identifier presented with the identifiers of too many
        // different customers is marked shared and not matched on from now on. (Nothing
        // owned, nothing to count: no lock and catch-up of the matching state.)
        if matching.enabled && claims.values().any(Option::is_some) {
            let state = self.matching_state().await?;
            let mut newly_shared = Vec::new();
            for key in claims.iter().filter(|(_, c)| c.is_some()).map(|(k, _)| k) {
                let others: Vec<&str> = identifiers.keys().filter(|k| *k != key).map(String::as_str).collect();
                if let Some(n) = state.customers_with(key, &others)
                    && n > state.shared_limit()
                {
                    newly_shared.push((key.clone(), n, state.shared_limit()));
                }
            }
            drop(state);
            for (key, customers, limit) in newly_shared {
                let Some(id) = identifiers.remove(&key) else { continue };
                claims.remove(&key);
                emit::identifier_marked_shared(&id.kind, customers, limit);
                let marked = CustomerEvent::MarkedShared(IdentifierMarkedSharedV1 {
                    identifier: Some(id.clone()),
                    customers: customers as u32,
                    limit: limit as u32,
                    provenance: Some(provenance.clone()),
                });
                appended += append_typed(
                    &self.store,
                    self.own(),
                    &identity::reservation_stream(&id),
                    ExpectedRevision::StreamExists,
                    vec![(marked, keyed_event_id(&inbound_id, "shared", &key))],
                )
                .await?
                .appended;
                unusable.push(format!("{}={:?}: shared by several customers", id.kind, id.raw));
            }
        }

        // A redelivery of an event that created a customer: it stays that customer's event
        // (even if that customer has been merged since), and only unfinished steps append.
        let new_id = new_customer_id(&inbound_id, event.header().map_or(0, |h| h.recorded_at_us));
        let redelivered_new = self
            .store
            .stream_revision(&identity::customer_stream(&new_id))
            .await?
            .is_some();
        // The live customers that own these identifiers.
        let mut live: Vec<String> = Vec::new();
        // A returning customer's identifiers are mostly all claimed by the same customer:
        // where it lives now is found once.
        let mut followed: Vec<&str> = Vec::new();
        for (key, claim) in claims.iter().filter(|_| !redelivered_new) {
            // A claim this very event made in an earlier attempt that stopped before the
            // customer's stream was written: ours, not somebody else's customer.
            if let Some(c) = claim
                && c.customer != new_id
                && !followed.contains(&c.customer.as_str())
            {
                followed.push(&c.customer);
                let id = live_id(self.store.as_ref(), &c.customer, &reservations[key]).await?;
                if !live.contains(&id) {
                    live.push(id);
                }
            }
        }
        // Oldest first: the survivor of the merge below (one alone needs no order).
        if live.len() > 1 {
            let mut aged = Vec::with_capacity(live.len());
            for id in live {
                aged.push((stream_start(self.store.as_ref(), &id).await?, id));
            }
            aged.sort_by_key(|(first, _)| *first);
            live = aged.into_iter().map(|(_, id)| id).collect();
        }

        // Nobody owns these identifiers: score the event against known customers.
        let record = {
            let ids: Vec<&Identifier> = identifiers.values().collect();
            matcher::record_of(subject, &ids)
        };
        let mut probabilistic = Probabilistic::Distinct;
        let mut worked_out = None;
        if live.is_empty() && matching.enabled {
            let state = self.matching_state().await?;
            let started = std::time::Instant::now();
            let best;
            (best, worked_out) = state.best_new_candidate(subject, &in_order, &record, &new_id);
            emit::scored(started.elapsed());
            if let Some(c) = best {
                probabilistic = if !c.is_merge() {
                    Probabilistic::Review(c, "review_band")
                } else if state.cluster_size(&c.customer_id) + 1 > matching.max_cluster_size {
                    Probabilistic::Review(c, "cluster_size")
                } else {
                    Probabilistic::Merge(c)
                };
            }
        }

        let mut review = None;
        // A new customer's stream is written once, after its claims: registration,
        // identifiers and activity in one event.
        let creating = live.is_empty();
        let customer_id = match live.first() {
            Some(id) => id.clone(),
            None => new_id.clone(),
        };

        // Several live customers share this event's identifiers: merge into the oldest,
        // unless the cluster would grow past its limit (then a person decides).
        let mut absorbed = Vec::new();
        let mut cluster = if live.len() > 1 && matching.enabled {
            self.matching_state().await?.cluster_size(&customer_id)
        } else {
            1
        };
        for other in live.iter().skip(1) {
            let shared: Vec<Identifier> = identifiers
                .iter()
                .filter(|(k, _)| claims.get(*k).and_then(|c| c.as_ref()).is_some())
                .map(|(_, id)| id.clone())
                .collect();
            let evidence = MergeEvidence {
                rule: "shared_identifier".into(),
                identifiers: shared,
                score: 1.0,
                decided_by: format!("inbound event {inbound_id} carried identifiers of both"),
                ..Default::default()
            };
            if matching.enabled {
                let theirs = self.matching_state().await?.cluster_size(other);
                if cluster + theirs > matching.max_cluster_size {
                    let mut keys: Vec<String> = evidence.identifiers.iter().map(identity::key).collect();
                    keys.sort();
                    let fingerprint = format!("shared:{}", keys.join(","));
                    let (id, n) = self
                        .propose_review(other, &customer_id, evidence, fingerprint, "cluster_size", &provenance)
                        .await?;
                    appended += n;
                    review = review.or(id);
                    continue;
                }
                cluster += theirs;
            }
            appended += append_merge(
                &self.store,
                self.own(),
                &customer_id,
                other,
                evidence,
                &provenance,
                &inbound_id,
            )
            .await?;
            absorbed.push(other.clone());
        }

        // Attach what this event claims (now, or in an earlier attempt whose registration
        // or attachment is not written yet), and claim what nobody owns yet, in the same
        // append: one event (the registration, or the attachment) holds the reservations
        // of all the identifiers it claims (a store without a key index writes an
        // `IdentifierClaimedV1` to each reservation stream first instead).
        let attaching: Vec<(&String, &Identifier)> = identifiers
            .iter()
            .filter(|(key, _)| {
                claims[*key]
                    .as_ref()
                    .is_none_or(|c| c.cause == inbound_id && !c.attached)
            })
            .collect();
        // The claiming event is the append's first: the registration, or the attachment.
        let mut to_claim = Vec::new();
        for (key, id) in attaching.iter().filter(|(key, _)| claims[*key].is_none()) {
            // Only a store that keeps claims as streams of their own writes it.
            let marker = self.store.claims_need_markers().then(|| {
                let marker = CustomerEvent::IdentifierClaimed(IdentifierClaimedV1 {
                    identifier: Some((*id).clone()),
                    customer_id: customer_id.clone(),
                    provenance: Some(provenance.clone()),
                });
                marker.to_new(keyed_event_id(&inbound_id, "claim", key))
            });
            to_claim.push(store::Claim {
                key: reservations[*key].clone(),
                by: 0,
                marker,
            });
        }
        // The activity (a new customer's registration) is written from the inbound event's
        // parts. The matching state notes it whole only when it works out what the activity
        // changes itself (a returning customer); a new customer's is noted with what its
        // scoring worked out.
        let noting = self.own().map(|own| (own, worked_out));
        let whole = matches!(noting, Some((_, None)));
        let parts = crate::events::ActivityParts {
            customer_id: &customer_id,
            provenance: Some(&provenance),
            event_type: event.event_type(),
            observation: event.observation(),
            observation_encoded,
            raw: &header.raw,
            raw_content_type: &header.raw_content_type,
        };
        let mut customer_events = Vec::new();
        if creating {
            // One event: registration, identifiers and activity. Its id is the activity's:
            // a redelivery writes nothing whether it finds a registration (the same receipt
            // time, so the same customer id) or a customer to record the activity for (a
            // channel's retry, received again later), and whether V2 or V1 (registration,
            // attachments, activity) wrote the first delivery.
            let ids: Vec<&Identifier> = attaching.iter().map(|(_, id)| *id).collect();
            let registered = match whole {
                true => parts.to_registration(&ids),
                false => CustomerRegisteredV2 {
                    customer_id: customer_id.clone(),
                    ..Default::default()
                },
            };
            customer_events.push((
                CustomerEvent::RegisteredWith(registered),
                event_id(&inbound_id, "activity"),
                Some(parts.encode_registration(&ids)),
            ));
        } else {
            if !attaching.is_empty() {
                // Its id names the identifiers it holds: a redelivery that attaches the same
                // ones writes nothing, and one that finds fewer to attach (some held by other
                // customers since, or marked shared) cannot be mistaken for it.
                let keys: Vec<&str> = attaching.iter().map(|(key, _)| key.as_str()).collect();
                let attach = CustomerEvent::IdentifierAttached(IdentifierAttachedV2 {
                    customer_id: customer_id.clone(),
                    identifiers: attaching.iter().map(|(_, id)| (*id).clone()).collect(),
                    provenance: Some(provenance.clone()),
                });
                customer_events.push((attach, keyed_event_id(&inbound_id, "attach", &keys.join("\n")), None));
            }
            let activity = match whole {
                true => parts.to_activity(),
                false => ActivityRecordedV1 {
                    customer_id: customer_id.clone(),
                    ..Default::default()
                },
            };
            customer_events.push((
                CustomerEvent::ActivityRecorded(activity),
                event_id(&inbound_id, "activity"),
                Some(parts.encode_activity()),
            ));
        }
        let expected = if creating && !redelivered_new {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::StreamExists
        };
        let stream = identity::customer_stream(&customer_id);
        let out = append_claiming(&self.store, noting, &stream, expected, customer_events, to_claim).await?;
        appended += out.appended;
        let created = creating && out.appended > 0 && !redelivered_new;

        // The new customer's own stream is complete (so a split can give it all back);
        // now the probabilistic decision.
        let mut resolved = customer_id.clone();
        match probabilistic {
            Probabilistic::Distinct => {}
            Probabilistic::Merge(c) => {
                let t = matching.merge_threshold;
                let decided_by = format!("live matching: p={:.4} ≥ merge threshold {t}", c.scored.probability);
                let evidence = probabilistic_evidence(&c, decided_by);
                appended += append_merge(
                    &self.store,
                    self.own(),
                    &c.customer_id,
                    &customer_id,
                    evidence,
                    &provenance,
                    &inbound_id,
                )
                .await?;
                resolved = c.customer_id.clone();
                absorbed.push(customer_id.clone());
            }
            Probabilistic::Review(c, reason) => {
                let decided_by = format!(
                    "live matching: p={:.4} ({reason}); a reviewer decides",
                    c.scored.probability
                );
                let fingerprint = c.fingerprint();
                let evidence = probabilistic_evidence(&c, decided_by);
                let (id, n) = self
                    .propose_review(&customer_id, &c.customer_id, evidence, fingerprint, reason, &provenance)
                    .await?;
                appended += n;
                review = review.or(id);
            }
        }

        // An existing customer's profile changed: does it now resemble another customer?
        // Two established customers are only ever merged by a person.
        let has_profile = subject.is_some_and(|s| {
            [&s.name, &s.address, &s.birth_date, &s.region]
                .iter()
                .any(|v| !v.trim().is_empty())
        });
        if !live.is_empty() && matching.enabled && has_profile {
            let state = self.matching_state().await?;
            let started = std::time::Instant::now();
            let best = state.best_candidate_over(&customer_id, &record);
            emit::scored(started.elapsed());
            drop(state);
            if let Some(c) = best {
                let decided_by = format!(
                    "live matching: p={:.4} between existing customers; a reviewer decides",
                    c.scored.probability
                );
                let fingerprint = c.fingerprint();
                let evidence = probabilistic_evidence(&c, decided_by);
                let (id, n) = self
                    .propose_review(
                        &customer_id,
                        &c.customer_id,
                        evidence,
                        fingerprint,
                        "existing_customers",
                        &provenance,
                    )
                    .await?;
                appended += n;
                review = review.or(id);
            }
        }

        Ok(Resolution {
            customer_id: resolved,
            created,
            absorbed,
            unusable_identifiers: unusable,
            appended,
            review,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends nobody catches up with are noted up to a bound, then read back instead.
    #[tokio::test]
    async fn noted_appends_stay_bounded_and_the_catch_up_still_reaches_the_tip() {
        let store: Arc<dyn EventStore> = Arc::new(store::embedded::EmbeddedStore::temporary().unwrap());
        let service = CustomerService::new(store.clone(), DomainConfig::default());
        for i in 0..OWN_APPENDS_MAX + 100 {
            let id = format!("c{i}");
            let registered = CustomerEvent::Registered(CustomerRegisteredV1 {
                customer_id: id.clone(),
                provenance: None,
            });
            let events = vec![(registered, event_id(&id, "register"))];
            let stream = identity::customer_stream(&id);
            append_typed(&store, service.own(), &stream, ExpectedRevision::NoStream, events)
                .await
                .unwrap();
            assert!(service.own.lock().len() <= OWN_APPENDS_MAX, "after {i} appends");
        }
        assert!(!service.own.lock().is_empty(), "appends are noted");
        let state = service.matching_state().await.unwrap();
        assert_eq!(state.position(), store.last_position());
    }

    /// A new customer's registration (its activity) is noted without its observation. When
    /// one of its identifiers was marked shared between its decision and the catch-up
    /// (another task's append landed first in the log), the catch-up reads the registration
    /// back and applies it as the log has it.
    #[tokio::test]
    async fn a_noted_registration_whose_identifier_was_marked_shared_since_is_read_back() {
        use proto::inbound::{Observation, RawIdentifier, SubjectData};
        let store: Arc<dyn EventStore> = Arc::new(store::embedded::EmbeddedStore::temporary().unwrap());
        let service = CustomerService::new(store.clone(), DomainConfig::default());
        let raw = RawIdentifier {
            kind: "phone".into(),
            value: "13800138000".into(),
            scope: String::new(),
        };
        let phone = identity::normalise(&raw, phonenumber::country::Id::CN).unwrap();
        let key = identity::key(&phone);
        let subject = SubjectData {
            identifiers: vec![raw],
            name: "张伟".into(),
            ..Default::default()
        };
        // The decision: worked out while the phone was not shared.
        let record = matcher::record_of(Some(&subject), &[&phone]);
        let (_, worked_out) = service.matching_state().await.unwrap().best_new_candidate(
            Some(&subject),
            &[(key.clone(), phone.clone())],
            &record,
            "c1",
        );
        assert!(worked_out.is_some());
        // Meanwhile another writer marks the phone shared: first in the log.
        let marked = CustomerEvent::MarkedShared(IdentifierMarkedSharedV1 {
            identifier: Some(phone.clone()),
            customers: 6,
            limit: 5,
            provenance: None,
        });
        let stream = identity::reservation_stream(&phone);
        append_typed(
            &store,
            None,
            &stream,
            ExpectedRevision::Any,
            vec![(marked, event_id("other", "shared"))],
        )
        .await
        .unwrap();
        // Then the registration, noted without its observation.
        let observation = Observation {
            subject: Some(subject),
            ..Default::default()
        };
        let data = crate::events::ActivityParts {
            customer_id: "c1",
            provenance: None,
            event_type: "form",
            observation: Some(&observation),
            observation_encoded: None,
            raw: b"",
            raw_content_type: "",
        }
        .encode_registration(&[&phone]);
        let slim = CustomerEvent::RegisteredWith(CustomerRegisteredV2 {
            customer_id: "c1".into(),
            ..Default::default()
        });
        let events = vec![(slim, event_id("e1", "activity"), Some(data))];
        let noting = service.own().map(|own| (own, worked_out));
        append_claiming(
            &store,
            noting,
            "customer-c1",
            ExpectedRevision::NoStream,
            events,
            Vec::new(),
        )
        .await
        .unwrap();

        let caught_up = service.matching_state().await.unwrap();
        let mut from_log = MatchState::new(&service.config().matching, phonenumber::country::Id::CN);
        for e in store.read_all(None, usize::MAX).await.unwrap() {
            from_log.apply(&e);
        }
        assert!(caught_up.is_shared(&key));
        assert_eq!(from_log.indexed(), 1, "the log's activity gives c1 a record (its name)");
        assert_eq!(
            caught_up.indexed(),
            from_log.indexed(),
            "the catch-up applied the activity as logged"
        );
        assert_eq!(caught_up.position(), store.last_position());
    }

    #[test]
    fn new_customer_ids_are_deterministic_v7_and_ordered_by_receipt() {
        let at = 1_780_000_000_123_456; // µs
        let id = new_customer_id("e1", at);
        assert_eq!(id, new_customer_id("e1", at), "a redelivery derives the same id");
        assert_ne!(id, new_customer_id("e2", at));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(parsed.get_timestamp().map(|t| t.to_unix().0), Some(1_780_000_000));
        // Later receipts sort after earlier ones, whatever the event ids.
        assert!(new_customer_id("zzz", at) < new_customer_id("aaa", at + 1_000));
    }
}
