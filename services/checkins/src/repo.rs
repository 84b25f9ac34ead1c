//! The check-ins service's SQL: check-ins, and its projections of careplans
//! events. Portable across SQLite and PostgreSQL.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use sqlx::{Any, Row, Transaction};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::events::v1 as events;
use tandem_proto::ids::{CheckInId, OrgId, PatientId};
use tandem_server::ServiceError;
use tandem_store::paging::Cursor;
use tandem_store::{Store, StoreError, from_unix_micros, is_unique_violation, unix_micros};

use crate::due::Done;

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
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
impl From<RepoError> for ServiceError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::Corrupt(_) => ServiceError::internal(error),
            RepoError::Store(error) => error.into(),
            RepoError::Events(error) => error.into(),
        }
    }
}

impl From<RepoError> for tonic::Status {
    fn from(error: RepoError) -> Self {
        ServiceError::from(error).into()
    }
}

/// A stored check-in with what the reply needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckIn {
    /// The organisation.
    pub org: OrgId,
    /// The check-in.
    pub check_in: pb::CheckIn,
    /// Crisis triggers that fired.
    pub crisis_triggers: Vec<String>,
    /// The fingerprint of the request that made it (none on rows stored
    /// before fingerprints were kept).
    pub request_hash: Option<String>,
}

/// A check-in about to be stored.
#[derive(Debug, Clone)]
pub struct NewCheckIn {
    /// The organisation.
    pub org: OrgId,
    /// The check-in (its id and time set).
    pub check_in: pb::CheckIn,
    /// The journal text.
    pub journal: String,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The request's fingerprint (tandem_server::idempotency::fingerprint).
    pub request_hash: String,
    /// Crisis triggers that fired.
    pub crisis_triggers: Vec<String>,
    /// What the assessment at submission found, for the event.
    pub facts: tandem_proto::events::v1::CheckInFacts,
}

/// A crisis signal from a refused submission, about to be stored.
#[derive(Debug, Clone)]
pub struct NewRefusedSignal {
    /// The organisation.
    pub org: OrgId,
    /// The patient.
    pub patient: PatientId,
    /// The idempotency key of the refused request, when it had a valid one.
    pub idempotency_key: Option<String>,
    /// The refused request's fingerprint, with its key.
    pub request_hash: String,
    /// The signal, as announced.
    pub signal: events::RefusedCrisisSignal,
}

/// The care-team member a new escalation pages first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstStep {
    /// Their role in the chain (unspecified for teams stored before roles were kept).
    pub role: plans::CareTeamRole,
    /// Their display name (empty when unknown).
    pub display_name: String,
}

fn corrupt(what: &str) -> RepoError {
    RepoError::Corrupt(what.to_owned())
}

/// SQL for the check-ins service.
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

    /// Stores a check-in inside `tx`. Returns the earlier check-in instead
    /// when the idempotency key was used before (and stores nothing).
    pub async fn insert_check_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        new: &NewCheckIn,
    ) -> Result<Option<StoredCheckIn>, RepoError> {
        let check_in = &new.check_in;
        let id = check_in.id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        let patient = check_in.patient_id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        let submitted_at = check_in.submitted_at.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(UNIX_EPOCH);
        let inserted = sqlx::query(
            "INSERT INTO checkins (id, org_id, patient_id, submitted_at, idempotency_key, body, journal, crisis_triggers, request_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.clone())
        .bind(new.org.to_string())
        .bind(patient.clone())
        .bind(unix_micros(submitted_at))
        .bind(new.idempotency_key.clone())
        .bind(check_in.encode_to_vec())
        .bind(new.journal.clone())
        .bind(new.crisis_triggers.join(","))
        .bind(new.request_hash.clone())
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                let existing = self.by_idempotency_key(&patient, &new.idempotency_key).await?;
                return existing.map(Some).ok_or_else(|| error.into());
            }
            Err(error) => return Err(error.into()),
        }
        for score in &check_in.scores {
            sqlx::query(
                "INSERT INTO checkin_measures (check_in_id, patient_id, instrument, total, submitted_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.clone())
            .bind(patient.clone())
            .bind(score.instrument.clone())
            .bind(score.total.map(i64::from))
            .bind(unix_micros(submitted_at))
            .execute(&mut **tx)
            .await?;
        }
        for done in &check_in.homework {
            let completed_at = done.completed_at.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(submitted_at);
            sqlx::query(
                "INSERT INTO homework_completions (check_in_id, patient_id, care_plan_id, task_id, completed_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.clone())
            .bind(patient.clone())
            .bind(done.care_plan_id.as_ref().map(|id| id.value.clone()).unwrap_or_default())
            .bind(done.task_id.clone())
            .bind(unix_micros(completed_at))
            .execute(&mut **tx)
            .await?;
        }
        Ok(None)
    }

    /// Stores a refused submission's crisis signal inside `tx`. Returns
    /// false, storing nothing, when the same refused request (same key, same
    /// body) was recorded before: a client's retry raises no second signal.
    pub async fn insert_refused_signal(
        &self,
        tx: &mut Transaction<'static, Any>,
        new: &NewRefusedSignal,
    ) -> Result<bool, RepoError> {
        let received_at = new.signal.received_at.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or(UNIX_EPOCH);
        let triggers: Vec<&str> = new.signal.signals.iter().map(|signal| signal.trigger.as_str()).collect();
        // A unique violation would abort a PostgreSQL transaction, so look
        // first; the unique constraint still settles a race.
        if let Some(key) = &new.idempotency_key {
            let seen = sqlx::query(
                "SELECT 1 AS one FROM refused_crisis_signals WHERE patient_id = $1 AND idempotency_key = $2 AND request_hash = $3",
            )
            .bind(new.patient.to_string())
            .bind(key.clone())
            .bind(new.request_hash.clone())
            .fetch_optional(&mut **tx)
            .await?;
            if seen.is_some() {
                return Ok(false);
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO refused_crisis_signals (id, org_id, patient_id, received_at, refusal, triggers, idempotency_key, request_hash, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(new.signal.signal_id.clone())
        .bind(new.org.to_string())
        .bind(new.patient.to_string())
        .bind(unix_micros(received_at))
        .bind(new.signal.refusal.clone())
        .bind(triggers.join(","))
        .bind(new.idempotency_key.clone())
        .bind(new.request_hash.clone())
        .bind(new.signal.encode_to_vec())
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            // The same refused request, recorded by a concurrent call.
            Err(error) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// The crisis signals of a patient's refused submissions, oldest first.
    pub async fn refused_signals(&self, patient: &PatientId) -> Result<Vec<events::RefusedCrisisSignal>, RepoError> {
        let rows =
            sqlx::query("SELECT body FROM refused_crisis_signals WHERE patient_id = $1 ORDER BY received_at, id")
                .bind(patient.to_string())
                .fetch_all(self.store.pool())
                .await?;
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.try_get("body")?;
                events::RefusedCrisisSignal::decode(body.as_slice()).map_err(|_| corrupt("refused_crisis_signals.body"))
            })
            .collect()
    }

    /// The member of the patient's care team a new escalation pages first,
    /// as careplans announced the team; `None` when no team is known.
    pub async fn first_step(&self, patient: &PatientId) -> Result<Option<FirstStep>, RepoError> {
        let row = sqlx::query(
            "SELECT role, display_name FROM care_team_members WHERE patient_id = $1 ORDER BY position, clinician_id LIMIT 1",
        )
        .bind(patient.to_string())
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        Ok(Some(FirstStep {
            role: plans::CareTeamRole::from_str_name(&role).unwrap_or(plans::CareTeamRole::Unspecified),
            display_name: row.try_get("display_name")?,
        }))
    }

    /// The check-in an idempotency key created.
    pub async fn by_idempotency_key(&self, patient: &str, key: &str) -> Result<Option<StoredCheckIn>, RepoError> {
        let row = sqlx::query(
            "SELECT org_id, body, crisis_triggers, request_hash FROM checkins WHERE patient_id = $1 AND idempotency_key = $2",
        )
        .bind(patient.to_owned())
        .bind(key.to_owned())
        .fetch_optional(self.store.pool())
        .await?;
        row.map(|row| stored_from_row(&row)).transpose()
    }

    /// One check-in.
    pub async fn check_in(&self, id: &CheckInId) -> Result<Option<StoredCheckIn>, RepoError> {
        let row = sqlx::query("SELECT org_id, body, crisis_triggers, request_hash FROM checkins WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|row| stored_from_row(&row)).transpose()
    }

    /// A page of a patient's check-ins in `[start, end)`, newest first.
    pub async fn list(
        &self,
        patient: &PatientId,
        start: i64,
        end: i64,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<pb::CheckIn>, Option<Cursor>), RepoError> {
        let (at, id) = cursor.map(|c| (c.at, c.id.clone())).unwrap_or((i64::MAX, "~".to_owned()));
        let rows = sqlx::query(
            "SELECT id, submitted_at, body FROM checkins \
             WHERE patient_id = $1 AND submitted_at >= $2 AND submitted_at < $3 \
             AND (submitted_at < $4 OR (submitted_at = $5 AND id < $6)) \
             ORDER BY submitted_at DESC, id DESC LIMIT $7",
        )
        .bind(patient.to_string())
        .bind(start)
        .bind(end)
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.store.pool())
        .await?;
        let mut out = Vec::new();
        let mut last = None;
        for row in rows.iter().take(limit as usize) {
            last = Some(Cursor { at: row.try_get("submitted_at")?, id: row.try_get("id")? });
            let body: Vec<u8> = row.try_get("body")?;
            out.push(pb::CheckIn::decode(body.as_slice()).map_err(|_| corrupt("checkins.body"))?);
        }
        Ok((out, if rows.len() > limit as usize { last } else { None }))
    }

    /// What the patient did: last submission per instrument, last completion per task.
    pub async fn done(&self, patient: &PatientId) -> Result<Done, RepoError> {
        let mut done = Done::default();
        let rows = sqlx::query(
            "SELECT instrument, MAX(submitted_at) AS at FROM checkin_measures WHERE patient_id = $1 GROUP BY instrument",
        )
        .bind(patient.to_string())
        .fetch_all(self.store.pool())
        .await?;
        for row in rows {
            done.measures.insert(row.try_get("instrument")?, from_unix_micros(row.try_get("at")?));
        }
        let rows = sqlx::query(
            "SELECT care_plan_id, task_id, MAX(completed_at) AS at FROM homework_completions WHERE patient_id = $1 GROUP BY care_plan_id, task_id",
        )
        .bind(patient.to_string())
        .fetch_all(self.store.pool())
        .await?;
        for row in rows {
            done.tasks
                .insert((row.try_get("care_plan_id")?, row.try_get("task_id")?), from_unix_micros(row.try_get("at")?));
        }
        Ok(done)
    }

    /// The org of a patient, as careplans announced it.
    pub async fn patient_org(&self, patient: &PatientId) -> Result<Option<OrgId>, RepoError> {
        let row = sqlx::query("SELECT org_id FROM patients WHERE id = $1")
            .bind(patient.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let org: String = row.try_get("org_id")?;
        org.parse().map(Some).map_err(|_| corrupt("patients.org_id"))
    }

    /// The patient's IANA time zone, as careplans announced it (empty when
    /// unknown).
    pub async fn time_zone(&self, patient: &PatientId) -> Result<String, RepoError> {
        let zone: Option<String> = sqlx::query_scalar("SELECT time_zone FROM patients WHERE id = $1")
            .bind(patient.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        Ok(zone.unwrap_or_default())
    }

    /// Whether the clinician is on the patient's care team.
    pub async fn on_care_team(&self, patient: &PatientId, clinician: &str) -> Result<bool, RepoError> {
        let row = sqlx::query("SELECT 1 AS one FROM care_team_members WHERE patient_id = $1 AND clinician_id = $2")
            .bind(patient.to_string())
            .bind(clinician.to_owned())
            .fetch_optional(self.store.pool())
            .await?;
        Ok(row.is_some())
    }

    /// The patient's safety plan, as careplans announced it.
    pub async fn safety_plan(&self, patient: &PatientId) -> Result<Option<plans::SafetyPlan>, RepoError> {
        let row = sqlx::query("SELECT body FROM safety_plans WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let body: Vec<u8> = row.try_get("body")?;
        plans::SafetyPlan::decode(body.as_slice()).map(Some).map_err(|_| corrupt("safety_plans.body"))
    }

    /// The patient's active care plans.
    pub async fn active_plans(&self, patient: &PatientId) -> Result<Vec<plans::CarePlan>, RepoError> {
        let rows = sqlx::query("SELECT body FROM care_plans WHERE patient_id = $1 AND status = $2")
            .bind(patient.to_string())
            .bind(plans::CarePlanStatus::Active.as_str_name().to_owned())
            .fetch_all(self.store.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.try_get("body")?;
                plans::CarePlan::decode(body.as_slice()).map_err(|_| corrupt("care_plans.body"))
            })
            .collect()
    }
}

fn stored_from_row(row: &sqlx::any::AnyRow) -> Result<StoredCheckIn, RepoError> {
    let org: String = row.try_get("org_id")?;
    let body: Vec<u8> = row.try_get("body")?;
    let triggers: String = row.try_get("crisis_triggers")?;
    Ok(StoredCheckIn {
        org: org.parse().map_err(|_| corrupt("checkins.org_id"))?,
        check_in: pb::CheckIn::decode(body.as_slice()).map_err(|_| corrupt("checkins.body"))?,
        crisis_triggers: triggers.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        request_hash: row.try_get("request_hash")?,
    })
}
