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

/// A unique key an append takes for one of its events (see [`EventStore::append_claiming`]):
/// an identifier's reservation. A key is named like a stream and is held by one event at
/// most; [`EventStore::claimant`] tells which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The key, named like a stream (the domain's `identity-<hash>`).
    pub key: String,
    /// Index, in the append's events, of the event that takes the key.
    pub by: usize,
    /// What a store that keeps claims as streams of their own writes to stream `key`
    /// (the default [`EventStore::append_claiming`]; KurrentDB). The embedded store writes
    /// no marker: it points the key at event `by` in the same commit. `None` only for a
    /// store whose [`EventStore::claims_need_markers`] is false (the domain then skips
    /// building and encoding one per new identifier).
    pub marker: Option<NewEvent>,
}

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

    /// [`EventStore::append_then`] that also takes unique keys for some of its events.
    /// Fails with [`StoreError::WrongExpectedRevision`] naming the key (as a stream,
    /// expected: no stream) when an event other than the claiming one (or its marker) holds
    /// one; a redelivery that holds its keys already succeeds.
    ///
    /// By default (stores that cannot index a key in the append's commit) each claim is an
    /// append of its `marker` to stream `key` (expected: no stream), all before the events:
    /// a failure after them leaves keys taken by events that are not written yet, which the
    /// caller recognises on its retry by the marker's content. The embedded store does it
    /// atomically: the keys and the events are committed together or not at all, and the
    /// key's claimant is the claiming event itself (no marker, no stream of its own).
    async fn append_claiming(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        claims: Vec<Claim>,
        on_commit: Option<OnCommit>,
    ) -> Result<AppendOutcome, StoreError> {
        claim_with_markers(self, stream, expected, events, claims, on_commit).await
    }

    /// Whether [`EventStore::append_claiming`] writes each claim's marker (true by default:
    /// claims kept as streams of their own). A store that indexes claims in the append's
    /// commit says false, and its callers may leave [`Claim::marker`] out.
    fn claims_need_markers(&self) -> bool {
        true
    }

    /// The event that holds `key` ([`EventStore::append_claiming`]): the claiming event
    /// itself (embedded) or its marker, or the first event of a stream named `key` written
    /// by plain appends (how claims were kept before `append_claiming`). `None`: nobody
    /// holds it.
    async fn claimant(&self, key: &str) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(self.read_stream(key, 0, 1).await?.into_iter().next())
    }

    /// Reads up to `max` events of a stream from `from_revision` (inclusive). Empty if no stream.
    async fn read_stream(&self, stream: &str, from_revision: u64, max: usize)
    -> Result<Vec<RecordedEvent>, StoreError>;

    /// Revision of the stream's last event, `None` if the stream does not exist.
    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError>;

    /// The stream's last event, `None` if the stream does not exist. By default its revision
    /// and then that event; a store that can reads it in one lookup.
    async fn read_last(&self, stream: &str) -> Result<Option<RecordedEvent>, StoreError> {
        let Some(revision) = self.stream_revision(stream).await? else {
            return Ok(None);
        };
        Ok(self.read_stream(stream, revision, 1).await?.into_iter().next())
    }

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

/// The default [`EventStore::append_claiming`]: each claim's marker appended to stream `key`
/// (expected: no stream), all before the events. For stores without a key index, and for
/// wrappers that want this behaviour whatever the store under them does.
pub async fn claim_with_markers<S: EventStore + ?Sized>(
    store: &S,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    claims: Vec<Claim>,
    on_commit: Option<OnCommit>,
) -> Result<AppendOutcome, StoreError> {
    let mut markers = Vec::with_capacity(claims.len());
    for c in claims {
        let Some(marker) = c.marker else {
            return Err(StoreError::Config(format!(
                "append to {stream}: the claim of {} has no marker, and this store keeps each claim as a \
                 marker stream; nothing was written (build markers when claims_need_markers() is true)",
                c.key
            )));
        };
        markers.push((c.key, marker));
    }
    let marked = futures::future::try_join_all(
        markers
            .into_iter()
            .map(|(key, marker)| async move { store.append(&key, ExpectedRevision::NoStream, vec![marker]).await }),
    )
    .await?;
    let mut out = match on_commit {
        Some(on_commit) => store.append_then(stream, expected, events, on_commit).await?,
        None => store.append(stream, expected, events).await?,
    };
    out.appended += marked.iter().map(|m| m.appended).sum::<usize>();
    Ok(out)
}
