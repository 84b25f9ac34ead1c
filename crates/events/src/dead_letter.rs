//! Dead letters: counting them, and raising an alarm of its own when one
//! carries a crisis signal (the one invariant: a crisis signal is never
//! silently dropped).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

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

/// The hook on the crisis dead-letter path: called after a crisis event
/// (or an unreadable record that may be one) went to the dead-letter topic
/// and the consumer logged `alarm=crisis_dead_letter` at ERROR with the
/// patient key. A service wires its own with
/// [`crate::Consumer::with_alarm`] to page the organisation's crisis
/// contact for `letter.patient_key`; it runs on the consumer's task before
/// the consumer moves on, so it should hand the page off (e.g. write it to
/// an outbox) rather than wait on delivery.
#[async_trait]
pub trait DeadLetterAlarm: Send + Sync + std::fmt::Debug {
    /// A crisis event could not be handled and went to the dead-letter topic.
    async fn crisis_dead_lettered(&self, letter: &DeadLetter);
}

/// The default hook: pages nobody, and says so at ERROR
/// (`alarm = "crisis_dead_letter_unpaged"`) for log-based alerting.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlarm;

#[async_trait]
impl DeadLetterAlarm for LogAlarm {
    async fn crisis_dead_lettered(&self, letter: &DeadLetter) {
        tracing::error!(
            alarm = "crisis_dead_letter_unpaged",
            patient = letter.patient_key.as_deref().unwrap_or("unknown"),
            event_id = letter.event_id.as_deref().unwrap_or("unknown"),
            topic = %letter.topic,
            group = %letter.group,
            "no crisis-contact hook is wired for this consumer: nobody was paged for this dead-lettered crisis event"
        );
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
