//! Customer events as stored (customer, reservation and review streams): the event
//! type is the protobuf message name.

use prost::Message;
use proto::customer::*;
use store::{NewEvent, RecordedEvent};

/// Type name of [`CustomerEvent::MergedInto`]: a stream ending with it is merged.
pub const MERGED_INTO: &str = "MergedIntoV1";

/// Type name of [`CustomerEvent::IdentifierAttached`] as written now.
pub const IDENTIFIER_ATTACHED: &str = "IdentifierAttachedV2";

/// Type name of [`CustomerEvent::RegisteredWith`].
pub const CUSTOMER_REGISTERED: &str = "CustomerRegisteredV2";

/// A V1 attachment (one identifier per event, written before V2) as the V2 it means.
fn upcast_attached(v1: IdentifierAttachedV1) -> IdentifierAttachedV2 {
    IdentifierAttachedV2 {
        customer_id: v1.customer_id,
        identifiers: v1.identifier.into_iter().collect(),
        provenance: v1.provenance,
    }
}

/// Every event the domain appends.
// Decoded one at a time and matched everywhere: boxing the activity would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CustomerEvent {
    /// Written before V2, followed by the attachment and activity of its inbound event.
    Registered(CustomerRegisteredV1),
    /// A new customer: registration, attachment and activity in one event (see
    /// [`CustomerEvent::into_parts`]).
    RegisteredWith(CustomerRegisteredV2),
    IdentifierClaimed(IdentifierClaimedV1),
    /// Written as V2; a V1 event (one identifier) is read as a V2 holding it.
    IdentifierAttached(IdentifierAttachedV2),
    ActivityRecorded(ActivityRecordedV1),
    Merged(CustomersMergedV1),
    MergedInto(MergedIntoV1),
    Split(CustomerSplitV1),
    Restored(CustomerRestoredV1),
    ReviewRequested(MatchReviewRequestedV1),
    ReviewDecided(MatchReviewDecidedV1),
    MarkedShared(IdentifierMarkedSharedV1),
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unknown customer event type {0:?}")]
    UnknownType(String),
    #[error("customer event {event_type} does not decode: {source}")]
    Malformed {
        event_type: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// Who a claiming event gives an identifier to: its customer and provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimHolder {
    pub customer_id: String,
    pub provenance: Option<Provenance>,
    /// Attached to the customer by the event itself (a registration or an attachment), not
    /// only claimed by a marker.
    pub attached: bool,
}

/// A `CustomerRegisteredV2` as far as a claim reads it (fields 1 and 2; its observation and
/// raw payload are skipped, not decoded).
#[derive(Clone, PartialEq, prost::Message)]
struct RegistrationHead {
    #[prost(string, tag = "1")]
    customer_id: String,
    #[prost(message, optional, tag = "2")]
    provenance: Option<Provenance>,
}

impl ClaimHolder {
    /// The holder of a claim made by a stored event of type `event_type`; `None` for events
    /// that claim nothing. A returning customer's identifiers are held by its registration,
    /// whose observation was most of decoding it (~2% of the domain's CPU in a 1M-row import).
    pub fn decode(event_type: &str, data: &[u8]) -> Result<Option<ClaimHolder>, EventDecodeError> {
        let holder = |customer_id, provenance, attached| {
            Some(ClaimHolder {
                customer_id,
                provenance,
                attached,
            })
        };
        if event_type == CUSTOMER_REGISTERED {
            let head = RegistrationHead::decode(data).map_err(|source| EventDecodeError::Malformed {
                event_type: event_type.to_string(),
                source,
            })?;
            return Ok(holder(head.customer_id, head.provenance, true));
        }
        Ok(match CustomerEvent::decode(event_type, data)? {
            CustomerEvent::IdentifierClaimed(c) => holder(c.customer_id, c.provenance, false),
            CustomerEvent::IdentifierAttached(a) => holder(a.customer_id, a.provenance, true),
            _ => None,
        })
    }
}

impl CustomerEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            CustomerEvent::Registered(_) => "CustomerRegisteredV1",
            CustomerEvent::RegisteredWith(_) => CUSTOMER_REGISTERED,
            CustomerEvent::IdentifierClaimed(_) => "IdentifierClaimedV1",
            CustomerEvent::IdentifierAttached(_) => IDENTIFIER_ATTACHED,
            CustomerEvent::ActivityRecorded(_) => "ActivityRecordedV1",
            CustomerEvent::Merged(_) => "CustomersMergedV1",
            CustomerEvent::MergedInto(_) => MERGED_INTO,
            CustomerEvent::Split(_) => "CustomerSplitV1",
            CustomerEvent::Restored(_) => "CustomerRestoredV1",
            CustomerEvent::ReviewRequested(_) => "MatchReviewRequestedV1",
            CustomerEvent::ReviewDecided(_) => "MatchReviewDecidedV1",
            CustomerEvent::MarkedShared(_) => "IdentifierMarkedSharedV1",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            CustomerEvent::Registered(e) => e.encode_to_vec(),
            CustomerEvent::RegisteredWith(e) => e.encode_to_vec(),
            CustomerEvent::IdentifierClaimed(e) => e.encode_to_vec(),
            CustomerEvent::IdentifierAttached(e) => e.encode_to_vec(),
            CustomerEvent::ActivityRecorded(e) => e.encode_to_vec(),
            CustomerEvent::Merged(e) => e.encode_to_vec(),
            CustomerEvent::MergedInto(e) => e.encode_to_vec(),
            CustomerEvent::Split(e) => e.encode_to_vec(),
            CustomerEvent::Restored(e) => e.encode_to_vec(),
            CustomerEvent::ReviewRequested(e) => e.encode_to_vec(),
            CustomerEvent::ReviewDecided(e) => e.encode_to_vec(),
            CustomerEvent::MarkedShared(e) => e.encode_to_vec(),
        }
    }

    pub fn decode(event_type: &str, data: &[u8]) -> Result<Self, EventDecodeError> {
        let m = |source| EventDecodeError::Malformed {
            event_type: event_type.to_string(),
            source,
        };
        Ok(match event_type {
            "CustomerRegisteredV1" => CustomerEvent::Registered(Message::decode(data).map_err(m)?),
            CUSTOMER_REGISTERED => CustomerEvent::RegisteredWith(Message::decode(data).map_err(m)?),
            "IdentifierClaimedV1" => CustomerEvent::IdentifierClaimed(Message::decode(data).map_err(m)?),
            IDENTIFIER_ATTACHED => CustomerEvent::IdentifierAttached(Message::decode(data).map_err(m)?),
            "IdentifierAttachedV1" => {
                CustomerEvent::IdentifierAttached(upcast_attached(Message::decode(data).map_err(m)?))
            }
            "ActivityRecordedV1" => CustomerEvent::ActivityRecorded(Message::decode(data).map_err(m)?),
            "CustomersMergedV1" => CustomerEvent::Merged(Message::decode(data).map_err(m)?),
            MERGED_INTO => CustomerEvent::MergedInto(Message::decode(data).map_err(m)?),
            "CustomerSplitV1" => CustomerEvent::Split(Message::decode(data).map_err(m)?),
            "CustomerRestoredV1" => CustomerEvent::Restored(Message::decode(data).map_err(m)?),
            "MatchReviewRequestedV1" => CustomerEvent::ReviewRequested(Message::decode(data).map_err(m)?),
            "MatchReviewDecidedV1" => CustomerEvent::ReviewDecided(Message::decode(data).map_err(m)?),
            "IdentifierMarkedSharedV1" => CustomerEvent::MarkedShared(Message::decode(data).map_err(m)?),
            other => return Err(EventDecodeError::UnknownType(other.to_string())),
        })
    }

    pub fn from_recorded(e: &RecordedEvent) -> Result<Self, EventDecodeError> {
        Self::decode(&e.event_type, &e.data)
    }

    /// The events this one means, in order: a [`CustomerEvent::RegisteredWith`] is a
    /// registration, an attachment of its identifiers (none without identifiers) and its
    /// activity, as written before V2; any other event is itself. Readers that follow a
    /// customer's facts (views, the split command) read events as their parts.
    pub fn into_parts(self) -> Vec<CustomerEvent> {
        let CustomerEvent::RegisteredWith(r) = self else {
            return vec![self];
        };
        let mut parts = Vec::with_capacity(3);
        parts.push(CustomerEvent::Registered(CustomerRegisteredV1 {
            customer_id: r.customer_id.clone(),
            provenance: r.provenance.clone(),
        }));
        if !r.identifiers.is_empty() {
            parts.push(CustomerEvent::IdentifierAttached(IdentifierAttachedV2 {
                customer_id: r.customer_id.clone(),
                identifiers: r.identifiers,
                provenance: r.provenance.clone(),
            }));
        }
        parts.push(CustomerEvent::ActivityRecorded(ActivityRecordedV1 {
            customer_id: r.customer_id,
            provenance: r.provenance,
            event_type: r.event_type,
            observation: r.observation,
            raw: r.raw,
            raw_content_type: r.raw_content_type,
        }));
        parts
    }

    /// A store event with a deterministic id.
    pub fn to_new(&self, event_id: uuid::Uuid) -> NewEvent {
        self.to_new_encoded(event_id, self.encode())
    }

    /// [`CustomerEvent::to_new`] with `data` as its encoding (written from other parts than
    /// this value, see [`ActivityParts`]).
    pub fn to_new_encoded(&self, event_id: uuid::Uuid, data: Vec<u8>) -> NewEvent {
        NewEvent {
            event_id,
            event_type: self.type_name().to_string(),
            data,
            metadata: Vec::new(),
        }
    }
}

/// What an activity is written from: the inbound event's parts, borrowed. A new customer's
/// activity carries the inbound event's whole observation and raw payload, and copying them
/// into a message only to encode it was ~3% of the domain's CPU in a 1M-row import.
#[derive(Debug, Clone, Copy)]
pub struct ActivityParts<'a> {
    pub customer_id: &'a str,
    pub provenance: Option<&'a Provenance>,
    pub event_type: &'a str,
    pub observation: Option<&'a proto::inbound::Observation>,
    /// `observation` as the inbound event carried it encoded ([`proto::observation_bytes`]),
    /// written as it is instead of encoding `observation` again; `None`: encoded here.
    pub observation_encoded: Option<&'a [u8]>,
    pub raw: &'a [u8],
    pub raw_content_type: &'a str,
}

impl ActivityParts<'_> {
    /// The encoding of the `ActivityRecordedV1` of these parts: byte for byte the message's.
    pub fn encode_activity(&self) -> Vec<u8> {
        encode_parts(self, &[])
    }

    /// The encoding of the `CustomerRegisteredV2` of these parts (its fields 1-6 are an
    /// activity's) and the identifiers it claims: byte for byte the message's.
    pub fn encode_registration(&self, identifiers: &[&Identifier]) -> Vec<u8> {
        encode_parts(self, identifiers)
    }

    /// The `ActivityRecordedV1` of these parts, copied.
    pub fn to_activity(&self) -> ActivityRecordedV1 {
        ActivityRecordedV1 {
            customer_id: self.customer_id.to_string(),
            provenance: self.provenance.cloned(),
            event_type: self.event_type.to_string(),
            observation: self.observation.cloned(),
            raw: self.raw.to_vec(),
            raw_content_type: self.raw_content_type.to_string(),
        }
    }

    /// The `CustomerRegisteredV2` of these parts and `identifiers`, copied.
    pub fn to_registration(&self, identifiers: &[&Identifier]) -> CustomerRegisteredV2 {
        let a = self.to_activity();
        CustomerRegisteredV2 {
            customer_id: a.customer_id,
            provenance: a.provenance,
            event_type: a.event_type,
            observation: a.observation,
            raw: a.raw,
            raw_content_type: a.raw_content_type,
            identifiers: identifiers.iter().map(|&i| i.clone()).collect(),
        }
    }
}

fn encode_parts(parts: &ActivityParts<'_>, identifiers: &[&Identifier]) -> Vec<u8> {
    let ActivityParts {
        customer_id,
        provenance,
        event_type,
        observation,
        observation_encoded,
        raw,
        raw_content_type,
    } = *parts;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    // proto3: empty strings and bytes are not written, absent messages neither.
    fn put(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
        if !value.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(value.len() as u64, buf);
            buf.extend_from_slice(value);
        }
    }
    // A message's length, worked out once for the buffer's size and for its prefix (as
    // `prost::encoding::message::encode` would, which works it out again).
    fn put_message(tag: u32, message: Option<(&impl Message, usize)>, buf: &mut Vec<u8>) {
        if let Some((m, len)) = message {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
            m.encode_raw(buf);
        }
    }
    let delimited = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let provenance = provenance.map(|p| (p, p.encoded_len()));
    // The inbound event's own bytes of the observation, where it gave them.
    let observation_encoded = observation.and(observation_encoded);
    let observation = match observation_encoded {
        Some(_) => None,
        None => observation.map(|o| (o, o.encoded_len())),
    };
    let identifiers: Vec<(&Identifier, usize)> = identifiers.iter().map(|i| (*i, i.encoded_len())).collect();
    let len = [customer_id.len(), event_type.len(), raw.len(), raw_content_type.len()]
        .iter()
        .map(|&n| if n == 0 { 0 } else { delimited(n) })
        .sum::<usize>()
        + provenance.map_or(0, |(_, n)| delimited(n))
        + observation.map_or(0, |(_, n)| delimited(n))
        + observation_encoded.map_or(0, |b| delimited(b.len()))
        + identifiers.iter().map(|(_, n)| delimited(*n)).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    put(1, customer_id.as_bytes(), &mut buf);
    put_message(2, provenance, &mut buf);
    put(3, event_type.as_bytes(), &mut buf);
    put_message(4, observation, &mut buf);
    if let Some(bytes) = observation_encoded {
        // A present message is written even when empty.
        encode_key(4, WireType::LengthDelimited, &mut buf);
        encode_varint(bytes.len() as u64, &mut buf);
        buf.extend_from_slice(bytes);
    }
    put(5, raw, &mut buf);
    put(6, raw_content_type.as_bytes(), &mut buf);
    for &identifier in &identifiers {
        // Repeated: every element is written, an empty one too.
        put_message(7, Some(identifier), &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(kind: &str, normalized: &str) -> Identifier {
        Identifier {
            kind: kind.into(),
            normalized: normalized.into(),
            raw: normalized.into(),
            scope: String::new(),
        }
    }

    /// An activity written from borrowed parts is the message's own encoding, whichever
    /// parts are empty.
    #[test]
    fn an_activity_encoded_from_its_parts_is_the_message_encoding() {
        use proto::inbound::{Observation, RawIdentifier, SubjectData};
        let observation = Observation {
            subject: Some(SubjectData {
                identifiers: vec![RawIdentifier {
                    kind: "phone".into(),
                    value: "138 0013 8000".into(),
                    scope: String::new(),
                }],
                name: "张伟".into(),
                attributes: [("masked_phone".to_string(), "138****8000".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let provenance = Provenance {
            inbound_event_id: "e1".into(),
            channel: "import".into(),
            occurred_at_us: 1_780_000_000_000_000,
            ..Default::default()
        };
        let full = ActivityRecordedV1 {
            customer_id: "c1".into(),
            provenance: Some(provenance),
            event_type: "row".into(),
            observation: Some(observation),
            raw: "张伟,138 0013 8000\n".as_bytes().to_vec(),
            raw_content_type: "text/csv".into(),
        };
        let empty = ActivityRecordedV1::default();
        let long = ActivityRecordedV1 {
            raw: vec![7; 300],
            ..full.clone()
        };
        for a in [full, empty, long] {
            // The observation encoded here, or as the inbound event carried it.
            let carried = a.observation.as_ref().map(Message::encode_to_vec);
            for observation_encoded in [None, carried.as_deref()] {
                let parts = ActivityParts {
                    customer_id: &a.customer_id,
                    provenance: a.provenance.as_ref(),
                    event_type: &a.event_type,
                    observation: a.observation.as_ref(),
                    observation_encoded,
                    raw: &a.raw,
                    raw_content_type: &a.raw_content_type,
                };
                assert_eq!(parts.encode_activity(), a.encode_to_vec(), "{a:?}");
                assert_eq!(parts.to_activity(), a);
            }
        }
    }

    /// A claim read from a registration's first fields is the claim the whole event gives.
    #[test]
    fn a_claim_holder_read_from_a_registrations_head_is_the_whole_events() {
        use proto::inbound::{Observation, SubjectData};
        let registered = CustomerRegisteredV2 {
            customer_id: "c1".into(),
            provenance: Some(Provenance {
                inbound_event_id: "e1".into(),
                channel: "import".into(),
                ..Default::default()
            }),
            event_type: "row".into(),
            observation: Some(Observation {
                subject: Some(SubjectData {
                    name: "张伟".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            raw: vec![7; 300],
            raw_content_type: "text/csv".into(),
            identifiers: vec![identifier("phone", "+8613800138000")],
        };
        let holder = ClaimHolder::decode(CUSTOMER_REGISTERED, &registered.encode_to_vec()).unwrap();
        assert_eq!(
            holder,
            Some(ClaimHolder {
                customer_id: "c1".into(),
                provenance: registered.provenance.clone(),
                attached: true,
            })
        );
        let claimed = IdentifierClaimedV1 {
            identifier: Some(identifier("phone", "+8613800138000")),
            customer_id: "c2".into(),
            provenance: None,
        };
        let holder = ClaimHolder::decode("IdentifierClaimedV1", &claimed.encode_to_vec()).unwrap();
        assert_eq!(holder.map(|h| (h.customer_id, h.attached)), Some(("c2".into(), false)));
        assert_eq!(ClaimHolder::decode("CustomerRegisteredV1", &[]).unwrap(), None);
        assert!(ClaimHolder::decode(CUSTOMER_REGISTERED, &[0x0a, 0x05]).is_err());
    }

    /// A registration written from borrowed parts is the message's own encoding, with and
    /// without identifiers, and reads as a registration, an attachment and an activity.
    #[test]
    fn a_registration_encoded_from_its_parts_is_the_message_and_reads_as_three_events() {
        use proto::inbound::{Observation, SubjectData};
        let provenance = Provenance {
            inbound_event_id: "e1".into(),
            channel: "import".into(),
            ..Default::default()
        };
        let observation = Observation {
            subject: Some(SubjectData {
                name: "张伟".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let full = CustomerRegisteredV2 {
            customer_id: "c1".into(),
            provenance: Some(provenance.clone()),
            event_type: "row".into(),
            observation: Some(observation.clone()),
            raw: vec![7; 200],
            raw_content_type: "text/csv".into(),
            identifiers: vec![
                identifier("email", "zw@example.com"),
                identifier("phone", "+8613800138000"),
                Identifier::default(),
            ],
        };
        let bare = CustomerRegisteredV2 {
            identifiers: Vec::new(),
            ..full.clone()
        };
        let empty_observation = CustomerRegisteredV2 {
            observation: Some(Observation::default()),
            ..bare.clone()
        };
        for r in [
            full.clone(),
            bare.clone(),
            empty_observation,
            CustomerRegisteredV2::default(),
        ] {
            let ids: Vec<&Identifier> = r.identifiers.iter().collect();
            let carried = r.observation.as_ref().map(Message::encode_to_vec);
            for observation_encoded in [None, carried.as_deref()] {
                let from = ActivityParts {
                    customer_id: &r.customer_id,
                    provenance: r.provenance.as_ref(),
                    event_type: &r.event_type,
                    observation: r.observation.as_ref(),
                    observation_encoded,
                    raw: &r.raw,
                    raw_content_type: &r.raw_content_type,
                };
                let parts = from.encode_registration(&ids);
                assert_eq!(parts, r.encode_to_vec(), "{r:?}");
                assert_eq!(from.to_registration(&ids), r);
                assert_eq!(
                    CustomerEvent::decode(CUSTOMER_REGISTERED, &parts).unwrap(),
                    CustomerEvent::RegisteredWith(r.clone())
                );
            }
        }
        let activity = ActivityRecordedV1 {
            customer_id: "c1".into(),
            provenance: Some(provenance.clone()),
            event_type: "row".into(),
            observation: Some(observation),
            raw: vec![7; 200],
            raw_content_type: "text/csv".into(),
        };
        let registered = CustomerEvent::Registered(CustomerRegisteredV1 {
            customer_id: "c1".into(),
            provenance: Some(provenance.clone()),
        });
        assert_eq!(
            CustomerEvent::RegisteredWith(full.clone()).into_parts(),
            [
                registered.clone(),
                CustomerEvent::IdentifierAttached(IdentifierAttachedV2 {
                    customer_id: "c1".into(),
                    identifiers: full.identifiers.clone(),
                    provenance: Some(provenance),
                }),
                CustomerEvent::ActivityRecorded(activity.clone()),
            ]
        );
        // Without identifiers it attaches nothing; any other event is itself.
        assert_eq!(
            CustomerEvent::RegisteredWith(bare).into_parts(),
            [registered, CustomerEvent::ActivityRecorded(activity.clone())]
        );
        let alone = CustomerEvent::ActivityRecorded(activity);
        assert_eq!(alone.clone().into_parts(), [alone]);
    }

    /// Streams written before V2 hold one identifier per attachment: read as a V2 of one.
    #[test]
    fn a_v1_attachment_is_read_as_a_v2_holding_its_identifier() {
        let provenance = Provenance {
            inbound_event_id: "e1".into(),
            ..Default::default()
        };
        let v1 = IdentifierAttachedV1 {
            customer_id: "c1".into(),
            identifier: Some(identifier("email", "zw@example.com")),
            provenance: Some(provenance.clone()),
        };
        let read = CustomerEvent::decode("IdentifierAttachedV1", &v1.encode_to_vec()).unwrap();
        assert_eq!(
            read,
            CustomerEvent::IdentifierAttached(IdentifierAttachedV2 {
                customer_id: "c1".into(),
                identifiers: vec![identifier("email", "zw@example.com")],
                provenance: Some(provenance),
            })
        );
        // Written (and read back) as V2.
        let new = read.to_new(uuid::Uuid::nil());
        assert_eq!(new.event_type, "IdentifierAttachedV2");
        assert_eq!(CustomerEvent::decode(&new.event_type, &new.data).unwrap(), read);
        // A V1 without its identifier attaches nothing.
        let empty = IdentifierAttachedV1 {
            customer_id: "c1".into(),
            ..Default::default()
        };
        match CustomerEvent::decode("IdentifierAttachedV1", &empty.encode_to_vec()).unwrap() {
            CustomerEvent::IdentifierAttached(a) => assert!(a.identifiers.is_empty()),
            other => panic!("read as {other:?}"),
        }
    }
}
