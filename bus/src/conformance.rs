//! The conformance suite every [`Bus`] implementation must pass, backend-agnostic.
//!
//! Each check is a `pub async fn` taking `&dyn Bus` that panics with a message
//! saying which promise of the port was broken; [`run_all`] runs them in turn.
//! The checks tolerate a bus that already holds other data (a shared broker, a
//! reused data directory, other runs): every check uses keys and group names
//! with a fresh random suffix and looks only at its own records. Every wait is
//! bounded, so a broken bus fails the suite instead of hanging it.
//!
//! What is not here: crash/durability tests (they depend on how a backend
//! stores data) and throughput figures (see `examples/`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use crate::{
    Ack, Bus, BusConsumer, BusRecord, Delivery, HEADER_EVENT_ID, HEADER_SCHEMA, HEADER_SCHEMA_VERSION, Position,
};

/// Longest wait for any single bus call (publish, consumer, commit, ...).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a consumer to receive the records a check expects. Generous:
/// a broker's first group join creates its offsets topic, which is slow on a loaded machine.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `poll` may wait.
const POLL_WAIT: Duration = Duration::from_millis(250);
/// Records asked for per `poll`.
const POLL_MAX: usize = 500;
/// How many dead letters a check asks for: the DLQ may already hold others' letters.
const DEAD_LETTER_SCAN: usize = 100_000;
/// Header the suite puts on its records: the record's index within its check.
const HEADER_SEQ: &str = "conformance-seq";

/// Runs every check in this module against `bus`.
pub async fn run_all(bus: &dyn Bus) {
    publish_returns_acks(bus).await;
    new_group_receives_everything_in_order_per_key(bus).await;
    headers_and_keys_round_trip(bus).await;
    commit_then_resume(bus).await;
    groups_are_independent(bus).await;
    dead_letters_are_listed_with_reason(bus).await;
    lag_is_sensible(bus).await;
}

/// `publish` answers an [`Ack`] per record; records with one key land in one
/// partition at strictly increasing offsets.
pub async fn publish_returns_acks(bus: &dyn Bus) {
    let run = Run::new(bus, "acks");
    let key = run.key(0);
    let acks = run.publish_seq(&key, 5).await;
    for pair in acks.windows(2) {
        let (a, b) = (pair[0].position, pair[1].position);
        assert_eq!(
            a.partition, b.partition,
            "[{}] records with one key {key:?} were acknowledged in different partitions: {a:?} then {b:?}",
            run.kind
        );
        assert!(
            b.offset > a.offset,
            "[{}] records with one key {key:?} were acknowledged at non-increasing offsets: {a:?} then {b:?}",
            run.kind
        );
    }
    for ack in &acks {
        assert!(
            ack.position.partition >= 0 && ack.position.offset >= 0,
            "[{}] publish acknowledged an impossible position {:?}",
            run.kind,
            ack.position
        );
    }
}

/// A consumer in a new group receives every record published, each key's
/// records in publish order, at the positions the publish acknowledged.
pub async fn new_group_receives_everything_in_order_per_key(bus: &dyn Bus) {
    let run = Run::new(bus, "order");
    const KEYS: usize = 4;
    const PER_KEY: usize = 25;
    let mut acks: BTreeMap<String, Vec<Ack>> = BTreeMap::new();
    // Interleave keys so per-key order is not just global order by accident of batching.
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let key = run.key(k);
            let ack = run.publish(run.record(&key, seq)).await;
            acks.entry(key).or_default().push(ack);
        }
    }
    let mut consumer = run.consumer(&run.group(0)).await;
    let got = run.receive(consumer.as_mut(), KEYS * PER_KEY, "a new group").await;

    let mut by_key: BTreeMap<String, Vec<&Delivery>> = BTreeMap::new();
    for d in &got {
        by_key.entry(d.record.key.clone()).or_default().push(d);
    }
    for (key, key_acks) in &acks {
        let delivered = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        let seqs: Vec<usize> = delivered.iter().map(|d| seq_of(d)).collect();
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(
            seqs, expected,
            "[{}] key {key:?}: records were not delivered once each in publish order",
            run.kind
        );
        let positions: Vec<Position> = delivered.iter().map(|d| d.position).collect();
        let acked: Vec<Position> = key_acks.iter().map(|a| a.position).collect();
        assert_eq!(
            positions, acked,
            "[{}] key {key:?}: delivered positions differ from the acknowledged ones",
            run.kind
        );
    }
}

/// Keys, headers (including the well-known ones and non-ASCII values) and
/// payloads (binary, empty) come out exactly as they went in.
pub async fn headers_and_keys_round_trip(bus: &dyn Bus) {
    let run = Run::new(bus, "roundtrip");
    let mut sent = Vec::new();
    let mut binary: Vec<u8> = (0..=255u8).collect();
    binary.extend_from_slice(b"\0\r\n");
    let payloads: [Vec<u8>; 3] = [binary, Vec::new(), "客户 ✓ données".as_bytes().to_vec()];
    for (seq, payload) in payloads.into_iter().enumerate() {
        // Keys that look like the real ones: channel + channel-side subject id.
        let key = format!("{}:wechat:oXyZ-客户-{seq}", run.prefix);
        let mut record = run.record(&key, seq);
        record.headers.insert(HEADER_EVENT_ID.into(), format!("01J{seq:023}"));
        record
            .headers
            .insert(HEADER_SCHEMA.into(), "crm.inbound.v1.FormSubmittedV1".into());
        record.headers.insert(HEADER_SCHEMA_VERSION.into(), "1".into());
        record.headers.insert("x-note".into(), "名前 = ümlaut; a=b, c".into());
        record.headers.insert("x-empty".into(), String::new());
        record.payload = payload;
        run.publish(record.clone()).await;
        sent.push(record);
    }
    let mut consumer = run.consumer(&run.group(0)).await;
    let got = run.receive(consumer.as_mut(), sent.len(), "a new group").await;
    let mut got: Vec<BusRecord> = got.into_iter().map(|d| d.record).collect();
    got.sort_by_key(|r| r.header(HEADER_SEQ).map(str::to_owned));
    assert_eq!(got, sent, "[{}] records did not round-trip unchanged", run.kind);
}

/// After a commit, a new consumer in the same group resumes right after the
/// committed offset: committed records are not delivered again, uncommitted ones are.
pub async fn commit_then_resume(bus: &dyn Bus) {
    let run = Run::new(bus, "resume");
    const TOTAL: usize = 10;
    const COMMITTED: usize = 6;
    let key = run.key(0);
    run.publish_seq(&key, TOTAL).await;
    let group = run.group(0);

    let mut first = run.consumer(&group).await;
    let got = run.receive(first.as_mut(), TOTAL, "the first consumer").await;
    let processed: Vec<Position> = got
        .iter()
        .filter(|d| seq_of(d) < COMMITTED)
        .map(|d| d.position)
        .collect();
    run.call("commit", first.commit(&processed)).await;
    drop(first);

    let mut second = run.consumer(&group).await;
    let redelivered = run
        .receive_seqs(
            second.as_mut(),
            (COMMITTED..TOTAL).collect(),
            "a consumer resuming the group",
        )
        .await;
    let seqs: Vec<usize> = redelivered.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (COMMITTED..TOTAL).collect::<Vec<_>>(),
        "[{}] group {group:?} committed records 0..{COMMITTED} of {TOTAL}; the next consumer must get exactly \
         {COMMITTED}..{TOTAL} (committed ones not again, uncommitted ones again)",
        run.kind
    );
}

/// Two groups each receive everything; commits in one do not move the other.
pub async fn groups_are_independent(bus: &dyn Bus) {
    let run = Run::new(bus, "groups");
    const TOTAL: usize = 8;
    let key = run.key(0);
    run.publish_seq(&key, TOTAL).await;

    let mut a = run.consumer(&run.group(0)).await;
    let got_a = run.receive(a.as_mut(), TOTAL, "group A").await;
    let all: Vec<Position> = got_a.iter().map(|d| d.position).collect();
    run.call("commit", a.commit(&all)).await;
    drop(a);

    let mut b = run.consumer(&run.group(1)).await;
    let got_b = run
        .receive(b.as_mut(), TOTAL, "group B after group A committed everything")
        .await;
    let seqs: Vec<usize> = got_b.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (0..TOTAL).collect::<Vec<_>>(),
        "[{}] group B must receive everything regardless of group A's commits",
        run.kind
    );

    // Group A, resumed, gets only what was published after its commit: a
    // redelivery of a committed record would come before the new one.
    run.publish(run.record(&key, TOTAL)).await;
    let mut a_again = run.consumer(&run.group(0)).await;
    let got = run.receive_seqs(a_again.as_mut(), vec![TOTAL], "group A resumed").await;
    let seqs: Vec<usize> = got.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        vec![TOTAL],
        "[{}] group A committed all {TOTAL} records; resumed, it must get only the one published since",
        run.kind
    );
}

/// `dead_letter` sets a delivery aside with its reason; `dead_letters` lists
/// it, oldest first, with the original position and the record unchanged.
pub async fn dead_letters_are_listed_with_reason(bus: &dyn Bus) {
    let run = Run::new(bus, "dlq");
    let key = run.key(0);
    run.publish_seq(&key, 3).await;
    let mut consumer = run.consumer(&run.group(0)).await;
    let got = run.receive(consumer.as_mut(), 3, "a new group").await;
    let poison = [&got[0], &got[2]];
    let reasons = [
        format!("undecodable payload ({})", run.prefix),
        format!("unknown schema crm.inbound.v9.Nope ({})", run.prefix),
    ];
    for (d, reason) in poison.iter().zip(&reasons) {
        run.call("dead_letter", bus.dead_letter(d, reason)).await;
    }

    let letters = run.call("dead_letters", bus.dead_letters(DEAD_LETTER_SCAN)).await;
    assert!(
        letters.len() <= DEAD_LETTER_SCAN,
        "[{}] dead_letters({DEAD_LETTER_SCAN}) returned {} letters",
        run.kind,
        letters.len()
    );
    let ours: Vec<_> = letters.iter().filter(|l| l.record.key == key).collect();
    assert_eq!(
        ours.len(),
        2,
        "[{}] expected our 2 dead letters (key {key:?}) among {} listed, found {}",
        run.kind,
        letters.len(),
        ours.len()
    );
    for ((letter, d), reason) in ours.iter().zip(poison).zip(&reasons) {
        assert_eq!(&letter.reason, reason, "[{}] dead letter reason", run.kind);
        assert_eq!(
            letter.original,
            Some(d.position),
            "[{}] dead letter must point at the original position",
            run.kind
        );
        assert_eq!(letter.record.key, d.record.key, "[{}] dead letter key", run.kind);
        assert_eq!(
            letter.record.payload, d.record.payload,
            "[{}] dead letter payload",
            run.kind
        );
        for (name, value) in &d.record.headers {
            assert_eq!(
                letter.record.header(name),
                Some(value.as_str()),
                "[{}] dead letter lost or changed header {name:?}",
                run.kind
            );
        }
    }
    let (first, second) = (ours[0].position, ours[1].position);
    assert!(
        first.partition != second.partition || first.offset < second.offset,
        "[{}] dead letters must be listed oldest first: {:?} then {:?}",
        run.kind,
        first,
        second
    );
}

/// `lag` reports, per owned partition, committed ≤ high watermark; after a
/// commit the committed offset of that partition is the last processed + 1.
pub async fn lag_is_sensible(bus: &dyn Bus) {
    let run = Run::new(bus, "lag");
    const TOTAL: usize = 6;
    let key = run.key(0);
    let acks = run.publish_seq(&key, TOTAL).await;
    let partition = acks[0].position.partition;
    let last = acks[TOTAL - 1].position.offset;

    let mut consumer = run.consumer(&run.group(0)).await;
    let got = run.receive(consumer.as_mut(), TOTAL, "a new group").await;

    let before = run.call("lag", consumer.lag()).await;
    let entry = find_partition(&run, &before, partition, "before any commit");
    assert!(
        entry.high_watermark > last,
        "[{}] high watermark {} of partition {partition} must be past the last published offset {last}",
        run.kind,
        entry.high_watermark
    );
    assert!(
        entry.committed <= acks[0].position.offset,
        "[{}] nothing was committed yet, but partition {partition} reports committed {} past our first \
         record at {}",
        run.kind,
        entry.committed,
        acks[0].position.offset
    );
    check_lag_entries(&run, &before);

    let upto = 3;
    let processed: Vec<Position> = got.iter().filter(|d| seq_of(d) < upto).map(|d| d.position).collect();
    let committed_to = acks[upto - 1].position.offset + 1;
    run.call("commit", consumer.commit(&processed)).await;
    let after = run.call("lag", consumer.lag()).await;
    let entry = find_partition(&run, &after, partition, "after a commit");
    assert_eq!(
        entry.committed,
        committed_to,
        "[{}] after committing up to offset {} in partition {partition}, lag must report committed {}",
        run.kind,
        committed_to - 1,
        committed_to
    );
    assert!(
        entry.high_watermark - entry.committed >= (TOTAL - upto) as i64,
        "[{}] lag of partition {partition} is {} but {} of our records are still uncommitted",
        run.kind,
        entry.high_watermark - entry.committed,
        TOTAL - upto
    );
    check_lag_entries(&run, &after);
}

fn find_partition<'a>(
    run: &Run<'_>,
    lag: &'a [crate::PartitionLag],
    partition: i32,
    when: &str,
) -> &'a crate::PartitionLag {
    lag.iter().find(|l| l.partition == partition).unwrap_or_else(|| {
        panic!(
            "[{}] {when}: lag has no entry for partition {partition}, which this consumer reads from: {lag:?}",
            run.kind
        )
    })
}

fn check_lag_entries(run: &Run<'_>, lag: &[crate::PartitionLag]) {
    let mut seen = BTreeSet::new();
    for l in lag {
        assert!(
            seen.insert(l.partition),
            "[{}] lag lists partition {} twice",
            run.kind,
            l.partition
        );
        assert!(
            0 <= l.committed && l.committed <= l.high_watermark,
            "[{}] lag entry must have 0 <= committed <= high watermark: {l:?}",
            run.kind
        );
    }
}

fn seq_of(d: &Delivery) -> usize {
    d.record
        .header(HEADER_SEQ)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a conformance record lost its {HEADER_SEQ:?} header: {d:?}"))
}

/// One check's namespace on the bus: keys and groups with a random suffix.
struct Run<'a> {
    bus: &'a dyn Bus,
    kind: &'static str,
    /// `conformance-<check>-<uuid>`: every key and group of this check starts with it.
    prefix: String,
}

impl<'a> Run<'a> {
    fn new(bus: &'a dyn Bus, check: &str) -> Self {
        let prefix = format!("conformance-{check}-{}", uuid::Uuid::new_v4().simple());
        Run {
            bus,
            kind: bus.kind(),
            prefix,
        }
    }

    fn key(&self, i: usize) -> String {
        format!("{}:key-{i}", self.prefix)
    }

    fn group(&self, i: usize) -> String {
        format!("{}-group-{i}", self.prefix)
    }

    fn is_ours(&self, d: &Delivery) -> bool {
        d.record.key.starts_with(&self.prefix)
    }

    fn record(&self, key: &str, seq: usize) -> BusRecord {
        let mut headers = BTreeMap::new();
        headers.insert(HEADER_SEQ.to_owned(), seq.to_string());
        BusRecord {
            key: key.to_owned(),
            headers,
            payload: format!("{key}#{seq}").into_bytes(),
        }
    }

    async fn call<T, E: std::fmt::Display>(&self, what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
        match timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("[{}] {what} failed ({}): {e}", self.kind, self.prefix),
            Err(_) => panic!(
                "[{}] {what} did not answer within {CALL_TIMEOUT:?} ({})",
                self.kind, self.prefix
            ),
        }
    }

    async fn publish(&self, record: BusRecord) -> Ack {
        self.call("publish", self.bus.publish(record)).await
    }

    async fn publish_seq(&self, key: &str, n: usize) -> Vec<Ack> {
        let mut acks = Vec::with_capacity(n);
        for seq in 0..n {
            acks.push(self.publish(self.record(key, seq)).await);
        }
        acks
    }

    async fn consumer(&self, group: &str) -> Box<dyn BusConsumer> {
        self.call("consumer", self.bus.consumer(group)).await
    }

    /// Polls until `n` of this check's records arrived (in delivery order).
    async fn receive(&self, consumer: &mut dyn BusConsumer, n: usize, who: &str) -> Vec<Delivery> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut ours = Vec::new();
        while ours.len() < n {
            if Instant::now() >= deadline {
                panic!(
                    "[{}] {who} received {} of the {n} records published with prefix {} within {RECEIVE_TIMEOUT:?}: {:?}",
                    self.kind,
                    ours.len(),
                    self.prefix,
                    ours.iter()
                        .map(|d: &Delivery| (d.position, seq_of(d)))
                        .collect::<Vec<_>>()
                );
            }
            let batch = self.call("poll", consumer.poll(POLL_MAX, POLL_WAIT)).await;
            ours.extend(batch.into_iter().filter(|d| self.is_ours(d)));
        }
        ours
    }

    /// Polls until every sequence number in `want` arrived; returns all of this
    /// check's records received by then (which may include unwanted ones).
    async fn receive_seqs(&self, consumer: &mut dyn BusConsumer, want: Vec<usize>, who: &str) -> Vec<Delivery> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut missing: BTreeSet<usize> = want.into_iter().collect();
        let mut ours = Vec::new();
        while !missing.is_empty() {
            if Instant::now() >= deadline {
                panic!(
                    "[{}] {who} did not receive records {missing:?} (prefix {}) within {RECEIVE_TIMEOUT:?}; got {:?}",
                    self.kind,
                    self.prefix,
                    ours.iter()
                        .map(|d: &Delivery| (d.position, seq_of(d)))
                        .collect::<Vec<_>>()
                );
            }
            let batch = self.call("poll", consumer.poll(POLL_MAX, POLL_WAIT)).await;
            for d in batch.into_iter().filter(|d| self.is_ours(d)) {
                missing.remove(&seq_of(&d));
                ours.push(d);
            }
        }
        ours
    }
}
