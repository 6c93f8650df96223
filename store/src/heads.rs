//! Stream heads of the embedded store as a small log-structured merge tree inside redb.
//!
//! A head (a stream's last revision and its first events' ids and log sequences) changes on
//! every append, and most streams are identity reservations keyed by a random hash. In one
//! B-tree each new one dirtied a 4 KiB page of its own that the small cache had to read back
//! and write out: a million-row import read 11.6 GB and wrote 13.6 GB through the store's
//! writer for ~1.5 GB of data. Here heads live in:
//! - the **memtable**: heads changed since the last flush, in memory. They are not written
//!   by the appends' transactions at all: the log is, and at open the log after
//!   `meta["heads_flushed"]` is read back into the memtable, so a crash loses nothing;
//! - **runs**: immutable redb tables written once in key order (sequential pages), listed
//!   in table `runs` (recency → table name; newer runs shadow older ones). When the memtable
//!   holds [`Tuning::flush_at`] heads (or the log has grown by four times that many events
//!   since the last flush, so an open reads back a bounded stretch of it), it is **frozen**
//!   and a new memtable takes what comes after. The frozen one is written into a new run a
//!   slice per group commit ([`Tuning::flush_step`] heads); the slice that completes it lists
//!   the run and records the log sequence it covers, in one transaction. Lookups read the
//!   memtable, the frozen memtable, then the runs. (A whole flush in one commit stalled the
//!   appends ~50 ms each time: a million-row import had 80 such commits, 4.4 s in which
//!   the writer ran alone.)
//!   When [`Tuning::fanout`] consecutive runs are of one size tier (the lowest such tier
//!   first) they are merged into one, a slice per group commit ([`Tuning::merge_step`]
//!   heads), so the writer never stalls for a whole merge; the
//!   merged run replaces its inputs in the transaction that completes it. A run's table
//!   left half-written by a crash (or a failed commit) is dropped at the next open and
//!   the merge or flush starts again (a flush's heads are then in the memtable, read back
//!   from the log).
//!
//! Each run has a Bloom filter ([`KeyFilter`]) in memory, built as it is written (and at open
//! by reading its keys), so a lookup reads at most the runs whose filter may hold the
//! stream; one more filter holds every run's streams, so a stream that does not exist (most
//! lookups: is this identifier claimed?) costs a hash map probe and one filter probe, no
//! page (one filter probe per run before: measured, 1M rows, ~2.5% less CPU). Runs stay
//! few: base-8 tiers of 32k, 256k, 2M… heads, at most `fanout - 1` of each once merges have
//! caught up. (Base 4 rewrote each head once more by a million streams: a million-row
//! import's writer took ~10% more CPU.)
//!
//! Readers take the state's read lock while they begin their read transaction, and the
//! writer holds the write lock while it commits a transaction that changes the runs, so
//! a reader's runs and snapshot always agree. The memtable takes a group's heads after the
//! group is committed and before the tip moves, so what a reader finds in it is in its
//! snapshot too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use crate::StoreError;
use crate::filter::KeyFilter;

/// Ids and sequences of a stream's first events are kept in its head (two keys less per
/// event: most streams are short: an identity reservation holds one or two events).
pub(crate) const HEAD_IDS: u64 = 16;
/// Bytes per event in a stream head: event id + BE sequence.
const HEAD_ENTRY: usize = 16 + 8;

/// recency → name of the run's table; the base run (`heads`, the table of layout 3) is 0.
pub(crate) const RUNS: TableDefinition<u64, &str> = TableDefinition::new("runs");
/// The base run's table.
pub(crate) const BASE: &str = "heads";
/// Prefix of the other runs' tables.
const RUN_PREFIX: &str = "heads-";

fn run_table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// Sizes of the heads' merge tree. [`Tuning::default`] is what the store uses; tests make
/// it small to exercise flushes and merges with a few streams.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Heads in memory before they are written as a run.
    pub flush_at: usize,
    /// Runs of one size tier merged into one.
    pub fanout: usize,
    /// Heads a merge writes per group commit.
    pub merge_step: usize,
    /// Heads a flush writes per group commit.
    pub flush_step: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            flush_at: 32 * 1024,
            fanout: 8,
            merge_step: 2 * 1024,
            flush_step: 2 * 1024,
        }
    }
}

/// A stream head: its last revision, and the id and log sequence of each of its first
/// [`HEAD_IDS`] events (later events have `index` and `ids` keys).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) revision: u64,
    /// [`HEAD_ENTRY`] bytes per event: id ‖ BE sequence.
    entries: Vec<u8>,
}

impl Head {
    pub(crate) fn empty() -> Head {
        Head {
            revision: 0,
            entries: Vec::new(),
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Head, StoreError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(HEAD_ENTRY) {
            return Err(StoreError::Corrupt(format!(
                "a stream head has {} bytes, expected 8 + {HEAD_ENTRY} per event",
                bytes.len()
            )));
        }
        let mut revision = [0u8; 8];
        revision.copy_from_slice(&bytes[..8]);
        Ok(Head {
            revision: u64::from_be_bytes(revision),
            entries: bytes[8..].to_vec(),
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.entries.len());
        v.extend_from_slice(&self.revision.to_be_bytes());
        v.extend_from_slice(&self.entries);
        v
    }

    /// Records the event at `revision` (its id and log sequence while `revision` < [`HEAD_IDS`]).
    pub(crate) fn record(&mut self, revision: u64, id: &uuid::Uuid, sequence: u64) {
        if revision < HEAD_IDS {
            self.entries.extend_from_slice(id.as_bytes());
            self.entries.extend_from_slice(&sequence.to_be_bytes());
        }
        self.revision = revision;
    }

    pub(crate) fn holds(&self, id: &uuid::Uuid) -> bool {
        self.entries.chunks_exact(HEAD_ENTRY).any(|c| &c[..16] == id.as_bytes())
    }

    /// Log sequences of the head's events from revision `from` on.
    pub(crate) fn sequences(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
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

/// One run: an immutable table of heads in key order.
#[derive(Clone)]
pub(crate) struct Run {
    recency: u64,
    table: String,
    len: u64,
    filter: Arc<KeyFilter>,
}

fn db_err<E: Into<redb::Error>>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Io(format!("embedded event store: cannot {what}: {}", e.into()))
}

/// The head of `stream` in the newest of `runs` that holds one, each run's table opened by
/// `open` (in a read or a write transaction) only if its filter may hold the stream. Its
/// callers ask the filter of every run's streams first (most lookups ask for streams no run
/// holds: one filter instead of one per run).
fn find_in_runs<T: ReadableTable<&'static str, &'static [u8]>>(
    runs: &[Run],
    stream: &str,
    open: impl Fn(&str) -> Result<T, redb::TableError>,
) -> Result<Option<Head>, StoreError> {
    for run in runs {
        if !run.filter.may_hold(stream.as_bytes()) {
            continue;
        }
        let table = open(&run.table).map_err(db_err("open a run of stream heads"))?;
        if let Some(v) = table.get(stream).map_err(db_err("read a stream head"))? {
            return Head::decode(v.value()).map(Some);
        }
    }
    Ok(None)
}

/// How many streams the filter of every run's streams is first sized for: twice what the
/// runs hold at open, at least 2^20 (it grows beyond, each growth a filter of its own).
fn known_size(held: u64) -> usize {
    usize::try_from(held.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(1 << 20)
}

/// A new run number (names the run's table and gives a flushed run its recency).
fn next_run(meta: &mut redb::Table<'_, &'static str, u64>) -> Result<u64, StoreError> {
    let next = meta
        .get("next_run")
        .map_err(db_err("read the run counter"))?
        .map_or(1, |v| v.value());
    meta.insert("next_run", next + 1)
        .map_err(db_err("write the run counter"))?;
    Ok(next)
}

/// The next entry of a run being merged, owned.
fn next_entry(
    range: &mut redb::Range<'_, &'static str, &'static [u8]>,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    match range.next() {
        Some(item) => {
            let (k, v) = item.map_err(db_err("read a run to merge"))?;
            Ok(Some((k.value().to_string(), v.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// What readers and the writer share.
pub(crate) struct State {
    pub(crate) memtable: HeadMap,
    /// The memtable as it was when its flush began, while the flush writes it into a run
    /// (the memtable holds what came after, and shadows it).
    frozen: Option<Arc<BTreeMap<String, Head>>>,
    /// The log sequence the runs cover (the frozen memtable and the memtable hold what
    /// came after).
    covered: u64,
    /// Newest first.
    runs: Arc<Vec<Run>>,
}

impl State {
    /// A head the memtable or the frozen memtable holds (the memtable is newer).
    fn in_memory(&self, stream: &str) -> Option<Head> {
        self.memtable
            .get(stream)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.get(stream)))
            .cloned()
    }
}

/// The heads: shared state plus what only the writer keeps (tuning, the merge in progress).
pub(crate) struct Heads {
    pub(crate) state: RwLock<State>,
    /// Every stream any run holds (runs are merged, never emptied, so it only grows): a
    /// stream it does not know is in no run, which answers most lookups with one filter
    /// instead of one per run. Keys are added before the commit of the run that writes them.
    known: KeyFilter,
    tuning: Tuning,
    merge: std::sync::Mutex<Option<Merge>>,
    flush: std::sync::Mutex<Option<Flush>>,
}

/// Heads by stream name, hashed with foldhash: the writer looks up and inserts a few per
/// append, and `std`'s SipHash of the names was ~4% of its CPU in a 1M-row import. (Names
/// are a hash of an identifier or a customer's UUID: nothing a sender chooses freely.)
pub(crate) type HeadMap = HashMap<String, Head, foldhash::fast::RandomState>;

/// A flush in progress: the frozen memtable written into a new run, a slice per group
/// commit, so no commit stalls the appends for a whole flush (32k heads: ~50 ms).
struct Flush {
    heads: Arc<BTreeMap<String, Head>>,
    /// The log sequence the frozen memtable covers.
    covered: u64,
    /// The run's number and table, taken by the first slice.
    run: Option<(u64, String)>,
    /// Last key written.
    cursor: Option<String>,
    filter: KeyFilter,
}

/// A merge in progress: `inputs` (a block of consecutive runs, newest first) into `output`.
struct Merge {
    inputs: Vec<u64>,
    output: String,
    recency: u64,
    /// Last key written to `output`.
    cursor: Option<String>,
    written: u64,
    filter: KeyFilter,
}

/// The memtable at open: the log after the sequence the runs cover, read back.
pub(crate) type Replay<'a> = &'a mut dyn FnMut(&mut dyn FnMut(&str, u64, &uuid::Uuid, u64)) -> Result<(), StoreError>;

impl Heads {
    /// Opens the runs listed in `runs` (dropping tables a crash left half-written), builds
    /// their filters, and refills the memtable with `replay`.
    pub(crate) fn open(
        write: &redb::WriteTransaction,
        tuning: Tuning,
        covered: u64,
        replay: Replay<'_>,
    ) -> Result<Heads, StoreError> {
        let listed: Vec<(u64, String)> = {
            let mut runs = write.open_table(RUNS).map_err(db_err("open the run list"))?;
            if runs.is_empty().map_err(db_err("read the run list"))? {
                runs.insert(0, BASE).map_err(db_err("write the run list"))?;
            }
            let mut listed = Vec::new();
            for item in runs.iter().map_err(db_err("read the run list"))? {
                let (recency, name) = item.map_err(db_err("read the run list"))?;
                listed.push((recency.value(), name.value().to_string()));
            }
            listed
        };
        let orphans: Vec<String> = write
            .list_tables()
            .map_err(db_err("list the tables"))?
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(RUN_PREFIX) && !listed.iter().any(|(_, l)| l == n))
            .collect();
        for name in orphans {
            tracing::info!(table = %name, "dropping a run of stream heads an interrupted merge left half-written");
            write
                .delete_table(run_table(&name))
                .map_err(db_err("drop a half-written run"))?;
        }
        // Each run's table opened once: counted first, so the filter of every run's streams
        // is sized for all of them, then read.
        let mut opened = Vec::with_capacity(listed.len());
        for (recency, name) in listed.into_iter().rev() {
            let table = write
                .open_table(run_table(&name))
                .map_err(db_err("open a run of stream heads"))?;
            let len = table.len().map_err(db_err("count a run of stream heads"))?;
            opened.push((recency, name, table, len));
        }
        let known = KeyFilter::new(known_size(opened.iter().map(|o| o.3).sum()));
        let mut runs = Vec::with_capacity(opened.len());
        for (recency, name, table, len) in opened {
            let filter = KeyFilter::new(usize::try_from(len).unwrap_or(usize::MAX));
            for item in table.iter().map_err(db_err("read a run of stream heads"))? {
                let (stream, _) = item.map_err(db_err("read a run of stream heads"))?;
                let hash = crate::filter::hash(stream.value().as_bytes());
                filter.add_new_hash(hash);
                known.add_hash(hash);
            }
            runs.push(Run {
                recency,
                table: name,
                len,
                filter: Arc::new(filter),
            });
        }
        let heads = Heads {
            state: RwLock::new(State {
                memtable: HeadMap::default(),
                frozen: None,
                covered,
                runs: Arc::new(runs),
            }),
            known,
            tuning,
            merge: std::sync::Mutex::new(None),
            flush: std::sync::Mutex::new(None),
        };
        let mut memtable = HeadMap::default();
        let mut failed = None;
        replay(&mut |stream, revision, id, sequence| {
            if failed.is_some() {
                return;
            }
            let head = match memtable.get_mut(stream) {
                Some(h) => h,
                None => {
                    let found = heads.lookup_runs(write, stream);
                    let head = match found {
                        Ok(h) => h.unwrap_or_else(Head::empty),
                        Err(e) => {
                            failed = Some(e);
                            return;
                        }
                    };
                    memtable.entry(stream.to_string()).or_insert(head)
                }
            };
            head.record(revision, id, sequence);
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        heads.write_state().memtable = memtable;
        Ok(heads)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Heads in the runs only (newest first wins), through the writer's transaction.
    fn lookup_runs(&self, write: &redb::WriteTransaction, stream: &str) -> Result<Option<Head>, StoreError> {
        if !self.known.may_hold(stream.as_bytes()) {
            return Ok(None);
        }
        let runs = Arc::clone(&self.read_state().runs);
        find_in_runs(&runs, stream, |name| write.open_table(run_table(name)))
    }

    /// The writer's lookup: the memtable, the frozen memtable, then the runs.
    pub(crate) fn lookup_for_write(
        &self,
        write: &redb::WriteTransaction,
        stream: &str,
    ) -> Result<Option<Head>, StoreError> {
        if let Some(h) = self.read_state().in_memory(stream) {
            return Ok(Some(h));
        }
        self.lookup_runs(write, stream)
    }

    /// A reader's lookup: `stream`'s head and a read transaction that holds everything it
    /// points at; `None` if there is no such stream.
    ///
    /// Most lookups ask for streams that do not exist (a new identifier's key, a new
    /// customer): those are answered from memory and the filter, without beginning (and
    /// ending) a read transaction. A million-row import makes ~3.7M lookups, ~3.3M of them
    /// for streams that do not exist; `begin_read` alone was ~1% of the domain's samples.
    pub(crate) fn lookup(
        &self,
        db: &redb::Database,
        stream: &str,
    ) -> Result<Option<(Head, redb::ReadTransaction)>, StoreError> {
        use redb::ReadableDatabase;
        let (read, runs) = {
            let state = self.read_state();
            let in_memory = state.in_memory(stream);
            if in_memory.is_none() && !self.known.may_hold(stream.as_bytes()) {
                return Ok(None);
            }
            let read = db.begin_read().map_err(db_err("read a stream head"))?;
            if let Some(h) = in_memory {
                return Ok(Some((h, read)));
            }
            (read, Arc::clone(&state.runs))
        };
        // The filter of every run's streams was asked above.
        let head = find_in_runs(&runs, stream, |name| read.open_table(run_table(name)))?;
        Ok(head.map(|h| (h, read)))
    }

    /// `stream`'s revision (`None`: no such stream); a read transaction only if a run holds it.
    pub(crate) fn revision(&self, db: &redb::Database, stream: &str) -> Result<Option<u64>, StoreError> {
        if let Some(h) = self.read_state().in_memory(stream) {
            return Ok(Some(h.revision));
        }
        Ok(self.lookup(db, stream)?.map(|(h, _)| h.revision))
    }

    /// Whether the memtable is due to be flushed (and no flush is running): it holds
    /// [`Tuning::flush_at`] heads, or the log has grown by four times that many events since
    /// the runs' cover, which bounds what an open reads back from the log.
    pub(crate) fn flush_due(&self, state: &State, last_sequence: u64) -> bool {
        if self.flushing() {
            return false;
        }
        !state.memtable.is_empty()
            && (state.memtable.len() >= self.tuning.flush_at
                || last_sequence.saturating_sub(state.covered) >= 4 * self.tuning.flush_at as u64)
    }

    /// Whether a merge or a flush is in progress (the writer keeps committing slices of
    /// them, also while no appends come).
    pub(crate) fn busy(&self) -> bool {
        self.merging() || self.flushing()
    }

    /// Whether a merge is in progress.
    pub(crate) fn merging(&self) -> bool {
        self.merge.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub(crate) fn flushing(&self) -> bool {
        self.flush.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Begins a flush: the memtable (everything up to log sequence `covered`, committed)
    /// is frozen and a new one takes what comes after; [`Heads::flush_step`] then writes
    /// it into a run. The caller holds the state's write lock.
    pub(crate) fn freeze(&self, state: &mut State, covered: u64) {
        let heads: Arc<BTreeMap<String, Head>> = Arc::new(std::mem::take(&mut state.memtable).into_iter().collect());
        state.frozen = Some(Arc::clone(&heads));
        *self.flush.lock().unwrap_or_else(|p| p.into_inner()) = Some(Flush {
            filter: KeyFilter::new(heads.len()),
            heads,
            covered,
            run: None,
            cursor: None,
        });
    }

    /// Writes the next slice of the flush in progress into its run, in key order. Returns
    /// `true` when this slice completed it: the run is listed and recorded as covering the
    /// frozen memtable's log in `write`; the caller commits holding the state's write lock
    /// and calls [`Heads::finish_flush`]. A run left half-written (a crash, a failed commit)
    /// is not listed: the next open drops it and reads the memtable back from the log.
    pub(crate) fn flush_step(
        &self,
        write: &redb::WriteTransaction,
        meta: &mut redb::Table<'_, &'static str, u64>,
    ) -> Result<bool, StoreError> {
        let mut guard = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        let Some(flush) = guard.as_mut() else { return Ok(false) };
        let (number, name) = match &flush.run {
            Some(run) => run.clone(),
            None => {
                let next = next_run(meta)?;
                flush.run.insert((next, format!("{RUN_PREFIX}{next}"))).clone()
            }
        };
        let lower = match &flush.cursor {
            Some(c) => std::ops::Bound::Excluded(c.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let heads = Arc::clone(&flush.heads);
        let mut slice = heads.range((lower, std::ops::Bound::Unbounded)).peekable();
        {
            let mut table = write
                .open_table(run_table(&name))
                .map_err(db_err("create a run of stream heads"))?;
            for (stream, head) in slice.by_ref().take(self.tuning.flush_step.max(1)) {
                // A memtable holds each stream once; every run's filter may have it already.
                let hash = crate::filter::hash(stream.as_bytes());
                flush.filter.add_new_hash(hash);
                self.known.add_hash(hash);
                table
                    .insert(stream.as_str(), head.encode().as_slice())
                    .map_err(db_err("write a run of stream heads"))?;
                flush.cursor = Some(stream.clone());
            }
        }
        if slice.peek().is_some() {
            return Ok(false);
        }
        meta.insert("heads_flushed", flush.covered)
            .map_err(db_err("record the flushed heads"))?;
        write
            .open_table(RUNS)
            .map_err(db_err("open the run list"))?
            .insert(number, name.as_str())
            .map_err(db_err("write the run list"))?;
        Ok(true)
    }

    /// After the commit that completed a flush: its run replaces the frozen memtable. The
    /// caller holds the state's write lock across that commit and this.
    pub(crate) fn finish_flush(&self, state: &mut State) {
        // Only a flush whose run was written is finished: one taken without its run would
        // leave the frozen memtable to be replaced by the next freeze, and its heads lost.
        let mut guard = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Flush {
            heads,
            covered,
            run: Some((recency, table)),
            filter,
            ..
        }) = guard.take_if(|f| f.run.is_some())
        else {
            return;
        };
        state.frozen = None;
        state.covered = covered;
        let mut runs: Vec<Run> = Vec::with_capacity(state.runs.len() + 1);
        runs.push(Run {
            recency,
            table,
            len: heads.len() as u64,
            filter: Arc::new(filter),
        });
        runs.extend(state.runs.iter().cloned());
        state.runs = Arc::new(runs);
    }

    /// After a failed commit: the flush starts again in a new run (the frozen memtable
    /// stays; the half-written run is dropped at the next open).
    pub(crate) fn restart_flush(&self) {
        if let Some(flush) = self.flush.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            flush.run = None;
            flush.cursor = None;
            flush.filter = KeyFilter::new(flush.heads.len());
        }
    }

    /// Size tier of a run: 0 below `fanout × flush_at` heads, 1 below `fanout²×`, …
    fn tier(&self, len: u64) -> u32 {
        let unit = (self.tuning.flush_at as u64).max(1);
        let fanout = (self.tuning.fanout as u64).max(2);
        let mut tier = 0;
        let mut bound = unit * fanout;
        while len >= bound {
            tier += 1;
            bound = bound.saturating_mul(fanout);
        }
        tier
    }

    /// Starts a merge when `fanout` consecutive runs share a tier (and none is running).
    pub(crate) fn plan_merge(&self, meta: &mut redb::Table<'_, &'static str, u64>) -> Result<(), StoreError> {
        let mut merge = self.merge.lock().unwrap_or_else(|p| p.into_inner());
        if merge.is_some() {
            return Ok(());
        }
        let runs = Arc::clone(&self.read_state().runs);
        let fanout = self.tuning.fanout.max(2);
        // The lowest tier that has `fanout` consecutive runs (consecutive: a merged run takes
        // its inputs' place in recency order). The base run of an upgraded store is never an
        // input: it can be far bigger than anything flushed since.
        let window = runs
            .windows(fanout)
            .filter(|w| {
                w.iter()
                    .all(|r| r.recency != 0 && self.tier(r.len) == self.tier(w[0].len))
            })
            .min_by_key(|w| self.tier(w[0].len));
        let Some(newest) = window else { return Ok(()) };
        let next = next_run(meta)?;
        let expected: u64 = newest.iter().map(|r| r.len).sum();
        *merge = Some(Merge {
            inputs: newest.iter().map(|r| r.recency).collect(),
            output: format!("{RUN_PREFIX}{next}"),
            recency: newest[0].recency,
            cursor: None,
            written: 0,
            filter: KeyFilter::new(usize::try_from(expected).unwrap_or(usize::MAX)),
        });
        Ok(())
    }

    /// Writes the next slice of the merge in progress. Returns `true` when this slice
    /// completed it: then the caller commits holding the state's write lock and calls
    /// [`Heads::finish_merge`].
    pub(crate) fn merge_step(&self, write: &redb::WriteTransaction) -> Result<bool, StoreError> {
        let mut guard = self.merge.lock().unwrap_or_else(|p| p.into_inner());
        let Some(merge) = guard.as_mut() else { return Ok(false) };
        let runs = Arc::clone(&self.read_state().runs);
        let inputs: Vec<&Run> = merge
            .inputs
            .iter()
            .filter_map(|r| runs.iter().find(|run| run.recency == *r))
            .collect();
        let tables = inputs
            .iter()
            .map(|r| write.open_table(run_table(&r.table)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err("open a run to merge"))?;
        let lower = match &merge.cursor {
            Some(c) => std::ops::Bound::Excluded(c.as_str()),
            None => std::ops::Bound::Unbounded,
        };
        let mut iters = tables
            .iter()
            .map(|t| t.range::<&str>((lower, std::ops::Bound::Unbounded)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err("read a run to merge"))?;
        // Each input's current entry, owned (read once per entry, not once per comparison).
        let mut current = iters.iter_mut().map(next_entry).collect::<Result<Vec<_>, _>>()?;
        let mut output = write
            .open_table(run_table(&merge.output))
            .map_err(db_err("create a merged run"))?;
        for _ in 0..self.tuning.merge_step.max(1) {
            // The smallest key among the inputs; the newest input (first) wins a tie.
            let mut winner: Option<usize> = None;
            for (i, entry) in current.iter().enumerate() {
                if let Some((key, _)) = entry
                    && winner.is_none_or(|w| current[w].as_ref().is_some_and(|(best, _)| key < best))
                {
                    winner = Some(i);
                }
            }
            let Some(winner) = winner else { break };
            let (key, value) = current[winner].take().expect("the winner has an entry");
            for (i, entry) in current.iter_mut().enumerate() {
                if i == winner || entry.as_ref().is_some_and(|(k, _)| *k == key) {
                    *entry = next_entry(&mut iters[i])?;
                }
            }
            // Each key once: the newest run's head of it.
            merge.filter.add_new_hash(crate::filter::hash(key.as_bytes()));
            output
                .insert(key.as_str(), value.as_slice())
                .map_err(db_err("write a merged run"))?;
            merge.written += 1;
            merge.cursor = Some(key);
        }
        let done = current.iter().all(Option::is_none);
        drop(output);
        drop(iters);
        drop(tables);
        if !done {
            return Ok(false);
        }
        let mut list = write.open_table(RUNS).map_err(db_err("open the run list"))?;
        for run in &inputs {
            list.remove(run.recency).map_err(db_err("write the run list"))?;
            write
                .delete_table(run_table(&run.table))
                .map_err(db_err("drop a merged run"))?;
        }
        list.insert(merge.recency, merge.output.as_str())
            .map_err(db_err("write the run list"))?;
        Ok(true)
    }

    /// After the commit that completed a merge: its output replaces its inputs. The caller
    /// holds the state's write lock across that commit and this.
    pub(crate) fn finish_merge(&self, state: &mut State) {
        let Some(merge) = self.merge.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut output = Some(Run {
            recency: merge.recency,
            table: merge.output,
            len: merge.written,
            filter: Arc::new(merge.filter),
        });
        let mut runs: Vec<Run> = Vec::with_capacity(state.runs.len());
        for run in state.runs.iter() {
            if merge.inputs.contains(&run.recency) {
                // The inputs are consecutive: the output takes the place of the first.
                runs.extend(output.take());
            } else {
                runs.push(run.clone());
            }
        }
        state.runs = Arc::new(runs);
    }

    /// Forgets a merge whose completing transaction failed (it starts again).
    pub(crate) fn abandon_merge(&self) {
        self.merge.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// How many runs there are (for tests and logs).
    pub(crate) fn run_count(&self) -> usize {
        self.read_state().runs.len()
    }
}
