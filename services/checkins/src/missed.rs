//! The missed-measure scanner: an occurrence of a measure schedule whose
//! expiry window closed unanswered is announced once as `MeasureMissed`, so
//! triage can see disengagement.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tandem_clinical::{Schedule, Tz};

use prost::Message;
use sqlx::Row;
use tandem_events::{Outbox, topics};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{OrgId, PatientId};
use tandem_store::{is_unique_violation, unix_micros};

use crate::repo::{Repo, RepoError};

/// How often the scanner looks for expired measures.
pub const SCAN_EVERY: Duration = Duration::from_secs(60);
/// How many past occurrences of a schedule one scan considers, so a plan
/// with an old start date does not announce years of misses at once.
const LOOKBACK_OCCURRENCES: u32 = 3;

/// Expired, unanswered occurrences of one plan's measures at `now`:
/// (schedule, due at, expired at).
pub fn expired_occurrences(
    plan: &plans::CarePlan,
    last_answered: impl Fn(&str) -> Option<SystemTime>,
    zone: Tz,
    now: SystemTime,
) -> Vec<(plans::MeasureSchedule, SystemTime, SystemTime)> {
    let mut out = Vec::new();
    if plan.status() != plans::CarePlanStatus::Active {
        return out;
    }
    for measure in &plan.measures {
        let Some(recurrence) = &measure.recurrence else { continue };
        let Some(schedule) = Schedule::of(recurrence, zone) else { continue };
        let window = Duration::from_secs(u64::from(measure.expiry_window_hours) * 3600);
        for due_at in schedule.recent(now, LOOKBACK_OCCURRENCES) {
            let expired_at = due_at + window;
            if expired_at > now {
                continue;
            }
            // Answered within the occurrence's window: not missed.
            if last_answered(&measure.instrument).is_some_and(|at| at >= due_at) {
                continue;
            }
            out.push((measure.clone(), due_at, expired_at));
        }
    }
    out
}

/// One pass: announce every newly expired occurrence; returns how many.
pub async fn scan_once(repo: &Repo, outbox: &Outbox) -> Result<usize, RepoError> {
    let now = SystemTime::now();
    let rows = sqlx::query(
        "SELECT p.patient_id AS patient_id, p.body AS body, pt.org_id AS org_id, pt.time_zone AS time_zone FROM care_plans p \
         JOIN patients pt ON pt.id = p.patient_id WHERE p.status = $1",
    )
    .bind(plans::CarePlanStatus::Active.as_str_name().to_owned())
    .fetch_all(repo.store().pool())
    .await?;
    let mut announced = 0;
    for row in rows {
        let patient: String = row.try_get("patient_id")?;
        let org: String = row.try_get("org_id")?;
        let body: Vec<u8> = row.try_get("body")?;
        let zone = Schedule::zone(&row.try_get::<String, _>("time_zone")?);
        let (Ok(patient), Ok(org), Ok(plan)) =
            (patient.parse::<PatientId>(), org.parse::<OrgId>(), plans::CarePlan::decode(body.as_slice()))
        else {
            tracing::error!("skipping a corrupt care plan projection row");
            continue;
        };
        let done = repo.done(&patient).await?;
        let plan_id = plan.id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        for (measure, due_at, expired_at) in
            expired_occurrences(&plan, |code| done.measures.get(code).copied(), zone, now)
        {
            let mut tx = repo.store().begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO missed_measures (care_plan_id, schedule_id, due_at, patient_id, reported_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(plan_id.clone())
            .bind(measure.schedule_id.clone())
            .bind(unix_micros(due_at))
            .bind(patient.to_string())
            .bind(unix_micros(now))
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // Announced before (or by another replica just now).
                Err(error) if is_unique_violation(&error) => continue,
                Err(error) => return Err(error.into()),
            }
            let missed = events::MeasureMissed {
                care_plan_id: plan.id.clone(),
                schedule_id: measure.schedule_id.clone(),
                instrument: measure.instrument.clone(),
                due_at: Some(due_at.into()),
                expired_at: Some(expired_at.into()),
            };
            let event = outbox.envelope(&org, &patient, Payload::MeasureMissed(missed));
            outbox.enqueue(&mut tx, topics::CHECKINS, &event).await?;
            outbox.commit(tx).await?;
            announced += 1;
        }
    }
    Ok(announced)
}

/// Scans every [`SCAN_EVERY`] until `stop` completes.
pub async fn run(repo: Repo, outbox: Outbox, stop: impl Future<Output = ()> + Send) -> Result<(), RepoError> {
    tokio::pin!(stop);
    loop {
        match scan_once(&repo, &outbox).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "missed measures announced"),
            Err(error) => tracing::error!(%error, "missed-measure scan failed; retrying next pass"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn plan(start: SystemTime) -> plans::CarePlan {
        plans::CarePlan {
            status: plans::CarePlanStatus::Active as i32,
            measures: vec![plans::MeasureSchedule {
                schedule_id: "phq".into(),
                instrument: tandem_clinical::Instrument::Phq9.code().into(),
                recurrence: Some(plans::Recurrence { every_days: 1, starts_at: Some(start.into()), ends_at: None }),
                expiry_window_hours: 12,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_unanswered_occurrence_is_missed_once_its_window_closes() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(expired_occurrences(&plan(start), |_| None, Tz::UTC, start + HOUR * 11).is_empty());
        let missed = expired_occurrences(&plan(start), |_| None, Tz::UTC, start + HOUR * 13);
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].1, start);
        // Answered in time: nothing missed.
        assert!(expired_occurrences(&plan(start), |_| Some(start + HOUR), Tz::UTC, start + HOUR * 13).is_empty());
        // Three days on: at most the lookback, never before the start.
        let later = expired_occurrences(&plan(start), |_| None, Tz::UTC, start + HOUR * (24 * 3 + 13));
        assert_eq!(later.len(), 3);
        assert!(later.iter().all(|(_, due, _)| *due >= start));
    }
}
