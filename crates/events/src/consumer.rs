//! The consumer runner: inbox de-duplication, retries with back-off, dead
//! letters, and trace context from producer to handler.
//!
//! For each record: begin a write transaction in the consuming service's
//! store, insert the event id into `inbox` (already there: a redelivery,
//! skip it), run the handler in the same transaction, commit, and only then
//! store the record's offset. An event the handler has no use for
//! ([`Handler::handles`]) is passed over without a transaction. A handler
//! that keeps failing is retried with
//! back-off up to `max_attempts`; then the record goes to `<topic>.dlq` with
//! the error in a header, the inbox remembers it as dead-lettered, and the
//! consumer moves on.
//!
//! Two exceptions keep the crisis path whole:
//! - attempts made while the store does not answer at all (a database
//!   outage) do not count: nothing is dead-lettered because the database
//!   was away;
//! - a crisis event ([`crate::is_crisis`]) is never dead-lettered for a
//!   transient error: it is retried with back-off until it is handled, and
//!   once it has failed `max_attempts` times an alarm is raised (ERROR log
//!   `alarm=crisis_event_retrying`, health NOT_SERVING) until it is. Only a
//!   crisis event that can never be processed (undecodable, or refused by
//!   its handler as permanent) is dead-lettered, and that raises the crisis
//!   dead-letter alarm ([`DeadLetterAlarm`]): the service's hook pages the
//!   crisis contact in one transaction with the dead letter's inbox row, and
//!   the consumer moves on only once that committed (or, when nothing can be
//!   paged, with the alarm raised for good).
//!
//! A watchdog beside the polling loop (see [`WatchOptions`]) raises an
//! alarm when the group stops consuming.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use sqlx::Any;
use tandem_proto::events::v1::EventEnvelope;
use tandem_store::Store;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::bus::{Delivered, EventBus, Record, Subscription, TopicSpec};
use crate::dead_letter::{self, DeadLetter, DeadLetterAlarm, LogAlarm};
use crate::envelope::{self, headers, topics};
use crate::error::{Error, Result};
use crate::health::{self, HealthReport, NoHealthReport};
use crate::watch::{self, WatchOptions};

/// Why a handler failed. Its text goes to logs and the dead-letter header:
/// write ids and reasons, never patient text.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure that may pass on retry (a lock, a timeout, a peer away).
    pub fn transient(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), permanent: false }
    }

    /// A failure no retry can fix (an event this handler cannot accept):
    /// it goes to the dead-letter topic at once.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), permanent: true }
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::transient(format!("database error: {error}"))
    }
}

impl From<tandem_store::StoreError> for HandlerError {
    fn from(error: tandem_store::StoreError) -> Self {
        Self::transient(error)
    }
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        Self::transient(error)
    }
}

/// Handles events inside the consumer's transaction. Write the effects
/// through `tx`: they commit together with the inbox row, or not at all.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Applies one event.
    async fn handle(&self, tx: &mut sqlx::Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError>;

    /// Runs after `handle`'s transaction committed, e.g. to wake an outbox
    /// relay for events the handler enqueued. Not run for duplicates.
    fn after_commit(&self, _event: &EventEnvelope) {}

    /// Whether `handle` may do anything with `event`. An event it would
    /// leave alone is passed over without a transaction or an inbox row
    /// (redelivering a no-op changes nothing), so it does not take a write
    /// turn ahead of the events behind it. Answer from the event alone, and
    /// `true` whenever `handle` could write or fail.
    fn handles(&self, _event: &EventEnvelope) -> bool {
        true
    }
}

/// How a consumer batches, retries and dead-letters.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Records fetched per poll.
    pub batch_size: usize,
    /// Handler attempts before a record is dead-lettered.
    pub max_attempts: u32,
    /// Back-off after the first failed attempt; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest back-off between attempts.
    pub max_backoff: Duration,
    /// Partitions of dead-letter topics the consumer creates.
    pub dead_letter_partitions: i32,
    /// When the watchdog raises its alarms.
    pub watch: WatchOptions,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            max_attempts: 5,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            dead_letter_partitions: 1,
            watch: WatchOptions::default(),
        }
    }
}

/// Counters of a consumer, readable while it runs.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    handled: AtomicU64,
    passed_over: AtomicU64,
    duplicates: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
    crisis_dead_lettered: AtomicU64,
    crisis_retrying: AtomicU64,
    crisis_paged: AtomicU64,
    crisis_unpaged: AtomicU64,
    pub(crate) held_partitions: AtomicU64,
    pub(crate) lag: AtomicI64,
    pub(crate) alarms: AtomicU64,
}

impl ConsumerStats {
    /// Events whose handler committed.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Events passed over because the handler does nothing with them
    /// ([`Handler::handles`]).
    pub fn passed_over(&self) -> u64 {
        self.passed_over.load(Ordering::Relaxed)
    }

    /// Redeliveries the inbox absorbed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Handler attempts that failed.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// Records sent to a dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Crisis records sent to a dead-letter topic.
    pub fn crisis_dead_lettered(&self) -> u64 {
        self.crisis_dead_lettered.load(Ordering::Relaxed)
    }

    /// Crisis events waiting on a transient failure past `max_attempts` now
    /// (0 or 1: a consumer handles one record at a time).
    pub fn crisis_retrying(&self) -> u64 {
        self.crisis_retrying.load(Ordering::Relaxed)
    }

    /// Crisis dead letters whose page the alarm hook committed.
    pub fn crisis_paged(&self) -> u64 {
        self.crisis_paged.load(Ordering::Relaxed)
    }

    /// Crisis dead letters nobody could be paged for (alarmed for good).
    pub fn crisis_unpaged(&self) -> u64 {
        self.crisis_unpaged.load(Ordering::Relaxed)
    }

    /// Partitions this member held at the watchdog's last reading.
    pub fn held_partitions(&self) -> u64 {
        self.held_partitions.load(Ordering::Relaxed)
    }

    /// Events of its topics the group had not consumed at the last reading.
    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Group alarms the watchdog raised.
    pub fn alarms(&self) -> u64 {
        self.alarms.load(Ordering::Relaxed)
    }
}

/// A member of a consumer group that applies events to a service's store.
#[derive(Clone)]
pub struct Consumer {
    bus: Arc<dyn EventBus>,
    group: String,
    topics: Vec<String>,
    store: Store,
    handler: Arc<dyn Handler>,
    alarm: Arc<dyn DeadLetterAlarm>,
    health: Option<Arc<dyn HealthReport>>,
    options: ConsumerOptions,
    stats: Arc<ConsumerStats>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("group", &self.group).field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// What became of one record.
enum Outcome {
    Handled,
    PassedOver,
    Duplicate,
    DeadLettered,
    /// Shutdown came first; the record is not done and will be redelivered.
    Interrupted,
}

impl Consumer {
    /// A consumer in `group` of `topics`, applying events with `handler`
    /// to `store` (whose `inbox` table [`crate::install`] created).
    pub fn new(
        bus: Arc<dyn EventBus>,
        group: impl Into<String>,
        topics: &[&str],
        store: Store,
        handler: Arc<dyn Handler>,
    ) -> Self {
        Self {
            bus,
            group: group.into(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            store,
            handler,
            alarm: Arc::new(LogAlarm),
            health: None,
            options: ConsumerOptions::default(),
            stats: Arc::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Replaces the crisis dead-letter alarm: the hook a service wires to
    /// page the crisis contact when a crisis event is dead-lettered.
    pub fn with_alarm(mut self, alarm: Arc<dyn DeadLetterAlarm>) -> Self {
        self.alarm = alarm;
        self
    }

    /// Where the consumer reports its health (its watchdog's alarms, a
    /// crisis event waiting on retries). Without it, the report of the task
    /// it runs in ([`crate::with_health_report`]) is used, if any.
    pub fn with_health(mut self, health: Arc<dyn HealthReport>) -> Self {
        self.health = Some(health);
        self
    }

    /// The consumer's counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Joins the group and handles records until `shutdown` resolves; then
    /// commits what was handled and leaves the group.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let health =
            self.health.clone().or_else(health::current_health_report).unwrap_or_else(|| Arc::new(NoHealthReport));
        self.health = Some(health.clone());
        self.raise_stored_unpaged().await;
        let mut stop = Stop::new(shutdown);
        let dead_letter_topics: Vec<TopicSpec> = self
            .topics
            .iter()
            .map(|topic| TopicSpec::new(topics::dead_letter(topic), self.options.dead_letter_partitions))
            .collect();
        self.bus.ensure_topics(&dead_letter_topics).await?;
        let mut subscription = self.bus.subscribe(&self.group, &self.topics).await?;
        let _watchdog = AbortOnDrop(tokio::spawn(watch::watch(
            subscription.probe(),
            self.group.clone(),
            self.options.watch.clone(),
            health,
            self.stats.clone(),
        )));
        let mut poll_backoff = self.backoff();
        'poll: loop {
            let batch = tokio::select! {
                () = stop.wait() => break 'poll,
                batch = subscription.next_batch(self.options.batch_size.max(1)) => batch,
            };
            let batch = match batch {
                Ok(batch) => {
                    poll_backoff = self.backoff();
                    batch
                }
                Err(error) => {
                    let delay = poll_backoff.next().unwrap_or(self.options.max_backoff);
                    tracing::warn!(%error, group = %self.group, "polling the event bus failed; retrying");
                    tokio::select! {
                        () = stop.wait() => break 'poll,
                        () = tokio::time::sleep(delay) => continue 'poll,
                    }
                }
            };
            tracing::trace!(records = batch.len(), group = %self.group, "batch received");
            for record in &batch {
                if stop.fired() {
                    break 'poll;
                }
                match self.process(record, &mut stop).await {
                    Outcome::Interrupted => break 'poll,
                    Outcome::Handled | Outcome::PassedOver | Outcome::Duplicate | Outcome::DeadLettered => {}
                }
                self.store_offset(subscription.as_mut(), record);
            }
        }
        subscription.close().await
    }

    fn store_offset(&self, subscription: &mut dyn Subscription, record: &Delivered) {
        match subscription.store_offset(record) {
            Ok(()) => {}
            // Rebalanced away mid-batch: the new owner redelivers, the inbox absorbs.
            Err(error @ Error::NotAssigned { .. }) => tracing::debug!(%error),
            Err(error) => tracing::warn!(%error, "storing a consumer offset failed; the record may be redelivered"),
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

    async fn process(&self, record: &Delivered, stop: &mut Stop) -> Outcome {
        let event_id = record.header(headers::EVENT_ID).unwrap_or_default();
        let event_type = record.header(headers::EVENT_TYPE).unwrap_or_default();
        let span = tracing::info_span!(
            "event.handle",
            otel.name = %format!("{} process", record.topic),
            otel.kind = "consumer",
            messaging.system = %self.bus.kind(),
            messaging.operation.type = "process",
            messaging.destination.name = %record.topic,
            messaging.destination.partition.id = record.partition,
            messaging.kafka.offset = record.offset,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = %event_id,
            event_type = %event_type,
        );
        if let Some(traceparent) = record.header(headers::TRACEPARENT) {
            // The handler's span continues the producer's trace.
            let _ = span.set_parent(tandem_telemetry::parent_context_from_traceparent(traceparent));
        }
        self.process_in_span(record, stop).instrument(span).await
    }

    async fn process_in_span(&self, record: &Delivered, stop: &mut Stop) -> Outcome {
        let event = match envelope::decode(&record.value).and_then(|event| {
            envelope::event_id(&event)?;
            Ok(event)
        }) {
            Ok(event) => event,
            Err(error) => {
                // No retry can make these bytes readable.
                return self.dead_letter(record, None, &error.to_string(), 0, stop).await;
            }
        };
        if !self.handler.handles(&event) {
            self.stats.passed_over.fetch_add(1, Ordering::Relaxed);
            return Outcome::PassedOver;
        }
        let crisis = envelope::is_crisis(&event);
        let mut waiting = CrisisWait::new(self, record, &event);
        let mut backoff = self.backoff();
        let mut attempt: u32 = 0;
        // Attempts that failed while the store answered: only these count
        // toward `max_attempts` (a database outage dead-letters nothing).
        let mut counted: u32 = 0;
        loop {
            attempt += 1;
            // Shutdown abandons a handler mid-transaction: it rolls back,
            // the offset is not stored, and the record comes again.
            let attempt_result = tokio::select! {
                () = stop.wait() => return Outcome::Interrupted,
                result = self.try_handle(record, &event) => result,
            };
            let error = match attempt_result {
                Ok(true) => {
                    self.stats.handled.fetch_add(1, Ordering::Relaxed);
                    waiting.handled(attempt);
                    return Outcome::Handled;
                }
                Ok(false) => {
                    tracing::debug!(event_id = %event.event_id, "redelivered event skipped by the inbox");
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    waiting.handled(attempt);
                    return Outcome::Duplicate;
                }
                Err(error) => error,
            };
            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            let store_answers = error.is_permanent() || self.store_answers().await;
            if store_answers {
                counted += 1;
            }
            tracing::warn!(
                event_id = %event.event_id,
                event_type = %event.event_type,
                attempt,
                counted,
                max_attempts = self.options.max_attempts,
                store_answers,
                crisis,
                error = %error,
                "event handler failed"
            );
            if error.is_permanent() {
                // No retry can fix it: not even a crisis event waits on it.
                waiting.handled(attempt);
                return self.dead_letter(record, Some(&event), &error.to_string(), attempt, stop).await;
            }
            if crisis {
                // Never dead-lettered for a transient error: retried until
                // handled, with an alarm while it waits.
                if attempt >= self.options.max_attempts {
                    waiting.alarm(attempt, &error.to_string());
                }
            } else if counted >= self.options.max_attempts {
                return self.dead_letter(record, Some(&event), &error.to_string(), attempt, stop).await;
            }
            let delay = backoff.next().unwrap_or(self.options.max_backoff);
            tokio::select! {
                () = stop.wait() => return Outcome::Interrupted,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Whether the store answers a trivial query: tells a database outage
    /// (which must not use up an event's attempts) from a handler failing
    /// on this event.
    async fn store_answers(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(self.store.pool());
        matches!(tokio::time::timeout(Duration::from_secs(5), ping).await, Ok(Ok(_)))
    }

    /// One attempt: inbox row and handler in one transaction. `Ok(false)`
    /// means the inbox already had the event.
    async fn try_handle(&self, record: &Delivered, event: &EventEnvelope) -> std::result::Result<bool, HandlerError> {
        let mut tx = self.store.begin_write().await?;
        if !self.record_in_inbox(&mut tx, &event.event_id, &record.topic, "handled").await? {
            tx.rollback().await?;
            return Ok(false);
        }
        // On error the transaction drops and rolls back, inbox row included.
        self.handler.handle(&mut tx, event).await?;
        tx.commit().await?;
        self.handler.after_commit(event);
        Ok(true)
    }

    async fn record_in_inbox(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        event_id: &str,
        topic: &str,
        outcome: &str,
    ) -> std::result::Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO inbox (consumer_group, event_id, topic, outcome, handled_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer_group, event_id) DO NOTHING",
        )
        .bind(&self.group)
        .bind(event_id)
        .bind(topic)
        .bind(outcome)
        .bind(tandem_store::unix_micros(SystemTime::now()))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn dead_letter(
        &self,
        record: &Delivered,
        event: Option<&EventEnvelope>,
        error: &str,
        attempts: u32,
        stop: &mut Stop,
    ) -> Outcome {
        let event_id =
            event.map(|event| event.event_id.clone()).or_else(|| record.header(headers::EVENT_ID).map(str::to_owned));
        let event_type = event
            .map(|event| event.event_type.clone())
            .or_else(|| record.header(headers::EVENT_TYPE).map(str::to_owned));
        let crisis = match event {
            Some(event) => envelope::is_crisis(event),
            // Unreadable: trust a declared type; without one, anything on a
            // crisis topic may be a crisis (a false alarm beats a lost signal).
            None => match event_type.as_deref().filter(|name| !name.is_empty()) {
                Some(name) => envelope::could_be_crisis(name),
                None => topics::CRISIS.contains(&record.topic.as_str()),
            },
        };
        // Headers are not the place for an essay; the full text is in the log.
        let error_text: String = error.chars().take(1000).collect();
        let mut dlq_headers = record.headers.clone();
        dlq_headers.extend([
            (headers::DLQ_ERROR.to_owned(), error_text.clone()),
            (headers::DLQ_TOPIC.to_owned(), record.topic.clone()),
            (headers::DLQ_PARTITION.to_owned(), record.partition.to_string()),
            (headers::DLQ_OFFSET.to_owned(), record.offset.to_string()),
            (headers::DLQ_GROUP.to_owned(), self.group.clone()),
            (headers::DLQ_ATTEMPTS.to_owned(), attempts.to_string()),
        ]);
        let dead = Record {
            topic: topics::dead_letter(&record.topic),
            key: record.key.clone().unwrap_or_default(),
            value: record.value.clone(),
            headers: dlq_headers,
        };
        // Moving on before the dead letter is durable would lose the event.
        let mut backoff = self.backoff();
        loop {
            let results = self.bus.publish(std::slice::from_ref(&dead)).await;
            match results.into_iter().next() {
                Some(Ok(())) => break,
                Some(Err(error)) => {
                    tracing::error!(%error, topic = %dead.topic, "publishing a dead letter failed; retrying");
                }
                None => {
                    tracing::error!(topic = %dead.topic, "the bus returned no delivery report for a dead letter; retrying")
                }
            }
            let delay = backoff.next().unwrap_or(self.options.max_backoff);
            tokio::select! {
                () = stop.wait() => return Outcome::Interrupted,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let org = event
            .and_then(|event| event.org_id.as_ref())
            .map(|org| org.value.clone())
            .filter(|org| !org.is_empty())
            .or_else(|| record.header(headers::ORG_ID).map(str::to_owned));
        let letter = DeadLetter {
            event_id,
            event_type,
            patient_key: record.key.clone(),
            org,
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            group: self.group.clone(),
            error: error_text,
            attempts,
            crisis,
        };
        dead_letter::count(&letter);
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event_id = letter.event_id.as_deref().unwrap_or("unknown"),
            event_type = letter.event_type.as_deref().unwrap_or("unknown"),
            topic = %letter.topic,
            dead_letter_topic = %dead.topic,
            attempts,
            crisis,
            error = %letter.error,
            "event dead-lettered; moving on"
        );
        if !crisis {
            // So a redelivery of this record is skipped instead of being
            // retried and dead-lettered again.
            if let Err(error) = self.remember_dead_letter(&letter.key(), &record.topic, DEAD_LETTERED).await {
                tracing::warn!(%error, key = %letter.key(), "recording a dead letter in the inbox failed; a redelivery would be dead-lettered again");
            }
            return Outcome::DeadLettered;
        }
        self.stats.crisis_dead_lettered.fetch_add(1, Ordering::Relaxed);
        watch::count_alarm(&self.group, "crisis_dead_letter");
        tracing::error!(
            alarm = "crisis_dead_letter",
            patient = letter.patient_key.as_deref().unwrap_or("unknown"),
            org = letter.org.as_deref().unwrap_or("unknown"),
            event_id = letter.event_id.as_deref().unwrap_or("unknown"),
            event_type = letter.event_type.as_deref().unwrap_or("unknown"),
            topic = %letter.topic,
            partition = letter.partition,
            offset = letter.offset,
            group = %letter.group,
            attempts,
            error = %letter.error,
            "a crisis event can never be processed and was dead-lettered; paging the crisis contact"
        );
        self.page(&letter, stop).await
    }

    /// Pages for a crisis dead letter through the alarm hook, in one
    /// transaction with its inbox row, so it is paged once; retried on
    /// transient failures (alarmed meanwhile) until it commits, and left
    /// alarmed for good when the hook refuses it.
    async fn page(&self, letter: &DeadLetter, stop: &mut Stop) -> Outcome {
        let key = letter.key();
        let mut waiting = PagingWait {
            consumer: self,
            component: format!("consumer {} crisis dead letter {key}", self.group),
            raised: false,
        };
        let mut backoff = self.backoff();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                () = stop.wait() => return Outcome::Interrupted,
                result = self.try_page(letter, &key) => result,
            };
            let error = match result {
                Ok(paged) => {
                    waiting.done();
                    if paged {
                        self.stats.crisis_paged.fetch_add(1, Ordering::Relaxed);
                        self.alarm.after_commit(letter);
                        tracing::warn!(key = %key, group = %self.group, attempt, "crisis dead letter handed to the crisis-contact hook");
                    } else {
                        tracing::info!(key = %key, group = %self.group, "this crisis dead letter was handled before; not paged again");
                    }
                    return Outcome::DeadLettered;
                }
                Err(error) => error,
            };
            if error.is_permanent() {
                waiting.done();
                return self.unpaged(letter, &key, &error.to_string(), stop).await;
            }
            waiting.alarm(letter, attempt, &error.to_string());
            let delay = backoff.next().unwrap_or(self.options.max_backoff);
            tokio::select! {
                () = stop.wait() => return Outcome::Interrupted,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt at paging: the inbox row of the dead letter and the
    /// hook's writes in one transaction. `Ok(false)`: it was paged before.
    async fn try_page(&self, letter: &DeadLetter, key: &str) -> std::result::Result<bool, HandlerError> {
        let mut tx = self.store.begin_write().await?;
        if !self.record_in_inbox(&mut tx, key, &letter.topic, DEAD_LETTERED).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        self.alarm.crisis_dead_lettered(&mut tx, letter).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The hook refused the letter for good: nobody was paged. Remember it
    /// (so the alarm is raised again after a restart) and raise the alarm.
    async fn unpaged(&self, letter: &DeadLetter, key: &str, error: &str, stop: &mut Stop) -> Outcome {
        let mut backoff = self.backoff();
        loop {
            match self.remember_dead_letter(key, &letter.topic, DEAD_LETTERED_UNPAGED).await {
                Ok(()) => break,
                Err(remember_error) => {
                    tracing::warn!(error = %remember_error, key, "recording an unpaged crisis dead letter failed; retrying");
                }
            }
            let delay = backoff.next().unwrap_or(self.options.max_backoff);
            tokio::select! {
                () = stop.wait() => {
                    // Not remembered: the record comes again to the next owner.
                    return Outcome::Interrupted;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.raise_unpaged(key, letter.patient_key.as_deref().unwrap_or("unknown"), error);
        Outcome::DeadLettered
    }

    /// Raises the alarm of a crisis dead letter nobody was paged for: ERROR
    /// log and health NOT_SERVING, never cleared by this process.
    fn raise_unpaged(&self, key: &str, patient: &str, error: &str) {
        self.stats.crisis_unpaged.fetch_add(1, Ordering::Relaxed);
        watch::count_alarm(&self.group, "crisis_dead_letter_unpaged");
        if let Some(health) = &self.health {
            health.failing(
                &format!("consumer {} unpaged crisis dead letter {key}", self.group),
                &format!("crisis dead letter {key} paged nobody: {error}"),
            );
        }
        tracing::error!(
            alarm = "crisis_dead_letter_unpaged",
            key,
            patient,
            group = %self.group,
            error,
            "a dead-lettered crisis event could not be paged to anyone; page the crisis contact by hand, then mark the inbox row of this key 'dead_lettered'"
        );
    }

    /// Raises the alarm again for every crisis dead letter of this group
    /// that was never paged (after a restart).
    async fn raise_stored_unpaged(&self) {
        let rows: std::result::Result<Vec<(String, String)>, sqlx::Error> =
            sqlx::query_as("SELECT event_id, topic FROM inbox WHERE consumer_group = $1 AND outcome = $2")
                .bind(&self.group)
                .bind(DEAD_LETTERED_UNPAGED)
                .fetch_all(self.store.pool())
                .await;
        match rows {
            Ok(rows) => {
                for (key, _topic) in rows {
                    self.raise_unpaged(&key, "unknown", "paged nobody before this process started");
                }
            }
            Err(error) => {
                tracing::error!(%error, group = %self.group, "cannot read unpaged crisis dead letters from the inbox");
            }
        }
    }

    async fn remember_dead_letter(&self, key: &str, topic: &str, outcome: &str) -> Result<()> {
        let mut tx = self.store.begin_write().await?;
        self.record_in_inbox(&mut tx, key, topic, outcome).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The inbox outcome of a dead letter that was paged (or needed no page).
const DEAD_LETTERED: &str = "dead_lettered";
/// The inbox outcome of a crisis dead letter nobody could be paged for.
const DEAD_LETTERED_UNPAGED: &str = "dead_lettered_unpaged";

/// The alarm of a crisis dead letter whose page waits on a failing store:
/// raised while it waits, cleared when the page committed or refused.
struct PagingWait<'a> {
    consumer: &'a Consumer,
    component: String,
    raised: bool,
}

impl PagingWait<'_> {
    fn alarm(&mut self, letter: &DeadLetter, attempt: u32, error: &str) {
        let first = !self.raised;
        self.raised = true;
        if first {
            watch::count_alarm(&self.consumer.group, "crisis_dead_letter_paging");
        }
        if let Some(health) = &self.consumer.health {
            health.failing(&self.component, &format!("paging for crisis dead letter {} fails: {error}", letter.key()));
        }
        if first || attempt.is_multiple_of(10) {
            tracing::error!(
                alarm = "crisis_dead_letter_paging",
                key = %letter.key(),
                patient = letter.patient_key.as_deref().unwrap_or("unknown"),
                group = %self.consumer.group,
                attempt,
                error,
                "paging the crisis contact for a dead-lettered crisis event keeps failing; retried until it is written"
            );
        }
    }

    fn done(&mut self) {
        if std::mem::take(&mut self.raised)
            && let Some(health) = &self.consumer.health
        {
            health.recovered(&self.component);
        }
    }
}

impl Drop for PagingWait<'_> {
    fn drop(&mut self) {
        // Shutdown mid-wait: the record comes again to the next owner.
        self.done();
    }
}

/// Aborts a background task when dropped, however its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The alarm of a crisis event waiting on retries: raised (and repeated
/// every ten attempts) while it waits, cleared when it is done, however
/// processing ends.
struct CrisisWait<'a> {
    consumer: &'a Consumer,
    event_id: &'a str,
    event_type: &'a str,
    patient: &'a str,
    raised: bool,
    component: String,
}

impl<'a> CrisisWait<'a> {
    fn new(consumer: &'a Consumer, record: &'a Delivered, event: &'a EventEnvelope) -> Self {
        Self {
            consumer,
            event_id: &event.event_id,
            event_type: &event.event_type,
            patient: record.key.as_deref().unwrap_or("unknown"),
            raised: false,
            component: format!("consumer {} crisis event", consumer.group),
        }
    }

    fn health(&self) -> Option<&Arc<dyn HealthReport>> {
        self.consumer.health.as_ref()
    }

    fn alarm(&mut self, attempt: u32, error: &str) {
        let first = !self.raised;
        if first {
            self.raised = true;
            self.consumer.stats.crisis_retrying.fetch_add(1, Ordering::Relaxed);
            watch::count_alarm(&self.consumer.group, "crisis_event_retrying");
        }
        if let Some(health) = self.health() {
            health.failing(
                &self.component,
                &format!("crisis event {} ({}) is waiting on retries: {error}", self.event_id, self.event_type),
            );
        }
        if first || attempt.is_multiple_of(10) {
            tracing::error!(
                alarm = "crisis_event_retrying",
                patient = self.patient,
                event_id = self.event_id,
                event_type = self.event_type,
                group = %self.consumer.group,
                attempt,
                error,
                "a crisis event keeps failing on a transient error; it is retried until it is handled, never dead-lettered"
            );
        }
    }

    fn handled(&mut self, attempt: u32) {
        if !self.raised {
            return;
        }
        self.raised = false;
        self.consumer.stats.crisis_retrying.fetch_sub(1, Ordering::Relaxed);
        if let Some(health) = self.health() {
            health.recovered(&self.component);
        }
        tracing::info!(
            alarm = "crisis_event_retrying",
            patient = self.patient,
            event_id = self.event_id,
            attempt,
            "the waiting crisis event is done; alarm cleared"
        );
    }
}

impl Drop for CrisisWait<'_> {
    fn drop(&mut self) {
        // Shutdown mid-wait: the event comes again to the next owner; this
        // process no longer waits on it.
        if self.raised {
            self.consumer.stats.crisis_retrying.fetch_sub(1, Ordering::Relaxed);
            if let Some(health) = self.health() {
                health.recovered(&self.component);
            }
        }
    }
}

/// A shutdown signal that can be awaited repeatedly.
pub(crate) struct Stop {
    future: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
}

impl Stop {
    /// Wraps a shutdown future.
    pub(crate) fn new(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self { future: Box::pin(future), fired: false }
    }

    /// Resolves once shutdown was asked for (at once if it already was).
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            self.future.as_mut().await;
            self.fired = true;
        }
    }

    /// Whether shutdown was asked for, without waiting.
    pub(crate) fn fired(&mut self) -> bool {
        if !self.fired && self.future.as_mut().now_or_never().is_some() {
            self.fired = true;
        }
        self.fired
    }
}
