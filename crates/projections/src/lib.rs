//! The careplans projection: what careplans announces on the bus, kept by
//! every service that needs it, in the service's own database.
//!
//! careplans owns patients, care teams, care plans and safety plans; the other
//! services keep a local copy fed by its events (`PatientEnrolled`,
//! `CareTeamChanged`, `CarePlanChanged`, `SafetyPlanChanged`). This crate is
//! the one place that copy is written. Each write is one upsert that only
//! replaces a stored row with a newer version (`ON CONFLICT … DO UPDATE …
//! WHERE version <`, which SQLite and PostgreSQL both accept), so a
//! redelivered or reordered event never rolls a projection back.
//!
//! A service says which tables it keeps with [`Keep`]; the tables have one
//! shape everywhere:
//!
//! ```sql
//! patients (id PRIMARY KEY, org_id, time_zone)
//! care_team_versions (patient_id PRIMARY KEY, version)
//! care_team_members (patient_id, position, clinician_id, role, display_name)
//! care_plans (id PRIMARY KEY, patient_id, version, status, body)   -- body: the encoded CarePlan
//! safety_plans (patient_id PRIMARY KEY, version, body)             -- body: the encoded SafetyPlan
//! ```

use prost::Message;
use sqlx::{Any, Row, Transaction};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;

/// Why a projection write failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event lacks something the projection needs: it will never apply,
    /// so a consumer should not retry it.
    #[error("{0}")]
    Invalid(&'static str),
    /// The database failed; a retry may pass.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Whether retrying the same event can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

/// A consumer retries a database error and dead-letters an event that can
/// never apply.
impl From<Error> for tandem_events::HandlerError {
    fn from(error: Error) -> Self {
        if error.is_permanent() { Self::permanent(error) } else { Self::transient(error) }
    }
}

/// Which parts of the projection a service keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// `patients`: the org and time zone of each enrolled patient.
    pub patients: bool,
    /// `care_team_versions` and `care_team_members`: the chain alerts climb.
    pub care_teams: bool,
    /// `care_plans`: every plan's latest version.
    pub care_plans: bool,
    /// `safety_plans`: each patient's latest safety plan.
    pub safety_plans: bool,
}

impl Keep {
    /// Every table.
    pub const ALL: Self = Self { patients: true, care_teams: true, care_plans: true, safety_plans: true };
}

/// What applying one event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event is not part of the projection, or the service does not keep
    /// the table it would change.
    Ignored,
    /// A newer or equal version is already stored.
    Stale,
    /// The patient's org and time zone were stored.
    Patient,
    /// The care team was replaced; `previous_chain` is the chain before, in
    /// order (clinician ids).
    CareTeam {
        /// The chain as it was.
        previous_chain: Vec<String>,
    },
    /// A care plan version was stored.
    CarePlan,
    /// A safety plan version was stored.
    SafetyPlan,
}

/// Applies one careplans event to the tables the service keeps, inside the
/// consumer's transaction.
pub async fn apply(tx: &mut Transaction<'_, Any>, keep: Keep, event: &EventEnvelope) -> Result<Applied, Error> {
    match &event.payload {
        Some(Payload::PatientEnrolled(enrolled)) if keep.patients => {
            let patient =
                id_of(event.patient_id.as_ref().map(|id| id.value.as_str()), "PatientEnrolled without a patient id")?;
            let org = id_of(event.org_id.as_ref().map(|id| id.value.as_str()), "PatientEnrolled without an org id")?;
            patient_row(tx, patient, org, &enrolled.time_zone).await?;
            Ok(Applied::Patient)
        }
        Some(Payload::CareTeamChanged(changed)) if keep.care_teams => match &changed.care_team {
            Some(team) => care_team(tx, team).await,
            None => Err(Error::Invalid("CareTeamChanged without a care team")),
        },
        Some(Payload::CarePlanChanged(changed)) if keep.care_plans => match &changed.care_plan {
            Some(plan) => care_plan(tx, plan).await,
            None => Err(Error::Invalid("CarePlanChanged without a care plan")),
        },
        Some(Payload::SafetyPlanChanged(changed)) if keep.safety_plans => match &changed.safety_plan {
            Some(plan) => safety_plan(tx, plan).await,
            None => Err(Error::Invalid("SafetyPlanChanged without a safety plan")),
        },
        _ => Ok(Applied::Ignored),
    }
}

/// Records a patient's org and time zone (the latest enrolment wins).
pub async fn patient_row(
    tx: &mut Transaction<'_, Any>,
    patient: &str,
    org: &str,
    time_zone: &str,
) -> Result<(), Error> {
    if patient.is_empty() {
        return Err(Error::Invalid("a patient without an id"));
    }
    sqlx::query(
        "INSERT INTO patients (id, org_id, time_zone) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET org_id = excluded.org_id, time_zone = excluded.time_zone",
    )
    .bind(patient.to_owned())
    .bind(org.to_owned())
    .bind(time_zone.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces the care team if this version is newer than the stored one.
pub async fn care_team(tx: &mut Transaction<'_, Any>, team: &plans::CareTeam) -> Result<Applied, Error> {
    let patient = id_of(team.patient_id.as_ref().map(|id| id.value.as_str()), "a care team without a patient id")?;
    let newer = sqlx::query(
        "INSERT INTO care_team_versions (patient_id, version) VALUES ($1, $2) \
         ON CONFLICT (patient_id) DO UPDATE SET version = excluded.version \
         WHERE care_team_versions.version < excluded.version",
    )
    .bind(patient.to_owned())
    .bind(i64::from(team.version))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if newer == 0 {
        return Ok(Applied::Stale);
    }
    let previous_chain = chain(tx, patient).await?;
    sqlx::query("DELETE FROM care_team_members WHERE patient_id = $1")
        .bind(patient.to_owned())
        .execute(&mut **tx)
        .await?;
    for (position, member) in team.members.iter().enumerate() {
        sqlx::query(
            "INSERT INTO care_team_members (patient_id, position, clinician_id, role, display_name) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(patient.to_owned())
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(member.clinician_id.clone())
        .bind(member.role().as_str_name().to_owned())
        .bind(member.display_name.clone())
        .execute(&mut **tx)
        .await?;
    }
    Ok(Applied::CareTeam { previous_chain })
}

/// Stores a care plan version if it is newer than the stored one.
pub async fn care_plan(tx: &mut Transaction<'_, Any>, plan: &plans::CarePlan) -> Result<Applied, Error> {
    let id = id_of(plan.id.as_ref().map(|id| id.value.as_str()), "a care plan without an id")?;
    let patient = id_of(plan.patient_id.as_ref().map(|id| id.value.as_str()), "a care plan without a patient id")?;
    let stored = sqlx::query(
        "INSERT INTO care_plans (id, patient_id, version, status, body) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id, version = excluded.version, \
         status = excluded.status, body = excluded.body \
         WHERE care_plans.version < excluded.version",
    )
    .bind(id.to_owned())
    .bind(patient.to_owned())
    .bind(i64::from(plan.version))
    .bind(plan.status().as_str_name().to_owned())
    .bind(plan.encode_to_vec())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(if stored == 0 { Applied::Stale } else { Applied::CarePlan })
}

/// Stores a safety plan version if it is newer than the stored one.
pub async fn safety_plan(tx: &mut Transaction<'_, Any>, plan: &plans::SafetyPlan) -> Result<Applied, Error> {
    let patient = id_of(plan.patient_id.as_ref().map(|id| id.value.as_str()), "a safety plan without a patient id")?;
    let stored = sqlx::query(
        "INSERT INTO safety_plans (patient_id, version, body) VALUES ($1, $2, $3) \
         ON CONFLICT (patient_id) DO UPDATE SET version = excluded.version, body = excluded.body \
         WHERE safety_plans.version < excluded.version",
    )
    .bind(patient.to_owned())
    .bind(i64::from(plan.version))
    .bind(plan.encode_to_vec())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(if stored == 0 { Applied::Stale } else { Applied::SafetyPlan })
}

/// The chain: the care team's clinician ids in the order alerts climb.
pub async fn chain(tx: &mut Transaction<'_, Any>, patient: &str) -> Result<Vec<String>, Error> {
    let rows = sqlx::query("SELECT clinician_id FROM care_team_members WHERE patient_id = $1 ORDER BY position")
        .bind(patient.to_owned())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.iter().map(|row| row.try_get("clinician_id")).collect::<Result<_, _>>()?)
}

fn id_of<'a>(id: Option<&'a str>, missing: &'static str) -> Result<&'a str, Error> {
    id.filter(|id| !id.is_empty()).ok_or(Error::Invalid(missing))
}
