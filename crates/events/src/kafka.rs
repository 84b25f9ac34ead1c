//! The Kafka backend, on librdkafka.
//!
//! - Producer: idempotent, `acks=all`, `partitioner=murmur2_random` (the
//!   embedded log's function), key = patient id, trace context in headers.
//!   Crisis topics (check-ins, triage) go through a producer of their own
//!   that sends at once (`linger.ms=0`); other topics batch for 5 ms.
//!   A publish waits for every record's delivery report. By default a
//!   record never times out in the producer (`message.timeout.ms=0`): while
//!   the brokers are away records wait in order, because a timed-out record
//!   re-sent later would overtake the ones behind it. Dropping a producer
//!   purges its queue, so the bus flushes on shutdown and on drop.
//! - Consumer: `enable.auto.commit=true` with `enable.auto.offset.store=false`;
//!   the runner stores an offset only after the handler's transaction
//!   committed, and a rebalance commits stored offsets synchronously before
//!   the partitions are given up. Low latency by default: a fetch on an idle
//!   partition returns after 10 ms (`fetch.wait.max.ms`; librdkafka's 500 ms
//!   would add up to half a second per consumer hop of the crisis path).
//!   Static membership: each member has a `group.instance.id` made of the
//!   process's instance id and the group, so a restarted process takes its
//!   partitions back without a rebalance.
//! - Topics: created through the admin API with the configured partition count.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::bus::{BusKind, Delivered, EventBus, GroupProbe, PartitionLag, Record, Subscription, TopicSpec};
use crate::error::{Error, Result};

/// How to reach Kafka and shape its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub brokers: String,
    /// Partitions of service topics created by [`EventBus::ensure_topics`] callers.
    pub default_partitions: i32,
    /// Replication factor of topics this bus creates.
    pub replication: i32,
    /// `session.timeout.ms` of consumers; a group's first join takes about half of it.
    pub session_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    pub auto_commit_interval: Duration,
    /// `message.timeout.ms`; `None` never gives up on a record (keeps per-key order).
    pub delivery_timeout: Option<Duration>,
    /// `client.id` prefix of this process's clients.
    pub client_id: String,
    /// `fetch.wait.max.ms` of consumers: how long the broker holds a fetch
    /// on an idle partition. Every consumer hop of the crisis path can wait
    /// this long, so it is low; the cost is more fetch requests while idle.
    pub fetch_wait_max: Duration,
    /// `linger.ms` of the producer for topics not in `crisis_topics`.
    pub linger: Duration,
    /// `linger.ms` of the producer for `crisis_topics`: a crisis event is
    /// sent at once rather than held for a fuller batch.
    pub crisis_linger: Duration,
    /// Topics published through the crisis producer.
    pub crisis_topics: Vec<String>,
    /// This process's stable name for static group membership: each member
    /// gets `group.instance.id = <instance_id>.<group>`, so a restarted
    /// process takes its partitions back without a rebalance. `None` turns
    /// static membership off. Two live processes must never share it.
    pub instance_id: Option<String>,
    /// Further librdkafka properties, set last (e.g. security settings).
    pub extra: Vec<(String, String)>,
    /// librdkafka properties for one consumer group only, set after `extra`:
    /// `(group, property, value)`.
    pub group_extra: Vec<(String, String, String)>,
}

impl KafkaConfig {
    /// Defaults for `brokers`: 12 partitions, replication 1, 10 s sessions,
    /// 10 ms fetch waits, crisis topics sent without lingering, no static
    /// membership until an instance id is set.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            default_partitions: 12,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: Duration::from_secs(1),
            delivery_timeout: None,
            client_id: "tandem".to_owned(),
            fetch_wait_max: Duration::from_millis(10),
            linger: Duration::from_millis(5),
            crisis_linger: Duration::ZERO,
            crisis_topics: crate::envelope::topics::CRISIS.iter().map(|topic| (*topic).to_owned()).collect(),
            instance_id: None,
            extra: Vec::new(),
            group_extra: Vec::new(),
        }
    }

    /// The `group.instance.id` of the `nth` member (0 for the first) this
    /// process runs in `group`, if static membership is on.
    pub fn group_instance_id(&self, group: &str, nth: u32) -> Option<String> {
        let instance = self.instance_id.as_deref().filter(|id| !id.is_empty())?;
        Some(match nth {
            0 => format!("{instance}.{group}"),
            n => format!("{instance}.{group}.{}", n + 1),
        })
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set_log_level(RDKafkaLogLevel::Warning);
        config
    }

    fn with_extra(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.extra {
            config.set(key, value);
            if key == "debug" {
                // librdkafka's debug contexts log at debug level.
                config.set_log_level(RDKafkaLogLevel::Debug);
            }
        }
        config
    }

    fn producer(&self, linger: Duration) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.delivery_timeout.map_or(0, |timeout| timeout.as_millis().max(1)).to_string(),
            );
        self.with_extra(config)
    }

    fn consumer(&self, group: &str, instance: Option<&str>) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("fetch.wait.max.ms", self.fetch_wait_max.as_millis().to_string())
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", self.auto_commit_interval.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.session_timeout.as_millis() / 3).max(100).to_string())
            .set("enable.partition.eof", "false");
        if let Some(instance) = instance {
            config.set("group.instance.id", instance);
        }
        let mut config = self.with_extra(config);
        for (_, key, value) in self.group_extra.iter().filter(|(name, _, _)| name == group) {
            config.set(key, value);
        }
        config
    }
}

impl KafkaConfig {
    /// A client in `group` that never joins it: reads the group's committed
    /// offsets and the partitions' ends for the watchdog, even while the
    /// member itself is stuck in a rebalance.
    fn probe(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        config.set("group.id", group).set("enable.auto.commit", "false").set("enable.partition.eof", "false");
        let mut config = self.with_extra(config);
        config.set("client.id", format!("{}-probe", self.client_id));
        config
    }
}

impl FromStr for KafkaConfig {
    type Err = Error;

    /// `kafka://host:port[,host:port...][?partitions=N&replication=N&instance=NAME&<librdkafka.property>=value&group.<group>.<librdkafka.property>=value...]`.
    ///
    /// A librdkafka property applies to every client and wins over the
    /// defaults (`fetch.wait.max.ms=100` for every consumer group); one
    /// prefixed with `group.<group>.` applies to that group's consumers only
    /// (`group.records.fetch.wait.max.ms=500`).
    fn from_str(url: &str) -> Result<Self> {
        let bad = || Error::BadConfig(url.to_owned());
        let rest = url.strip_prefix("kafka://").ok_or_else(bad)?;
        let (brokers, query) = match rest.split_once('?') {
            Some((brokers, query)) => (brokers, Some(query)),
            None => (rest, None),
        };
        let well_formed = !brokers.is_empty()
            && brokers.split(',').all(|broker| {
                broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            });
        if !well_formed {
            return Err(bad());
        }
        let mut config = Self::new(brokers);
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            if key == "instance" {
                if value.is_empty() {
                    return Err(bad());
                }
                config.instance_id = Some(value.to_owned());
                continue;
            }
            // `group.<group>.<property>`: one group's consumers only. (No
            // librdkafka property has three or more parts after `group.`.)
            if let Some((group, property)) = key.strip_prefix("group.").and_then(|rest| rest.split_once('.'))
                && property.contains('.')
            {
                if value.is_empty() || group.is_empty() {
                    return Err(bad());
                }
                config.group_extra.push((group.to_owned(), property.to_owned(), value.to_owned()));
                continue;
            }
            // A dotted key is a librdkafka property, e.g. security.protocol=ssl.
            if key.contains('.') {
                if value.is_empty() {
                    return Err(bad());
                }
                config.extra.push((key.to_owned(), value.to_owned()));
                continue;
            }
            let number: i32 = value.parse().map_err(|_| bad())?;
            if number < 1 {
                return Err(bad());
            }
            match key {
                "partitions" => config.default_partitions = number,
                "replication" => config.replication = number,
                _ => return Err(bad()),
            }
        }
        Ok(config)
    }
}

/// Routes librdkafka's logs to `tracing` and commits on revoke.
struct TandemContext;

impl ClientContext for TandemContext {}

impl ConsumerContext for TandemContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Commit what was handled before the partitions move, so the
            // next owner does not redo it.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(
                    %error,
                    partitions = partitions.count(),
                    "commit on partition revoke failed; the next owner redelivers from the last commit"
                ),
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "kafka partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = partitions.count(), "kafka partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "kafka rebalance failed"),
        }
    }
}

/// The Kafka event bus.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    // Sends records of the crisis topics without lingering. Each topic goes
    // through exactly one producer, so per-partition order holds.
    crisis_producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    // Members this process has subscribed per group, for distinct static ids.
    members: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus").field("brokers", &self.config.brokers).finish_non_exhaustive()
    }
}

fn kafka(operation: &'static str) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error::Kafka { operation, source }
}

impl KafkaBus {
    /// Creates the producer and admin clients; connections open lazily.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        let producer: FutureProducer =
            config.producer(config.linger).create().map_err(kafka("creating the producer"))?;
        let crisis_producer: FutureProducer =
            config.producer(config.crisis_linger).create().map_err(kafka("creating the crisis producer"))?;
        let admin: AdminClient<DefaultClientContext> =
            config.with_extra(config.base()).create().map_err(kafka("creating the admin client"))?;
        Ok(Self { config, producer, crisis_producer, admin, members: Mutex::default() })
    }

    fn producer_for(&self, topic: &str) -> &FutureProducer {
        if self.config.crisis_topics.iter().any(|crisis| crisis == topic) {
            &self.crisis_producer
        } else {
            &self.producer
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    async fn wait_for_topic(&self, topic: &str) -> Result<()> {
        let client = self.producer.clone();
        let name = topic.to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let client = client.clone();
            let name = name.clone();
            let found = tokio::task::spawn_blocking(move || {
                client.client().fetch_metadata(Some(&name), Duration::from_secs(5)).map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                })
            })
            .await
            .map_err(|_| Error::Closed)?;
            match found {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(false) => {
                    return Err(Error::UnknownTopic(topic.to_owned()));
                }
                Err(error) => return Err(kafka("reading topic metadata")(error)),
            }
        }
    }

    async fn send_one(&self, record: &Record) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut future_record =
            FutureRecord::to(&record.topic).key(record.key.as_bytes()).payload(&record.value).headers(headers);
        let producer = self.producer_for(&record.topic);
        let mut backoff = Duration::from_millis(5);
        let delivery = loop {
            match producer.send_result(future_record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    future_record = back;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err((error, _)) => return Err(kafka("queueing a record")(error)),
            }
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(Error::NotDelivered(error.to_string())),
            // The producer purged the record (shutdown): not delivered.
            Err(_) => Err(Error::NotDelivered("the producer was shut down before the broker acknowledged".into())),
        }
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        // Dropping a producer purges its queue: give queued records a
        // bounded chance to reach the brokers first.
        for producer in [&self.crisis_producer, &self.producer] {
            if producer.in_flight_count() > 0
                && let Err(error) = producer.flush(Duration::from_secs(10))
            {
                tracing::warn!(%error, "kafka producer dropped with undelivered records; the outbox re-sends them");
            }
        }
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn kind(&self) -> BusKind {
        BusKind::Kafka
    }

    fn default_partitions(&self) -> i32 {
        self.config.default_partitions
    }

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|topic| NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(self.config.replication)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics(&new_topics, &options).await.map_err(kafka("creating topics"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(topic, %code, "kafka refused to create a topic");
                    return Err(Error::Kafka { operation: "creating a topic", source: KafkaError::AdminOp(code) });
                }
            }
        }
        for topic in topics {
            self.wait_for_topic(&topic.name).await?;
        }
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Vec<Result<()>> {
        join_all(records.iter().map(|record| self.send_one(record))).await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Subscription>> {
        let nth = {
            let mut members = self.members.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = members.entry(group.to_owned()).or_default();
            *count += 1;
            *count - 1
        };
        let instance = self.config.group_instance_id(group, nth);
        let consumer: StreamConsumer<TandemContext> = self
            .config
            .consumer(group, instance.as_deref())
            .create_with_context(TandemContext)
            .map_err(kafka("creating a consumer"))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(kafka("subscribing to topics"))?;
        let reader: BaseConsumer =
            self.config.probe(group).create().map_err(kafka("creating the group's offset reader"))?;
        Ok(Box::new(KafkaSubscription {
            consumer: Some(Arc::new(consumer)),
            reader: Arc::new(reader),
            topics: topics.to_vec(),
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<()> {
        let producers = [self.crisis_producer.clone(), self.producer.clone()];
        tokio::task::spawn_blocking(move || producers.iter().try_for_each(|producer| producer.flush(timeout)))
            .await
            .map_err(|_| Error::Closed)?
            .map_err(kafka("flushing the producer"))
    }
}

/// One member of a Kafka consumer group.
struct KafkaSubscription {
    // Taken by close, which drops the consumer off the runtime's threads.
    consumer: Option<Arc<StreamConsumer<TandemContext>>>,
    // Reads the group's committed offsets without joining the group.
    reader: Arc<BaseConsumer>,
    topics: Vec<String>,
}

/// Reads a member's assignment from the member (held weakly: closing the
/// member is not delayed by a probe that outlives it), and its group's
/// committed offsets and the partitions' ends through a client of its own,
/// which answers even while the member is stuck in a rebalance.
struct KafkaProbe {
    consumer: Weak<StreamConsumer<TandemContext>>,
    reader: Arc<BaseConsumer>,
    topics: Vec<String>,
}

/// How long one probe request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[async_trait]
impl GroupProbe for KafkaProbe {
    async fn partitions(&self) -> Result<Vec<PartitionLag>> {
        let consumer = self.consumer.upgrade().ok_or(Error::Closed)?;
        let assignment = consumer.assignment().map_err(kafka("reading the assignment"))?;
        drop(consumer);
        let reader = self.reader.clone();
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || probe_partitions(&reader, &assignment, &topics))
            .await
            .map_err(|_| Error::Closed)?
    }
}

fn probe_partitions(
    consumer: &BaseConsumer,
    assignment: &TopicPartitionList,
    topics: &[String],
) -> Result<Vec<PartitionLag>> {
    let held: std::collections::HashSet<(String, i32)> =
        assignment.elements().iter().map(|element| (element.topic().to_owned(), element.partition())).collect();
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), PROBE_TIMEOUT).map_err(kafka("reading topic metadata"))?;
        for found in metadata.topics().iter().filter(|found| found.name() == topic) {
            for partition in found.partitions() {
                all.add_partition(topic, partition.id());
            }
        }
    }
    let committed = consumer.committed_offsets(all, PROBE_TIMEOUT).map_err(kafka("reading committed offsets"))?;
    let mut partitions = Vec::with_capacity(committed.count());
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(element.topic(), element.partition(), PROBE_TIMEOUT)
            .map_err(kafka("reading partition offsets"))?;
        let committed = match element.offset() {
            Offset::Offset(offset) => offset,
            // No commit yet: the group starts at the beginning (earliest).
            _ => low,
        };
        partitions.push(PartitionLag {
            topic: element.topic().to_owned(),
            partition: element.partition(),
            committed,
            end: high,
            held: held.contains(&(element.topic().to_owned(), element.partition())),
        });
    }
    Ok(partitions)
}

fn owned_headers(message: &impl Message) -> Vec<(String, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|header| {
            let value = header.value.map(|bytes| String::from_utf8_lossy(bytes).into_owned()).unwrap_or_default();
            (header.key.to_owned(), value)
        })
        .collect()
}

fn delivered(message: &impl Message) -> Delivered {
    Delivered {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: owned_headers(message),
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let consumer = self.consumer.as_ref().ok_or(Error::Closed)?;
        let first = consumer.recv().await.map_err(kafka("receiving"))?;
        let mut batch = vec![delivered(&first)];
        drop(first);
        while batch.len() < max {
            // Take what is already fetched without waiting for more.
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(delivered(&message)),
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer error while batching");
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    fn store_offset(&mut self, record: &Delivered) -> Result<()> {
        let consumer = self.consumer.as_ref().ok_or(Error::Closed)?;
        // librdkafka stores offset + 1, the next record to read.
        consumer.store_offset(&record.topic, record.partition, record.offset).map_err(|error| match error {
            KafkaError::StoreOffset(RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition) => {
                Error::NotAssigned { topic: record.topic.clone(), partition: record.partition }
            }
            other => kafka("storing an offset")(other),
        })
    }

    fn probe(&self) -> Arc<dyn GroupProbe> {
        let consumer = self.consumer.as_ref().map_or_else(Weak::new, Arc::downgrade);
        Arc::new(KafkaProbe { consumer, reader: self.reader.clone(), topics: self.topics.clone() })
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        let Some(consumer) = self.consumer.take() else {
            return Ok(());
        };
        let (done, closed) = tokio::sync::oneshot::channel();
        close_in_background(consumer, Some(done));
        match tokio::time::timeout(CLOSE_TIMEOUT, closed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                tracing::warn!("leaving the kafka consumer group is taking long; not waiting for it");
                Ok(())
            }
        }
    }
}

/// How long `close` waits for the group to be left.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Commits stored offsets and drops the consumer on a thread of its own:
/// leaving a group blocks until the coordinator answers (or librdkafka
/// gives up), which must hold up neither the async runtime nor its shutdown.
fn close_in_background(
    consumer: Arc<StreamConsumer<TandemContext>>,
    done: Option<tokio::sync::oneshot::Sender<Result<()>>>,
) {
    let spawned = std::thread::Builder::new().name("kafka-consumer-close".to_owned()).spawn(move || {
        let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(kafka("committing offsets on close")(error)),
        };
        drop(consumer);
        if let Some(done) = done {
            let _ = done.send(committed);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start a thread to close a kafka consumer; it closes when the process exits");
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Dropped without close (a task aborted mid-batch): leave the group
        // without blocking the runtime; stored offsets are committed first,
        // as librdkafka's own close would.
        if let Some(consumer) = self.consumer.take() {
            close_in_background(consumer, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_is_idempotent_with_acks_all_and_murmur2() {
        let config = KafkaConfig::new("k:9092").producer(Duration::ZERO);
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(config.get("message.timeout.ms"), Some("0"));
    }

    #[test]
    fn consumer_stores_offsets_only_when_told() {
        let config = KafkaConfig::new("k:9092").consumer("triage", None);
        assert_eq!(config.get("enable.auto.commit"), Some("true"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("triage"));
        assert_eq!(config.get("group.instance.id"), None);
    }

    #[test]
    fn consumers_fetch_with_a_short_wait_by_default_and_the_url_overrides_it() {
        let defaults = KafkaConfig::new("k:9092");
        assert_eq!(defaults.consumer("triage", None).get("fetch.wait.max.ms"), Some("10"));
        let everyone: KafkaConfig = "kafka://k:9092?fetch.wait.max.ms=100".parse().unwrap();
        assert_eq!(everyone.consumer("triage", None).get("fetch.wait.max.ms"), Some("100"));
        let one_group: KafkaConfig =
            "kafka://k:9092?group.records.fetch.wait.max.ms=500&group.instance.id=x".parse().unwrap();
        assert_eq!(one_group.consumer("records", None).get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(one_group.consumer("triage", None).get("fetch.wait.max.ms"), Some("10"));
        // A plain librdkafka property that starts with `group.` stays one.
        assert_eq!(one_group.extra, [("group.instance.id".to_owned(), "x".to_owned())]);
    }

    #[test]
    fn crisis_topics_are_produced_without_lingering() {
        let bus = KafkaBus::new(KafkaConfig::new("127.0.0.1:9")).unwrap();
        assert!(std::ptr::eq(bus.producer_for(crate::envelope::topics::CHECKINS), &bus.crisis_producer));
        assert!(std::ptr::eq(bus.producer_for(crate::envelope::topics::TRIAGE), &bus.crisis_producer));
        assert!(std::ptr::eq(bus.producer_for(crate::envelope::topics::CAREPLANS), &bus.producer));
        let config = KafkaConfig::new("k:9092");
        assert_eq!(config.producer(config.crisis_linger).get("linger.ms"), Some("0"));
        assert_eq!(config.producer(config.linger).get("linger.ms"), Some("5"));
    }

    #[test]
    fn static_membership_names_each_member_of_a_group() {
        let mut config: KafkaConfig = "kafka://k:9092?instance=pod-a".parse().unwrap();
        assert_eq!(config.group_instance_id("triage", 0).as_deref(), Some("pod-a.triage"));
        assert_eq!(config.group_instance_id("triage", 1).as_deref(), Some("pod-a.triage.2"));
        assert_eq!(
            config.consumer("triage", config.group_instance_id("triage", 0).as_deref()).get("group.instance.id"),
            Some("pod-a.triage")
        );
        config.instance_id = None;
        assert_eq!(config.group_instance_id("triage", 0), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!("kafka://k1:9092".parse::<KafkaConfig>().is_ok());
        assert!("kafka://k1".parse::<KafkaConfig>().is_err());
        assert!("kafka://k1:9092?colour=blue".parse::<KafkaConfig>().is_err());
        assert!("kafka://k1:9092?partitions=0".parse::<KafkaConfig>().is_err());
        assert!("kafka://k1:9092?instance=".parse::<KafkaConfig>().is_err());
    }
}
