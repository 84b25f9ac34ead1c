//! The between-session loop as a clinic lives it, through the generated
//! clients, embedded and on PostgreSQL + Kafka: a plan with goals, a daily
//! breathing task and a weekly PHQ-9; the patient sees them due, checks in,
//! and in a crisis gets resources and their own safety plan at once.

use std::time::{Duration, SystemTime};

use tandem_auth::Role;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_tests::{Tandem, authed, both_backends};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Clinic {
    plans: CarePlanServiceClient<Channel>,
    checkins: CheckInServiceClient<Channel>,
    patient: common::PatientId,
    other_patient: common::PatientId,
    patient_token: String,
    primary: String,
    stranger: String,
    foreign: String,
    care_plan: plans::CarePlan,
}

fn recurrence(every_days: u32) -> plans::Recurrence {
    // Started a minute ago, so the first occurrence is due now.
    let start = SystemTime::now() - Duration::from_secs(60);
    plans::Recurrence { every_days, starts_at: Some(start.into()), ends_at: None }
}

async fn enroll(client: &mut CarePlanServiceClient<Channel>, token: &str, mrn: &str) -> common::PatientId {
    let request = plans::EnrollPatientRequest {
        idempotency_key: format!("enrol-{mrn}"),
        external_id: mrn.into(),
        display_name: "Alex Example".into(),
        time_zone: "America/New_York".into(),
    };
    client.enroll_patient(authed(token, request)).await.unwrap().into_inner().patient.unwrap().id.unwrap()
}

async fn clinic(tandem: &Tandem) -> Clinic {
    let channel = tandem.channel().await;
    let mut plans_client = CarePlanServiceClient::new(channel.clone());
    let ehr = tandem.token("north", Role::Integration, "ehr-client");
    let patient = enroll(&mut plans_client, &ehr, "mrn-1").await;
    let other_patient = enroll(&mut plans_client, &ehr, "mrn-2").await;
    let member = |id: &str, role: plans::CareTeamRole| plans::CareTeamMember {
        clinician_id: id.into(),
        role: role as i32,
        display_name: id.into(),
    };
    plans_client
        .set_care_team(authed(
            &ehr,
            plans::SetCareTeamRequest {
                patient_id: Some(patient.clone()),
                members: vec![
                    member("dr-primary", plans::CareTeamRole::Primary),
                    member("dr-backup", plans::CareTeamRole::Backup),
                ],
            },
        ))
        .await
        .unwrap();
    let primary = tandem.token("north", Role::Clinician, "dr-primary");
    plans_client
        .put_safety_plan(authed(
            &primary,
            plans::PutSafetyPlanRequest {
                safety_plan: Some(plans::SafetyPlan {
                    patient_id: Some(patient.clone()),
                    warning_signs: vec!["Lying awake past 3am".into()],
                    coping_strategies: vec!["Cold water on my face".into()],
                    help_contacts: vec![plans::SafetyContact { name: "My sister Jo".into(), phone: "555-0101".into() }],
                    ..Default::default()
                }),
                expected_version: 0,
            },
        ))
        .await
        .unwrap();
    let care_plan = plans_client
        .create_care_plan(authed(
            &primary,
            plans::CreateCarePlanRequest {
                idempotency_key: "plan-1".into(),
                patient_id: Some(patient.clone()),
                title: "Between sessions".into(),
                goals: vec![
                    plans::Goal {
                        description: "Sleep seven hours".into(),
                        status: plans::GoalStatus::Active as i32,
                        patient_agreed: true,
                        ..Default::default()
                    },
                    plans::Goal {
                        description: "Call a friend each week".into(),
                        status: plans::GoalStatus::Active as i32,
                        patient_agreed: true,
                        ..Default::default()
                    },
                ],
                tasks: vec![plans::HomeworkTask {
                    kind: plans::TaskKind::BreathingGrounding as i32,
                    title: "Box breathing".into(),
                    instructions: "Four counts in, hold, out, hold.".into(),
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
        ))
        .await
        .unwrap()
        .into_inner()
        .care_plan
        .unwrap();
    Clinic {
        plans: plans_client,
        checkins: CheckInServiceClient::new(channel),
        patient_token: tandem.token("north", Role::Patient, &patient.value),
        patient,
        other_patient,
        primary,
        stranger: tandem.token("north", Role::Clinician, "dr-elsewhere"),
        foreign: tandem.token("south", Role::Admin, "admin"),
        care_plan,
    }
}

fn phq9(answers: [i32; 9]) -> pb::InstrumentResponse {
    pb::InstrumentResponse { instrument: "44249-1".into(), answers: answers.to_vec() }
}

async fn due(c: &mut Clinic, token: &str) -> Vec<pb::DueItem> {
    let request = pb::GetDueItemsRequest { patient_id: Some(c.patient.clone()) };
    c.checkins.get_due_items(authed(token, request)).await.unwrap().into_inner().items
}

both_backends!(the_between_session_loop, |tandem| {
    let mut c = clinic(tandem).await;
    let token = c.patient_token.clone();

    // The plan reaches check-ins through careplans' events: both items due.
    let items = {
        let checkins = c.checkins.clone();
        let patient = c.patient.clone();
        let token = token.clone();
        tandem
            .eventually("the plan's items to be due", || {
                let mut checkins = checkins.clone();
                let request = pb::GetDueItemsRequest { patient_id: Some(patient.clone()) };
                let token = token.clone();
                async move {
                    let items = checkins.get_due_items(authed(&token, request)).await.ok()?.into_inner().items;
                    (items.len() == 2).then_some(items)
                }
            })
            .await
    };
    let task = items.iter().find(|item| item.instrument.is_empty()).expect("the breathing task is due");
    assert_eq!(task.title, "Box breathing");
    let measure = items.iter().find(|item| item.instrument == "44249-1").expect("the PHQ-9 is due");
    assert_eq!(measure.title, "PHQ-9");
    assert!(items.iter().all(|item| item.state() == pb::DueState::Due));

    // The patient answers the PHQ-9 and does the breathing exercise.
    let week_1 = pb::SubmitCheckInRequest {
        idempotency_key: "week-1".into(),
        patient_id: Some(c.patient.clone()),
        mood: Some(4),
        instruments: vec![phq9([2, 2, 1, 2, 1, 1, 1, 1, 0])],
        journal: "Rough week at work but I kept my walks going.".into(),
        homework: vec![pb::HomeworkCompletion {
            care_plan_id: c.care_plan.id.clone(),
            task_id: task.item_id.clone(),
            completed_at: None,
        }],
    };
    let reply =
        c.checkins.submit_check_in(authed(&token, week_1.clone())).await.expect("check-in accepted").into_inner();
    let check_in = reply.check_in.unwrap();
    assert_eq!(check_in.scores.len(), 1);
    assert_eq!(check_in.scores[0].total, Some(11));
    assert_eq!(check_in.scores[0].band, "moderate");
    assert_eq!(check_in.scores[0].total_code.as_ref().unwrap().code, "44261-6");
    assert!(reply.safety_response.is_none(), "no crisis trigger, no safety response");
    assert!(due(&mut c, &token).await.is_empty(), "both items are done");

    // A retry returns the first result and stores nothing new.
    let retry = c.checkins.submit_check_in(authed(&token, week_1)).await.unwrap().into_inner();
    assert_eq!(retry.check_in.unwrap().id, check_in.id);

    // Item 9 answered "several days": the same reply carries the safety response.
    let crisis = c
        .checkins
        .submit_check_in(authed(
            &token,
            pb::SubmitCheckInRequest {
                idempotency_key: "week-1-later".into(),
                patient_id: Some(c.patient.clone()),
                instruments: vec![phq9([1, 1, 1, 1, 1, 1, 1, 1, 1])],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let safety = crisis.safety_response.expect("a crisis trigger brings the safety response at once");
    assert!(safety.resources.iter().any(|r| r.contact.contains("988")), "{:?}", safety.resources);
    assert!(safety.safety_plan_text.contains("Lying awake past 3am"), "{}", safety.safety_plan_text);
    assert!(safety.safety_plan_text.contains("My sister Jo: 555-0101"));
    assert!(safety.care_team_alerted);
    assert!(!safety.ai_generated);
    assert_eq!(safety.triggers, ["phq9-item9"]);

    // The clinician on the care team sees both check-ins, newest first.
    let listed = c
        .checkins
        .list_check_ins(authed(
            &c.primary,
            pb::ListCheckInsRequest { patient_id: Some(c.patient.clone()), range: None, page: None },
        ))
        .await
        .unwrap()
        .into_inner()
        .check_ins;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].id, check_in.id);
    let one = c
        .checkins
        .get_check_in(authed(&c.primary, pb::GetCheckInRequest { check_in_id: check_in.id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .check_in
        .unwrap();
    assert_eq!(one, check_in);
});

both_backends!(every_rpc_denies_strangers_other_patients_and_other_orgs, |tandem| {
    let mut c = clinic(tandem).await;
    // Wait until check-ins knows the care team (it arrives by event).
    let primary = c.primary.clone();
    let checkins = c.checkins.clone();
    let patient = c.patient.clone();
    tandem
        .eventually("the care team to reach check-ins", || {
            let mut checkins = checkins.clone();
            let request = pb::GetDueItemsRequest { patient_id: Some(patient.clone()) };
            let primary = primary.clone();
            async move { checkins.get_due_items(authed(&primary, request)).await.ok() }
        })
        .await;
    let submitted = c
        .checkins
        .submit_check_in(authed(
            &c.patient_token,
            pb::SubmitCheckInRequest {
                idempotency_key: "k".into(),
                patient_id: Some(c.patient.clone()),
                mood: Some(6),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .check_in
        .unwrap();
    let other_patient_token = tandem.token("north", Role::Patient, &c.other_patient.value);
    let callers = [
        ("a clinician not on the team", c.stranger.clone()),
        ("another patient", other_patient_token),
        ("another org", c.foreign.clone()),
    ];
    for (who, token) in &callers {
        let denied = |result: Result<(), tonic::Status>, rpc: &str| {
            let status = result.expect_err(&format!("{rpc} must deny {who}"));
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc} for {who}: {status}");
        };
        let patient = Some(c.patient.clone());
        denied(
            c.checkins
                .submit_check_in(authed(
                    token,
                    pb::SubmitCheckInRequest {
                        idempotency_key: "x".into(),
                        patient_id: patient.clone(),
                        mood: Some(1),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
            "SubmitCheckIn",
        );
        denied(
            c.checkins
                .get_check_in(authed(token, pb::GetCheckInRequest { check_in_id: submitted.id.clone() }))
                .await
                .map(|_| ()),
            "GetCheckIn",
        );
        denied(
            c.checkins
                .list_check_ins(authed(
                    token,
                    pb::ListCheckInsRequest { patient_id: patient.clone(), range: None, page: None },
                ))
                .await
                .map(|_| ()),
            "ListCheckIns",
        );
        denied(
            c.checkins
                .get_due_items(authed(token, pb::GetDueItemsRequest { patient_id: patient.clone() }))
                .await
                .map(|_| ()),
            "GetDueItems",
        );
        denied(
            c.plans
                .get_patient(authed(token, plans::GetPatientRequest { patient_id: patient.clone() }))
                .await
                .map(|_| ()),
            "GetPatient",
        );
        denied(
            c.plans
                .create_care_plan(authed(
                    token,
                    plans::CreateCarePlanRequest {
                        idempotency_key: "x".into(),
                        patient_id: patient.clone(),
                        title: "x".into(),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
            "CreateCarePlan",
        );
        denied(
            c.plans
                .get_care_plan(authed(token, plans::GetCarePlanRequest { care_plan_id: c.care_plan.id.clone() }))
                .await
                .map(|_| ()),
            "GetCarePlan",
        );
        denied(
            c.plans
                .update_care_plan(authed(
                    token,
                    plans::UpdateCarePlanRequest {
                        care_plan_id: c.care_plan.id.clone(),
                        expected_version: 1,
                        title: "x".into(),
                        status: plans::CarePlanStatus::Active as i32,
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| ()),
            "UpdateCarePlan",
        );
        denied(
            c.plans
                .list_care_plans(authed(token, plans::ListCarePlansRequest { patient_id: patient.clone(), page: None }))
                .await
                .map(|_| ()),
            "ListCarePlans",
        );
        denied(
            c.plans
                .set_care_team(authed(
                    token,
                    plans::SetCareTeamRequest {
                        patient_id: patient.clone(),
                        members: vec![plans::CareTeamMember {
                            clinician_id: "dr-x".into(),
                            role: plans::CareTeamRole::Primary as i32,
                            display_name: String::new(),
                        }],
                    },
                ))
                .await
                .map(|_| ()),
            "SetCareTeam",
        );
        denied(
            c.plans
                .get_care_team(authed(token, plans::GetCareTeamRequest { patient_id: patient.clone() }))
                .await
                .map(|_| ()),
            "GetCareTeam",
        );
        denied(
            c.plans
                .put_safety_plan(authed(
                    token,
                    plans::PutSafetyPlanRequest {
                        safety_plan: Some(plans::SafetyPlan {
                            patient_id: patient.clone(),
                            warning_signs: vec!["x".into()],
                            ..Default::default()
                        }),
                        expected_version: 1,
                    },
                ))
                .await
                .map(|_| ()),
            "PutSafetyPlan",
        );
        denied(
            c.plans
                .get_safety_plan(authed(token, plans::GetSafetyPlanRequest { patient_id: patient.clone() }))
                .await
                .map(|_| ()),
            "GetSafetyPlan",
        );
    }
    // EnrollPatient and ListPatients have no patient to deny: a patient or a
    // clinician cannot enrol, and another org's list is empty.
    let denied = c
        .plans
        .enroll_patient(authed(
            &c.stranger,
            plans::EnrollPatientRequest {
                idempotency_key: "x".into(),
                external_id: "x".into(),
                display_name: "x".into(),
                time_zone: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let foreign_list = c.plans.list_patients(authed(&c.foreign, plans::ListPatientsRequest::default())).await.unwrap();
    assert!(foreign_list.into_inner().patients.is_empty());
});

both_backends!(invalid_check_ins_are_refused_with_field_violations_and_store_nothing, |tandem| {
    let mut c = clinic(tandem).await;
    let token = c.patient_token.clone();
    let cases: Vec<(&str, pb::SubmitCheckInRequest, &str)> = vec![
        (
            "10 PHQ-9 answers",
            pb::SubmitCheckInRequest {
                instruments: vec![pb::InstrumentResponse { instrument: "44249-1".into(), answers: vec![0; 10] }],
                ..Default::default()
            },
            "instruments[0].answers",
        ),
        (
            "an answer of 4",
            pb::SubmitCheckInRequest { instruments: vec![phq9([0, 0, 4, 0, 0, 0, 0, 0, 0])], ..Default::default() },
            "instruments[0].answers[2]",
        ),
        (
            "an unknown instrument",
            pb::SubmitCheckInRequest {
                instruments: vec![pb::InstrumentResponse { instrument: "beck-depression".into(), answers: vec![1, 2] }],
                ..Default::default()
            },
            "instruments[0].instrument",
        ),
        ("a 1 MB journal", pb::SubmitCheckInRequest { journal: "a".repeat(1 << 20), ..Default::default() }, "journal"),
        (
            "a missing C-SSRS branch",
            pb::SubmitCheckInRequest {
                // Q2 yes, so Q3-5 are required, but Q4 is skipped.
                instruments: vec![pb::InstrumentResponse {
                    instrument: "cssrs-screener".into(),
                    answers: vec![1, 1, 0, -1, 0, 0],
                }],
                ..Default::default()
            },
            "instruments[0].answers[3]",
        ),
        ("a mood of 11", pb::SubmitCheckInRequest { mood: Some(11), ..Default::default() }, "mood"),
    ];
    for (case, mut request, field) in cases {
        request.idempotency_key = format!("bad-{case}");
        request.patient_id = Some(c.patient.clone());
        let status = c.checkins.submit_check_in(authed(&token, request)).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{case}: no BadRequest details"))
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert!(fields.iter().any(|f| f == field), "{case}: {fields:?} lacks {field}");
    }
    let listed = c
        .checkins
        .list_check_ins(authed(
            &token,
            pb::ListCheckInsRequest { patient_id: Some(c.patient.clone()), range: None, page: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.check_ins.is_empty(), "nothing was stored");

    // A malformed PHQ-9 whose item 9 is still positive returns the crisis
    // resources with the error: a typo must not hide a patient in danger.
    let status = c
        .checkins
        .submit_check_in(authed(
            &token,
            pb::SubmitCheckInRequest {
                idempotency_key: "typo".into(),
                patient_id: Some(c.patient.clone()),
                instruments: vec![pb::InstrumentResponse {
                    instrument: "44249-1".into(),
                    answers: vec![0, 0, 0, 0, 0, 0, 0, 9, 2],
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("988"), "{}", status.message());
});

both_backends!(a_reused_check_in_key_with_a_different_body_is_a_conflict_not_a_replay, |tandem| {
    let mut c = clinic(tandem).await;
    let token = c.patient_token.clone();
    let calm = pb::SubmitCheckInRequest {
        idempotency_key: "monday".into(),
        patient_id: Some(c.patient.clone()),
        instruments: vec![phq9([1, 1, 0, 0, 0, 0, 0, 0, 0])],
        ..Default::default()
    };
    let first = c.checkins.submit_check_in(authed(&token, calm.clone())).await.unwrap().into_inner();
    assert!(first.safety_response.is_none());
    let retry = c.checkins.submit_check_in(authed(&token, calm.clone())).await.unwrap().into_inner();
    assert_eq!(retry, first, "an unchanged retry replays the first reply");

    // The retry's answers changed to item 9 = 3: refused as a conflict, and
    // the crisis it carries is not dropped silently.
    let crisis = pb::SubmitCheckInRequest { instruments: vec![phq9([1, 1, 0, 0, 0, 0, 0, 0, 3])], ..calm };
    let status = c.checkins.submit_check_in(authed(&token, crisis)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("idempotency_key"), "{}", status.message());
    assert!(status.message().contains("988"), "the crisis resources come with the conflict: {}", status.message());

    let listed = c
        .checkins
        .list_check_ins(authed(
            &token,
            pb::ListCheckInsRequest { patient_id: Some(c.patient.clone()), range: None, page: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.check_ins.len(), 1, "the conflict stored no second check-in");
});
