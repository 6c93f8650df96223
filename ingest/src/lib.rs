//! Channel adapters: HTTP webhooks, web forms and imports turn inbound payloads
//! into versioned protobuf events and publish them on the bus. Nothing here
//! decides identity or touches the event store.

pub mod channel;
pub mod channels;
pub mod http;
pub mod import;
pub mod quarantine;
