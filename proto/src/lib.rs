//! Event contracts (protobuf, compiled by prost at build time) and the one place
//! where inbound schemas are named, decoded and upcast.
//!
//! Nothing here does I/O. Channel adapters build these messages; the domain
//! decodes them by schema name from the bus.

/// Generated code, nested as the protobuf packages are (`crm.inbound.v1`, ...).
pub mod crm {
    pub mod inbound {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/crm.inbound.v1.rs"));
        }
    }
    pub mod customer {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/crm.customer.v1.rs"));
        }
    }
}

pub use crm::customer::v1 as customer;
pub use crm::inbound::v1 as inbound;

pub mod normalize;

use prost::Message;

/// Schema name of [`inbound::FormSubmittedV1`] as carried in bus headers.
pub const SCHEMA_FORM_SUBMITTED_V1: &str = "crm.inbound.v1.FormSubmittedV1";
/// Schema name of [`inbound::ChannelEventV1`].
pub const SCHEMA_CHANNEL_EVENT_V1: &str = "crm.inbound.v1.ChannelEventV1";

/// An inbound event decoded from the bus, whatever its schema version.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundEvent {
    FormSubmitted(inbound::FormSubmittedV1),
    Channel(inbound::ChannelEventV1),
}

/// Why a bus message could not be turned into an [`InboundEvent`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown schema {0:?}: this build knows {SCHEMA_FORM_SUBMITTED_V1} and {SCHEMA_CHANNEL_EVENT_V1}")]
    UnknownSchema(String),
    #[error("payload of schema {schema} does not decode: {source}")]
    Malformed {
        schema: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("event of schema {0} has no header or no event id")]
    MissingHeader(String),
}

/// The observation's bytes inside an encoded [`inbound::ChannelEventV1`] (its field 3), for
/// writers that embed the observation again: copying them is what encoding the decoded
/// observation gives when the payload was encoded by prost, as every channel adapter's is
/// (fields in order, no defaults written), and otherwise the same observation for any
/// decoder. `None` for other schemas, a payload without exactly one observation field (a
/// repeated one would be merged by a decoder), or bytes that do not parse.
pub fn observation_bytes<'a>(schema: &str, payload: &'a [u8]) -> Option<&'a [u8]> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    if schema != SCHEMA_CHANNEL_EVENT_V1 {
        return None;
    }
    let mut rest = payload;
    let mut found = None;
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        let len = match wire_type {
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut rest).ok()?).ok()?,
            WireType::Varint => {
                decode_varint(&mut rest).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        let value = rest.get(..len)?;
        rest = &rest[len..];
        if tag == 3 && wire_type == WireType::LengthDelimited {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    found
}

impl InboundEvent {
    /// Decodes a payload by its schema name. Old versions are upcast here, in one place.
    pub fn decode(schema: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        let malformed = |source| DecodeError::Malformed {
            schema: schema.to_string(),
            source,
        };
        let event = match schema {
            SCHEMA_FORM_SUBMITTED_V1 => {
                InboundEvent::FormSubmitted(inbound::FormSubmittedV1::decode(payload).map_err(malformed)?)
            }
            SCHEMA_CHANNEL_EVENT_V1 => {
                InboundEvent::Channel(inbound::ChannelEventV1::decode(payload).map_err(malformed)?)
            }
            other => return Err(DecodeError::UnknownSchema(other.to_string())),
        };
        match event.header() {
            Some(h) if !h.event_id.is_empty() => Ok(event),
            _ => Err(DecodeError::MissingHeader(schema.to_string())),
        }
    }

    /// The event as a [`inbound::ChannelEventV1`], if it is one.
    pub fn as_channel_event(&self) -> Option<&inbound::ChannelEventV1> {
        match self {
            InboundEvent::Channel(e) => Some(e),
            InboundEvent::FormSubmitted(_) => None,
        }
    }

    pub fn schema(&self) -> &'static str {
        match self {
            InboundEvent::FormSubmitted(_) => SCHEMA_FORM_SUBMITTED_V1,
            InboundEvent::Channel(_) => SCHEMA_CHANNEL_EVENT_V1,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            InboundEvent::FormSubmitted(e) => e.encode_to_vec(),
            InboundEvent::Channel(e) => e.encode_to_vec(),
        }
    }

    pub fn header(&self) -> Option<&inbound::InboundHeader> {
        match self {
            InboundEvent::FormSubmitted(e) => e.header.as_ref(),
            InboundEvent::Channel(e) => e.header.as_ref(),
        }
    }

    /// The event id (never empty after [`InboundEvent::decode`]).
    pub fn event_id(&self) -> &str {
        self.header().map(|h| h.event_id.as_str()).unwrap_or_default()
    }

    /// Channel-specific event type ("form_submitted" for forms).
    pub fn event_type(&self) -> &str {
        match self {
            InboundEvent::FormSubmitted(_) => "form_submitted",
            InboundEvent::Channel(e) => &e.event_type,
        }
    }

    pub fn observation(&self) -> Option<&inbound::Observation> {
        match self {
            InboundEvent::FormSubmitted(e) => e.observation.as_ref(),
            InboundEvent::Channel(e) => e.observation.as_ref(),
        }
    }

    /// Bus key: channel + channel-side subject, so one subject's events stay in order.
    pub fn bus_key(&self) -> String {
        let h = self.header();
        let channel = h.map(|h| h.channel.as_str()).unwrap_or_default();
        let instance = h.map(|h| h.channel_instance.as_str()).unwrap_or_default();
        let subject = self
            .observation()
            .and_then(|o| o.subject.as_ref())
            .and_then(|s| s.identifiers.first())
            .map(|i| i.value.as_str())
            .unwrap_or_else(|| self.event_id());
        [channel, "/", instance, "/", subject].concat()
    }
}

/// Current time in unix microseconds.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Namespace for every deterministic id the platform derives (UUIDv5).
pub const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f0c_2a1e_8d1b_4c55_9a53_2f4c_7a6b_e201);

/// A deterministic id derived from a name (UUIDv5 in the platform namespace). The same id
/// as `Uuid::new_v5`, hashed with the `sha1` crate, which uses the CPU's SHA instructions
/// where there are some (`uuid`'s portable SHA-1 was ~1.3% of a million-row import's CPU:
/// every customer event's id is derived).
pub fn derived_id(name: &str) -> uuid::Uuid {
    derived_id_of(&[name])
}

/// [`derived_id`] of the name the `parts` make one after the other, without building it
/// (the domain derives several ids per inbound event, each from its id and a role: the
/// `format!` of each name was ~1.5% of an import's domain CPU).
pub fn derived_id_of(parts: &[&str]) -> uuid::Uuid {
    use sha1::Digest;
    let mut hash = sha1::Sha1::new();
    hash.update(ID_NAMESPACE.as_bytes());
    for part in parts {
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_bytes_are_the_encoding_of_the_decoded_observation() {
        use inbound::*;
        let observation = Observation {
            subject: Some(SubjectData {
                identifiers: vec![RawIdentifier {
                    kind: "phone".into(),
                    value: "138 0013 8000".into(),
                    scope: String::new(),
                }],
                name: "张伟".into(),
                ..Default::default()
            }),
            interaction: Some(Interaction {
                kind: "import_row".into(),
                details: [("row".to_string(), "2".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let event = ChannelEventV1 {
            header: Some(InboundHeader {
                event_id: "e1".into(),
                raw: b"{}".to_vec(),
                recorded_at_us: 7,
                ..Default::default()
            }),
            event_type: "import_row".into(),
            observation: Some(observation.clone()),
        };
        let payload = event.encode_to_vec();
        let bytes = observation_bytes(SCHEMA_CHANNEL_EVENT_V1, &payload).unwrap();
        assert_eq!(bytes, observation.encode_to_vec().as_slice());
        // None where the observation is not one plain field.
        assert_eq!(observation_bytes(SCHEMA_FORM_SUBMITTED_V1, &payload), None);
        let without = ChannelEventV1 {
            observation: None,
            ..event.clone()
        };
        assert_eq!(
            observation_bytes(SCHEMA_CHANNEL_EVENT_V1, &without.encode_to_vec()),
            None
        );
        let mut twice = payload.clone();
        twice.extend_from_slice(&without.encode_to_vec());
        twice.extend_from_slice(&[0x1a, 0x00]);
        assert_eq!(observation_bytes(SCHEMA_CHANNEL_EVENT_V1, &twice), None);
        assert_eq!(
            observation_bytes(SCHEMA_CHANNEL_EVENT_V1, &payload[..payload.len() - 1]),
            None
        );
        // An empty observation is written as an empty field.
        let empty = ChannelEventV1 {
            observation: Some(Observation::default()),
            ..without
        };
        assert_eq!(
            observation_bytes(SCHEMA_CHANNEL_EVENT_V1, &empty.encode_to_vec()),
            Some(&[][..])
        );
    }

    #[test]
    fn derived_ids_are_the_uuid_v5_of_the_name() {
        for name in [
            "",
            "a",
            "customer/e1",
            "张伟/attach/phone::+8613800138000",
            &"x".repeat(200),
        ] {
            assert_eq!(
                derived_id(name),
                uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()),
                "{name}"
            );
        }
        assert_eq!(derived_id("e1/register").get_version_num(), 5);
        assert_eq!(derived_id_of(&["e1", "/", "register"]), derived_id("e1/register"));
        assert_eq!(derived_id_of(&[]), derived_id(""));
        assert_ne!(derived_id_of(&["e1", "/register"]), derived_id("e1/registe"));
    }

    #[test]
    fn decode_round_trips_and_rejects_unknown_schema() {
        let ev = InboundEvent::FormSubmitted(inbound::FormSubmittedV1 {
            header: Some(inbound::InboundHeader {
                event_id: "e1".into(),
                channel: "web-form".into(),
                ..Default::default()
            }),
            form_id: "contact".into(),
            ..Default::default()
        });
        let back = InboundEvent::decode(ev.schema(), &ev.encode()).unwrap();
        assert_eq!(back, ev);
        assert!(matches!(
            InboundEvent::decode("crm.inbound.v9.Nope", b""),
            Err(DecodeError::UnknownSchema(_))
        ));
        assert!(matches!(
            InboundEvent::decode(SCHEMA_FORM_SUBMITTED_V1, &[0xff, 0xff]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            InboundEvent::decode(SCHEMA_FORM_SUBMITTED_V1, b""),
            Err(DecodeError::MissingHeader(_))
        ));
    }
}
