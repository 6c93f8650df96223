//! `crm replay`: rebuild every view from position zero into a fresh view store,
//! then check that it equals the live one key for key.

use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use projections::{Projector, ViewStore};

use crate::config::Config;
use crate::node::Node;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let region = config.region()?;
    let node = Node::open(config).await?;
    // Bring the live views up to the store's tip first (no other process runs: the data dir is locked).
    let live = Projector::new(node.views.clone(), region);
    let caught_up = projections::worker::replay(node.store.as_ref(), &live, |_| {}).await?;
    node.views.flush().await?;
    if caught_up.events > 0 {
        println!("live views were {} events behind; caught up", caught_up.events);
    }

    let dir = tempfile::tempdir().context("cannot create a temporary directory for the rebuild")?;
    // A throw-away store: no background flushing, a cache that holds it all.
    let fresh_db = sled::Config::new()
        .path(dir.path())
        .temporary(true)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(1024 * 1024 * 1024)
        .open()
        .context("cannot open the temporary view store")?;
    let fresh = Arc::new(Projector::new(ViewStore::open(&fresh_db)?, region));
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events replayed ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let report = projections::worker::replay(node.store.as_ref(), &fresh, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();

    let (live_keys, live_digest) = node.views.digest()?;
    let (fresh_keys, fresh_digest) = fresh.views().digest()?;
    println!(
        "replayed {} events in {:.2} s: {:.0} events/s",
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_second()
    );
    println!("live views:    {live_keys} keys, digest {live_digest:016x}");
    println!("rebuilt views: {fresh_keys} keys, digest {fresh_digest:016x}");
    if (live_keys, live_digest) != (fresh_keys, fresh_digest) {
        anyhow::bail!("the rebuilt views differ from the live ones: the projection is not a pure function of the log");
    }
    println!("rebuilt views equal the live views");
    Ok(())
}
