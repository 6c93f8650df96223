//! Commands that work on a data directory directly (no server running):
//! `crm import` and `crm quarantine`. They take the data-dir lock like `serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use domain::{CustomerService, DomainWorker, WorkerConfig};
use ingest::quarantine::Quarantine;
use projections::Projector;
use tokio::sync::watch;

use crate::config::Config;
use crate::node::Node;

#[derive(clap::Subcommand, Clone)]
pub enum QuarantineCommand {
    /// List quarantined requests (oldest first).
    List {
        #[arg(long)]
        channel: Option<String>,
        /// bad_signature, replayed, undecodable, failed_validation, payload_too_large, ...
        #[arg(long)]
        reason: Option<String>,
        /// pending, replayed, replay_failed
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Also list poison messages the domain set aside on the bus's dead-letter log/topic.
        #[arg(long)]
        dead_letters: bool,
    },
    /// Show one quarantined request in full (secrets redacted).
    Show { id: String },
    /// Run quarantined requests through their channel's current config again and publish them.
    Replay {
        /// Ids to replay; with --all, every pending one.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
    },
}

fn ingest_state(node: &Node, quarantine: Arc<Quarantine>) -> anyhow::Result<ingest::http::IngestState> {
    Ok(ingest::http::IngestState {
        bus: node.bus.clone(),
        channels: Arc::new(ingest::channels::build(&node.config.channels, &|v| {
            std::env::var(v).ok()
        })?),
        rejections: Some(quarantine),
        publish_timeout: Duration::from_millis(node.config.http.publish_timeout_ms),
    })
}

pub async fn quarantine(cmd: &QuarantineCommand, config: Config) -> anyhow::Result<()> {
    let node = Node::open(config).await.context(
        "the quarantine lives in the data directory; while `crm serve` runs, use the admin GraphQL \
         (quarantined, quarantinedRequest, replayQuarantined) instead",
    )?;
    let quarantine = Arc::new(Quarantine::open(&node.local)?);
    match cmd {
        QuarantineCommand::List {
            channel,
            reason,
            status,
            limit,
            dead_letters,
        } => {
            let filter = crate::admin::filter(channel.clone(), reason.as_deref(), status.as_deref())
                .map_err(anyhow::Error::msg)?;
            let list = quarantine.list(&filter, *limit, None)?;
            println!(
                "{:<26} {:<10} {:<14} {:<20} {:<13} message",
                "id", "channel", "instance", "reason", "status"
            );
            for s in &list {
                println!(
                    "{:<26} {:<10} {:<14} {:<20} {:<13} {}",
                    s.id,
                    s.channel,
                    s.instance,
                    s.reason.as_str(),
                    s.status.as_str(),
                    s.message
                );
            }
            println!("{} quarantined request(s)", list.len());
            if *dead_letters {
                let dl = node.bus.dead_letters(*limit).await?;
                println!("\ndead letters on the {} bus:", node.bus.kind());
                for d in &dl {
                    println!(
                        "{}:{} key={} event-id={} reason={}",
                        d.position.partition,
                        d.position.offset,
                        d.record.key,
                        d.record.header(bus::HEADER_EVENT_ID).unwrap_or("-"),
                        d.reason
                    );
                }
                println!("{} dead letter(s)", dl.len());
            }
        }
        QuarantineCommand::Show { id } => {
            let r = quarantine
                .get(id)?
                .with_context(|| format!("no quarantined request has id {id:?}; see `crm quarantine list`"))?;
            let d = crate::admin::detail(&r);
            println!(
                "id:        {}\nchannel:   {}/{}\nreceived:  {}\nreason:    {}: {}\nstatus:    {}",
                d.item.id,
                d.item.channel,
                d.item.instance,
                d.item.received_at,
                d.item.reason,
                d.item.message,
                d.item.status
            );
            for f in &d.field_errors {
                println!("field:     {f}");
            }
            for h in &d.headers {
                println!("header:    {h}");
            }
            for p in &d.replay_history {
                println!("replay:    {p}");
            }
            println!("body ({} bytes):\n{}", d.item.body_bytes, d.body_text);
        }
        QuarantineCommand::Replay { ids, all } => {
            let state = ingest_state(&node, quarantine.clone())?;
            let mut targets = ids.clone();
            if *all {
                let filter = crate::admin::filter(None, None, Some("pending")).map_err(anyhow::Error::msg)?;
                targets.extend(quarantine.list(&filter, usize::MAX, None)?.into_iter().map(|s| s.id));
            }
            if targets.is_empty() {
                anyhow::bail!("nothing to replay: give quarantine ids, or --all for every pending one");
            }
            for id in targets {
                match state.replay_quarantined(&quarantine, &id).await {
                    Ok(r) => println!("{id}: {}", crate::admin::replay_result(&r).message),
                    Err(e) => println!("{id}: {e}"),
                }
            }
        }
    }
    Ok(())
}

/// `crm import`: reads the file, publishes its rows, then runs the domain and the
/// projections here until every row is in the views, and prints the summary.
pub async fn import(args: &ingest::import::ImportArgs, config: Config) -> anyhow::Result<()> {
    if args.print_template_if_asked()? {
        return Ok(());
    }
    let (summary, _) = import_into_views(args.options(), config, &ingest::import::TerminalProgress::new()).await?;
    println!("{summary}");
    Ok(())
}

/// When each phase of an import into the views ended, from the start of the import.
#[derive(Debug, Clone, Copy)]
pub struct ImportPhases {
    /// Every row read and published to the bus.
    pub published: Duration,
    /// The domain has handled every published row.
    pub resolved: Duration,
    /// The views hold every event the domain appended.
    pub projected: Duration,
}

/// Imports a file into the data directory and waits until its rows are in the views.
pub async fn import_into_views(
    mut options: ingest::import::ImportOptions,
    config: Config,
    progress: &dyn ingest::import::ImportProgress,
) -> anyhow::Result<(ingest::import::ImportSummary, ImportPhases)> {
    let region = config.region()?;
    let started = std::time::Instant::now();
    let node = Node::open(config).await.context(
        "`crm import` works on the data directory; while `crm serve` runs, POST the file to /v1/imports instead",
    )?;
    options.ledger = Some(ingest::import::ImportLedger::in_db(&node.local)?);

    // The domain and the projections run alongside the publishing, here in this process.
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = Arc::new(CustomerService::new(node.store.clone(), node.domain_config()?));
    let worker = DomainWorker::new(node.bus.clone(), service, WorkerConfig::default());
    let mut backlog = worker.backlog();
    let domain = tokio::spawn(worker.run(stop_rx.clone()));
    let projector = Arc::new(Projector::new(node.views.clone(), region));
    let follow = tokio::spawn(projections::worker::follow(node.store.clone(), projector, stop_rx));

    let mut summary = ingest::import::run(&options, node.bus.as_ref(), progress).await?;
    let published = started.elapsed();
    // The rows are on the bus; identity resolution and the views follow, with their own bar.
    let bar = phase_bar(
        summary.accepted,
        "resolving identities {wide_bar} {pos}/{len} rows {rate} ETA {eta}",
    );
    // Only a backlog reported after the last publish counts (each report is a fresh reading).
    backlog.borrow_and_update();
    loop {
        backlog.changed().await?;
        let left = *backlog.borrow_and_update();
        bar.set_position(summary.accepted.saturating_sub(u64::try_from(left).unwrap_or(0)));
        if left == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    let resolved = started.elapsed();
    // Then the views: caught up when nothing in the log lies beyond their checkpoint.
    let tip = node.store.last_position().map_or(0, |p| p.commit);
    let bar = phase_bar(tip, "building views {wide_bar} {pos}/{len} events {rate} ETA {eta}");
    loop {
        let checkpoint = node.views.checkpoint()?;
        bar.set_position(checkpoint.map_or(0, |p| p.commit).min(tip));
        if node.store.read_all(checkpoint, 1).await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let projected = started.elapsed();
    let _ = stop_tx.send(true);
    domain.await??;
    follow.await??;
    node.store.sync().await?;
    node.views.flush().await?;
    let (new, matched) = crate::admin::customer_figures(node.store.clone(), &summary).await?;
    summary.new_customers = Some(new);
    summary.matched_customers = Some(matched);
    let phases = ImportPhases {
        published,
        resolved,
        projected,
    };
    Ok((summary, phases))
}

/// A progress bar for one phase of an import after its rows are published (hidden when
/// stderr is not a terminal).
fn phase_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        ));
    }
    bar
}
