//! What is due now: pure functions over active care plans, what the patient
//! already did, and the time.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tandem_proto::careplans::v1 as plans;
use tandem_proto::checkins::v1 as pb;

use tandem_clinical::{Schedule, Tz};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// What the patient has done: the last time each instrument was answered and
/// each task completed.
#[derive(Debug, Default, Clone)]
pub struct Done {
    /// Last submission per instrument code.
    pub measures: HashMap<String, SystemTime>,
    /// Last completion per (care plan id, task id).
    pub tasks: HashMap<(String, String), SystemTime>,
}

fn time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp).ok()
}

/// The latest occurrence of a recurrence at or before `now` in the patient's
/// time zone, and the one after it.
pub fn occurrence(recurrence: &plans::Recurrence, zone: Tz, now: SystemTime) -> Option<(SystemTime, SystemTime)> {
    Schedule::of(recurrence, zone)?.current_and_next(now)
}

/// The items due or overdue at `now` for a patient in `zone`, earliest first.
pub fn due_items(active_plans: &[plans::CarePlan], done: &Done, zone: Tz, now: SystemTime) -> Vec<pb::DueItem> {
    let mut items = Vec::new();
    for plan in active_plans.iter().filter(|plan| plan.status() == plans::CarePlanStatus::Active) {
        let plan_id = plan.id.clone();
        let plan_key = plan_id.as_ref().map(|id| id.value.clone()).unwrap_or_default();
        for measure in &plan.measures {
            let Some(recurrence) = &measure.recurrence else {
                continue;
            };
            let Some((due_at, _)) = occurrence(recurrence, zone, now) else {
                continue;
            };
            if done.measures.get(&measure.instrument).is_some_and(|last| *last >= due_at) {
                continue;
            }
            let window = Duration::from_secs(u64::from(measure.expiry_window_hours) * 3600);
            let expires_at = due_at + window;
            if now >= expires_at {
                // Missed: the missed-measure scanner reports it; it is no longer due.
                continue;
            }
            let state = if now < due_at + window.min(DAY) { pb::DueState::Due } else { pb::DueState::Overdue };
            items.push(pb::DueItem {
                care_plan_id: plan_id.clone(),
                item_id: measure.schedule_id.clone(),
                instrument: measure.instrument.clone(),
                title: instrument_title(&measure.instrument),
                due_at: Some(due_at.into()),
                expires_at: Some(expires_at.into()),
                state: state as i32,
            });
        }
        for task in &plan.tasks {
            let last = done.tasks.get(&(plan_key.clone(), task.task_id.clone()));
            let (due_at, expires_at, state) = match &task.schedule {
                Some(plans::homework_task::Schedule::DueAt(due_at)) => {
                    let Some(due_at) = time(due_at) else { continue };
                    if last.is_some() {
                        continue;
                    }
                    let state = if now <= due_at { pb::DueState::Due } else { pb::DueState::Overdue };
                    (due_at, None, state)
                }
                Some(plans::homework_task::Schedule::Recurrence(recurrence)) => {
                    let Some((due_at, next)) = occurrence(recurrence, zone, now) else {
                        continue;
                    };
                    if last.is_some_and(|last| *last >= due_at) {
                        continue;
                    }
                    (due_at, Some(next), pb::DueState::Due)
                }
                None => continue,
            };
            items.push(pb::DueItem {
                care_plan_id: plan_id.clone(),
                item_id: task.task_id.clone(),
                instrument: String::new(),
                title: task.title.clone(),
                due_at: Some(due_at.into()),
                expires_at: expires_at.map(Into::into),
                state: state as i32,
            });
        }
    }
    items.sort_by_key(|item| item.due_at.map(|t| (t.seconds, t.nanos)));
    items
}

fn instrument_title(code: &str) -> String {
    match tandem_clinical::Instrument::from_code(code) {
        Some(instrument) => instrument.short_name().to_owned(),
        None => code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(offset_hours: i64) -> SystemTime {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        if offset_hours >= 0 {
            base + HOUR * offset_hours as u32
        } else {
            base - HOUR * offset_hours.unsigned_abs() as u32
        }
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

    fn ids(items: &[pb::DueItem]) -> Vec<(&str, pb::DueState)> {
        items.iter().map(|item| (item.item_id.as_str(), item.state())).collect()
    }

    #[test]
    fn nothing_is_due_before_the_plan_starts() {
        assert!(due_items(&[plan()], &Done::default(), Tz::UTC, at(-1)).is_empty());
    }

    #[test]
    fn a_weekly_measure_is_due_then_overdue_then_missed() {
        let done = Done::default();
        assert!(ids(&due_items(&[plan()], &done, Tz::UTC, at(1))).contains(&("phq", pb::DueState::Due)));
        assert!(ids(&due_items(&[plan()], &done, Tz::UTC, at(30))).contains(&("phq", pb::DueState::Overdue)));
        assert!(!ids(&due_items(&[plan()], &done, Tz::UTC, at(73))).iter().any(|(id, _)| *id == "phq"));
        // Next week it is due again.
        assert!(ids(&due_items(&[plan()], &done, Tz::UTC, at(7 * 24 + 1))).contains(&("phq", pb::DueState::Due)));
    }

    #[test]
    fn done_items_drop_off_until_their_next_occurrence() {
        let mut done = Done::default();
        done.measures.insert(tandem_clinical::Instrument::Phq9.code().into(), at(2));
        done.tasks.insert(("plan".into(), "breathe".into()), at(2));
        assert!(due_items(&[plan()], &done, Tz::UTC, at(3)).is_empty());
        // The daily task comes back the next day; the weekly measure does not.
        assert_eq!(ids(&due_items(&[plan()], &done, Tz::UTC, at(25))), [("breathe", pb::DueState::Due)]);
    }

    #[test]
    fn drafts_and_finished_plans_ask_for_nothing() {
        let mut draft = plan();
        draft.status = plans::CarePlanStatus::Draft as i32;
        assert!(due_items(&[draft], &Done::default(), Tz::UTC, at(1)).is_empty());
    }

    #[test]
    fn one_off_tasks_are_due_until_done_and_overdue_after() {
        let mut plan = plan();
        plan.measures.clear();
        plan.tasks[0].schedule = Some(plans::homework_task::Schedule::DueAt(at(48).into()));
        assert_eq!(
            ids(&due_items(&[plan.clone()], &Done::default(), Tz::UTC, at(1))),
            [("breathe", pb::DueState::Due)]
        );
        assert_eq!(
            ids(&due_items(&[plan.clone()], &Done::default(), Tz::UTC, at(49))),
            [("breathe", pb::DueState::Overdue)]
        );
        let mut done = Done::default();
        done.tasks.insert(("plan".into(), "breathe".into()), at(3));
        assert!(due_items(&[plan], &done, Tz::UTC, at(49)).is_empty());
    }

    #[test]
    fn a_daily_task_stays_at_its_local_time_when_summer_time_starts() {
        // 09:00 in Madrid on 28 March 2026 (08:00 UTC); summer time starts on the 29th.
        let madrid: Tz = "Europe/Madrid".parse().unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_684_800);
        let mut plan = plan();
        plan.measures.clear();
        plan.tasks[0].schedule = Some(plans::homework_task::Schedule::Recurrence(plans::Recurrence {
            every_days: 1,
            starts_at: Some(start.into()),
            ends_at: None,
        }));
        // 09:30 in Madrid on the 30th (07:30 UTC): today's 09:00 (07:00 UTC) is due,
        // not a 24-hour step's 10:00.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_855_800);
        let items = due_items(&[plan], &Done::default(), madrid, now);
        let due_at = SystemTime::try_from(items[0].due_at.unwrap()).unwrap();
        assert_eq!(due_at, SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_854_000));
    }
}
