//! The event bus contract: one body per property, run unchanged on the
//! embedded log and on Kafka (an Apache Kafka broker started per test).
//!
//! The producing and the consuming service each have their own SQLite store
//! with an outbox and an inbox, as `tandem up` runs them.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tandem_events::testing::TestBus;
use tandem_events::{
    Consumer, ConsumerOptions, Delivered, EventBus, Outbox, Record, Subscription, TopicSpec, headers,
    partition_for_key, topics,
};
use tandem_proto::events::v1::PatientEnrolled;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::PatientId;

use support::*;

const TOPIC: &str = topics::CHECKINS;
const PARTITIONS: i32 = 4;
// Guards against hangs only; a healthy run takes a fraction of it.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs one contract body on both backends: `name::embedded`, `name::kafka`.
macro_rules! contract_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                crate::support::init_tracing();
                super::$name(tandem_events::testing::TestBus::embedded().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka() {
                crate::support::init_tracing();
                super::$name(tandem_events::testing::TestBus::kafka().await).await;
            }
        }
    };
}

async fn topic(bus: &Arc<dyn EventBus>) {
    bus.ensure_topics(&[TopicSpec::new(TOPIC, PARTITIONS)]).await.expect("create the topic");
}

fn patients(count: usize) -> Vec<PatientId> {
    (0..count).map(|_| PatientId::new()).collect()
}

/// `per_patient` numbered events for each patient, interleaved.
fn interleaved(patients: &[PatientId], per_patient: usize) -> Vec<(PatientId, Payload)> {
    (0..per_patient).flat_map(|ordinal| patients.iter().map(move |patient| (*patient, numbered(ordinal)))).collect()
}

contract_test!(rolled_back_transaction_publishes_nothing);
async fn rolled_back_transaction_publishes_nothing(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let patient = PatientId::new();

    let mut tx = producer.store.begin_write().await.unwrap();
    let rolled_back = outbox.envelope(&org(), &patient, numbered(1));
    outbox.enqueue(&mut tx, TOPIC, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    outbox.notify();
    let committed = enqueue_all(&outbox, TOPIC, &[(patient, numbered(2))], 1).await;

    let relay = start_relay(&outbox, bus.clone());
    let handler = RecordingHandler::named("c1");
    let consumer = start_consumer(
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
            .with_options(consumer_options()),
    );
    // The committed event is the marker: once it is handled, the relay has
    // gone past where the rolled-back one would have been.
    wait_until("the committed event is handled", LIMIT, || async { effect_count(&consumer_side.store).await == 1 })
        .await;
    relay.stop().await.unwrap();
    consumer.stop().await.unwrap();

    assert_eq!(handler.calls.lock().unwrap().clone(), vec![committed[0].event_id.clone()]);
    assert_eq!(handler.calls_for(&rolled_back.event_id), 0);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(producer.store.pool()).await.unwrap();
    assert_eq!(rows, 1, "the rolled-back row never existed");
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(per_key_order_holds_across_partitions);
async fn per_key_order_holds_across_partitions(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let patients = patients(16);
    let per_patient = 30;
    let events = interleaved(&patients, per_patient);
    let total = events.len();

    let relay = start_relay(&outbox, bus.clone());
    let handler = RecordingHandler::named("order");
    let members: Vec<Running> = (0..2)
        .map(|_| {
            start_consumer(
                Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
                    .with_options(consumer_options()),
            )
        })
        .collect();
    enqueue_all(&outbox, TOPIC, &events, 7).await;
    wait_until("every event is handled", LIMIT, || async {
        effect_count(&consumer_side.store).await == i64::try_from(total).unwrap()
    })
    .await;

    let handled = effects(&consumer_side.store).await;
    let expected: Vec<i64> = (0..i64::try_from(per_patient).unwrap()).collect();
    for (patient, ordinals) in ordinals_by_patient(&handled) {
        assert_eq!(ordinals, expected, "patient {patient} out of order");
    }

    // Where the records actually went: each key on one partition, the one
    // murmur2 names (the same function on both backends), over 3 or more
    // partitions, in order within it.
    let records = read_topic(&bus, "inspector", TOPIC, total, LIMIT).await;
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut last_ordinal: HashMap<String, i64> = HashMap::new();
    let mut by_partition: HashMap<i32, Vec<&Delivered>> = HashMap::new();
    for record in &records {
        by_partition.entry(record.partition).or_default().push(record);
    }
    for list in by_partition.values_mut() {
        list.sort_by_key(|record| record.offset);
        for record in list.iter() {
            let key = record.key.clone().unwrap();
            assert_eq!(record.partition, partition_for_key(key.as_bytes(), PARTITIONS));
            assert_eq!(*partition_of.entry(key.clone()).or_insert(record.partition), record.partition);
            let event = tandem_events::decode(&record.value).unwrap();
            let ordinal = ordinal(&event);
            if let Some(previous) = last_ordinal.insert(key.clone(), ordinal) {
                assert!(previous < ordinal, "{key}: {ordinal} after {previous} in the log");
            }
        }
    }
    assert!(by_partition.len() >= 3, "only {} partitions used", by_partition.len());

    relay.stop().await.unwrap();
    for member in members {
        member.stop().await.unwrap();
    }
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(ten_thousand_events_over_two_consumers_are_handled_exactly_once);
async fn ten_thousand_events_over_two_consumers_are_handled_exactly_once(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let relay = start_relay(&outbox, bus.clone());
    let options = tandem_events::ConsumerOptions { batch_size: 500, ..consumer_options() };
    let first =
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), RecordingHandler::named("first"))
            .with_options(options.clone());
    let second =
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), RecordingHandler::named("second"))
            .with_options(options);
    let (first_stats, second_stats) = (first.stats(), second.stats());
    let members = [start_consumer(first), start_consumer(second)];

    // Warm up until both members hold partitions, so the run below really
    // is split over two consumers.
    let warm_up = patients(16);
    wait_until("both consumers have handled an event", LIMIT, || {
        let outbox = outbox.clone();
        let warm_up = warm_up.clone();
        let (first_stats, second_stats) = (first_stats.clone(), second_stats.clone());
        async move {
            if first_stats.handled() > 0 && second_stats.handled() > 0 {
                return true;
            }
            let events: Vec<(PatientId, Payload)> = warm_up
                .iter()
                .map(|patient| (*patient, Payload::PatientEnrolled(PatientEnrolled::default())))
                .collect();
            enqueue_all(&outbox, TOPIC, &events, events.len()).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            false
        }
    })
    .await;

    let patients = patients(200);
    let events = interleaved(&patients, 50);
    assert_eq!(events.len(), 10_000);
    let written = enqueue_all(&outbox, TOPIC, &events, 250).await;
    // Count only the run's own events: warm-up events still in flight when
    // the run starts must not make the wait end early.
    wait_until("10,000 events are handled", Duration::from_secs(180), || async {
        let effects = effects(&consumer_side.store).await;
        effects.iter().filter(|effect| effect.event_type == "tandem.events.v1.MeasureMissed").count() >= 10_000
    })
    .await;
    relay.stop().await.unwrap();
    for member in members {
        member.stop().await.unwrap();
    }

    let handled: Vec<Effect> = effects(&consumer_side.store)
        .await
        .into_iter()
        .filter(|effect| effect.event_type == "tandem.events.v1.MeasureMissed")
        .collect();
    let ids: HashSet<&str> = handled.iter().map(|effect| effect.event_id.as_str()).collect();
    assert_eq!(handled.len(), 10_000, "each event's effect exactly once");
    assert_eq!(ids.len(), 10_000);
    let expected: HashSet<&str> = written.iter().map(|event| event.event_id.as_str()).collect();
    assert_eq!(ids, expected);
    let by_member: HashMap<&str, usize> = handled.iter().fold(HashMap::new(), |mut counts, effect| {
        *counts.entry(effect.consumer.as_str()).or_default() += 1;
        counts
    });
    eprintln!(
        "split over the group: {by_member:?}; inbox absorbed {} redeliveries",
        first_stats.duplicates() + second_stats.duplicates()
    );
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(consumer_dropped_mid_batch_redelivers_without_loss);
async fn consumer_dropped_mid_batch_redelivers_without_loss(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let events = interleaved(&patients(8), 25);
    let total = events.len();
    enqueue_all(&outbox, TOPIC, &events, 50).await;
    let relay = start_relay(&outbox, bus.clone());

    // The first member hangs inside its 60th handler call, mid-batch, and
    // is then killed without committing anything more.
    let doomed_handler = RecordingHandler::named("doomed");
    *doomed_handler.hang_on_call.lock().unwrap() = Some(60);
    let doomed = start_consumer(
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), doomed_handler.clone())
            .with_options(consumer_options()),
    );
    tokio::time::timeout(LIMIT, doomed_handler.hanging.notified())
        .await
        .expect("the first consumer reaches its 60th event");
    let stuck = doomed_handler.calls.lock().unwrap()[59].clone();
    doomed.abort().await;
    assert_eq!(effect_count(&consumer_side.store).await, 59);

    let survivor_handler = RecordingHandler::named("survivor");
    let survivor =
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), survivor_handler.clone())
            .with_options(consumer_options());
    let survivor_stats = survivor.stats();
    let survivor = start_consumer(survivor);
    wait_until("every event is handled", LIMIT, || async {
        effect_count(&consumer_side.store).await >= i64::try_from(total).unwrap()
    })
    .await;
    survivor.stop().await.unwrap();
    relay.stop().await.unwrap();

    let handled = effects(&consumer_side.store).await;
    let ids: HashSet<&str> = handled.iter().map(|effect| effect.event_id.as_str()).collect();
    assert_eq!(handled.len(), total, "no effect twice");
    assert_eq!(ids.len(), total, "no event lost");
    assert_eq!(
        survivor_handler.calls_for(&stuck),
        1,
        "the event in flight when the first member died is delivered again"
    );
    eprintln!("survivor handled {}, inbox absorbed {}", survivor_stats.handled(), survivor_stats.duplicates());
    producer.finish().await;
    consumer_side.finish().await;
}

/// A bus whose publish delivers, then never reports back: a relay that
/// dies between publishing and marking rows sent.
#[derive(Debug)]
struct DiesAfterPublishing {
    inner: Arc<dyn EventBus>,
    published: tokio::sync::Notify,
}

#[async_trait]
impl EventBus for DiesAfterPublishing {
    fn kind(&self) -> tandem_events::BusKind {
        self.inner.kind()
    }

    fn default_partitions(&self) -> i32 {
        self.inner.default_partitions()
    }

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> tandem_events::Result<()> {
        self.inner.ensure_topics(topics).await
    }

    async fn publish(&self, records: &[Record]) -> Vec<tandem_events::Result<()>> {
        let results = self.inner.publish(records).await;
        assert!(results.iter().all(Result::is_ok));
        self.published.notify_one();
        std::future::pending().await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> tandem_events::Result<Box<dyn Subscription>> {
        self.inner.subscribe(group, topics).await
    }

    async fn flush(&self, timeout: Duration) -> tandem_events::Result<()> {
        self.inner.flush(timeout).await
    }
}

contract_test!(relay_stopped_before_marking_publishes_a_duplicate_the_inbox_absorbs);
async fn relay_stopped_before_marking_publishes_a_duplicate_the_inbox_absorbs(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let events = interleaved(&patients(5), 4);
    let total = events.len();
    enqueue_all(&outbox, TOPIC, &events, 20).await;

    let dying = Arc::new(DiesAfterPublishing { inner: bus.clone(), published: tokio::sync::Notify::new() });
    let first_relay = start_relay(&outbox, dying.clone());
    tokio::time::timeout(LIMIT, dying.published.notified()).await.expect("the first relay publishes");
    first_relay.abort().await;
    assert_eq!(outbox.pending().await.unwrap(), u64::try_from(total).unwrap(), "nothing was marked sent");

    let second_relay = start_relay(&outbox, bus.clone());
    let consumer =
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), RecordingHandler::named("c"))
            .with_options(consumer_options());
    let stats = consumer.stats();
    let consumer = start_consumer(consumer);
    wait_until("both copies of every event arrived", LIMIT, || async {
        stats.handled() + stats.duplicates() >= u64::try_from(2 * total).unwrap()
    })
    .await;
    consumer.stop().await.unwrap();
    second_relay.stop().await.unwrap();

    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_eq!(stats.handled(), u64::try_from(total).unwrap());
    assert_eq!(stats.duplicates(), u64::try_from(total).unwrap(), "every duplicate absorbed");
    let handled = effects(&consumer_side.store).await;
    assert_eq!(handled.len(), total);
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(poison_events_land_in_the_dead_letter_topic);
async fn poison_events_land_in_the_dead_letter_topic(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let (quiet, crisis) = (PatientId::new(), PatientId::new());
    // Each poison event is followed by good events of the same patient, on
    // the same partition: they are handled only if the consumer moves on.
    let written = enqueue_all(
        &outbox,
        TOPIC,
        &[
            (quiet, numbered(0)),
            (quiet, numbered(1)),
            (quiet, numbered(2)),
            (crisis, crisis_check_in()),
            (crisis, numbered(1)),
        ],
        5,
    )
    .await;
    let (quiet_poison, crisis_poison) = (written[0].event_id.clone(), written[3].event_id.clone());
    // Bytes that are no envelope at all, declared as a risk assessment.
    let garbage = Record {
        topic: TOPIC.to_owned(),
        key: PatientId::new().to_string(),
        value: b"\xff\xff not protobuf".to_vec(),
        headers: vec![
            (headers::EVENT_ID.to_owned(), uuid_v7()),
            (headers::EVENT_TYPE.to_owned(), "tandem.events.v1.RiskAssessed".to_owned()),
        ],
    };
    assert!(bus.publish(std::slice::from_ref(&garbage)).await[0].is_ok());

    let handler = RecordingHandler::named("c");
    // The quiet event keeps failing (transiently): dead-lettered after its
    // attempts. A crisis event is dead-lettered only when it can never be
    // handled: here its handler refuses it for good.
    handler.poison.lock().unwrap().insert(quiet_poison.clone());
    handler.refuse.lock().unwrap().insert(crisis_poison.clone());
    let alarm = Arc::new(RecordingAlarm::default());
    let before = tandem_events::dead_letters_total();
    let consumer = Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
        .with_options(consumer_options())
        .with_alarm(alarm.clone());
    let stats = consumer.stats();
    let relay = start_relay(&outbox, bus.clone());
    let consumer = start_consumer(consumer);
    wait_until("three dead letters and three handled events", LIMIT, || async {
        stats.dead_lettered() >= 3 && stats.handled() >= 3
    })
    .await;

    // A redelivered dead letter is skipped, not dead-lettered again.
    let again = Record::from_envelope(TOPIC, &written[0]).unwrap();
    assert!(bus.publish(&[again]).await[0].is_ok());
    wait_until("the redelivery is absorbed", LIMIT, || async { stats.duplicates() >= 1 }).await;
    consumer.stop().await.unwrap();
    relay.stop().await.unwrap();

    assert_eq!(stats.dead_lettered(), 3);
    assert_eq!(stats.crisis_dead_lettered(), 2);
    assert_eq!(handler.calls_for(&quiet_poison), 3, "retried up to max_attempts");
    assert_eq!(handler.calls_for(&crisis_poison), 1, "a permanent refusal is not retried");
    assert!(tandem_events::dead_letters_total() >= before + 3);
    let handled: HashSet<String> = effects(&consumer_side.store)
        .await
        .into_iter()
        .filter(|effect| effect.consumer == "c")
        .map(|effect| effect.event_id)
        .collect();
    let good: HashSet<String> =
        [&written[1], &written[2], &written[4]].iter().map(|event| event.event_id.clone()).collect();
    assert_eq!(handled, good);

    let letters = read_topic(&bus, "dlq-inspector", &topics::dead_letter(TOPIC), 3, LIMIT).await;
    let by_id: HashMap<String, &Delivered> =
        letters.iter().map(|letter| (letter.header(headers::EVENT_ID).unwrap().to_owned(), letter)).collect();
    let quiet_letter = by_id[&quiet_poison];
    assert!(quiet_letter.header(headers::DLQ_ERROR).unwrap().contains("test poison"));
    assert_eq!(quiet_letter.header(headers::DLQ_TOPIC), Some(TOPIC));
    assert_eq!(quiet_letter.header(headers::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(tandem_events::decode(&quiet_letter.value).unwrap(), written[0]);
    assert!(by_id[&crisis_poison].header(headers::DLQ_ERROR).unwrap().contains("can never be handled"));
    let garbage_letter = by_id[garbage.header(headers::EVENT_ID).unwrap()];
    assert_eq!(garbage_letter.value, garbage.value);
    assert!(garbage_letter.header(headers::DLQ_ERROR).unwrap().contains("not a tandem.events.v1.EventEnvelope"));

    let alarmed: HashSet<Option<String>> =
        alarm.letters.lock().unwrap().iter().map(|letter| letter.event_id.clone()).collect();
    let expected: HashSet<Option<String>> =
        [Some(crisis_poison.clone()), garbage.header(headers::EVENT_ID).map(str::to_owned)].into_iter().collect();
    assert_eq!(alarmed, expected, "crisis dead letters raise the alarm, others do not");
    let patients: HashSet<Option<String>> =
        alarm.letters.lock().unwrap().iter().map(|letter| letter.patient_key.clone()).collect();
    assert!(patients.contains(&Some(crisis.to_string())), "the alarm names the patient: {patients:?}");
    let org_of_refused =
        alarm.letters.lock().unwrap().iter().find(|l| l.event_id.as_ref() == Some(&crisis_poison)).unwrap().org.clone();
    assert_eq!(org_of_refused, Some(org().to_string()), "the letter carries the org");
    let paged: HashSet<String> = pages(&consumer_side.store).await.into_iter().collect();
    assert_eq!(paged, alarmed.into_iter().flatten().collect(), "each crisis dead letter was paged, once");
    assert_eq!(stats.crisis_paged(), 2);
    producer.finish().await;
    consumer_side.finish().await;
}

fn uuid_v7() -> String {
    tandem_proto::ids::EventId::new().to_string()
}

contract_test!(trace_context_flows_from_producer_to_handler);
async fn trace_context_flows_from_producer_to_handler(test: TestBus) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");

    // The check-in's request span, continuing a caller's trace.
    let trace_id = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let request = tracing::info_span!("grpc.request");
    let _ = request.set_parent(tandem_telemetry::parent_context_from_traceparent(&incoming));
    let event = {
        let _entered = request.enter();
        outbox.envelope(&org(), &PatientId::new(), crisis_check_in())
    };
    assert!(event.traceparent.contains(&trace_id), "the envelope carries the trace: {}", event.traceparent);
    let mut tx = producer.store.begin_write().await.unwrap();
    outbox.enqueue(&mut tx, TOPIC, &event).await.unwrap();
    outbox.commit(tx).await.unwrap();

    let relay = start_relay(&outbox, bus.clone());
    let handler = RecordingHandler::named("c");
    let consumer = start_consumer(
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
            .with_options(consumer_options()),
    );
    wait_until("the event is handled", LIMIT, || async { effect_count(&consumer_side.store).await == 1 }).await;
    consumer.stop().await.unwrap();
    relay.stop().await.unwrap();

    let seen = handler.traceparents.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains(&trace_id), "the handler runs in the producer's trace: {}", seen[0]);
    assert_ne!(seen[0], event.traceparent, "the handler has a span of its own");
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(a_crisis_event_failing_transiently_waits_with_an_alarm_and_is_never_dead_lettered);
async fn a_crisis_event_failing_transiently_waits_with_an_alarm_and_is_never_dead_lettered(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let patient = PatientId::new();
    let written = enqueue_all(&outbox, TOPIC, &[(patient, crisis_check_in()), (patient, numbered(1))], 2).await;
    let crisis_event = written[0].event_id.clone();

    let handler = RecordingHandler::named("c");
    handler.poison.lock().unwrap().insert(crisis_event.clone());
    let health = Arc::new(RecordingHealth::default());
    let consumer = Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
        .with_options(consumer_options())
        .with_health(health.clone());
    let stats = consumer.stats();
    let relay = start_relay(&outbox, bus.clone());
    let consumer = start_consumer(consumer);
    // Well past max_attempts (3), where any other event is dead-lettered.
    wait_until("the crisis event failed 6 times", LIMIT, || async { handler.calls_for(&crisis_event) >= 6 }).await;
    wait_until("the alarm is raised", LIMIT, || async { health.failing_with(&crisis_event) }).await;
    assert_eq!(stats.crisis_retrying(), 1);
    assert_eq!(stats.dead_lettered(), 0, "a crisis event is never dead-lettered for a transient error");
    assert_eq!(effect_count(&consumer_side.store).await, 0, "the patient's later event waits behind it, in order");

    // The failure passes: the event is handled, then the one behind it.
    handler.poison.lock().unwrap().clear();
    wait_until("both events are handled", LIMIT, || async { effect_count(&consumer_side.store).await == 2 }).await;
    wait_until("the alarm clears", LIMIT, || async { health.healthy() }).await;
    consumer.stop().await.unwrap();
    relay.stop().await.unwrap();
    assert_eq!(stats.crisis_retrying(), 0);
    assert_eq!(stats.dead_lettered(), 0);
    let handled: Vec<String> = effects(&consumer_side.store).await.into_iter().map(|effect| effect.event_id).collect();
    assert_eq!(handled, [crisis_event, written[1].event_id.clone()]);
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(a_member_holding_no_partitions_while_events_wait_raises_an_alarm);
async fn a_member_holding_no_partitions_while_events_wait_raises_an_alarm(test: TestBus) {
    // One partition: a second member of the group holds nothing. The first
    // hangs in its handler, so the events behind stop moving.
    let bus = test.bus.clone();
    let topic = topics::CAREPLANS;
    bus.ensure_topics(&[TopicSpec::new(topic, 1)]).await.expect("create the topic");
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "careplans");
    let patient = PatientId::new();
    enqueue_all(&outbox, topic, &[(patient, numbered(1)), (patient, numbered(2)), (patient, numbered(3))], 3).await;
    let relay = start_relay(&outbox, bus.clone());

    let options = ConsumerOptions {
        watch: tandem_events::WatchOptions {
            every: Duration::from_millis(100),
            stall_after: Duration::from_secs(1),
            max_crisis_lag: 1000,
        },
        ..consumer_options()
    };
    let stuck = RecordingHandler::named("stuck");
    *stuck.hang_on_call.lock().unwrap() = Some(1);
    let holder_health = Arc::new(RecordingHealth::default());
    let holder = start_consumer(
        Consumer::new(bus.clone(), "careplans-readers", &[topic], consumer_side.store.clone(), stuck.clone())
            .with_options(options.clone())
            .with_health(holder_health.clone()),
    );
    tokio::time::timeout(LIMIT, stuck.hanging.notified()).await.expect("the first member takes the partition");

    let idle_health = Arc::new(RecordingHealth::default());
    let idle = Consumer::new(
        bus.clone(),
        "careplans-readers",
        &[topic],
        consumer_side.store.clone(),
        RecordingHandler::named("idle"),
    )
    .with_options(options)
    .with_health(idle_health.clone());
    let idle_stats = idle.stats();
    let idle = start_consumer(idle);
    wait_until("the member without partitions raises the alarm", LIMIT, || async {
        idle_health.failing_with("holds no partitions")
    })
    .await;
    assert_eq!(idle_stats.held_partitions(), 0);
    assert!(idle_stats.lag() >= 3, "the three events wait: lag {}", idle_stats.lag());
    assert!(idle_stats.alarms() >= 1);
    assert!(!holder_health.failing_with("holds no partitions"), "the member holding the partition is not the one");

    holder.abort().await;
    idle.abort().await;
    relay.stop().await.unwrap();
    producer.finish().await;
    consumer_side.finish().await;
}

contract_test!(a_crisis_dead_letter_is_paged_once_and_an_unpageable_one_stays_alarmed);
async fn a_crisis_dead_letter_is_paged_once_and_an_unpageable_one_stays_alarmed(test: TestBus) {
    let bus = test.bus.clone();
    topic(&bus).await;
    let producer = Service::sqlite().await;
    let consumer_side = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "checkins");
    let patient = PatientId::new();
    let written = enqueue_all(
        &outbox,
        TOPIC,
        &[(patient, crisis_check_in()), (patient, crisis_check_in()), (patient, numbered(2))],
        3,
    )
    .await;
    let (paged_event, unpageable) = (written[0].event_id.clone(), written[1].event_id.clone());
    let handler = RecordingHandler::named("c");
    handler.refuse.lock().unwrap().extend([paged_event.clone(), unpageable.clone()]);
    // The first page fails transiently (the store is away) a few times.
    let alarm = Arc::new(RecordingAlarm { failures: Mutex::new(4), ..Default::default() });
    alarm.refuse.lock().unwrap().insert(unpageable.clone());
    let health = Arc::new(RecordingHealth::default());
    let start = |health: Arc<RecordingHealth>| {
        Consumer::new(bus.clone(), "triage", &[TOPIC], consumer_side.store.clone(), handler.clone())
            .with_options(consumer_options())
            .with_alarm(alarm.clone())
            .with_health(health)
    };
    let consumer = start(health.clone());
    let stats = consumer.stats();
    let relay = start_relay(&outbox, bus.clone());
    let running = start_consumer(consumer);
    wait_until("the later event is handled", LIMIT, || async { handler.calls_for(&written[2].event_id) >= 1 }).await;
    wait_until("its effect commits", LIMIT, || async {
        effects(&consumer_side.store).await.iter().any(|e| e.event_id == written[2].event_id)
    })
    .await;
    assert_eq!(
        pages(&consumer_side.store).await,
        std::slice::from_ref(&paged_event),
        "paged once, after the transient failures"
    );
    assert!(
        health.ever.lock().unwrap().iter().any(|(_, reason)| reason.contains(&paged_event)),
        "the failing page was alarmed while it waited"
    );
    assert!(!health.failing_with(&format!("{paged_event} fails")), "and cleared once written");
    assert_eq!(stats.crisis_unpaged(), 1);
    assert!(health.failing_with(&unpageable), "a letter nobody could be paged for stays alarmed");

    // A redelivery is not paged again.
    assert!(bus.publish(&[Record::from_envelope(TOPIC, &written[0]).unwrap()]).await[0].is_ok());
    wait_until("the redelivery is absorbed", LIMIT, || async { stats.duplicates() >= 1 }).await;
    running.stop().await.unwrap();
    assert_eq!(pages(&consumer_side.store).await, std::slice::from_ref(&paged_event));

    // After a restart the unpaged letter is alarmed again.
    let after_restart = Arc::new(RecordingHealth::default());
    let running = start_consumer(start(after_restart.clone()));
    wait_until("the unpaged letter alarms again", LIMIT, || async { after_restart.failing_with(&unpageable) }).await;
    running.stop().await.unwrap();
    relay.stop().await.unwrap();
    producer.finish().await;
    consumer_side.finish().await;
}
