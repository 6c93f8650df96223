//! Live scoring latency at scale: loads a CSV (e.g. from the `generate`
//! example) into a `LiveIndex`, then scores every `STEP`-th record and prints
//! p50/p99/max latency:
//! `cargo run --release -p matching --example live -- customers.csv [STEP]`.

use std::time::Instant;

use matching::{Field, LiveIndex, Record};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: live FILE.csv [STEP]");
        return std::process::ExitCode::FAILURE;
    };
    let step: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut reader = match csv::Reader::from_path(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let headers = reader.headers().cloned().unwrap_or_default();
    let columns: Vec<(usize, Option<Field>)> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (i, Field::from_header(h)))
        .collect();
    let mut index = LiveIndex::default();
    let mut queries = Vec::new();
    let started = Instant::now();
    for (n, row) in reader.records().enumerate() {
        let Ok(row) = row else { continue };
        let mut record = Record::new();
        for &(i, f) in &columns {
            if let (Some(f), Some(v)) = (f, row.get(i)) {
                record.set(f, v);
            }
        }
        if n % step == 0 {
            queries.push(record.clone());
        }
        index.insert(row.get(0).unwrap_or_default(), &record);
    }
    println!(
        "indexed {} records in {:.1} s",
        index.len(),
        started.elapsed().as_secs_f64()
    );
    let mut latencies: Vec<f64> = Vec::with_capacity(queries.len());
    let mut merges = 0;
    for q in &queries {
        let t = Instant::now();
        let scored = index.score_candidates(q);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        merges += scored
            .iter()
            .filter(|c| c.decision == matching::Decision::Merge)
            .count();
    }
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))];
    println!(
        "scored {} queries: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {merges} merge candidates; peak RSS {:?} MiB",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or_default(),
        matching::cli::peak_rss_bytes().map(|b| b / (1 << 20))
    );
    std::process::ExitCode::SUCCESS
}
