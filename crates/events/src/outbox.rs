//! The transactional outbox and its relay.
//!
//! A service writes its state change and the event row in one database
//! transaction ([`Outbox::enqueue`]), so both commit or neither does. The
//! [`Relay`] reads unsent rows in sequence order, publishes them through the
//! [`EventBus`], and marks a row sent only after its delivery report. A
//! relay that dies between publishing and marking publishes the row again
//! on restart; consumers' inboxes absorb the duplicate.
//!
//! Waking: [`Outbox::notify`] wakes the relay in this process at once. On
//! PostgreSQL, enqueueing also sends `pg_notify` inside the transaction, so
//! a relay in another replica wakes when it commits. A slow safety poll
//! (2 s) covers anything missed; the relay never busy-polls.
//!
//! Order: rows are published in `seq` order. On PostgreSQL one relay per
//! schema is active at a time (a session advisory lock; the others stand
//! by), and it claims batches with `FOR UPDATE SKIP LOCKED`. On SQLite one
//! process owns the file, so run one relay per store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::ids::EventId;
use tandem_store::{Backend, Store};
use tokio::sync::Notify;

use crate::bus::{EventBus, Record};
use crate::consumer::Stop;
use crate::envelope;
use crate::error::Result;
use crate::partitioner::murmur2;

const SQLITE_SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        event_type TEXT NOT NULL,
        headers TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at BIGINT NOT NULL,
        sent_at BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL",
    "CREATE TABLE IF NOT EXISTS inbox (
        consumer_group TEXT NOT NULL,
        event_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        outcome TEXT NOT NULL,
        handled_at BIGINT NOT NULL,
        PRIMARY KEY (consumer_group, event_id)
    )",
    "CREATE INDEX IF NOT EXISTS outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL",
];

const POSTGRES_SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS outbox (
        seq BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        event_type TEXT NOT NULL,
        headers TEXT NOT NULL,
        payload BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        sent_at BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL",
    "CREATE TABLE IF NOT EXISTS inbox (
        consumer_group TEXT NOT NULL,
        event_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        outcome TEXT NOT NULL,
        handled_at BIGINT NOT NULL,
        PRIMARY KEY (consumer_group, event_id)
    )",
    "CREATE INDEX IF NOT EXISTS outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL",
];

/// Creates the `outbox` and `inbox` tables in a service's store if they are
/// missing. Call it after `Store::open`; it is idempotent.
pub async fn install(store: &Store) -> Result<()> {
    let statements = match store.backend() {
        Backend::Sqlite => SQLITE_SCHEMA,
        Backend::Postgres => POSTGRES_SCHEMA,
    };
    let mut tx = store.begin_write().await?;
    if store.backend() == Backend::Postgres {
        // Two replicas starting at once would race on CREATE ... IF NOT
        // EXISTS; a transaction-scoped lock makes the second wait.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock_key(store, "install")).execute(&mut *tx).await?;
    }
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A stable advisory-lock key for `purpose` in this store's schema.
fn lock_key(store: &Store, purpose: &str) -> i64 {
    i64::from(murmur2(format!("tandem.events.{purpose}.{}", store.schema()).as_bytes()))
}

/// The `pg_notify` channel of a schema's outbox.
fn channel(store: &Store) -> String {
    format!("tandem_outbox_{}", store.schema())
}

/// A service's outbox: enqueue events in the service's own transactions.
/// Cheap to clone; clones share the relay wake-up.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
    producer: String,
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox of `store`, for events produced by `producer` (e.g. "checkins").
    pub fn new(store: Store, producer: impl Into<String>) -> Self {
        Self { store, producer: producer.into(), wake: Arc::new(Notify::new()) }
    }

    /// The store the outbox lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The producing service's name.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// A new envelope from this producer (see [`envelope::new_envelope`]).
    pub fn envelope(
        &self,
        org: &tandem_proto::ids::OrgId,
        patient: &tandem_proto::ids::PatientId,
        payload: tandem_proto::events::v1::event_envelope::Payload,
    ) -> EventEnvelope {
        envelope::new_envelope(&self.producer, org, patient, payload)
    }

    /// Writes `event` for `topic` inside the caller's transaction; it is
    /// published only if that transaction commits. Call [`Outbox::notify`]
    /// (or use [`Outbox::commit`]) after committing.
    pub async fn enqueue(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        topic: &str,
        event: &EventEnvelope,
    ) -> Result<EventId> {
        let record = Record::from_envelope(topic, event)?;
        let event_id = envelope::event_id(event)?;
        let headers = serde_json::to_string(&record.headers).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, partition_key, event_type, headers, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event_id.to_string())
        .bind(topic)
        .bind(&record.key)
        .bind(&event.event_type)
        .bind(headers)
        .bind(record.value)
        .bind(tandem_store::unix_micros(SystemTime::now()))
        .execute(&mut **tx)
        .await?;
        if self.store.backend() == Backend::Postgres {
            // Delivered to listeners only when the transaction commits.
            sqlx::query("SELECT pg_notify($1, '')").bind(channel(&self.store)).execute(&mut **tx).await?;
        }
        Ok(event_id)
    }

    /// Commits the caller's transaction and wakes the relay.
    pub async fn commit(&self, tx: sqlx::Transaction<'_, Any>) -> Result<()> {
        tx.commit().await?;
        self.notify();
        Ok(())
    }

    /// Wakes this process's relay: call after committing a transaction
    /// that enqueued events.
    pub fn notify(&self) {
        // notify_one keeps a permit when the relay is busy, so a wake-up
        // between its drain and its next wait is not lost.
        self.wake.notify_one();
    }

    /// Rows not yet marked sent.
    pub async fn pending(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(self.store.pool())
            .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    /// Rows of the outbox in `store` not yet published, and when the oldest
    /// of them was written (unix micros), for the outbox lag metrics.
    pub async fn unsent(store: &Store) -> Result<(u64, Option<i64>)> {
        let row = sqlx::query("SELECT COUNT(*) AS unsent, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL")
            .fetch_one(store.pool())
            .await?;
        let unsent: i64 = sqlx::Row::try_get(&row, "unsent")?;
        Ok((u64::try_from(unsent).unwrap_or_default(), sqlx::Row::try_get(&row, "oldest")?))
    }
}

/// How often a relay deletes rows sent longer ago than `retain_sent`.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// How a relay batches, waits and backs off.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows published per batch.
    pub batch_size: usize,
    /// How often the relay looks for rows without a wake-up.
    pub safety_poll: Duration,
    /// First back-off after a failed publish.
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// How long sent rows are kept before being deleted.
    pub retain_sent: Duration,
    /// How often a standby relay tries to become the active one (PostgreSQL).
    pub standby_poll: Duration,
    /// How long shutdown waits for the bus to flush.
    pub flush_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            safety_poll: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            retain_sent: Duration::from_secs(3600),
            standby_poll: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a relay, readable while it runs.
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    failed: AtomicU64,
}

impl RelayStats {
    /// Rows delivered and marked sent.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Records whose publish failed and will be retried.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Publishes an outbox's rows to the bus. See the module docs.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    bus: Arc<dyn EventBus>,
    options: RelayOptions,
    stats: Arc<RelayStats>,
}

struct Pending {
    seq: i64,
    record: Record,
}

/// Outcome of one drain step.
enum Step {
    /// Nothing was waiting.
    Idle,
    /// A batch went out in full.
    Sent(usize),
    /// Some records failed; back off before retrying.
    Failed,
}

impl Relay {
    /// A relay for `outbox`, publishing to `bus`.
    pub fn new(outbox: &Outbox, bus: Arc<dyn EventBus>) -> Self {
        Self { outbox: outbox.clone(), bus, options: RelayOptions::default(), stats: Arc::default() }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }

    /// The relay's counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` resolves, then flushes the bus.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let mut stop = Stop::new(shutdown);
        let store = self.outbox.store.clone();
        let mut listener = None;
        if store.backend() == Backend::Postgres {
            listener = self.listen().await;
        }
        let mut lock: Option<sqlx::AnyConnection> = None;
        let mut last_purge: Option<tokio::time::Instant> = None;
        loop {
            if let Some(connection) = lock.as_mut()
                && sqlx::query("SELECT 1").execute(connection).await.is_err()
            {
                // The session that held the advisory lock is gone, and the
                // lock with it: another relay may be active now.
                tracing::warn!("outbox relay lost its lock connection; taking the lock again");
                lock = None;
            }
            if store.backend() == Backend::Postgres && lock.is_none() {
                lock = self.try_lock().await;
                if lock.is_none() {
                    // Standby: another relay is active for this schema.
                    tokio::select! {
                        () = stop.wait() => break,
                        () = tokio::time::sleep(self.options.standby_poll) => continue,
                    }
                }
            }
            if let Err(error) = self.drain(&mut stop).await {
                tracing::warn!(%error, "outbox relay failed; retrying after the safety poll");
                // A lost connection may have taken the advisory lock with it.
                lock = None;
            }
            if stop.fired() {
                break;
            }
            // Purging takes the write lock on SQLite: once a minute is plenty.
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                last_purge = Some(tokio::time::Instant::now());
                if let Err(error) = self.purge_sent().await {
                    tracing::debug!(%error, "purging sent outbox rows failed; retrying later");
                }
            }
            let notified = self.outbox.wake.notified();
            tokio::select! {
                () = stop.wait() => break,
                () = notified => {}
                () = wait_listener(&mut listener) => {}
                () = tokio::time::sleep(self.options.safety_poll) => {}
            }
        }
        drop(lock);
        self.bus.flush(self.options.flush_timeout).await
    }

    /// Publishes everything pending now, backing off on failures, and
    /// returns how many rows were sent. Used by `run`, tests and benchmarks.
    pub async fn drain_once(&self) -> Result<usize> {
        self.drain(&mut Stop::new(futures::future::pending())).await
    }

    async fn drain(&self, stop: &mut Stop) -> Result<usize> {
        let mut sent = 0;
        let mut backoff = self.backoff();
        loop {
            // A publish can wait on an absent broker for as long as it is
            // away; shutdown must not. Abandoning it leaves its rows unsent,
            // to be published again (the inbox absorbs any copy that got out).
            let step = tokio::select! {
                () = stop.wait() => return Ok(sent),
                step = self.step() => step?,
            };
            match step {
                Step::Idle => return Ok(sent),
                Step::Sent(count) => {
                    sent += count;
                    backoff = self.backoff();
                    if stop.fired() {
                        return Ok(sent);
                    }
                }
                Step::Failed => {
                    let delay = backoff.next().unwrap_or(self.options.max_backoff);
                    tokio::select! {
                        () = stop.wait() => return Ok(sent),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn step(&self) -> Result<Step> {
        match self.outbox.store.backend() {
            Backend::Postgres => self.step_postgres().await,
            Backend::Sqlite => self.step_sqlite().await,
        }
    }

    async fn step_sqlite(&self) -> Result<Step> {
        let rows = sqlx::query(
            "SELECT seq, topic, partition_key, headers, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch_limit())
        .fetch_all(self.outbox.store.pool())
        .await?;
        let batch = read_rows(&rows)?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        let (delivered, failed) = self.publish(&batch).await;
        if !delivered.is_empty() {
            let mut tx = self.outbox.store.begin_write().await?;
            mark_sent(&mut tx, &delivered).await?;
            tx.commit().await?;
        }
        Ok(self.account(delivered.len(), failed))
    }

    async fn step_postgres(&self) -> Result<Step> {
        let mut tx = self.outbox.store.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT seq, topic, partition_key, headers, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_limit())
        .fetch_all(&mut *tx)
        .await?;
        let batch = read_rows(&rows)?;
        if batch.is_empty() {
            tx.rollback().await?;
            return Ok(Step::Idle);
        }
        let (delivered, failed) = self.publish(&batch).await;
        mark_sent(&mut tx, &delivered).await?;
        tx.commit().await?;
        Ok(self.account(delivered.len(), failed))
    }

    fn batch_limit(&self) -> i64 {
        i64::try_from(self.options.batch_size.max(1)).unwrap_or(i64::MAX)
    }

    fn account(&self, delivered: usize, failed: usize) -> Step {
        self.stats.published.fetch_add(delivered as u64, Ordering::Relaxed);
        if failed > 0 {
            self.stats.failed.fetch_add(failed as u64, Ordering::Relaxed);
            return Step::Failed;
        }
        Step::Sent(delivered)
    }

    /// Publishes a batch; returns the delivered rows' seqs and the failure count.
    async fn publish(&self, batch: &[Pending]) -> (Vec<i64>, usize) {
        let records: Vec<Record> = batch.iter().map(|row| row.record.clone()).collect();
        let results = self.bus.publish(&records).await;
        let mut delivered = Vec::with_capacity(batch.len());
        let mut failed = 0;
        for (row, result) in batch.iter().zip(results) {
            match result {
                Ok(()) => delivered.push(row.seq),
                Err(error) => {
                    if failed == 0 {
                        tracing::warn!(%error, topic = %row.record.topic, "publishing outbox rows failed; backing off");
                    }
                    failed += 1;
                }
            }
        }
        (delivered, failed)
    }

    async fn purge_sent(&self) -> Result<()> {
        let retain = i64::try_from(self.options.retain_sent.as_micros()).unwrap_or(i64::MAX);
        let cutoff = tandem_store::unix_micros(SystemTime::now()).saturating_sub(retain);
        let mut tx = self.outbox.store.begin_write().await?;
        sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the schema's relay lock on a connection of its own; `None`
    /// when another relay holds it.
    async fn try_lock(&self) -> Option<sqlx::AnyConnection> {
        let store = &self.outbox.store;
        let connection: PoolConnection<Any> = match store.pool().acquire().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "outbox relay cannot reach the database");
                return None;
            }
        };
        // Detached, the connection closes when dropped, which releases the
        // session lock even if the relay dies.
        let mut connection = connection.detach();
        let locked: std::result::Result<bool, _> = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(store, "relay"))
            .fetch_one(&mut connection)
            .await
            .and_then(|row| row.try_get::<bool, _>(0));
        match locked {
            Ok(true) => Some(connection),
            Ok(false) => {
                tracing::debug!("another outbox relay is active for this schema; standing by");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not take its lock");
                None
            }
        }
    }

    async fn listen(&self) -> Option<sqlx::postgres::PgListener> {
        let url = self.outbox.store.pool().connect_options().database_url.clone();
        let result = async {
            let mut listener = sqlx::postgres::PgListener::connect(url.as_str()).await?;
            listener.listen(&channel(&self.outbox.store)).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match result {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox relay cannot LISTEN; relying on its safety poll");
                None
            }
        }
    }
}

async fn wait_listener(listener: &mut Option<sqlx::postgres::PgListener>) {
    let Some(active) = listener.as_mut() else {
        return futures::future::pending().await;
    };
    if let Err(error) = active.recv().await {
        // PgListener reconnects by itself on the next recv; don't spin on a
        // dead server meanwhile.
        tracing::debug!(%error, "outbox listener lost its connection");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn read_rows(rows: &[sqlx::any::AnyRow]) -> Result<Vec<Pending>> {
    rows.iter()
        .map(|row| {
            let headers: String = row.try_get(3)?;
            Ok(Pending {
                seq: row.try_get(0)?,
                record: Record {
                    topic: row.try_get(1)?,
                    key: row.try_get(2)?,
                    value: row.try_get(4)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                },
            })
        })
        .collect()
}

async fn mark_sent(tx: &mut sqlx::Transaction<'_, Any>, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let now = tandem_store::unix_micros(SystemTime::now());
    for chunk in seqs.chunks(500) {
        // The list holds integers we read from the table, so formatting
        // them into the statement cannot inject anything; the Any driver
        // has no array parameters.
        let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let statement = format!("UPDATE outbox SET sent_at = $1 WHERE seq IN ({list})");
        sqlx::query(sqlx::AssertSqlSafe(statement)).bind(now).execute(&mut **tx).await?;
    }
    Ok(())
}
