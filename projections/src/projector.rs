//! The customer-view projection: applies customer events to the view store.
//!
//! Checkpoint rule (as Quickwit puts it): the projector records the global
//! position it has processed, and that checkpoint is written in the same atomic
//! batch as the view changes. A crash replays from the checkpoint; nothing is
//! applied twice or skipped. The view is a pure function of the log.
//!
//! The view store is one redb table (`views`) in its own database file (`views.redb`).
//! Batches commit without fsync; a durable commit follows at least every
//! [`DURABLE_EVERY`] and on [`ViewStore::flush`], and a crash rolls views and checkpoint
//! back together to the last durable one. The projector only applies events the store
//! has made durable (see `worker.rs`), so views never run ahead of the log.
//!
//! Keys of the `views` table:
//! `v/<customer>` view JSON · `a/<absorbed>` survivor id ·
//! `j/<bucket BE u32><kind:scope:value>` customer (the identifier index, below) ·
//! `c/<channel>/<customer>` channel index · `t/<customer>/<at_us BE><event_id>` timeline entry ·
//! `m/checkpoint` last applied position ·
//! `o/<customer>` the customer's *own* view (only its own stream's events; kept once it
//! has taken part in a merge) · `w/<customer>/<at_us BE><event_id>` its own timeline entries ·
//! `h/<customer>/<position BE>` merge and split history · `r/<review>` match review ·
//! `q/<status>/<position BE><review>` review queue index · `s/<kind:scope:value>` shared identifier.
//! Values (views, timeline entries, reviews, history) are postcard behind a format byte,
//! LZ4-compressed when longer than 256 bytes ([`encode`]); JSON, plain or LZ4-compressed
//! behind a 0x04 byte (earlier versions), reads as is ([`decode`]).
//!
//! The identifier index is kept in buckets: an entry's bucket is the log position of the
//! event that wrote it divided by the store's events per bucket ([`IDENT_BUCKET_EVENTS`],
//! 16,384, recorded in `m/ident-bucket-events` when the store is made; a store made before
//! that was recorded keeps 65,536), so it is a function of the log (a rebuild writes the
//! same keys) and a lookup tries the newest bucket first: an entry written later (a merge,
//! a split) shadows an earlier one. `i/<kind:scope:value>` is the index as versions before
//! the buckets wrote it, read last and never written. Why buckets: identifiers are random
//! keys; in one key range each new one dirtied a page of its own that the small cache had
//! to read back and write out (a million-row import: 1.8M of them, ~28 s of CPU). A
//! bucket's entries (~28k at 1.7 identifiers an event) stay in the cache and the write
//! buffer between durable commits, so a page is read once and written once per durable
//! commit, not once per entry. The price is one B-tree get per bucket on a lookup (65
//! buckets after a million-row import, ~1.03M events). Why 16,384: since a new customer is
//! one event, 65,536 events hold ~2.4 times the identifiers they did, and the projector
//! read 6.7 GB and wrote 8.6 GB in a million-row import instead of 4.0 and 6.0 GB.
//!
//! Lookups of `a/` and `o/` keys that do not exist are answered from memory
//! ([`store::filter::KeyFilter`], filled at open, keys added before the commit that writes
//! them): each event of a customer looks up its alias, and its own view, which exist only
//! for merged customers; each lookup was a B-tree descent on pages the small cache had lost
//! to writes. (`v/` keys are not filtered: filling the filter would read every view at open,
//! 3.4 s at a million customers.)
//!
//! Splits: a merged view is the fold of its members' own views, so a split rebuilds both
//! sides from `o/` keys (in merge order) and moves the restored members' timeline entries
//! back. The restored customer's view equals the one it would have had if never merged;
//! every step reads only what earlier events wrote, so views stay a function of the log.

use std::collections::{BTreeMap, HashMap};

use domain::CustomerEvent;
use proto::customer::Identifier;
use store::{GlobalPosition, RecordedEvent};

use crate::view::*;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("view store failed: {0}")]
    Db(#[from] redb::Error),
    #[error("view {key} is unreadable: {source}")]
    BadView {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("view store entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

const CHECKPOINT: &[u8] = b"m/checkpoint";
const VIEWS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("views");
/// File of the view store inside its directory.
pub const FILE: &str = "views.redb";
/// Longest time between durable commits of the view store while batches come in (redb
/// frees pages only at durable commits).
pub const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// redb's error types, each into [`ProjectionError::Db`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ProjectionError {
            fn from(e: $t) -> Self {
                ProjectionError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The key just after every key starting with `prefix` (prefixes here never end in 0xFF).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Key prefixes whose keys the view store's filter holds (module docs).
const FILTERED: [&[u8]; 2] = [b"a/", b"o/"];

fn filtered(key: &[u8]) -> bool {
    FILTERED.iter().any(|p| key.starts_with(p))
}

/// The filter of every [`FILTERED`] key in `db`, sized for them (and as much again).
fn customer_filter(db: &redb::Database) -> Result<store::filter::KeyFilter, ProjectionError> {
    use redb::ReadableDatabase;
    let read = db.begin_read()?;
    let table = read.open_table(VIEWS)?;
    let mut held = 0usize;
    for prefix in FILTERED {
        held += table.range(prefix..prefix_end(prefix).as_slice())?.count();
    }
    let filter = store::filter::KeyFilter::new(held.saturating_mul(2));
    for prefix in FILTERED {
        for item in table.range(prefix..prefix_end(prefix).as_slice())? {
            filter.add(item?.0.value());
        }
    }
    Ok(filter)
}

fn view_key(id: &str) -> Vec<u8> {
    [b"v/".as_slice(), id.as_bytes()].concat()
}
fn alias_key(id: &str) -> Vec<u8> {
    [b"a/".as_slice(), id.as_bytes()].concat()
}
/// Events per identifier-index bucket in a view store made now (see the module docs).
const IDENT_BUCKET_EVENTS: u64 = 1 << 14;
/// Events per bucket in a view store written before the size was recorded.
const IDENT_BUCKET_EVENTS_UNRECORDED: u64 = 1 << 16;
/// The store's events per bucket (u64 BE), written when the store is made.
const IDENT_BUCKET_KEY: &[u8] = b"m/ident-bucket-events";

/// The identifier-index bucket of an event at `position`, `events` per bucket.
fn ident_bucket(events: u64, position: GlobalPosition) -> u32 {
    u32::try_from(position.commit / events.max(1)).unwrap_or(u32::MAX)
}

/// The identifier-index key written by the event at `position`, `events` per bucket.
fn ident_key(events: u64, position: GlobalPosition, kind: &str, scope: &str, normalized: &str) -> Vec<u8> {
    bucket_ident_key(ident_bucket(events, position), kind, scope, normalized)
}

/// `j/<bucket BE u32><kind:scope:value>`.
fn bucket_ident_key(bucket: u32, kind: &str, scope: &str, normalized: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + kind.len() + scope.len() + normalized.len() + 2);
    k.extend_from_slice(b"j/");
    k.extend_from_slice(&bucket.to_be_bytes());
    for part in [kind, ":", scope, ":", normalized] {
        k.extend_from_slice(part.as_bytes());
    }
    k
}

/// The identifier index as versions before buckets wrote it (read, never written).
fn legacy_ident_key(kind: &str, scope: &str, normalized: &str) -> Vec<u8> {
    format!("i/{kind}:{scope}:{normalized}").into_bytes()
}
fn channel_key(channel: &str, id: &str) -> Vec<u8> {
    [b"c/".as_slice(), channel.as_bytes(), b"/", id.as_bytes()].concat()
}
fn own_key(id: &str) -> Vec<u8> {
    [b"o/".as_slice(), id.as_bytes()].concat()
}
fn own_timeline_prefix(id: &str) -> Vec<u8> {
    [b"w/".as_slice(), id.as_bytes(), b"/"].concat()
}
fn history_prefix(id: &str) -> Vec<u8> {
    format!("h/{id}/").into_bytes()
}
fn history_key(id: &str, p: GlobalPosition) -> Vec<u8> {
    let mut k = history_prefix(id);
    k.extend_from_slice(&encode_position(p));
    k
}
fn review_key(id: &str) -> Vec<u8> {
    format!("r/{id}").into_bytes()
}
fn review_index_prefix(status: &str) -> Vec<u8> {
    format!("q/{status}/").into_bytes()
}
fn review_index_key(status: &str, position: u64, id: &str) -> Vec<u8> {
    let mut k = review_index_prefix(status);
    k.extend_from_slice(&position.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}
fn shared_key(kind: &str, scope: &str, normalized: &str) -> Vec<u8> {
    format!("s/{kind}:{scope}:{normalized}").into_bytes()
}

/// First byte of a value stored as LZ4-compressed JSON (versions before postcard); JSON
/// never starts with it, so values written as plain JSON by earlier versions read as they are.
const LZ4: u8 = 0x04;
/// First byte of a value stored as LZ4-compressed postcard ([`encode`]).
const LZ4_POSTCARD: u8 = 0x05;
/// First byte of a value stored as plain postcard ([`encode`]).
const POSTCARD: u8 = 0x06;

/// A stored value, decoded. Reads every format versions wrote: postcard (plain or LZ4) and
/// JSON (plain or LZ4).
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, ProjectionError> {
    let corrupt = |reason: String| ProjectionError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let unpacked = |packed: &[u8]| {
        lz4_flex::decompress_size_prepended(packed)
            .map_err(|e| corrupt(format!("its compressed value does not decompress: {e}")))
    };
    let from_postcard = |bytes: &[u8]| {
        postcard::from_bytes(bytes).map_err(|e| {
            corrupt(format!(
                "it does not decode as a {}: {e} (views are rebuilt from the event store: stop crm, \
                 remove the data directory's `views` folder and start it again)",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
            ))
        })
    };
    let from_json = |bytes: &[u8]| {
        serde_json::from_slice(bytes).map_err(|source| ProjectionError::BadView {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    };
    match v.split_first() {
        Some((&POSTCARD, bytes)) => from_postcard(bytes),
        Some((&LZ4_POSTCARD, packed)) => from_postcard(&unpacked(packed)?),
        Some((&LZ4, packed)) => from_json(&unpacked(packed)?),
        _ => from_json(v),
    }
}

/// Values up to this size are stored uncompressed (compressing them saves no page).
const COMPRESS_FROM: usize = 256;

/// A value as stored: postcard behind a format byte, LZ4-compressed when longer than
/// [`COMPRESS_FROM`] bytes (views repeat each field's source: event id, channel, time).
/// Postcard is the fields in declaration order without their names: the layout of the
/// stored types (`view.rs`) is the storage format, and a change to it needs a new format
/// byte (and the old one still read, or a rebuild); `stored_values_of_this_layout_still_decode`
/// fails on such a change. A view of an imported row is stored in 350 bytes instead of 678
/// as LZ4 JSON, written in 0.8 µs instead of 2.2 and read in 1.6 µs instead of 3.9
/// (`cargo run --release -p projections --example view_format`).
///
/// The value is serialised and compressed in buffers this thread keeps (and the compressor's
/// table too), so an encoding makes one allocation, of the result's size: growing a new
/// buffer a byte at a time and a fresh 8 KiB table per view were ~1/3 of the projector's
/// encoding instructions (callgrind, 20k-row import). The bytes are those of
/// `lz4_flex::compress_prepend_size`.
pub fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, ProjectionError> {
    struct Buffers {
        plain: Vec<u8>,
        packed: Vec<u8>,
        table: lz4_flex::block::CompressTable,
    }
    thread_local! {
        static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers {
            plain: Vec::new(),
            packed: Vec::new(),
            table: lz4_flex::block::CompressTable::default(),
        });
    }
    let failed = |reason: String| ProjectionError::Corrupt {
        key: key.to_string(),
        reason,
    };
    BUFFERS.with_borrow_mut(|b| {
        let mut plain = std::mem::take(&mut b.plain);
        plain.clear();
        plain.push(POSTCARD);
        b.plain = postcard::to_extend(value, plain).map_err(|e| failed(format!("it cannot be encoded: {e}")))?;
        let body = &b.plain[1..];
        if body.len() <= COMPRESS_FROM {
            return Ok(b.plain.clone());
        }
        let size = u32::try_from(body.len()).map_err(|_| failed(format!("{} bytes is too large", body.len())))?;
        b.packed
            .resize(1 + 4 + lz4_flex::block::get_maximum_output_size(body.len()), 0);
        let n = lz4_flex::block::compress_into_with_table(body, &mut b.packed[5..], &mut b.table)
            .map_err(|e| failed(format!("it cannot be compressed: {e}")))?;
        let mut packed = Vec::with_capacity(5 + n);
        packed.push(LZ4_POSTCARD);
        packed.extend_from_slice(&size.to_le_bytes());
        packed.extend_from_slice(&b.packed[5..5 + n]);
        Ok(packed)
    })
}

fn timeline_prefix(id: &str) -> Vec<u8> {
    [b"t/".as_slice(), id.as_bytes(), b"/"].concat()
}
fn timeline_key(id: &str, at_us: i64, event_id: &str) -> Vec<u8> {
    let at = (at_us as u64 ^ (1 << 63)).to_be_bytes();
    [b"t/".as_slice(), id.as_bytes(), b"/", &at, event_id.as_bytes()].concat()
}

/// The view store: read side used by the API, write side used by the projector.
#[derive(Clone)]
pub struct ViewStore {
    db: std::sync::Arc<redb::Database>,
    /// The `a/` and `o/` keys held (see the module docs).
    customers: std::sync::Arc<store::filter::KeyFilter>,
    /// When the last durable commit was made.
    last_durable: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
    /// Events per identifier-index bucket: as recorded in the store (see the module docs).
    bucket_events: u64,
}

type ViewTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl ViewStore {
    /// Opens (or creates) the view store in directory `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Self, ProjectionError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ProjectionError::Store(store::StoreError::Io(format!(
                "cannot create the view store directory {}: {e}",
                dir.display()
            )))
        })?;
        let db = redb::Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(dir.join(FILE))?;
        Self::from_db(db)
    }

    /// A view store in memory. For tests and throw-away rebuilds.
    pub fn temporary() -> Result<Self, ProjectionError> {
        Self::from_db(redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
    }

    fn from_db(db: redb::Database) -> Result<Self, ProjectionError> {
        let write = db.begin_write()?;
        let bucket_events = {
            use redb::ReadableTable;
            let mut table = write.open_table(VIEWS)?;
            let recorded = table
                .get(IDENT_BUCKET_KEY)?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok().map(u64::from_be_bytes));
            match recorded {
                Some(events) => events,
                None => {
                    // A store with a checkpoint and no size was written by a version whose
                    // buckets were 65,536 events: it keeps them. A new store records its own.
                    let events = match table.get(CHECKPOINT)? {
                        Some(_) => IDENT_BUCKET_EVENTS_UNRECORDED,
                        None => IDENT_BUCKET_EVENTS,
                    };
                    table.insert(IDENT_BUCKET_KEY, events.to_be_bytes().as_slice())?;
                    events
                }
            }
        };
        write.commit()?;
        let customers = customer_filter(&db)?;
        Ok(ViewStore {
            db: std::sync::Arc::new(db),
            customers: std::sync::Arc::new(customers),
            last_durable: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            bucket_events,
        })
    }

    /// The table as of now (a snapshot: later commits do not show through it).
    fn table(&self) -> Result<ViewTable, ProjectionError> {
        use redb::ReadableDatabase;
        Ok(self.db.begin_read()?.open_table(VIEWS)?)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        if filtered(key) && !self.customers.may_hold(key) {
            return Ok(None);
        }
        Ok(self.table()?.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The first `limit` keys and values under `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<KeyValues, ProjectionError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for item in self.table()?.range(prefix..end.as_slice())?.take(limit) {
            let (k, v) = item?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Keys under `prefix`, from `start` on, at most `limit`.
    fn keys_from(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ProjectionError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        for item in self.table()?.range(start..end.as_slice())?.take(limit) {
            out.push(item?.0.value().to_vec());
        }
        Ok(out)
    }

    fn count_prefix(&self, prefix: &[u8]) -> usize {
        let end = prefix_end(prefix);
        self.table()
            .and_then(|t| Ok(t.range(prefix..end.as_slice())?.count()))
            .unwrap_or(0)
    }

    pub fn checkpoint(&self) -> Result<Option<GlobalPosition>, ProjectionError> {
        Ok(self.get(CHECKPOINT)?.and_then(|v| decode_position(&v)))
    }

    /// Follows merge aliases to the surviving customer id (itself if not merged).
    pub fn resolve(&self, id: &str) -> Result<String, ProjectionError> {
        let mut current = id.to_string();
        for _ in 0..64 {
            match self.get(&alias_key(&current))? {
                Some(v) => current = String::from_utf8_lossy(&v).into_owned(),
                None => break,
            }
        }
        Ok(current)
    }

    /// The view of a customer, following merges.
    pub fn customer(&self, id: &str) -> Result<Option<CustomerView>, ProjectionError> {
        let id = self.resolve(id)?;
        self.get_view(&id)
    }

    fn get_view(&self, id: &str) -> Result<Option<CustomerView>, ProjectionError> {
        match self.get(&view_key(id))? {
            Some(v) => decode(&view_key(id), &v).map(Some),
            None => Ok(None),
        }
    }

    /// The customer owning an identifier (already normalised).
    pub fn by_identifier(
        &self,
        kind: &str,
        scope: &str,
        normalized: &str,
    ) -> Result<Option<CustomerView>, ProjectionError> {
        // Newest bucket first (a later event's entry shadows an earlier one's), then the
        // index of earlier versions; buckets up to the checkpoint this snapshot holds.
        let table = self.table()?;
        let checkpoint = table.get(CHECKPOINT)?.and_then(|v| decode_position(v.value()));
        let newest = checkpoint.map_or(0, |c| ident_bucket(self.bucket_events, c));
        let keys = (0..=newest)
            .rev()
            .map(|bucket| bucket_ident_key(bucket, kind, scope, normalized))
            .chain(std::iter::once(legacy_ident_key(kind, scope, normalized)));
        for key in keys {
            if let Some(id) = table.get(key.as_slice())? {
                let id = String::from_utf8_lossy(id.value()).into_owned();
                return self.customer(&id);
            }
        }
        Ok(None)
    }

    /// Customer ids in id order, strictly after `after`, optionally only those seen on `channel`.
    pub fn customer_ids(
        &self,
        after: Option<&str>,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ProjectionError> {
        let prefix = match channel {
            Some(c) => format!("c/{c}/"),
            None => "v/".to_string(),
        };
        let start = match after {
            Some(a) => {
                let mut k = format!("{prefix}{a}").into_bytes();
                k.push(0);
                k
            }
            None => prefix.clone().into_bytes(),
        };
        Ok(self
            .keys_from(prefix.as_bytes(), &start, limit)?
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Number of live customers.
    pub fn count(&self) -> usize {
        self.count_prefix(b"v/")
    }

    /// Timeline of a customer, newest first, skipping `offset` entries.
    pub fn timeline(&self, id: &str, offset: usize, limit: usize) -> Result<Vec<TimelineEntry>, ProjectionError> {
        let id = self.resolve(id)?;
        let prefix = timeline_prefix(&id);
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for item in self
            .table()?
            .range(prefix.as_slice()..end.as_slice())?
            .rev()
            .skip(offset)
            .take(limit)
        {
            let (k, v) = item?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Merges and splits that involved any of `ids`, oldest first (each once).
    pub fn merge_history(&self, ids: &[String]) -> Result<Vec<MergeHistoryEntry>, ProjectionError> {
        let mut out: BTreeMap<u64, MergeHistoryEntry> = BTreeMap::new();
        for id in ids {
            for (k, v) in self.scan_prefix(&history_prefix(id), usize::MAX)? {
                let entry: MergeHistoryEntry = decode(&k, &v)?;
                out.entry(entry.position).or_insert(entry);
            }
        }
        Ok(out.into_values().collect())
    }

    /// One match review.
    pub fn review(&self, id: &str) -> Result<Option<MatchReviewEntry>, ProjectionError> {
        let key = review_key(id);
        match self.get(&key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Reviews with a status (pending, approved, rejected), oldest request first, strictly
    /// after the review `after`.
    pub fn reviews(
        &self,
        status: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MatchReviewEntry>, ProjectionError> {
        let prefix = review_index_prefix(status);
        let start = match after.map(|a| self.review(a)).transpose()?.flatten() {
            Some(r) => {
                let mut k = review_index_key(status, r.position, &r.id);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for k in self.keys_from(&prefix, &start, limit)? {
            let id = String::from_utf8_lossy(&k[prefix.len() + 8..]).into_owned();
            if let Some(r) = self.review(&id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Number of reviews with a status.
    pub fn review_count(&self, status: &str) -> usize {
        self.count_prefix(&review_index_prefix(status))
    }

    /// Identifiers marked shared.
    pub fn shared_identifiers(&self, limit: usize) -> Result<Vec<SharedIdentifierEntry>, ProjectionError> {
        let mut out = Vec::new();
        for (k, v) in self.scan_prefix(b"s/", limit)? {
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every key and value, for comparing a rebuilt store with the live one.
    pub fn digest(&self) -> Result<(usize, u64), ProjectionError> {
        let mut digest = ViewDigest::default();
        use redb::ReadableTable;
        for item in self.table()?.iter()? {
            let (k, v) = item?;
            digest.add(k.value(), v.value());
        }
        Ok(digest.finish())
    }

    /// Makes every commit so far durable (fsync).
    pub async fn flush(&self) -> Result<(), ProjectionError> {
        let views = self.clone();
        tokio::task::spawn_blocking(move || views.commit_writes(Vec::new(), true))
            .await
            .map_err(|e| ProjectionError::Store(store::StoreError::Io(format!("the view flush task failed: {e}"))))?
    }

    /// Writes (`None` removes) in one transaction; durable when asked or when the last
    /// durable commit is older than [`DURABLE_EVERY`].
    fn commit_writes(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>, durable: bool) -> Result<(), ProjectionError> {
        let mut last_durable = self.last_durable.lock().unwrap_or_else(|p| p.into_inner());
        let durable = durable || last_durable.elapsed() >= DURABLE_EVERY;
        let mut write = self.db.begin_write()?;
        if !durable {
            write.set_durability(redb::Durability::None)?;
        }
        {
            let mut table = write.open_table(VIEWS)?;
            for (k, v) in &writes {
                if v.is_some() && filtered(k) {
                    self.customers.add(k);
                }
                match v {
                    Some(v) => table.insert(k.as_slice(), v.as_slice())?,
                    None => table.remove(k.as_slice())?,
                };
            }
        }
        write.commit()?;
        if durable {
            *last_durable = std::time::Instant::now();
        }
        Ok(())
    }
}

fn encode_position(p: GlobalPosition) -> Vec<u8> {
    let mut v = p.commit.to_be_bytes().to_vec();
    v.extend_from_slice(&p.prepare.to_be_bytes());
    v
}

fn decode_position(v: &[u8]) -> Option<GlobalPosition> {
    if v.len() != 16 {
        return None;
    }
    let mut c = [0u8; 8];
    let mut p = [0u8; 8];
    c.copy_from_slice(&v[..8]);
    p.copy_from_slice(&v[8..]);
    Some(GlobalPosition {
        commit: u64::from_be_bytes(c),
        prepare: u64::from_be_bytes(p),
    })
}

/// Keys and values, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Pending changes of one batch: typed views plus raw key writes, read through to the
/// tree. Without a store it is a whole view store in memory (a rebuild from position zero).
struct Overlay<'a> {
    store: Option<&'a ViewStore>,
    /// Events per identifier-index bucket (the live store's, in a rebuild too).
    bucket_events: u64,
    /// foldhash: each event looks its customer up several times (std's SipHash was 8–12 of
    /// the projector's 729 perf samples in a 1M-row import). Boxed: a view is ~0.5 KB, and a
    /// rebuild's map of every customer moved them all each time it grew (its inserts were
    /// a fifth of a replay's `apply_one`).
    views: FastMap<String, Option<Box<CustomerView>>>,
    /// Own views (`o/`), same read-through rule.
    owns: FastMap<String, Option<Box<CustomerView>>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    /// Nothing applied yet, reading through to `store` (none: a rebuild from position zero).
    fn new(store: Option<&'a ViewStore>, bucket_events: u64) -> Self {
        Overlay {
            store,
            bucket_events,
            views: FastMap::default(),
            owns: FastMap::default(),
            writes: BTreeMap::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => match self.store {
                Some(s) => s.get(key),
                None => Ok(None),
            },
        }
    }

    fn resolve(&self, id: &str) -> Result<String, ProjectionError> {
        let mut current = id.to_string();
        for _ in 0..64 {
            match self.get(&alias_key(&current))? {
                Some(v) => current = String::from_utf8_lossy(&v).into_owned(),
                None => break,
            }
        }
        Ok(current)
    }

    fn view(&mut self, id: &str) -> Result<Option<&mut CustomerView>, ProjectionError> {
        if !self.views.contains_key(id) {
            let v = match self.store {
                Some(s) => s.get_view(id)?,
                None => None,
            };
            self.views.insert(id.to_string(), v.map(Box::new));
        }
        Ok(self.views.get_mut(id).and_then(|v| v.as_deref_mut()))
    }

    fn own(&mut self, id: &str) -> Result<Option<&mut CustomerView>, ProjectionError> {
        if !self.owns.contains_key(id) {
            let v = match self.store.map(|s| s.get(&own_key(id))).transpose()?.flatten() {
                Some(v) => Some(decode(&own_key(id), &v)?),
                None => None,
            };
            self.owns.insert(id.to_string(), v.map(Box::new));
        }
        Ok(self.owns.get_mut(id).and_then(|v| v.as_deref_mut()))
    }

    /// From its first merge on, a customer keeps its own view and own timeline index;
    /// before that its live view is its own.
    fn keep_own(&mut self, id: &str) -> Result<(), ProjectionError> {
        if self.own(id)?.is_some() {
            return Ok(());
        }
        let Some(view) = self.view(id)?.cloned() else {
            return Ok(());
        };
        self.owns.insert(id.to_string(), Some(Box::new(view)));
        let prefix = timeline_prefix(id);
        for (k, _) in self.scan(&prefix)? {
            let mut own = own_timeline_prefix(id);
            own.extend_from_slice(&k[prefix.len()..]);
            self.put(own, Vec::new());
        }
        Ok(())
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Points an identifier at customer `id` in the identifier index, as of the event at
    /// `position`.
    fn put_ident(&mut self, position: GlobalPosition, (kind, scope, normalized): (&str, &str, &str), id: &str) {
        let key = ident_key(self.bucket_events, position, kind, scope, normalized);
        self.put(key, id.as_bytes().to_vec());
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Keys under a prefix, as the tree plus this batch's writes see them.
    fn scan(&self, prefix: &[u8]) -> Result<KeyValues, ProjectionError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if let Some(store) = self.store {
            out.extend(store.scan_prefix(prefix, usize::MAX)?);
        }
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().collect())
    }

    fn commit(self, position: GlobalPosition) -> Result<(), ProjectionError> {
        let mut batch = Vec::with_capacity(self.views.len() + self.owns.len() + self.writes.len() + 1);
        for (id, view) in self.views {
            batch.push((view_key(&id), view.map(|v| encode(&id, &*v)).transpose()?));
        }
        // An own view is never removed: `None` is a lookup that found none, nothing to write
        // (it was a removal of an absent key for every customer a batch touched).
        for (id, view) in self.owns {
            if let Some(v) = view {
                batch.push((own_key(&id), Some(encode(&id, &*v)?)));
            }
        }
        batch.extend(self.writes);
        batch.push((CHECKPOINT.to_vec(), Some(encode_position(position))));
        if let Some(store) = self.store {
            store.commit_writes(batch, false)?;
        }
        Ok(())
    }
}

/// Customer event types that change no view (see the end of `apply_one`): not even decoded.
/// Every new customer's identifier claims are among them.
const IGNORED: [&str; 3] = ["IdentifierClaimedV1", "MergedIntoV1", "CustomerRestoredV1"];

/// An event as the projector reads it.
type Decoded = Result<CustomerEvent, domain::events::EventDecodeError>;

/// What the projector makes of an event: `None` when no view depends on it (another
/// stream, or a type in [`IGNORED`]), else its decoding.
fn decode_for_views(e: &RecordedEvent) -> Option<Decoded> {
    let read = ["customer-", "review-", "identity-"]
        .iter()
        .any(|p| e.stream.starts_with(p))
        && !IGNORED.contains(&e.event_type.as_str());
    read.then(|| CustomerEvent::from_recorded(e))
}

/// A batch of events, each with what the views make of it, decoded ahead of
/// [`Rebuild::apply_decoded`].
pub struct DecodedEvents(Vec<(RecordedEvent, Option<Decoded>)>);

impl DecodedEvents {
    pub fn of(events: Vec<RecordedEvent>) -> Self {
        DecodedEvents(
            events
                .into_iter()
                .map(|e| {
                    let decoded = decode_for_views(&e);
                    (e, decoded)
                })
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Applies customer events to the views.
pub struct Projector {
    views: ViewStore,
    region: phonenumber::country::Id,
}

impl Projector {
    pub fn new(views: ViewStore, region: phonenumber::country::Id) -> Self {
        Projector { views, region }
    }

    pub fn views(&self) -> &ViewStore {
        &self.views
    }

    /// Applies a batch of events (in global order) atomically with the checkpoint.
    /// Events at or before the checkpoint are skipped.
    pub fn apply(&self, events: &[RecordedEvent]) -> Result<usize, ProjectionError> {
        let checkpoint = self.views.checkpoint()?;
        let mut overlay = Overlay::new(Some(&self.views), self.views.bucket_events);
        let after = events.iter().filter(|e| checkpoint.is_none_or(|c| e.position > c));
        let (applied, last) = self.apply_to(&mut overlay, after.map(|e| (e, decode_for_views(e))))?;
        if let Some(last) = last {
            overlay.commit(last)?;
        }
        Ok(applied)
    }

    /// Applies events, each with what [`decode_for_views`] made of it, to an overlay; returns
    /// how many were customer events and the position of the last one seen.
    fn apply_to<'e>(
        &self,
        overlay: &mut Overlay<'_>,
        events: impl IntoIterator<Item = (&'e RecordedEvent, Option<Decoded>)>,
    ) -> Result<(usize, Option<GlobalPosition>), ProjectionError> {
        let mut last = None;
        let mut applied = 0;
        for (e, decoded) in events {
            last = Some(e.position);
            let Some(decoded) = decoded else { continue };
            match decoded {
                Ok(ev) => {
                    self.apply_one(overlay, ev, e)?;
                    applied += 1;
                }
                Err(err) => {
                    tracing::warn!(stream = %e.stream, revision = e.revision, error = %err, "skipping unreadable customer event");
                    metrics::counter!("projection_unreadable_events_total").increment(1);
                }
            }
        }
        Ok((applied, last))
    }

    /// A rebuild of every view from position zero, held in memory: views stay decoded
    /// between batches and are serialised once, at the end.
    pub fn rebuild(&self) -> Rebuild<'_> {
        Rebuild {
            projector: self,
            overlay: Overlay::new(None, self.views.bucket_events),
            last: None,
        }
    }

    fn apply_one(
        &self,
        o: &mut Overlay<'_>,
        ev: CustomerEvent,
        recorded: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        match &ev {
            // Applied as the registration, attachment and activity it stands for.
            CustomerEvent::RegisteredWith(_) => {
                for part in ev.into_parts() {
                    self.apply_one(o, part, recorded)?;
                }
            }
            CustomerEvent::Registered(r) => {
                let id = o.resolve(&r.customer_id)?;
                let at = r
                    .provenance
                    .as_ref()
                    .map(|p| p.occurred_at_us)
                    .unwrap_or(recorded.recorded_at_us);
                // A stream's first event registers a customer id nothing has named before:
                // it has no view to read (a page the small cache has mostly lost), nor an own
                // view (kept from a customer's first merge on) for its next events to look up.
                if recorded.revision == 0 {
                    o.owns.insert(r.customer_id.clone(), None);
                }
                if recorded.revision == 0 || o.view(&id)?.is_none() {
                    o.views.insert(
                        id.clone(),
                        Some(Box::new(CustomerView {
                            id: id.clone(),
                            created_at_us: at,
                            updated_at_us: at,
                            ..Default::default()
                        })),
                    );
                }
            }
            CustomerEvent::IdentifierAttached(a) => {
                let id = o.resolve(&a.customer_id)?;
                let source = Source::from_provenance(a.provenance.as_ref());
                if let Some(own) = o.own(&a.customer_id)? {
                    for ident in &a.identifiers {
                        add_identifier(own, ident, source.clone());
                    }
                }
                if let Some(view) = o.view(&id)? {
                    for ident in &a.identifiers {
                        add_identifier(view, ident, source.clone());
                    }
                }
                for ident in &a.identifiers {
                    o.put_ident(recorded.position, (&ident.kind, &ident.scope, &ident.normalized), &id);
                }
            }
            CustomerEvent::ActivityRecorded(a) => {
                let id = o.resolve(&a.customer_id)?;
                let region = self.region;
                let source = Source::from_provenance(a.provenance.as_ref());
                if let Some(own) = o.own(&a.customer_id)? {
                    let entry = record_activity(own, a, &source, region);
                    let mut k = own_timeline_prefix(&a.customer_id);
                    k.extend_from_slice(&timeline_key("", entry.at_us, &entry.event_id)[3..]);
                    o.put(k, Vec::new());
                }
                let Some(view) = o.view(&id)? else { return Ok(()) };
                // A view with an entry of this channel has its channel key already (merges
                // and splits move both): writing it again would dirty a page for nothing.
                let new_channel = !view.channels.iter().any(|c| c.channel == source.channel);
                let entry = record_activity(view, a, &source, region);
                o.put(timeline_key(&id, entry.at_us, &entry.event_id), encode(&id, &entry)?);
                if new_channel {
                    o.put(channel_key(&source.channel, &id), Vec::new());
                }
            }
            CustomerEvent::Merged(m) => {
                let survivor = o.resolve(&m.survivor_id)?;
                let absorbed = o.resolve(&m.absorbed_id)?;
                if survivor == absorbed {
                    return Ok(());
                }
                if o.view(&absorbed)?.is_none() {
                    return Ok(());
                }
                o.keep_own(&survivor)?;
                o.keep_own(&absorbed)?;
                let Some(gone) = o.view(&absorbed)?.cloned() else {
                    return Ok(());
                };
                let e = m.evidence.clone().unwrap_or_default();
                let entry = MergeHistoryEntry {
                    kind: "merge".into(),
                    at_us: at_of(m.provenance.as_ref(), recorded),
                    position: recorded.position.commit,
                    survivor_id: m.survivor_id.clone(),
                    absorbed_id: m.absorbed_id.clone(),
                    rule: e.rule,
                    score: e.score,
                    match_weight: e.match_weight,
                    prior_weight: e.prior_weight,
                    comparisons: FieldComparisonEntry::from_proto(&e.comparisons),
                    identifiers: e
                        .identifiers
                        .iter()
                        .map(|i| format!("{}:{}", i.kind, i.normalized))
                        .collect(),
                    decided_by: e.decided_by,
                    reason: String::new(),
                    review_id: e.review_id,
                };
                o.history(&entry, recorded.position)?;
                o.views.insert(absorbed.clone(), None);
                o.put(alias_key(&absorbed), survivor.clone().into_bytes());
                for ident in &gone.identifiers {
                    o.put_ident(
                        recorded.position,
                        (&ident.kind, &ident.scope, &ident.normalized),
                        &survivor,
                    );
                }
                for ch in &gone.channels {
                    o.remove(channel_key(&ch.channel, &absorbed));
                    o.put(channel_key(&ch.channel, &survivor), Vec::new());
                }
                for (k, v) in o.scan(&timeline_prefix(&absorbed))? {
                    let suffix = k[timeline_prefix(&absorbed).len()..].to_vec();
                    let mut nk = timeline_prefix(&survivor);
                    nk.extend_from_slice(&suffix);
                    o.remove(k);
                    o.put(nk, v);
                }
                if let Some(view) = o.view(&survivor)? {
                    merge_views(view, gone);
                }
            }
            CustomerEvent::Split(split) => split_views(o, split, recorded)?,
            CustomerEvent::ReviewRequested(r) => {
                let e = r.evidence.clone().unwrap_or_default();
                let entry = MatchReviewEntry {
                    id: r.review_id.clone(),
                    status: "pending".into(),
                    customer_id: r.customer_id.clone(),
                    candidate_id: r.candidate_id.clone(),
                    reason: r.reason.clone(),
                    rule: e.rule,
                    score: e.score,
                    match_weight: e.match_weight,
                    prior_weight: e.prior_weight,
                    comparisons: FieldComparisonEntry::from_proto(&e.comparisons),
                    fingerprint: r.fingerprint.clone(),
                    requested_at_us: at_of(r.provenance.as_ref(), recorded),
                    position: recorded.position.commit,
                    reviewer: String::new(),
                    decided_at_us: 0,
                };
                if o.get(&review_key(&r.review_id))?.is_none() {
                    o.put(review_key(&r.review_id), encode(&r.review_id, &entry)?);
                    o.put(review_index_key("pending", entry.position, &entry.id), Vec::new());
                }
            }
            CustomerEvent::ReviewDecided(d) => {
                let Some(v) = o.get(&review_key(&d.review_id))? else {
                    return Ok(());
                };
                let mut entry: MatchReviewEntry = decode(&review_key(&d.review_id), &v)?;
                if entry.status != "pending" {
                    return Ok(());
                }
                o.remove(review_index_key("pending", entry.position, &entry.id));
                entry.status = if d.decision == "approve" {
                    "approved"
                } else {
                    "rejected"
                }
                .into();
                entry.reviewer = d.reviewer.clone();
                entry.decided_at_us = d.decided_at_us;
                o.put(review_index_key(&entry.status, entry.position, &entry.id), Vec::new());
                o.put(review_key(&d.review_id), encode(&d.review_id, &entry)?);
            }
            CustomerEvent::MarkedShared(m) => {
                if let Some(i) = &m.identifier {
                    let entry = SharedIdentifierEntry {
                        kind: i.kind.clone(),
                        normalized: i.normalized.clone(),
                        scope: i.scope.clone(),
                        customers: m.customers,
                        limit: m.limit,
                        at_us: at_of(m.provenance.as_ref(), recorded),
                    };
                    o.put(
                        shared_key(&i.kind, &i.scope, &i.normalized),
                        encode(&i.normalized, &entry)?,
                    );
                }
            }
            CustomerEvent::MergedInto(_) | CustomerEvent::IdentifierClaimed(_) | CustomerEvent::Restored(_) => {}
        }
        Ok(())
    }
}

/// Views rebuilt in memory from position zero (see [`Projector::rebuild`]).
pub struct Rebuild<'p> {
    projector: &'p Projector,
    overlay: Overlay<'static>,
    last: Option<GlobalPosition>,
}

impl Rebuild<'_> {
    /// Applies the next events of the log, in global order.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<usize, ProjectionError> {
        let last = self.last;
        let after = events.iter().filter(|e| last.is_none_or(|c| e.position > c));
        self.apply_pairs(after.map(|e| (e, decode_for_views(e))))
    }

    /// [`Rebuild::apply`] of events decoded beforehand, e.g. on the thread that read them
    /// (decoding was a sixth of a replay's instructions).
    pub fn apply_decoded(&mut self, mut batch: DecodedEvents) -> Result<usize, ProjectionError> {
        let last = self.last;
        let after = batch
            .0
            .iter_mut()
            .filter(|(e, _)| last.is_none_or(|c| e.position > c))
            .map(|(e, decoded)| (&*e, decoded.take()));
        self.apply_pairs(after)
    }

    fn apply_pairs<'e>(
        &mut self,
        events: impl IntoIterator<Item = (&'e RecordedEvent, Option<Decoded>)>,
    ) -> Result<usize, ProjectionError> {
        let (applied, last) = self.projector.apply_to(&mut self.overlay, events)?;
        self.last = last.or(self.last);
        Ok(applied)
    }

    /// Every key and value the rebuilt view store holds (checkpoint aside), in key order:
    /// exactly what the live projector would have written.
    ///
    /// The typed views are split by key range, a range a thread, each encoded (postcard,
    /// LZ4) and sorted there, while this thread takes the raw writes (already in key order);
    /// the ranges, in order, are then merged into the writes. A sort of everything at the
    /// end (key comparisons through pointers, ~4.5M entries at a million rows) was most of
    /// the serialising.
    pub fn into_entries(self) -> Result<KeyValues, ProjectionError> {
        let Overlay {
            views, owns, writes, ..
        } = self.overlay;
        // (key prefix, id): ordered as the keys `o/<id>` and `v/<id>` are.
        let typed: Vec<(u8, String, Box<CustomerView>)> = views
            .into_iter()
            .filter_map(|(id, v)| Some((b'v', id, v?)))
            .chain(owns.into_iter().filter_map(|(id, v)| Some((b'o', id, v?))))
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let ranges = split_by_range(typed, threads);
        let (encoded, raw) = std::thread::scope(|scope| {
            let encoders: Vec<_> = ranges
                .into_iter()
                .map(|range| {
                    scope.spawn(move || -> Result<KeyValues, ProjectionError> {
                        let mut out = Vec::with_capacity(range.len());
                        for (prefix, id, view) in range {
                            let key = if prefix == b'o' { own_key(&id) } else { view_key(&id) };
                            out.push((key, encode(&id, &*view)?));
                        }
                        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                        Ok(out)
                    })
                })
                .collect();
            let raw: KeyValues = writes.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
            let encoded: Vec<_> = encoders
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect();
            (encoded, raw)
        });
        let mut typed: KeyValues = Vec::new();
        for range in encoded {
            typed.extend(range?);
        }
        Ok(merge_into(raw, typed))
    }
}

/// `items` in at most `parts` parts by ranges of (prefix, id), in ascending order, each
/// about as long as the others (the bounds are quantiles of a sample); none empty.
fn split_by_range<V>(items: Vec<(u8, String, V)>, parts: usize) -> Vec<Vec<(u8, String, V)>> {
    if items.is_empty() {
        return Vec::new();
    }
    let parts = parts.clamp(1, items.len());
    if parts == 1 {
        return vec![items];
    }
    let step = (items.len() / 1024).max(1);
    let mut sample: Vec<(u8, &str)> = items.iter().step_by(step).map(|(p, id, _)| (*p, id.as_str())).collect();
    sample.sort_unstable();
    let bounds: Vec<(u8, String)> = (1..parts)
        .map(|i| {
            let (p, id) = sample[i * sample.len() / parts];
            (p, id.to_string())
        })
        .collect();
    let mut out: Vec<Vec<_>> = (0..parts)
        .map(|_| Vec::with_capacity(items.len() / parts + 1))
        .collect();
    for item in items {
        let at = bounds.partition_point(|(p, id)| (*p, id.as_str()) <= (item.0, item.1.as_str()));
        out[at].push(item);
    }
    out.retain(|part| !part.is_empty());
    out
}

/// `sorted` (in key order, no key twice) merged into `run` (in key order): the entries of
/// `run` between two of `sorted`'s are found by galloping and moved as they are, so a
/// stretch of `run` no entry of `sorted` falls in costs a few comparisons, not one an
/// entry. On a key in both, `sorted`'s entry is kept.
fn merge_into(mut run: KeyValues, sorted: KeyValues) -> KeyValues {
    let mut out = Vec::with_capacity(run.len() + sorted.len());
    let mut from = 0;
    for entry in sorted {
        let to = gallop(&run, from, &entry.0);
        out.extend(run[from..to].iter_mut().map(std::mem::take));
        from = to;
        if run.get(from).is_some_and(|r| r.0 == entry.0) {
            from += 1;
        }
        out.push(entry);
    }
    out.extend(run[from..].iter_mut().map(std::mem::take));
    out
}

/// The first index at or after `from` whose key is not below `key` (`run` is in key order).
fn gallop(run: &[(Vec<u8>, Vec<u8>)], from: usize, key: &[u8]) -> usize {
    let (mut lo, mut hi, mut step) = (from, from, 1);
    while hi < run.len() && run[hi].0.as_slice() < key {
        lo = hi + 1;
        hi += step;
        step *= 2;
    }
    let hi = hi.min(run.len());
    lo + run[lo..hi].partition_point(|e| e.0.as_slice() < key)
}

/// Number of view entries and a CRC-32 over them, fed in key order (the checkpoint aside).
#[derive(Default)]
pub struct ViewDigest {
    hasher: crc32fast::Hasher,
    entries: usize,
}

impl ViewDigest {
    pub fn add(&mut self, k: &[u8], v: &[u8]) {
        // The checkpoint and the store's settings are not views.
        if k.starts_with(b"m/") {
            return;
        }
        self.hasher.update(&(k.len() as u64).to_le_bytes());
        self.hasher.update(k);
        self.hasher.update(&(v.len() as u64).to_le_bytes());
        self.hasher.update(v);
        self.entries += 1;
    }

    pub fn finish(self) -> (usize, u64) {
        (self.entries, self.hasher.finalize() as u64)
    }
}

fn at_of(p: Option<&proto::customer::Provenance>, recorded: &RecordedEvent) -> i64 {
    p.map(|p| p.occurred_at_us)
        .filter(|&t| t != 0)
        .unwrap_or(recorded.recorded_at_us)
}

impl Overlay<'_> {
    /// Records a history entry under both customers it names.
    fn history(&mut self, entry: &MergeHistoryEntry, position: GlobalPosition) -> Result<(), ProjectionError> {
        let value = encode(&entry.survivor_id, entry)?;
        self.put(history_key(&entry.survivor_id, position), value.clone());
        self.put(history_key(&entry.absorbed_id, position), value);
        Ok(())
    }

    /// The direct survivor `id` was merged into, if merged.
    fn parent(&self, id: &str) -> Result<Option<String>, ProjectionError> {
        Ok(self
            .get(&alias_key(id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// `own(first)` with every own view of `members` merged in, in that order.
    fn fold(&mut self, first: &str, members: &[String]) -> Result<CustomerView, ProjectionError> {
        let mut acc = self.own(first)?.cloned().unwrap_or_else(|| CustomerView {
            id: first.to_string(),
            ..Default::default()
        });
        acc.merged_from.clear();
        for m in members {
            if let Some(mut v) = self.own(m)?.cloned() {
                v.merged_from.clear();
                merge_views(&mut acc, v);
            }
        }
        Ok(acc)
    }
}

/// Undoes a merge in the views: both sides are rebuilt from their members' own views.
fn split_views(
    o: &mut Overlay<'_>,
    split: &proto::customer::CustomerSplitV1,
    recorded: &RecordedEvent,
) -> Result<(), ProjectionError> {
    let restored = split.restored_id.clone();
    let entry = MergeHistoryEntry {
        kind: "split".into(),
        at_us: at_of(split.provenance.as_ref(), recorded),
        position: recorded.position.commit,
        survivor_id: split.survivor_id.clone(),
        absorbed_id: restored.clone(),
        identifiers: split
            .identifiers
            .iter()
            .map(|i| format!("{}:{}", i.kind, i.normalized))
            .collect(),
        decided_by: split.decided_by.clone(),
        reason: split.reason.clone(),
        ..Default::default()
    };
    o.history(&entry, recorded.position)?;
    if o.parent(&restored)?.as_deref() != Some(split.survivor_id.as_str()) {
        return Ok(());
    }
    let root = o.resolve(&split.survivor_id)?;
    let Some(old) = o.view(&root)?.cloned() else {
        return Ok(());
    };
    // Which descendants go with the restored customer: those merged into it, directly or not.
    let mut theirs = Vec::new();
    let mut ours = Vec::new();
    for d in &old.merged_from {
        if *d == restored {
            continue;
        }
        let mut current = d.clone();
        let mut goes = false;
        for _ in 0..64 {
            match o.parent(&current)? {
                Some(p) if p == restored => {
                    goes = true;
                    break;
                }
                Some(p) if p == root => break,
                Some(p) => current = p,
                None => break,
            }
        }
        if goes {
            theirs.push(d.clone())
        } else {
            ours.push(d.clone())
        }
    }
    o.remove(alias_key(&restored));
    let survivor_view = o.fold(&root, &ours)?;
    let restored_view = o.fold(&restored, &theirs)?;
    for ch in &old.channels {
        o.remove(channel_key(&ch.channel, &root));
    }
    for (id, view) in [(&root, &survivor_view), (&restored, &restored_view)] {
        for ch in &view.channels {
            o.put(channel_key(&ch.channel, id), Vec::new());
        }
        for i in &view.identifiers {
            o.put_ident(recorded.position, (&i.kind, &i.scope, &i.normalized), id);
        }
    }
    let from = timeline_prefix(&root);
    for member in std::iter::once(&restored).chain(theirs.iter()) {
        let own = own_timeline_prefix(member);
        for (k, _) in o.scan(&own)? {
            let suffix = &k[own.len()..];
            let mut old_key = from.clone();
            old_key.extend_from_slice(suffix);
            if let Some(v) = o.get(&old_key)? {
                let mut new_key = timeline_prefix(&restored);
                new_key.extend_from_slice(suffix);
                o.remove(old_key);
                o.put(new_key, v);
            }
        }
    }
    o.views.insert(root, Some(Box::new(survivor_view)));
    o.views.insert(restored, Some(Box::new(restored_view)));
    Ok(())
}

fn add_identifier(view: &mut CustomerView, ident: &Identifier, source: Source) {
    match view
        .identifiers
        .iter_mut()
        .find(|i| i.kind == ident.kind && i.scope == ident.scope && i.normalized == ident.normalized)
    {
        Some(existing) => {
            if !existing.raw.contains(&ident.raw) {
                existing.raw.push(ident.raw.clone());
            }
        }
        None => view.identifiers.push(IdentifierEntry {
            kind: ident.kind.clone(),
            normalized: ident.normalized.clone(),
            scope: ident.scope.clone(),
            raw: vec![ident.raw.clone()],
            source,
        }),
    }
}

fn set_field(view: &mut CustomerView, name: &str, value: &str, source: &Source) {
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    match view.fields.get_mut(name) {
        Some(f) if f.value == value => {}
        Some(f) => {
            let old = FieldValue {
                value: std::mem::replace(&mut f.value, value.to_string()),
                source: std::mem::replace(&mut f.source, source.clone()),
            };
            f.previous.push(old);
        }
        None => {
            view.fields.insert(
                name.to_string(),
                FieldEntry {
                    value: value.to_string(),
                    source: source.clone(),
                    previous: Vec::new(),
                },
            );
        }
    }
}

fn record_activity(
    view: &mut CustomerView,
    a: &proto::customer::ActivityRecordedV1,
    source: &Source,
    region: phonenumber::country::Id,
) -> TimelineEntry {
    // Borrowed: only the interaction's parts are kept (in the timeline entry).
    let no_observation;
    let obs = match &a.observation {
        Some(o) => o,
        None => {
            no_observation = proto::inbound::Observation::default();
            &no_observation
        }
    };
    let at = source.occurred_at_us;
    view.updated_at_us = view.updated_at_us.max(at);
    view.timeline_count += 1;
    if let Some(s) = &obs.subject {
        for (name, value) in [
            ("name", &s.name),
            ("company", &s.company),
            ("title", &s.title),
            ("industry", &s.industry),
            ("company_size", &s.company_size),
            ("region", &s.region),
            ("address", &s.address),
            ("birth_date", &s.birth_date),
        ] {
            set_field(view, name, value, source);
        }
        for (k, v) in &s.attributes {
            set_field(view, &["attr.", k.as_str()].concat(), v, source);
        }
        // Other spellings of identifiers the customer already has.
        for raw in &s.identifiers {
            // A spelling already recorded normalises to what it did then: nothing to add
            // (and no phone parsing, the projector's costliest step).
            let known = view
                .identifiers
                .iter()
                .any(|i| i.kind == raw.kind && i.scope == raw.scope && i.raw.contains(&raw.value));
            if known {
                continue;
            }
            if let Ok(ident) = domain::identity::normalise(raw, region)
                && view
                    .identifiers
                    .iter()
                    .any(|i| i.kind == ident.kind && i.scope == ident.scope && i.normalized == ident.normalized)
            {
                add_identifier(view, &ident, source.clone());
            }
        }
    }
    let attribution = Attribution::from_proto(obs.attribution.as_ref());
    match view
        .channels
        .iter_mut()
        .find(|c| c.channel == source.channel && c.instance == source.instance)
    {
        Some(c) => {
            c.count += 1;
            c.first_at_us = c.first_at_us.min(at);
            c.last_at_us = c.last_at_us.max(at);
            if let Some(a) = &attribution
                && !c.attributions.contains(a)
            {
                c.attributions.push(a.clone());
            }
        }
        None => view.channels.push(ChannelEntry {
            channel: source.channel.clone(),
            instance: source.instance.clone(),
            first_at_us: at,
            last_at_us: at,
            count: 1,
            attributions: attribution.iter().cloned().collect(),
        }),
    }
    let touch = Touch {
        channel: source.channel.clone(),
        instance: source.instance.clone(),
        at_us: at,
        attribution: attribution.clone(),
        event_id: source.event_id.clone(),
    };
    if view
        .first_touch
        .as_ref()
        .is_none_or(|t| (at, &touch.event_id) < (t.at_us, &t.event_id))
    {
        view.first_touch = Some(touch);
    }
    if let Some(c) = &obs.consent
        && !c.marketing.is_empty()
    {
        view.consent.insert(
            if c.scope.is_empty() {
                source.channel.clone()
            } else {
                c.scope.clone()
            },
            ConsentEntry {
                status: c.marketing.clone(),
                source: source.clone(),
            },
        );
    }
    let interaction = obs.interaction.clone().unwrap_or_default();
    let order = interaction.order.unwrap_or_default();
    if !order.order_id.is_empty() {
        view.order_count += 1;
        view.order_total_cents += order.total_cents;
    }
    TimelineEntry {
        at_us: at,
        channel: source.channel.clone(),
        instance: source.instance.clone(),
        kind: interaction.kind,
        event_type: a.event_type.clone(),
        summary: interaction.summary,
        event_id: source.event_id.clone(),
        attribution,
        order_id: order.order_id,
        order_total_cents: order.total_cents,
        details: interaction.details,
    }
}

fn merge_views(survivor: &mut CustomerView, gone: CustomerView) {
    survivor.created_at_us = survivor.created_at_us.min(gone.created_at_us);
    survivor.updated_at_us = survivor.updated_at_us.max(gone.updated_at_us);
    for ident in gone.identifiers {
        match survivor
            .identifiers
            .iter_mut()
            .find(|i| i.kind == ident.kind && i.scope == ident.scope && i.normalized == ident.normalized)
        {
            Some(existing) => {
                for r in ident.raw {
                    if !existing.raw.contains(&r) {
                        existing.raw.push(r);
                    }
                }
            }
            None => survivor.identifiers.push(ident),
        }
    }
    for (name, field) in gone.fields {
        match survivor.fields.get_mut(&name) {
            None => {
                survivor.fields.insert(name, field);
            }
            // The most recent value wins; the other is kept in the history.
            Some(f) if field.source.occurred_at_us > f.source.occurred_at_us => {
                let old = std::mem::replace(f, field);
                f.previous.push(FieldValue {
                    value: old.value,
                    source: old.source,
                });
            }
            Some(f) => f.previous.push(FieldValue {
                value: field.value,
                source: field.source,
            }),
        }
    }
    for ch in gone.channels {
        match survivor
            .channels
            .iter_mut()
            .find(|c| c.channel == ch.channel && c.instance == ch.instance)
        {
            Some(c) => {
                c.count += ch.count;
                c.first_at_us = c.first_at_us.min(ch.first_at_us);
                c.last_at_us = c.last_at_us.max(ch.last_at_us);
                for a in ch.attributions {
                    if !c.attributions.contains(&a) {
                        c.attributions.push(a);
                    }
                }
            }
            None => survivor.channels.push(ch),
        }
    }
    if let Some(t) = gone.first_touch
        && survivor
            .first_touch
            .as_ref()
            .is_none_or(|s| (t.at_us, &t.event_id) < (s.at_us, &s.event_id))
    {
        survivor.first_touch = Some(t);
    }
    for (k, c) in gone.consent {
        survivor.consent.entry(k).or_insert(c);
    }
    survivor.order_count += gone.order_count;
    survivor.order_total_cents += gone.order_total_cents;
    survivor.timeline_count += gone.timeline_count;
    survivor.merged_from.push(gone.id);
    survivor.merged_from.extend(gone.merged_from);
}

#[cfg(test)]
mod tests {
    //! Given inbound events and identity decisions, then the views: a split view equals the
    //! view the customer would have had if it had never been merged.

    use std::sync::Arc;

    use domain::{CustomerService, DomainConfig, IdentityCommands};
    use proto::InboundEvent;
    use proto::inbound::*;
    use store::EventStore;
    use store::embedded::EmbeddedStore;

    use super::*;

    fn form(event_id: &str, at: i64, name: &str, identifiers: &[(&str, &str)]) -> InboundEvent {
        InboundEvent::FormSubmitted(FormSubmittedV1 {
            header: Some(InboundHeader {
                event_id: event_id.into(),
                channel: "web-form".into(),
                channel_instance: format!("form-{event_id}"),
                occurred_at_us: at,
                ..Default::default()
            }),
            form_id: "contact".into(),
            fields: Default::default(),
            observation: Some(Observation {
                subject: Some(SubjectData {
                    identifiers: identifiers
                        .iter()
                        .map(|(k, v)| RawIdentifier {
                            kind: (*k).into(),
                            value: (*v).into(),
                            scope: String::new(),
                        })
                        .collect(),
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
    }

    struct World {
        store: Arc<dyn EventStore>,
        service: CustomerService,
        projector: Projector,
    }

    fn world() -> World {
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().unwrap());
        let projector = Projector::new(ViewStore::temporary().unwrap(), phonenumber::country::Id::CN);
        World {
            service: CustomerService::new(store.clone(), DomainConfig::default()),
            store,
            projector,
        }
    }

    impl World {
        async fn handle(&self, events: &[InboundEvent]) {
            for e in events {
                self.service.handle(e).await.unwrap();
            }
        }
        /// Projects everything new, `batch` events at a time.
        async fn project(&self, batch: usize) {
            let after = self.projector.views().checkpoint().unwrap();
            let events = self.store.read_all(after, usize::MAX).await.unwrap();
            for chunk in events.chunks(batch) {
                self.projector.apply(chunk).unwrap();
            }
        }
        fn view(&self, id: &str) -> CustomerView {
            self.projector.views().get_view(id).unwrap().unwrap()
        }
        fn timeline(&self, id: &str) -> Vec<String> {
            let t = self.projector.views().timeline(id, 0, 100).unwrap();
            t.into_iter().map(|e| e.event_id).collect()
        }
    }

    fn id(inbound: &str) -> String {
        domain::service::new_customer_id(inbound, 0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_split_restores_the_view_the_absorbed_customer_would_have_had() {
        let e1 = form("e1", 1, "张伟", &[("phone", "13800138000")]);
        let e2 = form("e2", 2, "王芳", &[("email", "fang@example.com")]);
        let e3 = form("e3", 3, "", &[("phone", "13800138000"), ("email", "fang@example.com")]);
        let e4 = form("e4", 4, "张伟", &[("phone", "13800138000")]);

        let never_merged = world();
        never_merged.handle(std::slice::from_ref(&e2)).await;
        never_merged.project(1000).await;

        let w = world();
        w.handle(&[e1, e2, e3, e4]).await;
        w.project(2).await;
        let (c1, c2) = (id("e1"), id("e2"));
        assert_eq!(w.projector.views().resolve(&c2).unwrap(), c1);
        assert_eq!(w.timeline(&c1).len(), 4);
        let by_channel = |w: &World| w.projector.views().customer_ids(None, Some("web-form"), 10).unwrap();
        assert_eq!(
            by_channel(&never_merged),
            vec![c2.clone()],
            "a new customer is on its channel"
        );
        assert_eq!(by_channel(&w), vec![c1.clone()], "merged: one customer on the channel");

        IdentityCommands::new(w.store.clone())
            .split(&c1, &c2, "two people behind one phone", "alice")
            .await
            .unwrap();
        w.project(1).await;

        assert_eq!(w.view(&c2), never_merged.view(&c2));
        assert_eq!(w.timeline(&c2), vec!["e2".to_string()]);
        assert_eq!(w.timeline(&c1), vec!["e4", "e3", "e1"]);
        assert_eq!(w.projector.views().resolve(&c2).unwrap(), c2);
        let mut both = vec![c1.clone(), c2.clone()];
        both.sort();
        assert_eq!(by_channel(&w), both, "split: both customers on the channel again");
        let by_email = w
            .projector
            .views()
            .by_identifier("email", "", "fang@example.com")
            .unwrap();
        assert_eq!(by_email.map(|v| v.id), Some(c2.clone()));
        let survivor = w.view(&c1);
        assert!(survivor.merged_from.is_empty());
        assert_eq!(survivor.identifiers.len(), 1);
        assert_eq!(survivor.fields["name"].value, "张伟");
        let history = w.projector.views().merge_history(std::slice::from_ref(&c1)).unwrap();
        let kinds: Vec<(&str, &str)> = history.iter().map(|h| (h.kind.as_str(), h.rule.as_str())).collect();
        assert_eq!(kinds, vec![("merge", "shared_identifier"), ("split", "")]);
        assert_eq!(history[1].decided_by, "alice");

        // The same log projected in one batch gives the same views (views are a function of the log).
        let replayed = Projector::new(ViewStore::temporary().unwrap(), phonenumber::country::Id::CN);
        replayed
            .apply(&w.store.read_all(None, usize::MAX).await.unwrap())
            .unwrap();
        assert_eq!(
            replayed.views().digest().unwrap(),
            w.projector.views().digest().unwrap()
        );
        // And so does the in-memory rebuild, fed one event at a time across merge and split.
        let log = w.store.read_all(None, usize::MAX).await.unwrap();
        let mut rebuild = replayed.rebuild();
        for e in &log {
            rebuild.apply(std::slice::from_ref(e)).unwrap();
        }
        let mut digest = ViewDigest::default();
        for (k, v) in rebuild.into_entries().unwrap() {
            digest.add(&k, &v);
        }
        assert_eq!(digest.finish(), w.projector.views().digest().unwrap());
        // And fed the whole log decoded beforehand, as `worker::rebuild`'s reader does.
        let mut rebuild = replayed.rebuild();
        rebuild.apply_decoded(DecodedEvents::of(log.clone())).unwrap();
        let entries = rebuild.into_entries().unwrap();
        assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "in key order, each key once"
        );
        let mut digest = ViewDigest::default();
        for (k, v) in &entries {
            digest.add(k, v);
        }
        assert_eq!(digest.finish(), w.projector.views().digest().unwrap());
    }

    #[test]
    fn a_split_by_range_keeps_every_item_once_in_ascending_ranges() {
        for (n, parts) in [
            (0, 2),
            (1, 2),
            (2, 2),
            (5, 2),
            (7, 3),
            (9, 1),
            (3, 8),
            (5000, 2),
            (5000, 3),
        ] {
            let items: Vec<(u8, String, ())> = (0..n)
                .map(|i: u32| {
                    (
                        if i.is_multiple_of(3) { b'o' } else { b'v' },
                        format!("{:08x}", i.wrapping_mul(2_654_435_761)),
                        (),
                    )
                })
                .collect();
            let split = split_by_range(items.clone(), parts);
            assert!(
                split.len() <= parts.max(1) && split.iter().all(|p| !p.is_empty()),
                "{n} in {parts}"
            );
            for pair in split.windows(2) {
                let last = pair[0].iter().map(|(p, id, _)| (*p, id.clone())).max().unwrap();
                let first = pair[1].iter().map(|(p, id, _)| (*p, id.clone())).min().unwrap();
                assert!(last < first, "ranges in order");
            }
            let mut all: Vec<_> = split.into_iter().flatten().collect();
            let mut want = items;
            all.sort();
            want.sort();
            assert_eq!(all, want);
        }
    }

    #[test]
    fn a_merge_into_a_run_gives_every_key_once_in_order() {
        let kv = |k: &str| (k.as_bytes().to_vec(), k.as_bytes().to_vec());
        let run: KeyValues = ["a/1", "a/2", "c/1", "j/1", "j/2", "j/3", "t/1", "w/1"]
            .map(kv)
            .to_vec();
        let sorted: KeyValues = ["0", "o/1", "o/2", "t/1", "v/1", "v/2", "z"].map(kv).to_vec();
        let mut want: Vec<Vec<u8>> = run.iter().chain(&sorted).map(|(k, _)| k.clone()).collect();
        want.sort();
        want.dedup();
        for (r, s) in [
            (run.clone(), sorted.clone()),
            (Vec::new(), sorted.clone()),
            (run.clone(), Vec::new()),
        ] {
            let mut w: Vec<Vec<u8>> = r.iter().chain(&s).map(|(k, _)| k.clone()).collect();
            w.sort();
            w.dedup();
            let merged = merge_into(r, s);
            assert_eq!(merged.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), w);
        }
        let mut s = sorted;
        s[3].1 = b"typed".to_vec();
        let merged = merge_into(run, s);
        assert_eq!(merged.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
        let t1 = merged.iter().find(|(k, _)| k == b"t/1").unwrap();
        assert_eq!(t1.1, b"typed", "on a key in both, the sorted side's entry is kept");
        for at in 0..=8 {
            let run: KeyValues = ["b", "d", "f", "h", "j", "l", "n", "p"].map(kv).to_vec();
            for key in ["a", "b", "c", "o", "p", "q"] {
                let want = run[at.min(run.len())..]
                    .iter()
                    .position(|e| e.0.as_slice() >= key.as_bytes());
                let want = want.map_or(run.len(), |p| p + at.min(run.len()));
                assert_eq!(
                    gallop(&run, at.min(run.len()), key.as_bytes()),
                    want,
                    "from {at} for {key}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reviews_move_from_pending_to_their_decision() {
        let w = world();
        let address = "上海市浦东新区世纪大道100号";
        let mut e1 = form("e1", 1, "张伟", &[("phone", "13800138000")]);
        let mut e2 = form("e2", 2, "张伟", &[("email", "zw@example.com")]);
        for e in [&mut e1, &mut e2] {
            if let InboundEvent::FormSubmitted(f) = e {
                f.observation.as_mut().unwrap().subject.as_mut().unwrap().address = address.into();
            }
        }
        w.handle(&[e1, e2]).await;
        w.project(1000).await;
        let pending = w.projector.views().reviews("pending", None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        let review = &pending[0];
        assert_eq!(
            (review.customer_id.as_str(), review.candidate_id.as_str()),
            (id("e2").as_str(), id("e1").as_str())
        );
        assert!(
            review
                .comparisons
                .iter()
                .any(|c| c.field == "full_name" && c.level == "exact")
        );

        IdentityCommands::new(w.store.clone())
            .approve(&review.id, "bob")
            .await
            .unwrap();
        w.project(1000).await;
        assert!(w.projector.views().reviews("pending", None, 10).unwrap().is_empty());
        assert_eq!(
            w.projector.views().reviews("approved", None, 10).unwrap()[0].reviewer,
            "bob"
        );
        let merged = w.view(&id("e1"));
        assert_eq!(merged.merged_from, vec![id("e2")]);
        let history = w.projector.views().merge_history(&[id("e1")]).unwrap();
        assert_eq!(history[0].rule, "reviewer");
        assert_eq!(history[0].decided_by, "bob");
    }

    #[test]
    fn customer_keys_are_found_after_a_reopen_and_absent_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let put = |k: &str| (k.as_bytes().to_vec(), Some(b"c2".to_vec()));
        {
            let views = ViewStore::open(dir.path(), 1 << 20).unwrap();
            views
                .commit_writes(
                    vec![put("v/c1"), put("a/c3"), put("o/c1"), put("i/email::a@x.cn")],
                    true,
                )
                .unwrap();
            assert_eq!(views.get(b"a/c3").unwrap().as_deref(), Some(&b"c2"[..]));
        }
        // The filter is rebuilt from the table: what is there is found, what is not is not.
        let views = ViewStore::open(dir.path(), 1 << 20).unwrap();
        for key in ["v/c1", "a/c3", "o/c1", "i/email::a@x.cn"] {
            assert_eq!(views.get(key.as_bytes()).unwrap().as_deref(), Some(&b"c2"[..]), "{key}");
        }
        assert_eq!(views.resolve("c3").unwrap(), "c2");
        for key in ["v/c2", "a/c1", "o/c3"] {
            assert_eq!(views.get(key.as_bytes()).unwrap(), None, "{key}");
        }
    }

    #[test]
    fn an_identifier_resolves_to_its_newest_bucket_then_the_legacy_index() {
        let views = ViewStore::temporary().unwrap();
        let view = |id: &str| {
            let v = CustomerView {
                id: id.into(),
                ..Default::default()
            };
            (view_key(id), Some(encode(id, &v).unwrap()))
        };
        let at = |commit: u64| GlobalPosition {
            commit,
            prepare: commit,
        };
        let ident = |p: u64, email: &str, id: &str| {
            let key = ident_key(IDENT_BUCKET_EVENTS, at(p), "email", "", email);
            (key, Some(id.as_bytes().to_vec()))
        };
        let third = 2 * IDENT_BUCKET_EVENTS + 5;
        views
            .commit_writes(
                vec![
                    view("c1"),
                    view("c2"),
                    view("c3"),
                    // a@x.cn: c1, then c3 in a later bucket, then c2 in a later one still.
                    ident(7, "a@x.cn", "c1"),
                    ident(IDENT_BUCKET_EVENTS, "a@x.cn", "c3"),
                    ident(third, "a@x.cn", "c2"),
                    ident(third, "b@x.cn", "c3"),
                    (legacy_ident_key("email", "", "old@x.cn"), Some(b"c1".to_vec())),
                    (legacy_ident_key("email", "", "b@x.cn"), Some(b"c1".to_vec())),
                    (CHECKPOINT.to_vec(), Some(encode_position(at(third)))),
                ],
                true,
            )
            .unwrap();
        let owner = |email: &str| views.by_identifier("email", "", email).unwrap().map(|v| v.id);
        assert_eq!(
            owner("a@x.cn").as_deref(),
            Some("c2"),
            "the newest bucket shadows older ones"
        );
        assert_eq!(
            owner("b@x.cn").as_deref(),
            Some("c3"),
            "a bucket shadows the legacy index"
        );
        assert_eq!(
            owner("old@x.cn").as_deref(),
            Some("c1"),
            "the legacy index is still read"
        );
        assert_eq!(owner("none@x.cn"), None);
    }

    /// A view store records its bucket size when made; one written before sizes were
    /// recorded (a checkpoint, no size) keeps 65,536 events a bucket, so its keys stay
    /// those a rebuild of it writes.
    #[test]
    fn a_view_store_keeps_the_bucket_size_it_was_made_with() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        assert_eq!(
            ViewStore::open(&fresh, 1 << 20).unwrap().bucket_events,
            IDENT_BUCKET_EVENTS
        );
        assert_eq!(
            ViewStore::open(&fresh, 1 << 20).unwrap().bucket_events,
            IDENT_BUCKET_EVENTS
        );

        let old = dir.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        {
            let db = redb::Database::create(old.join(FILE)).unwrap();
            let write = db.begin_write().unwrap();
            let at = GlobalPosition { commit: 9, prepare: 9 };
            write
                .open_table(VIEWS)
                .unwrap()
                .insert(CHECKPOINT, encode_position(at).as_slice())
                .unwrap();
            write.commit().unwrap();
        }
        let views = ViewStore::open(&old, 1 << 20).unwrap();
        assert_eq!(views.bucket_events, IDENT_BUCKET_EVENTS_UNRECORDED);
        // Its identifiers go on into 65,536-event buckets; the digest ignores the setting.
        let projector = Projector::new(views.clone(), phonenumber::country::Id::CN);
        let e = CustomerEvent::IdentifierAttached(proto::customer::IdentifierAttachedV2 {
            customer_id: "c1".into(),
            identifiers: vec![Identifier {
                kind: "email".into(),
                normalized: "a@x.cn".into(),
                ..Default::default()
            }],
            provenance: None,
        })
        .to_new(uuid::Uuid::nil());
        let p = 3 * IDENT_BUCKET_EVENTS_UNRECORDED + 5;
        let recorded = RecordedEvent {
            stream: "customer-c1".into(),
            revision: 1,
            position: GlobalPosition { commit: p, prepare: p },
            event_id: e.event_id,
            event_type: e.event_type,
            data: e.data,
            metadata: Vec::new(),
            recorded_at_us: 0,
        };
        projector.apply(std::slice::from_ref(&recorded)).unwrap();
        assert!(
            views
                .get(&bucket_ident_key(3, "email", "", "a@x.cn"))
                .unwrap()
                .is_some()
        );
        let mut rebuild = projector.rebuild();
        rebuild.apply(std::slice::from_ref(&recorded)).unwrap();
        let entries = rebuild.into_entries().unwrap();
        let mut digest = ViewDigest::default();
        for (k, v) in &entries {
            digest.add(k, v);
        }
        assert_eq!(
            digest.finish(),
            views.digest().unwrap(),
            "rebuilt as the live store wrote it"
        );
        drop(projector);
        drop(views);
        assert_eq!(
            ViewStore::open(&old, 1 << 20).unwrap().bucket_events,
            IDENT_BUCKET_EVENTS_UNRECORDED,
            "recorded at the first open"
        );
    }

    #[tokio::test]
    async fn identifiers_written_far_into_the_log_are_found_and_follow_merges() {
        let w = world();
        w.handle(&[form("e1", 1_000, "王芳", &[("email", "fang@example.com")])])
            .await;
        w.project(1000).await;
        // The rest of the log as if a few buckets of other events had come between.
        w.handle(&[
            form("e2", 2_000, "王芳", &[("phone", "13800138000")]),
            form(
                "e3",
                3_000,
                "王芳",
                &[("email", "fang@example.com"), ("phone", "13800138000")],
            ),
        ])
        .await;
        let after = w.projector.views().checkpoint().unwrap();
        let mut later = w.store.read_all(after, usize::MAX).await.unwrap();
        for e in &mut later {
            e.position.commit += 3 * IDENT_BUCKET_EVENTS;
            e.position.prepare += 3 * IDENT_BUCKET_EVENTS;
        }
        w.projector.apply(&later).unwrap();
        let by = |kind: &str, value: &str| {
            w.projector
                .views()
                .by_identifier(kind, "", value)
                .unwrap()
                .map(|v| v.id)
        };
        let survivor = by("email", "fang@example.com").expect("the email is found");
        assert_eq!(by("phone", "+8613800138000").as_deref(), Some(survivor.as_str()));
        let view = w.view(&survivor);
        assert_eq!(view.identifiers.len(), 2, "{view:?}");
    }

    /// Streams written before V2 hold a `CustomerRegisteredV1`, one `IdentifierAttachedV1`
    /// per identifier and an `ActivityRecordedV1` where a `CustomerRegisteredV2` stands now,
    /// and one `IdentifierAttachedV1` per identifier where an `IdentifierAttachedV2` does:
    /// they project to the same views.
    #[tokio::test]
    async fn streams_written_before_v2_project_the_same_views() {
        use prost::Message;
        let w = world();
        w.handle(&[
            form(
                "e1",
                1_000,
                "王芳",
                &[("email", "fang@example.com"), ("phone", "13800138000")],
            ),
            form(
                "e2",
                2_000,
                "王芳",
                &[("phone", "138 0013 8000"), ("email", "wf@example.com")],
            ),
        ])
        .await;
        let log = w.store.read_all(None, usize::MAX).await.unwrap();
        let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["CustomerRegisteredV2", "IdentifierAttachedV2", "ActivityRecordedV1"]
        );
        // The same log as V1 wrote it, each event at the next position and revision.
        let mut v1_log: Vec<RecordedEvent> = Vec::new();
        let mut revisions: HashMap<String, u64> = HashMap::new();
        for e in &log {
            for part in CustomerEvent::from_recorded(e).unwrap().into_parts() {
                let written = match part {
                    CustomerEvent::IdentifierAttached(a) => a
                        .identifiers
                        .iter()
                        .map(|ident| {
                            let v1 = proto::customer::IdentifierAttachedV1 {
                                customer_id: a.customer_id.clone(),
                                identifier: Some(ident.clone()),
                                provenance: a.provenance.clone(),
                            };
                            ("IdentifierAttachedV1", v1.encode_to_vec())
                        })
                        .collect(),
                    other => vec![(other.type_name(), other.encode())],
                };
                for (event_type, data) in written {
                    let revision = revisions.entry(e.stream.clone()).or_default();
                    let n = v1_log.len() as u64;
                    v1_log.push(RecordedEvent {
                        event_type: event_type.into(),
                        data,
                        revision: *revision,
                        position: GlobalPosition { commit: n, prepare: n },
                        ..e.clone()
                    });
                    *revision += 1;
                }
            }
        }
        let types: Vec<&str> = v1_log.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "CustomerRegisteredV1",
                "IdentifierAttachedV1",
                "IdentifierAttachedV1",
                "ActivityRecordedV1",
                "IdentifierAttachedV1",
                "ActivityRecordedV1"
            ]
        );
        let v2 = Projector::new(ViewStore::temporary().unwrap(), phonenumber::country::Id::CN);
        v2.apply(&log).unwrap();
        let v1 = Projector::new(ViewStore::temporary().unwrap(), phonenumber::country::Id::CN);
        v1.apply(&v1_log).unwrap();
        let c = id("e1");
        let view = v1.views().customer(&c).unwrap().expect("the customer's view");
        let mut held: Vec<&str> = view.identifiers.iter().map(|i| i.normalized.as_str()).collect();
        held.sort();
        assert_eq!(held, ["+8613800138000", "fang@example.com", "wf@example.com"]);
        assert_eq!(Some(view.clone()), v2.views().customer(&c).unwrap());
        for (kind, value) in [
            ("email", "fang@example.com"),
            ("phone", "+8613800138000"),
            ("email", "wf@example.com"),
        ] {
            let owner = v1.views().by_identifier(kind, "", value).unwrap().map(|v| v.id);
            assert_eq!(owner.as_deref(), Some(c.as_str()), "{kind} {value}");
        }
    }

    #[test]
    fn long_values_are_stored_compressed_and_json_of_earlier_versions_still_reads() {
        let views = ViewStore::temporary().unwrap();
        let mut long = CustomerView {
            id: "c-long".into(),
            ..Default::default()
        };
        for (i, name) in ["name", "company", "industry", "region", "note"].iter().enumerate() {
            long.fields.insert(
                name.to_string(),
                FieldEntry {
                    value: format!("值{i}"),
                    source: Source {
                        event_id: "b0b804a8-2107-522a-8098-34f2ad72a8a2".into(),
                        channel: "import".into(),
                        instance: "visitors.csv".into(),
                        occurred_at_us: 1_772_323_620_000_000,
                    },
                    ..Default::default()
                },
            );
        }
        let short = CustomerView {
            id: "c-short".into(),
            ..Default::default()
        };
        let plain = postcard::to_stdvec(&long).unwrap();
        assert!(
            plain.len() > COMPRESS_FROM,
            "the test view must be long: {}",
            plain.len()
        );
        let stored = encode("c-long", &long).unwrap();
        assert_eq!(stored[0], LZ4_POSTCARD, "a long value is stored compressed");
        assert!(stored.len() < plain.len(), "{} >= {}", stored.len(), plain.len());
        let stored_short = encode("c-short", &short).unwrap();
        assert_eq!(stored_short[0], POSTCARD, "a short value is stored uncompressed");
        assert_eq!(stored_short[1..], postcard::to_stdvec(&short).unwrap());
        // The thread's buffers and table leave no trace: the bytes are lz4_flex's own
        // framing of the value, however often and in whatever order values are encoded.
        assert_eq!(stored[1..], lz4_flex::compress_prepend_size(&plain));
        assert_eq!(encode("c-long", &long).unwrap(), stored);
        assert_eq!(encode("c-short", &short).unwrap(), stored_short);
        let renamed = |id: &str| CustomerView {
            id: id.into(),
            ..long.clone()
        };
        let json_lz4 = |v: &CustomerView| {
            let mut out = vec![LZ4];
            out.extend_from_slice(&lz4_flex::compress_prepend_size(&serde_json::to_vec(v).unwrap()));
            out
        };
        views
            .commit_writes(
                vec![
                    (view_key("c-long"), Some(stored)),
                    (view_key("c-short"), Some(stored_short)),
                    // As versions before postcard wrote them: LZ4 JSON, and before
                    // compression plain JSON.
                    (view_key("c-lz4"), Some(json_lz4(&renamed("c-lz4")))),
                    (view_key("c-old"), Some(serde_json::to_vec(&renamed("c-old")).unwrap())),
                    (view_key("c-bad"), Some(vec![LZ4, 200, 0, 0, 0, 1, 2, 3])),
                    (view_key("c-cut"), Some(vec![POSTCARD, 9, b'c'])),
                ],
                false,
            )
            .unwrap();
        assert_eq!(views.customer("c-long").unwrap(), Some(long.clone()));
        assert_eq!(views.customer("c-short").unwrap(), Some(short));
        assert_eq!(views.customer("c-lz4").unwrap(), Some(renamed("c-lz4")));
        assert_eq!(views.customer("c-old").unwrap(), Some(renamed("c-old")));
        let err = views.customer("c-bad").unwrap_err().to_string();
        assert!(
            err.contains("v/c-bad") && err.contains("does not decompress"),
            "a damaged value names its key and what is wrong: {err}"
        );
        let err = views.customer("c-cut").unwrap_err().to_string();
        assert!(
            err.contains("v/c-cut")
                && err.contains("does not decode as a CustomerView")
                && err.contains("`views` folder"),
            "a value cut short names its key, what is wrong and what to do: {err}"
        );
    }

    /// Postcard stores fields by position: these bytes were written by the current layout of
    /// the stored types. If this fails, the layout changed: give the new layout a format
    /// byte of its own and keep reading this one (or tell users to rebuild), then update
    /// the bytes.
    #[test]
    fn stored_values_of_this_layout_still_decode() {
        let source = Source {
            event_id: "e1".into(),
            channel: "web".into(),
            instance: "f".into(),
            occurred_at_us: 7,
        };
        let attribution = crate::view::Attribution {
            utm_source: "s".into(),
            utm_medium: "m".into(),
            utm_campaign: "c".into(),
            utm_term: "t".into(),
            utm_content: "x".into(),
            referrer: "r".into(),
        };
        let view = CustomerView {
            id: "c1".into(),
            created_at_us: 1,
            updated_at_us: 2,
            identifiers: vec![IdentifierEntry {
                kind: "phone".into(),
                normalized: "+86".into(),
                scope: "".into(),
                raw: vec!["86".into()],
                source: source.clone(),
            }],
            fields: [(
                "name".to_string(),
                FieldEntry {
                    value: "张".into(),
                    source: source.clone(),
                    previous: vec![FieldValue {
                        value: "王".into(),
                        source: source.clone(),
                    }],
                },
            )]
            .into(),
            channels: vec![ChannelEntry {
                channel: "web".into(),
                instance: "f".into(),
                first_at_us: 3,
                last_at_us: 4,
                count: 5,
                attributions: vec![attribution.clone()],
            }],
            first_touch: Some(Touch {
                channel: "web".into(),
                instance: "f".into(),
                at_us: 3,
                attribution: Some(attribution.clone()),
                event_id: "e1".into(),
            }),
            consent: [(
                "web".to_string(),
                ConsentEntry {
                    status: "granted".into(),
                    source,
                },
            )]
            .into(),
            order_count: 6,
            order_total_cents: -8,
            timeline_count: 9,
            merged_from: vec!["c0".into()],
        };
        let entry = TimelineEntry {
            at_us: 3,
            channel: "web".into(),
            instance: "f".into(),
            kind: "form".into(),
            event_type: "contact".into(),
            summary: "hi".into(),
            event_id: "e1".into(),
            attribution: Some(attribution),
            order_id: "o1".into(),
            order_total_cents: 100,
            details: [("k".to_string(), "v".to_string())].into(),
        };
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let view_bytes = encode("c1", &view).unwrap();
        let entry_bytes = encode("c1", &entry).unwrap();
        expect_test::expect!["060263310204010570686f6e65032b383600010238360265310377656201660e01046e616d6503e5bca00265310377656201660e0103e78e8b0265310377656201660e01037765620166060805010173016d01630174017801720103776562016606010173016d01630174017801720265310103776562076772616e7465640265310377656201660e060f0901026330"].assert_eq(&hex(&view_bytes));
        expect_test::expect![
            "060603776562016604666f726d07636f6e74616374026869026531010173016d0163017401780172026f31c80101016b0176"
        ]
        .assert_eq(&hex(&entry_bytes));
        assert_eq!(decode::<CustomerView>(b"v/c1", &view_bytes).unwrap(), view);
        assert_eq!(decode::<TimelineEntry>(b"t/c1", &entry_bytes).unwrap(), entry);
    }
}
