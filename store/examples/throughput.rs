//! Throughput of the embedded store: appends/s (one event per append, like the domain),
//! with 1, 8, 16 and 64 appends in flight, each followed by one `sync()` that is counted;
//! then `read_all` events/s in batches of 1000 (like `crm replay`). Prints numbers; not a test.
//!
//! `[IN_FLIGHT=1,8,16,64] cargo run -p store --release --example throughput -- [events per phase] [dir]`

use std::time::Instant;

use futures::StreamExt;
use store::embedded::EmbeddedStore;
use store::{EventStore, ExpectedRevision, NewEvent};
use uuid::Uuid;

const STREAMS: u64 = 10_000;

fn new_event(payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "FormSubmittedV1".to_owned(),
        data: payload.to_vec(),
        metadata: b"{}".to_vec(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let per_phase: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("crm-store-throughput-{}", Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(&dir)?;
    let store = EmbeddedStore::open(&dir)?;
    let payload = vec![0x5Au8; 300]; // about the size of an encoded channel event

    // `IN_FLIGHT=16,64` runs only those phases.
    let phases: Vec<usize> = match std::env::var("IN_FLIGHT") {
        Ok(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        Err(_) => vec![1, 8, 16, 64],
    };
    for in_flight in phases {
        let started = Instant::now();
        let results: Vec<_> = futures::stream::iter(0..per_phase)
            .map(|i| {
                let (store, event) = (&store, new_event(&payload));
                async move {
                    let stream = format!("customer-{:08}", i % STREAMS);
                    store.append(&stream, ExpectedRevision::Any, vec![event]).await
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        for r in results {
            r?;
        }
        let append_secs = started.elapsed().as_secs_f64();
        store.sync().await?;
        let total_secs = started.elapsed().as_secs_f64();
        println!(
            "append, {in_flight:>2} in flight: {per_phase} events, {:.0} appends/s acknowledged, \
             {:.0} appends/s including the final sync ({:.2} s)",
            per_phase as f64 / append_secs,
            per_phase as f64 / total_secs,
            total_secs - append_secs
        );
    }

    let started = Instant::now();
    let mut after = None;
    let mut read = 0u64;
    loop {
        let batch = store.read_all(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.position);
        read += batch.len() as u64;
    }
    let read_secs = started.elapsed().as_secs_f64();
    println!(
        "read_all: {read} events in {read_secs:.2} s = {:.0} events/s (batches of 1000)",
        read as f64 / read_secs
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
