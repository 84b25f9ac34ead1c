//! Care plans, care teams and safety plans through the public API, on
//! embedded SQLite and PostgreSQL.

use tandem_auth::Role;
use tandem_proto::careplans::v1 as pb;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::common::v1 as common;
use tandem_tests::{Tandem, authed, both_backends};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Clinic {
    client: CarePlanServiceClient<Channel>,
    patient: common::PatientId,
    integration: String,
    primary: String,
    backup: String,
    stranger: String,
    patient_token: String,
}

async fn clinic(tandem: &Tandem) -> Clinic {
    let mut client = CarePlanServiceClient::new(tandem.channel().await);
    let integration = tandem.token("north", Role::Integration, "ehr-client");
    let patient = client
        .enroll_patient(authed(
            &integration,
            pb::EnrollPatientRequest {
                idempotency_key: "p1".into(),
                external_id: "mrn-1".into(),
                display_name: "Alex Example".into(),
                time_zone: "America/Chicago".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
        .id
        .unwrap();
    let member = |id: &str, role: pb::CareTeamRole| pb::CareTeamMember {
        clinician_id: id.into(),
        role: role as i32,
        display_name: format!("Dr {id}"),
    };
    let team = client
        .set_care_team(authed(
            &integration,
            pb::SetCareTeamRequest {
                patient_id: Some(patient.clone()),
                members: vec![
                    member("dr-primary", pb::CareTeamRole::Primary),
                    member("dr-backup", pb::CareTeamRole::Backup),
                    member("on-call", pb::CareTeamRole::OnCall),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .care_team
        .unwrap();
    assert_eq!(team.version, 1);
    Clinic {
        patient_token: tandem.token("north", Role::Patient, &patient.value),
        client,
        patient,
        primary: tandem.token("north", Role::Clinician, "dr-primary"),
        backup: tandem.token("north", Role::Clinician, "dr-backup"),
        stranger: tandem.token("north", Role::Clinician, "dr-elsewhere"),
        integration,
    }
}

fn daily_from_now() -> pb::Recurrence {
    pb::Recurrence {
        every_days: 1,
        starts_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        ends_at: None,
    }
}

fn plan_request(patient: &common::PatientId, key: &str, status: pb::CarePlanStatus) -> pb::CreateCarePlanRequest {
    pb::CreateCarePlanRequest {
        idempotency_key: key.into(),
        patient_id: Some(patient.clone()),
        title: "Between sessions".into(),
        goals: vec![
            pb::Goal {
                description: "Sleep seven hours".into(),
                status: pb::GoalStatus::Active as i32,
                patient_agreed: true,
                ..Default::default()
            },
            pb::Goal {
                description: "Walk three times a week".into(),
                status: pb::GoalStatus::Proposed as i32,
                ..Default::default()
            },
        ],
        tasks: vec![pb::HomeworkTask {
            kind: pb::TaskKind::BreathingGrounding as i32,
            title: "Box breathing".into(),
            instructions: "Four counts in, hold four, out four, hold four.".into(),
            schedule: Some(pb::homework_task::Schedule::Recurrence(daily_from_now())),
            ..Default::default()
        }],
        measures: vec![pb::MeasureSchedule {
            instrument: "44249-1".into(),
            recurrence: Some(pb::Recurrence { every_days: 7, ..daily_from_now() }),
            expiry_window_hours: 72,
            ..Default::default()
        }],
        status: status as i32,
    }
}

both_backends!(clinicians_on_the_team_write_plans_and_patients_read_them, |tandem| {
    let mut c = clinic(tandem).await;
    let request = plan_request(&c.patient, "plan-1", pb::CarePlanStatus::Draft);
    let created = c
        .client
        .create_care_plan(authed(&c.primary, request.clone()))
        .await
        .expect("the primary clinician creates a plan")
        .into_inner()
        .care_plan
        .unwrap();
    assert_eq!((created.version, created.status()), (1, pb::CarePlanStatus::Draft));
    assert_eq!(created.goals.len(), 2);
    assert!(created.goals.iter().all(|goal| !goal.goal_id.is_empty()));
    assert_eq!(created.updated_by.as_ref().unwrap().subject, "dr-primary");
    let id = created.id.clone();

    // A retry (the same request again) returns the same plan.
    let again = c.client.create_care_plan(authed(&c.primary, request)).await.unwrap().into_inner().care_plan.unwrap();
    assert_eq!(again, created);

    // The patient does not see a draft.
    let denied = c
        .client
        .get_care_plan(authed(&c.patient_token, pb::GetCarePlanRequest { care_plan_id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The backup activates it; every change makes a new version.
    let mut update = pb::UpdateCarePlanRequest {
        care_plan_id: id.clone(),
        expected_version: 1,
        title: created.title.clone(),
        goals: created.goals.clone(),
        tasks: created.tasks.clone(),
        measures: created.measures.clone(),
        status: pb::CarePlanStatus::Active as i32,
    };
    let active =
        c.client.update_care_plan(authed(&c.backup, update.clone())).await.unwrap().into_inner().care_plan.unwrap();
    assert_eq!((active.version, active.status()), (2, pb::CarePlanStatus::Active));
    assert_eq!(active.goals[0].goal_id, created.goals[0].goal_id, "ids are stable across versions");

    // A stale version is refused, and nothing changes.
    let stale = c.client.update_care_plan(authed(&c.primary, update.clone())).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    update.expected_version = 2;
    update.status = pb::CarePlanStatus::Draft as i32;
    let backwards = c.client.update_care_plan(authed(&c.primary, update)).await.unwrap_err();
    assert_eq!(backwards.code(), Code::FailedPrecondition);

    // Now the patient reads it, and lists it.
    let read = c
        .client
        .get_care_plan(authed(&c.patient_token, pb::GetCarePlanRequest { care_plan_id: id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .care_plan
        .unwrap();
    assert_eq!(read, active);
    let listed = c
        .client
        .list_care_plans(authed(
            &c.patient_token,
            pb::ListCarePlansRequest { patient_id: Some(c.patient.clone()), page: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.care_plans, vec![active.clone()]);

    // A clinician not on the care team sees nothing and writes nothing.
    let denied = c
        .client
        .get_care_plan(authed(&c.stranger, pb::GetCarePlanRequest { care_plan_id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .client
        .create_care_plan(authed(&c.stranger, plan_request(&c.patient, "plan-x", pb::CarePlanStatus::Active)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Nor does another org, nor can a patient write their own plan.
    let foreign = tandem.token("south", Role::Admin, "admin");
    let denied = c
        .client
        .get_care_plan(authed(&foreign, pb::GetCarePlanRequest { care_plan_id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = c
        .client
        .create_care_plan(authed(&c.patient_token, plan_request(&c.patient, "plan-p", pb::CarePlanStatus::Active)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The caseload: the primary's patient list holds the patient, the stranger's is empty.
    let mine =
        c.client.list_patients(authed(&c.primary, pb::ListPatientsRequest::default())).await.unwrap().into_inner();
    assert_eq!(mine.patients.len(), 1);
    let theirs =
        c.client.list_patients(authed(&c.stranger, pb::ListPatientsRequest::default())).await.unwrap().into_inner();
    assert!(theirs.patients.is_empty());
    let _ = &c.integration;
});

both_backends!(invalid_plans_get_field_violations_and_nothing_is_stored, |tandem| {
    let mut c = clinic(tandem).await;
    let mut bad = plan_request(&c.patient, "bad", pb::CarePlanStatus::Active);
    bad.title = String::new();
    bad.measures[0].instrument = "beck".into();
    bad.measures[0].expiry_window_hours = 0;
    bad.tasks[0].schedule = None;
    let status = c.client.create_care_plan(authed(&c.primary, bad)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields: Vec<String> =
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    fields.sort();
    assert_eq!(fields, ["measures[0].expiry_window_hours", "measures[0].instrument", "tasks[0].schedule", "title"]);
    let listed = c
        .client
        .list_care_plans(authed(
            &c.primary,
            pb::ListCarePlansRequest { patient_id: Some(c.patient.clone()), page: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.care_plans.is_empty());

    // A care team needs exactly one primary, first.
    let status = c
        .client
        .set_care_team(authed(
            &c.integration,
            pb::SetCareTeamRequest {
                patient_id: Some(c.patient.clone()),
                members: vec![pb::CareTeamMember {
                    clinician_id: "dr-backup".into(),
                    role: pb::CareTeamRole::Backup as i32,
                    display_name: String::new(),
                }],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let team = c
        .client
        .get_care_team(authed(&c.primary, pb::GetCareTeamRequest { patient_id: Some(c.patient.clone()) }))
        .await
        .unwrap()
        .into_inner()
        .care_team
        .unwrap();
    assert_eq!(team.members.len(), 3, "the stored team is unchanged");
});

both_backends!(safety_plans_are_versioned_and_shared_by_patient_and_team, |tandem| {
    let mut c = clinic(tandem).await;
    let missing = c
        .client
        .get_safety_plan(authed(&c.patient_token, pb::GetSafetyPlanRequest { patient_id: Some(c.patient.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let plan = pb::SafetyPlan {
        patient_id: Some(c.patient.clone()),
        warning_signs: vec!["Not sleeping".into(), "Skipping meals".into()],
        coping_strategies: vec!["Go for a walk".into()],
        help_contacts: vec![pb::SafetyContact { name: "Sam".into(), phone: "555-0100".into() }],
        professional_contacts: vec![pb::SafetyContact { name: "988 Lifeline".into(), phone: "988".into() }],
        ..Default::default()
    };
    let v1 = c
        .client
        .put_safety_plan(authed(
            &c.primary,
            pb::PutSafetyPlanRequest { safety_plan: Some(plan.clone()), expected_version: 0 },
        ))
        .await
        .unwrap()
        .into_inner()
        .safety_plan
        .unwrap();
    assert_eq!(v1.version, 1);
    let mut changed = plan.clone();
    changed.environment_safety = vec!["Medication locked away".into()];
    let v2 = c
        .client
        .put_safety_plan(authed(
            &c.patient_token,
            pb::PutSafetyPlanRequest { safety_plan: Some(changed), expected_version: 1 },
        ))
        .await
        .expect("the patient edits their own plan")
        .into_inner()
        .safety_plan
        .unwrap();
    assert_eq!(v2.version, 2);
    let stale = c
        .client
        .put_safety_plan(authed(
            &c.primary,
            pb::PutSafetyPlanRequest { safety_plan: Some(plan.clone()), expected_version: 1 },
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let current = c
        .client
        .get_safety_plan(authed(&c.backup, pb::GetSafetyPlanRequest { patient_id: Some(c.patient.clone()) }))
        .await
        .unwrap()
        .into_inner()
        .safety_plan
        .unwrap();
    assert_eq!(current, v2);
    let denied = c
        .client
        .get_safety_plan(authed(&c.stranger, pb::GetSafetyPlanRequest { patient_id: Some(c.patient.clone()) }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let empty = c
        .client
        .put_safety_plan(authed(
            &c.primary,
            pb::PutSafetyPlanRequest {
                safety_plan: Some(pb::SafetyPlan { patient_id: Some(c.patient.clone()), ..Default::default() }),
                expected_version: 2,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
});

both_backends!(an_idempotency_key_never_replays_another_patients_plan, |tandem| {
    let mut c = clinic(tandem).await;
    // A second patient on the same primary's caseload.
    let other = c
        .client
        .enroll_patient(authed(
            &c.integration,
            pb::EnrollPatientRequest {
                idempotency_key: "p2".into(),
                external_id: "mrn-2".into(),
                display_name: "Blake Example".into(),
                time_zone: "UTC".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
        .id
        .unwrap();
    c.client
        .set_care_team(authed(
            &c.integration,
            pb::SetCareTeamRequest {
                patient_id: Some(other.clone()),
                members: vec![pb::CareTeamMember {
                    clinician_id: "dr-primary".into(),
                    role: pb::CareTeamRole::Primary as i32,
                    display_name: "Dr Primary".into(),
                }],
            },
        ))
        .await
        .unwrap();

    let template = plan_request(&c.patient, "weekly-plan", pb::CarePlanStatus::Draft);
    let create = |patient: &common::PatientId, title: &str| pb::CreateCarePlanRequest {
        patient_id: Some(patient.clone()),
        title: title.into(),
        ..template.clone()
    };
    let first = c
        .client
        .create_care_plan(authed(&c.primary, create(&c.patient, "Plan for Alex")))
        .await
        .unwrap()
        .into_inner()
        .care_plan
        .unwrap();
    // The same common key for another patient makes that patient's own plan.
    let second = c
        .client
        .create_care_plan(authed(&c.primary, create(&other, "Plan for Blake")))
        .await
        .expect("the same key for another patient is another request")
        .into_inner()
        .care_plan
        .unwrap();
    assert_ne!(second.id, first.id, "another patient's plan was replayed");
    assert_eq!(second.patient_id.as_ref(), Some(&other));
    assert_eq!(second.title, "Plan for Blake");

    // A retry for the first patient still replays the first plan.
    let retry = c
        .client
        .create_care_plan(authed(&c.primary, create(&c.patient, "Plan for Alex")))
        .await
        .unwrap()
        .into_inner()
        .care_plan
        .unwrap();
    assert_eq!(retry, first);

    // The same key and patient with a different body is a conflict, not a replay.
    let conflict =
        c.client.create_care_plan(authed(&c.primary, create(&c.patient, "A different plan"))).await.unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition, "{conflict:?}");
    assert!(conflict.message().contains("idempotency_key"), "{}", conflict.message());
    assert_eq!(
        conflict.get_error_details().error_info().map(|info| info.reason.as_str()),
        Some(tandem_server::idempotency::KEY_REUSED)
    );
    assert!(!conflict.message().contains("Alex"), "a conflict leaks nothing of the stored plan");

    let plans = c
        .client
        .list_care_plans(authed(
            &c.primary,
            pb::ListCarePlansRequest { patient_id: Some(c.patient.clone()), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .care_plans;
    assert_eq!(plans.len(), 1, "the conflict stored nothing");
});
