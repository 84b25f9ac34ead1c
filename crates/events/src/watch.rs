//! The consumer's watchdog: reads where its group stands every few seconds
//! and raises an alarm (ERROR log with an `alarm` field, a metric, health
//! NOT_SERVING through [`HealthReport`]) when
//! - this member holds no partitions while a partition of its topics has
//!   unconsumed events that have not moved for `stall_after`
//!   (`alarm=consumer_no_partitions`: a group left with empty assignments);
//! - a crisis topic's partition has unconsumed events that have not moved
//!   for `stall_after`, whoever holds it (`alarm=crisis_consumer_stalled`);
//! - the crisis topics' unconsumed events exceed `max_crisis_lag`
//!   (`alarm=crisis_consumer_lag`).
//!
//! "Not moved" means the group's committed offset stayed where it was while
//! events waited behind it, so a busy but progressing consumer never counts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};
use tokio::time::Instant;

use crate::bus::{GroupProbe, PartitionLag};
use crate::consumer::ConsumerStats;
use crate::envelope::topics;
use crate::error::Error;
use crate::health::HealthReport;

/// When the watchdog raises its alarms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// How often the group's offsets are read.
    pub every: Duration,
    /// How long unconsumed events may wait without the group's committed
    /// offset moving before their partition counts as stalled.
    pub stall_after: Duration,
    /// Unconsumed events on the crisis topics beyond which the group is
    /// falling behind.
    pub max_crisis_lag: i64,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self { every: Duration::from_secs(5), stall_after: Duration::from_secs(30), max_crisis_lag: 1000 }
    }
}

/// The `tandem.events.consumer.lag` metric: unconsumed events per group and topic.
pub const CONSUMER_LAG_METRIC: &str = "tandem.events.consumer.lag";
/// The `tandem.events.consumer.partitions_held` metric.
pub const PARTITIONS_HELD_METRIC: &str = "tandem.events.consumer.partitions_held";
/// The `tandem.events.consumer.alarms` metric: alarms raised, by kind.
pub const CONSUMER_ALARMS_METRIC: &str = "tandem.events.consumer.alarms";

struct Metrics {
    lag: Gauge<i64>,
    held: Gauge<u64>,
    alarms: Counter<u64>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = opentelemetry::global::meter("tandem-events");
        Metrics {
            lag: meter
                .i64_gauge(CONSUMER_LAG_METRIC)
                .with_description("events a consumer group has not consumed")
                .build(),
            held: meter
                .u64_gauge(PARTITIONS_HELD_METRIC)
                .with_description("partitions a consumer group member holds")
                .build(),
            alarms: meter
                .u64_counter(CONSUMER_ALARMS_METRIC)
                .with_description("consumer alarms raised (no partitions, crisis topic stalled or behind)")
                .build(),
        }
    })
}

/// Counts an alarm in the metrics.
pub(crate) fn count_alarm(group: &str, alarm: &'static str) {
    metrics().alarms.add(1, &[KeyValue::new("group", group.to_owned()), KeyValue::new("alarm", alarm)]);
}

/// An alarm and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alarm {
    pub(crate) kind: &'static str,
    pub(crate) reason: String,
}

/// One reading of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assessment {
    pub(crate) held: usize,
    pub(crate) lag: i64,
    pub(crate) crisis_lag: i64,
    pub(crate) alarm: Option<Alarm>,
}

/// Per partition with unconsumed events: the committed offset last seen
/// and since when it has not moved.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    waiting: HashMap<(String, i32), (i64, Instant)>,
}

impl Stalls {
    /// Updates the record with a reading taken at `now` and judges it.
    pub(crate) fn assess(&mut self, partitions: &[PartitionLag], now: Instant, options: &WatchOptions) -> Assessment {
        let mut seen = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let key = (partition.topic.clone(), partition.partition);
            seen.push(key.clone());
            if partition.lag() == 0 {
                self.waiting.remove(&key);
                continue;
            }
            match self.waiting.get(&key) {
                Some((committed, _)) if *committed == partition.committed => {}
                _ => {
                    self.waiting.insert(key, (partition.committed, now));
                }
            }
        }
        self.waiting.retain(|key, _| seen.contains(key));
        let stalled_for = |partition: &PartitionLag| -> Option<Duration> {
            let (_, since) = self.waiting.get(&(partition.topic.clone(), partition.partition))?;
            let waited = now.saturating_duration_since(*since);
            (waited >= options.stall_after).then_some(waited)
        };
        let crisis = |partition: &PartitionLag| topics::CRISIS.contains(&partition.topic.as_str());
        let held = partitions.iter().filter(|partition| partition.held).count();
        let lag = partitions.iter().map(PartitionLag::lag).sum();
        let crisis_lag = partitions.iter().filter(|partition| crisis(partition)).map(PartitionLag::lag).sum();

        let no_partitions = (held == 0)
            .then(|| partitions.iter().find_map(|partition| stalled_for(partition).map(|waited| (partition, waited))))
            .flatten();
        let crisis_stalled = partitions
            .iter()
            .filter(|partition| crisis(partition))
            .find_map(|partition| stalled_for(partition).map(|waited| (partition, waited)));
        let alarm = if let Some((partition, waited)) = no_partitions {
            Some(Alarm {
                kind: "consumer_no_partitions",
                reason: format!(
                    "this member holds no partitions while {} events on {}/{} have not moved for {} s",
                    partition.lag(),
                    partition.topic,
                    partition.partition,
                    waited.as_secs()
                ),
            })
        } else if let Some((partition, waited)) = crisis_stalled {
            Some(Alarm {
                kind: "crisis_consumer_stalled",
                reason: format!(
                    "{} events on crisis topic {}/{} have not moved for {} s ({})",
                    partition.lag(),
                    partition.topic,
                    partition.partition,
                    waited.as_secs(),
                    if partition.held { "held by this member" } else { "held by another member or nobody" }
                ),
            })
        } else if crisis_lag > options.max_crisis_lag {
            Some(Alarm {
                kind: "crisis_consumer_lag",
                reason: format!(
                    "{crisis_lag} events on the crisis topics are not consumed yet (bound {})",
                    options.max_crisis_lag
                ),
            })
        } else {
            None
        };
        Assessment { held, lag, crisis_lag, alarm }
    }
}

/// How often a lasting alarm is logged again.
const REPEAT_LOG: Duration = Duration::from_secs(60);

/// Watches the group through `probe` until the task is aborted (or the
/// member is gone).
pub(crate) async fn watch(
    probe: Arc<dyn GroupProbe>,
    group: String,
    options: WatchOptions,
    health: Arc<dyn HealthReport>,
    stats: Arc<ConsumerStats>,
) {
    let component = format!("consumer {group} group");
    let mut stalls = Stalls::default();
    let mut raised: Option<(&'static str, Instant)> = None;
    let mut ticker = tokio::time::interval(options.every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let partitions = match probe.partitions().await {
            Ok(partitions) => partitions,
            Err(Error::Closed) => return,
            Err(error) => {
                // The bus itself is away; polling reports that on its own.
                tracing::debug!(%error, %group, "reading the consumer group's offsets failed");
                continue;
            }
        };
        let assessment = stalls.assess(&partitions, Instant::now(), &options);
        stats.held_partitions.store(assessment.held as u64, Ordering::Relaxed);
        stats.lag.store(assessment.lag, Ordering::Relaxed);
        let group_attribute = KeyValue::new("group", group.clone());
        metrics().held.record(assessment.held as u64, std::slice::from_ref(&group_attribute));
        let mut by_topic: HashMap<&str, i64> = HashMap::new();
        for partition in &partitions {
            *by_topic.entry(partition.topic.as_str()).or_default() += partition.lag();
        }
        for (topic, lag) in by_topic {
            metrics().lag.record(lag, &[group_attribute.clone(), KeyValue::new("topic", topic.to_owned())]);
        }
        match assessment.alarm {
            Some(alarm) => {
                health.failing(&component, &alarm.reason);
                let now = Instant::now();
                let log = match raised {
                    Some((kind, at)) => kind != alarm.kind || now.duration_since(at) >= REPEAT_LOG,
                    None => true,
                };
                if log {
                    if raised.is_none_or(|(kind, _)| kind != alarm.kind) {
                        stats.alarms.fetch_add(1, Ordering::Relaxed);
                        count_alarm(&group, alarm.kind);
                    }
                    tracing::error!(
                        alarm = alarm.kind,
                        %group,
                        held_partitions = assessment.held,
                        lag = assessment.lag,
                        crisis_lag = assessment.crisis_lag,
                        reason = %alarm.reason,
                        "consumer group is not keeping up; health is NOT_SERVING until it does"
                    );
                    raised = Some((alarm.kind, now));
                }
            }
            None => {
                if let Some((kind, _)) = raised.take() {
                    health.recovered(&component);
                    tracing::info!(alarm = kind, %group, lag = assessment.lag, "consumer group alarm cleared");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(topic: &str, partition: i32, committed: i64, end: i64, held: bool) -> PartitionLag {
        PartitionLag { topic: topic.to_owned(), partition, committed, end, held }
    }

    fn options() -> WatchOptions {
        WatchOptions { every: Duration::from_secs(1), stall_after: Duration::from_secs(30), max_crisis_lag: 100 }
    }

    #[test]
    fn a_member_without_partitions_alarms_only_once_events_stop_moving() {
        let mut stalls = Stalls::default();
        let start = Instant::now();
        let waiting = [partition(topics::CAREPLANS, 0, 10, 15, false)];
        assert_eq!(stalls.assess(&waiting, start, &options()).alarm, None, "just seen waiting");
        let later = stalls.assess(&waiting, start + Duration::from_secs(31), &options());
        assert_eq!(later.alarm.map(|alarm| alarm.kind), Some("consumer_no_partitions"));
        assert_eq!((later.held, later.lag), (0, 5));
    }

    #[test]
    fn progress_resets_the_clock_and_an_idle_group_never_alarms() {
        let mut stalls = Stalls::default();
        let start = Instant::now();
        stalls.assess(&[partition(topics::CAREPLANS, 0, 10, 15, false)], start, &options());
        let moved = [partition(topics::CAREPLANS, 0, 12, 20, false)];
        assert_eq!(stalls.assess(&moved, start + Duration::from_secs(31), &options()).alarm, None);
        assert_eq!(stalls.assess(&moved, start + Duration::from_secs(60), &options()).alarm, None);
        assert!(stalls.assess(&moved, start + Duration::from_secs(62), &options()).alarm.is_some());
        let idle = [partition(topics::CAREPLANS, 0, 20, 20, false)];
        assert_eq!(stalls.assess(&idle, start + Duration::from_secs(500), &options()).alarm, None);
    }

    #[test]
    fn a_stalled_crisis_partition_alarms_whoever_holds_it_but_other_topics_do_not() {
        let mut stalls = Stalls::default();
        let start = Instant::now();
        let reading = [
            partition(topics::CAREPLANS, 0, 0, 3, true),
            partition(topics::CHECKINS, 1, 4, 5, false),
            partition(topics::CHECKINS, 0, 0, 0, true),
        ];
        stalls.assess(&reading, start, &options());
        let later = stalls.assess(&reading, start + Duration::from_secs(30), &options());
        assert_eq!(later.alarm.map(|alarm| alarm.kind), Some("crisis_consumer_stalled"));
        let only_careplans = [partition(topics::CAREPLANS, 0, 0, 3, true)];
        assert_eq!(stalls.assess(&only_careplans, start + Duration::from_secs(90), &options()).alarm, None);
    }

    #[test]
    fn a_crisis_backlog_past_the_bound_alarms_even_while_it_moves() {
        let mut stalls = Stalls::default();
        let start = Instant::now();
        let reading = [partition(topics::TRIAGE, 0, 0, 101, true)];
        let assessment = stalls.assess(&reading, start, &options());
        assert_eq!(assessment.crisis_lag, 101);
        assert_eq!(assessment.alarm.map(|alarm| alarm.kind), Some("crisis_consumer_lag"));
        let within = [partition(topics::TRIAGE, 0, 1, 101, true)];
        assert_eq!(stalls.assess(&within, start + Duration::from_secs(1), &options()).alarm, None);
    }
}
