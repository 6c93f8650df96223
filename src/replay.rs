//! `crm replay`: rebuild every view from position zero into a fresh view store (in memory:
//! views stay decoded between batches), then check that it equals the live one key for key.

use indicatif::{ProgressBar, ProgressStyle};
use projections::{Projector, ViewDigest};

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

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events replayed ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let (report, rebuilt) = projections::worker::rebuild(node.store.clone(), &live, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    // The rebuild is done when its view store is materialised: serialised, in key order.
    let materialise = std::time::Instant::now();
    let entries = rebuilt.into_entries()?;
    let serialised = materialise.elapsed();
    let elapsed = report.elapsed + serialised;
    println!(
        "replayed {} events into {} view entries in {:.2} s: {:.0} events/s ({:.2} s reading and applying, {:.2} s serialising)",
        report.events,
        entries.len(),
        elapsed.as_secs_f64(),
        report.events as f64 / elapsed.as_secs_f64().max(1e-9),
        report.elapsed.as_secs_f64(),
        serialised.as_secs_f64(),
    );

    let (live_keys, live_digest) = node.views.digest()?;
    let mut digest = ViewDigest::default();
    for (k, v) in &entries {
        digest.add(k, v);
    }
    let (fresh_keys, fresh_digest) = digest.finish();
    println!("live views:    {live_keys} keys, digest {live_digest:016x}");
    println!("rebuilt views: {fresh_keys} keys, digest {fresh_digest:016x}");
    if (live_keys, live_digest) != (fresh_keys, fresh_digest) {
        anyhow::bail!("the rebuilt views differ from the live ones: the projection is not a pure function of the log");
    }
    println!("rebuilt views equal the live views");
    Ok(())
}
