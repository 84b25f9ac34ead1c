//! Parsing what clinicians send into plan content that is valid by
//! construction: every goal, task and schedule has an id, a schedule and
//! sane bounds, so the rest of the service never checks again.

use std::collections::HashSet;

use tandem_clinical::Instrument;
use tandem_proto::careplans::v1 as pb;
use tandem_server::status::Violations;

const MAX_TITLE: usize = 200;
const MAX_TEXT: usize = 2_000;
const MAX_ITEMS: usize = 50;
/// The longest recurrence we accept: a yearly review.
const MAX_EVERY_DAYS: u32 = 366;
/// A missed-measure window longer than a month no longer tells anyone anything.
const MAX_EXPIRY_HOURS: u32 = 24 * 31;

/// Whether a measure schedule may name `code`: an instrument's API code
/// exactly (tandem-clinical's, not an alias), as check-ins reports it.
fn schedulable(code: &str) -> bool {
    Instrument::ALL.iter().any(|instrument| instrument.code() == code)
}

/// The instruments a measure schedule may name, in words for an error.
fn schedulable_codes() -> String {
    let codes: Vec<String> = Instrument::ALL
        .iter()
        .map(|instrument| format!("{} ({})", instrument.code(), instrument.short_name()))
        .collect();
    format!("unknown instrument; use one of {}", codes.join(", "))
}

/// A plan's content, valid by construction.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanContent {
    /// Title.
    pub title: String,
    /// Goals with ids.
    pub goals: Vec<pb::Goal>,
    /// Tasks with ids and schedules.
    pub tasks: Vec<pb::HomeworkTask>,
    /// Measure schedules with ids.
    pub measures: Vec<pb::MeasureSchedule>,
}

fn text(violations: &mut Violations, field: &str, value: &str, max: usize, required: bool) {
    if value.trim().is_empty() {
        if required {
            violations.add(field, "required: must not be empty");
        }
        return;
    }
    if value.chars().count() > max {
        violations.add(field, format!("at most {max} characters"));
    }
}

fn item_id(given: &str, used: &mut HashSet<String>, violations: &mut Violations, field: &str) -> String {
    let id = if given.is_empty() { uuid_like() } else { given.to_owned() };
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        violations.add(field, "ids are 1-64 characters of letters, digits, '-' and '_'");
    }
    if !used.insert(id.clone()) {
        violations.add(field, format!("id `{id}` is used twice in this plan"));
    }
    id
}

fn uuid_like() -> String {
    tandem_proto::ids::EventId::new().to_string()
}

fn recurrence(violations: &mut Violations, field: &str, recurrence: Option<&pb::Recurrence>) {
    let Some(recurrence) = recurrence else {
        violations.add(field, "required: every_days and starts_at");
        return;
    };
    if recurrence.every_days == 0 || recurrence.every_days > MAX_EVERY_DAYS {
        violations.add(format!("{field}.every_days"), format!("1 to {MAX_EVERY_DAYS}"));
    }
    if recurrence.starts_at.is_none() {
        violations.add(format!("{field}.starts_at"), "required: the first occurrence");
    }
    if let (Some(start), Some(end)) = (&recurrence.starts_at, &recurrence.ends_at)
        && (end.seconds, end.nanos) <= (start.seconds, start.nanos)
    {
        violations.add(format!("{field}.ends_at"), "must be after starts_at");
    }
}

/// Parses plan content, assigning ids to new goals, tasks and schedules.
pub fn parse_content(
    title: &str,
    goals: &[pb::Goal],
    tasks: &[pb::HomeworkTask],
    measures: &[pb::MeasureSchedule],
    violations: &mut Violations,
) -> PlanContent {
    text(violations, "title", title, MAX_TITLE, true);
    for (name, count) in [("goals", goals.len()), ("tasks", tasks.len()), ("measures", measures.len())] {
        if count > MAX_ITEMS {
            violations.add(name, format!("at most {MAX_ITEMS} per plan"));
        }
    }
    let mut used = HashSet::new();
    let goals = goals
        .iter()
        .enumerate()
        .map(|(i, goal)| {
            let field = format!("goals[{i}]");
            text(violations, &format!("{field}.description"), &goal.description, MAX_TEXT, true);
            if goal.status() == pb::GoalStatus::Unspecified {
                violations.add(format!("{field}.status"), "required: proposed, active, achieved or cancelled");
            }
            pb::Goal {
                goal_id: item_id(&goal.goal_id, &mut used, violations, &format!("{field}.goal_id")),
                ..goal.clone()
            }
        })
        .collect();
    let tasks = tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let field = format!("tasks[{i}]");
            if task.kind() == pb::TaskKind::Unspecified {
                violations.add(
                    format!("{field}.kind"),
                    "required: thought record, behavioural activation, breathing/grounding, worksheet or custom",
                );
            }
            text(violations, &format!("{field}.title"), &task.title, MAX_TITLE, true);
            text(
                violations,
                &format!("{field}.instructions"),
                &task.instructions,
                MAX_TEXT,
                task.kind() == pb::TaskKind::Custom,
            );
            match &task.schedule {
                None => {
                    violations.add(format!("{field}.schedule"), "required: due_at for a one-off task or recurrence")
                }
                Some(pb::homework_task::Schedule::DueAt(_)) => {}
                Some(pb::homework_task::Schedule::Recurrence(rule)) => {
                    recurrence(violations, &format!("{field}.recurrence"), Some(rule))
                }
            }
            pb::HomeworkTask {
                task_id: item_id(&task.task_id, &mut used, violations, &format!("{field}.task_id")),
                ..task.clone()
            }
        })
        .collect();
    let measures = measures
        .iter()
        .enumerate()
        .map(|(i, measure)| {
            let field = format!("measures[{i}]");
            if !schedulable(&measure.instrument) {
                violations.add(format!("{field}.instrument"), schedulable_codes());
            }
            recurrence(violations, &format!("{field}.recurrence"), measure.recurrence.as_ref());
            if measure.expiry_window_hours == 0 || measure.expiry_window_hours > MAX_EXPIRY_HOURS {
                violations.add(format!("{field}.expiry_window_hours"), format!("1 to {MAX_EXPIRY_HOURS} hours"));
            }
            pb::MeasureSchedule {
                schedule_id: item_id(&measure.schedule_id, &mut used, violations, &format!("{field}.schedule_id")),
                ..measure.clone()
            }
        })
        .collect();
    PlanContent { title: title.trim().to_owned(), goals, tasks, measures }
}

/// Whether a plan may move from one status to another.
pub fn transition_allowed(from: pb::CarePlanStatus, to: pb::CarePlanStatus) -> bool {
    use pb::CarePlanStatus::{Active, Completed, Draft, Revoked};
    matches!(
        (from, to),
        (Draft, Draft)
            | (Draft, Active)
            | (Draft, Revoked)
            | (Active, Active)
            | (Active, Completed)
            | (Active, Revoked)
    )
}

/// Parses a care team: members in chain order, exactly one primary, first.
pub fn parse_care_team(members: &[pb::CareTeamMember], violations: &mut Violations) -> Vec<pb::CareTeamMember> {
    if members.is_empty() {
        violations.add("members", "required: at least the primary clinician");
    }
    if members.len() > 20 {
        violations.add("members", "at most 20 members");
    }
    let mut seen = HashSet::new();
    let primaries = members.iter().filter(|m| m.role() == pb::CareTeamRole::Primary).count();
    if !members.is_empty() && primaries != 1 {
        violations.add("members", format!("exactly one primary clinician, got {primaries}"));
    }
    if members.first().is_some_and(|m| m.role() != pb::CareTeamRole::Primary) && primaries == 1 {
        violations.add("members[0].role", "the primary clinician comes first: alerts climb the chain in order");
    }
    for (i, member) in members.iter().enumerate() {
        let field = format!("members[{i}]");
        text(violations, &format!("{field}.clinician_id"), &member.clinician_id, 128, true);
        text(violations, &format!("{field}.display_name"), &member.display_name, MAX_TITLE, false);
        if member.role() == pb::CareTeamRole::Unspecified {
            violations.add(format!("{field}.role"), "required: primary, backup or on_call");
        }
        if !seen.insert(member.clinician_id.clone()) {
            violations.add(format!("{field}.clinician_id"), "each clinician appears once");
        }
    }
    members.to_vec()
}

/// Parses a safety plan's sections.
pub fn parse_safety_plan(plan: &pb::SafetyPlan, violations: &mut Violations) {
    let lists: [(&str, &Vec<String>); 4] = [
        ("safety_plan.warning_signs", &plan.warning_signs),
        ("safety_plan.coping_strategies", &plan.coping_strategies),
        ("safety_plan.distraction_places", &plan.distraction_places),
        ("safety_plan.environment_safety", &plan.environment_safety),
    ];
    let contacts: [(&str, &Vec<pb::SafetyContact>); 3] = [
        ("safety_plan.distraction_contacts", &plan.distraction_contacts),
        ("safety_plan.help_contacts", &plan.help_contacts),
        ("safety_plan.professional_contacts", &plan.professional_contacts),
    ];
    let mut entries = 0;
    for (field, items) in lists {
        if items.len() > MAX_ITEMS {
            violations.add(field, format!("at most {MAX_ITEMS} entries"));
        }
        for (i, item) in items.iter().enumerate() {
            text(violations, &format!("{field}[{i}]"), item, MAX_TEXT, true);
        }
        entries += items.len();
    }
    for (field, items) in contacts {
        if items.len() > MAX_ITEMS {
            violations.add(field, format!("at most {MAX_ITEMS} entries"));
        }
        for (i, contact) in items.iter().enumerate() {
            text(violations, &format!("{field}[{i}].name"), &contact.name, MAX_TITLE, true);
            text(violations, &format!("{field}[{i}].phone"), &contact.phone, 64, false);
        }
        entries += items.len();
    }
    if entries == 0 {
        violations.add("safety_plan", "an empty safety plan helps nobody: fill in at least one step");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily() -> pb::Recurrence {
        pb::Recurrence {
            every_days: 1,
            starts_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ends_at: None,
        }
    }

    #[test]
    fn valid_content_gets_ids() {
        let mut violations = Violations::new();
        let content = parse_content(
            "Plan",
            &[pb::Goal {
                description: "Sleep better".into(),
                status: pb::GoalStatus::Active as i32,
                ..Default::default()
            }],
            &[pb::HomeworkTask {
                kind: pb::TaskKind::BreathingGrounding as i32,
                title: "Box breathing".into(),
                schedule: Some(pb::homework_task::Schedule::Recurrence(daily())),
                ..Default::default()
            }],
            &[pb::MeasureSchedule {
                instrument: Instrument::Phq9.code().into(),
                recurrence: Some(daily()),
                expiry_window_hours: 48,
                ..Default::default()
            }],
            &mut violations,
        );
        assert!(violations.is_empty());
        assert!(!content.goals[0].goal_id.is_empty());
        assert!(!content.tasks[0].task_id.is_empty());
        assert!(!content.measures[0].schedule_id.is_empty());
    }

    #[test]
    fn bad_content_names_every_field() {
        let mut violations = Violations::new();
        parse_content(
            "",
            &[pb::Goal::default()],
            &[pb::HomeworkTask::default()],
            &[pb::MeasureSchedule { instrument: "bdi".into(), ..Default::default() }],
            &mut violations,
        );
        let status = violations.into_status();
        for field in [
            "title",
            "goals[0].description",
            "goals[0].status",
            "tasks[0].kind",
            "tasks[0].schedule",
            "measures[0].instrument",
            "measures[0].recurrence",
            "measures[0].expiry_window_hours",
        ] {
            assert!(status.message().contains(field), "{field} in {}", status.message());
        }
    }

    #[test]
    fn terminal_statuses_stay_terminal() {
        use pb::CarePlanStatus::*;
        assert!(transition_allowed(Draft, Active));
        assert!(transition_allowed(Active, Completed));
        assert!(!transition_allowed(Completed, Active));
        assert!(!transition_allowed(Revoked, Draft));
        assert!(!transition_allowed(Active, Draft));
    }

    #[test]
    fn care_team_needs_one_primary_first() {
        let member = |id: &str, role: pb::CareTeamRole| pb::CareTeamMember {
            clinician_id: id.into(),
            role: role as i32,
            display_name: String::new(),
        };
        let mut violations = Violations::new();
        parse_care_team(
            &[member("a", pb::CareTeamRole::Primary), member("b", pb::CareTeamRole::Backup)],
            &mut violations,
        );
        assert!(violations.is_empty());
        let mut violations = Violations::new();
        parse_care_team(
            &[member("b", pb::CareTeamRole::Backup), member("a", pb::CareTeamRole::Primary)],
            &mut violations,
        );
        assert!(!violations.is_empty());
        let mut violations = Violations::new();
        parse_care_team(
            &[member("a", pb::CareTeamRole::Primary), member("a", pb::CareTeamRole::Backup)],
            &mut violations,
        );
        assert!(!violations.is_empty());
    }
}
