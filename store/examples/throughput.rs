//! Throughput of the embedded store: appends/s (one event per append, like the domain) and
//! `read_all` events/s (batches, like `crm replay`). Not a test: prints numbers.
//!
//! `cargo run -p store --release --example throughput -- [events] [dir]`

use std::time::Instant;

use store::embedded::SledStore;
use store::{EventStore, ExpectedRevision, NewEvent};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let dir = tempfile_dir(args.next())?;
    let store = SledStore::open(&dir)?;
    let streams = 10_000u64;
    let payload = vec![0x5Au8; 300]; // about the size of an encoded channel event

    let started = Instant::now();
    for i in 0..total {
        let stream = format!("customer-{:08}", i % streams);
        let event = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "FormSubmittedV1".to_owned(),
            data: payload.clone(),
            metadata: b"{}".to_vec(),
        };
        store.append(&stream, ExpectedRevision::Any, vec![event]).await?;
    }
    store.sync().await?;
    let append_secs = started.elapsed().as_secs_f64();
    println!(
        "append: {total} events in {append_secs:.2} s = {:.0} appends/s (1 event each, + one sync)",
        total as f64 / append_secs
    );

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
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir(arg: Option<String>) -> std::io::Result<std::path::PathBuf> {
    let dir = match arg {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("crm-store-throughput-{}", Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
