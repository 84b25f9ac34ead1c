//! The triage service's SQL: projections, history, assessments, the
//! escalation state machine's rows and the rule configuration. Portable
//! across SQLite and PostgreSQL; functions that take a transaction run
//! inside the caller's (the event handler's or the engine's).

use prost::Message;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;
use tandem_store::{Store, StoreError, from_unix_micros};

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A stored row does not parse: the database was changed outside Tandem.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The outbox refused an event.
    #[error(transparent)]
    Events(#[from] tandem_events::Error),
    /// A row changed between reading and writing it in one transaction; the
    /// caller retries against what is stored now.
    #[error("{0} changed meanwhile")]
    Conflict(String),
    /// A dead-lettered crisis event carries too little to page anyone for
    /// it (no patient, no org, no crisis contact): no retry can fix that.
    #[error("cannot page for a dead letter: {0}")]
    Unpageable(String),
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
            RepoError::Conflict(ref what) => Self::Stale(format!("{what} changed meanwhile; reload it and try again")),
            RepoError::Corrupt(_) | RepoError::Unpageable(_) => Self::internal(error),
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

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Raised; nobody alerted yet (only while the first alert is written).
    Raised,
    /// A step of the chain has been alerted and has until the deadline.
    Notified,
    /// A human has it.
    Acknowledged,
    /// Closed with an outcome.
    Resolved,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Raised => "raised",
            State::Notified => "notified",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
        }
    }

    fn parse(text: &str) -> Result<Self, RepoError> {
        match text {
            "raised" => Ok(State::Raised),
            "notified" => Ok(State::Notified),
            "acknowledged" => Ok(State::Acknowledged),
            "resolved" => Ok(State::Resolved),
            _ => Err(corrupt("escalations.state")),
        }
    }

    /// The wire state.
    pub fn to_pb(self) -> pb::EscalationState {
        match self {
            State::Raised => pb::EscalationState::Raised,
            State::Notified => pb::EscalationState::Notified,
            State::Acknowledged => pb::EscalationState::Acknowledged,
            State::Resolved => pb::EscalationState::Resolved,
        }
    }
}

/// One escalation row.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    /// Its id.
    pub id: EscalationId,
    /// The org.
    pub org: OrgId,
    /// The patient.
    pub patient: PatientId,
    /// Current level.
    pub level: pb::RiskLevel,
    /// Level when raised.
    pub first_level: pb::RiskLevel,
    /// State.
    pub state: State,
    /// Index into the chain; at or past its end is the crisis contact.
    pub step: u32,
    /// Counts the alerts sent: a new step, a re-alert at a higher level and
    /// a hand-back each take the next one. Notifications de-duplicates on
    /// (escalation, attempt), so each is delivered once per channel.
    pub attempt: u32,
    /// Who is alerted now.
    pub current_recipient: String,
    /// When the current step must acknowledge by (unix micros).
    pub ack_deadline: Option<i64>,
    /// When it was raised (unix micros).
    pub raised_at: i64,
    /// When a human acknowledged (unix micros).
    pub acknowledged_at: Option<i64>,
    /// Who acknowledged.
    pub acknowledged_by: Option<String>,
    /// When it was resolved (unix micros).
    pub resolved_at: Option<i64>,
    /// The outcome.
    pub outcome: Option<String>,
    /// For an escalation opened because a crisis event could never be
    /// processed: the dead letter's key. It alerts only the crisis contact.
    pub dead_letter: Option<String>,
}

const ESCALATION_COLUMNS: &str = "id, org_id, patient_id, level, first_level, state, step, current_recipient, ack_deadline, raised_at, acknowledged_at, acknowledged_by, resolved_at, outcome, attempt, dead_letter";

fn level_of(value: i64, what: &str) -> Result<pb::RiskLevel, RepoError> {
    i32::try_from(value).ok().and_then(|v| pb::RiskLevel::try_from(v).ok()).ok_or_else(|| corrupt(what))
}

fn escalation_from_row(row: &AnyRow) -> Result<Escalation, RepoError> {
    let id: String = row.try_get("id")?;
    let org: String = row.try_get("org_id")?;
    let patient: String = row.try_get("patient_id")?;
    let state: String = row.try_get("state")?;
    Ok(Escalation {
        id: id.parse().map_err(|_| corrupt("escalations.id"))?,
        org: org.parse().map_err(|_| corrupt("escalations.org_id"))?,
        patient: patient.parse().map_err(|_| corrupt("escalations.patient_id"))?,
        level: level_of(row.try_get("level")?, "escalations.level")?,
        first_level: level_of(row.try_get("first_level")?, "escalations.first_level")?,
        state: State::parse(&state)?,
        step: u32::try_from(row.try_get::<i64, _>("step")?).map_err(|_| corrupt("escalations.step"))?,
        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).map_err(|_| corrupt("escalations.attempt"))?,
        current_recipient: row.try_get("current_recipient")?,
        ack_deadline: row.try_get("ack_deadline")?,
        raised_at: row.try_get("raised_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
        resolved_at: row.try_get("resolved_at")?,
        outcome: row.try_get("outcome")?,
        dead_letter: row.try_get("dead_letter")?,
    })
}

/// Rows in a transaction.
pub mod tx {
    use super::*;

    /// The chain: care-team members in order.
    pub async fn chain(tx: &mut Transaction<'_, Any>, patient: &PatientId) -> Result<Vec<String>, RepoError> {
        tandem_projections::chain(tx, &patient.to_string()).await.map_err(|error| match error {
            tandem_projections::Error::Database(error) => RepoError::from(error),
            invalid => RepoError::Corrupt(invalid.to_string()),
        })
    }

    /// Earlier PHQ-9 totals, oldest first.
    pub async fn phq9_history(tx: &mut Transaction<'_, Any>, patient: &PatientId) -> Result<Vec<(i64, u8)>, RepoError> {
        let rows = sqlx::query("SELECT at, total FROM phq9_scores WHERE patient_id = $1 ORDER BY at")
            .bind(patient.to_string())
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|row| {
                let total: i64 = row.try_get("total")?;
                Ok((row.try_get("at")?, u8::try_from(total).map_err(|_| corrupt("phq9_scores.total"))?))
            })
            .collect()
    }

    /// Records a PHQ-9 total (once per check-in).
    pub async fn add_phq9(
        tx: &mut Transaction<'_, Any>,
        patient: &PatientId,
        check_in: &str,
        total: u8,
        at: i64,
    ) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM phq9_scores WHERE patient_id = $1 AND check_in_id = $2")
            .bind(patient.to_string())
            .bind(check_in.to_owned())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO phq9_scores (patient_id, check_in_id, total, at) VALUES ($1, $2, $3, $4)")
            .bind(patient.to_string())
            .bind(check_in.to_owned())
            .bind(i64::from(total))
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Sets the missed-in-a-row count and returns it.
    pub async fn set_missed(tx: &mut Transaction<'_, Any>, patient: &PatientId, missed: u32) -> Result<u32, RepoError> {
        sqlx::query("DELETE FROM engagement WHERE patient_id = $1")
            .bind(patient.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO engagement (patient_id, missed_in_a_row) VALUES ($1, $2)")
            .bind(patient.to_string())
            .bind(i64::from(missed))
            .execute(&mut **tx)
            .await?;
        Ok(missed)
    }

    /// Measures missed in a row so far.
    pub async fn missed(tx: &mut Transaction<'_, Any>, patient: &PatientId) -> Result<u32, RepoError> {
        let row = sqlx::query("SELECT missed_in_a_row FROM engagement WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        Ok(match row {
            Some(row) => u32::try_from(row.try_get::<i64, _>("missed_in_a_row")?).unwrap_or(0),
            None => 0,
        })
    }

    /// Stores an assessment.
    pub async fn insert_assessment(
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        assessment: &pb::RiskAssessment,
        at: i64,
    ) -> Result<(), RepoError> {
        sqlx::query("INSERT INTO assessments (id, org_id, patient_id, level, assessed_at, body) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(assessment.assessment_id.clone())
            .bind(org.to_string())
            .bind(patient.to_string())
            .bind(i64::from(assessment.level))
            .bind(at)
            .bind(assessment.encode_to_vec())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The patient's open (not resolved) escalation, if any.
    pub async fn open_escalation(
        tx: &mut Transaction<'_, Any>,
        patient: &PatientId,
    ) -> Result<Option<Escalation>, RepoError> {
        let sql = format!(
            "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE patient_id = $1 AND state <> 'resolved' AND dead_letter IS NULL ORDER BY raised_at DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(patient.to_string()).fetch_optional(&mut **tx).await?;
        row.map(|row| escalation_from_row(&row)).transpose()
    }

    /// The escalation opened for a dead letter, if there is one.
    pub async fn dead_letter_escalation(
        tx: &mut Transaction<'_, Any>,
        key: &str,
    ) -> Result<Option<Escalation>, RepoError> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE dead_letter = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(key).fetch_optional(&mut **tx).await?;
        row.map(|row| escalation_from_row(&row)).transpose()
    }

    /// The org of a patient, as careplans announced it, read inside the
    /// transaction.
    pub async fn patient_org(tx: &mut Transaction<'_, Any>, patient: &PatientId) -> Result<Option<OrgId>, RepoError> {
        let org: Option<String> = sqlx::query_scalar("SELECT org_id FROM patients WHERE id = $1")
            .bind(patient.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        org.map(|org| org.parse().map_err(|_| corrupt("patients.org_id"))).transpose()
    }

    /// One escalation, read inside the transaction.
    pub async fn escalation(tx: &mut Transaction<'_, Any>, id: &EscalationId) -> Result<Option<Escalation>, RepoError> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&mut **tx).await?;
        row.map(|row| escalation_from_row(&row)).transpose()
    }

    /// Writes a new escalation.
    pub async fn insert_escalation(tx: &mut Transaction<'_, Any>, e: &Escalation) -> Result<(), RepoError> {
        let sql = format!(
            "INSERT INTO escalations ({ESCALATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(e.id.to_string())
            .bind(e.org.to_string())
            .bind(e.patient.to_string())
            .bind(e.level as i64)
            .bind(e.first_level as i64)
            .bind(e.state.as_str())
            .bind(i64::from(e.step))
            .bind(e.current_recipient.clone())
            .bind(e.ack_deadline)
            .bind(e.raised_at)
            .bind(e.acknowledged_at)
            .bind(e.acknowledged_by.clone())
            .bind(e.resolved_at)
            .bind(e.outcome.clone())
            .bind(i64::from(e.attempt))
            .bind(e.dead_letter.clone())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Writes a changed escalation if nobody changed it since `seen` (same
    /// state, step, attempt and level); returns whether it was written.
    pub async fn update_escalation(
        tx: &mut Transaction<'_, Any>,
        e: &Escalation,
        seen: &Escalation,
    ) -> Result<bool, RepoError> {
        let done = sqlx::query(
            "UPDATE escalations SET level = $1, state = $2, step = $3, current_recipient = $4, ack_deadline = $5, \
             acknowledged_at = $6, acknowledged_by = $7, resolved_at = $8, outcome = $9, attempt = $10 \
             WHERE id = $11 AND state = $12 AND step = $13 AND attempt = $14 AND level = $15",
        )
        .bind(e.level as i64)
        .bind(e.state.as_str())
        .bind(i64::from(e.step))
        .bind(e.current_recipient.clone())
        .bind(e.ack_deadline)
        .bind(e.acknowledged_at)
        .bind(e.acknowledged_by.clone())
        .bind(e.resolved_at)
        .bind(e.outcome.clone())
        .bind(i64::from(e.attempt))
        .bind(e.id.to_string())
        .bind(seen.state.as_str())
        .bind(i64::from(seen.step))
        .bind(i64::from(seen.attempt))
        .bind(seen.level as i64)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends to an escalation's timeline.
    pub async fn add_timeline(
        tx: &mut Transaction<'_, Any>,
        id: &EscalationId,
        at: i64,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), RepoError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM escalation_timeline WHERE escalation_id = $1")
            .bind(id.to_string())
            .fetch_one(&mut **tx)
            .await?;
        let seq: i64 = row.try_get("n")?;
        sqlx::query(
            "INSERT INTO escalation_timeline (escalation_id, seq, at, kind, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(seq + 1)
        .bind(at)
        .bind(kind.to_owned())
        .bind(actor.to_owned())
        .bind(detail.to_owned())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The org's rules as stored, if an admin set them.
    pub async fn org_rules(tx: &mut Transaction<'_, Any>, org: &OrgId) -> Result<Option<pb::TriageRules>, RepoError> {
        let row = sqlx::query("SELECT body FROM org_rules WHERE org_id = $1")
            .bind(org.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|row| decode_rules(&row)).transpose()
    }

    /// The patient's overrides, if set.
    pub async fn patient_overrides(
        tx: &mut Transaction<'_, Any>,
        patient: &PatientId,
    ) -> Result<Option<pb::TriageRules>, RepoError> {
        let row = sqlx::query("SELECT body FROM patient_overrides WHERE patient_id = $1")
            .bind(patient.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|row| decode_rules(&row)).transpose()
    }

    fn decode_rules(row: &AnyRow) -> Result<pb::TriageRules, RepoError> {
        let body: Vec<u8> = row.try_get("body")?;
        pb::TriageRules::decode(body.as_slice()).map_err(|_| corrupt("rules.body"))
    }

    /// Stores the org's rules.
    pub async fn set_org_rules(
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        rules: &pb::TriageRules,
    ) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM org_rules WHERE org_id = $1").bind(org.to_string()).execute(&mut **tx).await?;
        sqlx::query("INSERT INTO org_rules (org_id, body) VALUES ($1, $2)")
            .bind(org.to_string())
            .bind(rules.encode_to_vec())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Stores a patient's overrides.
    pub async fn set_patient_overrides(
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        rules: &pb::TriageRules,
    ) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM patient_overrides WHERE patient_id = $1")
            .bind(patient.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO patient_overrides (patient_id, org_id, body) VALUES ($1, $2, $3)")
            .bind(patient.to_string())
            .bind(org.to_string())
            .bind(rules.encode_to_vec())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Appends a configuration change to the audit trail.
    #[allow(clippy::too_many_arguments)]
    pub async fn audit_config(
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        at: i64,
        actor: &tandem_proto::common::v1::Actor,
        patient: Option<&PatientId>,
        before: &pb::TriageRules,
        after: &pb::TriageRules,
        reason: &str,
    ) -> Result<(), RepoError> {
        sqlx::query(
            "INSERT INTO config_audit (id, org_id, at, actor_subject, actor_role, patient_id, before_rules, after_rules, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tandem_proto::ids::EventId::new().to_string())
        .bind(org.to_string())
        .bind(at)
        .bind(actor.subject.clone())
        .bind(actor.role().as_str_name().to_owned())
        .bind(patient.map(|p| p.to_string()))
        .bind(before.encode_to_vec())
        .bind(after.encode_to_vec())
        .bind(reason.to_owned())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Reads outside a transaction.
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

    /// One escalation.
    pub async fn escalation(&self, id: &EscalationId) -> Result<Option<Escalation>, RepoError> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(self.store.pool()).await?;
        row.map(|row| escalation_from_row(&row)).transpose()
    }

    /// The open escalations of an org.
    pub async fn open_escalations(&self, org: &OrgId) -> Result<Vec<Escalation>, RepoError> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE org_id = $1 AND state <> 'resolved'");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org.to_string()).fetch_all(self.store.pool()).await?;
        rows.iter().map(escalation_from_row).collect()
    }

    /// Every escalation of an org, for statistics.
    pub async fn all_escalations(&self, org: &OrgId) -> Result<Vec<Escalation>, RepoError> {
        let sql = format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE org_id = $1");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org.to_string()).fetch_all(self.store.pool()).await?;
        rows.iter().map(escalation_from_row).collect()
    }

    /// Notified escalations whose deadline has passed at `now`, with the
    /// attempt that deadline belongs to.
    pub async fn due(&self, now: i64) -> Result<Vec<(EscalationId, u32)>, RepoError> {
        let rows = sqlx::query(
            "SELECT id, attempt FROM escalations WHERE state = 'notified' AND ack_deadline IS NOT NULL AND ack_deadline <= $1 ORDER BY ack_deadline",
        )
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let attempt: i64 = row.try_get("attempt")?;
                let attempt = u32::try_from(attempt).map_err(|_| corrupt("escalations.attempt"))?;
                Ok((id.parse().map_err(|_| corrupt("escalations.id"))?, attempt))
            })
            .collect()
    }

    /// Escalations not resolved, counted by level and state, each with
    /// when its oldest was raised (unix micros), for the metrics.
    pub async fn open_counts(&self) -> Result<Vec<(pb::RiskLevel, State, u64, i64)>, RepoError> {
        let rows = sqlx::query(
            "SELECT level, state, COUNT(*) AS open, MIN(raised_at) AS oldest FROM escalations WHERE state <> 'resolved' GROUP BY level, state",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                let open: i64 = row.try_get("open")?;
                Ok((
                    level_of(row.try_get("level")?, "escalations.level")?,
                    State::parse(&state)?,
                    u64::try_from(open).unwrap_or_default(),
                    row.try_get("oldest")?,
                ))
            })
            .collect()
    }

    /// The earliest deadline still to pass.
    pub async fn next_deadline(&self) -> Result<Option<i64>, RepoError> {
        let row = sqlx::query("SELECT MIN(ack_deadline) AS next FROM escalations WHERE state = 'notified'")
            .fetch_one(self.store.pool())
            .await?;
        Ok(row.try_get("next")?)
    }

    /// An escalation's timeline.
    pub async fn timeline(&self, id: &EscalationId) -> Result<Vec<pb::TimelineEntry>, RepoError> {
        let rows = sqlx::query(
            "SELECT at, kind, actor, detail FROM escalation_timeline WHERE escalation_id = $1 ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(pb::TimelineEntry {
                    at: Some(from_unix_micros(row.try_get("at")?).into()),
                    kind: row.try_get("kind")?,
                    actor: row.try_get("actor")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
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

    /// Patients whose care team includes the clinician.
    pub async fn caseload(&self, clinician: &str) -> Result<Vec<String>, RepoError> {
        let rows = sqlx::query("SELECT DISTINCT patient_id FROM care_team_members WHERE clinician_id = $1")
            .bind(clinician.to_owned())
            .fetch_all(self.store.pool())
            .await?;
        rows.iter().map(|row| row.try_get("patient_id").map_err(RepoError::from)).collect()
    }

    /// A page of a patient's assessments, newest first (offset paging).
    pub async fn assessments(
        &self,
        patient: &PatientId,
        offset: i64,
        limit: u32,
    ) -> Result<Vec<pb::RiskAssessment>, RepoError> {
        let rows = sqlx::query(
            "SELECT body FROM assessments WHERE patient_id = $1 ORDER BY assessed_at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(patient.to_string())
        .bind(i64::from(limit) + 1)
        .bind(offset)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.try_get("body")?;
                pb::RiskAssessment::decode(body.as_slice()).map_err(|_| corrupt("assessments.body"))
            })
            .collect()
    }

    /// A page of the org's configuration audit trail, newest first.
    pub async fn config_changes(
        &self,
        org: &OrgId,
        offset: i64,
        limit: u32,
    ) -> Result<Vec<pb::TriageConfigChange>, RepoError> {
        let rows = sqlx::query(
            "SELECT at, actor_subject, actor_role, patient_id, before_rules, after_rules, reason FROM config_audit \
             WHERE org_id = $1 ORDER BY at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(org.to_string())
        .bind(i64::from(limit) + 1)
        .bind(offset)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("actor_role")?;
                let patient: Option<String> = row.try_get("patient_id")?;
                let before: Vec<u8> = row.try_get("before_rules")?;
                let after: Vec<u8> = row.try_get("after_rules")?;
                Ok(pb::TriageConfigChange {
                    at: Some(from_unix_micros(row.try_get("at")?).into()),
                    actor: Some(tandem_proto::common::v1::Actor {
                        subject: row.try_get("actor_subject")?,
                        role: tandem_proto::common::v1::Role::from_str_name(&role).unwrap_or_default() as i32,
                    }),
                    patient_id: patient.map(|value| tandem_proto::common::v1::PatientId { value }),
                    before: Some(
                        pb::TriageRules::decode(before.as_slice()).map_err(|_| corrupt("config_audit.before"))?,
                    ),
                    after: Some(pb::TriageRules::decode(after.as_slice()).map_err(|_| corrupt("config_audit.after"))?),
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }
}
