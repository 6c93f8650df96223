//! Reader + publish benchmark of the import pipeline: generates a trade-show
//! file, imports it into the embedded bus (or a no-op bus with `--null-bus`)
//! and prints rows/s and peak RSS. The end-to-end figure (into the views) is
//! `crm bench import`.
//!
//! ```text
//! cargo run --release -p ingest --example import_bench -- [ROWS] [csv|xlsx] [--null-bus] [--window N]
//! ```

use std::time::Instant;

use bus::{Ack, Bus, BusConsumer, BusError, BusRecord, DeadLetter, Delivery, Position};
use ingest::import::{self, ImportOptions, TerminalProgress};

/// Accepts everything at once: measures the reader and row building alone.
struct NullBus(std::sync::atomic::AtomicI64);

#[async_trait::async_trait]
impl Bus for NullBus {
    async fn publish(&self, _: BusRecord) -> Result<Ack, BusError> {
        let offset = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Ack {
            position: Position { partition: 0, offset },
        })
    }
    async fn consumer(&self, _: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        Err(BusError::Unavailable("null bus".into()))
    }
    async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), BusError> {
        Ok(())
    }
    async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }
    fn kind(&self) -> &'static str {
        "null"
    }
}

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let ext = if args.iter().any(|a| a == "xlsx") {
        "xlsx"
    } else {
        "csv"
    };
    let null_bus = args.iter().any(|a| a == "--null-bus");
    let window: usize = args
        .iter()
        .position(|a| a == "--window")
        .and_then(|i| args.get(i + 1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(format!("bench.{ext}"));

    let started = Instant::now();
    let generated = import::generate(rows, 0.1, 42, &file)?;
    let size = std::fs::metadata(&file)?.len();
    println!(
        "generated {} rows ({} people, {} duplicate rows), {:.1} MiB, in {:.1} s",
        generated.rows,
        generated.people,
        generated.duplicate_rows,
        size as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    );

    let bus: Box<dyn Bus> = if null_bus {
        Box::new(NullBus(Default::default()))
    } else {
        Box::new(bus::embedded::EmbeddedBus::open(&dir.path().join("bus"))?)
    };
    let mut options = ImportOptions::new(&file);
    options.template = Some("trade-show".into());
    options.source = Some("bench".into());
    options.publish_window = window;
    options.ledger = Some(import::ImportLedger::open(&dir.path().join("ledger"))?);
    let progress = TerminalProgress::new();
    let summary = import::run(&options, bus.as_ref(), &progress).await?;
    println!("{summary}");
    println!(
        "import_bench: {} rows in {:.2} s = {:.0} rows/s into the {} bus; peak RSS {:.0} MiB",
        summary.rows_read,
        summary.elapsed.as_secs_f64(),
        summary.rows_per_second(),
        bus.kind(),
        peak_rss_mib()
    );
    Ok(())
}
