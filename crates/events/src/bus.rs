//! The one `EventBus` trait both backends implement, and choosing a backend
//! from `TANDEM_EVENTS`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tandem_proto::events::v1::EventEnvelope;

use crate::embedded::{EmbeddedBus, EmbeddedConfig};
use crate::envelope::{self, headers};
use crate::error::{Error, Result};
use crate::kafka::{KafkaBus, KafkaConfig};

/// A record to publish: the encoded envelope under its patient key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The partition key: the patient id.
    pub key: String,
    /// The encoded `EventEnvelope` (or, on a dead-letter topic, whatever bytes failed).
    pub value: Vec<u8>,
    /// Headers: trace context, event type and id, dead-letter details.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The record of an envelope: keyed by patient, with trace context,
    /// type and id in headers so a consumer can trace and route without
    /// decoding the payload.
    pub fn from_envelope(topic: &str, event: &EventEnvelope) -> Result<Self> {
        envelope::validate(event)?;
        let key = envelope::patient_id(event)?.to_string();
        Ok(Self { topic: topic.to_owned(), key, value: envelope::encode(event), headers: envelope_headers(event) })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The headers every published event carries.
pub(crate) fn envelope_headers(event: &EventEnvelope) -> Vec<(String, String)> {
    let mut list = vec![
        (headers::EVENT_ID.to_owned(), event.event_id.clone()),
        (headers::EVENT_TYPE.to_owned(), event.event_type.clone()),
    ];
    if let Some(org) = event.org_id.as_ref().filter(|org| !org.value.is_empty()) {
        list.push((headers::ORG_ID.to_owned(), org.value.clone()));
    }
    if !event.traceparent.is_empty() {
        list.push((headers::TRACEPARENT.to_owned(), event.traceparent.clone()));
    }
    if !event.tracestate.is_empty() {
        list.push((headers::TRACESTATE.to_owned(), event.tracestate.clone()));
    }
    list
}

fn find_header<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// A record as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The partition key.
    pub key: Option<String>,
    /// The record's bytes.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl Delivered {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A topic and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// How many partitions it has.
    pub partitions: i32,
}

impl TopicSpec {
    /// A topic with `partitions` partitions.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self { name: name.into(), partitions }
    }

    /// The four service topics with `partitions` partitions each, and their
    /// dead-letter topics with one partition each.
    pub fn standard(partitions: i32) -> Vec<Self> {
        envelope::topics::ALL
            .iter()
            .flat_map(|topic| [Self::new(*topic, partitions), Self::new(envelope::topics::dead_letter(topic), 1)])
            .collect()
    }
}

/// Which backend a bus is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// The embedded durable log in SQLite.
    Embedded,
    /// Kafka through librdkafka.
    Kafka,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BusKind::Embedded => "embedded",
            BusKind::Kafka => "kafka",
        })
    }
}

/// A durable, partitioned, keyed log with consumer groups: the embedded
/// log or Kafka. Delivery is at least once; per-key order holds within a
/// partition.
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BusKind;

    /// The partition count configured for new service topics.
    fn default_partitions(&self) -> i32;

    /// Creates the topics that do not exist yet; existing ones are kept as they are.
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<()>;

    /// Publishes records and waits for each one's delivery report: `Ok`
    /// only once the backend has durably taken the record.
    async fn publish(&self, records: &[Record]) -> Vec<Result<()>>;

    /// Joins consumer group `group` on `topics`.
    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Subscription>>;

    /// Waits until everything published has been delivered, up to `timeout`.
    async fn flush(&self, timeout: Duration) -> Result<()>;

    /// Deletes records appended before `appended_before` that every consumer
    /// group known to the bus has consumed; returns how many. A broker keeps
    /// its own retention (Kafka's `retention.ms`), so the default does
    /// nothing; the embedded log implements it.
    async fn prune_consumed(&self, appended_before: std::time::SystemTime) -> Result<u64> {
        let _ = appended_before;
        Ok(0)
    }
}

/// One member of a consumer group.
///
/// Offsets are stored per record after its handling committed, and
/// committed by the backend later (on its schedule, on a rebalance and on
/// close); a member dropped without `close` loses at most what it had not
/// committed, which is then delivered again.
#[async_trait]
pub trait Subscription: Send {
    /// Waits for records on this member's partitions and returns up to `max`.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivered>>;

    /// Marks `record` as done: the group resumes after it.
    fn store_offset(&mut self, record: &Delivered) -> Result<()>;

    /// Commits stored offsets and leaves the group.
    async fn close(self: Box<Self>) -> Result<()>;

    /// A handle that reads where the group stands while this member polls.
    fn probe(&self) -> Arc<dyn GroupProbe>;
}

/// Where a consumer group stands on one partition of a member's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's next offset to read (its last commit; the partition's
    /// start before the group's first commit).
    pub committed: i64,
    /// The offset the partition's next record will get.
    pub end: i64,
    /// Whether the probing member holds the partition now.
    pub held: bool,
}

impl PartitionLag {
    /// Records the group has not consumed yet.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// Reads a member's group position without disturbing its polling.
#[async_trait]
pub trait GroupProbe: Send + Sync {
    /// Every partition of the member's topics: the group's committed
    /// offset, the partition's end, and whether this member holds it.
    async fn partitions(&self) -> Result<Vec<PartitionLag>>;
}

/// Which bus to run, parsed from `TANDEM_EVENTS`.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum BusConfig {
    /// `embedded` (a log in `<data_dir>/events.db`) or `embedded:/path/to/events.db`.
    Embedded {
        /// The log's file; `None` puts it in the data directory.
        path: Option<PathBuf>,
    },
    /// `kafka://host:port[,host:port...][?partitions=N&replication=N]`.
    Kafka(KafkaConfig),
}

impl FromStr for BusConfig {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "embedded" {
            return Ok(Self::Embedded { path: None });
        }
        if let Some(path) = text.strip_prefix("embedded:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::BadConfig(text.to_owned()));
            }
            return Ok(Self::Embedded { path: Some(PathBuf::from(path)) });
        }
        if text.starts_with("kafka://") {
            return Ok(Self::Kafka(text.parse()?));
        }
        Err(Error::BadConfig(text.to_owned()))
    }
}

/// Opens the configured bus; an embedded log without a path goes to
/// `<data_dir>/events.db`.
pub async fn connect(config: &BusConfig, data_dir: &Path) -> Result<Arc<dyn EventBus>> {
    match config {
        BusConfig::Embedded { path } => {
            let path = path.clone().unwrap_or_else(|| data_dir.join("events.db"));
            let bus = EmbeddedBus::open(EmbeddedConfig::new(path)).await?;
            Ok(Arc::new(bus))
        }
        BusConfig::Kafka(kafka) => Ok(Arc::new(KafkaBus::new(kafka.clone())?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_backends() {
        assert_eq!("embedded".parse::<BusConfig>().unwrap(), BusConfig::Embedded { path: None });
        assert_eq!(
            "embedded:/var/lib/tandem/events.db".parse::<BusConfig>().unwrap(),
            BusConfig::Embedded { path: Some(PathBuf::from("/var/lib/tandem/events.db")) }
        );
        let BusConfig::Kafka(kafka) =
            "kafka://k1:9092,k2:9092?partitions=24&replication=3".parse::<BusConfig>().unwrap()
        else {
            panic!("kafka expected");
        };
        assert_eq!(kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(kafka.default_partitions, 24);
        assert_eq!(kafka.replication, 3);
        let BusConfig::Kafka(secure) =
            "kafka://k1:9093?security.protocol=ssl&partitions=6".parse::<BusConfig>().unwrap()
        else {
            panic!("kafka expected");
        };
        assert_eq!(secure.extra, [("security.protocol".to_owned(), "ssl".to_owned())]);
        assert_eq!(secure.default_partitions, 6);
        for bad in
            ["", "nats://x", "kafka://", "kafka://k1:9092?partitions=zero", "kafka://k1:9092?linger.ms=", "embedded:"]
        {
            let error = bad.parse::<BusConfig>().unwrap_err().to_string();
            assert!(error.contains("TANDEM_EVENTS"), "{bad}: {error}");
        }
    }
}
