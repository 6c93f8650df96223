//! The domain: identity resolution and the customer event stream. Consumes
//! inbound events from the bus and appends customer events to the event store.
//! It owns no views (see `projections`) and no HTTP (see `ingest`, `query-api`).

pub mod commands;
pub mod events;
pub mod identity;
pub mod matcher;
pub mod service;
pub mod worker;

#[cfg(test)]
mod test;

pub use commands::{CommandError, IdentityCommands};
pub use events::CustomerEvent;
pub use matcher::MatchingConfig;
pub use service::{CustomerService, DomainConfig, DomainError, Resolution};
pub use worker::{DomainWorker, WorkerConfig};
