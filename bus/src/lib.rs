//! The `Bus` port: carries inbound channel events from ingest to the domain.
//!
//! Two implementations: [`embedded::EmbeddedBus`] (a durable append-only log on
//! local disk, the default) and the Kafka bus (`kafka` module). Both pass the
//! same [`conformance`] suite. Nothing here knows what the payload means.

use std::collections::BTreeMap;
use std::time::Duration;

pub mod conformance;
pub mod embedded;
pub mod kafka;

/// Header carrying the inbound event id.
pub const HEADER_EVENT_ID: &str = "event-id";
/// Header carrying the payload schema name (e.g. `crm.inbound.v1.FormSubmittedV1`).
pub const HEADER_SCHEMA: &str = "schema";
/// Header carrying the schema version (the `V<n>` suffix as a number).
pub const HEADER_SCHEMA_VERSION: &str = "schema-version";
/// Header on a dead letter: why it was rejected.
pub const HEADER_DLQ_REASON: &str = "dlq-reason";

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BusRecord {
    /// Ordering key: records with the same key are delivered in publish order.
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

impl BusRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Where a record sits on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// What the bus answered to a publish: the record is durable at this position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub position: Position,
}

/// A record handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub position: Position,
    pub record: BusRecord,
}

/// A record that was set aside as poison, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Position in the dead-letter log/topic.
    pub position: Position,
    /// Where it was on the main bus.
    pub original: Option<Position>,
    pub reason: String,
    pub record: BusRecord,
}

/// Consumer lag of one partition (high watermark - committed offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: i64,
    pub high_watermark: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}; the event was not accepted, retry later")]
    Unavailable(String),
    #[error("bus i/o failed at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bus log is corrupt at {path} offset {offset}: {reason}")]
    Corrupt { path: String, offset: u64, reason: String },
    #[error("bus configuration is invalid: {0}")]
    Config(String),
    #[error("bus is shut down")]
    Closed,
    #[error("bus error: {0}")]
    Other(String),
}

/// The bus port. Publish is acknowledged only once the record is durable.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one record; returns once it is durable (fsync'd / acks=all).
    async fn publish(&self, record: BusRecord) -> Result<Ack, BusError>;

    /// Opens a consumer in a consumer group; it resumes from the group's committed offsets.
    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError>;

    /// Sets a poison record aside with its reason (dead-letter log/topic).
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError>;

    /// Lists dead letters, oldest first, at most `max`.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Short name for logs and metrics ("embedded", "kafka").
    fn kind(&self) -> &'static str;
}

/// A consumer in a group. Offsets are committed only when told to.
#[async_trait::async_trait]
pub trait BusConsumer: Send {
    /// Waits up to `wait` for records and returns at most `max` (possibly none).
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;

    /// Marks every given position (and all before it in its partition) as processed.
    /// Positions of partitions this consumer no longer owns are ignored.
    async fn commit(&mut self, processed: &[Position]) -> Result<(), BusError>;

    /// Lag per partition owned by this consumer.
    async fn lag(&self) -> Result<Vec<PartitionLag>, BusError>;
}

/// Highest offset per partition among `positions`: what a commit must store (+1).
pub fn commit_targets(positions: &[Position]) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for p in positions {
        let e = out.entry(p.partition).or_insert(p.offset);
        if p.offset > *e {
            *e = p.offset;
        }
    }
    out
}
