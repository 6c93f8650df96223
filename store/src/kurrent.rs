//! The KurrentDB / EventStoreDB adapter: the scale-out [`EventStore`] backend.
//!
//! Client: the vendor's `kurrentdb` crate, pinned at `=1.2.0`. Its predecessor `eventstore`
//! (4.x) is end-of-line and pulls a second axum/tower generation; `kurrentdb` is the
//! maintained successor, speaks to EventStoreDB 20.10+ and KurrentDB servers alike, and ships
//! its generated gRPC code (no protoc). It uses prost 0.13 internally, so our data crosses the
//! boundary as plain bytes.
//!
//! Mapping (what the rest of the code can rely on):
//! - [`ExpectedRevision`] ↔ `StreamState` one to one; `WrongExpectedVersion` ↔
//!   [`StoreError::WrongExpectedRevision`] with the actual revision (`None` = no stream).
//! - Event ids are passed as given; `data` is the event payload (content type
//!   `application/octet-stream`), `metadata` travels as the event's custom metadata.
//! - Idempotency is ours, not the server's (its id check only covers a write cache): an append
//!   reads the stream's ids first, drops ids already there, and appends the rest expecting the
//!   revision it just read; if another writer got in between, it reads again (bounded). So
//!   appends cost one stream read (customer and identity streams are short), except a
//!   `NoStream` append, which is tried directly and only reads on conflict.
//! - [`GlobalPosition`] = the server's `$all` position (commit, prepare) unchanged. `read_all`
//!   and `subscribe_all` only return streams with one of the configured prefixes
//!   (default `customer-`, `identity-`), filtered on the server and checked again here.
//! - `subscribe_all` is a catch-up subscription from a stored position that resubscribes from
//!   the last delivered position after a failure, with exponential backoff (100 ms → 30 s);
//!   each failure is reported as one `Err` item, the stream goes on.
//! - `sync()` is a no-op: the server acknowledges a write only once it is durable.
//! - Claims ([`EventStore::append_claiming`]): the port's default. Each claim's marker is
//!   appended to its reservation stream (expected: no stream) before the events; the server
//!   has no key index to take them in one write.
//!
//! TLS: `kurrentdb` installs rustls' aws-lc-rs provider as the process default the first time
//! it connects. Any other rustls user in the process (reqwest, …) must not race it: call
//! [`install_tls_crypto_provider`] first thing in `main`.
//!
//! Not here: the conformance suite (`conformance`), the server itself (`deploy/eventstoredb/`).

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionFilter,
};

use crate::{AppendOutcome, EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

/// Stream prefixes this platform writes: customer streams and identity reservations.
pub const DEFAULT_STREAM_PREFIXES: [&str; 2] = ["customer-", "identity-"];
/// How long `connect` waits for the server to answer before reporting it unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an append re-reads the stream when another writer raced it.
const APPEND_ATTEMPTS: usize = 5;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Installs rustls' aws-lc-rs crypto provider as the process default, unless one is already
/// installed. Call it at the start of `main` when the process uses rustls anywhere besides this
/// adapter: with two rustls backends compiled in, `rustls::ClientConfig::builder()` panics
/// until a default is chosen.
pub fn install_tls_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The KurrentDB/EventStoreDB event store. Cheap to clone.
#[derive(Clone)]
pub struct KurrentStore {
    client: Client,
    prefixes: Vec<String>,
    /// Connection string without credentials, for messages.
    endpoint: String,
}

impl std::fmt::Debug for KurrentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentStore")
            .field("endpoint", &self.endpoint)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

impl KurrentStore {
    /// Connects with the default stream prefixes ([`DEFAULT_STREAM_PREFIXES`]), e.g.
    /// `kurrentdb://admin:changeit@localhost:2113?tls=false`. Checks that the server answers and
    /// accepts the credentials before returning.
    pub async fn connect(connection_string: &str) -> Result<Self, StoreError> {
        Self::connect_with_prefixes(connection_string, &DEFAULT_STREAM_PREFIXES).await
    }

    /// Like [`KurrentStore::connect`], reading and subscribing only to streams with these prefixes.
    pub async fn connect_with_prefixes(connection_string: &str, prefixes: &[&str]) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(connection_string, prefixes)?;
        // Reading the last event of $all proves the server answers and the user may read $all.
        let probe = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1);
        match tokio::time::timeout(CONNECT_TIMEOUT, store.client.read_all(&probe)).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "{} did not answer within {CONNECT_TIMEOUT:?}",
                store.endpoint
            ))),
            Ok(Err(e)) => Err(map_error(e, &format!("connecting to {}", store.endpoint))),
            Ok(Ok(mut stream)) => match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{} did not answer within {CONNECT_TIMEOUT:?}",
                    store.endpoint
                ))),
                Ok(Err(e)) => Err(map_error(e, &format!("reading $all on {}", store.endpoint))),
                Ok(Ok(_)) => Ok(store),
            },
        }
    }

    /// Builds the client without contacting the server: it connects on first use, so a
    /// process can start before the server is up. Only the connection string and prefixes
    /// are checked here. Must be called inside a tokio runtime.
    pub fn connect_lazy(connection_string: &str, prefixes: &[&str]) -> Result<Self, StoreError> {
        let endpoint = redact(connection_string);
        if prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty()) {
            return Err(StoreError::Config(format!(
                "stream prefixes {prefixes:?} for {endpoint}: give at least one non-empty prefix, e.g. \"customer-\""
            )));
        }
        let settings: ClientSettings =
            connection_string
                .parse()
                .map_err(|e: kurrentdb::ClientSettingsParseError| {
                    StoreError::Config(format!(
                        "connection string {endpoint} is not valid ({}); expected e.g. \
                 kurrentdb://admin:changeit@localhost:2113?tls=false",
                        scrub(e.message(), connection_string)
                    ))
                })?;
        install_tls_crypto_provider();
        let client = Client::new(settings).map_err(|e| {
            StoreError::Config(format!(
                "cannot create a client for {endpoint}: {e}; check the connection string"
            ))
        })?;
        Ok(Self {
            client,
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            endpoint,
        })
    }

    /// The stream prefixes this store reads and subscribes to.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    fn filter(&self) -> SubscriptionFilter {
        self.prefixes
            .iter()
            .fold(SubscriptionFilter::on_stream_name(), |f, p| f.add_prefix(p))
    }

    /// Every event id of a stream and its last revision (`None` when the stream does not exist).
    async fn stream_ids(
        &self,
        stream: &str,
    ) -> Result<(Option<u64>, std::collections::HashSet<uuid::Uuid>), StoreError> {
        let events = self.read_stream_raw(stream, 0, usize::MAX).await?;
        let head = events.last().map(|e| e.revision);
        Ok((head, events.into_iter().map(|e| e.event_id).collect()))
    }

    async fn read_stream_raw(&self, stream: &str, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let context = || format!("reading stream {stream} from revision {from} on {}", self.endpoint);
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from))
            .max_count(max);
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(map_error(e, &context())),
        };
        let mut out = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    if let Some(event) = resolved.event.as_ref() {
                        out.push(to_recorded(event));
                    }
                }
                Ok(None) => return Ok(out),
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(map_error(e, &context())),
            }
        }
    }

    async fn append_once(
        &self,
        stream: &str,
        state: StreamState,
        events: &[NewEvent],
    ) -> Result<kurrentdb::WriteResult, kurrentdb::Error> {
        let options = AppendToStreamOptions::default().stream_state(state);
        self.client
            .append_to_stream(stream, &options, events.iter().map(to_event_data).collect::<Vec<_>>())
            .await
    }
}

/// Our expectation as the server's stream state.
pub fn to_stream_state(expected: ExpectedRevision) -> StreamState {
    match expected {
        ExpectedRevision::Any => StreamState::Any,
        ExpectedRevision::NoStream => StreamState::NoStream,
        ExpectedRevision::StreamExists => StreamState::StreamExists,
        ExpectedRevision::Exact(n) => StreamState::StreamRevision(n),
    }
}

/// The server's stream state as our expectation.
pub fn from_stream_state(state: StreamState) -> ExpectedRevision {
    match state {
        StreamState::Any => ExpectedRevision::Any,
        StreamState::NoStream => ExpectedRevision::NoStream,
        StreamState::StreamExists => ExpectedRevision::StreamExists,
        StreamState::StreamRevision(n) => ExpectedRevision::Exact(n),
    }
}

/// The server's current revision as ours (`None` = no stream).
pub fn from_current_revision(current: CurrentRevision) -> Option<u64> {
    match current {
        CurrentRevision::Current(n) => Some(n),
        CurrentRevision::NoStream => None,
    }
}

/// The state to append with, given the revision just read: pins the stream to what we saw.
pub fn state_for_head(head: Option<u64>) -> StreamState {
    head.map_or(StreamState::NoStream, StreamState::StreamRevision)
}

pub fn to_position(p: GlobalPosition) -> Position {
    Position {
        commit: p.commit,
        prepare: p.prepare,
    }
}

pub fn from_position(p: Position) -> GlobalPosition {
    GlobalPosition {
        commit: p.commit,
        prepare: p.prepare,
    }
}

/// Where to start reading `$all` for "strictly after `after`" (reads are inclusive, so the
/// event at `after` itself is skipped by the caller).
pub fn read_start(after: Option<GlobalPosition>) -> StreamPosition<Position> {
    after.map_or(StreamPosition::Start, |p| StreamPosition::Position(to_position(p)))
}

/// Whether a stream is one of ours (server-side filter, checked again client-side).
pub fn is_ours(prefixes: &[String], stream: &str) -> bool {
    prefixes.iter().any(|p| stream.starts_with(p.as_str()))
}

/// The connection string without user name and password, safe for logs and errors.
pub fn redact(connection_string: &str) -> String {
    match (connection_string.find("://"), connection_string.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!(
                "{}://***@{}",
                &connection_string[..scheme_end],
                &connection_string[at + 1..]
            )
        }
        _ => connection_string.to_owned(),
    }
}

/// `message` with the credentials of `connection_string` blanked out (client messages may
/// quote the whole string).
pub fn scrub(message: &str, connection_string: &str) -> String {
    let userinfo = match (connection_string.find("://"), connection_string.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end + 3 => &connection_string[scheme_end + 3..at],
        _ => return message.to_owned(),
    };
    message.replace(userinfo, "***")
}

/// Maps a client error to ours; `context` says what we were doing (and against which server).
pub fn map_error(e: kurrentdb::Error, context: &str) -> StoreError {
    use kurrentdb::Error as K;
    use tonic::Code;
    match e {
        K::AccessDenied => StoreError::AccessDenied(format!("{context}: access denied")),
        K::WrongExpectedVersion { expected, current } => StoreError::Io(format!(
            "{context}: unexpected wrong-expected-version (expected {expected:?}, current {current:?})"
        )),
        K::ConnectionClosed | K::DeadlineExceeded | K::GrpcConnectionError(_) | K::NotLeaderException(_) => {
            StoreError::Unavailable(format!("{context}: {e}"))
        }
        K::Grpc { code, ref message } => match code {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::ResourceExhausted => {
                StoreError::Unavailable(format!("{context}: {message} ({code:?})"))
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                StoreError::AccessDenied(format!("{context}: {message} ({code:?})"))
            }
            _ => StoreError::Io(format!("{context}: {e}")),
        },
        K::ResourceDeleted => StoreError::Io(format!(
            "{context}: the stream was deleted (tombstoned) on the server; our streams are never deleted, \
             check who deletes streams"
        )),
        other => StoreError::Io(format!("{context}: {other}")),
    }
}

fn to_event_data(e: &NewEvent) -> EventData {
    EventData::binary(e.event_type.as_str(), Bytes::copy_from_slice(&e.data))
        .id(e.event_id)
        .metadata(Bytes::copy_from_slice(&e.metadata))
}

fn to_recorded(e: &kurrentdb::RecordedEvent) -> RecordedEvent {
    RecordedEvent {
        stream: e.stream_id().to_owned(),
        revision: e.revision,
        position: from_position(e.position),
        event_id: e.id,
        event_type: e.event_type.clone(),
        data: e.data.to_vec(),
        metadata: e.custom_metadata.to_vec(),
        recorded_at_us: e.created.timestamp_micros(),
    }
}

#[async_trait::async_trait]
impl EventStore for KurrentStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        events.retain(|e| seen.insert(e.event_id));
        let context = || format!("appending {} events to {stream} on {}", events.len(), self.endpoint);

        // Fast path: a new stream cannot hold any of the ids yet.
        if expected == ExpectedRevision::NoStream && !events.is_empty() {
            match self.append_once(stream, StreamState::NoStream, &events).await {
                Ok(w) => {
                    return Ok(AppendOutcome {
                        last_revision: w.next_expected_version,
                        appended: events.len(),
                        position: Some(from_position(w.position)),
                    });
                }
                Err(kurrentdb::Error::WrongExpectedVersion { .. }) => {} // exists: maybe a redelivery
                Err(e) => return Err(map_error(e, &context())),
            }
        }

        let mut last_seen = None;
        for _ in 0..APPEND_ATTEMPTS {
            let (head, existing) = self.stream_ids(stream).await?;
            let fresh: Vec<NewEvent> = events
                .iter()
                .filter(|e| !existing.contains(&e.event_id))
                .cloned()
                .collect();
            if let (true, Some(head)) = (fresh.is_empty(), head) {
                return Ok(AppendOutcome {
                    last_revision: head,
                    appended: 0,
                    position: None,
                });
            }
            expected.check(stream, head)?;
            if fresh.is_empty() {
                return Ok(AppendOutcome {
                    last_revision: 0,
                    appended: 0,
                    position: None,
                });
            }
            match self.append_once(stream, state_for_head(head), &fresh).await {
                Ok(w) => {
                    return Ok(AppendOutcome {
                        last_revision: w.next_expected_version,
                        appended: fresh.len(),
                        position: Some(from_position(w.position)),
                    });
                }
                // Someone appended between our read and our write: look again.
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                    last_seen = from_current_revision(current);
                }
                Err(e) => return Err(map_error(e, &context())),
            }
        }
        Err(StoreError::WrongExpectedRevision {
            stream: stream.to_owned(),
            expected,
            actual: last_seen,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_raw(stream, from_revision, max).await
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let context = || format!("reading the last revision of {stream} on {}", self.endpoint);
        let options = ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1);
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(map_error(e, &context())),
        };
        match read.next().await {
            Ok(Some(resolved)) => Ok(resolved.event.as_ref().map(|e| e.revision)),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(map_error(e, &context())),
        }
    }

    async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let context = || format!("reading $all after {after:?} on {}", self.endpoint);
        // Reads from a position are inclusive: ask for one more and drop the event at `after`.
        let count = if after.is_some() { max.saturating_add(1) } else { max };
        let options = ReadAllOptions::default()
            .forwards()
            .position(read_start(after))
            .filter(self.filter())
            .max_count(count);
        let mut read = self
            .client
            .read_all(&options)
            .await
            .map_err(|e| map_error(e, &context()))?;
        let mut out = Vec::with_capacity(max.min(4096));
        while out.len() < max {
            match read.next().await {
                Ok(Some(resolved)) => {
                    let Some(event) = resolved.event.as_ref() else { continue };
                    let position = from_position(event.position);
                    if after.is_some_and(|a| position <= a) || !is_ours(&self.prefixes, event.stream_id()) {
                        continue;
                    }
                    out.push(to_recorded(event));
                }
                Ok(None) => break,
                Err(e) => return Err(map_error(e, &context())),
            }
        }
        Ok(out)
    }

    fn subscribe_all(&self, after: Option<GlobalPosition>) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let state = Follow {
            store: self.clone(),
            after,
            subscription: None,
            backoff: BACKOFF_START,
        };
        Box::pin(futures::stream::unfold(state, Follow::next))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "kurrentdb"
    }
}

/// A catch-up subscription that survives connection failures.
struct Follow {
    store: KurrentStore,
    /// Last delivered position: where to resubscribe from.
    after: Option<GlobalPosition>,
    subscription: Option<kurrentdb::Subscription>,
    backoff: Duration,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<RecordedEvent, StoreError>, Self)> {
        loop {
            let subscription = match self.subscription.as_mut() {
                Some(s) => s,
                None => {
                    let options = SubscribeToAllOptions::default()
                        .position(read_start(self.after))
                        .filter(self.store.filter());
                    self.subscription
                        .insert(self.store.client.subscribe_to_all(&options).await)
                }
            };
            match subscription.next().await {
                Ok(resolved) => {
                    self.backoff = BACKOFF_START;
                    let Some(event) = resolved.event.as_ref() else { continue };
                    let position = from_position(event.position);
                    // Resubscribing may replay the last event: never deliver twice.
                    if self.after.is_some_and(|a| position <= a) || !is_ours(&self.store.prefixes, event.stream_id()) {
                        continue;
                    }
                    self.after = Some(position);
                    return Some((Ok(to_recorded(event)), self));
                }
                Err(e) => {
                    self.subscription = None;
                    let delay = self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    let error = map_error(
                        e,
                        &format!(
                            "subscription to $all after {:?} on {} (resubscribing in {delay:?})",
                            self.after, self.store.endpoint
                        ),
                    );
                    tracing::warn!(error = %error, "event store subscription dropped");
                    tokio::time::sleep(delay).await;
                    return Some((Err(error), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Vec<String> {
        DEFAULT_STREAM_PREFIXES.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn expected_revision_maps_to_stream_state_and_back() {
        for (ours, theirs) in [
            (ExpectedRevision::Any, StreamState::Any),
            (ExpectedRevision::NoStream, StreamState::NoStream),
            (ExpectedRevision::StreamExists, StreamState::StreamExists),
            (ExpectedRevision::Exact(0), StreamState::StreamRevision(0)),
            (
                ExpectedRevision::Exact(u64::MAX - 1),
                StreamState::StreamRevision(u64::MAX - 1),
            ),
        ] {
            assert_eq!(to_stream_state(ours), theirs);
            assert_eq!(from_stream_state(theirs), ours);
        }
    }

    #[test]
    fn current_revision_and_head_map_to_option() {
        assert_eq!(from_current_revision(CurrentRevision::NoStream), None);
        assert_eq!(from_current_revision(CurrentRevision::Current(7)), Some(7));
        assert_eq!(state_for_head(None), StreamState::NoStream);
        assert_eq!(state_for_head(Some(3)), StreamState::StreamRevision(3));
    }

    #[test]
    fn positions_convert_both_ways_and_start_where_asked() {
        let ours = GlobalPosition {
            commit: 1_234_567,
            prepare: 1_234_500,
        };
        assert_eq!(from_position(to_position(ours)), ours);
        assert_eq!(read_start(None), StreamPosition::Start);
        assert_eq!(
            read_start(Some(ours)),
            StreamPosition::Position(Position {
                commit: 1_234_567,
                prepare: 1_234_500
            })
        );
        // Ordering of server positions is commit first, then prepare: what "after" relies on.
        assert!(GlobalPosition { commit: 2, prepare: 1 } > GlobalPosition { commit: 1, prepare: 9 });
    }

    #[test]
    fn only_our_streams_pass_the_filter() {
        let p = prefixes();
        for ours in ["customer-0192a7c4", "identity-phone-5f3a", "customer-"] {
            assert!(is_ours(&p, ours), "{ours}");
        }
        for theirs in [
            "$all",
            "$et-FormSubmittedV1",
            "$$customer-1",
            "customers-1",
            "orders-1",
            "",
            "Customer-1",
        ] {
            assert!(!is_ours(&p, theirs), "{theirs}");
        }
        assert!(is_ours(&["tenant-a-".to_owned()], "tenant-a-customer-1"));
    }

    #[test]
    fn credentials_never_appear_in_messages() {
        assert_eq!(
            redact("kurrentdb://admin:changeit@db-1:2113,db-2:2113?tls=true"),
            "kurrentdb://***@db-1:2113,db-2:2113?tls=true"
        );
        assert_eq!(
            redact("esdb://localhost:2113?tls=false"),
            "esdb://localhost:2113?tls=false"
        );
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            scrub("bad string 'kurrentdb://u:p4ss@h'", "kurrentdb://u:p4ss@h"),
            "bad string 'kurrentdb://***@h'"
        );
        assert_eq!(
            scrub("no credentials here", "kurrentdb://h:2113"),
            "no credentials here"
        );
    }

    #[test]
    fn client_errors_map_to_what_the_operator_should_do() {
        use kurrentdb::Error as K;
        let ctx = "appending to customer-1 on kurrentdb://***@db:2113";
        type IsExpected = fn(&StoreError) -> bool;
        let cases: Vec<(K, IsExpected)> = vec![
            (K::AccessDenied, |e| matches!(e, StoreError::AccessDenied(_))),
            (K::ConnectionClosed, |e| matches!(e, StoreError::Unavailable(_))),
            (K::DeadlineExceeded, |e| matches!(e, StoreError::Unavailable(_))),
            (
                K::GrpcConnectionError(kurrentdb::GrpcConnectionError::MaxDiscoveryAttemptReached(10)),
                |e| matches!(e, StoreError::Unavailable(_)),
            ),
            (
                K::Grpc {
                    code: tonic::Code::Unavailable,
                    message: "down".into(),
                },
                |e| matches!(e, StoreError::Unavailable(_)),
            ),
            (
                K::Grpc {
                    code: tonic::Code::Unauthenticated,
                    message: "bad password".into(),
                },
                |e| matches!(e, StoreError::AccessDenied(_)),
            ),
            (
                K::Grpc {
                    code: tonic::Code::PermissionDenied,
                    message: "no".into(),
                },
                |e| matches!(e, StoreError::AccessDenied(_)),
            ),
            (
                K::Grpc {
                    code: tonic::Code::InvalidArgument,
                    message: "bad".into(),
                },
                |e| matches!(e, StoreError::Io(_)),
            ),
            (
                K::ResourceDeleted,
                |e| matches!(e, StoreError::Io(m) if m.contains("tombstoned")),
            ),
            (
                K::ServerError("boom".into()),
                |e| matches!(e, StoreError::Io(m) if m.contains("boom")),
            ),
        ];
        for (error, expected) in cases {
            let shown = format!("{error:?}");
            let mapped = map_error(error, ctx);
            assert!(expected(&mapped), "{shown} mapped to {mapped:?}");
            assert!(mapped.to_string().contains(ctx), "{mapped} lacks the context");
        }
    }

    #[tokio::test]
    async fn bad_configuration_is_reported_without_the_password() {
        match KurrentStore::connect_lazy("kurrentdb://admin:s3cret@", &DEFAULT_STREAM_PREFIXES) {
            Err(StoreError::Config(m)) => assert!(!m.contains("s3cret"), "{m}"),
            other => panic!("expected a Config error, got {other:?}"),
        }
        match KurrentStore::connect_lazy("kurrentdb://localhost:2113?tls=false", &[]) {
            Err(StoreError::Config(m)) => assert!(m.contains("prefix"), "{m}"),
            other => panic!("expected a Config error, got {other:?}"),
        }
        let store = KurrentStore::connect_lazy("kurrentdb://localhost:2113?tls=false", &["tenant-"])
            .expect("a valid connection string builds a client without contacting the server");
        assert_eq!(store.prefixes(), ["tenant-".to_owned()]);
        assert_eq!(store.kind(), "kurrentdb");
    }
}
