//! The notifications service's SQL, portable across SQLite and PostgreSQL:
//! endpoints, alerts, the delivery queue, the in-app inbox and the
//! projections reminders need. Times are Unix microseconds.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tandem_events::{Outbox, topics};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{OrgId, PatientId};
use tandem_store::{Backend, Store, StoreError, from_unix_micros, is_unique_violation, unix_micros};

use crate::endpoint::Channel;
use crate::message::Purpose;

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The subject already has this endpoint.
    #[error("this endpoint is already registered for the subject")]
    Duplicate,
    /// A stored row does not parse: the database was changed outside Tandem.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The outbox refused the event.
    #[error(transparent)]
    Events(#[from] tandem_events::Error),
}

impl From<sqlx::Error> for RepoError {
    fn from(error: sqlx::Error) -> Self {
        RepoError::Store(StoreError::Sql(error))
    }
}

/// What a caller hears of a repository error: the one place this service
/// chooses (see `tandem_server::error`).
impl From<RepoError> for tandem_server::ServiceError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Duplicate => Self::exists(
                "this address is already registered on this channel for the subject; list the endpoints to find it, \
                 verify it, or delete it and register again",
            ),
            RepoError::Corrupt(_) => Self::internal(error),
            RepoError::Store(error) => error.into(),
            RepoError::Events(error) => error.into(),
        }
    }
}

impl From<RepoError> for tonic::Status {
    fn from(error: RepoError) -> Self {
        tandem_server::ServiceError::from(error).into()
    }
}

fn corrupt(what: &str) -> RepoError {
    RepoError::Corrupt(what.to_owned())
}

/// A stored endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEndpoint {
    /// The endpoint's id (a UUID).
    pub id: String,
    /// The organisation.
    pub org: String,
    /// Whose endpoint.
    pub subject: String,
    /// The channel.
    pub channel: Channel,
    /// URL, email address, phone number, or empty.
    pub address: String,
    /// The webhook signing secret, or empty.
    pub secret: String,
    /// When it was verified.
    pub verified_at: Option<i64>,
    /// SHA-256 of the pending verification code, or empty.
    pub code_hash: String,
    /// When the pending code expires.
    pub code_expires_at: Option<i64>,
    /// Wrong codes tried so far.
    pub code_attempts: i64,
    /// Quiet hours start, "HH:MM" or empty.
    pub quiet_hours_start: String,
    /// Quiet hours end, "HH:MM" or empty.
    pub quiet_hours_end: String,
    /// The quiet hours' time zone, or empty.
    pub time_zone: String,
    /// Who registered it.
    pub registered_by: String,
    /// When it was registered.
    pub created_at: i64,
}

const ENDPOINT_COLUMNS: &str = "id, org_id, subject, channel, address, secret, verified_at, code_hash, \
    code_expires_at, code_attempts, quiet_hours_start, quiet_hours_end, time_zone, registered_by, created_at";

fn endpoint_from_row(row: &AnyRow) -> Result<StoredEndpoint, RepoError> {
    let channel: String = row.try_get("channel")?;
    Ok(StoredEndpoint {
        id: row.try_get("id")?,
        org: row.try_get("org_id")?,
        subject: row.try_get("subject")?,
        channel: channel.parse().map_err(|_| corrupt("endpoints.channel"))?,
        address: row.try_get("address")?,
        secret: row.try_get("secret")?,
        verified_at: row.try_get("verified_at")?,
        code_hash: row.try_get("code_hash")?,
        code_expires_at: row.try_get("code_expires_at")?,
        code_attempts: row.try_get("code_attempts")?,
        quiet_hours_start: row.try_get("quiet_hours_start")?,
        quiet_hours_end: row.try_get("quiet_hours_end")?,
        time_zone: row.try_get("time_zone")?,
        registered_by: row.try_get("registered_by")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Which alert a delivery carries: one attempt of an escalation, sent to
/// the holder of a chain step. Alerts are de-duplicated per (escalation,
/// attempt): a re-alert at a higher level keeps the step but is a new
/// attempt, and goes out again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRef {
    /// The escalation.
    pub escalation: String,
    /// The chain step alerted.
    pub step: u32,
    /// The escalation's alert attempt.
    pub attempt: u32,
}

/// An alert for one (escalation, attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// The escalation.
    pub escalation_id: String,
    /// The chain step.
    pub step: u32,
    /// The escalation's alert attempt: the de-duplication key with the escalation.
    pub attempt: u32,
    /// The organisation.
    pub org: String,
    /// The patient.
    pub patient: String,
    /// Who is alerted.
    pub recipient: String,
    /// The risk level's proto name.
    pub level: String,
    /// The acknowledgement deadline.
    pub ack_deadline: Option<i64>,
}

/// A delivery about to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Why.
    pub purpose: Purpose,
    /// With `endpoint_id`, what makes it unique: the same notification is
    /// never queued twice for one endpoint.
    pub dedup_key: String,
    /// For alerts: which one.
    pub alert: Option<AlertRef>,
    /// The organisation.
    pub org: String,
    /// The patient, or empty.
    pub patient: String,
    /// Whom it is for.
    pub recipient: String,
    /// The endpoint, or [`DEFAULT_INBOX`].
    pub endpoint_id: String,
    /// The channel.
    pub channel: Channel,
    /// The rendered message as JSON.
    pub message: String,
    /// When the first attempt may run.
    pub not_before: i64,
    /// When it was queued.
    pub queued_at: i64,
}

/// The endpoint id of the implicit in-app inbox of a patient who registered
/// no endpoint of their own (reminders only).
pub const DEFAULT_INBOX: &str = "inbox";

/// A delivery a worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The delivery's id: the webhook-id.
    pub id: String,
    /// Why.
    pub purpose: Purpose,
    /// The de-duplication key.
    pub dedup_key: String,
    /// For alerts: which one.
    pub alert: Option<AlertRef>,
    /// The organisation.
    pub org: String,
    /// The patient, or empty.
    pub patient: String,
    /// Whom it is for.
    pub recipient: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The channel.
    pub channel: Channel,
    /// The rendered message as JSON.
    pub message: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When it was queued.
    pub queued_at: i64,
    /// The claim token.
    pub claim: String,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The channel accepted it.
    Delivered,
    /// It failed; try again at this time.
    Retry {
        /// When.
        at: i64,
        /// Why it failed.
        error: String,
    },
    /// It failed for good.
    Failed {
        /// Why.
        error: String,
    },
    /// Not attempted (quiet hours): try at this time, counting no attempt.
    Defer {
        /// When.
        at: i64,
    },
    /// No longer wanted (e.g. the reminded item was done meanwhile).
    Cancel,
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored; `inbox` is the (org, subject) whose inbox got a new row.
    Stored {
        /// The inbox that changed, if any.
        inbox: Option<(String, String)>,
    },
    /// The claim had expired or the delivery was cancelled meanwhile; nothing changed.
    Lost,
}

/// One in-app notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// Position in the store, for streaming in order.
    pub seq: i64,
    /// The notification's id.
    pub id: String,
    /// "alert" or "reminder".
    pub kind: String,
    /// The title.
    pub title: String,
    /// The body.
    pub body: String,
    /// When it was stored.
    pub created_at: i64,
}

/// An occurrence about to be reminded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewReminder<'a> {
    /// The patient.
    pub patient: &'a str,
    /// The plan.
    pub care_plan: &'a str,
    /// The task or measure schedule.
    pub item: &'a str,
    /// For measures, the instrument; empty for tasks.
    pub instrument: &'a str,
    /// When the occurrence became due.
    pub occurrence_at: i64,
}

/// A patient the reminder scheduler looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderPatient {
    /// The patient.
    pub id: String,
    /// The organisation.
    pub org: String,
    /// The IANA time zone.
    pub time_zone: String,
}

/// What a patient has done: last time per instrument and per task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// Last submission per instrument code.
    pub measures: HashMap<String, SystemTime>,
    /// Last completion per (care plan id, task id).
    pub tasks: HashMap<(String, String), SystemTime>,
}

/// Inbox rows read at a time.
pub const INBOX_PAGE: i64 = 500;

/// SQL for the notifications service.
#[derive(Debug, Clone)]
pub struct Repo {
    store: Store,
}

impl Repo {
    /// A repository over the store.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    // ---- endpoints -------------------------------------------------------

    /// Stores a new endpoint inside `tx`.
    pub async fn insert_endpoint(
        &self,
        tx: &mut Transaction<'static, Any>,
        endpoint: &StoredEndpoint,
    ) -> Result<(), RepoError> {
        let existing = sqlx::query(
            "SELECT id FROM endpoints WHERE org_id = $1 AND subject = $2 AND channel = $3 AND address = $4",
        )
        .bind(endpoint.org.clone())
        .bind(endpoint.subject.clone())
        .bind(endpoint.channel.as_str())
        .bind(endpoint.address.clone())
        .fetch_optional(&mut **tx)
        .await?;
        if existing.is_some() {
            return Err(RepoError::Duplicate);
        }
        let sql = format!(
            "INSERT INTO endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(endpoint.id.clone())
            .bind(endpoint.org.clone())
            .bind(endpoint.subject.clone())
            .bind(endpoint.channel.as_str())
            .bind(endpoint.address.clone())
            .bind(endpoint.secret.clone())
            .bind(endpoint.verified_at)
            .bind(endpoint.code_hash.clone())
            .bind(endpoint.code_expires_at)
            .bind(endpoint.code_attempts)
            .bind(endpoint.quiet_hours_start.clone())
            .bind(endpoint.quiet_hours_end.clone())
            .bind(endpoint.time_zone.clone())
            .bind(endpoint.registered_by.clone())
            .bind(endpoint.created_at)
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            // Two registrations racing: the second is a duplicate.
            Err(error) if is_unique_violation(&error) => Err(RepoError::Duplicate),
            Err(error) => Err(error.into()),
        }
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: &str) -> Result<Option<StoredEndpoint>, RepoError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_owned()).fetch_optional(self.store.pool()).await?;
        row.map(|row| endpoint_from_row(&row)).transpose()
    }

    /// A subject's endpoints, oldest first; `None` lists the whole org.
    pub async fn endpoints(&self, org: &str, subject: Option<&str>) -> Result<Vec<StoredEndpoint>, RepoError> {
        let rows = match subject {
            Some(subject) => {
                let sql = format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE org_id = $1 AND subject = $2 ORDER BY created_at, id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(org.to_owned())
                    .bind(subject.to_owned())
                    .fetch_all(self.store.pool())
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE org_id = $1 ORDER BY subject, created_at, id"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org.to_owned()).fetch_all(self.store.pool()).await?
            }
        };
        rows.iter().map(endpoint_from_row).collect()
    }

    /// A subject's verified endpoints, read inside `tx`.
    pub async fn verified_endpoints(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &str,
        subject: &str,
    ) -> Result<Vec<StoredEndpoint>, RepoError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE org_id = $1 AND subject = $2 AND verified_at IS NOT NULL \
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(org.to_owned())
            .bind(subject.to_owned())
            .fetch_all(&mut **tx)
            .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    /// Records a wrong code.
    pub async fn count_wrong_code(&self, id: &str) -> Result<(), RepoError> {
        sqlx::query("UPDATE endpoints SET code_attempts = code_attempts + 1 WHERE id = $1")
            .bind(id.to_owned())
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Marks an endpoint verified and forgets its code.
    pub async fn mark_verified(&self, id: &str, at: i64) -> Result<(), RepoError> {
        sqlx::query(
            "UPDATE endpoints SET verified_at = $1, code_hash = '', code_expires_at = NULL WHERE id = $2 AND verified_at IS NULL",
        )
        .bind(at)
        .bind(id.to_owned())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Deletes an endpoint. Its pending deliveries fail at once, so an alert
    /// waiting only on it is reported not reached instead of hanging.
    pub async fn delete_endpoint(&self, outbox: &Outbox, id: &str, now: i64) -> Result<(), RepoError> {
        let mut tx = self.store.begin_write().await?;
        let rows = sqlx::query(
            "SELECT DISTINCT escalation_id, attempt FROM deliveries WHERE endpoint_id = $1 AND state = 'pending' \
             AND purpose = 'alert' ORDER BY escalation_id, attempt",
        )
        .bind(id.to_owned())
        .fetch_all(&mut *tx)
        .await?;
        let mut alerts = Vec::new();
        for row in rows {
            let escalation: Option<String> = row.try_get("escalation_id")?;
            let attempt: Option<i64> = row.try_get("attempt")?;
            if let (Some(escalation), Some(attempt)) = (escalation, attempt) {
                let attempt = u32::try_from(attempt).map_err(|_| corrupt("deliveries.attempt"))?;
                // Alert first, then its deliveries: the order `record` locks in.
                self.lock_alert(&mut tx, &escalation, attempt).await?;
                alerts.push((escalation, attempt));
            }
        }
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', last_error = 'the endpoint was deleted', claim = NULL, \
             claimed_until = NULL WHERE endpoint_id = $1 AND state = 'pending'",
        )
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM endpoints WHERE id = $1").bind(id.to_owned()).execute(&mut *tx).await?;
        for (escalation, attempt) in alerts {
            self.settle_alert(&mut tx, outbox, &escalation, attempt, now).await?;
        }
        outbox.commit(tx).await?;
        Ok(())
    }

    // ---- alerts and the delivery queue ----------------------------------

    /// Records an alert for (escalation, attempt); `false` when it exists:
    /// this attempt was alerted before and nothing more is sent.
    pub async fn insert_alert(
        &self,
        tx: &mut Transaction<'_, Any>,
        alert: &NewAlert,
        now: i64,
    ) -> Result<bool, RepoError> {
        let inserted = sqlx::query(
            "INSERT INTO alerts (escalation_id, attempt, step, org_id, patient_id, recipient, level, ack_deadline, state, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9) ON CONFLICT (escalation_id, attempt) DO NOTHING",
        )
        .bind(alert.escalation_id.clone())
        .bind(i64::from(alert.attempt))
        .bind(i64::from(alert.step))
        .bind(alert.org.clone())
        .bind(alert.patient.clone())
        .bind(alert.recipient.clone())
        .bind(alert.level.clone())
        .bind(alert.ack_deadline)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Queues a delivery; `false` when the same notification was already
    /// queued for the endpoint.
    pub async fn insert_delivery(
        &self,
        tx: &mut Transaction<'_, Any>,
        delivery: &NewDelivery,
    ) -> Result<bool, RepoError> {
        let (escalation, step, attempt) = match &delivery.alert {
            Some(alert) => {
                (Some(alert.escalation.clone()), Some(i64::from(alert.step)), Some(i64::from(alert.attempt)))
            }
            None => (None, None, None),
        };
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, purpose, dedup_key, escalation_id, step, attempt, org_id, patient_id, recipient, \
             endpoint_id, channel, message, state, attempts, next_attempt_at, queued_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', 0, $13, $14, '') \
             ON CONFLICT (dedup_key, endpoint_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(delivery.purpose.as_str())
        .bind(delivery.dedup_key.clone())
        .bind(escalation)
        .bind(step)
        .bind(attempt)
        .bind(delivery.org.clone())
        .bind(delivery.patient.clone())
        .bind(delivery.recipient.clone())
        .bind(delivery.endpoint_id.clone())
        .bind(delivery.channel.as_str())
        .bind(delivery.message.clone())
        .bind(delivery.not_before)
        .bind(delivery.queued_at)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Marks an alert not reached and enqueues `NotificationFailed`.
    pub async fn fail_alert(
        &self,
        tx: &mut Transaction<'_, Any>,
        outbox: &Outbox,
        alert: &NewAlert,
        errors: Vec<String>,
        now: i64,
    ) -> Result<(), RepoError> {
        let updated = sqlx::query(
            "UPDATE alerts SET state = 'failed', decided_at = $1 WHERE escalation_id = $2 AND attempt = $3 AND state = 'pending'",
        )
        .bind(now)
        .bind(alert.escalation_id.clone())
        .bind(i64::from(alert.attempt))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(());
        }
        let failed = events::NotificationFailed {
            escalation_id: Some(common::EscalationId { value: alert.escalation_id.clone() }),
            step: alert.step,
            recipient: alert.recipient.clone(),
            errors,
            attempt: Some(alert.attempt),
        };
        let event = outbox.envelope(
            &parse_org(&alert.org)?,
            &parse_patient(&alert.patient)?,
            Payload::NotificationFailed(failed),
        );
        outbox.enqueue(tx, topics::NOTIFICATIONS, &event).await?;
        Ok(())
    }

    /// Calls off what is still pending for an escalation (acknowledged or
    /// resolved): its alerts and their deliveries.
    pub async fn cancel_escalation(&self, tx: &mut Transaction<'_, Any>, escalation: &str) -> Result<u64, RepoError> {
        // Alerts first, then their deliveries: the order `record` locks in.
        sqlx::query("UPDATE alerts SET state = 'cancelled' WHERE escalation_id = $1 AND state = 'pending'")
            .bind(escalation.to_owned())
            .execute(&mut **tx)
            .await?;
        let cancelled = sqlx::query(
            "UPDATE deliveries SET state = 'cancelled', claim = NULL, claimed_until = NULL \
             WHERE escalation_id = $1 AND state = 'pending'",
        )
        .bind(escalation.to_owned())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(cancelled)
    }

    /// Forgets every claim: on SQLite one process owns the file, so claims
    /// left when it starts belong to a process that died.
    pub async fn release_all_claims(&self) -> Result<u64, RepoError> {
        let released = sqlx::query(
            "UPDATE deliveries SET claim = NULL, claimed_until = NULL WHERE state = 'pending' AND claim IS NOT NULL",
        )
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(released)
    }

    /// Claims up to `limit` due deliveries until `lease_until`. On
    /// PostgreSQL rows other workers are claiming are skipped (`SKIP
    /// LOCKED`); on SQLite the write transaction serialises claimers.
    pub async fn claim(&self, now: i64, lease_until: i64, limit: u32, token: &str) -> Result<Vec<Claimed>, RepoError> {
        let tx = self.store.begin_write().await?;
        self.claim_in(tx, now, lease_until, limit, token).await
    }

    /// Claims up to `limit` deliveries due now, each for `lease`. The clock
    /// is read once the write turn is ours, so a delivery queued (with
    /// `not_before` = its commit's now) while this claim waited its turn is
    /// due to it, not left for the next pass. On SQLite, where writers take
    /// turns, a read first checks that anything is due, so a pass that finds
    /// nothing never holds up a writer.
    pub async fn claim_due(&self, lease: Duration, limit: u32, token: &str) -> Result<Vec<Claimed>, RepoError> {
        if self.store.backend() == Backend::Sqlite {
            let now = unix_micros(SystemTime::now());
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
                 AND (claimed_until IS NULL OR claimed_until < $2) LIMIT 1",
            )
            .bind(now)
            .bind(now)
            .fetch_optional(self.store.pool())
            .await?;
            if due.is_none() {
                return Ok(Vec::new());
            }
        }
        let tx = self.store.begin_write().await?;
        let now = SystemTime::now();
        self.claim_in(tx, unix_micros(now), unix_micros(now + lease), limit, token).await
    }

    async fn claim_in(
        &self,
        mut tx: Transaction<'static, Any>,
        now: i64,
        lease_until: i64,
        limit: u32,
        token: &str,
    ) -> Result<Vec<Claimed>, RepoError> {
        let lock = match self.store.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until < $2) ORDER BY next_attempt_at, id LIMIT $3{lock}"
        );
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        for id in &ids {
            sqlx::query("UPDATE deliveries SET claim = $1, claimed_until = $2 WHERE id = $3")
                .bind(token.to_owned())
                .bind(lease_until)
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query(
            "SELECT id, purpose, dedup_key, escalation_id, step, attempt, org_id, patient_id, recipient, endpoint_id, \
             channel, message, attempts, queued_at, claim FROM deliveries WHERE claim = $1 AND state = 'pending' \
             ORDER BY next_attempt_at, id",
        )
        .bind(token.to_owned())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(claimed_from_row).collect()
    }

    /// Records the outcome of an attempt on a claimed delivery, with its
    /// events, in one transaction. An in-app delivery writes its inbox row
    /// in the same transaction, so it happens exactly once.
    pub async fn record(
        &self,
        outbox: &Outbox,
        claimed: &Claimed,
        outcome: &Outcome,
        inbox: Option<(&str, &str)>,
        now: i64,
    ) -> Result<Recorded, RepoError> {
        let mut tx = self.store.begin_write().await?;
        if let Some(alert) = &claimed.alert {
            self.lock_alert(&mut tx, &alert.escalation, alert.attempt).await?;
        }
        // Verification codes are not kept once their delivery is decided.
        let keep_message = claimed.purpose != Purpose::Verification;
        let (sql, error, at) = match outcome {
            Outcome::Delivered => (
                "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = $1, last_error = $2, \
                 claim = NULL, claimed_until = NULL, message = CASE WHEN $3 THEN message ELSE '' END \
                 WHERE id = $4 AND claim = $5 AND state = 'pending'",
                String::new(),
                now,
            ),
            Outcome::Retry { at, error } => (
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, claim = NULL, \
                 claimed_until = NULL, message = CASE WHEN $3 THEN message ELSE message END \
                 WHERE id = $4 AND claim = $5 AND state = 'pending'",
                error.clone(),
                *at,
            ),
            Outcome::Failed { error } => (
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1, next_attempt_at = $1, last_error = $2, \
                 claim = NULL, claimed_until = NULL, message = CASE WHEN $3 THEN message ELSE '' END \
                 WHERE id = $4 AND claim = $5 AND state = 'pending'",
                error.clone(),
                now,
            ),
            Outcome::Defer { at } => (
                "UPDATE deliveries SET next_attempt_at = $1, last_error = $2, claim = NULL, claimed_until = NULL, \
                 message = CASE WHEN $3 THEN message ELSE message END \
                 WHERE id = $4 AND claim = $5 AND state = 'pending'",
                "deferred until quiet hours end".to_owned(),
                *at,
            ),
            Outcome::Cancel => (
                "UPDATE deliveries SET state = 'cancelled', next_attempt_at = $1, last_error = $2, claim = NULL, \
                 claimed_until = NULL, message = CASE WHEN $3 THEN message ELSE '' END \
                 WHERE id = $4 AND claim = $5 AND state = 'pending'",
                "no longer needed".to_owned(),
                now,
            ),
        };
        let updated = sqlx::query(sql)
            .bind(at)
            .bind(error)
            .bind(keep_message)
            .bind(claimed.id.clone())
            .bind(claimed.claim.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Ok(Recorded::Lost);
        }
        let mut changed_inbox = None;
        if let (Outcome::Delivered, Some((title, body))) = (outcome, inbox) {
            sqlx::query(
                "INSERT INTO inbox_notifications (id, org_id, subject, kind, title, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(claimed.id.clone())
            .bind(claimed.org.clone())
            .bind(claimed.recipient.clone())
            .bind(claimed.purpose.as_str())
            .bind(title.to_owned())
            .bind(body.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            changed_inbox = Some((claimed.org.clone(), claimed.recipient.clone()));
        }
        if let Some(alert) = &claimed.alert {
            match outcome {
                Outcome::Delivered => {
                    let delivered = events::NotificationDelivered {
                        escalation_id: Some(common::EscalationId { value: alert.escalation.clone() }),
                        step: alert.step,
                        recipient: claimed.recipient.clone(),
                        channel: claimed.channel.to_pb() as i32,
                        delivered_at: Some(from_unix_micros(now).into()),
                        attempt: Some(alert.attempt),
                    };
                    let event = outbox.envelope(
                        &parse_org(&claimed.org)?,
                        &parse_patient(&claimed.patient)?,
                        Payload::NotificationDelivered(delivered),
                    );
                    outbox.enqueue(&mut tx, topics::NOTIFICATIONS, &event).await?;
                    sqlx::query(
                        "UPDATE alerts SET state = 'delivered', decided_at = $1 \
                         WHERE escalation_id = $2 AND attempt = $3 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(alert.escalation.clone())
                    .bind(i64::from(alert.attempt))
                    .execute(&mut *tx)
                    .await?;
                }
                Outcome::Failed { .. } => {
                    self.settle_alert(&mut tx, outbox, &alert.escalation, alert.attempt, now).await?
                }
                Outcome::Retry { .. } | Outcome::Defer { .. } | Outcome::Cancel => {}
            }
        }
        outbox.commit(tx).await?;
        Ok(Recorded::Stored { inbox: changed_inbox })
    }

    /// Serialises deciding an alert's fate across workers (PostgreSQL); on
    /// SQLite the write transaction already does.
    async fn lock_alert(&self, tx: &mut Transaction<'_, Any>, escalation: &str, attempt: u32) -> Result<(), RepoError> {
        if self.store.backend() == Backend::Postgres {
            sqlx::query("SELECT state FROM alerts WHERE escalation_id = $1 AND attempt = $2 FOR UPDATE")
                .bind(escalation.to_owned())
                .bind(i64::from(attempt))
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// When no delivery of a still-pending alert is pending any more and
    /// none was delivered, the alert was not reached: `NotificationFailed`.
    async fn settle_alert(
        &self,
        tx: &mut Transaction<'_, Any>,
        outbox: &Outbox,
        escalation: &str,
        attempt: u32,
        now: i64,
    ) -> Result<(), RepoError> {
        let row = sqlx::query(
            "SELECT step, org_id, patient_id, recipient, level, ack_deadline, state FROM alerts \
             WHERE escalation_id = $1 AND attempt = $2",
        )
        .bind(escalation.to_owned())
        .bind(i64::from(attempt))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let state: String = row.try_get("state")?;
        if state != "pending" {
            return Ok(());
        }
        let rows = sqlx::query(
            "SELECT endpoint_id, channel, state, last_error FROM deliveries WHERE escalation_id = $1 AND attempt = $2 \
             ORDER BY id",
        )
        .bind(escalation.to_owned())
        .bind(i64::from(attempt))
        .fetch_all(&mut **tx)
        .await?;
        let mut errors = Vec::new();
        for delivery in &rows {
            let state: String = delivery.try_get("state")?;
            match state.as_str() {
                "pending" | "delivered" => return Ok(()),
                _ => {
                    let channel: String = delivery.try_get("channel")?;
                    let endpoint: String = delivery.try_get("endpoint_id")?;
                    let error: String = delivery.try_get("last_error")?;
                    errors.push(format!("{channel} endpoint {endpoint}: {error}"));
                }
            }
        }
        let step: i64 = row.try_get("step")?;
        let alert = NewAlert {
            escalation_id: escalation.to_owned(),
            step: u32::try_from(step).map_err(|_| corrupt("alerts.step"))?,
            attempt,
            org: row.try_get("org_id")?,
            patient: row.try_get("patient_id")?,
            recipient: row.try_get("recipient")?,
            level: row.try_get("level")?,
            ack_deadline: row.try_get("ack_deadline")?,
        };
        self.fail_alert(tx, outbox, &alert, errors, now).await
    }

    /// The state of an alert (escalation, attempt), if there is one.
    pub async fn alert_state(&self, escalation: &str, attempt: u32) -> Result<Option<String>, RepoError> {
        let state = sqlx::query_scalar("SELECT state FROM alerts WHERE escalation_id = $1 AND attempt = $2")
            .bind(escalation.to_owned())
            .bind(i64::from(attempt))
            .fetch_optional(self.store.pool())
            .await?;
        Ok(state)
    }

    // ---- in-app inbox ----------------------------------------------------

    /// The highest inbox position of a subject (0 when empty).
    pub async fn inbox_head(&self, org: &str, subject: &str) -> Result<i64, RepoError> {
        let head: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM inbox_notifications WHERE org_id = $1 AND subject = $2")
                .bind(org.to_owned())
                .bind(subject.to_owned())
                .fetch_one(self.store.pool())
                .await?;
        Ok(head.unwrap_or(0))
    }

    /// A subject's inbox items after `after`, plus (when `unshown_upto` is
    /// set) those at or before it that no stream has shown yet; in order.
    pub async fn inbox_items(
        &self,
        org: &str,
        subject: &str,
        after: i64,
        unshown_upto: Option<i64>,
    ) -> Result<Vec<InboxItem>, RepoError> {
        let rows = sqlx::query(
            "SELECT seq, id, kind, title, body, created_at FROM inbox_notifications \
             WHERE org_id = $1 AND subject = $2 AND (seq > $3 OR (streamed_at IS NULL AND seq <= $4)) \
             ORDER BY seq LIMIT $5",
        )
        .bind(org.to_owned())
        .bind(subject.to_owned())
        .bind(after)
        .bind(unshown_upto.unwrap_or(i64::MIN))
        .bind(INBOX_PAGE)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InboxItem {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    title: row.try_get("title")?,
                    body: row.try_get("body")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Notes that a stream showed an item.
    pub async fn mark_streamed(&self, seq: i64, now: i64) -> Result<(), RepoError> {
        sqlx::query("UPDATE inbox_notifications SET streamed_at = $1 WHERE seq = $2 AND streamed_at IS NULL")
            .bind(now)
            .bind(seq)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    // ---- retention -------------------------------------------------------

    /// Deletes deliveries that ended and were queued before
    /// `deliveries_before`, and in-app messages created before
    /// `in_app_before` (unix micros); returns how many of each.
    pub async fn prune(&self, deliveries_before: i64, in_app_before: i64) -> Result<(u64, u64), RepoError> {
        let mut tx = self.store.begin_write().await?;
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE state <> 'pending' AND queued_at < $1")
            .bind(deliveries_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let in_app = sqlx::query("DELETE FROM inbox_notifications WHERE created_at < $1")
            .bind(in_app_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((deliveries, in_app))
    }

    // ---- projections and reminders ---------------------------------------

    /// The org of a patient, as careplans announced it.
    pub async fn patient_org(&self, tx: &mut Transaction<'_, Any>, patient: &str) -> Result<Option<String>, RepoError> {
        Ok(sqlx::query_scalar("SELECT org_id FROM patients WHERE id = $1")
            .bind(patient.to_owned())
            .fetch_optional(&mut **tx)
            .await?)
    }

    /// Records that a patient answered an instrument at `at` (keeps the latest).
    pub async fn project_measure_done(
        &self,
        tx: &mut Transaction<'_, Any>,
        patient: &str,
        instrument: &str,
        at: i64,
    ) -> Result<(), RepoError> {
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT done_at FROM measures_done WHERE patient_id = $1 AND instrument = $2")
                .bind(patient.to_owned())
                .bind(instrument.to_owned())
                .fetch_optional(&mut **tx)
                .await?;
        if stored.is_some_and(|stored| stored >= at) {
            return Ok(());
        }
        sqlx::query("DELETE FROM measures_done WHERE patient_id = $1 AND instrument = $2")
            .bind(patient.to_owned())
            .bind(instrument.to_owned())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO measures_done (patient_id, instrument, done_at) VALUES ($1, $2, $3)")
            .bind(patient.to_owned())
            .bind(instrument.to_owned())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Records that a patient completed a task at `at` (keeps the latest).
    pub async fn project_task_done(
        &self,
        tx: &mut Transaction<'_, Any>,
        patient: &str,
        care_plan: &str,
        task: &str,
        at: i64,
    ) -> Result<(), RepoError> {
        let stored: Option<i64> = sqlx::query_scalar(
            "SELECT done_at FROM tasks_done WHERE patient_id = $1 AND care_plan_id = $2 AND task_id = $3",
        )
        .bind(patient.to_owned())
        .bind(care_plan.to_owned())
        .bind(task.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
        if stored.is_some_and(|stored| stored >= at) {
            return Ok(());
        }
        sqlx::query("DELETE FROM tasks_done WHERE patient_id = $1 AND care_plan_id = $2 AND task_id = $3")
            .bind(patient.to_owned())
            .bind(care_plan.to_owned())
            .bind(task.to_owned())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO tasks_done (patient_id, care_plan_id, task_id, done_at) VALUES ($1, $2, $3, $4)")
            .bind(patient.to_owned())
            .bind(care_plan.to_owned())
            .bind(task.to_owned())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Patients with at least one active plan.
    pub async fn patients_with_active_plans(&self) -> Result<Vec<ReminderPatient>, RepoError> {
        let rows = sqlx::query(
            "SELECT DISTINCT p.id, p.org_id, p.time_zone FROM patients p JOIN care_plans c ON c.patient_id = p.id \
             WHERE c.status = $1 ORDER BY p.id",
        )
        .bind(plans::CarePlanStatus::Active.as_str_name().to_owned())
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReminderPatient {
                    id: row.try_get("id")?,
                    org: row.try_get("org_id")?,
                    time_zone: row.try_get("time_zone")?,
                })
            })
            .collect()
    }

    /// A patient's time zone, as careplans announced it.
    pub async fn patient_time_zone(&self, patient: &str) -> Result<Option<String>, RepoError> {
        let zone = sqlx::query_scalar("SELECT time_zone FROM patients WHERE id = $1")
            .bind(patient.to_owned())
            .fetch_optional(self.store.pool())
            .await?;
        Ok(zone)
    }

    /// A patient's active plans.
    pub async fn active_plans(&self, patient: &str) -> Result<Vec<plans::CarePlan>, RepoError> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM care_plans WHERE patient_id = $1 AND status = $2 ORDER BY id")
                .bind(patient.to_owned())
                .bind(plans::CarePlanStatus::Active.as_str_name().to_owned())
                .fetch_all(self.store.pool())
                .await?;
        rows.iter()
            .map(|body| plans::CarePlan::decode(body.as_slice()).map_err(|_| corrupt("care_plans.body")))
            .collect()
    }

    /// What a patient has done.
    pub async fn done(&self, patient: &str) -> Result<Done, RepoError> {
        let mut done = Done::default();
        let rows = sqlx::query("SELECT instrument, done_at FROM measures_done WHERE patient_id = $1")
            .bind(patient.to_owned())
            .fetch_all(self.store.pool())
            .await?;
        for row in rows {
            done.measures.insert(row.try_get("instrument")?, from_unix_micros(row.try_get("done_at")?));
        }
        let rows = sqlx::query("SELECT care_plan_id, task_id, done_at FROM tasks_done WHERE patient_id = $1")
            .bind(patient.to_owned())
            .fetch_all(self.store.pool())
            .await?;
        for row in rows {
            done.tasks.insert(
                (row.try_get("care_plan_id")?, row.try_get("task_id")?),
                from_unix_micros(row.try_get("done_at")?),
            );
        }
        Ok(done)
    }

    /// Records that an occurrence is being reminded; `false` when it was before.
    pub async fn insert_reminder(
        &self,
        tx: &mut Transaction<'_, Any>,
        reminder: &NewReminder<'_>,
        now: i64,
    ) -> Result<bool, RepoError> {
        let inserted = sqlx::query(
            "INSERT INTO reminders (care_plan_id, item_id, occurrence_at, patient_id, instrument, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (care_plan_id, item_id, occurrence_at) DO NOTHING",
        )
        .bind(reminder.care_plan.to_owned())
        .bind(reminder.item.to_owned())
        .bind(reminder.occurrence_at)
        .bind(reminder.patient.to_owned())
        .bind(reminder.instrument.to_owned())
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Whether the reminded item was done at or after its occurrence.
    pub async fn reminder_done(&self, care_plan: &str, item: &str, occurrence_at: i64) -> Result<bool, RepoError> {
        let row = sqlx::query(
            "SELECT patient_id, instrument FROM reminders WHERE care_plan_id = $1 AND item_id = $2 AND occurrence_at = $3",
        )
        .bind(care_plan.to_owned())
        .bind(item.to_owned())
        .bind(occurrence_at)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(false) };
        let patient: String = row.try_get("patient_id")?;
        let instrument: String = row.try_get("instrument")?;
        let done_at: Option<i64> = if instrument.is_empty() {
            sqlx::query_scalar(
                "SELECT done_at FROM tasks_done WHERE patient_id = $1 AND care_plan_id = $2 AND task_id = $3",
            )
            .bind(patient)
            .bind(care_plan.to_owned())
            .bind(item.to_owned())
            .fetch_optional(self.store.pool())
            .await?
        } else {
            sqlx::query_scalar("SELECT done_at FROM measures_done WHERE patient_id = $1 AND instrument = $2")
                .bind(patient)
                .bind(instrument)
                .fetch_optional(self.store.pool())
                .await?
        };
        Ok(done_at.is_some_and(|at| at >= occurrence_at))
    }

    /// Counts deliveries of a notification (for tests and diagnostics).
    pub async fn deliveries_of(&self, dedup_key: &str) -> Result<Vec<(String, String, i64)>, RepoError> {
        let rows = sqlx::query("SELECT endpoint_id, state, attempts FROM deliveries WHERE dedup_key = $1 ORDER BY id")
            .bind(dedup_key.to_owned())
            .fetch_all(self.store.pool())
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("endpoint_id")?, row.try_get("state")?, row.try_get("attempts")?)))
            .collect()
    }
}

fn claimed_from_row(row: &AnyRow) -> Result<Claimed, RepoError> {
    let purpose: String = row.try_get("purpose")?;
    let channel: String = row.try_get("channel")?;
    let escalation: Option<String> = row.try_get("escalation_id")?;
    let step: Option<i64> = row.try_get("step")?;
    let attempt: Option<i64> = row.try_get("attempt")?;
    let alert = match (escalation, step, attempt) {
        (Some(escalation), Some(step), Some(attempt)) => Some(AlertRef {
            escalation,
            step: u32::try_from(step).map_err(|_| corrupt("deliveries.step"))?,
            attempt: u32::try_from(attempt).map_err(|_| corrupt("deliveries.attempt"))?,
        }),
        _ => None,
    };
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Claimed {
        id: row.try_get("id")?,
        purpose: Purpose::parse(&purpose).ok_or_else(|| corrupt("deliveries.purpose"))?,
        dedup_key: row.try_get("dedup_key")?,
        alert,
        org: row.try_get("org_id")?,
        patient: row.try_get("patient_id")?,
        recipient: row.try_get("recipient")?,
        endpoint_id: row.try_get("endpoint_id")?,
        channel: channel.parse().map_err(|_| corrupt("deliveries.channel"))?,
        message: row.try_get("message")?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("deliveries.attempts"))?,
        queued_at: row.try_get("queued_at")?,
        claim: row.try_get::<Option<String>, _>("claim")?.unwrap_or_default(),
    })
}

fn parse_org(org: &str) -> Result<OrgId, RepoError> {
    org.parse().map_err(|_| corrupt("org_id"))
}

fn parse_patient(patient: &str) -> Result<PatientId, RepoError> {
    patient.parse().map_err(|_| corrupt("patient_id"))
}

/// Now, as stored.
pub fn now_micros() -> i64 {
    unix_micros(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIGRATIONS;

    fn delivery(key: &str, endpoint: &str, not_before: i64) -> NewDelivery {
        NewDelivery {
            purpose: Purpose::Alert,
            dedup_key: key.to_owned(),
            alert: Some(AlertRef {
                escalation: "0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11".to_owned(),
                step: 0,
                attempt: 0,
            }),
            org: "north".to_owned(),
            patient: PatientId::new().to_string(),
            recipient: "dr-primary".to_owned(),
            endpoint_id: endpoint.to_owned(),
            channel: Channel::Webhook,
            message: "{}".to_owned(),
            not_before,
            queued_at: not_before,
        }
    }

    async fn queue(repo: &Repo, delivery: &NewDelivery) -> bool {
        let mut tx = repo.store().begin_write().await.unwrap();
        let inserted = repo.insert_delivery(&mut tx, delivery).await.unwrap();
        tx.commit().await.unwrap();
        inserted
    }

    tandem_store::store_test!(
        the_same_notification_is_queued_once_per_endpoint,
        &MIGRATIONS,
        crate::SCHEMA,
        |store| async move {
            let repo = Repo::new(store);
            assert!(queue(&repo, &delivery("alert:e:0", "ep-1", 0)).await);
            assert!(!queue(&repo, &delivery("alert:e:0", "ep-1", 0)).await, "a duplicate is not queued");
            assert!(queue(&repo, &delivery("alert:e:0", "ep-2", 0)).await, "another endpoint is");
            assert!(queue(&repo, &delivery("alert:e:1", "ep-1", 0)).await, "another attempt is");
            assert_eq!(repo.deliveries_of("alert:e:0").await.unwrap().len(), 2);
        }
    );

    tandem_store::store_test!(
        claims_exclude_each_other_until_the_lease_expires,
        &MIGRATIONS,
        crate::SCHEMA,
        |store| async move {
            let repo = Repo::new(store);
            let outbox = Outbox::new(repo.store().clone(), "notifications");
            tandem_events::install(repo.store()).await.unwrap();
            queue(&repo, &delivery("alert:e:0", "ep-1", 100)).await;
            queue(&repo, &delivery("alert:e:0", "ep-2", 100)).await;
            queue(&repo, &delivery("alert:e:0", "ep-3", 5_000)).await;
            // Not due yet at 50.
            assert!(repo.claim(50, 1_000, 10, "a").await.unwrap().is_empty());
            let first = repo.claim(200, 1_000, 10, "a").await.unwrap();
            assert_eq!(first.len(), 2, "the two due rows");
            assert!(first.iter().all(|claimed| claimed.claim == "a"));
            // Another worker gets nothing while the lease lasts...
            assert!(repo.claim(900, 2_000, 10, "b").await.unwrap().is_empty());
            // ...and takes them over once it expired (the first worker died).
            let second = repo.claim(1_001, 3_000, 10, "b").await.unwrap();
            assert_eq!(second.len(), 2);
            // The first worker's late outcome no longer counts.
            let late = repo.record(&outbox, &first[0], &Outcome::Delivered, None, 1_100).await.unwrap();
            assert_eq!(late, Recorded::Lost);
            let owned = second.iter().find(|c| c.id == first[0].id).unwrap();
            let stored = repo.record(&outbox, owned, &Outcome::Delivered, None, 1_200).await.unwrap();
            assert_eq!(stored, Recorded::Stored { inbox: None });
            // Delivered rows are never claimed again.
            assert!(repo.claim(10_000, 20_000, 10, "c").await.unwrap().iter().all(|c| c.id != owned.id));
            // On restart (SQLite) every claim is released at once.
            repo.claim(30_000, 40_000, 10, "d").await.unwrap();
            repo.release_all_claims().await.unwrap();
            assert!(!repo.claim(30_001, 40_000, 10, "e").await.unwrap().is_empty());
        }
    );

    tandem_store::store_test!(
        a_claim_by_the_clock_takes_what_is_due_and_leaves_what_is_not,
        &MIGRATIONS,
        crate::SCHEMA,
        |store| async move {
            let repo = Repo::new(store);
            let lease = Duration::from_secs(30);
            assert!(repo.claim_due(lease, 10, "a").await.unwrap().is_empty(), "nothing queued");
            let now = unix_micros(SystemTime::now());
            queue(&repo, &delivery("alert:e:0", "ep-1", now)).await;
            queue(&repo, &delivery("alert:e:0", "ep-2", now + 3_600_000_000)).await;
            let claimed = repo.claim_due(lease, 10, "a").await.unwrap();
            assert_eq!(claimed.iter().map(|c| c.endpoint_id.as_str()).collect::<Vec<_>>(), ["ep-1"]);
            assert!(repo.claim_due(lease, 10, "b").await.unwrap().is_empty(), "claimed, and the other is not due");
        }
    );
}
