//! Projection workers: follow the event store and build the merged 360° customer
//! views (identifiers, fields with provenance, channels, first touch, timeline).
//! Views are disposable: `replay` rebuilds them from the log.

pub mod projector;
pub mod view;
pub mod worker;

pub use projector::{DecodedEvents, ProjectionError, Projector, Rebuild, ViewDigest, ViewStore};
pub use view::*;
