//! Shared pieces of the event spine's tests: a service store, a recording
//! handler, running relays and consumers in the background, waiting.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Any, Row};
use tandem_events::{
    Consumer, ConsumerOptions, DeadLetter, DeadLetterAlarm, EventBus, Handler, HandlerError, Outbox, Relay,
    RelayOptions,
};
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{CheckInSubmitted, EventEnvelope, MeasureMissed};
use tandem_proto::ids::{OrgId, PatientId};
use tandem_store::testing::TestDatabase;
use tandem_store::{Backend, Migrations, Store, StoreOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The test service's migrations: the `effects` table handlers write.
pub static MIGRATIONS: Migrations = tandem_store::migrations![in "tests/migrations": "0001_effects.sql"];

/// A service database with the outbox and inbox installed.
pub struct Service {
    pub store: Store,
    database: Option<TestDatabase>,
}

impl Service {
    /// A fresh SQLite service store.
    pub async fn sqlite() -> Self {
        Self::on(Backend::Sqlite).await
    }

    /// A fresh store on `backend`.
    pub async fn on(backend: Backend) -> Self {
        let database = TestDatabase::create(backend).await;
        let store = Store::open(StoreOptions::new(database.url.clone(), "svc"), &MIGRATIONS)
            .await
            .expect("open the service store");
        tandem_events::install(&store).await.expect("install outbox and inbox");
        Self { store, database: Some(database) }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.database.as_ref().expect("the database lives until finish").url
    }

    /// Closes the pool and drops the database.
    pub async fn finish(mut self) {
        self.store.close().await;
        if let Some(database) = self.database.take() {
            database.drop_database().await;
        }
    }
}

/// The test org.
pub fn org() -> OrgId {
    "northside-clinic".parse().unwrap()
}

/// A numbered, non-crisis event: the ordinal rides in `schedule_id`.
pub fn numbered(ordinal: usize) -> Payload {
    Payload::MeasureMissed(MeasureMissed {
        schedule_id: ordinal.to_string(),
        instrument: "phq9".into(),
        ..Default::default()
    })
}

/// A check-in whose crisis trigger fired.
pub fn crisis_check_in() -> Payload {
    Payload::CheckInSubmitted(CheckInSubmitted { crisis_triggers: vec!["phq9-item9".into()], ..Default::default() })
}

/// The ordinal of a `numbered` event; 0 for others.
pub fn ordinal(event: &EventEnvelope) -> i64 {
    match &event.payload {
        Some(Payload::MeasureMissed(missed)) => missed.schedule_id.parse().unwrap_or(0),
        _ => 0,
    }
}

/// Enqueues `events` in transactions of `per_tx`, committing and notifying.
pub async fn enqueue_all(
    outbox: &Outbox,
    topic: &str,
    events: &[(PatientId, Payload)],
    per_tx: usize,
) -> Vec<EventEnvelope> {
    let mut written = Vec::with_capacity(events.len());
    for chunk in events.chunks(per_tx.max(1)) {
        let mut tx = outbox.store().begin_write().await.unwrap();
        for (patient, payload) in chunk {
            let event = outbox.envelope(&org(), patient, payload.clone());
            outbox.enqueue(&mut tx, topic, &event).await.unwrap();
            written.push(event);
        }
        outbox.commit(tx).await.unwrap();
    }
    written
}

/// Writes an `effects` row per handled event; fails or hangs on request.
#[derive(Debug, Default)]
pub struct RecordingHandler {
    /// Tag written in `effects.consumer`.
    pub name: String,
    /// Event ids that always fail, transiently.
    pub poison: Mutex<HashSet<String>>,
    /// Event ids the handler refuses for good (a permanent error).
    pub refuse: Mutex<HashSet<String>>,
    /// Hang (never return) on the nth call, counting from 1.
    pub hang_on_call: Mutex<Option<usize>>,
    /// Fired when the handler starts hanging.
    pub hanging: tokio::sync::Notify,
    /// Every call: event id in call order.
    pub calls: Mutex<Vec<String>>,
    /// The `traceparent` seen inside each call.
    pub traceparents: Mutex<Vec<String>>,
}

impl RecordingHandler {
    /// A handler writing `name` as its tag.
    pub fn named(name: &str) -> Arc<Self> {
        Arc::new(Self { name: name.to_owned(), ..Default::default() })
    }

    /// How often `event_id` reached the handler.
    pub fn calls_for(&self, event_id: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|id| *id == event_id).count()
    }
}

#[async_trait]
impl Handler for RecordingHandler {
    async fn handle(&self, tx: &mut sqlx::Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(event.event_id.clone());
            calls.len()
        };
        if let Some(traceparent) = tandem_telemetry::current_traceparent() {
            self.traceparents.lock().unwrap().push(traceparent);
        }
        if *self.hang_on_call.lock().unwrap() == Some(call) {
            self.hanging.notify_one();
            std::future::pending::<()>().await;
        }
        if self.poison.lock().unwrap().contains(&event.event_id) {
            return Err(HandlerError::transient(format!("test poison: refusing event {}", event.event_id)));
        }
        if self.refuse.lock().unwrap().contains(&event.event_id) {
            return Err(HandlerError::permanent(format!(
                "test refusal: event {} can never be handled",
                event.event_id
            )));
        }
        let patient = tandem_events::patient_id(event)?.to_string();
        sqlx::query(
            "INSERT INTO effects (event_id, event_type, patient, ordinal, consumer) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(patient)
        .bind(ordinal(event))
        .bind(&self.name)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// One row of `effects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub event_id: String,
    pub event_type: String,
    pub patient: String,
    pub ordinal: i64,
    pub consumer: String,
}

/// Every effect in commit order.
pub async fn effects(store: &Store) -> Vec<Effect> {
    sqlx::query("SELECT event_id, event_type, patient, ordinal, consumer FROM effects ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|row| Effect {
            event_id: row.get(0),
            event_type: row.get(1),
            patient: row.get(2),
            ordinal: row.get(3),
            consumer: row.get(4),
        })
        .collect()
}

/// How many effects there are.
pub async fn effect_count(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(store.pool()).await.unwrap()
}

/// Polls `check` every 50 ms until it holds; panics after `limit`. The
/// limit only guards against a hang; nothing here measures time.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A background task that stops when asked.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<tandem_events::Result<()>>,
}

impl Running {
    fn spawn<F>(run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F) -> Self
    where
        F: Future<Output = tandem_events::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            let _ = stopped.await;
        });
        Self { stop: Some(stop), handle: tokio::spawn(run(shutdown)) }
    }

    /// Asks the task to stop and waits for its result.
    pub async fn stop(mut self) -> tandem_events::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("task panicked")
    }

    /// Kills the task where it stands, as a crash would.
    pub async fn abort(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Test relay options: small back-offs.
pub fn relay_options() -> RelayOptions {
    RelayOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        ..RelayOptions::default()
    }
}

/// Starts a relay for `outbox` on `bus`.
pub fn start_relay(outbox: &Outbox, bus: Arc<dyn EventBus>) -> Running {
    let relay = Relay::new(outbox, bus).with_options(relay_options());
    Running::spawn(move |shutdown| relay.run(shutdown))
}

/// Starts `relay` as it is configured.
pub fn start_relay_with(relay: Relay) -> Running {
    Running::spawn(move |shutdown| relay.run(shutdown))
}

/// Test consumer options: three quick attempts.
pub fn consumer_options() -> ConsumerOptions {
    ConsumerOptions {
        batch_size: 200,
        max_attempts: 3,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ConsumerOptions::default()
    }
}

/// Starts `consumer`.
pub fn start_consumer(consumer: Consumer) -> Running {
    Running::spawn(move |shutdown| consumer.run(shutdown))
}

/// Records health reports: what fails now, and every failure ever reported.
#[derive(Debug, Default)]
pub struct RecordingHealth {
    pub failing: Mutex<HashMap<String, String>>,
    pub ever: Mutex<Vec<(String, String)>>,
}

impl RecordingHealth {
    /// Whether some component fails now with a reason containing `text`.
    pub fn failing_with(&self, text: &str) -> bool {
        self.failing.lock().unwrap().values().any(|reason| reason.contains(text))
    }

    /// Whether nothing fails now.
    pub fn healthy(&self) -> bool {
        self.failing.lock().unwrap().is_empty()
    }
}

impl tandem_events::HealthReport for RecordingHealth {
    fn failing(&self, component: &str, reason: &str) {
        self.failing.lock().unwrap().insert(component.to_owned(), reason.to_owned());
        self.ever.lock().unwrap().push((component.to_owned(), reason.to_owned()));
    }

    fn recovered(&self, component: &str) {
        self.failing.lock().unwrap().remove(component);
    }
}

/// Records crisis alarms, and pages through the consumer's transaction:
/// one `effects` row per page (consumer "alarm", event id = the letter's
/// key). Can fail transiently a number of times, or refuse letters for good.
#[derive(Debug, Default)]
pub struct RecordingAlarm {
    pub letters: Mutex<Vec<DeadLetter>>,
    /// Transient failures still to report.
    pub failures: Mutex<u32>,
    /// Keys of letters refused for good.
    pub refuse: Mutex<HashSet<String>>,
}

#[async_trait]
impl DeadLetterAlarm for RecordingAlarm {
    async fn crisis_dead_lettered(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        letter: &DeadLetter,
    ) -> Result<(), HandlerError> {
        self.letters.lock().unwrap().push(letter.clone());
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(HandlerError::transient("test: the pager's store is away"));
            }
        }
        if self.refuse.lock().unwrap().contains(&letter.key()) {
            return Err(HandlerError::permanent("test: nothing to page with"));
        }
        sqlx::query(
            "INSERT INTO effects (event_id, event_type, patient, ordinal, consumer) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(letter.key())
        .bind(letter.event_type.clone().unwrap_or_default())
        .bind(letter.patient_key.clone().unwrap_or_default())
        .bind(0_i64)
        .bind("alarm")
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// The pages a [`RecordingAlarm`] wrote, by letter key, in commit order.
pub async fn pages(store: &Store) -> Vec<String> {
    effects(store).await.into_iter().filter(|effect| effect.consumer == "alarm").map(|effect| effect.event_id).collect()
}

/// Reads everything from `topic` with a fresh group until `count` records
/// arrived (panics after `limit`).
pub async fn read_topic(
    bus: &Arc<dyn EventBus>,
    group: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> Vec<tandem_events::Delivered> {
    let mut subscription = bus.subscribe(group, &[topic.to_owned()]).await.unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while records.len() < count {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let batch = tokio::time::timeout(remaining, subscription.next_batch(500))
            .await
            .unwrap_or_else(|_| panic!("timed out reading {topic}: {} of {count} records", records.len()))
            .unwrap();
        for record in &batch {
            subscription.store_offset(record).unwrap();
        }
        records.extend(batch);
    }
    subscription.close().await.unwrap();
    records
}

/// Per patient, the ordinals in the order they were handled.
pub fn ordinals_by_patient(effects: &[Effect]) -> HashMap<String, Vec<i64>> {
    let mut by_patient: HashMap<String, Vec<i64>> = HashMap::new();
    for effect in effects {
        by_patient.entry(effect.patient.clone()).or_default().push(effect.ordinal);
    }
    by_patient
}

/// A process-wide subscriber whose spans carry OpenTelemetry context (so
/// trace context can be checked), printing logs when `TANDEM_TEST_LOG`
/// holds a filter such as `info,rdkafka=debug`.
pub fn init_tracing() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let logs = std::env::var("TANDEM_TEST_LOG").ok().map(|filter| {
            tracing_subscriber::fmt::layer().with_test_writer().with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")))
            .with(logs);
        // One subscriber per process; a second call changes nothing.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
