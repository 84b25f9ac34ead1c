//! A database that goes away under a running server, on embedded SQLite
//! and on PostgreSQL + Kafka: an EHR's calls that need it get UNAVAILABLE
//! with word to retry (never INTERNAL, never a patient's name), the same
//! idempotent calls succeed once it is back, and everything stored before
//! is still there, and what was stored after reaches the other services.
//! The outage is careplans' ([`tandem_tests::Tandem::outage`]): its SQLite
//! file held locked, or on PostgreSQL the database (which the services
//! share there) refusing connections and its sessions ended.

use tandem_auth::Role;
use tandem_proto::careplans::v1 as pb;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as checkins;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_tests::{authed, both_backends};
use tonic::Code;
use tonic_types::StatusExt;

fn enrolment(key: &str, mrn: &str, name: &str) -> pb::EnrollPatientRequest {
    pb::EnrollPatientRequest {
        idempotency_key: key.into(),
        external_id: mrn.into(),
        display_name: name.into(),
        time_zone: "UTC".into(),
    }
}

fn plan(patient: &tandem_proto::common::v1::PatientId) -> pb::CreateCarePlanRequest {
    pb::CreateCarePlanRequest {
        idempotency_key: "plan-1".into(),
        patient_id: Some(patient.clone()),
        title: "Between sessions".into(),
        goals: vec![pb::Goal {
            description: "Sleep seven hours".into(),
            status: pb::GoalStatus::Active as i32,
            patient_agreed: true,
            ..Default::default()
        }],
        status: pb::CarePlanStatus::Active as i32,
        ..Default::default()
    }
}

/// What an EHR checks of a failure while the database is away.
fn assert_unavailable(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(status.message().contains("retry"), "{what}: the message says to retry: {}", status.message());
    assert!(!status.message().contains("Blake"), "{what}: nothing of the patient: {}", status.message());
    assert!(status.get_details_retry_info().is_some(), "{what}: a RetryInfo for clients that read it");
    let id = status.get_details_request_info().map(|info| info.request_id).unwrap_or_default();
    assert!(!id.is_empty() && status.message().contains(&id), "{what}: a correlation id: {status:?}");
}

both_backends!(a_database_outage_is_unavailable_then_ok_with_nothing_lost, |tandem| {
    let embedded = tandem.kafka_brokers().is_none();
    let mut plans = CarePlanServiceClient::new(tandem.channel().await);
    let ehr = tandem.token("north", Role::Integration, "ehr-client");
    let alex = plans
        .enroll_patient(authed(&ehr, enrolment("enrol-alex", "mrn-1", "Alex Example")))
        .await
        .expect("enrol before the outage")
        .into_inner()
        .patient
        .unwrap();
    let alex_id = alex.id.clone().unwrap();
    let created = plans
        .create_care_plan(authed(&ehr, plan(&alex_id)))
        .await
        .expect("a plan before the outage")
        .into_inner()
        .care_plan
        .unwrap();
    let update = pb::UpdateCarePlanRequest {
        care_plan_id: created.id.clone(),
        expected_version: created.version,
        title: "Between sessions, revised".into(),
        goals: created.goals.clone(),
        tasks: created.tasks.clone(),
        measures: created.measures.clone(),
        status: pb::CarePlanStatus::Active as i32,
    };
    let blake = enrolment("enrol-blake", "mrn-2", "Blake Example");
    let get = pb::GetCarePlanRequest { care_plan_id: created.id.clone() };

    let outage = tandem.outage("careplans").await;
    let refused = plans.enroll_patient(authed(&ehr, blake.clone())).await.unwrap_err();
    assert_unavailable(&refused, "EnrollPatient");
    let refused = plans.update_care_plan(authed(&ehr, update.clone())).await.unwrap_err();
    assert_unavailable(&refused, "UpdateCarePlan");
    let read = plans.get_care_plan(authed(&ehr, get.clone())).await;
    if embedded {
        // SQLite in WAL mode: readers go on beside the held write lock.
        assert_eq!(read.expect("reads go on during a write lock").into_inner().care_plan, Some(created.clone()));
    } else {
        assert_unavailable(&read.unwrap_err(), "GetCarePlan");
    }
    outage.end().await;

    // The same idempotent calls, retried, succeed once; a second retry
    // replays the first answer.
    let blake_enrolled =
        plans.enroll_patient(authed(&ehr, blake.clone())).await.expect("the retry succeeds").into_inner().patient;
    let replayed =
        plans.enroll_patient(authed(&ehr, blake)).await.expect("a second retry replays").into_inner().patient;
    assert_eq!(replayed, blake_enrolled);
    let blake_id = blake_enrolled.and_then(|patient| patient.id).unwrap();
    let revised = plans
        .update_care_plan(authed(&ehr, update))
        .await
        .expect("the update, retried with the same expected version, succeeds")
        .into_inner()
        .care_plan
        .unwrap();
    assert_eq!((revised.version, revised.title.as_str()), (created.version + 1, "Between sessions, revised"));

    // Nothing stored before is lost, and nothing was stored twice.
    let read = plans.get_care_plan(authed(&ehr, get)).await.expect("the plan reads").into_inner().care_plan.unwrap();
    assert_eq!(read, revised);
    let listed = plans
        .list_patients(authed(&ehr, pb::ListPatientsRequest { page: None }))
        .await
        .expect("the patients list")
        .into_inner()
        .patients;
    let mut names: Vec<&str> = listed.iter().map(|patient| patient.display_name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Alex Example", "Blake Example"]);
    assert!(listed.contains(&alex), "the patient enrolled before the outage is unchanged");
    let versions = plans
        .list_care_plans(authed(&ehr, pb::ListCarePlansRequest { patient_id: Some(alex_id), page: None }))
        .await
        .expect("the plans list")
        .into_inner()
        .care_plans;
    assert_eq!(versions, [revised], "one plan, at its new version");

    // The enrolment made after the outage reaches check-ins through the
    // outbox: its EHR may read the new patient's check-ins there.
    let check_ins = CheckInServiceClient::new(tandem.channel().await);
    tandem
        .eventually("check-ins to learn of the patient enrolled after the outage", || {
            let request = checkins::ListCheckInsRequest { patient_id: Some(blake_id.clone()), range: None, page: None };
            let mut client = check_ins.clone();
            let token = ehr.clone();
            async move { client.list_check_ins(authed(&token, request)).await.ok() }
        })
        .await;
});
