//! The embedded bus: a durable append-only log on local disk (one partition).
//!
//! Layout under the bus directory: `inbound.log` and `dead-letter.log`, each a
//! sequence of frames `len: u32 LE | crc32: u32 LE | record (protobuf)`, and
//! `offsets/<group>` holding a group's committed offset. A single writer thread
//! group-commits: it writes every pending record, `fdatasync`s once, and only then
//! acknowledges the publishers of that batch. On open, a torn tail (a crash in
//! the middle of a write, never acknowledged) is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Ack, Bus, BusConsumer, BusError, BusRecord, DeadLetter, Delivery, PartitionLag, Position};

/// Largest record accepted (payload + key + headers).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
const HEADER_ORIGINAL_OFFSET: &str = "dlq-original-offset";

#[derive(Clone, PartialEq, prost::Message)]
struct WireRecord {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(btree_map = "string, string", tag = "2")]
    headers: std::collections::BTreeMap<String, String>,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

type Pending = (BusRecord, oneshot::Sender<Result<i64, BusError>>);

/// One append-only log file with its in-memory offset index.
struct Log {
    path: PathBuf,
    /// Byte position of each record's frame; `index.len()` is the end offset.
    index: RwLock<Vec<u64>>,
    end_tx: watch::Sender<i64>,
    tx: mpsc::UnboundedSender<Pending>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BusError + '_ {
    move |source| BusError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Scans a log file, returns the frame positions of its valid records and the valid length.
fn scan(path: &Path) -> Result<(Vec<u64>, u64), BusError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut index = Vec::new();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 8];
        if read_full(&mut reader, &mut head).map_err(io_err(path))? < 8 {
            break;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD_BYTES {
            break;
        }
        buf.resize(len, 0);
        if read_full(&mut reader, &mut buf).map_err(io_err(path))? < len || crc32fast::hash(&buf) != crc {
            break;
        }
        index.push(pos);
        pos += 8 + len as u64;
    }
    Ok((index, pos))
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl Log {
    fn open(path: PathBuf) -> Result<Arc<Log>, BusError> {
        let (index, valid_len) = scan(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let actual = file.metadata().map_err(io_err(&path))?.len();
        if actual > valid_len {
            tracing::warn!(path = %path.display(), cut_bytes = actual - valid_len, "cutting torn tail of bus log");
            file.set_len(valid_len).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        // The writer appends after the last valid record.
        (&file).seek(SeekFrom::Start(valid_len)).map_err(io_err(&path))?;
        let (end_tx, _) = watch::channel(index.len() as i64);
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Log {
            path: path.clone(),
            index: RwLock::new(index),
            end_tx,
            tx,
        });
        let writer_log = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("bus-writer".into())
            .spawn(move || writer_loop(writer_log, file, valid_len, rx))
            .map_err(io_err(&path))?;
        Ok(log)
    }

    fn end(&self) -> i64 {
        self.index.read().map(|i| i.len() as i64).unwrap_or_default()
    }

    async fn append(&self, record: BusRecord) -> Result<i64, BusError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        self.tx.send((record, ack_tx)).map_err(|_| BusError::Closed)?;
        ack_rx.await.map_err(|_| BusError::Closed)?
    }

    /// Reads records `[from, from + max)` that exist now.
    fn read(
        &self,
        reader: &mut Option<BufReader<File>>,
        from: i64,
        max: usize,
    ) -> Result<Vec<(i64, BusRecord)>, BusError> {
        let (start_pos, count) = {
            let index = self
                .index
                .read()
                .map_err(|_| BusError::Other("bus index lock poisoned".into()))?;
            let from_u = from.max(0) as usize;
            if from_u >= index.len() {
                return Ok(Vec::new());
            }
            (index[from_u], (index.len() - from_u).min(max))
        };
        let reader = match reader {
            Some(r) => r,
            None => reader.insert(BufReader::with_capacity(
                1 << 20,
                File::open(&self.path).map_err(io_err(&self.path))?,
            )),
        };
        reader.seek(SeekFrom::Start(start_pos)).map_err(io_err(&self.path))?;
        let mut out = Vec::with_capacity(count);
        let mut buf = Vec::new();
        for i in 0..count {
            let offset = from + i as i64;
            let corrupt = |reason: &str| BusError::Corrupt {
                path: self.path.display().to_string(),
                offset: offset as u64,
                reason: reason.to_string(),
            };
            let mut head = [0u8; 8];
            reader.read_exact(&mut head).map_err(io_err(&self.path))?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len > MAX_RECORD_BYTES {
                return Err(corrupt("frame length over the limit"));
            }
            buf.resize(len, 0);
            reader.read_exact(&mut buf).map_err(io_err(&self.path))?;
            if crc32fast::hash(&buf) != crc {
                return Err(corrupt("checksum mismatch"));
            }
            let wire = WireRecord::decode(buf.as_slice()).map_err(|e| corrupt(&e.to_string()))?;
            out.push((
                offset,
                BusRecord {
                    key: wire.key,
                    headers: wire.headers,
                    payload: wire.payload,
                },
            ));
        }
        Ok(out)
    }
}

/// The single writer: batch, write, fdatasync, then acknowledge.
fn writer_loop(log: std::sync::Weak<Log>, file: File, mut len: u64, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(log) = log.upgrade() else { return };
        let mut positions = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut result: Result<(), std::io::Error> = Ok(());
        let start_len = len;
        for (record, ack) in batch {
            let wire = WireRecord {
                key: record.key,
                headers: record.headers,
                payload: record.payload,
            }
            .encode_to_vec();
            if wire.len() > MAX_RECORD_BYTES {
                let _ = ack.send(Err(BusError::Other(format!(
                    "record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit",
                    wire.len()
                ))));
                continue;
            }
            let mut frame = Vec::with_capacity(8 + wire.len());
            frame.extend_from_slice(&(wire.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(&wire).to_le_bytes());
            frame.extend_from_slice(&wire);
            if result.is_ok() {
                result = out.write_all(&frame);
            }
            positions.push(len);
            len += frame.len() as u64;
            acks.push(ack);
        }
        if result.is_ok() {
            result = out.flush().and_then(|_| out.get_ref().sync_data());
        }
        match result {
            Ok(()) => {
                let first_offset = {
                    let Ok(mut index) = log.index.write() else { return };
                    let first = index.len() as i64;
                    index.extend_from_slice(&positions);
                    first
                };
                log.end_tx.send_replace(first_offset + positions.len() as i64);
                for (i, ack) in acks.into_iter().enumerate() {
                    let _ = ack.send(Ok(first_offset + i as i64));
                }
                metrics::counter!("bus_embedded_appended_total").increment(positions.len() as u64);
                metrics::histogram!("bus_embedded_group_commit_size").record(positions.len() as f64);
            }
            Err(e) => {
                tracing::error!(path = %log.path.display(), error = %e, "bus write failed; publishers get an error");
                // Cut what may have been partly written so the log stays a clean sequence.
                let _ = out.get_ref().set_len(start_len);
                let _ = out.seek(SeekFrom::Start(start_len));
                len = start_len;
                for ack in acks {
                    let _ = ack.send(Err(BusError::Unavailable(format!(
                        "write to {} failed: {e}",
                        log.path.display()
                    ))));
                }
            }
        }
    }
}

/// The embedded bus: one partition (0), durable on publish.
#[derive(Clone)]
pub struct EmbeddedBus {
    dir: PathBuf,
    inbound: Arc<Log>,
    dead: Arc<Log>,
}

impl EmbeddedBus {
    /// Opens (or creates) the bus in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path) -> Result<Self, BusError> {
        fs::create_dir_all(dir.join("offsets")).map_err(io_err(dir))?;
        Ok(EmbeddedBus {
            dir: dir.to_path_buf(),
            inbound: Log::open(dir.join("inbound.log"))?,
            dead: Log::open(dir.join("dead-letter.log"))?,
        })
    }

    fn offset_path(&self, group: &str) -> Result<PathBuf, BusError> {
        if group.is_empty()
            || !group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(BusError::Config(format!(
                "consumer group {group:?} must be non-empty and use only letters, digits, '-', '_', '.'"
            )));
        }
        Ok(self.dir.join("offsets").join(group))
    }

    /// Number of records in the inbound log.
    pub fn end_offset(&self) -> i64 {
        self.inbound.end()
    }
}

fn read_committed(path: &Path) -> Result<i64, BusError> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| BusError::Corrupt {
            path: path.display().to_string(),
            offset: 0,
            reason: format!("committed offset {s:?} is not a number"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes the committed offset atomically and durably (temp file, fsync, rename, fsync dir).
fn write_committed(path: &Path, offset: i64) -> Result<(), BusError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(offset.to_string().as_bytes()).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, record: BusRecord) -> Result<Ack, BusError> {
        let offset = self.inbound.append(record).await?;
        Ok(Ack {
            position: Position { partition: 0, offset },
        })
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let path = self.offset_path(group)?;
        let committed = read_committed(&path)?;
        Ok(Box::new(EmbeddedConsumer {
            log: self.inbound.clone(),
            end_rx: self.inbound.end_tx.subscribe(),
            offset_path: path,
            committed,
            next: committed,
            reader: None,
        }))
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let mut record = delivery.record.clone();
        record.headers.insert(crate::HEADER_DLQ_REASON.into(), reason.into());
        record
            .headers
            .insert(HEADER_ORIGINAL_OFFSET.into(), delivery.position.offset.to_string());
        self.dead.append(record).await?;
        metrics::counter!("bus_dead_letters_total").increment(1);
        Ok(())
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let log = self.dead.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = None;
            let records = log.read(&mut reader, 0, max)?;
            Ok(records
                .into_iter()
                .map(|(offset, record)| DeadLetter {
                    position: Position { partition: 0, offset },
                    original: record
                        .header(HEADER_ORIGINAL_OFFSET)
                        .and_then(|o| o.parse().ok())
                        .map(|offset| Position { partition: 0, offset }),
                    reason: record.header(crate::HEADER_DLQ_REASON).unwrap_or_default().to_string(),
                    record,
                })
                .collect())
        })
        .await
        .map_err(|e| BusError::Other(e.to_string()))?
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

struct EmbeddedConsumer {
    log: Arc<Log>,
    end_rx: watch::Receiver<i64>,
    offset_path: PathBuf,
    committed: i64,
    next: i64,
    reader: Option<BufReader<File>>,
}

#[async_trait::async_trait]
impl BusConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if *self.end_rx.borrow_and_update() <= self.next {
            let next = self.next;
            let _ = tokio::time::timeout(wait, self.end_rx.wait_for(|end| *end > next)).await;
        }
        let records = self.log.read(&mut self.reader, self.next, max)?;
        if let Some((last, _)) = records.last() {
            self.next = last + 1;
        }
        Ok(records
            .into_iter()
            .map(|(offset, record)| Delivery {
                position: Position { partition: 0, offset },
                record,
            })
            .collect())
    }

    async fn commit(&mut self, processed: &[Position]) -> Result<(), BusError> {
        let Some(&last) = crate::commit_targets(processed).get(&0) else {
            return Ok(());
        };
        if last < self.committed {
            return Ok(());
        }
        let path = self.offset_path.clone();
        tokio::task::spawn_blocking(move || write_committed(&path, last + 1))
            .await
            .map_err(|e| BusError::Other(e.to_string()))??;
        self.committed = last + 1;
        Ok(())
    }

    async fn lag(&self) -> Result<Vec<PartitionLag>, BusError> {
        Ok(vec![PartitionLag {
            partition: 0,
            committed: self.committed,
            high_watermark: self.log.end(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, payload: &str) -> BusRecord {
        BusRecord {
            key: key.into(),
            headers: [("event-id".to_string(), payload.to_string())].into(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn publish_consume_commit_resume_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = EmbeddedBus::open(dir.path()).unwrap();
            for i in 0..10 {
                let ack = bus.publish(rec("k", &format!("p{i}"))).await.unwrap();
                assert_eq!(ack.position.offset, i);
            }
            let mut c = bus.consumer("g").await.unwrap();
            let got = c.poll(4, Duration::from_millis(10)).await.unwrap();
            assert_eq!(got.len(), 4);
            assert_eq!(got[3].record, rec("k", "p3"));
            c.commit(&[got[3].position]).await.unwrap();
        }
        // a torn write after the last acknowledged record
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("inbound.log"))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        assert_eq!(bus.end_offset(), 10);
        let mut c = bus.consumer("g").await.unwrap();
        let got = c.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(got.first().map(|d| d.position.offset), Some(4));
        assert_eq!(got.len(), 6);
        let ack = bus.publish(rec("k", "p10")).await.unwrap();
        assert_eq!(ack.position.offset, 10);
        let got = c.poll(100, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(c.lag().await.unwrap()[0].high_watermark, 11);
    }

    #[tokio::test]
    async fn dead_letters_keep_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        bus.publish(rec("k", "bad")).await.unwrap();
        let mut c = bus.consumer("g").await.unwrap();
        let d = c.poll(1, Duration::from_millis(10)).await.unwrap().remove(0);
        bus.dead_letter(&d, "unknown schema").await.unwrap();
        let dl = bus.dead_letters(10).await.unwrap();
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].reason, "unknown schema");
        assert_eq!(
            dl[0].original,
            Some(Position {
                partition: 0,
                offset: 0
            })
        );
    }
}
