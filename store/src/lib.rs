//! The `EventStore` port: append-only customer and identity streams with a
//! global order, optimistic concurrency and subscriptions.
//!
//! Implementations: [`embedded::EmbeddedStore`] (default, on redb) and
//! [`kurrent::KurrentStore`] (KurrentDB/EventStoreDB, for scale-out). Both must pass
//! [`conformance`].

use futures::stream::BoxStream;
use uuid::Uuid;

pub mod conformance;
pub mod embedded;
pub mod filter;
mod heads;
pub mod kurrent;
pub mod remote;

/// Position of an event in the global log (`$all`). Embedded: commit == prepare == sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct GlobalPosition {
    pub commit: u64,
    pub prepare: u64,
}

/// What the writer expects the stream to look like before appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    Any,
    NoStream,
    StreamExists,
    /// The revision (0-based index) of the stream's last event.
    Exact(u64),
}

impl ExpectedRevision {
    /// Checks a stream whose last revision is `actual` (`None`: no stream) against this expectation.
    pub fn check(self, stream: &str, actual: Option<u64>) -> Result<(), StoreError> {
        let ok = match self {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => actual.is_none(),
            ExpectedRevision::StreamExists => actual.is_some(),
            ExpectedRevision::Exact(n) => actual == Some(n),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: self,
                actual,
            })
        }
    }
}

/// An event to append. `event_id` is deterministic: appending an id already in
/// the stream is a no-op, which makes redelivery harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: String,
    /// 0-based index within the stream.
    pub revision: u64,
    pub position: GlobalPosition,
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Vec<u8>,
    /// When the store recorded it (unix micros).
    pub recorded_at_us: i64,
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Revision of the stream's last event after the append.
    pub last_revision: u64,
    /// How many events were new (0 when every id was already there).
    pub appended: usize,
    /// Global position of the last appended event, if any was appended.
    pub position: Option<GlobalPosition>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream}: expected {expected:?}, but its last revision is {actual:?}")]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    #[error("event store unavailable: {0}; check the server address and that it is running")]
    Unavailable(String),
    #[error("event store refused the credentials: {0}; check the user name and password in the connection string")]
    AccessDenied(String),
    #[error("event store i/o failed: {0}")]
    Io(String),
    #[error("event store data is corrupt: {0}")]
    Corrupt(String),
    #[error("event store configuration is invalid: {0}")]
    Config(String),
}

/// Told an append's outcome as soon as it is committed (see [`EventStore::append_then`]).
pub type OnCommit = Box<dyn FnOnce(&AppendOutcome) + Send>;

/// The event store port.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one stream atomically, checking `expected` first.
    /// Idempotent redelivery: when every event id is already in the stream the
    /// append succeeds with `appended == 0` whatever `expected` says; events whose
    /// id is already in the stream are never written twice.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError>;

    /// [`EventStore::append`], calling `on_commit` with the outcome of a successful append:
    /// where the store can (embedded), on its writer thread before `read_all` can see the
    /// events, so whoever follows the log learns an append's positions before meeting its
    /// events there; elsewhere when the append returns. Not called when the append fails.
    async fn append_then(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        on_commit: OnCommit,
    ) -> Result<AppendOutcome, StoreError> {
        let out = self.append(stream, expected, events).await?;
        on_commit(&out);
        Ok(out)
    }

    /// Reads up to `max` events of a stream from `from_revision` (inclusive). Empty if no stream.
    async fn read_stream(&self, stream: &str, from_revision: u64, max: usize)
    -> Result<Vec<RecordedEvent>, StoreError>;

    /// Revision of the stream's last event, `None` if the stream does not exist.
    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError>;

    /// Reads up to `max` events of our streams from the global log, strictly after `after`
    /// (from the start when `None`).
    async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Catch-up subscription over the global log, strictly after `after`, then live.
    /// Implementations reconnect by themselves; an item error is reported, not fatal.
    fn subscribe_all(&self, after: Option<GlobalPosition>) -> BoxStream<'static, Result<RecordedEvent, StoreError>>;

    /// Makes every acknowledged append durable (fsync). The domain calls it before it
    /// commits bus offsets. A no-op where each append is already durable.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Short name for logs and metrics ("embedded", "kurrentdb").
    fn kind(&self) -> &'static str;

    /// The last position known to be durable, for stores where an append is visible before
    /// `sync()` makes it durable (embedded). Readers in other processes must not see past it:
    /// a crash could lose those events and reuse their positions. `None`: every visible event
    /// is durable.
    fn durable_position(&self) -> Option<GlobalPosition> {
        None
    }

    /// The position of the last event appended in this process's view of the store, when
    /// knowing it costs nothing (embedded: the writer's tip). Lets a follower skip a read
    /// that would find nothing new. `None`: unknown, read to find out.
    fn last_position(&self) -> Option<GlobalPosition> {
        None
    }

    /// Where the log is numbered consecutively (embedded: a sequence), the position `offset`
    /// events from `from` (`None`: before the first event, so offset 1 is the first), or
    /// `None` when that is before the start. `None` always where positions have gaps
    /// (KurrentDB): a caller must then read the log to learn positions.
    fn position_at(&self, from: Option<GlobalPosition>, offset: i64) -> Option<GlobalPosition> {
        let _ = (from, offset);
        None
    }
}
