//! How long the projector alone takes to build the views of an existing event store: opens
//! the embedded store of a data directory, follows it from position zero into a fresh view
//! store (the live `follow` path: batches, commits, durable commits) and prints the time
//! and the CPU it took. The views of the data directory are not touched.
//! `cargo run --release -p projections --example project_log -- DATA_DIR [CACHE_MB]`
//! (for example one kept by `crm bench import --rows 1000000 --keep DIR`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use projections::projector::{Projector, ViewStore};
use store::EventStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: project_log DATA_DIR [CACHE_MB] (a crm data directory with an embedded store)");
        std::process::exit(2);
    };
    let cache_mb: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(8);
    let path = std::path::Path::new(&dir).join("store");
    let store: Arc<dyn EventStore> = Arc::new(
        store::embedded::EmbeddedStore::open_with_cache(&path, cache_mb << 20)
            .unwrap_or_else(|e| panic!("cannot open the embedded store in {}: {e}", path.display())),
    );
    let scratch = tempfile::tempdir_in(&dir).expect("a scratch directory in the data directory");
    let views = ViewStore::open(scratch.path(), cache_mb << 20).expect("a fresh view store");
    let tip = store.last_position().map_or(0, |p| p.commit);
    let projector = Arc::new(Projector::new(views.clone(), phonenumber::country::Id::CN));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let follow = tokio::spawn(projections::worker::follow(store, projector, stopped));
    while views.checkpoint().expect("the checkpoint").map_or(0, |p| p.commit) < tip {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    follow.await.expect("the projector task").expect("the projector");
    let (user, system) = matching::cli::cpu_seconds().unwrap_or_default();
    println!(
        "projected {tip} events in {elapsed:.1} s ({:.0} events/s); CPU {user:.1} s user + {system:.1} s system",
        tip as f64 / elapsed.max(1e-9)
    );
}
