//! A crisis signal in a submission that is refused (malformed answers, a
//! journal over the limit, a reused idempotency key, a missing patient id)
//! still reaches a human: triage escalates the signal, and the error carries
//! the safety response as a structured detail an app can render. And every
//! safety response says truthfully who is being alerted: a care-team
//! member, the org's crisis contact, or nobody. Embedded and on PostgreSQL +
//! Kafka.

use tandem_auth::Role;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn phq9(answers: &[i32]) -> pb::InstrumentResponse {
    pb::InstrumentResponse { instrument: "44249-1".into(), answers: answers.to_vec() }
}

/// Enrols a patient, with a care team whose primary is "Dr Rivera" when
/// `with_team`, and waits until triage and check-ins both know it.
async fn patient(tandem: &Tandem, mrn: &str, with_team: bool) -> common::PatientId {
    let mut plans_client = CarePlanServiceClient::new(tandem.channel().await);
    let ehr = tandem.token("north", Role::Integration, "ehr-client");
    let request = plans::EnrollPatientRequest {
        idempotency_key: format!("enrol-{mrn}"),
        external_id: mrn.into(),
        display_name: "Alex Example".into(),
        time_zone: "UTC".into(),
    };
    let patient = plans_client.enroll_patient(authed(&ehr, request)).await.unwrap().into_inner().patient.unwrap();
    let id = patient.id.unwrap();
    if !with_team {
        return id;
    }
    let member = |clinician: &str, role: plans::CareTeamRole, name: &str| plans::CareTeamMember {
        clinician_id: clinician.into(),
        role: role as i32,
        display_name: name.into(),
    };
    plans_client
        .set_care_team(authed(
            &ehr,
            plans::SetCareTeamRequest {
                patient_id: Some(id.clone()),
                members: vec![
                    member("dr-primary", plans::CareTeamRole::Primary, "Dr Rivera"),
                    member("dr-backup", plans::CareTeamRole::Backup, "Dr Okafor"),
                ],
            },
        ))
        .await
        .unwrap();
    // Events of different topics arrive in any order: a clinician may read
    // the patient's triage rules and check-ins only once each service knows
    // the care team.
    let primary = tandem.token("north", Role::Clinician, "dr-primary");
    let triage_client = TriageServiceClient::new(tandem.channel().await);
    let checkins_client = CheckInServiceClient::new(tandem.channel().await);
    tandem
        .eventually("triage and check-ins to know the care team", || {
            let (mut triage_client, mut checkins_client) = (triage_client.clone(), checkins_client.clone());
            let (id, primary) = (id.clone(), primary.clone());
            async move {
                let rules = triage::GetTriageConfigRequest { patient_id: Some(id.clone()) };
                triage_client.get_triage_config(authed(&primary, rules)).await.ok()?;
                let list = pb::ListCheckInsRequest { patient_id: Some(id), range: None, page: None };
                checkins_client.list_check_ins(authed(&primary, list)).await.ok()
            }
        })
        .await;
    id
}

async fn submit(
    tandem: &Tandem,
    token: &str,
    request: pb::SubmitCheckInRequest,
) -> Result<pb::SubmitCheckInResponse, Status> {
    let mut client = CheckInServiceClient::new(tandem.channel().await);
    client.submit_check_in(authed(token, request)).await.map(tonic::Response::into_inner)
}

/// The patient's escalation, once triage has raised it.
async fn escalation_of(tandem: &Tandem, patient: &common::PatientId) -> triage::Escalation {
    let supervisor = tandem.token("north", Role::Supervisor, "sup-1");
    let client = TriageServiceClient::new(tandem.channel().await);
    let found = tandem
        .eventually("the patient's escalation", || {
            let mut client = client.clone();
            let supervisor = supervisor.clone();
            async move {
                let list =
                    client.list_worklist(authed(&supervisor, triage::ListWorklistRequest::default())).await.ok()?;
                list.into_inner().escalations.into_iter().find(|e| e.patient_id.as_ref() == Some(patient))
            }
        })
        .await;
    // GetEscalation has the full timeline.
    let mut client = client.clone();
    client
        .get_escalation(authed(&supervisor, triage::GetEscalationRequest { escalation_id: found.id }))
        .await
        .unwrap()
        .into_inner()
        .escalation
        .unwrap()
}

/// Waits until the patient's escalation has paged `who` (a `notify` entry in
/// its timeline). The current recipient alone is racy: an alert that reaches
/// nobody (no endpoint registered) moves on to the next step at once, and a
/// care team that arrives after the raise takes the alert back.
async fn wait_paged(tandem: &Tandem, patient: &common::PatientId, who: &str) {
    let supervisor = tandem.token("north", Role::Supervisor, "sup-1");
    let client = TriageServiceClient::new(tandem.channel().await);
    tandem
        .eventually(&format!("{who} paged"), || {
            let mut client = client.clone();
            let supervisor = supervisor.clone();
            async move {
                let list =
                    client.list_worklist(authed(&supervisor, triage::ListWorklistRequest::default())).await.ok()?;
                let found =
                    list.into_inner().escalations.into_iter().find(|e| e.patient_id.as_ref() == Some(patient))?;
                let full = client
                    .get_escalation(authed(&supervisor, triage::GetEscalationRequest { escalation_id: found.id }))
                    .await
                    .ok()?
                    .into_inner()
                    .escalation?;
                full.timeline.iter().any(|t| t.kind == "notify" && t.actor == who).then_some(())
            }
        })
        .await;
}

/// The safety response a refused check-in carries as an error detail.
fn safety_of(status: &Status) -> pb::SafetyResponse {
    tandem_server::status::detail::<pb::SafetyResponse>(status)
        .unwrap_or_else(|| panic!("no SafetyResponse detail in {status:?}"))
}

fn assert_care_team_is_alerted(case: &str, safety: &pb::SafetyResponse) {
    assert_eq!(safety.alert_target(), pb::AlertTarget::CareTeam, "{case}: {safety:?}");
    assert!(safety.care_team_alerted, "{case}");
    assert_eq!(safety.alerted_role(), plans::CareTeamRole::Primary, "{case}");
    assert_eq!(safety.alerted_name, "Dr Rivera", "{case}");
    assert!(safety.notice.contains("Dr Rivera"), "{case}: {}", safety.notice);
    assert!(safety.resources.iter().any(|r| r.contact.contains("988")), "{case}: {:?}", safety.resources);
    assert!(!safety.ai_generated, "{case}");
}

macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                $body(StoreBackend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_kafka() {
                $body(StoreBackend::Postgres).await;
            }
        }
    };
}

/// One refused submission: what is sent, the code and field it is refused
/// with, the trigger it carries and the least level triage gives it.
struct Case {
    name: &'static str,
    request: pb::SubmitCheckInRequest,
    code: Code,
    field: Option<&'static str>,
    trigger: &'static str,
    level: triage::RiskLevel,
}

async fn every_refused_crisis_is_escalated_with_a_structured_safety_response(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let journal = format!("{} I want to kill myself.", "Work was long and the bus was late again. ".repeat(600));
    assert!(journal.chars().count() > 20_000);
    let cases = vec![
        Case {
            name: "a malformed PHQ-9 with item 9 answered",
            request: pb::SubmitCheckInRequest {
                instruments: vec![phq9(&[0, 0, 0, 0, 0, 0, 0, 9, 2])],
                ..Default::default()
            },
            code: Code::InvalidArgument,
            field: Some("instruments[0].answers[7]"),
            trigger: "phq9-item9",
            level: triage::RiskLevel::High,
        },
        Case {
            name: "a C-SSRS with a plan and intent but a skipped branch",
            request: pb::SubmitCheckInRequest {
                instruments: vec![pb::InstrumentResponse {
                    instrument: "cssrs-screener".into(),
                    answers: vec![1, 1, 0, -1, 1, 0],
                }],
                ..Default::default()
            },
            code: Code::InvalidArgument,
            field: Some("instruments[0].answers[3]"),
            trigger: "cssrs-high-risk",
            level: triage::RiskLevel::Imminent,
        },
        Case {
            name: "a journal over the length limit with crisis language",
            request: pb::SubmitCheckInRequest { journal: journal.clone(), ..Default::default() },
            code: Code::InvalidArgument,
            field: Some("journal"),
            trigger: "crisis-language",
            level: triage::RiskLevel::High,
        },
        Case {
            name: "a valid PHQ-9 with item 9 answered beside a bad mood",
            request: pb::SubmitCheckInRequest {
                mood: Some(11),
                instruments: vec![phq9(&[1, 1, 1, 1, 0, 0, 0, 0, 1])],
                ..Default::default()
            },
            code: Code::InvalidArgument,
            field: Some("mood"),
            trigger: "phq9-item9",
            level: triage::RiskLevel::High,
        },
        Case {
            name: "a reused idempotency key whose new body has item 9 answered",
            request: pb::SubmitCheckInRequest {
                instruments: vec![phq9(&[1, 1, 0, 0, 0, 0, 0, 0, 3])],
                ..Default::default()
            },
            code: Code::FailedPrecondition,
            field: None,
            trigger: "phq9-item9",
            level: triage::RiskLevel::High,
        },
        Case {
            name: "no patient id, from the patient's own token",
            request: pb::SubmitCheckInRequest {
                instruments: vec![phq9(&[0, 0, 0, 0, 0, 0, 0, 0, 2])],
                ..Default::default()
            },
            code: Code::InvalidArgument,
            field: Some("patient_id"),
            trigger: "phq9-item9",
            level: triage::RiskLevel::High,
        },
    ];
    for (index, case) in cases.into_iter().enumerate() {
        let patient = patient(&tandem, &format!("mrn-{index}"), true).await;
        let token = tandem.token("north", Role::Patient, &patient.value);
        let key = format!("key-{index}");
        let mut request = pb::SubmitCheckInRequest { idempotency_key: key.clone(), ..case.request };
        if case.field != Some("patient_id") {
            request.patient_id = Some(patient.clone());
        }
        if case.code == Code::FailedPrecondition {
            let calm = pb::SubmitCheckInRequest {
                idempotency_key: key.clone(),
                patient_id: Some(patient.clone()),
                instruments: vec![phq9(&[1, 1, 0, 0, 0, 0, 0, 0, 0])],
                ..Default::default()
            };
            let first = submit(&tandem, &token, calm).await.expect("the first check-in is accepted");
            assert!(first.safety_response.is_none());
        }

        let status = submit(&tandem, &token, request).await.expect_err(case.name);
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.name);
        match case.field {
            Some(field) => {
                let bad = status.get_details_bad_request().unwrap_or_else(|| panic!("{}: no BadRequest", case.name));
                assert!(bad.field_violations.iter().any(|v| v.field == field), "{}: {bad:?}", case.name);
            }
            None => assert_eq!(
                status.get_details_error_info().map(|info| info.reason),
                Some(tandem_server::idempotency::KEY_REUSED.to_owned()),
                "{}",
                case.name
            ),
        }
        let safety = safety_of(&status);
        assert_eq!(safety.triggers, [case.trigger], "{}", case.name);
        assert_care_team_is_alerted(case.name, &safety);
        assert!(status.message().contains("988"), "{}: resources in the message too: {}", case.name, status.message());
        assert!(!status.message().contains("kill"), "{}: no journal text in the message", case.name);

        // Triage escalates the signal as it would the check-in, to the primary.
        let escalation = escalation_of(&tandem, &patient).await;
        assert!(escalation.level as i32 >= case.level as i32, "{}: {escalation:?}", case.name);
        wait_paged(&tandem, &patient, "dr-primary").await;
        let raised = escalation.timeline.iter().find(|t| t.kind == "raised").expect("a raised entry");
        assert!(
            raised.detail.contains(case.trigger) && raised.detail.contains("refused"),
            "{}: {}",
            case.name,
            raised.detail
        );
        assert!(
            !raised.detail.contains("kill myself"),
            "{}: the journal's words stay out: {}",
            case.name,
            raised.detail
        );

        // The refused submission itself was not stored.
        let mut client = CheckInServiceClient::new(tandem.channel().await);
        let listed = client
            .list_check_ins(authed(
                &token,
                pb::ListCheckInsRequest { patient_id: Some(patient.clone()), range: None, page: None },
            ))
            .await
            .unwrap()
            .into_inner();
        let expected = usize::from(case.code == Code::FailedPrecondition);
        assert_eq!(listed.check_ins.len(), expected, "{}: only accepted check-ins are stored", case.name);
    }
    tandem.stop().await;
}
on_both!(every_refused_crisis_is_escalated_, every_refused_crisis_is_escalated_with_a_structured_safety_response);

async fn the_reply_says_who_is_alerted(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let crisis = |patient: &common::PatientId| pb::SubmitCheckInRequest {
        idempotency_key: "crisis".into(),
        patient_id: Some(patient.clone()),
        instruments: vec![phq9(&[1, 1, 1, 1, 1, 1, 1, 1, 1])],
        ..Default::default()
    };

    // (a) The care team is known: its first member is paged, and named.
    let with_team = patient(&tandem, "mrn-team", true).await;
    let token = tandem.token("north", Role::Patient, &with_team.value);
    let reply = submit(&tandem, &token, crisis(&with_team)).await.unwrap();
    let safety = reply.safety_response.expect("a safety response");
    assert_care_team_is_alerted("care team known", &safety);
    wait_paged(&tandem, &with_team, "dr-primary").await;

    // (b) No care team, but the org has a crisis contact: it is paged, and
    // the reply does not claim the care team is.
    let without_team = patient(&tandem, "mrn-alone", false).await;
    let token = tandem.token("north", Role::Patient, &without_team.value);
    let reply = submit(&tandem, &token, crisis(&without_team)).await.unwrap();
    let safety = reply.safety_response.expect("a safety response");
    assert_eq!(safety.alert_target(), pb::AlertTarget::CrisisContact, "{safety:?}");
    assert!(!safety.care_team_alerted, "no care team was alerted");
    assert!(safety.notice.contains("crisis contact"), "{}", safety.notice);
    wait_paged(&tandem, &without_team, "on-call").await;
    tandem.stop().await;
}
on_both!(the_reply_says_who_is_alerted_, the_reply_says_who_is_alerted);

async fn when_nobody_can_be_reached_the_reply_says_so_resources_first(backend: StoreBackend) {
    // (c) No crisis contact configured, and a patient with no care team.
    let tandem = Tandem::start_with(backend, &[("triage.crisis_contact", "")]).await;
    let alone = patient(&tandem, "mrn-alone", false).await;
    let token = tandem.token("north", Role::Patient, &alone.value);
    let request = pb::SubmitCheckInRequest {
        idempotency_key: "crisis".into(),
        patient_id: Some(alone.clone()),
        instruments: vec![phq9(&[1, 1, 1, 1, 1, 1, 1, 1, 2])],
        ..Default::default()
    };
    let safety = submit(&tandem, &token, request).await.unwrap().safety_response.expect("a safety response");
    assert_eq!(safety.alert_target(), pb::AlertTarget::Nobody, "{safety:?}");
    assert!(!safety.care_team_alerted);
    assert!(safety.notice.starts_with("Nobody at your clinic could be alerted"), "{}", safety.notice);
    assert!(safety.resources.iter().any(|r| r.contact.contains("988")), "{:?}", safety.resources);

    // A refused one says the same, with the resources before anything else
    // in the message.
    let refused = pb::SubmitCheckInRequest {
        idempotency_key: "typo".into(),
        patient_id: Some(alone.clone()),
        instruments: vec![phq9(&[0, 0, 0, 0, 0, 0, 0, 9, 3])],
        ..Default::default()
    };
    let status = submit(&tandem, &token, refused).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let safety = safety_of(&status);
    assert_eq!(safety.alert_target(), pb::AlertTarget::Nobody);
    assert!(
        status.message().starts_with("if you are thinking about harming yourself, help is available now: 988"),
        "{}",
        status.message()
    );

    // Triage still raises the escalation, with nobody to page: the truth
    // the reply told, on every supervisor's worklist.
    let escalation = escalation_of(&tandem, &alone).await;
    assert_eq!(escalation.current_recipient, "", "{escalation:?}");
    tandem.stop().await;
}
on_both!(when_nobody_can_be_reached_, when_nobody_can_be_reached_the_reply_says_so_resources_first);
