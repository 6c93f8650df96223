//! Identity resolution: decides which customer an inbound event belongs to and
//! appends the customer events. Deterministic and idempotent: event ids derive
//! from the inbound event id and the role of each output, so a redelivered
//! inbound event appends nothing new.
//!
//! Order of writes (each step is safe to repeat after a crash):
//! 1. a new customer's stream gets `CustomerRegisteredV1` first;
//! 2. merges: `CustomersMergedV1` in the survivor, then `MergedIntoV1` in the absorbed;
//! 3. unowned identifiers are claimed in their reservation streams (expected: no stream);
//! 4. the customer stream gets `IdentifierAttachedV1` for the claims this event made and
//!    `ActivityRecordedV1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::InboundEvent;
use proto::customer::*;
use store::{EventStore, ExpectedRevision, GlobalPosition, StoreError};

use crate::events::CustomerEvent;
use crate::identity::{self, IdentifierError};

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
            || matches!(self, DomainError::Contended(_))
    }
}

/// Domain settings.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Region for phone numbers without a country code.
    pub default_region: phonenumber::country::Id,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            default_region: phonenumber::country::Id::CN,
        }
    }
}

/// What the service decided for one inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub customer_id: String,
    /// The event created this customer.
    pub created: bool,
    /// Customers absorbed into `customer_id` because of this event.
    pub absorbed: Vec<String>,
    /// Identifiers the event carried that could not be used, with why.
    pub unusable_identifiers: Vec<String>,
    /// Customer events appended (0 for a redelivery).
    pub appended: usize,
}

/// The customer id a new customer created by `inbound_event_id` gets.
pub fn new_customer_id(inbound_event_id: &str) -> String {
    proto::derived_id(&format!("customer/{inbound_event_id}")).to_string()
}

fn event_id(inbound: &str, role: &str) -> uuid::Uuid {
    proto::derived_id(&format!("{inbound}/{role}"))
}

/// Who owns an identifier: the customer and the inbound event that claimed it.
struct Claim {
    customer: String,
    cause: String,
}

/// A live customer and where its stream began.
struct Live {
    id: String,
    first: GlobalPosition,
}

pub struct CustomerService {
    store: Arc<dyn EventStore>,
    config: DomainConfig,
}

impl CustomerService {
    pub fn new(store: Arc<dyn EventStore>, config: DomainConfig) -> Self {
        CustomerService { store, config }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    /// Resolves identity for one inbound event and appends the customer events.
    pub async fn handle(&self, event: &InboundEvent) -> Result<Resolution, DomainError> {
        for _ in 0..MAX_ATTEMPTS {
            match self.try_handle(event).await {
                Err(DomainError::Store(StoreError::WrongExpectedRevision { stream, .. })) => {
                    tracing::debug!(%stream, event_id = event.event_id(), "lost a concurrent write; deciding again");
                    metrics::counter!("domain_decision_retries_total").increment(1);
                }
                other => return other,
            }
        }
        Err(DomainError::Contended(event.event_id().to_string()))
    }

    async fn claim_of(&self, stream: &str) -> Result<Option<Claim>, DomainError> {
        let events = self.store.read_stream(stream, 0, 1).await?;
        let Some(first) = events.first() else { return Ok(None) };
        match CustomerEvent::from_recorded(first) {
            Ok(CustomerEvent::IdentifierClaimed(c)) => Ok(Some(Claim {
                customer: c.customer_id,
                cause: c.provenance.map(|p| p.inbound_event_id).unwrap_or_default(),
            })),
            Ok(_) => Ok(None),
            Err(source) => Err(DomainError::Corrupt {
                stream: stream.to_string(),
                source,
            }),
        }
    }

    /// Follows `MergedIntoV1` links to the live customer.
    async fn live_customer(&self, customer: &str, via: &str) -> Result<Live, DomainError> {
        let mut current = customer.to_string();
        for _ in 0..64 {
            let stream = identity::customer_stream(&current);
            let Some(rev) = self.store.stream_revision(&stream).await? else {
                return Err(DomainError::DanglingClaim {
                    stream: via.to_string(),
                    customer: current,
                });
            };
            let last = self.store.read_stream(&stream, rev, 1).await?;
            let next = match last.first().map(CustomerEvent::from_recorded) {
                Some(Ok(CustomerEvent::MergedInto(m))) => Some(m.survivor_id),
                Some(Err(source)) => return Err(DomainError::Corrupt { stream, source }),
                _ => None,
            };
            match next {
                Some(survivor) => current = survivor,
                None => {
                    let first = self.store.read_stream(&stream, 0, 1).await?;
                    let first = first.first().map(|e| e.position).unwrap_or_default();
                    return Ok(Live { id: current, first });
                }
            }
        }
        Err(DomainError::Contended(format!(
            "merge chain from {customer} is longer than 64"
        )))
    }

    async fn try_handle(&self, event: &InboundEvent) -> Result<Resolution, DomainError> {
        let inbound_id = event.event_id().to_string();
        let header = event.header().cloned().unwrap_or_default();
        let provenance = Provenance {
            inbound_event_id: inbound_id.clone(),
            channel: header.channel.clone(),
            channel_instance: header.channel_instance.clone(),
            source_ref: header.source_ref.clone(),
            occurred_at_us: header.occurred_at_us,
            recorded_at_us: header.recorded_at_us,
        };

        // Normalise; unusable identifiers are reported, never matched on.
        let mut identifiers: BTreeMap<String, Identifier> = BTreeMap::new();
        let mut unusable = Vec::new();
        let raws = event
            .observation()
            .and_then(|o| o.subject.as_ref())
            .map(|s| s.identifiers.as_slice())
            .unwrap_or_default();
        for raw in raws {
            match identity::normalise(raw, self.config.default_region) {
                Ok(id) => {
                    identifiers.entry(identity::key(&id)).or_insert(id);
                }
                Err(e @ IdentifierError::MissingScope { .. }) | Err(e @ IdentifierError::Value(_)) => {
                    unusable.push(format!("{}={:?}: {e}", raw.kind, raw.value))
                }
            }
        }

        // Who owns what.
        let mut claims: BTreeMap<String, Option<Claim>> = BTreeMap::new();
        let mut live: Vec<Live> = Vec::new();
        for (key, id) in &identifiers {
            let stream = identity::reservation_stream(id);
            let claim = self.claim_of(&stream).await?;
            if let Some(c) = &claim {
                let l = self.live_customer(&c.customer, &stream).await?;
                if !live.iter().any(|x| x.id == l.id) {
                    live.push(l);
                }
            }
            claims.insert(key.clone(), claim);
        }
        live.sort_by_key(|l| l.first);

        let mut appended = 0;
        let mut created = false;
        let customer_id = match live.first() {
            Some(l) => l.id.clone(),
            None => {
                let id = new_customer_id(&inbound_id);
                let registered = CustomerEvent::Registered(CustomerRegisteredV1 {
                    customer_id: id.clone(),
                    provenance: Some(provenance.clone()),
                });
                let out = self
                    .store
                    .append(
                        &identity::customer_stream(&id),
                        ExpectedRevision::NoStream,
                        vec![registered.to_new(event_id(&inbound_id, "register"))],
                    )
                    .await?;
                appended += out.appended;
                created = out.appended > 0;
                id
            }
        };

        // Several live customers share this event's identifiers: merge into the oldest.
        let mut absorbed = Vec::new();
        for other in live.iter().skip(1) {
            let shared: Vec<Identifier> = identifiers
                .iter()
                .filter(|(k, _)| claims.get(*k).and_then(|c| c.as_ref()).is_some())
                .map(|(_, id)| id.clone())
                .collect();
            let merged = CustomerEvent::Merged(CustomersMergedV1 {
                survivor_id: customer_id.clone(),
                absorbed_id: other.id.clone(),
                evidence: Some(MergeEvidence {
                    rule: "shared_identifier".into(),
                    identifiers: shared,
                    score: 1.0,
                    comparisons: Vec::new(),
                    decided_by: format!("inbound event {inbound_id} carried identifiers of both"),
                }),
                provenance: Some(provenance.clone()),
            });
            let out = self
                .store
                .append(
                    &identity::customer_stream(&customer_id),
                    ExpectedRevision::StreamExists,
                    vec![merged.to_new(event_id(&inbound_id, &format!("merge/{}", other.id)))],
                )
                .await?;
            appended += out.appended;
            let into = CustomerEvent::MergedInto(MergedIntoV1 {
                customer_id: other.id.clone(),
                survivor_id: customer_id.clone(),
                provenance: Some(provenance.clone()),
            });
            let out = self
                .store
                .append(
                    &identity::customer_stream(&other.id),
                    ExpectedRevision::StreamExists,
                    vec![into.to_new(event_id(&inbound_id, &format!("merged-into/{customer_id}")))],
                )
                .await?;
            appended += out.appended;
            metrics::counter!("domain_customers_merged_total").increment(1);
            absorbed.push(other.id.clone());
        }

        // Claim what nobody owns yet; attach what this event claimed (now or in an earlier attempt).
        let mut customer_events = Vec::new();
        for (key, id) in &identifiers {
            let ours = match &claims[key] {
                Some(c) => c.cause == inbound_id,
                None => {
                    let claim = CustomerEvent::IdentifierClaimed(IdentifierClaimedV1 {
                        identifier: Some(id.clone()),
                        customer_id: customer_id.clone(),
                        provenance: Some(provenance.clone()),
                    });
                    let out = self
                        .store
                        .append(
                            &identity::reservation_stream(id),
                            ExpectedRevision::NoStream,
                            vec![claim.to_new(event_id(&inbound_id, &format!("claim/{key}")))],
                        )
                        .await?;
                    appended += out.appended;
                    true
                }
            };
            if ours {
                let attach = CustomerEvent::IdentifierAttached(IdentifierAttachedV1 {
                    customer_id: customer_id.clone(),
                    identifier: Some(id.clone()),
                    provenance: Some(provenance.clone()),
                });
                customer_events.push(attach.to_new(event_id(&inbound_id, &format!("attach/{key}"))));
            }
        }
        let activity = CustomerEvent::ActivityRecorded(ActivityRecordedV1 {
            customer_id: customer_id.clone(),
            provenance: Some(provenance.clone()),
            event_type: event.event_type().to_string(),
            observation: event.observation().cloned(),
            raw: header.raw.clone(),
            raw_content_type: header.raw_content_type.clone(),
        });
        customer_events.push(activity.to_new(event_id(&inbound_id, "activity")));
        let out = self
            .store
            .append(
                &identity::customer_stream(&customer_id),
                ExpectedRevision::StreamExists,
                customer_events,
            )
            .await?;
        appended += out.appended;

        Ok(Resolution {
            customer_id,
            created,
            absorbed,
            unusable_identifiers: unusable,
            appended,
        })
    }
}
