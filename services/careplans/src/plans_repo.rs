//! SQL for care plans, care teams and safety plans.

use std::time::SystemTime;

use prost::Message;
use sqlx::Row;
use tandem_proto::careplans::v1 as pb;
use tandem_proto::common::v1 as common;
use tandem_proto::ids::{CarePlanId, OrgId, PatientId};
use tandem_store::paging::Cursor;
use tandem_store::{from_unix_micros, is_unique_violation, unix_micros};

use crate::plan::PlanContent;
use crate::repo::{Repo, RepoError};
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;

/// The outcome of a create with an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    /// Made now.
    New(T),
    /// Made by an earlier request with the same key.
    Replayed(T),
}

impl<T> Created<T> {
    /// The value either way.
    pub fn into_inner(self) -> T {
        match self {
            Created::New(value) | Created::Replayed(value) => value,
        }
    }
}

/// A stored care plan with the org it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The plan's organisation.
    pub org: OrgId,
    /// The plan at its current version.
    pub plan: pb::CarePlan,
}

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// `expected_version` is not the current version.
    #[error("care plan is at version {current}, not {expected}; reload it and apply your change again")]
    Stale {
        /// The current version.
        current: u32,
        /// What the caller expected.
        expected: u32,
    },
    /// The status change is not allowed.
    #[error("a care plan cannot move from {from} to {to}")]
    Transition {
        /// From.
        from: &'static str,
        /// To.
        to: &'static str,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<UpdateError> for tandem_server::ServiceError {
    fn from(error: UpdateError) -> Self {
        match error {
            UpdateError::Stale { .. } => Self::Stale(error.to_string()),
            UpdateError::Transition { .. } => Self::precondition(error.to_string()),
            UpdateError::Repo(error) => error.into(),
        }
    }
}

impl From<UpdateError> for tonic::Status {
    fn from(error: UpdateError) -> Self {
        tandem_server::ServiceError::from(error).into()
    }
}

impl From<tandem_store::StoreError> for UpdateError {
    fn from(error: tandem_store::StoreError) -> Self {
        UpdateError::Repo(error.into())
    }
}

impl From<sqlx::Error> for UpdateError {
    fn from(error: sqlx::Error) -> Self {
        UpdateError::Repo(error.into())
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn now_micros() -> SystemTime {
    // Stored with microsecond precision; keep what a reader will see.
    from_unix_micros(unix_micros(SystemTime::now()))
}

fn decode<T: Message + Default>(bytes: &[u8], what: &str) -> Result<T, RepoError> {
    T::decode(bytes).map_err(|_| RepoError::Corrupt(what.to_owned()))
}

impl Repo {
    /// Creates a care plan at version 1, or replays an earlier create by the
    /// same key for the same patient with the same request (`fingerprint`).
    /// The same key with a different request is `IdempotencyConflict`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_plan(
        &self,
        org: &OrgId,
        patient: &PatientId,
        idempotency_key: &str,
        fingerprint: &str,
        content: PlanContent,
        status: pb::CarePlanStatus,
        actor: common::Actor,
    ) -> Result<Created<pb::CarePlan>, RepoError> {
        // Keys are scoped to the patient: the same key used for another
        // patient is another request, never a replay of that patient's plan.
        let scoped_key = format!("{patient}/{idempotency_key}");
        if let Some(existing) = self.plan_by_key(org, &scoped_key, fingerprint).await? {
            return Ok(Created::Replayed(existing));
        }
        let now = now_micros();
        let plan = pb::CarePlan {
            id: Some(CarePlanId::new().into()),
            patient_id: Some((*patient).into()),
            version: 1,
            status: status as i32,
            title: content.title,
            goals: content.goals,
            tasks: content.tasks,
            measures: content.measures,
            updated_by: Some(actor),
            updated_at: Some(timestamp(now)),
        };
        let id = plan.id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        let body = plan.encode_to_vec();
        let mut tx = self.store().begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO care_plans (id, org_id, patient_id, version, status, body, created_at, updated_at, idempotency_key, request_hash) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.clone())
        .bind(org.to_string())
        .bind(patient.to_string())
        .bind(status.as_str_name().to_owned())
        .bind(body.clone())
        .bind(unix_micros(now))
        .bind(unix_micros(now))
        .bind(scoped_key.clone())
        .bind(fingerprint.to_owned())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                tx.rollback().await?;
                return match self.plan_by_key(org, &scoped_key, fingerprint).await? {
                    Some(existing) => Ok(Created::Replayed(existing)),
                    None => Err(error.into()),
                };
            }
            Err(error) => return Err(error.into()),
        }
        sqlx::query("INSERT INTO care_plan_versions (care_plan_id, version, body) VALUES ($1, 1, $2)")
            .bind(id)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        let changed = events::CarePlanChanged { care_plan: Some(plan.clone()) };
        self.enqueue(&mut tx, org, patient, Payload::CarePlanChanged(changed)).await?;
        self.outbox().commit(tx).await.map_err(RepoError::from)?;
        Ok(Created::New(plan))
    }

    /// The plan an earlier create with this scoped key made, if its request
    /// was the same; a different request is `IdempotencyConflict`.
    async fn plan_by_key(
        &self,
        org: &OrgId,
        scoped_key: &str,
        fingerprint: &str,
    ) -> Result<Option<pb::CarePlan>, RepoError> {
        let row = sqlx::query("SELECT body, request_hash FROM care_plans WHERE org_id = $1 AND idempotency_key = $2")
            .bind(org.to_string())
            .bind(scoped_key.to_owned())
            .fetch_optional(self.store().pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: Option<String> = row.try_get("request_hash")?;
        if !tandem_server::idempotency::same_request(stored.as_deref(), fingerprint) {
            return Err(RepoError::IdempotencyConflict);
        }
        decode(&row.try_get::<Vec<u8>, _>("body")?, "care_plans.body").map(Some)
    }

    /// A care plan by id.
    pub async fn plan(&self, id: &CarePlanId) -> Result<Option<StoredPlan>, RepoError> {
        let row = sqlx::query("SELECT org_id, body FROM care_plans WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.store().pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let org: String = row.try_get("org_id")?;
        Ok(Some(StoredPlan {
            org: org.parse().map_err(|_| RepoError::Corrupt("care_plans.org_id".into()))?,
            plan: decode(&row.try_get::<Vec<u8>, _>("body")?, "care_plans.body")?,
        }))
    }

    /// Replaces a plan's content and status, making the next version.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_plan(
        &self,
        org: &OrgId,
        patient: &PatientId,
        id: &CarePlanId,
        expected_version: u32,
        content: PlanContent,
        status: pb::CarePlanStatus,
        actor: common::Actor,
    ) -> Result<pb::CarePlan, UpdateError> {
        let mut tx = self.store().begin_write().await?;
        let row = sqlx::query("SELECT body FROM care_plans WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Err(UpdateError::Repo(RepoError::Corrupt("care plan vanished".into())));
        };
        let current: pb::CarePlan = decode(&row.try_get::<Vec<u8>, _>("body")?, "care_plans.body")?;
        if current.version != expected_version {
            return Err(UpdateError::Stale { current: current.version, expected: expected_version });
        }
        if !crate::plan::transition_allowed(current.status(), status) {
            return Err(UpdateError::Transition { from: current.status().as_str_name(), to: status.as_str_name() });
        }
        let now = now_micros();
        let next = pb::CarePlan {
            version: current.version + 1,
            status: status as i32,
            title: content.title,
            goals: content.goals,
            tasks: content.tasks,
            measures: content.measures,
            updated_by: Some(actor),
            updated_at: Some(timestamp(now)),
            ..current
        };
        let body = next.encode_to_vec();
        // The version check in the WHERE clause makes a concurrent update lose cleanly.
        let updated = sqlx::query(
            "UPDATE care_plans SET version = $1, status = $2, body = $3, updated_at = $4 WHERE id = $5 AND version = $6",
        )
        .bind(i64::from(next.version))
        .bind(status.as_str_name().to_owned())
        .bind(body.clone())
        .bind(unix_micros(now))
        .bind(id.to_string())
        .bind(i64::from(expected_version))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(UpdateError::Stale { current: expected_version + 1, expected: expected_version });
        }
        sqlx::query("INSERT INTO care_plan_versions (care_plan_id, version, body) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(i64::from(next.version))
            .bind(body)
            .execute(&mut *tx)
            .await?;
        let changed = events::CarePlanChanged { care_plan: Some(next.clone()) };
        self.enqueue(&mut tx, org, patient, Payload::CarePlanChanged(changed)).await?;
        self.outbox().commit(tx).await.map_err(RepoError::from)?;
        Ok(next)
    }

    /// A page of a patient's plans, newest first.
    pub async fn list_plans(
        &self,
        patient: &PatientId,
        include_drafts: bool,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<pb::CarePlan>, Option<Cursor>), RepoError> {
        let (at, id) = cursor.map(|c| (c.at, c.id.clone())).unwrap_or((i64::MAX, "~".to_owned()));
        let rows = sqlx::query(
            "SELECT id, created_at, status, body FROM care_plans \
             WHERE patient_id = $1 AND (created_at < $2 OR (created_at = $3 AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5",
        )
        .bind(patient.to_string())
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.store().pool())
        .await?;
        let mut plans = Vec::new();
        let mut last = None;
        for row in rows.iter().take(limit as usize) {
            let status: String = row.try_get("status")?;
            last = Some(Cursor { at: row.try_get("created_at")?, id: row.try_get("id")? });
            if !include_drafts && status == pb::CarePlanStatus::Draft.as_str_name() {
                continue;
            }
            plans.push(decode(&row.try_get::<Vec<u8>, _>("body")?, "care_plans.body")?);
        }
        let next = if rows.len() > limit as usize { last } else { None };
        Ok((plans, next))
    }

    /// Sets a patient's care team, making its next version.
    pub async fn set_care_team(
        &self,
        org: &OrgId,
        patient: &PatientId,
        members: Vec<pb::CareTeamMember>,
    ) -> Result<pb::CareTeam, RepoError> {
        let mut tx = self.store().begin_write().await?;
        let row = sqlx::query("SELECT version FROM care_teams WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let version = match row {
            Some(row) => row.try_get::<i64, _>("version")? + 1,
            None => 1,
        };
        let now = unix_micros(SystemTime::now());
        if version == 1 {
            sqlx::query("INSERT INTO care_teams (patient_id, version, updated_at) VALUES ($1, 1, $2)")
                .bind(patient.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("UPDATE care_teams SET version = $1, updated_at = $2 WHERE patient_id = $3")
                .bind(version)
                .bind(now)
                .bind(patient.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM care_team_members WHERE patient_id = $1")
            .bind(patient.to_string())
            .execute(&mut *tx)
            .await?;
        for (position, member) in members.iter().enumerate() {
            sqlx::query(
                "INSERT INTO care_team_members (patient_id, position, clinician_id, role, display_name) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(patient.to_string())
            .bind(position as i64)
            .bind(member.clinician_id.clone())
            .bind(member.role().as_str_name().to_owned())
            .bind(member.display_name.clone())
            .execute(&mut *tx)
            .await?;
        }
        let team = pb::CareTeam { patient_id: Some((*patient).into()), members, version: version as u32 };
        let changed = events::CareTeamChanged { care_team: Some(team.clone()) };
        self.enqueue(&mut tx, org, patient, Payload::CareTeamChanged(changed)).await?;
        self.outbox().commit(tx).await?;
        Ok(team)
    }

    /// A patient's care team, if one was set.
    pub async fn care_team(&self, patient: &PatientId) -> Result<Option<pb::CareTeam>, RepoError> {
        let row = sqlx::query("SELECT version FROM care_teams WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_optional(self.store().pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let version: i64 = row.try_get("version")?;
        let rows = sqlx::query(
            "SELECT clinician_id, role, display_name FROM care_team_members WHERE patient_id = $1 ORDER BY position",
        )
        .bind(patient.to_string())
        .fetch_all(self.store().pool())
        .await?;
        let mut members = Vec::with_capacity(rows.len());
        for row in rows {
            let role: String = row.try_get("role")?;
            let role = pb::CareTeamRole::from_str_name(&role)
                .ok_or_else(|| RepoError::Corrupt("care_team_members.role".into()))?;
            members.push(pb::CareTeamMember {
                clinician_id: row.try_get("clinician_id")?,
                role: role as i32,
                display_name: row.try_get("display_name")?,
            });
        }
        Ok(Some(pb::CareTeam { patient_id: Some((*patient).into()), members, version: version as u32 }))
    }

    /// Whether the clinician is on the patient's care team.
    pub async fn on_care_team(&self, patient: &PatientId, clinician: &str) -> Result<bool, RepoError> {
        let row = sqlx::query("SELECT 1 AS one FROM care_team_members WHERE patient_id = $1 AND clinician_id = $2")
            .bind(patient.to_string())
            .bind(clinician.to_owned())
            .fetch_optional(self.store().pool())
            .await?;
        Ok(row.is_some())
    }

    /// The patients whose care team includes the clinician.
    pub async fn caseload(&self, clinician: &str) -> Result<Vec<PatientId>, RepoError> {
        let rows = sqlx::query("SELECT DISTINCT patient_id FROM care_team_members WHERE clinician_id = $1")
            .bind(clinician.to_owned())
            .fetch_all(self.store().pool())
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("patient_id")?;
                id.parse().map_err(|_| RepoError::Corrupt("care_team_members.patient_id".into()))
            })
            .collect()
    }

    /// Saves the next version of a patient's safety plan.
    pub async fn put_safety_plan(
        &self,
        org: &OrgId,
        patient: &PatientId,
        expected_version: u32,
        plan: pb::SafetyPlan,
    ) -> Result<pb::SafetyPlan, UpdateError> {
        let mut tx = self.store().begin_write().await?;
        let row = sqlx::query("SELECT MAX(version) AS version FROM safety_plan_versions WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let current = row.try_get::<Option<i64>, _>("version")?.unwrap_or(0) as u32;
        if current != expected_version {
            return Err(UpdateError::Stale { current, expected: expected_version });
        }
        let now = now_micros();
        let saved = pb::SafetyPlan {
            patient_id: Some((*patient).into()),
            version: current + 1,
            updated_at: Some(timestamp(now)),
            ..plan
        };
        let inserted = sqlx::query(
            "INSERT INTO safety_plan_versions (patient_id, version, body, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(patient.to_string())
        .bind(i64::from(saved.version))
        .bind(saved.encode_to_vec())
        .bind(unix_micros(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(UpdateError::Stale { current: current + 1, expected: expected_version });
            }
            Err(error) => return Err(error.into()),
        }
        let changed = events::SafetyPlanChanged { safety_plan: Some(saved.clone()) };
        self.enqueue(&mut tx, org, patient, Payload::SafetyPlanChanged(changed)).await?;
        self.outbox().commit(tx).await.map_err(RepoError::from)?;
        Ok(saved)
    }

    /// The current version of a patient's safety plan.
    pub async fn safety_plan(&self, patient: &PatientId) -> Result<Option<pb::SafetyPlan>, RepoError> {
        let row =
            sqlx::query("SELECT body FROM safety_plan_versions WHERE patient_id = $1 ORDER BY version DESC LIMIT 1")
                .bind(patient.to_string())
                .fetch_optional(self.store().pool())
                .await?;
        row.map(|row| decode(&row.try_get::<Vec<u8>, _>("body")?, "safety_plan_versions.body")).transpose()
    }
}
