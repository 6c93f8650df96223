//! The embedded event store on sled: the default backend for single-node deployments.
//!
//! Layout (one sled database, four trees):
//! - `log`: global log, big-endian `u64` sequence → encoded record ([`record`]).
//!   Sequences start at 1 and are never reused, so `after: None` means "from the start";
//!   `GlobalPosition { commit: seq, prepare: seq }`.
//! - `stream_index`: `stream ‖ 0xFF ‖ BE revision` → BE sequence.
//! - `stream_heads`: `stream` → BE last revision.
//! - `event_ids`: `stream ‖ 0xFF ‖ event id (16 bytes)` → BE revision.
//!
//! `0xFF` never occurs in UTF-8, so a stream's keys never interleave with a stream whose
//! name it prefixes.
//!
//! Every append is one sled multi-tree transaction, and appends are serialised by an
//! in-process lock: sequence numbers are assigned under that lock and become visible in
//! order, so a reader of the log never sees a gap that fills in later. That is what lets
//! [`EventStore::subscribe_all`] follow the log without gaps or duplicates.
//!
//! Durability invariant: an acknowledged `append` is atomic and visible but *not yet
//! fsynced*. [`EventStore::sync`] (sled `flush_async`) makes every append acknowledged
//! before the call durable. Callers that acknowledge anything to the outside world (the
//! domain committing bus offsets) must call `sync()` first; a crash before `sync()` may
//! lose a suffix of recent appends, never a middle part, and never reuses a sequence that
//! was made durable.
//!
//! Not here: the KurrentDB adapter (`kurrent`), the port itself (`lib.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::BoxStream;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional, Tree};
use tokio::sync::watch;

use crate::{AppendOutcome, EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

/// Separator between a stream name and the rest of an index key (never valid UTF-8).
const SEP: u8 = 0xFF;
/// How many events a live subscription reads from the log per batch.
const SUBSCRIPTION_BATCH: usize = 512;

/// The embedded event store. Cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    log: Tree,
    stream_index: Tree,
    stream_heads: Tree,
    event_ids: Tree,
    /// Serialises appends; holds the last assigned sequence (0 = none yet).
    last_sequence: Mutex<u64>,
    /// Last committed sequence, bumped after each append so live subscribers wake up.
    tip: watch::Sender<u64>,
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
        let db = sled::Config::new().path(path).open().map_err(|e| {
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

    fn from_db(db: sled::Db, path: PathBuf) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::Io(format!("cannot open tree {name} in {}: {e}", path.display())))
        };
        let log = tree("log")?;
        let stream_index = tree("stream_index")?;
        let stream_heads = tree("stream_heads")?;
        let event_ids = tree("event_ids")?;
        let last = match log.last().map_err(io("read the last log entry"))? {
            Some((key, _)) => decode_u64(&key, "log key")?,
            None => 0,
        };
        let (tip, _) = watch::channel(last);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                log,
                stream_index,
                stream_heads,
                event_ids,
                last_sequence: Mutex::new(last),
                tip,
            }),
        })
    }

    /// Sequence of the last event in the global log (0 when empty).
    pub fn last_sequence(&self) -> u64 {
        *self.inner.tip.borrow()
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

fn stream_key(stream: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 1 + suffix.len());
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

fn check_expected(stream: &str, expected: ExpectedRevision, actual: Option<u64>) -> Result<(), StoreError> {
    let ok = match expected {
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
            expected,
            actual,
        })
    }
}

impl Inner {
    fn append_blocking(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        // Duplicate ids inside one batch: keep the first, like a redelivery would.
        let mut seen = std::collections::HashSet::with_capacity(events.len());
        events.retain(|e| seen.insert(e.event_id));
        let recorded_at_us = now_us();

        let mut last_sequence = self.last_sequence.lock().map_err(|_| {
            StoreError::Io("embedded event store: an earlier append panicked; restart the process".into())
        })?;
        let first_sequence = *last_sequence + 1;

        let trees = (&self.log, &self.stream_index, &self.stream_heads, &self.event_ids);
        let result = trees.transaction(|(log, index, heads, ids)| {
            let head = match heads.get(stream.as_bytes())? {
                Some(v) => Some(decode_u64(&v, "stream head").map_err(ConflictableTransactionError::Abort)?),
                None => None,
            };
            let mut fresh = Vec::with_capacity(events.len());
            for event in &events {
                if ids.get(stream_key(stream, event.event_id.as_bytes()))?.is_none() {
                    fresh.push(event);
                }
            }
            if fresh.is_empty() && head.is_some() {
                // Pure redelivery: every id is already there, whatever `expected` says.
                return Ok(AppendOutcome {
                    last_revision: head.unwrap_or(0),
                    appended: 0,
                    position: None,
                });
            }
            check_expected(stream, expected, head).map_err(ConflictableTransactionError::Abort)?;
            if fresh.is_empty() {
                // Empty batch on a stream that does not exist: nothing to write.
                return Ok(AppendOutcome {
                    last_revision: 0,
                    appended: 0,
                    position: None,
                });
            }
            let mut revision = head.map_or(0, |h| h + 1);
            let mut sequence = first_sequence;
            let mut buf = Vec::new();
            for event in &fresh {
                buf.clear();
                record::encode(&mut buf, stream, revision, recorded_at_us, event);
                log.insert(&sequence.to_be_bytes(), buf.as_slice())?;
                index.insert(stream_key(stream, &revision.to_be_bytes()), &sequence.to_be_bytes())?;
                ids.insert(stream_key(stream, event.event_id.as_bytes()), &revision.to_be_bytes())?;
                revision += 1;
                sequence += 1;
            }
            let last_revision = revision - 1;
            let last_seq = sequence - 1;
            heads.insert(stream.as_bytes(), &last_revision.to_be_bytes())?;
            Ok(AppendOutcome {
                last_revision,
                appended: fresh.len(),
                position: Some(GlobalPosition {
                    commit: last_seq,
                    prepare: last_seq,
                }),
            })
        });
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => {
                return Err(StoreError::Io(format!(
                    "embedded event store: append to {stream} failed: {e}"
                )));
            }
        };
        if let Some(pos) = outcome.position {
            *last_sequence = pos.commit;
            // Bump while still holding the lock so the tip only ever moves forward.
            self.tip.send_replace(pos.commit);
        }
        Ok(outcome)
    }

    fn read_log(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = after.map_or(0, |p| p.commit.saturating_add(1));
        let mut out = Vec::with_capacity(max.min(4096));
        for item in self.log.range(start.to_be_bytes()..).take(max) {
            let (key, value) = item.map_err(io("read the global log"))?;
            let sequence = decode_u64(&key, "log key")?;
            out.push(record::decode(sequence, &value)?);
        }
        Ok(out)
    }

    fn read_stream_blocking(&self, stream: &str, from: u64, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let start = stream_key(stream, &from.to_be_bytes());
        let end = stream_key(stream, &u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for item in self.stream_index.range(start..=end).take(max) {
            let (_, seq) = item.map_err(io("read the stream index"))?;
            let sequence = decode_u64(&seq, "stream index value")?;
            let value: IVec = self.log.get(seq)?.ok_or_else(|| {
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
        self.inner.append_blocking(stream, expected, events)
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
        match self.inner.stream_heads.get(stream.as_bytes())? {
            Some(v) => Ok(Some(decode_u64(&v, "stream head")?)),
            None => Ok(None),
        }
    }

    async fn read_all(&self, after: Option<GlobalPosition>, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_log(after, max)
    }

    fn subscribe_all(&self, after: Option<GlobalPosition>) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let state = Subscription {
            inner: Arc::clone(&self.inner),
            tip: self.inner.tip.subscribe(),
            after,
            buffer: std::collections::VecDeque::new(),
            failed: false,
        };
        Box::pin(futures::stream::unfold(state, Subscription::next))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await.map_err(io("flush (fsync) the log"))?;
        Ok(())
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
