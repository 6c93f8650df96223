//! The embedded event store on sled: the default backend for single-node deployments.
//!
//! Layout (one sled tree, `events`, key spaces told apart by their first byte):
//! - `L ‖ BE u64 sequence` → encoded record ([`record`]): the global log.
//!   Sequences start at 1 and are never reused, so `after: None` means "from the start";
//!   `GlobalPosition { commit: seq, prepare: seq }`.
//! - `H ‖ stream` → BE last revision ‖ (event id (16 bytes) ‖ BE sequence) of each of the
//!   stream's first 16 events: stream heads. Most streams are short (an identity
//!   reservation holds one or two events, most customers a handful), so most events need
//!   no key besides their log entry: one head write per append instead of two keys per event.
//! - `I ‖ stream ‖ 0xFF ‖ BE revision` → BE sequence: the stream index from revision 16 on.
//! - `E ‖ stream ‖ 0xFF ‖ event id (16 bytes)` → BE revision: ids of events from revision 16 on.
//! - `M ‖ "format"` → layout version ([`FORMAT`]); a data directory without it (or with
//!   another) is refused at open, with what to do.
//!
//! `0xFF` never occurs in UTF-8, so a stream's keys never interleave with a stream whose
//! name it prefixes.
//!
//! Appends go to one writer thread that commits them as one atomic sled *batch* per
//! *group*: every append waiting when the writer becomes free joins the group (group commit).
//! One tree and one batch (not a multi-tree transaction) because the single writer needs
//! no conflict detection, only atomicity: each append in a group is checked against the
//! tree plus the heads and ids written by the ones before it in the group, and a failing
//! one (wrong expected revision) writes nothing and does not affect the others.
//! Measured on this project's 2-core machine (`examples/throughput.rs`, release, 300-byte
//! events, 10k streams): 1 append in flight ≈ 20k appends/s acknowledged, 14k/s including
//! the final `sync()`; 64 in flight 35–43k appends/s (the earlier four-tree transaction
//! layout: 36k). End to end (`crm bench ingest`) the batch layout took sustained forms/s
//! from 2.2k to 3.0k. Throughput grows with appends in flight, so the domain keeps several.
//! Sequence numbers are assigned by that single writer and become visible in order, so a
//! reader of the log never sees a gap that fills in later. That is what lets
//! [`EventStore::subscribe_all`] follow the log without gaps or duplicates.
//!
//! An append whose future is dropped after it was queued may still be committed; callers
//! retry with the same event ids, which is harmless (the redelivery rule).
//!
//! Durability invariant: an acknowledged `append` is atomic and visible but *not yet
//! fsynced*. [`EventStore::sync`] (sled `flush_async`) makes every append acknowledged
//! before the call durable. Callers that acknowledge anything to the outside world (the
//! domain committing bus offsets) must call `sync()` first; a crash before `sync()` may
//! lose a suffix of recent appends, never a middle part, and never reuses a sequence that
//! was made durable. sled also flushes in the background every 500 ms, but with a write
//! backlog one `sync()` can take seconds: call it per batch of bus messages (or on a timer),
//! not per event.
//!
//! Not here: the KurrentDB adapter (`kurrent`), the port itself (`lib.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::BoxStream;
use sled::{IVec, Tree};
use tokio::sync::watch;

use crate::{AppendOutcome, EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

/// Separator between a stream name and the rest of an index key (never valid UTF-8).
const SEP: u8 = 0xFF;
/// How many events a live subscription reads from the log per batch.
const SUBSCRIPTION_BATCH: usize = 2048;
/// Default sled page cache of the embedded database (store and views together); config
/// `store.cache_mb`. sled's resident memory runs above it: a 100k-row import peaked at
/// 827 MiB RSS with 256 MiB, 550 MiB with 64 MiB (about as fast); web-form ingest sustains
/// 2.7k forms/s with 128 MiB, 3.2k with 256 MiB, 3.3k with 512 MiB.
pub const CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Most appends committed in one sled transaction.
const MAX_GROUP: usize = 256;

/// The embedded event store. Cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    events: Tree,
    /// Last committed sequence, bumped by the writer after each group so live subscribers
    /// wake up without polling.
    tip: watch::Receiver<u64>,
    /// Highest sequence known to be on disk: the tip as it was when the last `sync()` began
    /// (or at open). Readers in other processes are served only up to here.
    durable: std::sync::atomic::AtomicU64,
    /// Requests to the writer thread; `None` only while dropping.
    requests: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<JoinHandle<()>>,
}

/// First bytes of the key spaces in the `events` tree.
const LOG: u8 = b'L';
const INDEX: u8 = b'I';
const HEAD: u8 = b'H';
const EVENT_ID: u8 = b'E';
const META: u8 = b'M';
/// Ids and sequences of a stream's first events are kept in its head (two keys less per
/// event: most streams are short: an identity reservation holds one or two events).
const HEAD_IDS: u64 = 16;
/// Bytes per event in a stream head: event id + BE sequence.
const HEAD_ENTRY: usize = 16 + 8;
/// Version of this key layout, kept under [`format_key`].
const FORMAT: u64 = 2;

fn format_key() -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(b"format");
    k
}

fn log_key(sequence: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&sequence.to_be_bytes());
    k
}

fn head_key(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + stream.len());
    k.push(HEAD);
    k.extend_from_slice(stream.as_bytes());
    k
}

struct AppendRequest {
    stream: String,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    reply: tokio::sync::oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the queue, then wait for the writer so the database is closed (and its
        // file lock released) when the last handle is gone: a reopen right after works.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES)
    }

    /// Opens (or creates) the store in directory `path` with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled's default page cache is 1 GiB; the store and the views share this one.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot open the embedded event store at {}: {e}; check that the directory is writable and \
                 that no other process has it open",
                    path.display()
                ))
            })?;
        Self::from_db(db, path.to_path_buf())
    }

    /// A store in a fresh temporary directory, deleted when the last clone is dropped. For tests.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| StoreError::Io(format!("cannot create a temporary embedded event store: {e}")))?;
        Self::from_db(db, PathBuf::from("<temporary>"))
    }

    /// The store in an already open sled database (its tree is `events`). Views kept in other trees of the same database
    /// recover from a crash to the same prefix of operations as the log.
    pub fn from_db(db: sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let names = db.tree_names();
        if names.iter().any(|n| n.as_ref() == b"log") {
            return Err(StoreError::Config(format!(
                "{} holds an event store in the earlier four-tree layout (before the `events` tree), which this \
                 version cannot read and does not migrate: move that data directory aside and start with a fresh \
                 one (or keep using the crm binary that wrote it)",
                path.display()
            )));
        }
        let events = db
            .open_tree("events")
            .map_err(|e| StoreError::Io(format!("cannot open tree events in {}: {e}", path.display())))?;
        check_format(&events, &path)?;
        let last = match events
            .scan_prefix([LOG])
            .next_back()
            .transpose()
            .map_err(io("read the last log entry"))?
        {
            Some((key, _)) => decode_u64(&key[1..], "log key")?,
            None => 0,
        };
        let (tip_tx, tip) = watch::channel(last);
        let (requests, queue) = mpsc::channel();
        let writer = Writer {
            events: events.clone(),
            last_sequence: last,
            tip: tip_tx,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Io(format!("cannot start the embedded event store writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                events,
                tip,
                durable: std::sync::atomic::AtomicU64::new(last),
                requests: Some(requests),
                writer: Some(writer),
            }),
        })
    }

    /// The sled database holding the store.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Sequence of the last event in the global log (0 when empty).
    pub fn last_sequence(&self) -> u64 {
        *self.inner.tip.borrow()
    }
}

/// Refuses a tree written in another key layout; marks an empty one with this layout.
fn check_format(events: &Tree, path: &Path) -> Result<(), StoreError> {
    let found = events
        .get(format_key())
        .map_err(io("read the layout version"))?
        .map(|v| decode_u64(&v, "layout version"))
        .transpose()?;
    match found {
        Some(FORMAT) => Ok(()),
        None if events.is_empty() => {
            events
                .insert(format_key(), &FORMAT.to_be_bytes())
                .map_err(io("write the layout version"))?;
            Ok(())
        }
        other => Err(StoreError::Config(format!(
            "{} holds an event store in layout version {} but this version of crm reads layout {FORMAT} \
             (stream heads keep the positions of their first events) and does not migrate: move that data \
             directory aside and start with a fresh one, or rebuild it by importing its sources again \
             (or keep using the crm binary that wrote it)",
            path.display(),
            other.map_or_else(|| "1".to_string(), |v| v.to_string())
        ))),
    }
}

fn io(what: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |e| StoreError::Io(format!("embedded event store: cannot {what}: {e}"))
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} has {} bytes, expected 8", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn stream_key(space: u8, stream: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + stream.len() + suffix.len());
    key.push(space);
    key.extend_from_slice(stream.as_bytes());
    key.push(SEP);
    key.extend_from_slice(suffix);
    key
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The single writer: owns sequence assignment, commits groups of appends.
struct Writer {
    events: Tree,
    last_sequence: u64,
    tip: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<AppendRequest>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Ok(first) = queue.recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let results = self.commit_group(&mut group);
            for (request, result) in group.drain(..).zip(results) {
                // The caller may have gone away (cancelled future): nothing to tell.
                let _ = request.reply.send(result);
            }
        }
    }

    /// Commits every acceptable append of `group` in one transaction; one result per request.
    fn commit_group(&mut self, group: &mut [AppendRequest]) -> Vec<Result<AppendOutcome, StoreError>> {
        for request in group.iter_mut() {
            // Duplicate ids inside one batch: keep the first, like a redelivery would.
            let mut seen = std::collections::HashSet::with_capacity(request.events.len());
            request.events.retain(|e| seen.insert(e.event_id));
        }
        let recorded_at_us = now_us();
        let mut group_state = Group {
            tree: &self.events,
            batch: sled::Batch::default(),
            written: HashMap::new(),
            sequence: self.last_sequence + 1,
            buf: Vec::new(),
        };
        let mut results = Vec::with_capacity(group.len());
        for request in group.iter() {
            results.push(group_state.append(request, recorded_at_us));
        }
        let last_sequence = group_state.sequence - 1;
        if last_sequence == self.last_sequence {
            return results;
        }
        match self.events.apply_batch(group_state.batch) {
            Ok(()) => {
                self.last_sequence = last_sequence;
                self.tip.send_replace(last_sequence);
                results
            }
            Err(e) => group
                .iter()
                .map(|r| {
                    Err(StoreError::Io(format!(
                        "embedded event store: append to {} failed: {e}; nothing of it was written",
                        r.stream
                    )))
                })
                .collect(),
        }
    }
}

/// One group being built: the batch, and the heads and ids it writes (later appends of the
/// group must see them).
struct Group<'t> {
    tree: &'t Tree,
    batch: sled::Batch,
    /// Heads and event-id keys written by earlier appends of the group.
    written: HashMap<Vec<u8>, Vec<u8>>,
    sequence: u64,
    buf: Vec<u8>,
}

/// A stream head: its last revision, and the id and log sequence of each of its first
/// [`HEAD_IDS`] events (later events have `I` and `E` keys).
struct Head {
    revision: u64,
    /// [`HEAD_ENTRY`] bytes per event: id ‖ BE sequence.
    entries: Vec<u8>,
}

impl Head {
    fn decode(bytes: &[u8]) -> Result<Head, StoreError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(HEAD_ENTRY) {
            return Err(StoreError::Corrupt(format!(
                "a stream head has {} bytes, expected 8 + {HEAD_ENTRY} per event",
                bytes.len()
            )));
        }
        Ok(Head {
            revision: decode_u64(&bytes[..8], "stream head")?,
            entries: bytes[8..].to_vec(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.entries.len());
        v.extend_from_slice(&self.revision.to_be_bytes());
        v.extend_from_slice(&self.entries);
        v
    }

    fn push(&mut self, id: &uuid::Uuid, sequence: u64) {
        self.entries.extend_from_slice(id.as_bytes());
        self.entries.extend_from_slice(&sequence.to_be_bytes());
    }

    fn holds(&self, id: &uuid::Uuid) -> bool {
        self.entries.chunks_exact(HEAD_ENTRY).any(|c| &c[..16] == id.as_bytes())
    }

    /// Log sequences of the head's events from revision `from` on.
    fn sequences(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .chunks_exact(HEAD_ENTRY)
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&c[16..]);
                u64::from_be_bytes(a)
            })
    }
}

impl Group<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.written.get(key) {
            return Ok(Some(v.clone()));
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(key.as_slice(), value.as_slice());
        self.written.insert(key, value);
    }

    /// Whether `id` is already in the stream whose head is `head`.
    fn seen(&self, stream: &str, head: &Head, id: &uuid::Uuid) -> Result<bool, StoreError> {
        if head.holds(id) {
            return Ok(true);
        }
        if head.revision < HEAD_IDS {
            return Ok(false);
        }
        Ok(self.get(&stream_key(EVENT_ID, stream, id.as_bytes()))?.is_some())
    }

    /// One append. Checks happen before any write, so an `Err` means it wrote nothing.
    fn append(&mut self, request: &AppendRequest, recorded_at_us: i64) -> Result<AppendOutcome, StoreError> {
        let stream = request.stream.as_str();
        let head = self.get(&head_key(stream))?.map(|v| Head::decode(&v)).transpose()?;
        let mut fresh = Vec::with_capacity(request.events.len());
        for event in &request.events {
            // A stream without a head has no events, so no ids to look up (most appends
            // of the domain create a stream: a claim, a new customer).
            let seen = match &head {
                Some(h) => self.seen(stream, h, &event.event_id)?,
                None => false,
            };
            if !seen {
                fresh.push(event);
            }
        }
        let last = head.as_ref().map(|h| h.revision);
        if let (true, Some(last)) = (fresh.is_empty(), last) {
            // Pure redelivery: every id is already there, whatever `expected` says.
            return Ok(AppendOutcome {
                last_revision: last,
                appended: 0,
                position: None,
            });
        }
        request.expected.check(stream, last)?;
        if fresh.is_empty() {
            // Empty batch on a stream that does not exist: nothing to write, nothing to report.
            return Ok(AppendOutcome {
                last_revision: 0,
                appended: 0,
                position: None,
            });
        }
        let mut head = head.unwrap_or(Head {
            revision: 0,
            entries: Vec::new(),
        });
        let mut revision = last.map_or(0, |h| h + 1);
        for event in &fresh {
            self.buf.clear();
            record::encode(&mut self.buf, stream, revision, recorded_at_us, event);
            self.batch.insert(&log_key(self.sequence), self.buf.as_slice());
            if revision < HEAD_IDS {
                head.push(&event.event_id, self.sequence);
            } else {
                self.batch.insert(
                    stream_key(INDEX, stream, &revision.to_be_bytes()),
                    &self.sequence.to_be_bytes(),
                );
                self.put(
                    stream_key(EVENT_ID, stream, event.event_id.as_bytes()),
                    revision.to_be_bytes().to_vec(),
                );
            }
            revision += 1;
            self.sequence += 1;
        }
        head.revision = revision - 1;
        self.put(head_key(stream), head.encode());
        let last = self.sequence - 1;
        Ok(AppendOutcome {
            last_revision: head.revision,
            appended: fresh.len(),
            position: Some(GlobalPosition {
                commit: last,
                prepare: last,
            }),
        })
    }
}

impl Inner {
    fn read_log(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = after.map_or(0, |p| p.commit.saturating_add(1));
        let mut out = Vec::with_capacity(max.min(4096));
        for item in self.events.range(log_key(start)..=log_key(u64::MAX)).take(max) {
            let (key, value) = item.map_err(io("read the global log"))?;
            let sequence = decode_u64(&key[1..], "log key")?;
            out.push(record::decode(sequence, &value)?);
        }
        Ok(out)
    }

    fn read_stream_blocking(&self, stream: &str, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(head) = self.events.get(head_key(stream))? else {
            return Ok(Vec::new());
        };
        let head = Head::decode(&head)?;
        // The first events' sequences are in the head, later ones in the stream index.
        let mut sequences: Vec<u64> = head.sequences(from).take(max).collect();
        if sequences.len() < max && head.revision >= HEAD_IDS {
            let start = stream_key(INDEX, stream, &from.max(HEAD_IDS).to_be_bytes());
            let end = stream_key(INDEX, stream, &u64::MAX.to_be_bytes());
            for item in self.events.range(start..=end).take(max - sequences.len()) {
                let (_, seq) = item.map_err(io("read the stream index"))?;
                sequences.push(decode_u64(&seq, "stream index value")?);
            }
        }
        let mut out = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let value: IVec = self.events.get(log_key(sequence))?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stream {stream} points at log sequence {sequence}, which is missing"
                ))
            })?;
            out.push(record::decode(sequence, &value)?);
        }
        Ok(out)
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(format!("embedded event store: {e}"))
    }
}

#[async_trait::async_trait]
impl EventStore for SledStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let request = AppendRequest {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
        };
        let writer_gone =
            || StoreError::Io("embedded event store: the writer thread has stopped; restart the process".into());
        let requests = self.inner.requests.as_ref().ok_or_else(writer_gone)?;
        requests.send(request).map_err(|_| writer_gone())?;
        outcome.await.map_err(|_| writer_gone())?
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream_blocking(stream, from_revision, max)
    }

    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.events.get(head_key(stream))? {
            Some(v) => Ok(Some(Head::decode(&v)?.revision)),
            None => Ok(None),
        }
    }

    async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_log(after, max)
    }

    fn subscribe_all(&self, after: Option<GlobalPosition>) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let state = Subscription {
            inner: Arc::clone(&self.inner),
            tip: self.inner.tip.clone(),
            after,
            buffer: std::collections::VecDeque::new(),
            failed: false,
        };
        Box::pin(futures::stream::unfold(state, Subscription::next))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let tip = *self.inner.tip.borrow();
        // Not sled's `flush_async`: its pool task still holds the database for a moment
        // after the future resolves, so dropping the store right after a sync could leave
        // the directory locked and a reopen fail. A blocking task drops its clone first.
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io(format!("embedded event store: the flush task failed: {e}")))?
            .map_err(io("flush (fsync) the log"))?;
        self.inner.durable.fetch_max(tip, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn last_position(&self) -> Option<GlobalPosition> {
        let seq = *self.inner.tip.borrow();
        (seq > 0).then_some(GlobalPosition {
            commit: seq,
            prepare: seq,
        })
    }

    fn durable_position(&self) -> Option<GlobalPosition> {
        let seq = self.inner.durable.load(std::sync::atomic::Ordering::Acquire);
        Some(GlobalPosition {
            commit: seq,
            prepare: seq,
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// State of one catch-up-then-live subscription.
struct Subscription {
    inner: Arc<Inner>,
    tip: watch::Receiver<u64>,
    after: Option<GlobalPosition>,
    buffer: std::collections::VecDeque<RecordedEvent>,
    failed: bool,
}

impl Subscription {
    async fn next(mut self) -> Option<(Result<RecordedEvent, StoreError>, Self)> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = Some(event.position);
                return Some((Ok(event), self));
            }
            // Mark the current tip as seen *before* reading, so an append that lands after
            // the read still wakes us up.
            self.tip.borrow_and_update();
            match self.inner.read_log(self.after, SUBSCRIPTION_BATCH) {
                Ok(batch) if !batch.is_empty() => self.buffer.extend(batch),
                Ok(_) => {
                    // The sender lives in `inner`, which we hold, so this never errors.
                    if self.tip.changed().await.is_err() {
                        return None;
                    }
                }
                Err(e) => {
                    // A corrupt or unreadable log will not heal by retrying: report and end.
                    self.failed = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

/// Compact binary layout of one log record (no per-field tags, one pass to decode).
///
/// ```text
/// u8 version(=1) | u64 revision | i64 recorded_at_us | [u8;16] event_id
/// | u32 len stream | u32 len type | u32 len data | u32 len metadata | bytes...
/// ```
/// All integers big-endian.
pub(crate) mod record {
    use super::*;

    const VERSION: u8 = 1;
    const HEADER: usize = 1 + 8 + 8 + 16 + 4 * 4;

    pub(crate) fn encode(buf: &mut Vec<u8>, stream: &str, revision: u64, recorded_at_us: i64, event: &NewEvent) {
        let fields: [&[u8]; 4] = [
            stream.as_bytes(),
            event.event_type.as_bytes(),
            &event.data,
            &event.metadata,
        ];
        buf.reserve(HEADER + fields.iter().map(|f| f.len()).sum::<usize>());
        buf.push(VERSION);
        buf.extend_from_slice(&revision.to_be_bytes());
        buf.extend_from_slice(&recorded_at_us.to_be_bytes());
        buf.extend_from_slice(event.event_id.as_bytes());
        for f in fields {
            // Events are bounded far below 4 GiB by every producer; saturate defensively.
            buf.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
        }
        for f in fields {
            buf.extend_from_slice(f);
        }
    }

    pub(crate) fn decode(sequence: u64, bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("log record {sequence}: {why}"));
        if bytes.len() < HEADER {
            return Err(corrupt(&format!(
                "{} bytes, shorter than the {HEADER}-byte header",
                bytes.len()
            )));
        }
        if bytes[0] != VERSION {
            return Err(corrupt(&format!("unknown record version {}", bytes[0])));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            a
        };
        let revision = u64::from_be_bytes(u64_at(1));
        let recorded_at_us = i64::from_be_bytes(u64_at(9));
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[17..33]);
        let mut lens = [0usize; 4];
        for (k, len) in lens.iter_mut().enumerate() {
            let i = 33 + 4 * k;
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[i..i + 4]);
            *len = u32::from_be_bytes(a) as usize;
        }
        if HEADER + lens.iter().sum::<usize>() != bytes.len() {
            return Err(corrupt("field lengths do not add up to the record length"));
        }
        let mut at = HEADER;
        let mut take = |len: usize| {
            let s = &bytes[at..at + len];
            at += len;
            s
        };
        let stream = std::str::from_utf8(take(lens[0])).map_err(|_| corrupt("stream name is not UTF-8"))?;
        let event_type = std::str::from_utf8(take(lens[1])).map_err(|_| corrupt("event type is not UTF-8"))?;
        let (stream, event_type) = (stream.to_owned(), event_type.to_owned());
        let data = take(lens[2]).to_vec();
        let metadata = take(lens[3]).to_vec();
        Ok(RecordedEvent {
            stream,
            revision,
            position: GlobalPosition {
                commit: sequence,
                prepare: sequence,
            },
            event_id: uuid::Uuid::from_bytes(id),
            event_type,
            data,
            metadata,
            recorded_at_us,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_rejects_truncation() {
            let event = NewEvent {
                event_id: uuid::Uuid::from_u128(7),
                event_type: "FormSubmittedV1".into(),
                data: vec![1, 2, 3],
                metadata: b"m".to_vec(),
            };
            let mut buf = Vec::new();
            encode(&mut buf, "customer-1", 4, 99, &event);
            let rec = decode(12, &buf).expect("own encoding decodes");
            assert_eq!(
                (
                    rec.stream.as_str(),
                    rec.revision,
                    rec.position.commit,
                    rec.recorded_at_us
                ),
                ("customer-1", 4, 12, 99)
            );
            assert_eq!(
                (rec.event_id, rec.event_type, rec.data, rec.metadata),
                (event.event_id, event.event_type, event.data, event.metadata)
            );
            for cut in [0, 10, buf.len() - 1] {
                assert!(
                    matches!(decode(1, &buf[..cut]), Err(StoreError::Corrupt(_))),
                    "cut at {cut}"
                );
            }
        }
    }
}
