//! The delivery worker: works the durable queue in the `deliveries` table.
//!
//! Each pass claims due rows with a lease (a claim token and an expiry),
//! attempts them concurrently outside any transaction, and records each
//! outcome in a transaction of its own together with its events. A row is
//! marked delivered only after its channel accepted it. A worker that dies
//! mid-delivery leaves its claim behind: it expires after the lease and the
//! row is attempted again (on SQLite, where one process owns the file, a
//! starting worker releases every claim at once). The same delivery id goes
//! out on every attempt (`webhook-id`, email `Message-ID`), so a receiver
//! can drop the duplicate that a death between "accepted" and "recorded"
//! can cause.
//!
//! On stop the worker lets attempts in flight finish (each is bounded by
//! its channel's timeout) and records them before returning.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use chrono_tz::Tz;
use futures::{FutureExt, StreamExt};
use tandem_events::Outbox;
use tandem_store::{Backend, from_unix_micros, unix_micros};
use tokio::sync::Notify;

use crate::channels::{Channels, Target};
use crate::config::NotificationsSettings;
use crate::endpoint::Channel;
use crate::inbox::InboxHub;
use crate::message::{Message, Purpose};
use crate::quiet::{QuietHours, parse_zone};
use crate::repo::{Claimed, DEFAULT_INBOX, Outcome, Recorded, Repo, RepoError};
use crate::retry::RetryPolicy;

/// The key of a reminder: one per (plan, item, occurrence).
pub fn reminder_key(care_plan: &str, item: &str, occurrence_micros: i64) -> String {
    format!("reminder:{care_plan}:{item}:{occurrence_micros}")
}

/// The parts of a reminder key (an item id may itself contain ':').
pub fn parse_reminder_key(key: &str) -> Option<(&str, &str, i64)> {
    let rest = key.strip_prefix("reminder:")?;
    let (plan, rest) = rest.split_once(':')?;
    let (item, occurrence) = rest.rsplit_once(':')?;
    Some((plan, item, occurrence.parse().ok()?))
}

/// Works the delivery queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    repo: Repo,
    outbox: Outbox,
    channels: Arc<Channels>,
    settings: Arc<NotificationsSettings>,
    wake: Arc<Notify>,
    inbox: InboxHub,
}

impl Worker {
    /// A worker over the service's parts.
    pub fn new(
        repo: Repo,
        outbox: Outbox,
        channels: Arc<Channels>,
        settings: Arc<NotificationsSettings>,
        wake: Arc<Notify>,
        inbox: InboxHub,
    ) -> Self {
        Self { repo, outbox, channels, settings, wake, inbox }
    }

    /// Works the queue until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RepoError> {
        let mut stop = Stop::new(shutdown);
        if self.repo.store().backend() == Backend::Sqlite {
            let released = self.repo.release_all_claims().await?;
            if released > 0 {
                tracing::warn!(released, "deliveries claimed by a process that stopped are due again");
            }
        }
        loop {
            if stop.fired() {
                break;
            }
            let worked = match self.pass().await {
                Ok(worked) => worked,
                Err(error) => {
                    tracing::warn!(%error, "delivery pass failed; retrying after the poll interval");
                    0
                }
            };
            if worked > 0 {
                // More may be due right away.
                continue;
            }
            let woken = self.wake.notified();
            tokio::select! {
                () = stop.wait() => break,
                // Woken after a commit (the consumer's after-commit hook, an
                // API call, the reminder scheduler): what it wrote is visible.
                () = woken => {}
                () = tokio::time::sleep(self.settings.worker.poll) => {}
            }
        }
        Ok(())
    }

    /// Claims what is due now and attempts it; returns how many were claimed.
    pub async fn pass(&self) -> Result<usize, RepoError> {
        let token = uuid::Uuid::new_v4().to_string();
        let claimed =
            self.repo.claim_due(self.settings.worker.lease, self.settings.worker.batch.max(1), &token).await?;
        let count = claimed.len();
        futures::stream::iter(claimed).for_each_concurrent(None, |delivery| self.attempt(delivery)).await;
        Ok(count)
    }

    async fn attempt(&self, claimed: Claimed) {
        let (outcome, inbox) = self.decide(&claimed).await;
        let inbox_text = inbox.as_ref().map(|(title, body)| (title.as_str(), body.as_str()));
        let now = unix_micros(SystemTime::now());
        match self.repo.record(&self.outbox, &claimed, &outcome, inbox_text, now).await {
            Ok(Recorded::Stored { inbox }) => {
                log_outcome(&claimed, &outcome);
                if let Some((org, subject)) = inbox {
                    self.inbox.changed(&org, &subject);
                }
            }
            Ok(Recorded::Lost) => tracing::info!(
                delivery_id = %claimed.id,
                "delivery was cancelled or taken over while it was attempted; outcome not recorded"
            ),
            Err(error) => tracing::error!(
                delivery_id = %claimed.id,
                %error,
                "cannot record a delivery attempt; it is attempted again when its claim expires"
            ),
        }
    }

    fn policy(&self, purpose: Purpose) -> RetryPolicy {
        match purpose {
            Purpose::Alert | Purpose::Verification | Purpose::Notice => self.settings.alert_retry.policy(),
            Purpose::Reminder => self.settings.reminder_retry.policy(),
        }
    }

    /// What to do with a claimed delivery, and the inbox row it makes.
    async fn decide(&self, claimed: &Claimed) -> (Outcome, Option<(String, String)>) {
        let message: Message = match serde_json::from_str(&claimed.message) {
            Ok(message) => message,
            Err(_) => return (Outcome::Failed { error: "the stored message is unreadable".into() }, None),
        };
        let now = SystemTime::now();
        let endpoint = if claimed.endpoint_id == DEFAULT_INBOX {
            None
        } else {
            match self.repo.endpoint(&claimed.endpoint_id).await {
                Ok(Some(endpoint)) => Some(endpoint),
                Ok(None) => return (Outcome::Failed { error: "the endpoint was deleted".into() }, None),
                Err(error) => return (self.retry(claimed, error.to_string(), now), None),
            }
        };
        if claimed.purpose == Purpose::Reminder {
            match self.reminder_gate(claimed, endpoint.as_ref(), now).await {
                Ok(Some(outcome)) => return (outcome, None),
                Ok(None) => {}
                Err(error) => return (self.retry(claimed, error.to_string(), now), None),
            }
        }
        if claimed.channel == Channel::InApp {
            return (Outcome::Delivered, Some((message.title, message.text)));
        }
        let Some(endpoint) = endpoint else {
            return (Outcome::Failed { error: "no endpoint to send to".into() }, None);
        };
        if claimed.purpose != Purpose::Verification && endpoint.verified_at.is_none() {
            return (Outcome::Failed { error: "the endpoint is not verified".into() }, None);
        }
        let target = Target { channel: endpoint.channel, address: endpoint.address, secret: endpoint.secret };
        match self.channels.send(&target, &claimed.id, &message).await {
            Ok(()) => (Outcome::Delivered, None),
            Err(error) if error.permanent => (Outcome::Failed { error: error.reason }, None),
            Err(error) => (self.retry(claimed, error.reason, SystemTime::now()), None),
        }
    }

    /// Retry later, or give up when the policy says so.
    fn retry(&self, claimed: &Claimed, error: String, now: SystemTime) -> Outcome {
        let made = claimed.attempts + 1;
        match self.policy(claimed.purpose).next_attempt(made, from_unix_micros(claimed.queued_at), now) {
            Some(at) => Outcome::Retry { at: unix_micros(at), error },
            None => Outcome::Failed { error: format!("{error} (gave up after {made} attempts)") },
        }
    }

    /// For reminders: cancel when the item was done meanwhile, defer while
    /// quiet hours last.
    async fn reminder_gate(
        &self,
        claimed: &Claimed,
        endpoint: Option<&crate::repo::StoredEndpoint>,
        now: SystemTime,
    ) -> Result<Option<Outcome>, RepoError> {
        if let Some((plan, item, occurrence)) = parse_reminder_key(&claimed.dedup_key)
            && self.repo.reminder_done(plan, item, occurrence).await?
        {
            return Ok(Some(Outcome::Cancel));
        }
        let patient_zone = self.repo.patient_time_zone(&claimed.patient).await?;
        if let Some(quiet) = self.quiet_hours(endpoint, patient_zone.as_deref())
            && quiet.contains(now)
        {
            return Ok(Some(Outcome::Defer { at: unix_micros(quiet.next_allowed(now)) }));
        }
        Ok(None)
    }

    /// The endpoint's quiet hours, else the service default, in the
    /// endpoint's zone, else the patient's, else UTC.
    fn quiet_hours(
        &self,
        endpoint: Option<&crate::repo::StoredEndpoint>,
        patient_zone: Option<&str>,
    ) -> Option<QuietHours> {
        let zone_name = endpoint.map(|e| e.time_zone.as_str()).filter(|zone| !zone.is_empty()).or(patient_zone);
        let zone = zone_name.and_then(|zone| parse_zone(zone).ok()).unwrap_or(Tz::UTC);
        let own = endpoint.filter(|e| !e.quiet_hours_start.is_empty());
        let (start, end) = match own {
            Some(endpoint) => (endpoint.quiet_hours_start.as_str(), endpoint.quiet_hours_end.as_str()),
            None => {
                (self.settings.reminders.quiet_hours_start.as_str(), self.settings.reminders.quiet_hours_end.as_str())
            }
        };
        match QuietHours::parse(start, end, zone) {
            Ok(quiet) => quiet,
            Err(error) => {
                tracing::warn!(%error, "unreadable quiet hours; reminding without them");
                None
            }
        }
    }
}

fn log_outcome(claimed: &Claimed, outcome: &Outcome) {
    let purpose = claimed.purpose.as_str();
    let channel = claimed.channel.as_str();
    match outcome {
        Outcome::Delivered => tandem_telemetry::metrics::delivery(channel, purpose, "delivered"),
        Outcome::Retry { .. } => tandem_telemetry::metrics::delivery(channel, purpose, "retrying"),
        Outcome::Failed { .. } => tandem_telemetry::metrics::delivery(channel, purpose, "failed"),
        Outcome::Defer { .. } | Outcome::Cancel => {}
    }
    match outcome {
        Outcome::Delivered => {
            tracing::info!(delivery_id = %claimed.id, purpose, channel, attempt = claimed.attempts + 1, "delivered")
        }
        Outcome::Retry { error, .. } => tracing::warn!(
            delivery_id = %claimed.id, purpose, channel, attempt = claimed.attempts + 1, %error,
            "delivery attempt failed; retrying"
        ),
        Outcome::Failed { error } => tracing::warn!(
            delivery_id = %claimed.id, purpose, channel, attempt = claimed.attempts + 1, %error,
            "delivery failed for good"
        ),
        Outcome::Defer { .. } => tracing::debug!(delivery_id = %claimed.id, "reminder deferred until quiet hours end"),
        Outcome::Cancel => tracing::debug!(delivery_id = %claimed.id, "reminder no longer needed"),
    }
}

/// A shutdown signal that can be awaited repeatedly.
pub(crate) struct Stop {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminder_keys_round_trip_even_with_colons_in_item_ids() {
        let key = reminder_key("0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11", "task:a:b", 1_800_000_000_000_000);
        assert_eq!(
            parse_reminder_key(&key),
            Some(("0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11", "task:a:b", 1_800_000_000_000_000))
        );
        assert_eq!(parse_reminder_key("alert:x:0"), None);
    }
}
