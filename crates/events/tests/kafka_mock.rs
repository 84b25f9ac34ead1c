//! The relay against librdkafka's mock cluster with its broker taken down
//! mid-publish: nothing is lost, and the relay resumes by itself.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tandem_events::{EventBus, KafkaBus, KafkaConfig, Outbox, Relay, topics};
use tandem_proto::ids::PatientId;

use support::*;

const TOPIC: &str = topics::TRIAGE;
const LIMIT: Duration = Duration::from_secs(90);

async fn outage(delivery_timeout: Option<Duration>) {
    init_tracing();
    let cluster = MockCluster::new(1).expect("start the mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("create the topic on the mock cluster");
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.delivery_timeout = delivery_timeout;
    config.session_timeout = Duration::from_secs(6);
    let bus: Arc<dyn EventBus> = Arc::new(KafkaBus::new(config).unwrap());
    let producer = Service::sqlite().await;
    let outbox = Outbox::new(producer.store.clone(), "triage");
    let relay = Relay::new(&outbox, bus.clone()).with_options(relay_options());
    let stats = relay.stats();
    let relay = start_relay_with(relay);
    let patients: Vec<PatientId> = (0..6).map(|_| PatientId::new()).collect();
    let batch = |from: usize| -> Vec<_> {
        (from..from + 10).flat_map(|ordinal| patients.iter().map(move |p| (*p, numbered(ordinal)))).collect()
    };

    let mut written = enqueue_all(&outbox, TOPIC, &batch(0), 20).await;
    wait_until("the first events are out", LIMIT, || async { outbox.pending().await.unwrap() == 0 }).await;

    cluster.broker_down(1).expect("take the broker down");
    written.extend(enqueue_all(&outbox, TOPIC, &batch(10), 20).await);
    // The relay is now publishing into the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(outbox.pending().await.unwrap() > 0, "nothing can be delivered while the broker is down");
    if delivery_timeout.is_some() {
        wait_until("the relay saw deliveries fail", LIMIT, || async { stats.failed() > 0 }).await;
    }
    written.extend(enqueue_all(&outbox, TOPIC, &batch(20), 20).await);
    cluster.broker_up(1).expect("bring the broker back");

    wait_until("the relay drained the outbox by itself", LIMIT, || async { outbox.pending().await.unwrap() == 0 })
        .await;
    relay.stop().await.unwrap();

    let records = read_topic(&bus, "reader", TOPIC, written.len(), LIMIT).await;
    let delivered: HashSet<String> =
        records.iter().map(|record| record.header(tandem_events::headers::EVENT_ID).unwrap().to_owned()).collect();
    let expected: HashSet<String> = written.iter().map(|event| event.event_id.clone()).collect();
    assert_eq!(delivered, expected, "every event reached the broker");
    if delivery_timeout.is_none() {
        // Nothing timed out, so nothing was re-sent out of turn.
        assert_eq!(stats.failed(), 0);
        assert_eq!(records.len(), written.len(), "no duplicates");
        let mut by_patient: HashMap<String, Vec<i64>> = HashMap::new();
        let mut sorted = records.clone();
        sorted.sort_by_key(|record| (record.partition, record.offset));
        for record in &sorted {
            let event = tandem_events::decode(&record.value).unwrap();
            by_patient.entry(record.key.clone().unwrap()).or_default().push(ordinal(&event));
        }
        for ordinals in by_patient.values() {
            assert_eq!(ordinals, &(0..30).collect::<Vec<i64>>());
        }
    }
    producer.finish().await;
}

/// Records wait in librdkafka's queue for the broker (the default): the
/// relay's publish blocks, then completes in order when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_waits_out_a_broker_outage_in_order() {
    outage(None).await;
}

/// Records time out during the outage: the relay backs off, re-sends the
/// failed rows, and loses none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_retries_timed_out_records_after_a_broker_outage() {
    outage(Some(Duration::from_secs(1))).await;
}
