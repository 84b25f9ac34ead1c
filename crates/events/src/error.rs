//! The crate's one error type.

/// Errors of the event spine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query against a service store or the embedded log failed.
    #[error("event store query failed: {0}")]
    Sql(#[from] sqlx::Error),
    /// Opening or using a service store failed.
    #[error(transparent)]
    Store(#[from] tandem_store::StoreError),
    /// The embedded log could not be opened.
    #[error(
        "cannot open the embedded event log at {path}: {source}; check that the data directory exists and is writable"
    )]
    EmbeddedOpen {
        /// The log's file.
        path: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Kafka refused or failed an operation.
    #[error("kafka {operation} failed: {source}; check TANDEM_EVENTS and that the brokers are up")]
    Kafka {
        /// What we were doing.
        operation: &'static str,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// `TANDEM_EVENTS` does not parse.
    #[error(
        "TANDEM_EVENTS=`{0}` is not understood: use `embedded`, `embedded:/path/to/events.db` or kafka://host:port[,host:port...][?partitions=N&replication=N]"
    )]
    BadConfig(String),
    /// A topic was used before it was created.
    #[error("topic `{0}` does not exist: create it with EventBus::ensure_topics at start-up")]
    UnknownTopic(String),
    /// An envelope lacks a field the spine needs.
    #[error("event envelope is invalid: {0}")]
    InvalidEnvelope(String),
    /// Bytes on the bus are not an `EventEnvelope`.
    #[error("event bytes are not a tandem.events.v1.EventEnvelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A record was not delivered.
    #[error("event was not delivered: {0}; it stays in the outbox and is retried")]
    NotDelivered(String),
    /// An offset was stored for a partition this member no longer owns.
    #[error(
        "partition {topic}/{partition} is no longer assigned to this consumer; the new owner redelivers from the last committed offset"
    )]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The bus was shut down.
    #[error("the event bus is shut down")]
    Closed,
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
