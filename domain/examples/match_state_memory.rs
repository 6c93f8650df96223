//! How much memory the domain's live matching state takes for an existing data directory:
//! opens its embedded store, rebuilds the matching state from `$all` (as a restarted domain
//! does on its first decision) and prints the time and the resident memory it added.
//! `cargo run --release -p domain --example match_state_memory -- DATA_DIR`
//! (for example one kept by `crm bench import --rows 1000000 --keep DIR`).

use std::sync::Arc;
use std::time::Instant;

use domain::{CustomerService, DomainConfig};
use store::EventStore;

/// Resident memory of this process in MiB.
fn rss_mib() -> f64 {
    matching::cli::rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: match_state_memory DATA_DIR (a crm data directory with an embedded store)");
        std::process::exit(2);
    };
    let path = std::path::Path::new(&dir).join("store");
    let store: Arc<dyn EventStore> = Arc::new(
        store::embedded::EmbeddedStore::open_with_cache(&path, 16 << 20)
            .unwrap_or_else(|e| panic!("cannot open the embedded store in {}: {e}", path.display())),
    );
    let service = CustomerService::new(store, DomainConfig::default());
    let before = rss_mib();
    let started = Instant::now();
    let indexed = service.matching_state().await.expect("matching state").indexed();
    let after = rss_mib();
    println!(
        "matching state of {indexed} customers rebuilt in {:.1} s: {:.0} MiB resident ({:.0} MiB before, {:.0} B per customer)",
        started.elapsed().as_secs_f64(),
        after - before,
        before,
        (after - before) * 1024.0 * 1024.0 / indexed.max(1) as f64
    );
}
