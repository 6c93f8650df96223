//! The embedded event store on redb: the default backend for single-node deployments.
//!
//! Layout: one redb database file, `events.redb`, in the store directory, with these tables:
//! - `log`: sequence (u64) → encoded record ([`record`]): the global log.
//!   Sequences start at 1 and are never reused, so `after: None` means "from the start";
//!   `GlobalPosition { commit: seq, prepare: seq }`.
//! - stream heads: stream → BE last revision ‖ (event id (16 bytes) ‖ BE sequence) of each
//!   of the stream's first 16 events. Most streams are short (an identity reservation holds
//!   one or two events, most customers a handful), so most events need no key besides their
//!   log entry. Heads are kept as a small merge tree ([`crate::heads`]): recent ones in
//!   memory (rebuilt from the log at open), the rest in immutable runs `heads`, `heads-<n>`
//!   listed in table `runs`.
//! - `index`: stream ‖ 0xFF ‖ BE revision → sequence: the stream index from revision 16 on.
//! - `ids`: stream ‖ 0xFF ‖ event id (16 bytes) → revision: ids of events from revision 16 on.
//! - `meta`: `"format"` → layout version ([`FORMAT`]; a file in layout 3, whose `heads`
//!   table becomes the base run, is upgraded in place; any other is refused at open, with
//!   what to do), `"heads_flushed"` → the log sequence the runs cover, `"next_run"`. A
//!   directory still holding the sled store of earlier versions is refused the same way.
//!
//! `0xFF` never occurs in UTF-8, so a stream's keys never interleave with a stream whose
//! name it prefixes.
//!
//! Streams that do not exist are answered from memory: each run of heads has a Bloom filter
//! ([`crate::filter::KeyFilter`]), so "no such stream" costs no B-tree lookup. Most reads of
//! the domain ask for streams that do not exist yet (is this identifier claimed? does this
//! new customer's stream exist?).
//!
//! Appends go to one writer thread that commits them as one redb write transaction per
//! *group*: every request waiting when the writer becomes free joins the group (group
//! commit). Each append is checked against the tables as the transaction sees them (so
//! against the appends before it in the group), and a failing one (wrong expected revision)
//! writes nothing and does not affect the others. Sequence numbers are assigned by that
//! single writer and become visible in order, so a reader of the log never sees a gap that
//! fills in later. That is what lets [`EventStore::subscribe_all`] follow the log without
//! gaps or duplicates.
//!
//! Why redb and not sled (the store's first engine): sled copies a whole leaf node on every
//! insert and splits leaves at 16 entries; measured with the store's own write pattern
//! (3 appends and 6 events per new customer, groups of 256), sled took 17.8 s and 379 MiB
//! for 200k customers, redb 8.3 s and 137 MiB, and sled's files were twice the size.
//!
//! An append whose future is dropped after it was queued may still be committed; callers
//! retry with the same event ids, which is harmless (the redelivery rule).
//!
//! Durability invariant: an acknowledged `append` is atomic and visible but *not yet
//! fsynced* (a redb commit without durability). [`EventStore::sync`] queues a durable
//! commit behind every append acknowledged before the call, so it makes all of them
//! durable. Callers that acknowledge anything to the outside world (the domain committing
//! bus offsets) must call `sync()` first; a crash before `sync()` may lose a suffix of
//! recent appends, never a middle part, and never reuses a sequence that was made durable.
//! The writer also commits durably on its own every [`BACKGROUND_SYNC`] while appends come
//! in (redb frees pages only at durable commits), so calling `sync()` per batch of bus
//! messages (not per event) is enough.
//!
//! Not here: the KurrentDB adapter (`kurrent`), the port itself (`lib.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::BoxStream;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use crate::heads::{HEAD_IDS, Head, HeadMap, Heads};
use crate::{AppendOutcome, EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

/// Separator between a stream name and the rest of an index key (never valid UTF-8).
const SEP: u8 = 0xFF;
/// How many events a live subscription reads from the log per batch.
const SUBSCRIPTION_BATCH: usize = 2048;
/// Default page cache of the embedded event store; config `store.cache_mb`. Small on
/// purpose: a read that misses it is a `pread` the kernel's page cache answers, and redb
/// keeps several times its cache size resident. Measured with the million-row import:
/// 8 MiB per file 167 s and 425 MiB peak, 16 MiB 175 s and 480 MiB, 128 MiB ~860 MiB.
pub const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Most requests committed in one write transaction.
const MAX_GROUP: usize = 256;
/// How long the writer waits for appends before it writes the next slice of a merge of
/// heads on its own.
const MERGE_IDLE: Duration = Duration::from_millis(2);
/// Longest time acknowledged appends stay without a durable commit when nobody calls `sync()`.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(500);
/// File of the store inside its directory.
pub const FILE: &str = "events.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const INDEX: TableDefinition<&[u8], u64> = TableDefinition::new("index");
const IDS: TableDefinition<&[u8], u64> = TableDefinition::new("ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of this layout, kept under `meta["format"]`. 1 and 2 were sled key layouts; 3
/// kept every head in one table (upgraded in place: it becomes the base run); 4 had no
/// claims in log records (upgraded in place: its records read as they are).
const FORMAT: u64 = 5;

pub use crate::heads::Tuning as HeadsTuning;

/// The embedded event store. Cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    heads: Arc<Heads>,
    /// Last committed sequence, bumped by the writer after each group so live subscribers
    /// wake up without polling.
    tip: watch::Receiver<u64>,
    /// Highest sequence known to be on disk (the tip at the last durable commit).
    durable: Arc<AtomicU64>,
    /// The newest log records, as written ([`Tail`]).
    tail: Arc<Tail>,
    /// Requests to the writer thread; `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// Bytes of the newest log records kept in memory ([`Tail`]).
const TAIL_BYTES: usize = 4 << 20;

/// The newest log records as the writer encoded them, in sequence order without gaps, up to
/// [`TAIL_BYTES`]: a reader of the log's end (the projector, a subscription) takes them from
/// here instead of reading back pages the writer has just written (and the small cache has
/// mostly let go of). Only committed records are in it: the writer adds a group's records
/// after its commit and before it moves the tip.
#[derive(Default)]
struct Tail {
    records: std::sync::RwLock<TailRecords>,
}

#[derive(Default)]
struct TailRecords {
    /// Sequence of the first record held.
    first: u64,
    records: std::collections::VecDeque<Box<[u8]>>,
    bytes: usize,
}

impl Tail {
    /// Adds the records of a committed group, `first` being the sequence of the first one.
    fn extend(&self, first: u64, group: Vec<Box<[u8]>>) {
        if group.is_empty() {
            return;
        }
        let mut tail = self.records.write().unwrap_or_else(|p| p.into_inner());
        if tail.records.is_empty() || tail.first + tail.records.len() as u64 != first {
            tail.records.clear();
            tail.bytes = 0;
            tail.first = first;
        }
        for record in group {
            tail.bytes += record.len();
            tail.records.push_back(record);
        }
        while tail.bytes > TAIL_BYTES && tail.records.len() > 1 {
            let dropped = tail.records.pop_front().map_or(0, |r| r.len());
            tail.bytes -= dropped;
            tail.first += 1;
        }
    }

    /// Records `start..=tip` (at most `max`) if the tail holds `start`; `None` when it does not.
    fn read(&self, start: u64, tip: u64, max: usize) -> Option<Result<Vec<RecordedEvent>, StoreError>> {
        let tail = self.records.read().unwrap_or_else(|p| p.into_inner());
        if start < tail.first || start >= tail.first + tail.records.len() as u64 {
            return None;
        }
        let skip = usize::try_from(start - tail.first).ok()?;
        let count = usize::try_from(tip.saturating_sub(start).saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(max);
        let out: Result<Vec<_>, _> = (start..)
            .zip(tail.records.iter().skip(skip).take(count))
            .map(|(sequence, record)| record::decode(sequence, record))
            .collect();
        Some(out)
    }
}

fn stream_key(stream: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + stream.len() + suffix.len());
    key.extend_from_slice(stream.as_bytes());
    key.push(SEP);
    key.extend_from_slice(suffix);
    key
}

enum Request {
    Append(AppendRequest),
    /// Make every append queued before this one durable.
    Sync(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
}

struct AppendRequest {
    stream: String,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    /// Keys this append takes: key → the id of the event (among `events`) that holds it.
    claims: Vec<(String, uuid::Uuid)>,
    reply: tokio::sync::oneshot::Sender<Result<AppendOutcome, StoreError>>,
    /// Called on the writer thread once the append is committed, before the tip moves.
    on_commit: Option<crate::OnCommit>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the queue, then wait for the writer (it commits durably on the way out) so
        // the database is closed (and its file lock released) when the last handle is gone.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Maps any redb error to a store I/O error saying what was being done.
fn io<E: Into<redb::Error>>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io(format!("embedded event store: cannot {what}: {}", e.into()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES)
    }

    /// Opens (or creates) the store in directory `path` with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_tuned(path, cache_bytes, HeadsTuning::default())
    }

    /// Opens (or creates) the store with the heads' merge tree sized by `tuning` (tests make
    /// it small to see flushes and merges with a few streams).
    pub fn open_tuned(path: &Path, cache_bytes: u64, tuning: HeadsTuning) -> Result<Self, StoreError> {
        refuse_sled_dir(path)?;
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Io(format!(
                "cannot create the event store directory {}: {e}",
                path.display()
            ))
        })?;
        let file = path.join(FILE);
        let repairing = file.display().to_string();
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .set_repair_callback(move |session| {
                tracing::warn!(
                    file = %repairing,
                    progress = format!("{:.0}%", session.progress() * 100.0),
                    "the embedded event store was not closed cleanly: checking and repairing it"
                );
            })
            .create(&file)
            .map_err(|e| {
                StoreError::Io(format!(
                    "cannot open the embedded event store at {}: {e}; check that the directory is writable and \
                     that no other process has it open",
                    file.display()
                ))
            })?;
        Self::from_db(db, file, tuning)
    }

    /// A store in memory, gone when the last clone is dropped. For tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Self::temporary_tuned(HeadsTuning::default())
    }

    /// A store in memory with the heads' merge tree sized by `tuning`. For tests.
    pub fn temporary_tuned(tuning: HeadsTuning) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Io(format!("cannot create a temporary embedded event store: {e}")))?;
        Self::from_db(db, PathBuf::from("<temporary>"), tuning)
    }

    fn from_db(db: Database, path: PathBuf, tuning: HeadsTuning) -> Result<Self, StoreError> {
        check_format(&db, &path)?;
        let last = {
            let read = db.begin_read().map_err(io("read the log"))?;
            let log = read.open_table(LOG).map_err(io("open the log"))?;
            log.last()
                .map_err(io("read the last log entry"))?
                .map_or(0, |(k, _)| k.value())
        };
        let heads = Arc::new(open_heads(&db, tuning)?);
        let db = Arc::new(db);
        let (tip_tx, tip) = watch::channel(last);
        let durable = Arc::new(AtomicU64::new(last));
        let tail = Arc::new(Tail::default());
        let (requests, queue) = mpsc::channel();
        let writer = Writer {
            db: Arc::clone(&db),
            heads: Arc::clone(&heads),
            last_sequence: last,
            tip: tip_tx,
            durable: Arc::clone(&durable),
            tail: Arc::clone(&tail),
            undurable_since: None,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Io(format!("cannot start the embedded event store writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                heads,
                tip,
                durable,
                tail,
                requests: Some(requests),
                writer: Some(writer),
            }),
        })
    }

    /// Sequence of the last event in the global log (0 when empty).
    pub fn last_sequence(&self) -> u64 {
        *self.inner.tip.borrow()
    }

    /// How many runs of stream heads the store has now (see [`crate::heads`]).
    pub fn head_runs(&self) -> usize {
        self.inner.heads.run_count()
    }

    /// Whether a flush of stream heads into a run is in progress (for tests).
    pub fn heads_flushing(&self) -> bool {
        self.inner.heads.flushing()
    }
}

/// Earlier versions kept the store in a sled database in the same directory.
fn refuse_sled_dir(path: &Path) -> Result<(), StoreError> {
    let sled_files = path.join("conf").exists() && path.join("db").exists();
    if sled_files && !path.join(FILE).exists() {
        return Err(StoreError::Config(format!(
            "{} holds an event store written by an earlier version of crm (on sled), which this version \
             (on redb) cannot read and does not migrate: move that data directory aside and start with a \
             fresh one, then import its sources again (or keep using the crm binary that wrote it)",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a file written in another layout; creates the tables of an empty one.
fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
    let write = db.begin_write().map_err(io("open the store for writing"))?;
    let found = {
        let mut meta = write.open_table(META).map_err(io("open the meta table"))?;
        let found = meta
            .get("format")
            .map_err(io("read the layout version"))?
            .map(|v| v.value());
        let log_empty = write
            .open_table(LOG)
            .map_err(io("open the log"))?
            .is_empty()
            .map_err(io("read the log"))?;
        if found.is_none() && log_empty {
            meta.insert("format", FORMAT).map_err(io("write the layout version"))?;
        }
        let found = found.or(log_empty.then_some(FORMAT));
        if found == Some(4) {
            // Layout 4's records are layout 5's records without claims.
            meta.insert("format", FORMAT).map_err(io("upgrade the layout"))?;
            tracing::info!(path = %path.display(), "event store upgraded from layout 4 to {FORMAT} in place");
        }
        if found == Some(3) {
            // Layout 3 kept every head in `heads`: it becomes the base run, covering the log.
            let last = write
                .open_table(LOG)
                .map_err(io("open the log"))?
                .last()
                .map_err(io("read the last log entry"))?
                .map_or(0, |(k, _)| k.value());
            meta.insert("heads_flushed", last).map_err(io("upgrade the layout"))?;
            meta.insert("format", FORMAT).map_err(io("upgrade the layout"))?;
            tracing::info!(path = %path.display(), "event store upgraded from layout 3 to {FORMAT} in place");
        }
        write
            .open_table(TableDefinition::<&str, &[u8]>::new(crate::heads::BASE))
            .map_err(io("open the stream heads"))?;
        write.open_table(INDEX).map_err(io("open the stream index"))?;
        write.open_table(IDS).map_err(io("open the event ids"))?;
        found.map(|f| if f == 3 || f == 4 { FORMAT } else { f })
    };
    if found != Some(FORMAT) {
        return Err(StoreError::Config(format!(
            "{} holds an event store in layout version {} but this version of crm reads layout {FORMAT} \
             and does not migrate: move that data directory aside and start with a fresh one, or rebuild \
             it by importing its sources again (or keep using the crm binary that wrote it)",
            path.display(),
            found.map_or_else(|| "unknown".to_string(), |v| v.to_string())
        )));
    }
    write.commit().map_err(io("create the tables"))?;
    Ok(())
}

/// The heads' runs, and their memtable read back from the log after the sequence they cover.
fn open_heads(db: &Database, tuning: HeadsTuning) -> Result<Heads, StoreError> {
    let write = db.begin_write().map_err(io("open the stream heads"))?;
    let covered = write
        .open_table(META)
        .map_err(io("open the meta table"))?
        .get("heads_flushed")
        .map_err(io("read the flushed heads"))?
        .map_or(0, |v| v.value());
    let heads = {
        let log = write.open_table(LOG).map_err(io("open the log"))?;
        Heads::open(&write, tuning, covered, &mut |apply| {
            for item in log.range(covered.saturating_add(1)..).map_err(io("read the log"))? {
                let (key, value) = item.map_err(io("read the log"))?;
                let (e, claims) = record::decode_with_claims(key.value(), value.value())?;
                apply(&e.stream, e.revision, &e.event_id, key.value());
                for claim in claims {
                    apply(&claim, 0, &e.event_id, key.value());
                }
            }
            Ok(())
        })?
    };
    write.commit().map_err(io("open the stream heads"))?;
    Ok(heads)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The single writer: owns sequence assignment, commits groups of appends.
struct Writer {
    db: Arc<Database>,
    heads: Arc<Heads>,
    last_sequence: u64,
    tip: watch::Sender<u64>,
    durable: Arc<AtomicU64>,
    tail: Arc<Tail>,
    /// When the oldest commit not yet durable was made.
    undurable_since: Option<Instant>,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Request>) {
        let mut appends = Vec::with_capacity(MAX_GROUP);
        let mut syncs = Vec::new();
        loop {
            let wait = self.undurable_since.map_or(Duration::from_secs(3600), |t| {
                BACKGROUND_SYNC.saturating_sub(t.elapsed())
            });
            // A merge or a flush of heads in progress goes on while no appends come.
            let wait = if self.heads.busy() { wait.min(MERGE_IDLE) } else { wait };
            let first = match queue.recv_timeout(wait) {
                Ok(first) => Some(first),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut next = first;
            while let Some(request) = next.take() {
                match request {
                    Request::Append(a) => appends.push(a),
                    Request::Sync(s) => syncs.push(s),
                }
                if appends.len() + syncs.len() < MAX_GROUP {
                    next = queue.try_recv().ok();
                }
            }
            let durable = !syncs.is_empty() || self.undurable_since.is_some_and(|t| t.elapsed() >= BACKGROUND_SYNC);
            let result = self.commit_group(&mut appends, durable);
            for request in appends.drain(..).zip(result.appends) {
                // The caller may have gone away (cancelled future): nothing to tell.
                let _ = request.0.reply.send(request.1);
            }
            for s in syncs.drain(..) {
                let _ = s.send(result.synced.clone().map_err(StoreError::Io));
            }
        }
        // Shutting down: make what was acknowledged durable.
        if self.undurable_since.is_some() {
            let _ = self.commit_group(&mut Vec::new(), true);
        }
    }

    /// Commits every acceptable append of `group` in one transaction, durably when `durable`.
    /// A group that writes nothing (redeliveries, wrong expected revisions) commits nothing
    /// unless a durable commit is due.
    fn commit_group(&mut self, group: &mut [AppendRequest], durable: bool) -> GroupResult {
        for request in group.iter_mut() {
            // Duplicate ids inside one batch: keep the first, like a redelivery would.
            let mut seen = std::collections::HashSet::with_capacity(request.events.len());
            request.events.retain(|e| seen.insert(e.event_id));
        }
        let failed = |e: StoreError| GroupResult {
            appends: group
                .iter()
                .map(|r| {
                    Err(StoreError::Io(format!(
                        "embedded event store: append to {} failed: {e}; nothing of it was written",
                        r.stream
                    )))
                })
                .collect(),
            synced: Err(e.to_string()),
        };
        let mut write = match self.db.begin_write() {
            Ok(w) => w,
            Err(e) => return failed(io("begin a write transaction")(e)),
        };
        if !durable && let Err(e) = write.set_durability(redb::Durability::None) {
            return failed(io("set the commit durability")(e));
        }
        let mut sequence = self.last_sequence + 1;
        let mut pending = HeadMap::default();
        let mut written: Vec<Box<[u8]>> = Vec::new();
        let appended = (|| {
            let mut tables = Tables {
                heads: &self.heads,
                write: &write,
                pending: &mut pending,
                written: &mut written,
                log: write.open_table(LOG)?,
                index: write.open_table(INDEX)?,
                ids: write.open_table(IDS)?,
            };
            let recorded_at_us = now_us();
            let mut buf = Vec::new();
            let mut results = Vec::with_capacity(group.len());
            for request in group.iter() {
                results.push(tables.append(request, recorded_at_us, &mut sequence, &mut buf)?);
            }
            Ok::<_, redb::Error>(results)
        })();
        let results = match appended {
            Ok(r) => r,
            Err(e) => {
                let _ = write.abort();
                return failed(io("write the appends")(e));
            }
        };
        // The heads: a slice of the flush of a frozen memtable and of a merge, if they run.
        let merging = self.heads.merging();
        let maintained = (|| {
            let mut meta = write.open_table(META).map_err(io("open the meta table"))?;
            let flushed = self.heads.flush_step(&write, &mut meta)?;
            if !merging {
                self.heads.plan_merge(&mut meta)?;
            }
            drop(meta);
            let merged = self.heads.merge_step(&write)?;
            Ok::<_, StoreError>((flushed, merged))
        })();
        let (flushed, merged) = match maintained {
            Ok(m) => m,
            Err(e) => {
                let _ = write.abort();
                self.heads.abandon_merge();
                self.heads.restart_flush();
                return failed(e);
            }
        };
        let heads_work = flushed || self.heads.busy();
        if sequence == self.last_sequence + 1 && !heads_work && (!durable || self.undurable_since.is_none()) {
            let _ = write.abort();
            tell_committed(group, &results);
            return GroupResult {
                appends: results,
                synced: Ok(()),
            };
        }
        {
            // Readers begin their snapshots under the read lock: while the runs change, they
            // wait for the commit, so their runs and snapshot agree.
            let mut state = (flushed || merged).then(|| self.heads.write_state());
            if let Err(e) = write.commit() {
                drop(state);
                self.heads.abandon_merge();
                self.heads.restart_flush();
                return failed(io("commit the appends")(e));
            }
            let state = state.get_or_insert_with(|| self.heads.write_state());
            state.memtable.extend(pending);
            if flushed {
                self.heads.finish_flush(state);
            }
            if merged {
                self.heads.finish_merge(state);
            }
            // A full memtable is frozen here, after the commit, and written into a run by
            // the next groups' slices.
            if self.heads.flush_due(state, sequence - 1) {
                self.heads.freeze(state, sequence - 1);
            }
        }
        self.tail.extend(self.last_sequence + 1, written);
        self.last_sequence = sequence - 1;
        tell_committed(group, &results);
        self.tip.send_replace(self.last_sequence);
        if durable {
            self.undurable_since = None;
            self.durable.fetch_max(self.last_sequence, Ordering::AcqRel);
        } else {
            self.undurable_since.get_or_insert_with(Instant::now);
        }
        GroupResult {
            appends: results,
            synced: Ok(()),
        }
    }
}

/// Calls the `on_commit` of each append that succeeded, before the tip moves past them.
fn tell_committed(group: &mut [AppendRequest], results: &[Result<AppendOutcome, StoreError>]) {
    for (request, result) in group.iter_mut().zip(results) {
        if let (Some(on_commit), Ok(out)) = (request.on_commit.take(), result) {
            on_commit(out);
        }
    }
}

struct GroupResult {
    appends: Vec<Result<AppendOutcome, StoreError>>,
    /// `Err` carries the message of the failure, for every sync request of the group.
    synced: Result<(), String>,
}

/// The tables of one write transaction.
struct Tables<'t> {
    heads: &'t Heads,
    write: &'t redb::WriteTransaction,
    /// Heads this group changed (into the memtable after the commit).
    pending: &'t mut HeadMap,
    /// The records this group wrote, in sequence order (into the [`Tail`] after the commit).
    written: &'t mut Vec<Box<[u8]>>,
    log: redb::Table<'t, u64, &'static [u8]>,
    index: redb::Table<'t, &'static [u8], u64>,
    ids: redb::Table<'t, &'static [u8], u64>,
}

impl Tables<'_> {
    /// One append. Checks happen before any write, so an inner `Err` means it wrote nothing;
    /// an outer `Err` is an I/O failure that fails the whole group.
    fn append(
        &mut self,
        request: &AppendRequest,
        recorded_at_us: i64,
        sequence: &mut u64,
        buf: &mut Vec<u8>,
    ) -> Result<Result<AppendOutcome, StoreError>, redb::Error> {
        let stream = request.stream.as_str();
        let head = match self.head(stream) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let mut fresh = Vec::with_capacity(request.events.len());
        for event in &request.events {
            // A stream without a head has no events, so no ids to look up (most appends
            // of the domain create a stream: a claim, a new customer).
            let seen = match &head {
                Some(h) => {
                    h.holds(&event.event_id)
                        || (h.revision >= HEAD_IDS
                            && self
                                .ids
                                .get(stream_key(stream, event.event_id.as_bytes()).as_slice())?
                                .is_some())
                }
                None => false,
            };
            if !seen {
                fresh.push(event);
            }
        }
        let last = head.as_ref().map(|h| h.revision);
        if let (true, Some(last)) = (fresh.is_empty(), last) {
            // Pure redelivery: every id is already there, whatever `expected` says.
            return Ok(Ok(AppendOutcome {
                last_revision: last,
                appended: 0,
                position: None,
            }));
        }
        if let Err(e) = request.expected.check(stream, last) {
            return Ok(Err(e));
        }
        // Each key is free, or held by its claiming event already (an earlier append).
        let mut taking = Vec::with_capacity(request.claims.len());
        for (key, id) in &request.claims {
            let held = match self.head(key) {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            match held {
                Some(h) if h.holds(id) => {}
                Some(h) => {
                    return Ok(Err(StoreError::WrongExpectedRevision {
                        stream: key.clone(),
                        expected: ExpectedRevision::NoStream,
                        actual: Some(h.revision),
                    }));
                }
                None => taking.push((key.as_str(), *id)),
            }
        }
        if fresh.is_empty() {
            // Empty batch on a stream that does not exist: nothing to write, nothing to report.
            return Ok(Ok(AppendOutcome {
                last_revision: 0,
                appended: 0,
                position: None,
            }));
        }
        // A key is taken by an event this append writes: its log record carries the key, so
        // an open reads the key back with the event. (An event already in the stream was
        // written without it; the domain never asks this: its claims and their events are
        // one append.)
        if let Some((key, id)) = taking.iter().find(|(_, id)| !fresh.iter().any(|e| e.event_id == *id)) {
            return Ok(Err(StoreError::Config(format!(
                "append to {stream}: the claim of {key} names event {id}, which is already in the stream; \
                 a key can only be taken by an event the append writes. Nothing was written"
            ))));
        }
        let mut head = head.unwrap_or_else(Head::empty);
        let mut keys: Vec<&str> = Vec::new();
        for (revision, event) in (last.map_or(0, |h| h + 1)..).zip(&fresh) {
            keys.clear();
            keys.extend(taking.iter().filter(|(_, id)| *id == event.event_id).map(|(k, _)| *k));
            buf.clear();
            record::encode(buf, stream, revision, recorded_at_us, event, &keys);
            self.log.insert(*sequence, buf.as_slice())?;
            self.written.push(buf.as_slice().into());
            for key in &keys {
                self.take(key, &event.event_id, *sequence);
            }
            head.record(revision, &event.event_id, *sequence);
            if revision >= HEAD_IDS {
                self.index
                    .insert(stream_key(stream, &revision.to_be_bytes()).as_slice(), *sequence)?;
                self.ids
                    .insert(stream_key(stream, event.event_id.as_bytes()).as_slice(), revision)?;
            }
            *sequence += 1;
        }
        let last_revision = head.revision;
        self.pending.insert(stream.to_string(), head);
        let last = *sequence - 1;
        Ok(Ok(AppendOutcome {
            last_revision,
            appended: fresh.len(),
            position: Some(GlobalPosition {
                commit: last,
                prepare: last,
            }),
        }))
    }

    /// The head of `stream` as this group sees it: changed by an earlier append of the group,
    /// or as committed. A stream no run's filter knows costs no page (most appends create
    /// one, most claims take a new key).
    fn head(&self, stream: &str) -> Result<Option<Head>, StoreError> {
        match self.pending.get(stream) {
            Some(h) => Ok(Some(h.clone())),
            None => self.heads.lookup_for_write(self.write, stream),
        }
    }

    /// Points `key` at the event `id` at log sequence `at`: the key reads as a stream whose
    /// first event is that one.
    fn take(&mut self, key: &str, id: &uuid::Uuid, at: u64) {
        let mut head = Head::empty();
        head.record(0, id, at);
        self.pending.insert(key.to_string(), head);
    }
}

impl Inner {
    fn read_log(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = after.map_or(0, |p| p.commit.saturating_add(1));
        // Up to the tip only: the writer moves it once a group's heads are in the memtable,
        // so a stream read after its event was seen in the log finds that event.
        let tip = *self.tip.borrow();
        if start > tip {
            return Ok(Vec::new());
        }
        if let Some(recent) = self.tail.read(start, tip, max) {
            return recent;
        }
        let read = self.db.begin_read().map_err(io("read the global log"))?;
        let log = read.open_table(LOG).map_err(io("open the global log"))?;
        let mut out = Vec::with_capacity(max.min(4096));
        for item in log.range(start..=tip).map_err(io("read the global log"))?.take(max) {
            let (key, value) = item.map_err(io("read the global log"))?;
            out.push(record::decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    fn read_stream_blocking(&self, stream: &str, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_from(stream, Some(from), max)
    }

    /// Up to `max` events of `stream` from revision `from` (`None`: its last event), the
    /// stream's head looked up once.
    fn read_from(&self, stream: &str, from: Option<u64>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some((head, read)) = self.heads.lookup(&self.db, stream)? else {
            return Ok(Vec::new());
        };
        let from = from.unwrap_or(head.revision);
        // The first events' sequences are in the head, later ones in the stream index.
        let mut sequences: Vec<u64> = head.sequences(from).take(max).collect();
        if sequences.len() < max && head.revision >= HEAD_IDS {
            let index = read.open_table(INDEX).map_err(io("open the stream index"))?;
            let start = stream_key(stream, &from.max(HEAD_IDS).to_be_bytes());
            let end = stream_key(stream, &u64::MAX.to_be_bytes());
            let range = index
                .range(start.as_slice()..=end.as_slice())
                .map_err(io("read the stream index"))?;
            for item in range.take(max - sequences.len()) {
                let (_, seq) = item.map_err(io("read the stream index"))?;
                sequences.push(seq.value());
            }
        }
        let log = read.open_table(LOG).map_err(io("open the global log"))?;
        let mut out = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let value = log.get(sequence).map_err(io("read the global log"))?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stream {stream} points at log sequence {sequence}, which is missing"
                ))
            })?;
            out.push(record::decode(sequence, value.value())?);
        }
        Ok(out)
    }

    fn stream_revision(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        self.heads.revision(&self.db, stream)
    }

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        claims: Vec<(String, uuid::Uuid)>,
        on_commit: Option<crate::OnCommit>,
    ) -> Result<AppendOutcome, StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.send(Request::Append(AppendRequest {
            stream: stream.to_owned(),
            expected,
            events,
            claims,
            reply,
            on_commit,
        }))?;
        outcome.await.map_err(|_| writer_gone())?
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.as_ref().ok_or_else(writer_gone)?;
        requests.send(request).map_err(|_| writer_gone())
    }
}

fn writer_gone() -> StoreError {
    StoreError::Io("embedded event store: the writer thread has stopped; restart the process".into())
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append(stream, expected, events, Vec::new(), None).await
    }

    async fn append_then(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        on_commit: crate::OnCommit,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner
            .append(stream, expected, events, Vec::new(), Some(on_commit))
            .await
    }

    async fn append_claiming(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
        claims: Vec<crate::Claim>,
        on_commit: Option<crate::OnCommit>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut taken = Vec::with_capacity(claims.len());
        for c in claims {
            let Some(by) = events.get(c.by) else {
                return Err(StoreError::Config(format!(
                    "append to {stream}: claim of {} names event {} of {}; nothing was written",
                    c.key,
                    c.by,
                    events.len()
                )));
            };
            taken.push((c.key, by.event_id));
        }
        self.inner.append(stream, expected, events, taken, on_commit).await
    }

    /// Claims are keys of the heads, committed with their events: no marker is written.
    fn claims_need_markers(&self) -> bool {
        false
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
        self.inner.stream_revision(stream)
    }

    async fn read_last(&self, stream: &str) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(self.inner.read_from(stream, None, 1)?.pop())
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
        let (reply, done) = tokio::sync::oneshot::channel();
        self.inner.send(Request::Sync(reply))?;
        done.await.map_err(|_| writer_gone())?
    }

    fn last_position(&self) -> Option<GlobalPosition> {
        let seq = *self.inner.tip.borrow();
        (seq > 0).then_some(GlobalPosition {
            commit: seq,
            prepare: seq,
        })
    }

    fn durable_position(&self) -> Option<GlobalPosition> {
        let seq = self.inner.durable.load(Ordering::Acquire);
        Some(GlobalPosition {
            commit: seq,
            prepare: seq,
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn position_at(&self, from: Option<GlobalPosition>, offset: i64) -> Option<GlobalPosition> {
        let base = from.map_or(0, |p| p.commit);
        let seq = i64::try_from(base).ok()?.checked_add(offset)?;
        let seq = u64::try_from(seq).ok().filter(|s| *s > 0)?;
        Some(GlobalPosition {
            commit: seq,
            prepare: seq,
        })
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
/// Version 2, the record of an event that takes keys ([`crate::Claim`]): a fifth length
/// after the metadata's, and a fifth field, the keys separated by `0xFF` (not in UTF-8).
/// All integers big-endian.
pub(crate) mod record {
    use super::*;

    const VERSION: u8 = 1;
    const CLAIMING: u8 = 2;
    const HEADER: usize = 1 + 8 + 8 + 16 + 4 * 4;

    pub(crate) fn encode(
        buf: &mut Vec<u8>,
        stream: &str,
        revision: u64,
        recorded_at_us: i64,
        event: &NewEvent,
        claims: &[&str],
    ) {
        let mut joined = Vec::new();
        for (i, key) in claims.iter().enumerate() {
            if i > 0 {
                joined.push(SEP);
            }
            joined.extend_from_slice(key.as_bytes());
        }
        let fields: [&[u8]; 5] = [
            stream.as_bytes(),
            event.event_type.as_bytes(),
            &event.data,
            &event.metadata,
            &joined,
        ];
        let fields = if claims.is_empty() { &fields[..4] } else { &fields[..] };
        buf.reserve(HEADER + 4 + fields.iter().map(|f| f.len()).sum::<usize>());
        buf.push(if claims.is_empty() { VERSION } else { CLAIMING });
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
        decode_with_claims(sequence, bytes).map(|(e, _)| e)
    }

    /// The record and the keys its event takes.
    pub(crate) fn decode_with_claims(sequence: u64, bytes: &[u8]) -> Result<(RecordedEvent, Vec<String>), StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("log record {sequence}: {why}"));
        let fields = match bytes.first() {
            Some(&VERSION) => 4,
            Some(&CLAIMING) => 5,
            Some(v) => return Err(corrupt(&format!("unknown record version {v}"))),
            None => 4,
        };
        let header = HEADER + 4 * (fields - 4);
        if bytes.len() < header {
            return Err(corrupt(&format!(
                "{} bytes, shorter than the {header}-byte header",
                bytes.len()
            )));
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
        let mut lens = [0usize; 5];
        for (k, len) in lens.iter_mut().take(fields).enumerate() {
            let i = 33 + 4 * k;
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[i..i + 4]);
            *len = u32::from_be_bytes(a) as usize;
        }
        if header + lens.iter().sum::<usize>() != bytes.len() {
            return Err(corrupt("field lengths do not add up to the record length"));
        }
        let mut at = header;
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
        let mut claims = Vec::new();
        if fields == 5 {
            for key in take(lens[4]).split(|b| *b == SEP) {
                let key = std::str::from_utf8(key).map_err(|_| corrupt("a claimed key is not UTF-8"))?;
                claims.push(key.to_owned());
            }
        }
        let event = RecordedEvent {
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
        };
        Ok((event, claims))
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
            encode(&mut buf, "customer-1", 4, 99, &event, &[]);
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

        #[test]
        fn a_claiming_record_keeps_its_keys_and_reads_as_the_same_event() {
            let event = NewEvent {
                event_id: uuid::Uuid::from_u128(8),
                event_type: "IdentifierAttachedV2".into(),
                data: vec![4, 5],
                metadata: Vec::new(),
            };
            let (mut plain, mut claiming) = (Vec::new(), Vec::new());
            encode(&mut plain, "customer-2", 1, 5, &event, &[]);
            encode(
                &mut claiming,
                "customer-2",
                1,
                5,
                &event,
                &["identity-email-a", "identity-phone-b"],
            );
            let (rec, keys) = decode_with_claims(3, &claiming).expect("own encoding decodes");
            assert_eq!(keys, ["identity-email-a", "identity-phone-b"]);
            assert_eq!(rec, decode(3, &plain).unwrap());
            assert_eq!(decode_with_claims(3, &plain).unwrap().1, Vec::<String>::new());
            for cut in [0, 40, claiming.len() - 1] {
                assert!(
                    matches!(decode(1, &claiming[..cut]), Err(StoreError::Corrupt(_))),
                    "cut at {cut}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(n: u128) -> NewEvent {
        NewEvent {
            event_id: uuid::Uuid::from_u128(n),
            event_type: "NoteV1".into(),
            data: vec![n as u8],
            metadata: Vec::new(),
        }
    }

    /// The log's end is read from the writer's tail of recent records, the rest from the
    /// file: both give the same events, across the tail's start and after a reopen (no tail).
    #[tokio::test]
    async fn the_tail_of_recent_records_reads_as_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let big = |n: u128| NewEvent {
            data: vec![n as u8; 64 << 10],
            ..new_event(n)
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // 160 events of 64 KiB: the tail (4 MiB) holds the last ~64 of them.
        for chunk in 0..16u128 {
            let events = (0..10).map(|i| big(chunk * 10 + i + 1)).collect();
            store
                .append(&format!("s-{chunk}"), ExpectedRevision::NoStream, events)
                .await
                .unwrap();
        }
        let held = store.inner.tail.records.read().unwrap().first;
        assert!(held > 1 && held < 160, "the tail starts at {held}");
        let read_all = |store: &EmbeddedStore| {
            let store = store.clone();
            async move {
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let events = store.read_all(after, 7).await.unwrap();
                    let Some(last) = events.last() else { break };
                    after = Some(last.position);
                    out.extend(
                        events
                            .into_iter()
                            .map(|e| (e.position.commit, e.stream, e.revision, e.event_id, e.data)),
                    );
                }
                out
            }
        };
        let served = read_all(&store).await;
        assert_eq!(served.len(), 160);
        for (i, (sequence, stream, revision, id, data)) in served.iter().enumerate() {
            let n = i as u128 + 1;
            assert_eq!(*sequence, n as u64);
            assert_eq!(
                (stream.as_str(), *revision),
                (format!("s-{}", i / 10).as_str(), (i % 10) as u64)
            );
            assert_eq!((*id, data.as_slice()), (big(n).event_id, big(n).data.as_slice()));
        }
        store.sync().await.unwrap();
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert!(reopened.inner.tail.records.read().unwrap().records.is_empty());
        assert_eq!(read_all(&reopened).await, served);
    }

    /// A file of layout 4 (records without claims: its identifier claims are streams of
    /// their own) opens as layout 5, reads as before, and its claim streams hold their keys.
    #[tokio::test]
    async fn a_layout_4_file_is_upgraded_in_place_and_its_claim_streams_hold_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let marker = new_event(1);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .append("identity-email-x", ExpectedRevision::NoStream, vec![marker.clone()])
                .await
                .unwrap();
            store.sync().await.unwrap();
        }
        {
            let db = Database::open(dir.path().join(FILE)).unwrap();
            let write = db.begin_write().unwrap();
            write.open_table(META).unwrap().insert("format", 4).unwrap();
            write.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let held = store.claimant("identity-email-x").await.unwrap().map(|e| e.event_id);
        assert_eq!(held, Some(marker.event_id));
        let refused = store
            .append_claiming(
                "customer-b",
                ExpectedRevision::NoStream,
                vec![new_event(2)],
                vec![crate::Claim {
                    key: "identity-email-x".into(),
                    by: 0,
                    marker: Some(new_event(3)),
                }],
                None,
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::WrongExpectedRevision { .. })),
            "{refused:?}"
        );
        drop(store);
        let db = Database::open(dir.path().join(FILE)).unwrap();
        let read = db.begin_read().unwrap();
        let format = read.open_table(META).unwrap().get("format").unwrap().map(|v| v.value());
        assert_eq!(format, Some(FORMAT));
    }

    /// A file as layout 3 wrote it (every head in `heads`) opens, reads, takes appends and
    /// is marked the current layout; its `heads` table is the base run.
    #[tokio::test]
    async fn a_layout_3_file_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE)).unwrap();
            let write = db.begin_write().unwrap();
            {
                let mut log = write.open_table(LOG).unwrap();
                let mut heads = write.open_table(TableDefinition::<&str, &[u8]>::new("heads")).unwrap();
                let mut buf = Vec::new();
                let mut sequence = 1;
                for (stream, events) in [("customer-a", 3u128), ("identity-email-b", 1)] {
                    let mut head = Head::empty();
                    for r in 0..events {
                        let e = new_event(sequence as u128 * 10 + r);
                        buf.clear();
                        record::encode(&mut buf, stream, r as u64, 7, &e, &[]);
                        log.insert(sequence, buf.as_slice()).unwrap();
                        head.record(r as u64, &e.event_id, sequence);
                        sequence += 1;
                    }
                    heads.insert(stream, head.encode().as_slice()).unwrap();
                }
                write.open_table(META).unwrap().insert("format", 3).unwrap();
                write.open_table(INDEX).unwrap();
                write.open_table(IDS).unwrap();
            }
            write.commit().unwrap();
        }
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(store.stream_revision("customer-a").await.unwrap(), Some(2));
            assert_eq!(store.read_stream("identity-email-b", 0, 10).await.unwrap().len(), 1);
            let out = store
                .append("customer-a", ExpectedRevision::Exact(2), vec![new_event(99)])
                .await
                .unwrap();
            assert_eq!((out.last_revision, out.position.map(|p| p.commit)), (3, Some(5)));
            store
                .append("customer-c", ExpectedRevision::NoStream, vec![new_event(100)])
                .await
                .unwrap();
            store.sync().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = store.read_stream("customer-a", 0, 10).await.unwrap();
        assert_eq!(a.iter().map(|e| e.revision).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(store.stream_revision("customer-c").await.unwrap(), Some(0));
        assert_eq!(store.stream_revision("identity-email-b").await.unwrap(), Some(0));
        drop(store);
        let db = Database::open(dir.path().join(FILE)).unwrap();
        let read = db.begin_read().unwrap();
        let meta = read.open_table(META).unwrap();
        assert_eq!(meta.get("format").unwrap().map(|v| v.value()), Some(FORMAT));
        assert_eq!(meta.get("heads_flushed").unwrap().map(|v| v.value()), Some(4));
    }
}
