//! Roles as separate processes on a real Kafka broker (CRM_KAFKA_BOOTSTRAP, started by
//! deploy/kafka/kafka.sh): two ingest processes, one domain process (embedded store,
//! served read-only to the others), one api process (its own projector and views).
//! 10,000 forms from concurrent clients, the domain killed with SIGKILL midway and
//! restarted; at the end every acknowledged form is in the views exactly once, and the
//! dead-letter topic holds exactly the poison messages sent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::Bus;

use crate::harness::Server;

const FORMS: usize = 10_000;
const CLIENTS: usize = 8;
const POISON: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn split_roles_on_kafka_lose_nothing_and_dead_letter_poison() {
    let Ok(bootstrap) = std::env::var("CRM_KAFKA_BOOTSTRAP") else {
        eprintln!(
            "Kafka multi-process test NOT run: CRM_KAFKA_BOOTSTRAP is not set (start a broker with \
             `bash deploy/kafka/kafka.sh start` and set CRM_KAFKA_BOOTSTRAP=127.0.0.1:19092; deploy/test-all.sh does both)"
        );
        return;
    };
    let prefix = format!("crm-e2e-{:x}.", rand::random::<u32>());
    let kafka_env = |extra: &[(&str, String)]| {
        let mut env = vec![
            ("CRM__BUS__KIND".to_string(), "kafka".to_string()),
            ("CRM__BUS__KAFKA__BOOTSTRAP_SERVERS".to_string(), bootstrap.clone()),
            ("CRM__BUS__KAFKA__TOPIC_PREFIX".to_string(), prefix.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &'static str, roles: Vec<&'static str>, env: Vec<(String, String)>| {
        let data = dir.path().join(name);
        async move {
            let mut args = Vec::new();
            for r in &roles {
                args.push("--role");
                args.push(*r);
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Server::start_with(&data, &args, &env).await
        }
    };

    let mut domain = start("domain", vec!["domain"], kafka_env(&[])).await;
    let api_env = kafka_env(&[
        ("CRM__STORE__KIND", "remote".to_string()),
        ("CRM__STORE__URL", domain.url.clone()),
    ]);
    let api = start("api", vec!["api"], api_env).await;
    let ingest_a = start("ingest-a", vec!["ingest"], kafka_env(&[])).await;
    let ingest_b = start("ingest-b", vec!["ingest"], kafka_env(&[])).await;

    // Poison straight onto the inbound topic: an unknown schema and an undecodable payload.
    let producer = bus::kafka::KafkaBus::connect(bus::kafka::KafkaConfig {
        topic_prefix: prefix.clone(),
        ..bus::kafka::KafkaConfig::with_bootstrap(bootstrap.clone())
    })
    .await
    .unwrap();
    let poison = |i: usize| bus::BusRecord {
        key: format!("poison-{i}"),
        headers: [
            (bus::HEADER_EVENT_ID.to_string(), format!("poison-{i}")),
            (
                bus::HEADER_SCHEMA.to_string(),
                if i.is_multiple_of(2) {
                    "crm.inbound.v9.NoSuchEventV9"
                } else {
                    proto::SCHEMA_FORM_SUBMITTED_V1
                }
                .to_string(),
            ),
        ]
        .into(),
        payload: vec![0xff, 0xfe, 0x00, 0x13],
    };
    producer.publish(poison(0)).await.unwrap();

    // 10,000 forms from concurrent clients over both ingest processes; SIGKILL the domain midway.
    let urls = Arc::new([ingest_a.url.clone(), ingest_b.url.clone()]);
    let client = reqwest::Client::new();
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, urls, acked, next) = (client.clone(), urls.clone(), acked.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= FORMS {
                    return;
                }
                let email = format!("k{i}@example.com");
                let resp = client
                    .post(format!("{}/v1/channels/web-form/kafka", urls[(i + c) % 2]))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("email={email}&name=k{i}"))
                    .send()
                    .await;
                if let Ok(r) = resp
                    && r.status() == 202
                {
                    acked.lock().unwrap().insert(email);
                }
            }
        }));
    }
    while next.load(std::sync::atomic::Ordering::Relaxed) < FORMS / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    domain.kill9();
    producer.publish(poison(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let domain_data = dir.path().join("domain");
    let domain_env = kafka_env(&[]);
    let env: Vec<(&str, &str)> = domain_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Same data dir, same port: the api process keeps following it.
    let port = domain.url.rsplit(':').next().unwrap().to_string();
    let domain = Server::start_on(&domain_data, &["--role", "domain"], &env, &port).await;
    for c in clients {
        c.await.unwrap();
    }
    producer.publish(poison(2)).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        FORMS,
        "every form is acknowledged (the bus was up all along)"
    );

    // Everything acknowledged reaches the api's views, exactly once.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let d = api.graphql("{ customers(first: 1) { totalCount } }").await;
        if d["customers"]["totalCount"].as_u64() == Some(FORMS as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views hold {} of {FORMS} customers after 240 s",
            d["customers"]["totalCount"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = BTreeSet::new();
    let mut timeline_total = 0u64;
    let mut after: Option<String> = None;
    loop {
        let after_arg = after.as_ref().map(|a| format!(", after: \"{a}\"")).unwrap_or_default();
        let d = api
            .graphql(&format!(
                "{{ customers(first: 500{after_arg}) {{ edges {{ node {{ identifiers {{ normalized }} timeline {{ totalCount }} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"
            ))
            .await;
        for e in d["customers"]["edges"].as_array().unwrap() {
            let n = &e["node"];
            timeline_total += n["timeline"]["totalCount"].as_u64().unwrap();
            for i in n["identifiers"].as_array().unwrap() {
                assert!(
                    seen.insert(i["normalized"].as_str().unwrap().to_string()),
                    "identifier twice: {i}"
                );
            }
        }
        if d["customers"]["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = d["customers"]["pageInfo"]["endCursor"].as_str().map(str::to_string);
    }
    assert_eq!(seen, acked, "the views hold exactly the acknowledged forms");
    assert_eq!(timeline_total, FORMS as u64, "each form on exactly one timeline, once");

    // The dead-letter topic holds exactly the poison messages.
    let dead = producer.dead_letters(100).await.unwrap();
    let keys: BTreeSet<String> = dead.iter().map(|d| d.record.key.clone()).collect();
    assert_eq!(
        keys,
        (0..POISON).map(|i| format!("poison-{i}")).collect::<BTreeSet<_>>(),
        "{dead:?}"
    );
    assert_eq!(dead.len(), POISON);
    assert!(dead.iter().all(|d| !d.reason.is_empty()));

    // Each role reports consumer lag on /metrics.
    let metrics = reqwest::get(format!("{}/metrics", domain.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("bus_consumer_lag"), "{metrics}");
    drop((ingest_a, ingest_b, api, domain));
    let _ = producer.delete_topics().await;
}
