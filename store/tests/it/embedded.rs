//! The embedded (sled) store: the conformance suite, crash recovery, gap-free sequences.

use std::time::Duration;

use futures::StreamExt;
use store::conformance::{self, event, unique_stream};
use store::embedded::EmbeddedStore;
use store::{EventStore, ExpectedRevision, GlobalPosition};

fn open(dir: &std::path::Path) -> EmbeddedStore {
    match EmbeddedStore::open(dir) {
        Ok(s) => s,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_a_store_in_a_temp_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn conformance_suite_passes_on_a_temporary_store() {
    let store = EmbeddedStore::temporary().expect("temporary store");
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn sequences_start_at_one_and_have_no_gaps() {
    let store = EmbeddedStore::temporary().expect("temporary store");
    assert_eq!(store.last_sequence(), 0);
    let (a, b) = (unique_stream("a"), unique_stream("b"));
    store
        .append(&a, ExpectedRevision::NoStream, vec![event(0), event(1)])
        .await
        .expect("append a");
    let failed = store.append(&a, ExpectedRevision::NoStream, vec![event(2)]).await;
    assert!(failed.is_err(), "a failed append must not consume a sequence");
    let out = store
        .append(&b, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("append b");
    assert_eq!(out.position, Some(GlobalPosition { commit: 3, prepare: 3 }));
    let all = store.read_all(None, 100).await.expect("read_all");
    let seqs: Vec<u64> = all.iter().map(|e| e.position.commit).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(all.iter().all(|e| e.position.commit == e.position.prepare));
    assert_eq!(store.last_sequence(), 3);
}

#[tokio::test]
async fn stream_names_that_prefix_each_other_stay_apart() {
    let store = EmbeddedStore::temporary().expect("temporary store");
    store
        .append("customer-1", ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("append");
    store
        .append("customer-12", ExpectedRevision::NoStream, vec![event(1), event(2)])
        .await
        .expect("append");
    assert_eq!(store.read_stream("customer-1", 0, 10).await.expect("read").len(), 1);
    assert_eq!(store.read_stream("customer-12", 0, 10).await.expect("read").len(), 2);
    assert_eq!(store.stream_revision("customer-1").await.expect("rev"), Some(0));
}

#[tokio::test]
async fn data_survives_drop_and_reopen_and_sequences_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = unique_stream("reopen");
    let first = vec![event(0), event(1), event(2)];
    {
        let store = open(dir.path());
        store
            .append(&stream, ExpectedRevision::NoStream, first.clone())
            .await
            .expect("append");
        store.sync().await.expect("sync");
    }
    let store = open(dir.path());
    let read = store.read_stream(&stream, 0, 10).await.expect("read");
    assert_eq!(
        read.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        first.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    assert_eq!(store.stream_revision(&stream).await.expect("rev"), Some(2));
    assert_eq!(store.last_sequence(), 3);
    // Redelivery after restart is still recognised.
    let again = store
        .append(&stream, ExpectedRevision::NoStream, first)
        .await
        .expect("redeliver");
    assert_eq!(again.appended, 0);
    let out = store
        .append(&stream, ExpectedRevision::Exact(2), vec![event(3)])
        .await
        .expect("append");
    assert_eq!(
        out.position,
        Some(GlobalPosition { commit: 4, prepare: 4 }),
        "sequence reused after reopen"
    );
}

/// Runs test `name` of this binary in a child process with `env` set to a fresh directory
/// (the child appends, syncs and aborts: no destructors, no clean shutdown) and returns
/// that directory once the child has died.
fn abort_in_child(name: &str, env: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("current test binary");
    let status = std::process::Command::new(exe)
        .args([&format!("embedded::{name}"), "--exact", "--test-threads=1"])
        .env(env, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("spawn child");
    assert!(!status.success(), "the child must die by abort, got {status:?}");
    dir
}

const CRASH_DIR_ENV: &str = "CRM_STORE_CRASH_CHILD_DIR";
const CRASH_STREAM: &str = "customer-crash";
const CRASH_EVENTS: u32 = 1000;

/// Parent: runs this same test in a child process that appends, syncs and aborts (no
/// destructors, no clean shutdown), then reopens the store and checks nothing synced is lost.
#[tokio::test]
async fn synced_appends_survive_a_process_abort() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        // Child role.
        let store = open(std::path::Path::new(&dir));
        for n in 0..CRASH_EVENTS {
            store
                .append(CRASH_STREAM, ExpectedRevision::Any, vec![event(n)])
                .await
                .expect("append");
        }
        store.sync().await.expect("sync");
        // Unsynced tail: may or may not survive, must not corrupt anything.
        store
            .append("customer-unsynced", ExpectedRevision::Any, vec![event(0)])
            .await
            .expect("append");
        std::process::abort();
    }
    let dir = abort_in_child("synced_appends_survive_a_process_abort", CRASH_DIR_ENV);
    let store = open(dir.path());
    let read = store.read_stream(CRASH_STREAM, 0, usize::MAX).await.expect("read");
    assert_eq!(read.len(), CRASH_EVENTS as usize, "synced events lost in the crash");
    let all = store.read_all(None, usize::MAX).await.expect("read_all");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.position.commit,
            i as u64 + 1,
            "gap or reorder in the log after the crash"
        );
    }
    let before = store.last_sequence();
    let out = store
        .append(CRASH_STREAM, ExpectedRevision::Any, vec![event(9999)])
        .await
        .expect("append");
    assert_eq!(
        out.position.map(|p| p.commit),
        Some(before + 1),
        "sequence reused after the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_sees_concurrent_appends_in_order_without_gaps() {
    let store = EmbeddedStore::temporary().expect("temporary store");
    let mut sub = store.subscribe_all(None);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = format!("customer-writer-{w}");
                for n in 0..250 {
                    store
                        .append(&stream, ExpectedRevision::Any, vec![event(n)])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for expected in 1..=1000u64 {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("event {expected} not delivered within 10 s"))
            .expect("subscription ended")
            .expect("subscription item");
        assert_eq!(
            item.position.commit, expected,
            "gap or duplicate in the live subscription"
        );
    }
    for w in writers {
        w.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_appended_concurrently_is_stored_once() {
    // Concurrent appends usually land in one writer group: the idempotency check must see
    // ids staged earlier in the same group, not only those already in sled.
    let store = EmbeddedStore::temporary().expect("temporary store");
    for round in 0..20u32 {
        let stream = unique_stream("dup");
        let e = event(round);
        let appends: Vec<_> = (0..8)
            .map(|_| {
                let (store, stream, e) = (store.clone(), stream.clone(), e.clone());
                tokio::spawn(async move { store.append(&stream, ExpectedRevision::Any, vec![e]).await })
            })
            .collect();
        let mut appended = 0;
        for a in appends {
            let out = a.await.expect("task").expect("append");
            assert_eq!(out.last_revision, 0);
            appended += out.appended;
        }
        assert_eq!(appended, 1, "the event was written {appended} times");
        assert_eq!(store.read_stream(&stream, 0, 10).await.expect("read").len(), 1);
    }
}

#[tokio::test]
async fn a_data_dir_written_by_the_sled_store_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What earlier versions left: a sled database with the `events` tree.
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("events")
            .unwrap()
            .insert(b"Mformat", 2u64.to_be_bytes().as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("earlier version of crm (on sled)"), "{err}");
    assert!(err.contains("move that data directory aside"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[tokio::test]
async fn a_store_file_in_another_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(store::embedded::FILE)).unwrap();
        let write = db.begin_write().unwrap();
        {
            let mut meta = write
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format", 99).unwrap();
        }
        write.commit().unwrap();
    }
    let err = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("layout version 99"), "{err}");
    assert!(err.contains("move that data directory aside"), "{err}");
    // A fresh directory is marked with the current layout and opens again.
    let fresh = tempfile::tempdir().unwrap();
    drop(open(fresh.path()));
    drop(open(fresh.path()));
}

#[tokio::test]
async fn last_position_is_the_tip_of_the_log() {
    let store = EmbeddedStore::temporary().unwrap();
    assert_eq!(store.last_position(), None, "an empty store has no tip");
    let out = store
        .append(
            &unique_stream("tip"),
            ExpectedRevision::NoStream,
            vec![event(1), event(2)],
        )
        .await
        .unwrap();
    assert_eq!(store.last_position(), out.position);
    let all = store.read_all(None, usize::MAX).await.unwrap();
    assert_eq!(store.last_position(), all.last().map(|e| e.position));
}

/// Heads flushed into a run every few streams and runs merged in slices of two: the whole
/// merge tree is exercised by a few hundred streams.
fn tiny() -> store::embedded::HeadsTuning {
    store::embedded::HeadsTuning {
        flush_at: 5,
        fanout: 2,
        merge_step: 8,
        flush_step: 2,
    }
}

fn open_tiny(dir: &std::path::Path) -> EmbeddedStore {
    match EmbeddedStore::open_tuned(dir, store::embedded::CACHE_BYTES, tiny()) {
        Ok(s) => s,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_with_heads_flushed_and_merged_every_few_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance::run_all(&open_tiny(dir.path())).await;
    conformance::run_all(&EmbeddedStore::temporary_tuned(tiny()).expect("temporary store")).await;
}

/// Every stream reads back whole, with its revision, wherever its head is: the memtable,
/// a fresh run, a merged run, or a run half merged; also after a reopen.
async fn check_streams(store: &EmbeddedStore, expected: &[(String, Vec<u32>)]) {
    for (stream, ns) in expected {
        let revision = store.stream_revision(stream).await.expect("revision");
        assert_eq!(revision, Some(ns.len() as u64 - 1), "revision of {stream}");
        let read = store.read_stream(stream, 0, usize::MAX).await.expect("read");
        let got: Vec<u32> = read
            .iter()
            .map(|e| u32::from_be_bytes(e.data[..4].try_into().unwrap()))
            .collect();
        assert_eq!(&got, ns, "events of {stream}");
        let tail = store.read_stream(stream, 2, 3).await.expect("read from revision 2");
        assert_eq!(
            tail.len(),
            ns.len().saturating_sub(2).min(3),
            "{stream} from revision 2"
        );
    }
    for i in 0..50 {
        let absent = format!("identity-email-absent-{i}");
        assert_eq!(store.stream_revision(&absent).await.unwrap(), None);
        assert!(store.read_stream(&absent, 0, 10).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_survive_flushes_merges_and_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut expected: Vec<(String, Vec<u32>)> = (0..120)
        .map(|i| (format!("identity-phone-{i:04x}"), Vec::new()))
        .collect();
    let mut n = 0u32;
    {
        let store = open_tiny(dir.path());
        // Rounds over every stream, so later events of a stream land while its head sits in
        // a run (some streams pass the 16 events a head keeps).
        for round in 0..20 {
            for (i, (stream, ns)) in expected.iter_mut().enumerate() {
                if round > 2 && i % 7 != 0 {
                    continue;
                }
                let expect = match ns.len() {
                    0 => ExpectedRevision::NoStream,
                    len => ExpectedRevision::Exact(len as u64 - 1),
                };
                store.append(stream, expect, vec![event(n)]).await.expect("append");
                ns.push(n);
                n += 1;
            }
        }
        assert!(
            store.head_runs() <= 12,
            "runs are merged as they pile up: {} runs",
            store.head_runs()
        );
        check_streams(&store, &expected).await;
        // A redelivery is recognised wherever the head is.
        let (stream, ns) = &expected[7];
        let first = store.read_stream(stream, 0, 1).await.unwrap().remove(0);
        let again = NewEventCopy::of(&first);
        let out = store
            .append(stream, ExpectedRevision::Any, vec![again])
            .await
            .expect("redelivery");
        assert_eq!((out.appended, out.last_revision), (0, ns.len() as u64 - 1));
        store.sync().await.expect("sync");
    }
    let store = open_tiny(dir.path());
    check_streams(&store, &expected).await;
    let (stream, ns) = &mut expected[3];
    store
        .append(stream, ExpectedRevision::Exact(ns.len() as u64 - 1), vec![event(n)])
        .await
        .expect("append after reopen");
    ns.push(n);
    check_streams(&store, &expected).await;
}

/// A copy of a recorded event as a new one (same id): what a redelivery sends.
struct NewEventCopy;
impl NewEventCopy {
    fn of(e: &store::RecordedEvent) -> store::NewEvent {
        store::NewEvent {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            data: e.data.clone(),
            metadata: e.metadata.clone(),
        }
    }
}

const HEADS_CRASH_ENV: &str = "CRM_STORE_HEADS_CRASH_CHILD_DIR";

/// Heads that were only in memory (the memtable) at a crash are read back from the log:
/// a child appends to many streams with the tiny merge tree, syncs and aborts.
#[tokio::test]
async fn heads_in_memory_at_a_crash_are_read_back_from_the_log() {
    let streams = |i: u32| format!("identity-email-{i:04x}");
    if let Ok(dir) = std::env::var(HEADS_CRASH_ENV) {
        let store = open_tiny(std::path::Path::new(&dir));
        for i in 0..203 {
            store
                .append(&streams(i), ExpectedRevision::NoStream, vec![event(i)])
                .await
                .expect("append");
        }
        store.sync().await.expect("sync");
        std::process::abort();
    }
    let dir = abort_in_child("heads_in_memory_at_a_crash_are_read_back_from_the_log", HEADS_CRASH_ENV);
    let expected: Vec<(String, Vec<u32>)> = (0..203).map(|i| (streams(i), vec![i])).collect();
    check_streams(&open_tiny(dir.path()), &expected).await;
    // And with the default tuning, where every head of them is read back from the log.
    heads_are_back(&open(dir.path()), &expected).await;
}

/// After a crash: every stream of `expected` reads back, and the first of them refuses an
/// append that expects no stream (its head is known, not only its events).
async fn heads_are_back(store: &EmbeddedStore, expected: &[(String, Vec<u32>)]) {
    check_streams(store, expected).await;
    let err = store
        .append(&expected[0].0, ExpectedRevision::NoStream, vec![event(9)])
        .await
        .unwrap_err();
    assert!(matches!(err, store::StoreError::WrongExpectedRevision { .. }), "{err}");
}

const FLUSH_CRASH_ENV: &str = "CRM_STORE_FLUSH_CRASH_CHILD_DIR";

/// A crash while a flush is writing the frozen memtable into a run, a slice per group: the
/// half-written run is dropped at the open and its heads are read back from the log.
#[tokio::test]
async fn heads_of_a_flush_cut_short_by_a_crash_are_read_back_from_the_log() {
    let streams = |i: u32| format!("identity-phone-{i:04x}");
    if let Ok(dir) = std::env::var(FLUSH_CRASH_ENV) {
        let store = open_tiny(std::path::Path::new(&dir));
        for i in 0..1000 {
            store
                .append(&streams(i), ExpectedRevision::NoStream, vec![event(i)])
                .await
                .expect("append");
            store.sync().await.expect("sync");
            // Past a few flushes and merges, and with a flush half-written.
            if i >= 40 && store.heads_flushing() {
                std::process::abort();
            }
        }
        panic!("no flush was in progress after a sync");
    }
    let dir = abort_in_child(
        "heads_of_a_flush_cut_short_by_a_crash_are_read_back_from_the_log",
        FLUSH_CRASH_ENV,
    );
    let store = open_tiny(dir.path());
    let all = store.read_all(None, usize::MAX).await.expect("read the log");
    assert!(all.len() > 40, "the child appended {} events", all.len());
    let expected: Vec<(String, Vec<u32>)> = (0..all.len() as u32).map(|i| (streams(i), vec![i])).collect();
    heads_are_back(&store, &expected).await;
}

/// A few busy streams never fill the memtable, but the log they grow is flushed anyway, so
/// an open reads back a bounded stretch of the log.
#[tokio::test]
async fn a_busy_stream_is_flushed_by_log_growth_and_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = "customer-busy".to_string();
    {
        let store = open_tiny(dir.path());
        let runs_before = store.head_runs();
        for n in 0..100 {
            store
                .append(&stream, ExpectedRevision::Any, vec![event(n)])
                .await
                .expect("append");
        }
        assert!(
            store.head_runs() > runs_before,
            "100 events into one stream flush its head (runs: {} before, {} after)",
            runs_before,
            store.head_runs()
        );
        store.sync().await.expect("sync");
    }
    let store = open_tiny(dir.path());
    check_streams(&store, &[(stream, (0..100).collect())]).await;
}

/// The store as a backend without a key index sees it: every method but `append_claiming`
/// and `claimant`, which keep their defaults (claims as marker streams, as KurrentDB).
struct Unindexed(EmbeddedStore);

#[async_trait::async_trait]
impl EventStore for Unindexed {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<store::NewEvent>,
    ) -> Result<store::AppendOutcome, store::StoreError> {
        self.0.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<store::RecordedEvent>, store::StoreError> {
        self.0.read_stream(stream, from, max).await
    }
    async fn stream_revision(&self, stream: &str) -> Result<Option<u64>, store::StoreError> {
        self.0.stream_revision(stream).await
    }
    async fn read_all(
        &self,
        after: Option<GlobalPosition>,
        max: usize,
    ) -> Result<Vec<store::RecordedEvent>, store::StoreError> {
        self.0.read_all(after, max).await
    }
    fn subscribe_all(
        &self,
        after: Option<GlobalPosition>,
    ) -> futures::stream::BoxStream<'static, Result<store::RecordedEvent, store::StoreError>> {
        self.0.subscribe_all(after)
    }
    async fn sync(&self) -> Result<(), store::StoreError> {
        self.0.sync().await
    }
    fn kind(&self) -> &'static str {
        "unindexed"
    }
}

/// The port's default claims (marker streams, what KurrentDB gets) pass the same checks.
#[tokio::test]
async fn claims_kept_as_marker_streams_pass_the_claim_checks() {
    let store = Unindexed(EmbeddedStore::temporary().expect("temporary store"));
    conformance::claims_are_held_by_one_event(&store).await;
    conformance::a_key_written_as_a_stream_is_held(&store).await;
    conformance::concurrent_claims_of_one_key(&store).await;
}

/// A store that keeps claims as marker streams says it needs markers, and refuses a claim
/// without one before writing anything; the embedded store needs none and takes such a claim.
#[tokio::test]
async fn a_claim_without_a_marker_is_refused_where_markers_are_written() {
    let unindexed = Unindexed(EmbeddedStore::temporary().expect("temporary store"));
    assert!(unindexed.claims_need_markers());
    let (stream, key) = (unique_stream("markerless"), unique_stream("key"));
    let mut claim = conformance::claim(&key, 0, 1);
    claim.marker = None;
    let refused = unindexed
        .append_claiming(
            &stream,
            ExpectedRevision::NoStream,
            vec![event(0)],
            vec![claim.clone()],
            None,
        )
        .await;
    match refused {
        Err(store::StoreError::Config(message)) => assert!(
            message.contains(&key) && message.contains("no marker") && message.contains("nothing was written"),
            "{message}"
        ),
        other => panic!("a claim without a marker was not refused: {other:?}"),
    }
    assert_eq!(
        unindexed.stream_revision(&stream).await.unwrap(),
        None,
        "the events were written"
    );
    assert!(unindexed.claimant(&key).await.unwrap().is_none(), "the key was taken");

    let embedded = EmbeddedStore::temporary().expect("temporary store");
    assert!(!embedded.claims_need_markers());
    let by = event(0);
    let out = embedded
        .append_claiming(&stream, ExpectedRevision::NoStream, vec![by.clone()], vec![claim], None)
        .await
        .expect("a markerless claim on the embedded store");
    assert_eq!(out.appended, 1);
    let held = embedded.claimant(&key).await.unwrap().expect("claimed");
    assert_eq!(held.event_id, by.event_id);
}

/// The embedded store takes keys and events in one commit: a claiming append that fails
/// takes no key, and one that succeeds writes no marker (the key's claimant is the event).
#[tokio::test]
async fn a_claiming_append_takes_its_keys_and_events_together_or_not_at_all() {
    let store = EmbeddedStore::temporary().expect("temporary store");
    let stream = unique_stream("claiming");
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event(0)])
        .await
        .expect("append");
    let key = unique_stream("key");
    let wrong = store
        .append_claiming(
            &stream,
            ExpectedRevision::NoStream,
            vec![event(1)],
            vec![conformance::claim(&key, 0, 2)],
            None,
        )
        .await;
    assert!(
        matches!(wrong, Err(store::StoreError::WrongExpectedRevision { .. })),
        "{wrong:?}"
    );
    assert!(
        store.claimant(&key).await.unwrap().is_none(),
        "a failed append took its key"
    );

    let by = event(3);
    let out = store
        .append_claiming(
            &stream,
            ExpectedRevision::Exact(0),
            vec![by.clone()],
            vec![conformance::claim(&key, 0, 4)],
            None,
        )
        .await
        .expect("claiming append");
    assert_eq!(out.appended, 1, "the marker is not written");
    let held = store.claimant(&key).await.unwrap().expect("claimed");
    assert_eq!(
        (held.event_id, held.stream.as_str(), held.revision),
        (by.event_id, stream.as_str(), 1)
    );
    let log = store.read_all(None, usize::MAX).await.unwrap();
    assert_eq!(log.len(), 2, "no marker in the log: {log:?}");

    // Claimed by an event already in the stream (its record cannot carry the key): refused.
    let other = unique_stream("key-other");
    let late = store
        .append_claiming(
            &stream,
            ExpectedRevision::Any,
            vec![by.clone(), event(7)],
            vec![conformance::claim(&other, 0, 8)],
            None,
        )
        .await;
    assert!(
        matches!(&late, Err(store::StoreError::Config(m)) if m.contains("already in the stream")),
        "{late:?}"
    );
    assert!(store.claimant(&other).await.unwrap().is_none());
    assert_eq!(store.stream_revision(&stream).await.unwrap(), Some(1));

    // Out of range: refused with what was wrong, nothing written.
    let bad = store
        .append_claiming(
            &stream,
            ExpectedRevision::Any,
            vec![event(5)],
            vec![conformance::claim(&key, 3, 6)],
            None,
        )
        .await;
    assert!(
        matches!(&bad, Err(store::StoreError::Config(m)) if m.contains("names event 3 of 1")),
        "{bad:?}"
    );
    assert_eq!(store.stream_revision(&stream).await.unwrap(), Some(1));
}

/// Keys survive a reopen from memory (read back from the log's records) and from runs.
#[tokio::test]
async fn claimed_keys_survive_flushes_and_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = |i: u32| format!("identity-email-{i:04x}");
    let stream = |i: u32| format!("customer-{i:04x}");
    // Written with the default tuning: every head stays in memory, so the first reopen reads
    // the keys back from the log's records; the tiny tuning then flushes them into runs.
    {
        let store = open(dir.path());
        for i in 0..60 {
            store
                .append_claiming(
                    &stream(i),
                    ExpectedRevision::NoStream,
                    vec![event(2 * i), event(2 * i + 1)],
                    vec![conformance::claim(&key(i), 1, 1000 + i)],
                    None,
                )
                .await
                .expect("claiming append");
        }
        store.sync().await.expect("sync");
    }
    for reopen in [open, open_tiny, open] {
        let store = reopen(dir.path());
        for i in 0..60 {
            let held = store
                .claimant(&key(i))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{} lost", key(i)));
            assert_eq!(
                (held.stream, held.data),
                (stream(i), (2 * i + 1).to_be_bytes().to_vec())
            );
        }
        let refused = store
            .append_claiming(
                &stream(99),
                ExpectedRevision::NoStream,
                vec![event(9)],
                vec![conformance::claim(&key(7), 0, 9)],
                None,
            )
            .await;
        assert!(
            matches!(refused, Err(store::StoreError::WrongExpectedRevision { .. })),
            "{refused:?}"
        );
        drop(store);
    }
}
