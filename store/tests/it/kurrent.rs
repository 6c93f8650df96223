//! The KurrentDB adapter: the conformance suite against a real server when
//! `CRM_EVENTSTORE_URL` is set, and the failure paths that need no server.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use store::conformance::{self, event, unique_stream};
use store::kurrent::{DEFAULT_STREAM_PREFIXES, KurrentStore, install_tls_crypto_provider};
use store::{EventStore, ExpectedRevision, StoreError};

/// A port nothing listens on; few discovery attempts so failures come fast.
const UNREACHABLE: &str =
    "kurrentdb://admin:changeit@127.0.0.1:1?tls=false&maxDiscoverAttempts=2&discoveryInterval=100";

/// Writes past the test harness' output capture, so the line shows in a normal `cargo test`.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_a_real_server_only_when_crm_eventstore_url_is_set() {
    let Ok(url) = std::env::var("CRM_EVENTSTORE_URL") else {
        say(
            "kurrent conformance: SKIPPED (not counted as passed): CRM_EVENTSTORE_URL is not set; no KurrentDB/EventStoreDB \
             server on this machine. Run one (deploy/eventstoredb/README.md) and set e.g. \
             CRM_EVENTSTORE_URL='kurrentdb://admin:changeit@localhost:2113?tls=false'",
        );
        return;
    };
    install_tls_crypto_provider();
    let store = match KurrentStore::connect(&url).await {
        Ok(s) => s,
        Err(e) => panic!("CRM_EVENTSTORE_URL is set but the server is not usable: {e}"),
    };
    conformance::run_all(&store).await;
    say("kurrent conformance: PASSED against the server in CRM_EVENTSTORE_URL");
}

#[tokio::test]
async fn connecting_to_an_unreachable_server_says_unavailable_without_the_password() {
    let result = tokio::time::timeout(Duration::from_secs(30), KurrentStore::connect(UNREACHABLE)).await;
    match result {
        Ok(Err(StoreError::Unavailable(m))) => {
            assert!(!m.contains("changeit"), "password leaked: {m}");
            assert!(m.contains("127.0.0.1:1"), "message does not name the server: {m}");
        }
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
        Err(_) => panic!("connect did not give up within 30 s"),
    }
}

#[tokio::test]
async fn operations_on_an_unreachable_server_fail_with_unavailable() {
    let store = KurrentStore::connect_lazy(UNREACHABLE, &DEFAULT_STREAM_PREFIXES).expect("lazy client");
    let stream = unique_stream("unreachable");
    let append = tokio::time::timeout(
        Duration::from_secs(30),
        store.append(&stream, ExpectedRevision::NoStream, vec![event(0)]),
    )
    .await
    .expect("append gave up within 30 s");
    assert!(matches!(append, Err(StoreError::Unavailable(_))), "append: {append:?}");
    let read = tokio::time::timeout(Duration::from_secs(30), store.read_all(None, 10))
        .await
        .expect("read_all gave up");
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "read_all: {read:?}");
}

#[tokio::test]
async fn a_subscription_reports_failures_and_keeps_retrying() {
    let store = KurrentStore::connect_lazy(UNREACHABLE, &DEFAULT_STREAM_PREFIXES).expect("lazy client");
    let mut sub = store.subscribe_all(None);
    for attempt in 1..=2 {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(Err(StoreError::Unavailable(m)))) => assert!(m.contains("resubscribing"), "{m}"),
            Ok(other) => panic!("attempt {attempt}: expected an Unavailable item, got {other:?}"),
            Err(_) => panic!("attempt {attempt}: no report within 30 s"),
        }
    }
}
