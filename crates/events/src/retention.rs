//! Retention: what the event spine keeps, and for how long.
//!
//! Without it the embedded log and every service's inbox grow forever. One
//! task per process prunes, on a timer:
//! - inbox rows (the consumers' de-duplication memory) handled longer ago
//!   than `handled_events`. Keep this longer than the bus can redeliver an
//!   event (Kafka's topic retention, 7 days by default): an event
//!   redelivered after its inbox row is gone would be handled again;
//! - embedded-log records older than `consumed_log` that every consumer
//!   group has consumed (Kafka keeps its own retention);
//! - sent outbox rows are pruned by each relay (`RelayOptions::retain_sent`).
//!
//! Pruning never blocks the crisis path for long: each pass deletes in one
//! statement per table, and a failed pass is logged and tried again.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_store::Store;

use crate::bus::EventBus;
use crate::consumer::Stop;
use crate::error::Result;

/// How long handled and consumed events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOptions {
    /// Time between passes.
    pub every: Duration,
    /// How long an inbox row outlives its handling.
    pub handled_events: Duration,
    /// How long a consumed record stays in the embedded log.
    pub consumed_log: Duration,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self { every: Duration::from_secs(3600), handled_events: DAY * 30, consumed_log: DAY * 30 }
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Inbox rows, over every store.
    pub inbox_rows: u64,
    /// Embedded-log records.
    pub log_records: u64,
}

/// Deletes inbox rows handled before `handled_before`; returns how many.
pub async fn prune_inbox(store: &Store, handled_before: SystemTime) -> Result<u64> {
    let pruned = sqlx::query("DELETE FROM inbox WHERE handled_at < $1")
        .bind(tandem_store::unix_micros(handled_before))
        .execute(store.pool())
        .await?
        .rows_affected();
    Ok(pruned)
}

/// The retention task of a process: its services' stores and its bus.
#[derive(Debug, Clone)]
pub struct Retention {
    stores: Vec<Store>,
    bus: Arc<dyn EventBus>,
    options: RetentionOptions,
}

impl Retention {
    /// Prunes the inboxes of `stores` and the consumed records of `bus`.
    pub fn new(stores: Vec<Store>, bus: Arc<dyn EventBus>, options: RetentionOptions) -> Self {
        Self { stores, bus, options }
    }

    /// One pass at `now`.
    pub async fn prune_once(&self, now: SystemTime) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let handled_before = now.checked_sub(self.options.handled_events).unwrap_or(SystemTime::UNIX_EPOCH);
        for store in &self.stores {
            pruned.inbox_rows += prune_inbox(store, handled_before).await?;
        }
        let appended_before = now.checked_sub(self.options.consumed_log).unwrap_or(SystemTime::UNIX_EPOCH);
        pruned.log_records = self.bus.prune_consumed(appended_before).await?;
        Ok(pruned)
    }

    /// Prunes every `every` until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let mut stop = Stop::new(shutdown);
        loop {
            match self.prune_once(SystemTime::now()).await {
                Ok(Pruned { inbox_rows: 0, log_records: 0 }) => {}
                Ok(pruned) => {
                    tracing::info!(inbox_rows = pruned.inbox_rows, log_records = pruned.log_records, "retention pass")
                }
                Err(error) => tracing::warn!(%error, "retention pass failed; trying again next pass"),
            }
            tokio::select! {
                () = stop.wait() => return Ok(()),
                () = tokio::time::sleep(self.options.every) => {}
            }
        }
    }
}
