//! The Kafka bus: conformance against a real broker when `CRM_KAFKA_BOOTSTRAP`
//! is set (start one with `deploy/kafka/kafka.sh start`), plus checks that need
//! no broker (configuration, an unreachable broker).

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use bus::kafka::{KafkaBus, KafkaConfig};
use bus::{Bus, BusError, BusRecord, PartitionLag};

/// The broker to test against, or `None` (with one line saying so) when there is none.
fn bootstrap(test: &str) -> Option<String> {
    match std::env::var("CRM_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ => {
            // Straight to stderr: libtest captures eprintln!, and this line must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: Kafka conformance NOT run: CRM_KAFKA_BOOTSTRAP is not set \
                 (run deploy/kafka/kafka.sh start, then CRM_KAFKA_BOOTSTRAP=127.0.0.1:19092 cargo test -p bus)"
            );
            None
        }
    }
}

/// A config for tests: a per-run topic prefix so runs never see each other's topics.
fn test_config(bootstrap: &str) -> KafkaConfig {
    KafkaConfig {
        topic_prefix: format!("crm-test-{}.", uuid::Uuid::new_v4().simple()),
        connect_timeout_ms: 60_000,
        ..KafkaConfig::with_bootstrap(bootstrap)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_conformance() {
    let Some(bootstrap) = bootstrap("kafka_conformance") else {
        return;
    };
    let bus = KafkaBus::connect(test_config(&bootstrap))
        .await
        .expect("connect to the test broker");
    bus::conformance::run_all(&bus).await;
    bus.delete_topics().await.expect("delete this run's topics");
}

/// The suite must also pass on topics that already hold other runs' data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_conformance_on_shared_topics() {
    let Some(bootstrap) = bootstrap("kafka_conformance_on_shared_topics") else {
        return;
    };
    let config = KafkaConfig {
        topic_prefix: "crm-test-shared.".into(),
        ..KafkaConfig::with_bootstrap(bootstrap)
    };
    let bus = KafkaBus::connect(config).await.expect("connect to the test broker");
    bus::conformance::run_all(&bus).await;
}

/// After a rebalance moves partitions to another member, a commit of records read
/// before it changes only the partitions the committer still owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_rebalance_skips_revoked_partitions() {
    let Some(bootstrap) = bootstrap("commit_after_rebalance_skips_revoked_partitions") else {
        return;
    };
    let bus = KafkaBus::connect(test_config(&bootstrap))
        .await
        .expect("connect to the test broker");
    let mut partitions = BTreeSet::new();
    for i in 0..30 {
        let ack = bus
            .publish(BusRecord {
                key: format!("subject-{i}"),
                ..Default::default()
            })
            .await
            .expect("publish");
        partitions.insert(ack.position.partition);
    }
    assert_eq!(partitions.len(), 3, "30 keys should spread over the 3 partitions");

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut a = bus.consumer("rebalance").await.expect("consumer a");
    let mut read_by_a = Vec::new();
    while read_by_a.len() < 30 {
        assert!(
            Instant::now() < deadline,
            "consumer a got {} of 30 records",
            read_by_a.len()
        );
        read_by_a.extend(a.poll(100, Duration::from_millis(200)).await.expect("poll a"));
    }

    // A second member joins; both keep polling so the rebalance completes.
    let mut b = bus.consumer("rebalance").await.expect("consumer b");
    let (owned_a, owned_b) = loop {
        assert!(
            Instant::now() < deadline,
            "the group did not rebalance over two members in time"
        );
        a.poll(100, Duration::from_millis(100)).await.expect("poll a");
        b.poll(100, Duration::from_millis(100)).await.expect("poll b");
        let owned = |lag: Vec<PartitionLag>| lag.iter().map(|l| l.partition).collect::<BTreeSet<i32>>();
        let (oa, ob) = (
            owned(a.lag().await.expect("lag a")),
            owned(b.lag().await.expect("lag b")),
        );
        if !oa.is_empty() && !ob.is_empty() && oa.is_disjoint(&ob) && oa.len() + ob.len() == 3 {
            break (oa, ob);
        }
    };

    // A commits everything it read before the rebalance, including B's partitions now.
    let positions: Vec<_> = read_by_a.iter().map(|d| d.position).collect();
    a.commit(&positions).await.expect("commit a");
    let last = bus::commit_targets(&positions);
    for l in a.lag().await.expect("lag a") {
        assert_eq!(
            l.committed,
            last[&l.partition] + 1,
            "a owns partition {} and committed it",
            l.partition
        );
    }
    for l in b.lag().await.expect("lag b") {
        assert!(owned_b.contains(&l.partition));
        assert_eq!(
            l.committed, 0,
            "partition {} belongs to b (a owns {owned_a:?}); a's commit must not have moved it",
            l.partition
        );
    }
    drop((a, b));
    bus.delete_topics().await.expect("delete this run's topics");
}

#[tokio::test]
async fn unreachable_broker_fails_clearly_within_connect_timeout() {
    // Port 1 on loopback: nothing listens there, connections are refused at once.
    let config = KafkaConfig {
        connect_timeout_ms: 1_500,
        ..KafkaConfig::with_bootstrap("127.0.0.1:1")
    };
    let started = Instant::now();
    let err = KafkaBus::connect(config)
        .await
        .expect_err("no broker listens on 127.0.0.1:1");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "connect gave up after {took:?}, far past its 1.5 s timeout"
    );
    match &err {
        BusError::Unavailable(msg) => {
            assert!(
                msg.contains("127.0.0.1:1") && msg.contains("kafka.sh start"),
                "unhelpful message: {msg}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn config_defaults_and_unknown_fields() {
    let c: KafkaConfig = serde_json::from_str("{}").expect("empty config uses defaults");
    assert_eq!(c, KafkaConfig::default());
    assert_eq!(c.inbound_topic(), "crm.inbound");
    assert_eq!(c.dead_letter_topic(), "crm.inbound-dlq");
    assert_eq!(c.publish_timeout(), Duration::from_secs(5));
    c.validate().expect("defaults are valid");

    let c: KafkaConfig = serde_json::from_str(
        r#"{"bootstrap_servers":"k1:9092,k2:9092","topic_prefix":"prod.","partitions":12,"replication":3,
            "publish_timeout_ms":2000,"producer_properties":{"linger.ms":"10"}}"#,
    )
    .expect("full config parses");
    assert_eq!(c.inbound_topic(), "prod.inbound");
    assert_eq!(c.partitions, 12);
    c.validate().expect("valid");

    let err = serde_json::from_str::<KafkaConfig>(r#"{"bootstrap":"x"}"#).expect_err("unknown field");
    assert!(err.to_string().contains("unknown field `bootstrap`"), "{err}");
}

#[test]
fn config_validation_names_the_bad_value() {
    let check = |c: KafkaConfig, needle: &str| {
        let err = c.validate().expect_err("invalid config must be refused").to_string();
        assert!(err.contains(needle), "message {err:?} should mention {needle:?}");
    };
    check(
        KafkaConfig {
            bootstrap_servers: " ".into(),
            ..Default::default()
        },
        "bootstrap_servers",
    );
    check(
        KafkaConfig {
            topic_prefix: "crm/".into(),
            ..Default::default()
        },
        "'/'",
    );
    check(
        KafkaConfig {
            partitions: 0,
            ..Default::default()
        },
        "partitions is 0",
    );
    check(
        KafkaConfig {
            publish_timeout_ms: 5,
            ..Default::default()
        },
        "publish_timeout_ms is 5",
    );
    let mut props = std::collections::BTreeMap::new();
    props.insert("enable.auto.commit".to_string(), "true".to_string());
    check(
        KafkaConfig {
            consumer_properties: props,
            ..Default::default()
        },
        "\"enable.auto.commit\"",
    );
}

#[tokio::test]
async fn unknown_librdkafka_property_is_a_config_error() {
    let mut props = std::collections::BTreeMap::new();
    props.insert("no.such.property".to_string(), "1".to_string());
    let config = KafkaConfig {
        properties: props,
        connect_timeout_ms: 0,
        ..KafkaConfig::with_bootstrap("127.0.0.1:1")
    };
    match KafkaBus::connect(config).await {
        Err(BusError::Config(msg)) => assert!(msg.contains("no.such.property"), "{msg}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}
