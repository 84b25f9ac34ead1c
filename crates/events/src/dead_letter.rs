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

/// Called when a crisis event is dead-lettered. The default logs at ERROR;
/// later wiring pages the on-call contact.
#[async_trait]
pub trait DeadLetterAlarm: Send + Sync + std::fmt::Debug {
    /// A crisis event could not be handled and went to the dead-letter topic.
    async fn crisis_dead_lettered(&self, letter: &DeadLetter);
}

/// The default alarm: an ERROR log line with the stable field
/// `alert = "crisis_dead_letter"` for log-based alerting.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlarm;

#[async_trait]
impl DeadLetterAlarm for LogAlarm {
    async fn crisis_dead_lettered(&self, letter: &DeadLetter) {
        tracing::error!(
            alert = "crisis_dead_letter",
            event_id = letter.event_id.as_deref().unwrap_or("unknown"),
            event_type = letter.event_type.as_deref().unwrap_or("unknown"),
            topic = %letter.topic,
            partition = letter.partition,
            offset = letter.offset,
            group = %letter.group,
            attempts = letter.attempts,
            error = %letter.error,
            "a crisis event could not be handled and was dead-lettered; a person must act on it now"
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
