//! The backend-agnostic conformance suite for [`EventStore`] implementations.
//!
//! Every implementation must pass [`run_all`]; each check is also public so a failing one
//! can be run alone. A check panics with a message naming the stream, the call and the
//! difference on any violation, so it is meant to be called from tests.
//!
//! Safe against a shared real server: every check works on streams named
//! `<prefix><random uuid>-...` (prefix `customer-` so prefix-filtered backends see them),
//! and checks over the global log only look at events of streams the check created.
//! Nothing waits forever: every wait on a subscription has a timeout.
//!
//! Not here: backend-specific checks (gap-free sequences of the embedded store, crash
//! recovery); those live in the store's integration tests.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::{EventStore, ExpectedRevision, GlobalPosition, NewEvent, RecordedEvent, StoreError};

/// How long a subscription may take to deliver an expected event.
const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Page size for reads over the global log.
const PAGE: usize = 500;

/// Runs every check in order.
pub async fn run_all(store: &dyn EventStore) {
    append_to_new_stream_with_no_stream(store).await;
    no_stream_on_existing_stream_fails(store).await;
    exact_revision_success_and_mismatch(store).await;
    stream_exists(store).await;
    any_revision(store).await;
    idempotent_reappend(store).await;
    partial_overlap(store).await;
    redelivery_in_a_long_stream(store).await;
    read_stream_from_revision_with_max(store).await;
    stream_revision(store).await;
    read_all_ordering_and_after_exclusive(store).await;
    subscribe_all_catch_up_and_live(store).await;
    concurrent_exact_appenders(store).await;
    append_then_tells_the_outcome_once(store).await;
    claims_are_held_by_one_event(store).await;
    a_key_written_as_a_stream_is_held(store).await;
    concurrent_claims_of_one_key(store).await;
}

/// A fresh stream name unique to this call: `customer-<uuid>-<label>`.
pub fn unique_stream(label: &str) -> String {
    format!("customer-{}-{label}", Uuid::new_v4().simple())
}

/// A test event with a fresh id; `data` encodes `n` so order is checkable.
pub fn event(n: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "ConformanceTestedV1".to_owned(),
        data: n.to_be_bytes().to_vec(),
        metadata: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn events(range: std::ops::Range<u32>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn ids(events: &[NewEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn recorded_ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

async fn append_ok(
    store: &dyn EventStore,
    stream: &str,
    expected: ExpectedRevision,
    batch: Vec<NewEvent>,
) -> crate::AppendOutcome {
    let n = batch.len();
    match store.append(stream, expected, batch).await {
        Ok(outcome) => outcome,
        Err(e) => panic!(
            "[{}] append of {n} events to {stream} with {expected:?} failed: {e}",
            store.kind()
        ),
    }
}

fn assert_wrong_revision(
    kind: &str,
    what: &str,
    result: Result<crate::AppendOutcome, StoreError>,
    stream: &str,
    expected: ExpectedRevision,
    actual: Option<u64>,
) {
    match result {
        Err(StoreError::WrongExpectedRevision {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(s, stream, "[{kind}] {what}: error names the wrong stream");
            assert_eq!(
                e, expected,
                "[{kind}] {what}: error carries the wrong expected revision"
            );
            assert_eq!(a, actual, "[{kind}] {what}: error carries the wrong actual revision");
        }
        other => panic!("[{kind}] {what}: expected WrongExpectedRevision{{actual: {actual:?}}}, got {other:?}"),
    }
}

async fn read_whole_stream(store: &dyn EventStore, stream: &str) -> Vec<RecordedEvent> {
    match store.read_stream(stream, 0, usize::MAX).await {
        Ok(events) => events,
        Err(e) => panic!("[{}] read_stream({stream}, 0, all) failed: {e}", store.kind()),
    }
}

/// Appending with `NoStream` to a new stream creates it with revisions 0..n.
pub async fn append_to_new_stream_with_no_stream(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("new");
    let batch = events(0..3);
    let expected_ids = ids(&batch);
    let outcome = append_ok(store, &stream, ExpectedRevision::NoStream, batch.clone()).await;
    assert_eq!(outcome.appended, 3, "[{kind}] NoStream append to {stream}: appended");
    assert_eq!(
        outcome.last_revision, 2,
        "[{kind}] NoStream append to {stream}: last_revision"
    );
    assert!(
        outcome.position.is_some(),
        "[{kind}] NoStream append to {stream}: no position returned"
    );
    let read = read_whole_stream(store, &stream).await;
    assert_eq!(recorded_ids(&read), expected_ids, "[{kind}] {stream}: ids read back");
    for (i, (r, n)) in read.iter().zip(&batch).enumerate() {
        assert_eq!(r.revision, i as u64, "[{kind}] {stream}: revision of event {i}");
        assert_eq!(r.stream, stream, "[{kind}] {stream}: stream name of event {i}");
        assert_eq!(
            (&r.event_type, &r.data, &r.metadata),
            (&n.event_type, &n.data, &n.metadata),
            "[{kind}] {stream}: payload of event {i}"
        );
        assert!(
            r.recorded_at_us > 0,
            "[{kind}] {stream}: recorded_at_us of event {i} is {}",
            r.recorded_at_us
        );
    }
    // Backends differ in how a batch's position is reported (sequence of the last event,
    // or the commit position shared by the batch): only its commit part is portable.
    assert_eq!(
        read.last().map(|r| r.position.commit),
        outcome.position.map(|p| p.commit),
        "[{kind}] {stream}: commit position of the last event differs from the append outcome"
    );
}

/// `NoStream` on an existing stream fails with the actual revision.
pub async fn no_stream_on_existing_stream_fails(store: &dyn EventStore) {
    let stream = unique_stream("nostream-existing");
    append_ok(store, &stream, ExpectedRevision::NoStream, events(0..2)).await;
    let result = store.append(&stream, ExpectedRevision::NoStream, events(2..3)).await;
    assert_wrong_revision(
        store.kind(),
        "NoStream on existing stream",
        result,
        &stream,
        ExpectedRevision::NoStream,
        Some(1),
    );
    assert_eq!(
        read_whole_stream(store, &stream).await.len(),
        2,
        "[{}] {stream}: failed append wrote events",
        store.kind()
    );
}

/// `Exact(n)` succeeds when the last revision is n and fails otherwise.
pub async fn exact_revision_success_and_mismatch(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("exact");
    let missing = store.append(&stream, ExpectedRevision::Exact(0), events(0..1)).await;
    assert_wrong_revision(
        kind,
        "Exact(0) on a missing stream",
        missing,
        &stream,
        ExpectedRevision::Exact(0),
        None,
    );
    append_ok(store, &stream, ExpectedRevision::NoStream, events(0..1)).await;
    let outcome = append_ok(store, &stream, ExpectedRevision::Exact(0), events(1..3)).await;
    assert_eq!(
        (outcome.last_revision, outcome.appended),
        (2, 2),
        "[{kind}] Exact(0) on {stream}"
    );
    for stale in [0, 1, 3] {
        let result = store
            .append(&stream, ExpectedRevision::Exact(stale), events(3..4))
            .await;
        assert_wrong_revision(
            kind,
            "stale Exact",
            result,
            &stream,
            ExpectedRevision::Exact(stale),
            Some(2),
        );
    }
    let outcome = append_ok(store, &stream, ExpectedRevision::Exact(2), events(3..4)).await;
    assert_eq!(
        (outcome.last_revision, outcome.appended),
        (3, 1),
        "[{kind}] Exact(2) on {stream}"
    );
}

/// `StreamExists` fails on a missing stream and succeeds on an existing one.
pub async fn stream_exists(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("exists");
    let result = store
        .append(&stream, ExpectedRevision::StreamExists, events(0..1))
        .await;
    assert_wrong_revision(
        kind,
        "StreamExists on a missing stream",
        result,
        &stream,
        ExpectedRevision::StreamExists,
        None,
    );
    assert_eq!(
        store.stream_revision(&stream).await.ok(),
        Some(None),
        "[{kind}] {stream}: failed StreamExists append created the stream"
    );
    append_ok(store, &stream, ExpectedRevision::NoStream, events(0..1)).await;
    let outcome = append_ok(store, &stream, ExpectedRevision::StreamExists, events(1..2)).await;
    assert_eq!(
        (outcome.last_revision, outcome.appended),
        (1, 1),
        "[{kind}] StreamExists on {stream}"
    );
}

/// `Any` appends whatever the stream's state.
pub async fn any_revision(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("any");
    let first = append_ok(store, &stream, ExpectedRevision::Any, events(0..2)).await;
    assert_eq!(
        (first.last_revision, first.appended),
        (1, 2),
        "[{kind}] Any on new {stream}"
    );
    let second = append_ok(store, &stream, ExpectedRevision::Any, events(2..3)).await;
    assert_eq!(
        (second.last_revision, second.appended),
        (2, 1),
        "[{kind}] Any on existing {stream}"
    );
}

/// Re-appending the same ids writes nothing and succeeds whatever `expected` says.
pub async fn idempotent_reappend(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("idempotent");
    let batch = events(0..3);
    append_ok(store, &stream, ExpectedRevision::NoStream, batch.clone()).await;
    for expected in [
        ExpectedRevision::NoStream,
        ExpectedRevision::Exact(0),
        ExpectedRevision::Exact(2),
        ExpectedRevision::Exact(7),
        ExpectedRevision::StreamExists,
        ExpectedRevision::Any,
    ] {
        let outcome = append_ok(store, &stream, expected, batch.clone()).await;
        assert_eq!(
            outcome.appended, 0,
            "[{kind}] redelivery to {stream} with {expected:?}: appended"
        );
        assert_eq!(
            outcome.last_revision, 2,
            "[{kind}] redelivery to {stream} with {expected:?}: last_revision"
        );
        assert_eq!(
            outcome.position, None,
            "[{kind}] redelivery to {stream} with {expected:?}: position"
        );
    }
    // A subset of the batch is a redelivery too.
    let outcome = append_ok(store, &stream, ExpectedRevision::NoStream, batch[1..2].to_vec()).await;
    assert_eq!(outcome.appended, 0, "[{kind}] redelivery of one old event to {stream}");
    let read = read_whole_stream(store, &stream).await;
    assert_eq!(
        recorded_ids(&read),
        ids(&batch),
        "[{kind}] {stream}: redelivery duplicated events"
    );
}

/// A batch mixing old and new ids writes only the new ones, in batch order.
pub async fn partial_overlap(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("overlap");
    let first = events(0..3);
    append_ok(store, &stream, ExpectedRevision::NoStream, first.clone()).await;
    let new = events(3..5);
    let mixed = vec![first[1].clone(), new[0].clone(), first[2].clone(), new[1].clone()];
    let outcome = append_ok(store, &stream, ExpectedRevision::Exact(2), mixed).await;
    assert_eq!(
        (outcome.appended, outcome.last_revision),
        (2, 4),
        "[{kind}] partial overlap on {stream}"
    );
    let mut want = ids(&first);
    want.extend(ids(&new));
    let read = read_whole_stream(store, &stream).await;
    assert_eq!(
        recorded_ids(&read),
        want,
        "[{kind}] {stream}: contents after partial overlap"
    );
    let revisions: Vec<u64> = read.iter().map(|r| r.revision).collect();
    assert_eq!(
        revisions,
        (0..5).collect::<Vec<_>>(),
        "[{kind}] {stream}: revisions after partial overlap"
    );
}

/// Redelivery is recognised anywhere in a long stream, whether the events came one per
/// append or in a batch (a backend may keep early and late ids differently).
pub async fn redelivery_in_a_long_stream(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("long");
    let all = events(0..40);
    append_ok(store, &stream, ExpectedRevision::NoStream, all[..1].to_vec()).await;
    for (i, e) in all.iter().enumerate().take(30).skip(1) {
        append_ok(store, &stream, ExpectedRevision::Exact(i as u64 - 1), vec![e.clone()]).await;
    }
    append_ok(store, &stream, ExpectedRevision::Exact(29), all[30..].to_vec()).await;
    for i in [0, 5, 15, 16, 17, 29, 30, 39] {
        let outcome = append_ok(store, &stream, ExpectedRevision::Any, vec![all[i].clone()]).await;
        assert_eq!(
            (outcome.appended, outcome.last_revision),
            (0, 39),
            "[{kind}] redelivery of revision {i} of {stream}"
        );
    }
    let fresh = event(40);
    let mixed = vec![all[3].clone(), all[35].clone(), fresh.clone()];
    let outcome = append_ok(store, &stream, ExpectedRevision::Exact(39), mixed).await;
    assert_eq!(
        (outcome.appended, outcome.last_revision),
        (1, 40),
        "[{kind}] old ids from both ends and one new id on {stream}"
    );
    let mut want = ids(&all);
    want.push(fresh.event_id);
    assert_eq!(
        recorded_ids(&read_whole_stream(store, &stream).await),
        want,
        "[{kind}] {stream}: contents after redeliveries"
    );
}

/// `read_stream` honours `from_revision` (inclusive) and `max`; a missing stream reads empty.
pub async fn read_stream_from_revision_with_max(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("read");
    // 40 events in two appends, the second one crossing revision 16 (where the embedded
    // store stops keeping revisions in the stream head).
    let batch = events(0..40);
    append_ok(store, &stream, ExpectedRevision::NoStream, batch[..10].to_vec()).await;
    append_ok(store, &stream, ExpectedRevision::Exact(9), batch[10..].to_vec()).await;
    for (from, max, want) in [
        (0u64, 3usize, 0u32..3u32),
        (4, 3, 4..7),
        (8, 5, 8..13),
        (14, 5, 14..19),
        (16, 2, 16..18),
        (0, 100, 0..40),
        (30, 100, 30..40),
        (39, 1, 39..40),
        (40, 5, 40..40),
        (99, 5, 99..99),
        (3, 0, 3..3),
    ] {
        let read = match store.read_stream(&stream, from, max).await {
            Ok(r) => r,
            Err(e) => panic!("[{kind}] read_stream({stream}, {from}, {max}) failed: {e}"),
        };
        let got: Vec<u64> = read.iter().map(|r| r.revision).collect();
        let want_revs: Vec<u64> = want.clone().map(u64::from).collect();
        assert_eq!(
            got, want_revs,
            "[{kind}] read_stream({stream}, {from}, {max}): revisions"
        );
        let want_ids: Vec<Uuid> = want.map(|i| batch[i as usize].event_id).collect();
        assert_eq!(
            recorded_ids(&read),
            want_ids,
            "[{kind}] read_stream({stream}, {from}, {max}): ids"
        );
    }
    let missing = unique_stream("missing");
    match store.read_stream(&missing, 0, 10).await {
        Ok(read) => assert!(
            read.is_empty(),
            "[{kind}] read_stream of missing {missing} returned {} events",
            read.len()
        ),
        Err(e) => panic!("[{kind}] read_stream of missing {missing} must be empty, failed: {e}"),
    }
}

/// `stream_revision` is `None` for a missing stream and the last revision otherwise;
/// `read_last` gives the event at that revision (past a stream's first 16 too).
pub async fn stream_revision(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("revision");
    let last = async || {
        let revision = match store.stream_revision(&stream).await {
            Ok(r) => r,
            Err(e) => panic!("[{kind}] stream_revision({stream}) failed: {e}"),
        };
        let event = match store.read_last(&stream).await {
            Ok(e) => e.map(|e| (e.revision, e.data)),
            Err(e) => panic!("[{kind}] read_last({stream}) failed: {e}"),
        };
        (revision, event)
    };
    assert_eq!(last().await, (None, None), "[{kind}] missing {stream}");
    append_ok(store, &stream, ExpectedRevision::NoStream, events(0..4)).await;
    assert_eq!(
        last().await,
        (Some(3), Some((3, 3u32.to_be_bytes().to_vec()))),
        "[{kind}] {stream}"
    );
    append_ok(store, &stream, ExpectedRevision::Any, events(4..20)).await;
    assert_eq!(
        last().await,
        (Some(19), Some((19, 19u32.to_be_bytes().to_vec()))),
        "[{kind}] {stream} after 20 events"
    );
}

/// Pages through the global log after `after` until every id in `wanted` has been seen,
/// checking positions strictly increase. Returns our events in log order.
async fn read_all_until(
    store: &dyn EventStore,
    after: Option<GlobalPosition>,
    ours: &HashSet<String>,
    wanted: usize,
) -> Vec<RecordedEvent> {
    let kind = store.kind();
    let mut cursor = after;
    let mut found = Vec::new();
    loop {
        let page = match store.read_all(cursor, PAGE).await {
            Ok(p) => p,
            Err(e) => panic!("[{kind}] read_all(after {cursor:?}, {PAGE}) failed: {e}"),
        };
        if page.is_empty() {
            return found;
        }
        for event in page {
            if let Some(prev) = cursor {
                assert!(
                    event.position > prev,
                    "[{kind}] read_all: position {:?} of {}@{} is not after {prev:?}",
                    event.position,
                    event.stream,
                    event.revision
                );
            }
            cursor = Some(event.position);
            if ours.contains(&event.stream) {
                found.push(event);
                if found.len() == wanted {
                    return found;
                }
            }
        }
    }
}

/// `read_all` returns our events in append order with strictly increasing positions;
/// `after` is exclusive.
pub async fn read_all_ordering_and_after_exclusive(store: &dyn EventStore) {
    let kind = store.kind();
    // A marker event before ours gives a real position to read after, whatever the backend's
    // position scheme (sequence numbers or log byte offsets).
    let marker = unique_stream("all-marker");
    let marker_position = match append_ok(store, &marker, ExpectedRevision::NoStream, events(0..1))
        .await
        .position
    {
        Some(p) => p,
        None => panic!("[{kind}] append to new {marker} returned no position"),
    };
    let (a, b) = (unique_stream("all-a"), unique_stream("all-b"));
    let mut order = Vec::new();
    for (stream, batch) in [(&a, events(0..2)), (&b, events(0..3)), (&a, events(2..3))] {
        order.extend(ids(&batch));
        append_ok(store, stream, ExpectedRevision::Any, batch).await;
    }
    let ours: HashSet<String> = [a.clone(), b.clone()].into();
    let got = read_all_until(store, Some(marker_position), &ours, order.len()).await;
    assert_eq!(
        recorded_ids(&got),
        order,
        "[{kind}] read_all: our events out of append order or missing"
    );
    for e in &got {
        assert!(
            e.position > marker_position,
            "[{kind}] read_all: {}@{} at {:?} is not after the marker",
            e.stream,
            e.revision,
            e.position
        );
    }
    // `after` is exclusive.
    let first_position = got[0].position;
    let rest = read_all_until(store, Some(first_position), &ours, order.len() - 1).await;
    assert_eq!(
        recorded_ids(&rest),
        order[1..].to_vec(),
        "[{kind}] read_all(after = first event) is not exclusive"
    );
    // `max` bounds the page.
    match store.read_all(Some(marker_position), 2).await {
        Ok(page) => assert!(
            page.len() <= 2,
            "[{kind}] read_all(max 2) returned {} events",
            page.len()
        ),
        Err(e) => panic!("[{kind}] read_all(after marker, 2) failed: {e}"),
    }
    // From the very start the log is ordered too (first page only: a server may hold a lot).
    let page = match store.read_all(None, PAGE).await {
        Ok(p) => p,
        Err(e) => panic!("[{kind}] read_all(None, {PAGE}) failed: {e}"),
    };
    assert!(
        !page.is_empty(),
        "[{kind}] read_all(None) is empty although events were appended"
    );
    for pair in page.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "[{kind}] read_all(None): positions not increasing: {:?} then {:?}",
            pair[0].position,
            pair[1].position
        );
    }
}

async fn next_ours(
    kind: &str,
    sub: &mut futures::stream::BoxStream<'static, Result<RecordedEvent, StoreError>>,
    ours: &HashSet<String>,
    last: &mut Option<GlobalPosition>,
    what: &str,
) -> RecordedEvent {
    let deadline = tokio::time::Instant::now() + SUBSCRIPTION_TIMEOUT;
    loop {
        let item = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("[{kind}] subscribe_all ({what}): subscription ended"),
            Err(_) => panic!("[{kind}] subscribe_all ({what}): nothing delivered within {SUBSCRIPTION_TIMEOUT:?}"),
        };
        let event = match item {
            Ok(e) => e,
            Err(e) => panic!("[{kind}] subscribe_all ({what}): item error: {e}"),
        };
        if let Some(prev) = *last {
            assert!(
                event.position > prev,
                "[{kind}] subscribe_all ({what}): position {:?} not after {prev:?} (duplicate or out of order)",
                event.position
            );
        }
        *last = Some(event.position);
        if ours.contains(&event.stream) {
            return event;
        }
    }
}

/// `subscribe_all` catches up from `None` and from a position (exclusive), then delivers
/// events appended after subscribing, in order, without duplicates.
pub async fn subscribe_all_catch_up_and_live(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("subscribe");
    let ours: HashSet<String> = [stream.clone()].into();
    let old = events(0..3);
    append_ok(store, &stream, ExpectedRevision::NoStream, old.clone()).await;
    let first_position = match store
        .read_stream(&stream, 0, 1)
        .await
        .ok()
        .and_then(|r| r.first().map(|e| e.position))
    {
        Some(p) => p,
        None => panic!("[{kind}] cannot read back the first event of {stream}"),
    };

    // From the start.
    let mut from_start = store.subscribe_all(None);
    let mut last = None;
    for (i, want) in old.iter().enumerate() {
        let got = next_ours(kind, &mut from_start, &ours, &mut last, "catch-up from None").await;
        assert_eq!(
            got.event_id, want.event_id,
            "[{kind}] subscribe_all(None): event {i} of {stream}"
        );
    }

    // From a position: exclusive.
    let mut from_pos = store.subscribe_all(Some(first_position));
    let mut last_pos = Some(first_position);
    for (i, want) in old.iter().enumerate().skip(1) {
        let got = next_ours(kind, &mut from_pos, &ours, &mut last_pos, "catch-up from a position").await;
        assert_eq!(
            got.event_id, want.event_id,
            "[{kind}] subscribe_all(after first): event {i} of {stream}"
        );
    }

    // Live: appended after both subscriptions reached the end of our old events.
    let live = events(3..6);
    for (i, e) in live.iter().enumerate() {
        append_ok(store, &stream, ExpectedRevision::Exact(2 + i as u64), vec![e.clone()]).await;
    }
    for (sub, last, what) in [
        (&mut from_start, &mut last, "live after None"),
        (&mut from_pos, &mut last_pos, "live after a position"),
    ] {
        for want in &live {
            let got = next_ours(kind, sub, &ours, last, what).await;
            assert_eq!(
                got.event_id, want.event_id,
                "[{kind}] subscribe_all ({what}) on {stream}"
            );
        }
    }

    // A subscription opened at the tip sees only what comes next.
    let tip = match store.stream_revision(&stream).await {
        Ok(Some(rev)) => match store.read_stream(&stream, rev, 1).await {
            Ok(r) if !r.is_empty() => r[0].position,
            other => panic!("[{kind}] cannot read the last event of {stream}: {other:?}"),
        },
        other => panic!("[{kind}] stream_revision({stream}) = {other:?}, expected Some"),
    };
    let mut at_tip = store.subscribe_all(Some(tip));
    let next = event(6);
    append_ok(store, &stream, ExpectedRevision::Exact(5), vec![next.clone()]).await;
    let mut last_tip = Some(tip);
    let got = next_ours(kind, &mut at_tip, &ours, &mut last_tip, "live from the tip").await;
    assert_eq!(got.event_id, next.event_id, "[{kind}] subscribe_all(tip) on {stream}");
    assert_eq!(got.revision, 6, "[{kind}] subscribe_all(tip) on {stream}: revision");
}

/// Concurrent appenders expecting the same revision: exactly one wins per revision, the
/// others get `WrongExpectedRevision`, and the stream holds exactly the winners.
pub async fn concurrent_exact_appenders(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("race");
    append_ok(store, &stream, ExpectedRevision::NoStream, events(0..1)).await;
    const WRITERS: u32 = 8;
    const ROUNDS: u64 = 5;
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let candidates: Vec<NewEvent> = (0..WRITERS).map(|w| event(1000 * (round as u32 + 1) + w)).collect();
        let results = futures::future::join_all(
            candidates
                .iter()
                .map(|e| store.append(&stream, ExpectedRevision::Exact(round), vec![e.clone()])),
        )
        .await;
        let mut won = Vec::new();
        for (e, result) in candidates.iter().zip(results) {
            match result {
                Ok(outcome) => {
                    assert_eq!(
                        outcome.last_revision,
                        round + 1,
                        "[{kind}] race on {stream} round {round}: winner's revision"
                    );
                    won.push(e.event_id);
                }
                Err(StoreError::WrongExpectedRevision { actual, .. }) => {
                    assert_eq!(
                        actual,
                        Some(round + 1),
                        "[{kind}] race on {stream} round {round}: loser's actual revision"
                    );
                }
                Err(e) => panic!("[{kind}] race on {stream} round {round}: unexpected error {e}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "[{kind}] race on {stream} round {round}: {} writers won Exact({round})",
            won.len()
        );
        winners.extend(won);
    }
    let read = read_whole_stream(store, &stream).await;
    assert_eq!(
        read.len() as u64,
        ROUNDS + 1,
        "[{kind}] race on {stream}: stream length"
    );
    assert_eq!(
        recorded_ids(&read[1..]),
        winners,
        "[{kind}] race on {stream}: stream holds other than the winners"
    );
}

/// `append_then` tells `on_commit` the outcome it returns, once, before it returns; not
/// when the append fails. Where a store numbers its log (`position_at`), the outcome's
/// position less `appended - 1` is the first event's, as `read_stream` reports it.
pub async fn append_then_tells_the_outcome_once(store: &dyn EventStore) {
    let kind = store.kind();
    let stream = unique_stream("then");
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let on_commit = |told: &std::sync::Arc<std::sync::Mutex<Vec<crate::AppendOutcome>>>| -> crate::OnCommit {
        let told = told.clone();
        Box::new(move |out: &crate::AppendOutcome| told.lock().unwrap().push(*out))
    };
    let out = store
        .append_then(&stream, ExpectedRevision::NoStream, events(0..3), on_commit(&told))
        .await
        .unwrap_or_else(|e| panic!("[{kind}] append_then to {stream} failed: {e}"));
    assert_eq!(
        *told.lock().unwrap(),
        vec![out],
        "[{kind}] on_commit must be told the returned outcome once, before append_then returns"
    );
    if let Some(first) = out.position.and_then(|last| store.position_at(Some(last), -2)) {
        let read = read_whole_stream(store, &stream).await;
        assert_eq!(
            read[0].position, first,
            "[{kind}] position_at(last, -2) is not the first event's position"
        );
        assert_eq!(
            store.position_at(Some(first), 2),
            out.position,
            "[{kind}] position_at does not step forward"
        );
    }
    let failed = store
        .append_then(&stream, ExpectedRevision::NoStream, events(3..4), on_commit(&told))
        .await;
    assert!(failed.is_err(), "[{kind}] NoStream on an existing stream must fail");
    assert_eq!(
        told.lock().unwrap().len(),
        1,
        "[{kind}] a failed append must not call on_commit"
    );
}

/// A claim for `by` on `key`, with a marker naming `by` in its data (the marker is what
/// stores without a key index write to stream `key`).
pub fn claim(key: &str, by: usize, n: u32) -> crate::Claim {
    let mut marker = event(n);
    marker.event_type = "ConformanceClaimedV1".to_owned();
    crate::Claim {
        key: key.to_owned(),
        by,
        marker: Some(marker),
    }
}

/// Whether `held` (what `claimant` returned) is the claiming event or its marker.
fn is_claimant(held: &RecordedEvent, by: &NewEvent, claim: &crate::Claim, stream: &str) -> bool {
    (held.event_id == by.event_id && held.stream == stream && held.data == by.data)
        || claim
            .marker
            .as_ref()
            .is_some_and(|m| held.event_id == m.event_id && held.data == m.data)
}

/// `append_claiming` takes keys for one of its events (one event may take several);
/// another append claiming one fails naming the key, a redelivery succeeds, and the key
/// can still take events of its own.
pub async fn claims_are_held_by_one_event(store: &dyn EventStore) {
    let kind = store.kind();
    let (a, b) = (unique_stream("claiming-a"), unique_stream("claiming-b"));
    let (key, second, other) = (unique_stream("key"), unique_stream("key-2"), unique_stream("key-free"));
    assert!(
        store
            .claimant(&key)
            .await
            .unwrap_or_else(|e| panic!("[{kind}] claimant: {e}"))
            .is_none(),
        "[{kind}] a key nobody claimed has no claimant"
    );
    let batch = events(0..3);
    let (c, c2) = (claim(&key, 1, 100), claim(&second, 1, 103));
    let claims = vec![c.clone(), c2.clone()];
    let out = store
        .append_claiming(&a, ExpectedRevision::NoStream, batch.clone(), claims.clone(), None)
        .await
        .unwrap_or_else(|e| panic!("[{kind}] append_claiming to {a} taking {key} and {second} failed: {e}"));
    assert_eq!(out.last_revision, 2, "[{kind}] {a}: revision after a claiming append");
    assert_eq!(
        recorded_ids(&read_whole_stream(store, &a).await),
        ids(&batch),
        "[{kind}] {a}: events"
    );
    let held = store.claimant(&key).await.unwrap().expect("claimed");
    assert!(
        is_claimant(&held, &batch[1], &c, &a),
        "[{kind}] {key} is held by {held:?}, not by event 1 of {a} or its marker"
    );
    let held2 = store.claimant(&second).await.unwrap().expect("claimed");
    assert!(
        is_claimant(&held2, &batch[1], &c2, &a),
        "[{kind}] {second} is held by {held2:?}, not by event 1 of {a} (which took {key} too) or its marker"
    );

    // Redelivered whole: nothing new, still held by the same event.
    let again = store
        .append_claiming(&a, ExpectedRevision::NoStream, batch.clone(), claims, None)
        .await
        .unwrap_or_else(|e| panic!("[{kind}] a redelivered append_claiming to {a} failed: {e}"));
    assert_eq!(again.appended, 0, "[{kind}] a redelivered claiming append wrote events");
    assert_eq!(
        store.claimant(&key).await.unwrap().map(|e| e.event_id),
        Some(held.event_id)
    );
    assert_eq!(
        store.claimant(&second).await.unwrap().map(|e| e.event_id),
        Some(held2.event_id)
    );

    // Another event claiming the key: refused, naming the key; its stream is not written
    // where the store takes keys and events together.
    let taken = store
        .append_claiming(
            &b,
            ExpectedRevision::NoStream,
            events(5..6),
            vec![claim(&other, 0, 101), claim(&key, 0, 102)],
            None,
        )
        .await;
    match taken {
        Err(StoreError::WrongExpectedRevision { stream, .. }) => {
            assert_eq!(stream, key, "[{kind}] a refused claim must name the key")
        }
        other => panic!("[{kind}] claiming {key} held by {a} must fail, got {other:?}"),
    }
    assert_eq!(
        store.claimant(&key).await.unwrap().map(|e| e.event_id),
        Some(held.event_id)
    );

    // The key takes events of its own after its claimant (an identifier marked shared).
    let own = store
        .append(&key, ExpectedRevision::StreamExists, events(7..8))
        .await
        .unwrap_or_else(|e| panic!("[{kind}] append to the claimed key {key} failed: {e}"));
    assert_eq!(
        own.last_revision, 1,
        "[{kind}] {key}: its own event follows its claimant"
    );
    assert_eq!(
        store.claimant(&key).await.unwrap().map(|e| e.event_id),
        Some(held.event_id)
    );
}

/// A key first written as a plain stream (claims before `append_claiming` were streams)
/// is held by that stream's first event.
pub async fn a_key_written_as_a_stream_is_held(store: &dyn EventStore) {
    let kind = store.kind();
    let key = unique_stream("key-stream");
    let first = events(0..1);
    append_ok(store, &key, ExpectedRevision::NoStream, first.clone()).await;
    assert_eq!(
        store.claimant(&key).await.unwrap().map(|e| e.event_id),
        Some(first[0].event_id),
        "[{kind}] {key} is held by its first event"
    );
    let stream = unique_stream("claiming");
    let refused = store
        .append_claiming(
            &stream,
            ExpectedRevision::NoStream,
            events(1..2),
            vec![claim(&key, 0, 9)],
            None,
        )
        .await;
    assert!(
        matches!(&refused, Err(StoreError::WrongExpectedRevision { stream: s, .. }) if *s == key),
        "[{kind}] claiming {key}, a stream already, must fail naming it, got {refused:?}"
    );
}

/// Appends to different streams racing for one key: one takes it, the others fail naming
/// the key, and the key's claimant is the winner's event (or its marker).
pub async fn concurrent_claims_of_one_key(store: &dyn EventStore) {
    let kind = store.kind();
    let key = unique_stream("contested-key");
    const WRITERS: u32 = 8;
    let streams: Vec<String> = (0..WRITERS).map(|w| unique_stream(&format!("contender-{w}"))).collect();
    let batches: Vec<Vec<NewEvent>> = (0..WRITERS).map(|w| events(10 * w..10 * w + 2)).collect();
    let claims: Vec<crate::Claim> = (0..WRITERS).map(|w| claim(&key, 1, 500 + w)).collect();
    let results = futures::future::join_all((0..WRITERS as usize).map(|w| {
        store.append_claiming(
            &streams[w],
            ExpectedRevision::NoStream,
            batches[w].clone(),
            vec![claims[w].clone()],
            None,
        )
    }))
    .await;
    let mut won = Vec::new();
    for (w, result) in results.into_iter().enumerate() {
        match result {
            Ok(_) => won.push(w),
            Err(StoreError::WrongExpectedRevision { stream, .. }) => {
                assert_eq!(stream, key, "[{kind}] a loser of the race for {key} must name it")
            }
            Err(e) => panic!("[{kind}] race for {key}: unexpected error {e}"),
        }
    }
    assert_eq!(won.len(), 1, "[{kind}] {} appends took {key}", won.len());
    let w = won[0];
    let held = store.claimant(&key).await.unwrap().expect("claimed");
    assert!(
        is_claimant(&held, &batches[w][1], &claims[w], &streams[w]),
        "[{kind}] {key} is held by {held:?}, not by the winner"
    );
}
