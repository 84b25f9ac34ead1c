//! Tandem's event spine: the envelope, a transactional outbox and its
//! relay, one [`EventBus`] trait with an embedded (SQLite) and a Kafka
//! backend, and a consumer runner with an idempotent inbox and dead letters.
//!
//! The contract, on both backends:
//! - a state change and its event commit together or not at all (outbox);
//! - every event is delivered at least once and handled effectively once
//!   (offsets stored only after the handler's transaction, inbox on event id);
//! - each patient's events stay in order (key = patient id, one partition);
//! - nothing is lost when a process dies (rows stay in the outbox until a
//!   delivery report; records stay in the log until a group commits past them);
//! - an event that keeps failing goes to `<topic>.dlq`, and a crisis event
//!   there raises an alarm of its own.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tandem_events::*;
//! # async fn demo(store: tandem_store::Store, handler: Arc<dyn Handler>, org: tandem_proto::ids::OrgId, patient: tandem_proto::ids::PatientId, payload: tandem_proto::events::v1::event_envelope::Payload) -> Result<()> {
//! install(&store).await?;
//! let bus = connect(&"embedded".parse()?, std::path::Path::new("/var/lib/tandem")).await?;
//! bus.ensure_topics(&TopicSpec::standard(bus.default_partitions())).await?;
//! let outbox = Outbox::new(store.clone(), "checkins");
//! let mut tx = store.begin_write().await?;
//! // ... the state change, through `tx` ...
//! outbox.enqueue(&mut tx, topics::CHECKINS, &outbox.envelope(&org, &patient, payload)).await?;
//! outbox.commit(tx).await?; // commits and wakes the relay
//! tokio::spawn(Relay::new(&outbox, bus.clone()).run(std::future::pending()));
//! let consumer = Consumer::new(bus, "triage", &[topics::CHECKINS], store, handler);
//! tokio::spawn(consumer.run(std::future::pending()));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bench;
mod bus;
mod consumer;
mod dead_letter;
pub mod embedded;
mod envelope;
mod error;
pub mod health;
pub mod kafka;
mod outbox;
mod partitioner;
mod retention;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

pub use bus::{
    BusConfig, BusKind, Delivered, EventBus, GroupProbe, PartitionLag, Record, Subscription, TopicSpec, connect,
};
pub use consumer::{Consumer, ConsumerOptions, ConsumerStats, Handler, HandlerError};
pub use dead_letter::{
    CRISIS_DEAD_LETTERS_METRIC, DEAD_LETTERS_METRIC, DeadLetter, DeadLetterAlarm, LogAlarm, crisis_dead_letters_total,
    dead_letters_total,
};
pub use embedded::{EmbeddedBus, EmbeddedConfig};
pub use envelope::{
    could_be_crisis, decode, encode, event_id, event_type_name, headers, is_crisis, new_envelope, patient_id, topics,
    validate,
};
pub use error::{Error, Result};
pub use health::{HealthReport, NoHealthReport, current_health_report, with_health_report};
pub use kafka::{KafkaBus, KafkaConfig};
pub use outbox::{Outbox, Relay, RelayOptions, RelayStats, install};
pub use partitioner::{murmur2, partition_for_key};
pub use retention::{Pruned, Retention, RetentionOptions, prune_inbox};
pub use watch::{CONSUMER_ALARMS_METRIC, CONSUMER_LAG_METRIC, PARTITIONS_HELD_METRIC, WatchOptions};
