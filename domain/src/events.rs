//! Customer events as stored (customer, reservation and review streams): the event
//! type is the protobuf message name.

use prost::Message;
use proto::customer::*;
use store::{NewEvent, RecordedEvent};

/// Type name of [`CustomerEvent::MergedInto`]: a stream ending with it is merged.
pub const MERGED_INTO: &str = "MergedIntoV1";

/// Type name of [`CustomerEvent::IdentifierAttached`] as written now.
pub const IDENTIFIER_ATTACHED: &str = "IdentifierAttachedV2";

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
    Registered(CustomerRegisteredV1),
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

impl CustomerEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            CustomerEvent::Registered(_) => "CustomerRegisteredV1",
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

    /// A store event with a deterministic id.
    pub fn to_new(&self, event_id: uuid::Uuid) -> NewEvent {
        NewEvent {
            event_id,
            event_type: self.type_name().to_string(),
            data: self.encode(),
            metadata: Vec::new(),
        }
    }
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
