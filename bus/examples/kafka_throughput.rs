//! Publish and consume throughput of the Kafka bus against a local broker.
//!
//! ```text
//! deploy/kafka/kafka.sh start
//! cargo run --release -p bus --example kafka_throughput -- [messages] [concurrency] [payload-bytes]
//! ```
//! The broker is `CRM_KAFKA_BOOTSTRAP` (default 127.0.0.1:19092). Every run uses
//! fresh topics (`crm-bench-<uuid>.`, deleted at the end) so only its own records are counted.

use std::time::{Duration, Instant};

use bus::kafka::{KafkaBus, KafkaConfig};
use bus::{Bus, BusRecord, HEADER_EVENT_ID, HEADER_SCHEMA, HEADER_SCHEMA_VERSION};
use futures::StreamExt;

fn arg(n: usize, default: usize) -> usize {
    match std::env::args().nth(n) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!(
                "argument {n} ({v:?}) is not a number; usage: kafka_throughput [messages] [concurrency] [payload-bytes]"
            );
            std::process::exit(2)
        }),
    }
}

#[tokio::main]
async fn main() {
    let messages = arg(1, 20_000);
    let concurrency = arg(2, 256).max(1);
    let payload_bytes = arg(3, 100);
    let bootstrap = std::env::var("CRM_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let config = KafkaConfig {
        topic_prefix: format!("crm-bench-{}.", uuid::Uuid::new_v4().simple()),
        connect_timeout_ms: 30_000,
        ..KafkaConfig::with_bootstrap(&bootstrap)
    };
    let bus = match KafkaBus::connect(config).await {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    };
    println!(
        "kafka at {bootstrap}, topic {}, {} partitions: {messages} messages of {payload_bytes} bytes, {concurrency} concurrent publishes",
        bus.config().inbound_topic(),
        bus.config().partitions
    );

    // Warm-up: the first produce on a fresh topic waits for metadata and the producer id.
    let warm = Instant::now();
    if let Err(e) = bus.publish(record(usize::MAX, payload_bytes)).await {
        eprintln!("warm-up publish failed: {e}");
        std::process::exit(1)
    }
    println!("first publish acknowledged after {:?}", warm.elapsed());

    let started = Instant::now();
    let mut failures = 0usize;
    let mut results = futures::stream::iter(0..messages)
        .map(|i| bus.publish(record(i, payload_bytes)))
        .buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            failures += 1;
            if failures == 1 {
                eprintln!("publish failed: {e}");
            }
        }
    }
    let took = started.elapsed();
    println!(
        "publish: {messages} in {:.2} s = {:.0} msg/s ({failures} failed)",
        took.as_secs_f64(),
        messages as f64 / took.as_secs_f64()
    );

    let expected = messages + 1 - failures;
    let mut consumer = match bus.consumer("bench").await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    };
    let joined = Instant::now();
    let mut received = 0usize;
    let mut first: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(120);
    while received < expected && Instant::now() < give_up {
        match consumer.poll(5_000, Duration::from_millis(500)).await {
            Ok(batch) => {
                if !batch.is_empty() && first.is_none() {
                    first = Some(Instant::now());
                    println!(
                        "first delivery {:?} after the consumer was created (group join)",
                        joined.elapsed()
                    );
                }
                received += batch.len();
            }
            Err(e) => eprintln!("poll failed: {e}"),
        }
    }
    let after_first = first.map(|f| f.elapsed()).unwrap_or_default();
    let total = joined.elapsed();
    // librdkafka prefetches in the background, so the rate after the first delivery
    // flatters; the rate including the group join is the conservative figure.
    println!(
        "consume: {received} of {expected}: {:.0} msg/s including the group join ({:.2} s), \
         {:.0} msg/s after the first delivery ({:.2} s)",
        received as f64 / total.as_secs_f64().max(1e-9),
        total.as_secs_f64(),
        received as f64 / after_first.as_secs_f64().max(1e-9),
        after_first.as_secs_f64()
    );
    drop(consumer);
    if let Err(e) = bus.delete_topics().await {
        eprintln!("could not delete the benchmark topics: {e}");
    }
}

fn record(i: usize, payload_bytes: usize) -> BusRecord {
    let mut r = BusRecord {
        key: format!("bench:subject-{}", i % 1_000),
        payload: vec![b'x'; payload_bytes],
        ..Default::default()
    };
    r.headers.insert(HEADER_EVENT_ID.into(), format!("bench-{i}"));
    r.headers
        .insert(HEADER_SCHEMA.into(), "crm.inbound.v1.FormSubmittedV1".into());
    r.headers.insert(HEADER_SCHEMA_VERSION.into(), "1".into());
    r
}
