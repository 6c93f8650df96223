//! The embedded bus against the conformance suite, on a fresh directory and on
//! one that already holds another run's data (reopened).

use bus::embedded::EmbeddedBus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conformance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = EmbeddedBus::open(dir.path()).expect("open the embedded bus");
    bus::conformance::run_all(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_conformance_on_a_reopened_bus_with_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let bus = EmbeddedBus::open(dir.path()).expect("open the embedded bus");
        bus::conformance::run_all(&bus).await;
    }
    let bus = EmbeddedBus::open(dir.path()).expect("reopen the embedded bus");
    bus::conformance::run_all(&bus).await;
}
