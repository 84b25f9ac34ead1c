//! `tandem demo`: everything embedded in a temporary directory, played
//! through the public API as a clinic would live it — a plan and a safety
//! plan, four weeks of check-ins with a reliable deterioration that pages
//! the primary at moderate level, then a crisis journal entry that raises
//! the level and pages the primary again at the new level — and a readable
//! timeline of what reached whom. Succeeds only if a human acknowledged the
//! alert.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tandem_auth::Role;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::checkins::v1 as checkins;
use tandem_proto::common::v1 as common;
use tandem_proto::triage::v1 as triage;
use tandem_server::Settings;

use crate::scenario::{Running, authed, enroll_with_team, register_webhook};
use crate::webhook::Receiver;

const ORG: &str = "demo-clinic";
const PRIMARY: &str = "dr-rivera";
const BACKUP: &str = "dr-chen";
/// The demo's acknowledgement window for a high-risk escalation.
const HIGH_ACK: &str = "4s";

/// Prints timeline lines with the time since the demo started.
struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let mut lines = what.as_ref().lines();
        println!("[{elapsed:5.1}s] {who:<13} {}", lines.next().unwrap_or_default());
        for line in lines {
            println!("{:22}{line}", "");
        }
    }
}

/// "RISK_LEVEL_HIGH" → "high".
fn level_name(wire: &str) -> String {
    wire.trim_start_matches("RISK_LEVEL_").to_lowercase()
}

fn ago(days: u64) -> prost_types::Timestamp {
    (SystemTime::now() - Duration::from_secs(days * 24 * 3600 + 60)).into()
}

/// Runs the demo; `Ok(true)` when a human acknowledged the alert.
pub async fn run() -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let timeline = Timeline { start: Instant::now() };
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let running = Running::start(settings, &[("triage.high_ack", HIGH_ACK), ("triage.imminent_ack", HIGH_ACK)]).await?;
    timeline.say("tandem", format!("up on {}, embedded, data in {}", running.addr, dir.path().display()));
    let outcome = play(&timeline, &running).await;
    running.stop().await?;
    outcome
}

async fn play(timeline: &Timeline, running: &Running) -> anyhow::Result<bool> {
    let mut c = running.clients.clone();
    let ehr = running.token(ORG, Role::Integration, "ehr")?;
    let rivera = running.token(ORG, Role::Clinician, PRIMARY)?;
    let chen = running.token(ORG, Role::Clinician, BACKUP)?;

    // The EHR enrols the patient and sets the care team.
    let patient_id =
        enroll_with_team(&mut c, &ehr, "MRN-0042", "Sam Okafor", &[(PRIMARY, "Dr. Rivera"), (BACKUP, "Dr. Chen")])
            .await?;
    let sam = running.token(ORG, Role::Patient, &patient_id.value)?;
    timeline.say("EHR", "enrolled Sam Okafor (MRN-0042)");
    timeline.say("EHR", "care team: Dr. Rivera (primary), then Dr. Chen (backup), then the on-call line");

    // Both clinicians register a signed webhook and verify it.
    let receiver = Receiver::start().await?;
    let mut secrets = Vec::new();
    for (subject, name, clinician) in [(PRIMARY, "Dr. Rivera", &rivera), (BACKUP, "Dr. Chen", &chen)] {
        let path = format!("/{subject}");
        let secret = register_webhook(&mut c, clinician, "", &receiver, &path).await?;
        timeline.say(name, format!("registered and verified a signed webhook at {}", receiver.url(&path)));
        secrets.push((path, secret, name));
    }

    // Dr. Rivera writes the plan and, with Sam, the safety plan.
    let recurrence = |days| plans::Recurrence { every_days: days, starts_at: Some(ago(28)), ends_at: None };
    let plan = c
        .plans
        .create_care_plan(authed(
            &rivera,
            plans::CreateCarePlanRequest {
                idempotency_key: "demo-plan".into(),
                patient_id: Some(patient_id.clone()),
                title: "Steadier evenings".into(),
                goals: vec![
                    plans::Goal {
                        description: "Sleep by midnight most nights".into(),
                        status: plans::GoalStatus::Active as i32,
                        patient_agreed: true,
                        ..Default::default()
                    },
                    plans::Goal {
                        description: "See a friend once a week".into(),
                        status: plans::GoalStatus::Active as i32,
                        patient_agreed: true,
                        ..Default::default()
                    },
                ],
                tasks: vec![plans::HomeworkTask {
                    kind: plans::TaskKind::BreathingGrounding as i32,
                    title: "Box breathing, 5 minutes".into(),
                    instructions: "In for four, hold for four, out for four, hold for four.".into(),
                    schedule: Some(plans::homework_task::Schedule::Recurrence(recurrence(1))),
                    ..Default::default()
                }],
                measures: vec![plans::MeasureSchedule {
                    instrument: "44249-1".into(),
                    recurrence: Some(recurrence(7)),
                    expiry_window_hours: 72,
                    ..Default::default()
                }],
                status: plans::CarePlanStatus::Active as i32,
            },
        )?)
        .await?
        .into_inner()
        .care_plan
        .context("no plan")?;
    timeline.say("Dr. Rivera", format!("care plan \"{}\": 2 goals, daily breathing, weekly PHQ-9", plan.title));
    c.plans
        .put_safety_plan(authed(
            &rivera,
            plans::PutSafetyPlanRequest {
                safety_plan: Some(plans::SafetyPlan {
                    patient_id: Some(patient_id.clone()),
                    warning_signs: vec!["Not sleeping, pacing at night".into()],
                    coping_strategies: vec!["Cold water on my face, then box breathing".into()],
                    help_contacts: vec![plans::SafetyContact {
                        name: "My brother Tunde".into(),
                        phone: "555-0142".into(),
                    }],
                    professional_contacts: vec![plans::SafetyContact {
                        name: "988 Suicide & Crisis Lifeline".into(),
                        phone: "988".into(),
                    }],
                    environment_safety: vec!["Tunde keeps my medication".into()],
                    ..Default::default()
                }),
                expected_version: 0,
            },
        )?)
        .await?;
    timeline.say("Dr. Rivera", "Stanley-Brown safety plan v1 saved with Sam");

    // Four weeks of check-ins: the PHQ-9 climbs 6 → 8 → 9 → 12.
    let weeks: [(&str, [i32; 9]); 4] = [
        ("week 1", [1, 1, 1, 1, 1, 1, 0, 0, 0]),
        ("week 2", [1, 1, 1, 1, 1, 1, 1, 1, 0]),
        ("week 3", [2, 1, 1, 1, 1, 1, 1, 1, 0]),
        ("week 4", [2, 2, 2, 1, 1, 2, 1, 1, 0]),
    ];
    for (week, answers) in weeks {
        let reply = c
            .checkins
            .submit_check_in(authed(
                &sam,
                checkins::SubmitCheckInRequest {
                    idempotency_key: format!("demo-{week}"),
                    patient_id: Some(patient_id.clone()),
                    mood: Some(5),
                    instruments: vec![checkins::InstrumentResponse {
                        instrument: "44249-1".into(),
                        answers: answers.to_vec(),
                    }],
                    ..Default::default()
                },
            )?)
            .await?
            .into_inner();
        let score = reply.check_in.and_then(|c| c.scores.into_iter().next()).context("no score")?;
        timeline.say("Sam", format!("{week}: PHQ-9 {} ({})", score.total.unwrap_or_default(), score.band));
    }

    // The deterioration pages Dr. Rivera, at moderate level.
    let primary_path = format!("/{PRIMARY}");
    let first = receiver
        .wait_for(Duration::from_secs(30), |r| r.path == primary_path && r.kind() == "escalation.notify")
        .await
        .context("no alert reached Dr. Rivera's webhook")?;
    let mut verified = first.verifies_with(&secrets[0].1);
    let data = &first.json["data"];
    let first_level = data["level"].as_str().unwrap_or_default().to_owned();
    timeline.say(
        "webhook",
        format!(
            "→ Dr. Rivera: {} escalation, step {}, acknowledge by {} (signature {})",
            level_name(&first_level),
            data["step"].as_u64().unwrap_or_default() + 1,
            data["ack_deadline"].as_str().unwrap_or_default(),
            if verified { "verified" } else { "INVALID" }
        ),
    );
    let escalation_id = data["escalation_id"].as_str().unwrap_or_default().to_owned();

    // Then a crisis journal entry.
    let reply = c
        .checkins
        .submit_check_in(authed(
            &sam,
            checkins::SubmitCheckInRequest {
                idempotency_key: "demo-journal".into(),
                patient_id: Some(patient_id.clone()),
                mood: Some(1),
                journal: "I can't keep doing this. I've been thinking about killing myself.".into(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    let Some(safety) = reply.safety_response else {
        bail!("the crisis check-in did not bring the safety response");
    };
    let resources: Vec<String> = safety.resources.iter().map(|r| format!("{}: {}", r.name, r.contact)).collect();
    timeline.say(
        "Sam",
        format!(
            "journal entry; the reply, at once (triggers: {}; generated text: {}):\n{}\nyour safety plan:\n{}care team alerted: {}",
            safety.triggers.join(", "),
            if safety.ai_generated { "yes" } else { "none" },
            resources.join("\n"),
            safety.safety_plan_text,
            safety.care_team_alerted
        ),
    );

    // The journal joins the open escalation at a higher level: Dr. Rivera,
    // who holds it, is paged again at the new level, with the new deadline.
    let raised = receiver
        .wait_for(Duration::from_secs(30), |r| {
            r.path == primary_path
                && r.kind() == "escalation.notify"
                && r.json["data"]["level"].as_str().is_some_and(|level| level != first_level)
        })
        .await
        .context("Dr. Rivera was never told the level was raised")?;
    verified &= raised.verifies_with(&secrets[0].1);
    let data = &raised.json["data"];
    timeline.say(
        "webhook",
        format!(
            "→ Dr. Rivera again: RAISED from {} to {}, step {}, acknowledge by {} (signature {})",
            level_name(data["previous_level"].as_str().unwrap_or(&first_level)),
            level_name(data["level"].as_str().unwrap_or_default()),
            data["step"].as_u64().unwrap_or_default() + 1,
            data["ack_deadline"].as_str().unwrap_or_default(),
            if raised.verifies_with(&secrets[0].1) { "verified" } else { "INVALID" }
        ),
    );
    let assessments = c
        .triage
        .list_risk_assessments(authed(
            &rivera,
            triage::ListRiskAssessmentsRequest { patient_id: Some(patient_id.clone()), page: None },
        )?)
        .await?
        .into_inner()
        .assessments;
    for assessment in assessments.iter().rev().filter(|a| !a.rules.is_empty()) {
        for rule in &assessment.rules {
            timeline.say(
                "triage",
                format!(
                    "{} ({}): {}",
                    rule.rule,
                    rule.level().as_str_name().trim_start_matches("RISK_LEVEL_").to_lowercase(),
                    rule.evidence
                ),
            );
        }
    }

    // Dr. Rivera is in session and does not answer; the deadline passes.
    let backup_path = format!("/{BACKUP}");
    let second = receiver
        .wait_for(Duration::from_secs(30), |r| r.path == backup_path && r.kind() == "escalation.notify")
        .await
        .context("the alert never climbed to Dr. Chen")?;
    verified &= second.verifies_with(&secrets[1].1);
    timeline.say("triage", format!("deadline ({HIGH_ACK}) passed: Dr. Rivera did not acknowledge"));
    timeline.say(
        "webhook",
        format!(
            "→ Dr. Chen: {} escalation, step {} (signature {})",
            level_name(second.json["data"]["level"].as_str().unwrap_or_default()),
            second.json["data"]["step"].as_u64().unwrap_or_default() + 1,
            if second.verifies_with(&secrets[1].1) { "verified" } else { "INVALID" }
        ),
    );

    // Dr. Chen acknowledges and, after calling Sam, resolves.
    let id = common::EscalationId { value: escalation_id };
    let acknowledged = c
        .triage
        .acknowledge_escalation(authed(
            &chen,
            triage::AcknowledgeEscalationRequest { escalation_id: Some(id.clone()), note: "calling Sam now".into() },
        )?)
        .await?
        .into_inner()
        .escalation
        .context("no escalation")?;
    let acknowledged_by_human = acknowledged.state() == triage::EscalationState::Acknowledged;
    timeline.say("Dr. Chen", "acknowledged: \"calling Sam now\"");
    let resolved = c
        .triage
        .resolve_escalation(authed(
            &chen,
            triage::ResolveEscalationRequest {
                escalation_id: Some(id),
                outcome: "Spoke with Sam; safe tonight with Tunde; safety plan reviewed; session moved to tomorrow"
                    .into(),
            },
        )?)
        .await?
        .into_inner()
        .escalation
        .context("no escalation")?;
    timeline.say("Dr. Chen", "resolved: spoke with Sam, safe tonight, session moved to tomorrow");
    println!("\ntimeline of escalation {}:", resolved.id.map(|id| id.value).unwrap_or_default());
    for entry in &resolved.timeline {
        let at = entry.at.and_then(|t| SystemTime::try_from(t).ok()).map(humantime::format_rfc3339_millis);
        println!(
            "  {} {:<16} {:<10} {}",
            at.map(|t| t.to_string()).unwrap_or_default(),
            entry.kind,
            entry.actor,
            entry.detail
        );
    }
    if !verified {
        bail!("a webhook signature did not verify");
    }
    Ok(acknowledged_by_human)
}
