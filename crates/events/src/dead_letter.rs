//! Dead letters: counting them, and raising an alarm of its own when one
//! carries a crisis signal (the one invariant: a crisis signal is never
//! silently dropped).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use sqlx::Any;

use crate::consumer::HandlerError;

/// What was dead-lettered: identifiers only, never the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event id, if the record carried one.
    pub event_id: Option<String>,
    /// The event type, if known.
    pub event_type: Option<String>,
    /// The record's key: the patient's id (present even when the payload
    /// cannot be read).
    pub patient_key: Option<String>,
    /// The organisation, from the envelope or, when it cannot be read, the
    /// record's `tandem-org-id` header.
    pub org: Option<String>,
    /// The topic it came from.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The consumer group that gave up.
    pub group: String,
    /// The handler's last error.
    pub error: String,
    /// How often the handler was tried.
    pub attempts: u32,
    /// Whether the event carries a crisis signal.
    pub crisis: bool,
}

impl DeadLetter {
    /// What identifies this dead letter to every consumer group that meets
    /// it: the event id when it is known, else where the record sits. A
    /// page keyed on it is sent once, however many groups (or redeliveries)
    /// dead-letter the same record.
    pub fn key(&self) -> String {
        match self.event_id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => format!("{}/{}@{}", self.topic, self.partition, self.offset),
        }
    }
}

/// The hook on the crisis dead-letter path: called after a crisis event
/// (or an unreadable record that may be one) went to the dead-letter topic
/// and the consumer logged `alarm=crisis_dead_letter` at ERROR with the
/// patient key. A service wires its own with
/// [`crate::Consumer::with_alarm`] to page the organisation's crisis
/// contact for `letter.patient_key`.
///
/// It writes the page through `tx`, the transaction that records the dead
/// letter in the consumer's inbox (under [`DeadLetter::key`]): the page
/// commits once per dead letter, and a record redelivered after a crash
/// before that commit is paged then. The consumer does not move on until
/// it committed: a transient error is retried with back-off while the
/// alarm `crisis_dead_letter_paging` holds health NOT_SERVING; a permanent
/// one (nothing recoverable to page with) leaves the alarm
/// `crisis_dead_letter_unpaged` raised for good, in this process and after
/// a restart.
#[async_trait]
pub trait DeadLetterAlarm: Send + Sync + std::fmt::Debug {
    /// A crisis event could not be handled and went to the dead-letter
    /// topic: page someone, writing through `tx`.
    async fn crisis_dead_lettered(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        letter: &DeadLetter,
    ) -> Result<(), HandlerError>;

    /// Runs after the page's transaction committed, e.g. to wake an outbox
    /// relay.
    fn after_commit(&self, _letter: &DeadLetter) {}
}

/// The default hook: pages nobody, so it refuses every letter for good and
/// the consumer keeps `alarm=crisis_dead_letter_unpaged` raised (ERROR log,
/// health NOT_SERVING) for log-based alerting and the orchestrator.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlarm;

#[async_trait]
impl DeadLetterAlarm for LogAlarm {
    async fn crisis_dead_lettered(
        &self,
        _tx: &mut sqlx::Transaction<'_, Any>,
        _letter: &DeadLetter,
    ) -> Result<(), HandlerError> {
        Err(HandlerError::permanent("no crisis-contact hook is wired for this consumer: nobody can be paged"))
    }
}

/// The `tandem.events.dead_letters` metric name.
pub const DEAD_LETTERS_METRIC: &str = "tandem.events.dead_letters";
/// The `tandem.events.crisis_dead_letters` metric name.
pub const CRISIS_DEAD_LETTERS_METRIC: &str = "tandem.events.crisis_dead_letters";

static DEAD_LETTERS: AtomicU64 = AtomicU64::new(0);
static CRISIS_DEAD_LETTERS: AtomicU64 = AtomicU64::new(0);

struct Counters {
    all: Counter<u64>,
    crisis: Counter<u64>,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let meter = opentelemetry::global::meter("tandem-events");
        Counters {
            all: meter.u64_counter(DEAD_LETTERS_METRIC).with_description("events sent to a dead-letter topic").build(),
            crisis: meter
                .u64_counter(CRISIS_DEAD_LETTERS_METRIC)
                .with_description("crisis events sent to a dead-letter topic")
                .build(),
        }
    })
}

/// Counts a dead letter in the metrics and the process counters.
pub(crate) fn count(letter: &DeadLetter) {
    let attributes = [KeyValue::new("topic", letter.topic.clone()), KeyValue::new("crisis", letter.crisis)];
    counters().all.add(1, &attributes);
    DEAD_LETTERS.fetch_add(1, Ordering::Relaxed);
    if letter.crisis {
        counters().crisis.add(1, &attributes[..1]);
        CRISIS_DEAD_LETTERS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Dead letters in this process so far.
pub fn dead_letters_total() -> u64 {
    DEAD_LETTERS.load(Ordering::Relaxed)
}

/// Crisis dead letters in this process so far.
pub fn crisis_dead_letters_total() -> u64 {
    CRISIS_DEAD_LETTERS.load(Ordering::Relaxed)
}
