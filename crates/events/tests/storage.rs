//! Outbox and inbox storage, on SQLite and on PostgreSQL (every storage
//! test runs on both), against the embedded bus.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tandem_events::testing::TestBus;
use tandem_events::{Consumer, EventBus, Outbox, Record, Relay, RelayOptions, Subscription, TopicSpec, topics};
use tandem_proto::ids::PatientId;
use tandem_store::store_test;
use tandem_store::{Backend, Store};

use support::*;

const TOPIC: &str = topics::CAREPLANS;
const LIMIT: Duration = Duration::from_secs(60);

async fn bus() -> TestBus {
    let test = TestBus::embedded().await;
    test.bus.ensure_topics(&[TopicSpec::new(TOPIC, 3)]).await.unwrap();
    test
}

async fn outbox_rows(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(store.pool()).await.unwrap()
}

store_test!(install_is_idempotent, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    tandem_events::install(&store).await.unwrap();
    assert_eq!(outbox_rows(&store).await, 0);
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox").fetch_one(store.pool()).await.unwrap();
    assert_eq!(inbox, 0);
});

store_test!(an_event_commits_or_rolls_back_with_the_state_change, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let outbox = Outbox::new(store.clone(), "careplans");
    let patient = PatientId::new();
    let state_change = "INSERT INTO effects (event_id, event_type, patient, ordinal, consumer) VALUES ('state', 'state', $1, 0, 'service')";

    let mut tx = store.begin_write().await.unwrap();
    sqlx::query(state_change).bind(patient.to_string()).execute(&mut *tx).await.unwrap();
    let event = outbox.envelope(&org(), &patient, numbered(1));
    outbox.enqueue(&mut tx, TOPIC, &event).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(outbox_rows(&store).await, 0, "the event rolled back");
    assert_eq!(effect_count(&store).await, 0, "the state rolled back");

    let mut tx = store.begin_write().await.unwrap();
    sqlx::query(state_change).bind(patient.to_string()).execute(&mut *tx).await.unwrap();
    let id = outbox.enqueue(&mut tx, TOPIC, &event).await.unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(id.to_string(), event.event_id);
    assert_eq!(outbox.pending().await.unwrap(), 1);
    assert_eq!(effect_count(&store).await, 1);

    // An envelope without a patient has no partition key: refused.
    let mut keyless = event.clone();
    keyless.patient_id = None;
    let mut tx = store.begin_write().await.unwrap();
    let error = outbox.enqueue(&mut tx, TOPIC, &keyless).await.unwrap_err();
    assert!(error.to_string().contains("patient_id"), "{error}");
});

store_test!(the_relay_publishes_in_order_and_marks_rows_sent, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    let patients: Vec<PatientId> = (0..3).map(|_| PatientId::new()).collect();
    let events: Vec<_> = (0..20).flat_map(|ordinal| patients.iter().map(move |p| (*p, numbered(ordinal)))).collect();
    enqueue_all(&outbox, TOPIC, &events, 6).await;
    assert_eq!(outbox.pending().await.unwrap(), 60);

    let relay = Relay::new(&outbox, test.bus.clone()).with_options(RelayOptions { batch_size: 7, ..relay_options() });
    assert_eq!(relay.drain_once().await.unwrap(), 60);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_eq!(relay.stats().published(), 60);
    assert_eq!(relay.drain_once().await.unwrap(), 0, "nothing is sent twice");
    let unmarked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(store.pool()).await.unwrap();
    assert_eq!(unmarked, 0);

    let records = read_topic(&test.bus, "reader", TOPIC, 60, LIMIT).await;
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for record in records {
        let event = tandem_events::decode(&record.value).unwrap();
        seen.entry(record.key.unwrap()).or_default().push(ordinal(&event));
    }
    let expected: Vec<i64> = (0..20).collect();
    assert_eq!(seen.len(), 3);
    for ordinals in seen.values() {
        assert_eq!(ordinals, &expected);
    }
});

/// A bus that refuses every record.
#[derive(Debug)]
struct Unreachable {
    inner: Arc<dyn EventBus>,
}

#[async_trait]
impl EventBus for Unreachable {
    fn kind(&self) -> tandem_events::BusKind {
        self.inner.kind()
    }

    fn default_partitions(&self) -> i32 {
        1
    }

    async fn ensure_topics(&self, _topics: &[TopicSpec]) -> tandem_events::Result<()> {
        Ok(())
    }

    async fn publish(&self, records: &[Record]) -> Vec<tandem_events::Result<()>> {
        records.iter().map(|_| Err(tandem_events::Error::NotDelivered("broker unreachable".into()))).collect()
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> tandem_events::Result<Box<dyn Subscription>> {
        self.inner.subscribe(group, topics).await
    }

    async fn flush(&self, _timeout: Duration) -> tandem_events::Result<()> {
        Ok(())
    }
}

store_test!(rows_stay_unsent_without_a_delivery_report, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    let patient = PatientId::new();
    enqueue_all(&outbox, TOPIC, &[(patient, numbered(1)), (patient, numbered(2))], 2).await;
    let relay = Relay::new(&outbox, Arc::new(Unreachable { inner: test.bus.clone() })).with_options(relay_options());
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    wait_until("the relay retried", LIMIT, || async { stats.failed() >= 4 }).await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(stats.published(), 0);
    assert_eq!(outbox.pending().await.unwrap(), 2, "nothing marked sent");
});

store_test!(committing_wakes_the_relay_without_polling, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    // A safety poll this slow never fires during the test: only the
    // wake-up on commit can get the event out.
    let relay = Relay::new(&outbox, test.bus.clone())
        .with_options(RelayOptions { safety_poll: Duration::from_secs(3600), ..relay_options() });
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    for round in 1..=3 {
        enqueue_all(&outbox, TOPIC, &[(PatientId::new(), numbered(round))], 1).await;
        wait_until("the relay published", LIMIT, || async { stats.published() == u64::try_from(round).unwrap() }).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
});

/// Handles only events whose ordinal is even.
struct EvenOnly(Arc<RecordingHandler>);

#[async_trait]
impl tandem_events::Handler for EvenOnly {
    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        event: &tandem_proto::events::v1::EventEnvelope,
    ) -> Result<(), tandem_events::HandlerError> {
        self.0.handle(tx, event).await
    }

    fn handles(&self, event: &tandem_proto::events::v1::EventEnvelope) -> bool {
        use tandem_proto::events::v1::event_envelope::Payload;
        matches!(&event.payload, Some(Payload::MeasureMissed(missed)) if missed.schedule_id.parse::<usize>().is_ok_and(|n| n % 2 == 0))
    }
}

store_test!(events_the_handler_does_not_handle_are_passed_over, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    let patient = PatientId::new();
    let events: Vec<_> = (1..=3).map(|n| outbox.envelope(&org(), &patient, numbered(n))).collect();
    let records: Vec<Record> = events.iter().map(|event| Record::from_envelope(TOPIC, event).unwrap()).collect();
    assert!(test.bus.publish(&records).await.iter().all(Result::is_ok));

    let recording = RecordingHandler::named("c");
    let consumer =
        Consumer::new(test.bus.clone(), "triage", &[TOPIC], store.clone(), Arc::new(EvenOnly(recording.clone())))
            .with_options(consumer_options());
    let stats = consumer.stats();
    let running = start_consumer(consumer);
    wait_until("all three were seen", LIMIT, || async { stats.handled() + stats.passed_over() == 3 }).await;
    running.stop().await.unwrap();
    assert_eq!((stats.handled(), stats.passed_over()), (1, 2));
    assert_eq!(recording.calls.lock().unwrap().clone(), vec![events[1].event_id.clone()]);
    let inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox").fetch_all(store.pool()).await.unwrap();
    assert_eq!(inbox, vec![events[1].event_id.clone()], "only the handled event has an inbox row");
    assert_eq!(effect_count(&store).await, 1);
});

store_test!(the_inbox_makes_a_redelivery_a_no_op, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    let event = outbox.envelope(&org(), &PatientId::new(), numbered(7));
    let record = Record::from_envelope(TOPIC, &event).unwrap();
    let results = test.bus.publish(&[record.clone(), record]).await;
    assert!(results.iter().all(Result::is_ok));

    let consumer = Consumer::new(test.bus.clone(), "triage", &[TOPIC], store.clone(), RecordingHandler::named("c"))
        .with_options(consumer_options());
    let stats = consumer.stats();
    let running = start_consumer(consumer);
    wait_until("both copies arrived", LIMIT, || async { stats.handled() + stats.duplicates() == 2 }).await;
    running.stop().await.unwrap();
    assert_eq!(stats.handled(), 1);
    assert_eq!(stats.duplicates(), 1);
    assert_eq!(effect_count(&store).await, 1);
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM inbox WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(outcome, "handled");
});

/// Counts what went through it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn EventBus>,
    published: AtomicUsize,
}

#[async_trait]
impl EventBus for Counting {
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
        self.published.fetch_add(records.len(), Ordering::Relaxed);
        self.inner.publish(records).await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> tandem_events::Result<Box<dyn Subscription>> {
        self.inner.subscribe(group, topics).await
    }

    async fn flush(&self, timeout: Duration) -> tandem_events::Result<()> {
        self.inner.flush(timeout).await
    }
}

/// On PostgreSQL replicas share one outbox: one relay is active, the other
/// stands by, and a commit in one replica wakes the relay in the other
/// through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_one_active_relay_woken_by_notify() {
    let service = Service::on(Backend::Postgres).await;
    let test = bus().await;
    let replicas: Vec<(Outbox, Arc<Counting>)> = (0..2)
        .map(|_| {
            (
                Outbox::new(service.store.clone(), "careplans"),
                Arc::new(Counting { inner: test.bus.clone(), published: AtomicUsize::new(0) }),
            )
        })
        .collect();
    let running: Vec<Running> = replicas
        .iter()
        .map(|(outbox, counting)| {
            let relay = Relay::new(outbox, counting.clone()).with_options(RelayOptions {
                // Only NOTIFY can wake a relay within the test.
                safety_poll: Duration::from_secs(3600),
                standby_poll: Duration::from_millis(200),
                ..relay_options()
            });
            start_relay_with(relay)
        })
        .collect();
    // Let both relays start; one takes the lock, the other stands by.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let patient = PatientId::new();
    let mut total = 0;
    // A third replica writes: its local notify reaches no relay, so only
    // NOTIFY can wake the active one.
    let writer = Outbox::new(service.store.clone(), "careplans");
    for round in 0..3 {
        let events: Vec<_> = (0..10).map(|i| (patient, numbered(round * 10 + i))).collect();
        enqueue_all(&writer, TOPIC, &events, 5).await;
        total += 10;
        let outbox = writer.clone();
        wait_until("the active relay published the round", LIMIT, || {
            let outbox = outbox.clone();
            async move { outbox.pending().await.unwrap() == 0 }
        })
        .await;
    }
    for relay in running {
        relay.stop().await.unwrap();
    }
    let counts: Vec<usize> = replicas.iter().map(|(_, counting)| counting.published.load(Ordering::Relaxed)).collect();
    assert!(counts.contains(&0) && counts.contains(&total), "exactly one relay published, all of it once: {counts:?}");
    let records = read_topic(&test.bus, "reader", TOPIC, total, LIMIT).await;
    let ordinals: Vec<i64> =
        records.iter().map(|record| ordinal(&tandem_events::decode(&record.value).unwrap())).collect();
    assert_eq!(ordinals, (0..30).collect::<Vec<i64>>());
    service.finish().await;
}

/// A bus whose publish never completes: a broker that is away.
#[derive(Debug)]
struct Away {
    inner: Arc<dyn EventBus>,
    attempts: AtomicUsize,
}

#[async_trait]
impl EventBus for Away {
    fn kind(&self) -> tandem_events::BusKind {
        self.inner.kind()
    }

    fn default_partitions(&self) -> i32 {
        1
    }

    async fn ensure_topics(&self, _topics: &[TopicSpec]) -> tandem_events::Result<()> {
        Ok(())
    }

    async fn publish(&self, _records: &[Record]) -> Vec<tandem_events::Result<()>> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        std::future::pending().await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> tandem_events::Result<Box<dyn Subscription>> {
        self.inner.subscribe(group, topics).await
    }

    async fn flush(&self, _timeout: Duration) -> tandem_events::Result<()> {
        Ok(())
    }
}

store_test!(a_relay_waiting_on_an_absent_broker_still_shuts_down, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let test = bus().await;
    let outbox = Outbox::new(store.clone(), "careplans");
    enqueue_all(&outbox, TOPIC, &[(PatientId::new(), numbered(1))], 1).await;
    let away = Arc::new(Away { inner: test.bus.clone(), attempts: AtomicUsize::new(0) });
    let relay = start_relay(&outbox, away.clone());
    wait_until("the relay is publishing", LIMIT, || async { away.attempts.load(Ordering::Relaxed) > 0 }).await;
    tokio::time::timeout(LIMIT, relay.stop()).await.expect("the relay stops while a publish hangs").unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 1, "the row waits for the next relay");
    // The abandoned batch released its rows: the next relay sends them.
    let relay = Relay::new(&outbox, test.bus.clone()).with_options(relay_options());
    assert_eq!(relay.drain_once().await.unwrap(), 1);
});

/// A real outage of the consuming service's database, ended by `end`.
enum Outage {
    /// SQLite: another connection holds the write lock, so every write
    /// transaction fails with "database is locked" after the busy timeout.
    Locked(sqlx::SqliteConnection),
    /// PostgreSQL: the database refuses connections and every open one is
    /// terminated ("database ... is not currently accepting connections").
    Refusing { admin: sqlx::PgConnection, database: String },
}

impl Outage {
    async fn begin(service: &Service) -> Self {
        use sqlx::Connection;
        match service.store.backend() {
            Backend::Sqlite => {
                let mut lock = sqlx::SqliteConnection::connect(service.url()).await.unwrap();
                sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut lock).await.unwrap();
                Self::Locked(lock)
            }
            Backend::Postgres => {
                let admin_url = tandem_store::testing::postgres_admin_url();
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
                let database = service.url().rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                    .bind(&database)
                    .execute(&mut admin)
                    .await
                    .unwrap();
                Self::Refusing { admin, database }
            }
        }
    }

    async fn end(self) {
        match self {
            Self::Locked(mut lock) => {
                sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
            }
            Self::Refusing { mut admin, database } => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
    }
}

mod a_database_outage_during_a_crisis_event_ends_in_its_handling_not_a_dead_letter {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        body(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        body(Backend::Postgres).await;
    }

    async fn body(backend: Backend) {
        let test = TestBus::embedded().await;
        test.bus.ensure_topics(&[TopicSpec::new(topics::CHECKINS, 2)]).await.unwrap();
        let service = Service::on(backend).await;
        let outbox = Outbox::new(service.store.clone(), "checkins");
        let patient = PatientId::new();
        let crisis = outbox.envelope(&org(), &patient, crisis_check_in());
        let after = outbox.envelope(&org(), &patient, numbered(1));
        let handler = RecordingHandler::named("triage");
        let health = Arc::new(RecordingHealth::default());
        // One attempt: any other event failing while the store answers
        // would be dead-lettered at once.
        let options = tandem_events::ConsumerOptions { max_attempts: 1, ..consumer_options() };
        let consumer =
            Consumer::new(test.bus.clone(), "triage", &[topics::CHECKINS], service.store.clone(), handler.clone())
                .with_options(options)
                .with_health(health.clone());
        let stats = consumer.stats();

        let outage = Outage::begin(&service).await;
        let consumer = start_consumer(consumer);
        let records = [
            Record::from_envelope(topics::CHECKINS, &crisis).unwrap(),
            Record::from_envelope(topics::CHECKINS, &after).unwrap(),
        ];
        assert!(test.bus.publish(&records).await.iter().all(Result::is_ok));
        wait_until("the crisis event waits with an alarm", LIMIT, || async {
            stats.crisis_retrying() == 1 && health.failing_with(&crisis.event_id)
        })
        .await;
        assert!(stats.failed_attempts() >= 1);
        assert_eq!(stats.dead_lettered(), 0);
        assert_eq!(handler.calls_for(&after.event_id), 0, "the later event waits behind it");

        outage.end().await;
        wait_until("both events are handled", LIMIT, || async { stats.handled() == 2 }).await;
        wait_until("the alarm clears", LIMIT, || async { health.healthy() }).await;
        consumer.stop().await.unwrap();
        assert_eq!(stats.dead_lettered(), 0, "nothing was dead-lettered");
        assert_eq!(stats.crisis_retrying(), 0);
        let handled: Vec<String> = effects(&service.store).await.into_iter().map(|effect| effect.event_id).collect();
        assert_eq!(handled, [crisis.event_id.clone(), after.event_id.clone()]);
        let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM inbox ORDER BY handled_at")
            .fetch_all(service.store.pool())
            .await
            .unwrap();
        assert_eq!(outcomes, ["handled", "handled"]);
        service.finish().await;
    }
}

store_test!(retention_forgets_only_old_inbox_rows, &MIGRATIONS, "svc", |store| async move {
    tandem_events::install(&store).await.unwrap();
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    for (id, age) in [("old", day * 40), ("recent", day * 2)] {
        sqlx::query(
            "INSERT INTO inbox (consumer_group, event_id, topic, outcome, handled_at) VALUES ('g', $1, 't', 'handled', $2)",
        )
        .bind(id)
        .bind(tandem_store::unix_micros(now - age))
        .execute(store.pool())
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        tandem_events::EmbeddedBus::open(tandem_events::EmbeddedConfig::new(dir.path().join("log.db"))).await.unwrap();
    let retention = tandem_events::Retention::new(
        vec![store.clone()],
        Arc::new(embedded),
        tandem_events::RetentionOptions::default(),
    );
    let pruned = retention.prune_once(now).await.unwrap();
    assert_eq!(pruned.inbox_rows, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox").fetch_all(store.pool()).await.unwrap();
    assert_eq!(left, ["recent"]);
});

/// The embedded log drops what every group consumed, keeps the rest and each
/// partition's last record (the next offset is numbered after it).
#[tokio::test]
async fn the_embedded_log_prunes_only_what_every_group_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let bus =
        tandem_events::EmbeddedBus::open(tandem_events::EmbeddedConfig::new(dir.path().join("log.db"))).await.unwrap();
    bus.ensure_topics(&[TopicSpec::new("t", 1)]).await.unwrap();
    let record = |n: u8| Record { topic: "t".into(), key: "k".into(), value: vec![n], headers: vec![] };
    let records: Vec<Record> = (0..5).map(record).collect();
    assert!(bus.publish(&records).await.iter().all(Result::is_ok));
    // Group "all" consumes everything, group "some" the first two.
    for (group, take) in [("all", 5), ("some", 2)] {
        let mut member = bus.subscribe(group, &["t".to_owned()]).await.unwrap();
        let mut consumed = 0;
        while consumed < take {
            for delivered in member.next_batch(take - consumed).await.unwrap() {
                member.store_offset(&delivered).unwrap();
                consumed += 1;
            }
        }
        member.close().await.unwrap();
    }
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    // Nothing is old enough yet.
    assert_eq!(bus.prune_consumed(std::time::SystemTime::UNIX_EPOCH).await.unwrap(), 0);
    assert_eq!(bus.prune_consumed(later).await.unwrap(), 2, "offsets 0 and 1, behind both groups");
    assert_eq!(bus.len().await.unwrap(), 3);
    // Once "some" catches up, everything but the last record goes.
    let mut member = bus.subscribe("some", &["t".to_owned()]).await.unwrap();
    let mut consumed = 0;
    while consumed < 3 {
        for delivered in member.next_batch(3 - consumed).await.unwrap() {
            member.store_offset(&delivered).unwrap();
            consumed += 1;
        }
    }
    member.close().await.unwrap();
    assert_eq!(bus.prune_consumed(later).await.unwrap(), 2);
    assert_eq!(bus.len().await.unwrap(), 1);
    // The next record continues the numbering.
    assert!(bus.publish(&[record(5)]).await.iter().all(Result::is_ok));
    let mut member = bus.subscribe("all", &["t".to_owned()]).await.unwrap();
    let next = member.next_batch(1).await.unwrap();
    assert_eq!(next[0].offset, 5);
    member.close().await.unwrap();
}
