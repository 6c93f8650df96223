//! The Kafka implementation of the [`Bus`] port, through `rdkafka` (librdkafka).
//!
//! - Topics `<prefix>inbound` and `<prefix>inbound-dlq` are created at
//!   [`KafkaBus::connect`] when missing; an unreachable broker is retried with
//!   backoff for [`KafkaConfig::connect_timeout_ms`], then reported clearly.
//! - Publishing uses an idempotent producer (`enable.idempotence=true`,
//!   `acks=all`) and answers only after the delivery report. A broker that
//!   stops answering turns into [`BusError::Unavailable`] after
//!   [`KafkaConfig::publish_timeout_ms`], so ingest can answer 503 + Retry-After.
//! - Consumers are group members with manual commits only (no auto commit, no
//!   auto offset store). A rebalance-tracking context knows which partitions
//!   the member owns; commits for partitions it no longer owns are dropped.
//! - Dead letters go to the DLQ topic with the reason and the original
//!   topic/partition/offset in headers; [`Bus::dead_letters`] reads that topic
//!   from the beginning with a short-lived, group-less consumer.
//!
//! Not here: choosing the bus from configuration and reading environment
//! variables (the binary does that), the broker itself (`deploy/kafka/`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::{
    Ack, Bus, BusConsumer, BusError, BusRecord, DeadLetter, Delivery, HEADER_DLQ_REASON, PartitionLag, Position,
    commit_targets,
};

/// Header on a dead letter: the topic the record was read from.
pub const HEADER_DLQ_ORIGINAL_TOPIC: &str = "dlq-original-topic";
/// Header on a dead letter: the partition the record was read from.
pub const HEADER_DLQ_ORIGINAL_PARTITION: &str = "dlq-original-partition";
/// Header on a dead letter: the offset the record was read from.
pub const HEADER_DLQ_ORIGINAL_OFFSET: &str = "dlq-original-offset";

/// librdkafka properties the bus sets itself; configuring them would break its guarantees.
const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// How long the producer waits to fill a batch (`linger.ms`; `producer_properties` may set
/// another). A publish returns when the broker has the record, so librdkafka's default of
/// 5 ms was a wait in every request: `crm bench ingest --bus kafka` (20k forms, 64 clients,
/// a local broker) sustained 9.8k forms/s with it, 17.3–17.7k with 1 ms and 13.9–15.6k
/// with 0 (smaller batches, more requests); submit→202 p50 4.5 ms against 1.4 ms.
const PRODUCER_LINGER_MS: &str = "1";

/// How long one reachability probe at start may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Configuration of the Kafka bus (`[bus.kafka]`). Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]` of the brokers.
    pub bootstrap_servers: String,
    /// Prefix of the topic names: `<prefix>inbound` and `<prefix>inbound-dlq`.
    pub topic_prefix: String,
    /// Partitions of the inbound topic when the bus creates it.
    pub partitions: i32,
    /// Partitions of the dead-letter topic when the bus creates it (1 keeps its order global).
    pub dead_letter_partitions: i32,
    /// Replication factor of both topics when the bus creates them.
    pub replication: i32,
    /// How long a publish may take before it fails with [`BusError::Unavailable`].
    pub publish_timeout_ms: u64,
    /// How long [`KafkaBus::connect`] retries an unreachable broker before giving up.
    pub connect_timeout_ms: u64,
    /// Timeout of commits, lag queries, topic administration and dead-letter listing.
    pub operation_timeout_ms: u64,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only (e.g. `linger.ms`, `compression.type`).
    pub producer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (e.g. `session.timeout.ms`).
    pub consumer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:19092".into(),
            topic_prefix: "crm.".into(),
            partitions: 3,
            dead_letter_partitions: 1,
            replication: 1,
            publish_timeout_ms: 5_000,
            connect_timeout_ms: 60_000,
            operation_timeout_ms: 10_000,
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The default configuration pointed at `bootstrap_servers`.
    pub fn with_bootstrap(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            ..KafkaConfig::default()
        }
    }

    /// The topic channel events are published to.
    pub fn inbound_topic(&self) -> String {
        format!("{}inbound", self.topic_prefix)
    }

    /// The topic poison records are set aside in.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}inbound-dlq", self.topic_prefix)
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    /// Checks the configuration; the error names the bad field, its value and what would be valid.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |msg: String| Err(BusError::Config(msg));
        if self.bootstrap_servers.trim().is_empty() {
            return bad(
                "bus.kafka.bootstrap_servers is empty; set it to host:port of a broker, e.g. 127.0.0.1:19092".into(),
            );
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(c) = self.topic_prefix.chars().find(|c| !legal(*c)) {
            return bad(format!(
                "bus.kafka.topic_prefix {:?} contains {c:?}; topic names allow only ASCII letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        if self.dead_letter_topic().len() > 249 {
            return bad(format!(
                "bus.kafka.topic_prefix {:?} is too long: topic names are at most 249 characters",
                self.topic_prefix
            ));
        }
        for (name, value) in [
            ("partitions", self.partitions),
            ("dead_letter_partitions", self.dead_letter_partitions),
            ("replication", self.replication),
        ] {
            if value < 1 {
                return bad(format!("bus.kafka.{name} is {value}; it must be at least 1"));
            }
        }
        for (name, value, min) in [
            ("publish_timeout_ms", self.publish_timeout_ms, 100),
            ("connect_timeout_ms", self.connect_timeout_ms, 0),
            ("operation_timeout_ms", self.operation_timeout_ms, 100),
        ] {
            if value < min || value > i32::MAX as u64 {
                return bad(format!(
                    "bus.kafka.{name} is {value}; it must be between {min} and {}",
                    i32::MAX
                ));
            }
        }
        for (map, props) in [
            ("properties", &self.properties),
            ("producer_properties", &self.producer_properties),
            ("consumer_properties", &self.consumer_properties),
        ] {
            if let Some(key) = props.keys().find(|k| RESERVED_PROPERTIES.contains(&k.as_str())) {
                return bad(format!(
                    "bus.kafka.{map} sets {key:?}, which the Kafka bus sets itself (reserved: {}); remove it",
                    RESERVED_PROPERTIES.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn base_client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set_log_level(RDKafkaLogLevel::Info);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn producer_client_config(&self) -> ClientConfig {
        let mut c = self.base_client_config();
        let timeout_ms = self.publish_timeout_ms.to_string();
        c.set("client.id", "crm-bus-producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", self.publish_timeout_ms.min(30_000).to_string())
            .set("linger.ms", PRODUCER_LINGER_MS);
        for (k, v) in &self.producer_properties {
            c.set(k, v);
        }
        c
    }

    fn consumer_client_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base_client_config();
        c.set("client.id", "crm-bus-consumer")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("group.id", group);
        for (k, v) in &self.consumer_properties {
            c.set(k, v);
        }
        c
    }
}

/// Forwards librdkafka's log lines and errors to `tracing`.
#[derive(Clone, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// The dead-letter reader is a group-less consumer: the default rebalance handling is never used.
impl ConsumerContext for TracingContext {}

fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
    }
}

/// The bus on Apache Kafka. Cheap to share behind an `Arc`; one producer for all publishes.
pub struct KafkaBus {
    config: KafkaConfig,
    inbound: String,
    dead_letter: String,
    producer: FutureProducer<TracingContext>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why one start-up attempt failed, and whether trying again can help.
struct StartError {
    retriable: bool,
    message: String,
}

impl KafkaBus {
    /// Validates `config`, waits for the broker (retrying with backoff for
    /// `connect_timeout_ms`) and creates the topics when missing.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaBus, BusError> {
        config.validate()?;
        let producer: FutureProducer<TracingContext> = config
            .producer_client_config()
            .create_with_context(TracingContext)
            .map_err(|e| config_error(&config, "producer", e))?;
        let admin: AdminClient<TracingContext> = config
            .base_client_config()
            .create_with_context(TracingContext)
            .map_err(|e| config_error(&config, "admin client", e))?;
        let bus = KafkaBus {
            inbound: config.inbound_topic(),
            dead_letter: config.dead_letter_topic(),
            config,
            producer,
        };

        let deadline = Instant::now() + bus.config.connect_timeout();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let attempt = || bus.ensure_topics(&admin);
        let result = attempt
            .retry(backoff)
            .when(|e: &StartError| e.retriable && Instant::now() < deadline)
            .notify(|e: &StartError, wait: Duration| {
                tracing::warn!(
                    bootstrap = %bus.config.bootstrap_servers,
                    error = %e.message,
                    retry_in_ms = wait.as_millis() as u64,
                    "kafka broker not ready, retrying"
                )
            })
            .await;
        match result {
            Ok(()) => {
                tracing::info!(
                    bootstrap = %bus.config.bootstrap_servers,
                    inbound = %bus.inbound,
                    dead_letter = %bus.dead_letter,
                    "kafka bus connected"
                );
                Ok(bus)
            }
            Err(e) if e.retriable => Err(BusError::Unavailable(format!(
                "kafka broker at {} not reachable within {} ms ({}); start it (deploy/kafka/kafka.sh start) \
                 or fix bus.kafka.bootstrap_servers",
                bus.config.bootstrap_servers, bus.config.connect_timeout_ms, e.message
            ))),
            Err(e) => Err(BusError::Config(e.message)),
        }
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Deletes this bus's two topics and everything in them. For tests and benchmarks
    /// that use a per-run topic prefix; never called by the product.
    pub async fn delete_topics(&self) -> Result<(), BusError> {
        let admin: AdminClient<TracingContext> = self
            .config
            .base_client_config()
            .create_with_context(TracingContext)
            .map_err(|e| config_error(&self.config, "admin client", e))?;
        let opts = AdminOptions::new().operation_timeout(Some(self.config.operation_timeout()));
        let results = admin
            .delete_topics(&[self.inbound.as_str(), self.dead_letter.as_str()], &opts)
            .await
            .map_err(|e| op_error(&self.config, "deleting topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(BusError::Other(format!("kafka refused to delete topic {name}: {code}")));
                }
            }
        }
        Ok(())
    }

    /// One start-up attempt: reach the broker, create missing topics, wait until they have leaders.
    async fn ensure_topics(&self, admin: &AdminClient<TracingContext>) -> Result<(), StartError> {
        let existing = self.topic_partitions().await?;
        let wanted = [
            (self.inbound.as_str(), self.config.partitions),
            (self.dead_letter.as_str(), self.config.dead_letter_partitions),
        ];
        let missing: Vec<NewTopic<'_>> = wanted
            .iter()
            .filter(|(name, _)| !existing.contains_key(*name))
            .map(|(name, partitions)| {
                NewTopic::new(name, *partitions, TopicReplication::Fixed(self.config.replication))
            })
            .collect();
        for (name, partitions) in wanted {
            if let Some(have) = existing.get(name)
                && *have != partitions
            {
                tracing::warn!(
                    topic = name,
                    have,
                    configured = partitions,
                    "kafka topic exists with another partition count; using it as it is"
                );
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let opts = AdminOptions::new()
            .request_timeout(Some(PROBE_TIMEOUT))
            .operation_timeout(Some(self.config.operation_timeout()));
        let results = admin
            .create_topics(missing.iter(), &opts)
            .await
            .map_err(|e| StartError {
                retriable: true,
                message: format!("creating topics failed: {e}"),
            })?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) if is_transient(code) => {
                    return Err(StartError {
                        retriable: true,
                        message: format!("creating topic {name} failed: {code}"),
                    });
                }
                Err((name, code)) => {
                    return Err(StartError {
                        retriable: false,
                        message: format!(
                            "kafka refused to create topic {name} ({code}); check bus.kafka.partitions/replication \
                             (replication {} needs at least that many brokers) or create the topic by hand",
                            self.config.replication
                        ),
                    });
                }
            }
        }
        // Publishing right away to a topic without a leader yet would only wait inside librdkafka.
        let settle = Instant::now() + self.config.operation_timeout();
        loop {
            let now = self.topic_partitions().await?;
            if wanted.iter().all(|(name, _)| now.get(*name).is_some_and(|p| *p > 0)) {
                return Ok(());
            }
            if Instant::now() >= settle {
                return Err(StartError {
                    retriable: true,
                    message: "created topics have no leader yet".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Partition count (with a leader) per topic, from the broker's metadata.
    async fn topic_partitions(&self) -> Result<BTreeMap<String, i32>, StartError> {
        let producer = self.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, PROBE_TIMEOUT))
            .await
            .map_err(|e| StartError {
                retriable: false,
                message: format!("metadata task failed: {e}"),
            })?
            .map_err(|e| StartError {
                retriable: true,
                message: e.to_string(),
            })?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let led = t
                    .partitions()
                    .iter()
                    .filter(|p| p.error().is_none() && p.leader() >= 0)
                    .count();
                (t.name().to_owned(), i32::try_from(led).unwrap_or(i32::MAX))
            })
            .collect())
    }

    async fn produce(
        &self,
        topic: &str,
        key: &str,
        headers: &BTreeMap<String, String>,
        payload: &[u8],
    ) -> Result<Position, BusError> {
        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            kafka_headers = kafka_headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload)
            .headers(kafka_headers);
        let timeout = self.config.publish_timeout();
        // `send` retries QueueFull itself until `timeout`, and librdkafka gives up on delivery
        // after `message.timeout.ms` (the same value), but its timeout scan is coarse and a
        // request in flight to a dead broker can take longer: the outer timeout is the bound
        // callers rely on. A record abandoned here may still land later; consumers dedupe by event id.
        let sent = tokio::time::timeout(timeout, self.producer.send(record, timeout)).await;
        match sent {
            Ok(Ok(delivery)) => Ok(Position {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(produce_error(&self.config, topic, error)),
            Err(_) => Err(BusError::Unavailable(format!(
                "no delivery report from kafka at {} for topic {topic} within {} ms",
                self.config.bootstrap_servers, self.config.publish_timeout_ms
            ))),
        }
    }

    /// Reads the whole dead-letter topic (at most `max` per partition) on a blocking thread.
    fn read_dead_letters(config: &KafkaConfig, topic: &str, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        let timeout = config.operation_timeout();
        let consumer: BaseConsumer<TracingContext> = config
            // librdkafka wants a group id even for assign(); the reader never joins or commits.
            .consumer_client_config(&format!("{topic}-reader"))
            .create_with_context(TracingContext)
            .map_err(|e| config_error(config, "dead-letter reader", e))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| op_error(config, "reading dead-letter metadata", e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();

        // Per partition: read from the low watermark up to min(high, low + max).
        let mut assignment = TopicPartitionList::new();
        let mut end: BTreeMap<i32, i64> = BTreeMap::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| op_error(config, "reading dead-letter watermarks", e))?;
            let stop = high.min(low.saturating_add(i64::try_from(max).unwrap_or(i64::MAX)));
            if stop > low {
                assignment
                    .add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(|e| BusError::Other(format!("dead-letter assignment for partition {p}: {e}")))?;
                end.insert(p, stop);
            }
        }
        if end.is_empty() {
            return Ok(Vec::new());
        }
        consumer
            .assign(&assignment)
            .map_err(|e| op_error(config, "assigning dead-letter partitions", e))?;

        let deadline = std::time::Instant::now() + timeout;
        let mut letters: Vec<(i64, DeadLetter)> = Vec::new();
        while !end.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(BusError::Unavailable(format!(
                    "reading dead-letter topic {topic} did not finish within {} ms (partitions left: {:?})",
                    config.operation_timeout_ms,
                    end.keys().collect::<Vec<_>>()
                )));
            }
            let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) else {
                continue;
            };
            let message = message.map_err(|e| op_error(config, "reading the dead-letter topic", e))?;
            let (p, offset) = (message.partition(), message.offset());
            let Some(stop) = end.get(&p).copied() else { continue };
            if offset < stop {
                let timestamp = message.timestamp().to_millis().unwrap_or(i64::MAX);
                letters.push((timestamp, dead_letter_from(&message)));
            }
            if offset + 1 >= stop {
                end.remove(&p);
            }
        }
        letters.sort_by_key(|(ts, l)| (*ts, l.position));
        Ok(letters.into_iter().take(max).map(|(_, l)| l).collect())
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, record: BusRecord) -> Result<Ack, BusError> {
        let position = self
            .produce(&self.inbound, &record.key, &record.headers, &record.payload)
            .await?;
        Ok(Ack { position })
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        if group.trim().is_empty() {
            return Err(BusError::Config(
                "consumer group name is empty; give the consumer a group".into(),
            ));
        }
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let context = GroupContext {
            topic: self.inbound.clone(),
            group: group.to_owned(),
            owned: owned.clone(),
        };
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .consumer_client_config(group)
            .create_with_context(context)
            .map_err(|e| config_error(&self.config, "consumer", e))?;
        consumer
            .subscribe(&[&self.inbound])
            .map_err(|e| BusError::Other(format!("subscribing group {group} to {}: {e}", self.inbound)))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            topic: self.inbound.clone(),
            group: group.to_owned(),
            owned,
            config: self.config.clone(),
            watermarks: self.producer.clone(),
        }))
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BusError> {
        let mut headers = delivery.record.headers.clone();
        headers.insert(HEADER_DLQ_REASON.into(), reason.into());
        headers.insert(HEADER_DLQ_ORIGINAL_TOPIC.into(), self.inbound.clone());
        headers.insert(
            HEADER_DLQ_ORIGINAL_PARTITION.into(),
            delivery.position.partition.to_string(),
        );
        headers.insert(HEADER_DLQ_ORIGINAL_OFFSET.into(), delivery.position.offset.to_string());
        self.produce(
            &self.dead_letter,
            &delivery.record.key,
            &headers,
            &delivery.record.payload,
        )
        .await?;
        Ok(())
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let config = self.config.clone();
        let topic = self.dead_letter.clone();
        tokio::task::spawn_blocking(move || KafkaBus::read_dead_letters(&config, &topic, max))
            .await
            .map_err(|e| BusError::Other(format!("dead-letter reader task failed: {e}")))?
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

/// Rebuilds a dead letter from a DLQ message: our `dlq-*` headers become fields.
fn dead_letter_from(message: &BorrowedMessage<'_>) -> DeadLetter {
    let mut record = record_from(message);
    let reason = record
        .headers
        .remove(HEADER_DLQ_REASON)
        .unwrap_or_else(|| "(no reason recorded)".into());
    record.headers.remove(HEADER_DLQ_ORIGINAL_TOPIC);
    let partition = record
        .headers
        .remove(HEADER_DLQ_ORIGINAL_PARTITION)
        .and_then(|p| p.parse().ok());
    let offset = record
        .headers
        .remove(HEADER_DLQ_ORIGINAL_OFFSET)
        .and_then(|o| o.parse().ok());
    DeadLetter {
        position: Position {
            partition: message.partition(),
            offset: message.offset(),
        },
        original: partition
            .zip(offset)
            .map(|(partition, offset)| Position { partition, offset }),
        reason,
        record,
    }
}

/// A Kafka message as a [`BusRecord`]. Keys and header values that are not
/// UTF-8 (written by another producer) are converted lossily rather than refused.
fn record_from(message: &BorrowedMessage<'_>) -> BusRecord {
    let mut headers = BTreeMap::new();
    if let Some(hs) = message.headers() {
        for h in hs.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            headers.insert(h.key.to_owned(), value);
        }
    }
    BusRecord {
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        headers,
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// Consumer context that keeps the set of partitions this group member owns.
struct GroupContext {
    topic: String,
    group: String,
    owned: Arc<Mutex<BTreeSet<i32>>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, group = %self.group, "kafka consumer error");
    }
}

impl ConsumerContext for GroupContext {
    // Revocation is recorded before librdkafka unassigns, so a commit racing with
    // the rebalance already sees the partition as gone and drops it.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
                for p in &revoked {
                    owned.remove(p);
                }
                tracing::info!(group = %self.group, topic = %self.topic, ?revoked, "kafka partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "kafka rebalance error"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
            owned.extend(assigned.iter().copied());
            tracing::info!(group = %self.group, topic = %self.topic, ?assigned, "kafka partitions assigned");
        }
    }
}

/// A member of a consumer group on the inbound topic.
pub struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    topic: String,
    group: String,
    owned: Arc<Mutex<BTreeSet<i32>>>,
    config: KafkaConfig,
    /// Asks for watermarks on the producer's connection: on the consumer's own, the query
    /// queues behind the long-polling fetch (up to `fetch.wait.max.ms` per partition).
    watermarks: FutureProducer<TracingContext>,
}

impl KafkaConsumer {
    /// Partitions this member owns right now (empty until the group join completes).
    pub fn owned_partitions(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn member(&self) -> Result<&Arc<StreamConsumer<GroupContext>>, BusError> {
        self.consumer.as_ref().ok_or(BusError::Closed)
    }

    fn delivery(message: &BorrowedMessage<'_>) -> Delivery {
        Delivery {
            position: Position {
                partition: message.partition(),
                offset: message.offset(),
            },
            record: record_from(message),
        }
    }
}

impl Drop for KafkaConsumer {
    // Closing a group member leaves the group, which waits on the broker: keep
    // that off the async worker threads when there is a runtime.
    fn drop(&mut self) {
        if let (Some(consumer), Ok(handle)) = (self.consumer.take(), tokio::runtime::Handle::try_current()) {
            handle.spawn_blocking(move || drop(consumer));
        }
    }
}

#[async_trait::async_trait]
impl BusConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let consumer = self.member()?;
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => return Ok(out),
                Ok(Ok(m)) => {
                    out.push(Self::delivery(&m));
                    break;
                }
                // librdkafka reports lost connections as consumer errors but reconnects by
                // itself; after an outage a backlog of them is queued. Skip them, keep waiting.
                Ok(Err(e)) if e.rdkafka_error_code().is_some_and(is_transient) => {
                    tracing::debug!(group = %self.group, error = %e, "kafka consumer: transient error skipped");
                }
                Ok(Err(e)) => return Err(consume_error(&self.config, &self.group, e)),
            }
        }
        while out.len() < max {
            match consumer.recv().now_or_never() {
                None => break,
                Some(Ok(m)) => out.push(Self::delivery(&m)),
                Some(Err(e)) => {
                    // Hand out what was received; a lasting error shows again on the next poll.
                    tracing::debug!(group = %self.group, error = %e, "kafka consumer error after a partial batch");
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, processed: &[Position]) -> Result<(), BusError> {
        let owned = self.owned_partitions();
        let mut tpl = TopicPartitionList::new();
        let mut dropped = Vec::new();
        for (partition, offset) in commit_targets(processed) {
            if owned.contains(&partition) {
                tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset + 1))
                    .map_err(|e| BusError::Other(format!("commit of partition {partition} offset {offset}: {e}")))?;
            } else {
                dropped.push(partition);
            }
        }
        if !dropped.is_empty() {
            tracing::info!(group = %self.group, partitions = ?dropped, "commit ignored for partitions no longer owned");
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.member()?.clone();
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
        // A synchronous commit has no timeout of its own and would wait out a broker outage.
        let result = tokio::time::timeout(self.config.operation_timeout(), commit)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "kafka at {} did not confirm the commit of group {} within {} ms; its records will be \
                     delivered again",
                    self.config.bootstrap_servers, self.group, self.config.operation_timeout_ms
                ))
            })?
            .map_err(|e| BusError::Other(format!("commit task failed: {e}")))?;
        match result {
            Ok(()) => Ok(()),
            // A rebalance took the partitions away meanwhile: their records will be
            // delivered again to the new owner, which is what at-least-once allows.
            Err(e) if e.rdkafka_error_code().is_some_and(is_rebalance) => {
                tracing::warn!(group = %self.group, error = %e, "commit dropped: group is rebalancing");
                Ok(())
            }
            Err(e) => Err(op_error(
                &self.config,
                &format!("committing offsets of group {}", self.group),
                e,
            )),
        }
    }

    async fn lag(&self) -> Result<Vec<PartitionLag>, BusError> {
        let owned = self.owned_partitions();
        if owned.is_empty() {
            return Ok(Vec::new());
        }
        let consumer = self.member()?.clone();
        let topic = self.topic.clone();
        let config = self.config.clone();
        let timeout = config.operation_timeout();
        let bootstrap = config.bootstrap_servers.clone();
        let watermarks = self.watermarks.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &owned {
                tpl.add_partition(&topic, *p);
            }
            let committed = consumer
                .committed_offsets(tpl, timeout)
                .map_err(|e| op_error(&config, "reading committed offsets", e))?;
            let mut out = Vec::with_capacity(owned.len());
            for p in owned {
                let (low, high) = watermarks
                    .client()
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| op_error(&config, "reading watermarks", e))?;
                let committed = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // Nothing committed yet: the group starts at the earliest record.
                    _ => low,
                };
                out.push(PartitionLag {
                    partition: p,
                    committed,
                    high_watermark: high,
                });
            }
            Ok(out)
        });
        // Each query has the timeout, but there is one per partition: bound the whole.
        tokio::time::timeout(timeout, task)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "kafka at {bootstrap} did not answer the lag query within {timeout:?}"
                ))
            })?
            .map_err(|e| BusError::Other(format!("lag task failed: {e}")))?
    }
}

/// Errors that mean "the broker is not there (yet)": worth retrying, worth a 503.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageTimedOut
            | QueueFull
            | AllBrokersDown
            | BrokerTransportFailure
            | BrokerNotAvailable
            | NetworkException
            | RequestTimedOut
            | OperationTimedOut
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotCoordinator
            | CoordinatorNotAvailable
            | CoordinatorLoadInProgress
            | Resolve
            | TimedOutQueue
    )
}

fn is_rebalance(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        RebalanceInProgress | IllegalGeneration | UnknownMemberId | AssignmentLost | FencedInstanceId | State
    )
}

fn config_error(config: &KafkaConfig, client: &str, e: KafkaError) -> BusError {
    BusError::Config(format!(
        "creating the kafka {client} for {} failed: {e}; check bus.kafka.properties / producer_properties / consumer_properties",
        config.bootstrap_servers
    ))
}

fn produce_error(config: &KafkaConfig, topic: &str, e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(code) if is_transient(code) => BusError::Unavailable(format!(
            "kafka at {} did not acknowledge the record on topic {topic} within {} ms ({e})",
            config.bootstrap_servers, config.publish_timeout_ms
        )),
        _ => BusError::Other(format!("kafka refused the record on topic {topic}: {e}")),
    }
}

fn consume_error(config: &KafkaConfig, group: &str, e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(code) if is_transient(code) => BusError::Unavailable(format!(
            "kafka at {} while consuming for group {group}: {e}",
            config.bootstrap_servers
        )),
        _ => BusError::Other(format!("kafka consumer of group {group} failed: {e}")),
    }
}

fn op_error(config: &KafkaConfig, what: &str, e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(code) if is_transient(code) => {
            BusError::Unavailable(format!("{what} at kafka {} failed: {e}", config.bootstrap_servers))
        }
        _ => BusError::Other(format!("{what} at kafka {} failed: {e}", config.bootstrap_servers)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_lingers_1_ms_unless_configured_otherwise() {
        let c = KafkaConfig::default();
        assert_eq!(c.producer_client_config().get("linger.ms"), Some("1"));
        let c = KafkaConfig {
            producer_properties: [("linger.ms".to_string(), "20".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(c.producer_client_config().get("linger.ms"), Some("20"));
        assert_eq!(c.producer_client_config().get("acks"), Some("all"));
    }
}
