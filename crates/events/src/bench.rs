//! Throughput of the event spine on a bus: the relay (outbox rows to
//! delivered records, events/s) and a consumer (records to committed
//! handler transactions, events/s). `tandem bench` and
//! `examples/bench.rs` call [`run`]; nothing here is asserted in tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::Any;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{EventEnvelope, MeasureMissed};
use tandem_proto::ids::{OrgId, PatientId};
use tandem_store::{Migrations, Store, StoreOptions};

use crate::bus::{BusKind, EventBus, TopicSpec};
use crate::consumer::{Consumer, ConsumerOptions, Handler, HandlerError};
use crate::error::{Error, Result};
use crate::outbox::{Outbox, Relay, RelayOptions, install};

static MIGRATIONS: Migrations = Migrations::none();

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Events to publish and consume.
    pub events: usize,
    /// Distinct patients (partition keys).
    pub patients: usize,
    /// Partitions of the benchmark topic.
    pub partitions: i32,
    /// Outbox rows per relay batch.
    pub relay_batch: usize,
    /// Records per consumer poll.
    pub consumer_batch: usize,
    /// Events per producing transaction.
    pub per_transaction: usize,
    /// Where the producer's and the consumer's SQLite stores go.
    pub work_dir: PathBuf,
}

impl BenchConfig {
    /// 20,000 events over 500 patients and 4 partitions, stores under `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            events: 20_000,
            patients: 500,
            partitions: 4,
            relay_batch: 500,
            consumer_batch: 500,
            per_transaction: 100,
            work_dir: work_dir.into(),
        }
    }
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The backend.
    pub backend: BusKind,
    /// Events per run.
    pub events: usize,
    /// Outbox writes: events enqueued per second, in transactions of `per_transaction`.
    pub enqueue_per_sec: f64,
    /// Relay: events delivered (with delivery reports) and marked sent per second.
    pub relay_per_sec: f64,
    /// Consumer: events handled (inbox row + handler effect, one transaction each) per second.
    pub consume_per_sec: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            self.backend, self.events, self.enqueue_per_sec, self.relay_per_sec, self.consume_per_sec
        )
    }
}

/// Writes one row per event, as a service's handler would.
struct BenchHandler;

#[async_trait]
impl Handler for BenchHandler {
    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        event: &EventEnvelope,
    ) -> std::result::Result<(), HandlerError> {
        sqlx::query("INSERT INTO bench_effects (event_id) VALUES ($1)")
            .bind(&event.event_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn sqlite_store(config: &BenchConfig, name: &str) -> Result<Store> {
    let url = format!("sqlite://{}/{name}.db", config.work_dir.display());
    let store = Store::open(StoreOptions::new(url, "bench"), &MIGRATIONS).await?;
    install(&store).await?;
    Ok(store)
}

fn per_sec(count: usize, elapsed: Duration) -> f64 {
    // Event counts here stay far below 2^52, so the conversion is exact.
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Runs the benchmark on `bus`: enqueue `events` into a fresh SQLite
/// outbox, drain it through a relay, then consume them with one consumer
/// into a fresh SQLite store.
pub async fn run(bus: Arc<dyn EventBus>, config: &BenchConfig) -> Result<BenchReport> {
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|error| Error::BadConfig(format!("benchmark directory {}: {error}", config.work_dir.display())))?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("tandem.bench.{run_id}");
    bus.ensure_topics(&[TopicSpec::new(&topic, config.partitions)]).await?;
    let producer = sqlite_store(config, &format!("producer-{run_id}")).await?;
    let consumer_store = sqlite_store(config, &format!("consumer-{run_id}")).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_effects (event_id TEXT NOT NULL)")
        .execute(consumer_store.pool())
        .await?;

    let outbox = Outbox::new(producer.clone(), "bench");
    let org: OrgId = "bench".parse().map_err(|error| Error::InvalidEnvelope(format!("org id: {error}")))?;
    let patients: Vec<PatientId> = (0..config.patients.max(1)).map(|_| PatientId::new()).collect();
    let started = Instant::now();
    let mut written = 0;
    while written < config.events {
        let mut tx = producer.begin_write().await?;
        let end = (written + config.per_transaction.max(1)).min(config.events);
        for ordinal in written..end {
            let payload = Payload::MeasureMissed(MeasureMissed {
                schedule_id: ordinal.to_string(),
                instrument: "phq9".into(),
                ..Default::default()
            });
            let event = outbox.envelope(&org, &patients[ordinal % patients.len()], payload);
            outbox.enqueue(&mut tx, &topic, &event).await?;
        }
        tx.commit().await?;
        written = end;
    }
    let enqueue_per_sec = per_sec(config.events, started.elapsed());

    let relay = Relay::new(&outbox, bus.clone())
        .with_options(RelayOptions { batch_size: config.relay_batch, ..RelayOptions::default() });
    let started = Instant::now();
    let mut sent = 0;
    while sent < config.events {
        sent += relay.drain_once().await?;
    }
    bus.flush(Duration::from_secs(30)).await?;
    let relay_per_sec = per_sec(sent, started.elapsed());

    let consumer = Consumer::new(
        bus.clone(),
        format!("bench-{run_id}"),
        &[topic.as_str()],
        consumer_store.clone(),
        Arc::new(BenchHandler),
    )
    .with_options(ConsumerOptions { batch_size: config.consumer_batch, ..ConsumerOptions::default() });
    let stats = consumer.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    // Time from the first handled event, so joining the group (seconds on
    // Kafka) does not count as handling time.
    let mut first: Option<(Instant, u64)> = None;
    let total = u64::try_from(config.events).unwrap_or(u64::MAX);
    loop {
        let handled = stats.handled();
        if first.is_none() && handled > 0 {
            first = Some((Instant::now(), handled));
        }
        if handled >= total || running.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = Instant::now();
    let _ = stop.send(());
    running.await.map_err(|_| Error::Closed)??;
    let consume_per_sec = match first {
        Some((at, already)) => per_sec(
            usize::try_from(stats.handled().saturating_sub(already)).unwrap_or_default(),
            finished.duration_since(at),
        ),
        None => 0.0,
    };
    producer.close().await;
    consumer_store.close().await;
    Ok(BenchReport { backend: bus.kind(), events: config.events, enqueue_per_sec, relay_per_sec, consume_per_sec })
}
