//! Reminders of due measures and homework.
//!
//! Kept simple on purpose, and the same arithmetic as checkins' due items:
//! - an occurrence of a recurrence is every `every_days` days at the local
//!   time of day of `starts_at` in the patient's time zone
//!   ([`tandem_clinical::Schedule`], the same as checkins' due items); a
//!   one-off task has a single occurrence at its `due_at`;
//! - an occurrence becomes due at its time, and is reminded once (a
//!   `reminders` row per occurrence), unless the item was done at or after
//!   the occurrence (a one-off task: done at all);
//! - an occurrence older than the reminder window (and a measure past its
//!   expiry window) is not reminded: after downtime nobody gets a pile of
//!   stale reminders;
//! - the reminder goes to the patient's verified endpoints, or to their
//!   in-app inbox when they have none; the worker holds it while the
//!   endpoint's quiet hours last (in the patient's time zone unless the
//!   endpoint names its own), and drops it if the item is done meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_clinical::{Schedule, Tz};
use tandem_proto::careplans::v1 as plans;
use tokio::sync::Notify;

use crate::config::NotificationsSettings;
use crate::endpoint::Channel;
use crate::message::{self, Purpose};
use crate::repo::{DEFAULT_INBOX, Done, NewDelivery, NewReminder, ReminderPatient, Repo, RepoError};
use crate::worker::{Stop, reminder_key};

/// One occurrence that is due and not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueOccurrence {
    /// The plan.
    pub care_plan_id: String,
    /// The task id or measure schedule id.
    pub item_id: String,
    /// For measures, the instrument code; empty for tasks.
    pub instrument: String,
    /// What the patient sees in the app.
    pub title: String,
    /// When it became due.
    pub occurrence_at: SystemTime,
}

fn time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp).ok()
}

/// The latest occurrence of a recurrence at or before `now`, in the
/// patient's time zone.
pub fn latest_occurrence(recurrence: &plans::Recurrence, zone: Tz, now: SystemTime) -> Option<SystemTime> {
    Schedule::of(recurrence, zone)?.latest(now).map(|(_, at)| at)
}

fn fresh(occurrence: SystemTime, now: SystemTime, window: Duration) -> bool {
    now.duration_since(occurrence).is_ok_and(|age| age < window)
}

/// The occurrences of active plans that are due at `now`, not done, and
/// younger than `window`.
pub fn due_occurrences(
    active: &[plans::CarePlan],
    done: &Done,
    zone: Tz,
    now: SystemTime,
    window: Duration,
) -> Vec<DueOccurrence> {
    let mut due = Vec::new();
    for plan in active.iter().filter(|plan| plan.status() == plans::CarePlanStatus::Active) {
        let plan_id = plan.id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        for measure in &plan.measures {
            let Some(occurrence) = measure.recurrence.as_ref().and_then(|r| latest_occurrence(r, zone, now)) else {
                continue;
            };
            let expiry = Duration::from_secs(u64::from(measure.expiry_window_hours.max(1)) * 3600);
            if !fresh(occurrence, now, window.min(expiry)) {
                continue;
            }
            if done.measures.get(&measure.instrument).is_some_and(|last| *last >= occurrence) {
                continue;
            }
            due.push(DueOccurrence {
                care_plan_id: plan_id.clone(),
                item_id: measure.schedule_id.clone(),
                instrument: measure.instrument.clone(),
                title: instrument_title(&measure.instrument),
                occurrence_at: occurrence,
            });
        }
        for task in &plan.tasks {
            let last = done.tasks.get(&(plan_id.clone(), task.task_id.clone()));
            let occurrence = match &task.schedule {
                Some(plans::homework_task::Schedule::DueAt(due_at)) => {
                    let Some(due_at) = time(due_at) else { continue };
                    if last.is_some() {
                        continue;
                    }
                    due_at
                }
                Some(plans::homework_task::Schedule::Recurrence(recurrence)) => {
                    let Some(occurrence) = latest_occurrence(recurrence, zone, now) else { continue };
                    if last.is_some_and(|last| *last >= occurrence) {
                        continue;
                    }
                    occurrence
                }
                None => continue,
            };
            if !fresh(occurrence, now, window) {
                continue;
            }
            due.push(DueOccurrence {
                care_plan_id: plan_id.clone(),
                item_id: task.task_id.clone(),
                instrument: String::new(),
                title: task.title.clone(),
                occurrence_at: occurrence,
            });
        }
    }
    due
}

fn instrument_title(code: &str) -> String {
    match tandem_clinical::Instrument::from_code(code) {
        Some(instrument) => instrument.short_name().to_owned(),
        None => "your questionnaire".to_owned(),
    }
}

/// Looks for due items on a timer and queues their reminders.
#[derive(Debug, Clone)]
pub struct Scheduler {
    repo: Repo,
    settings: Arc<NotificationsSettings>,
    wake: Arc<Notify>,
}

impl Scheduler {
    /// A scheduler over the service's store.
    pub fn new(repo: Repo, settings: Arc<NotificationsSettings>, wake: Arc<Notify>) -> Self {
        Self { repo, settings, wake }
    }

    /// Ticks until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RepoError> {
        let mut stop = Stop::new(shutdown);
        loop {
            match self.tick(SystemTime::now()).await {
                Ok(0) => {}
                Ok(queued) => tracing::info!(queued, "reminders queued"),
                Err(error) => tracing::warn!(%error, "reminder pass failed; trying again next tick"),
            }
            tokio::select! {
                () = stop.wait() => break,
                () = tokio::time::sleep(self.settings.reminders.tick) => {}
            }
        }
        Ok(())
    }

    /// Queues the reminders due at `now`; returns how many occurrences got one.
    pub async fn tick(&self, now: SystemTime) -> Result<usize, RepoError> {
        let mut queued = 0;
        for patient in self.repo.patients_with_active_plans().await? {
            let active = self.repo.active_plans(&patient.id).await?;
            let done = self.repo.done(&patient.id).await?;
            for occurrence in
                due_occurrences(&active, &done, Schedule::zone(&patient.time_zone), now, self.settings.reminders.window)
            {
                if self.queue(&patient, &occurrence, now).await? {
                    queued += 1;
                }
            }
        }
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    async fn queue(&self, patient: &ReminderPatient, due: &DueOccurrence, now: SystemTime) -> Result<bool, RepoError> {
        let now_micros = tandem_store::unix_micros(now);
        let occurrence = tandem_store::unix_micros(due.occurrence_at);
        let mut tx = self.repo.store().begin_write().await?;
        let reminder = NewReminder {
            patient: &patient.id,
            care_plan: &due.care_plan_id,
            item: &due.item_id,
            instrument: &due.instrument,
            occurrence_at: occurrence,
        };
        let new = self.repo.insert_reminder(&mut tx, &reminder, now_micros).await?;
        if !new {
            tx.rollback().await?;
            return Ok(false);
        }
        let endpoints = self.repo.verified_endpoints(&mut tx, &patient.org, &patient.id).await?;
        let targets: Vec<(String, Channel)> = if endpoints.is_empty() {
            vec![(DEFAULT_INBOX.to_owned(), Channel::InApp)]
        } else {
            endpoints.iter().map(|endpoint| (endpoint.id.clone(), endpoint.channel)).collect()
        };
        for (endpoint_id, channel) in targets {
            let rendered = message::reminder(
                &patient.id,
                &due.care_plan_id,
                &due.item_id,
                &due.title,
                due.occurrence_at,
                channel == Channel::InApp,
                now,
            );
            let delivery = NewDelivery {
                purpose: Purpose::Reminder,
                dedup_key: reminder_key(&due.care_plan_id, &due.item_id, occurrence),
                alert: None,
                org: patient.org.clone(),
                patient: patient.id.clone(),
                recipient: patient.id.clone(),
                endpoint_id,
                channel,
                message: serde_json::to_string(&rendered).unwrap_or_default(),
                // Quiet hours are checked by the worker at each attempt.
                not_before: now_micros,
                queued_at: now_micros,
            };
            self.repo.insert_delivery(&mut tx, &delivery).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + HOUR * hours
    }

    fn plan() -> plans::CarePlan {
        let recurrence = |days| plans::Recurrence { every_days: days, starts_at: Some(at(0).into()), ends_at: None };
        plans::CarePlan {
            id: Some(tandem_proto::common::v1::CarePlanId { value: "plan".into() }),
            status: plans::CarePlanStatus::Active as i32,
            tasks: vec![plans::HomeworkTask {
                task_id: "breathe".into(),
                title: "Box breathing".into(),
                schedule: Some(plans::homework_task::Schedule::Recurrence(recurrence(1))),
                ..Default::default()
            }],
            measures: vec![plans::MeasureSchedule {
                schedule_id: "phq".into(),
                instrument: tandem_clinical::Instrument::Phq9.code().into(),
                recurrence: Some(recurrence(7)),
                expiry_window_hours: 72,
            }],
            ..Default::default()
        }
    }

    fn items(due: &[DueOccurrence]) -> Vec<(&str, SystemTime)> {
        due.iter().map(|d| (d.item_id.as_str(), d.occurrence_at)).collect()
    }

    #[test]
    fn each_occurrence_is_due_at_its_time() {
        let window = 24 * HOUR;
        assert!(due_occurrences(&[plan()], &Done::default(), Tz::UTC, at(0) - HOUR, window).is_empty());
        let due = due_occurrences(&[plan()], &Done::default(), Tz::UTC, at(1), window);
        assert_eq!(items(&due), [("phq", at(0)), ("breathe", at(0))]);
        assert_eq!(due[0].title, "PHQ-9");
        // The next day, the daily task has a new occurrence; the weekly
        // measure's occurrence is older than the window.
        assert_eq!(
            items(&due_occurrences(&[plan()], &Done::default(), Tz::UTC, at(25), window)),
            [("breathe", at(24))]
        );
    }

    #[test]
    fn done_since_the_occurrence_skips_it() {
        let mut done = Done::default();
        done.measures.insert(tandem_clinical::Instrument::Phq9.code().into(), at(2));
        done.tasks.insert(("plan".into(), "breathe".into()), at(2));
        assert!(due_occurrences(&[plan()], &done, Tz::UTC, at(3), 24 * HOUR).is_empty());
        // Done before the occurrence does not count.
        let mut early = Done::default();
        early.tasks.insert(("plan".into(), "breathe".into()), at(23));
        assert_eq!(items(&due_occurrences(&[plan()], &early, Tz::UTC, at(25), 24 * HOUR)), [("breathe", at(24))]);
    }

    #[test]
    fn a_one_off_task_is_reminded_until_done() {
        let mut plan = plan();
        plan.measures.clear();
        plan.tasks[0].schedule = Some(plans::homework_task::Schedule::DueAt(at(5).into()));
        assert!(due_occurrences(&[plan.clone()], &Done::default(), Tz::UTC, at(4), 24 * HOUR).is_empty());
        assert_eq!(
            items(&due_occurrences(&[plan.clone()], &Done::default(), Tz::UTC, at(6), 24 * HOUR)),
            [("breathe", at(5))]
        );
        let mut done = Done::default();
        done.tasks.insert(("plan".into(), "breathe".into()), at(1));
        assert!(due_occurrences(&[plan], &done, Tz::UTC, at(6), 24 * HOUR).is_empty());
    }

    #[test]
    fn drafts_ask_for_nothing_and_ended_recurrences_stop() {
        let mut draft = plan();
        draft.status = plans::CarePlanStatus::Draft as i32;
        assert!(due_occurrences(&[draft], &Done::default(), Tz::UTC, at(1), 24 * HOUR).is_empty());
        let mut ended = plan();
        ended.measures.clear();
        if let Some(plans::homework_task::Schedule::Recurrence(recurrence)) = &mut ended.tasks[0].schedule {
            recurrence.ends_at = Some(at(12).into());
        }
        assert!(due_occurrences(&[ended], &Done::default(), Tz::UTC, at(25), 24 * HOUR).is_empty());
    }
}
