//! The crisis path: a crisis check-in brings the immediate reply and an
//! escalation that climbs the care team until a human acknowledges it, on
//! embedded and on PostgreSQL + Kafka, across a restart.

use std::time::{Duration, SystemTime};

use tandem_auth::Role;
use tandem_cli::webhook::Receiver;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::notifications::v1 as notifications;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};
use tonic::Code;

/// Short deadlines so the chain climbs within a test.
const CONFIG: &[(&str, &str)] = &[("triage.high_ack", "3s"), ("triage.imminent_ack", "2s")];

struct Clinic {
    receiver: Receiver,
    secrets: std::collections::HashMap<String, String>,
    patient: common::PatientId,
    patient_token: String,
    primary: String,
    backup: String,
    supervisor: String,
}

async fn clinic(tandem: &Tandem) -> Clinic {
    let mut plans_client = CarePlanServiceClient::new(tandem.channel().await);
    let ehr = tandem.token("north", Role::Integration, "ehr-client");
    let patient = tandem.enroll(&ehr, "mrn-1").await;
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
    // Every person on the chain, and the on-call contact, has a verified
    // signed webhook at the test's own HTTP server.
    let receiver = Receiver::start().await.expect("webhook receiver");
    let mut secrets = std::collections::HashMap::new();
    let admin = tandem.token("north", Role::Admin, "admin-1");
    let mut notifications_client = NotificationServiceClient::new(tandem.channel().await);
    for subject in ["dr-primary", "dr-backup", "on-call"] {
        let (token, register_for) = if subject == "on-call" {
            (admin.clone(), subject.to_owned())
        } else {
            (tandem.token("north", Role::Clinician, subject), String::new())
        };
        let path = format!("/{subject}");
        let registered = notifications_client
            .register_endpoint(authed(
                &token,
                notifications::RegisterEndpointRequest {
                    channel: notifications::Channel::Webhook as i32,
                    address: receiver.url(&path),
                    subject: register_for,
                    ..Default::default()
                },
            ))
            .await
            .expect("register a webhook")
            .into_inner();
        let code = receiver
            .wait_for(Duration::from_secs(30), |r| r.path == path && r.kind() == "endpoint.verification")
            .await
            .expect("the verification code reaches the webhook");
        assert!(code.verifies_with(&registered.signing_secret), "verification message is signed");
        notifications_client
            .verify_endpoint(authed(
                &token,
                notifications::VerifyEndpointRequest {
                    endpoint_id: registered.endpoint.unwrap().endpoint_id,
                    code: code.json["code"].as_str().unwrap().to_owned(),
                },
            ))
            .await
            .expect("verify the webhook");
        secrets.insert(path, registered.signing_secret);
    }
    // Events of different topics arrive in any order: wait until triage
    // knows the care team (a clinician may read the patient's rules only
    // then), or the first alert goes to the crisis contact, as it must when
    // the chain is unknown.
    let primary = tandem.token("north", Role::Clinician, "dr-primary");
    let client = TriageServiceClient::new(tandem.channel().await);
    tandem
        .eventually("triage to know the care team", || {
            let mut client = client.clone();
            let request = triage::GetTriageConfigRequest { patient_id: Some(patient.clone()) };
            let primary = primary.clone();
            async move { client.get_triage_config(authed(&primary, request)).await.ok() }
        })
        .await;
    Clinic {
        receiver,
        secrets,
        patient_token: tandem.token("north", Role::Patient, &patient.value),
        patient,
        primary: tandem.token("north", Role::Clinician, "dr-primary"),
        backup: tandem.token("north", Role::Clinician, "dr-backup"),
        supervisor: tandem.token("north", Role::Supervisor, "sup-1"),
    }
}

async fn crisis_check_in(tandem: &Tandem, c: &Clinic, key: &str) -> pb::SubmitCheckInResponse {
    let mut checkins = CheckInServiceClient::new(tandem.channel().await);
    checkins
        .submit_check_in(authed(
            &c.patient_token,
            pb::SubmitCheckInRequest {
                idempotency_key: key.into(),
                patient_id: Some(c.patient.clone()),
                instruments: vec![pb::InstrumentResponse {
                    instrument: "44249-1".into(),
                    answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 1],
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("a crisis check-in is accepted")
        .into_inner()
}

async fn worklist(tandem: &Tandem, token: &str) -> Vec<triage::Escalation> {
    let mut client = TriageServiceClient::new(tandem.channel().await);
    client.list_worklist(authed(token, triage::ListWorklistRequest::default())).await.unwrap().into_inner().escalations
}

async fn wait_for(
    tandem: &Tandem,
    token: &str,
    what: &str,
    test: impl Fn(&triage::Escalation) -> bool,
) -> triage::Escalation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = worklist(tandem, token).await.into_iter().find(|e| test(e)) {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

async fn an_acknowledgement_stops_the_chain(backend: StoreBackend) {
    let tandem = Tandem::start_with(backend, CONFIG).await;
    let c = clinic(&tandem).await;
    let reply = crisis_check_in(&tandem, &c, "crisis-1").await;
    assert!(reply.safety_response.is_some());
    let escalation = wait_for(&tandem, &c.primary, "the escalation on the primary's worklist", |e| {
        e.state() == triage::EscalationState::Notified
    })
    .await;
    assert_eq!(escalation.level(), triage::RiskLevel::High);
    assert_eq!(escalation.current_recipient, "dr-primary");
    assert_eq!(escalation.step, 0);
    assert!(escalation.timeline.iter().any(|t| t.kind == "raised" && t.detail.contains("phq9-item9")));

    // The primary's signed webhook arrives, with no patient text in it.
    let alert = c
        .receiver
        .wait_for(Duration::from_secs(30), |r| r.path == "/dr-primary" && r.kind() == "escalation.notify")
        .await
        .expect("the primary's webhook fires");
    assert!(alert.verifies_with(&c.secrets["/dr-primary"]), "signature verifies");
    assert!(!alert.id.is_empty() && !alert.timestamp.is_empty());
    assert_eq!(alert.json["data"]["escalation_id"], escalation.id.as_ref().unwrap().value.as_str());
    assert!(!String::from_utf8_lossy(&alert.body).contains("Alex"), "no patient name in an alert");

    // A second crisis check-in joins it instead of paging again.
    crisis_check_in(&tandem, &c, "crisis-2").await;
    let mut client = TriageServiceClient::new(tandem.channel().await);
    let id = escalation.id.clone();
    tandem
        .eventually("the second trigger to join", || {
            let mut client = client.clone();
            let id = id.clone();
            let token = c.primary.clone();
            async move {
                let e = client
                    .get_escalation(authed(&token, triage::GetEscalationRequest { escalation_id: id }))
                    .await
                    .ok()?;
                e.into_inner().escalation?.timeline.iter().any(|t| t.kind == "joined").then_some(())
            }
        })
        .await;
    assert_eq!(worklist(&tandem, &c.primary).await.len(), 1, "one escalation, not two");

    // The primary acknowledges; the deadline passes; nobody else is paged.
    let acknowledged = client
        .acknowledge_escalation(authed(
            &c.primary,
            triage::AcknowledgeEscalationRequest { escalation_id: id.clone(), note: "calling the patient now".into() },
        ))
        .await
        .expect("the primary acknowledges")
        .into_inner()
        .escalation
        .unwrap();
    assert_eq!(acknowledged.state(), triage::EscalationState::Acknowledged);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = client
        .get_escalation(authed(&c.backup, triage::GetEscalationRequest { escalation_id: id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .escalation
        .unwrap();
    assert_eq!(
        (after.state(), after.step, after.current_recipient.as_str()),
        (triage::EscalationState::Acknowledged, 0, "dr-primary")
    );
    assert!(!after.timeline.iter().any(|t| t.kind == "deadline_passed"));
    assert!(
        !c.receiver.received().iter().any(|r| r.path == "/dr-backup" && r.kind() == "escalation.notify"),
        "an acknowledgement stops the chain: the backup is never paged"
    );
    let to_primary =
        c.receiver.received().iter().filter(|r| r.path == "/dr-primary" && r.kind() == "escalation.notify").count();
    assert_eq!(to_primary, 1, "the joined trigger did not page again");

    // Resolving needs an outcome; then the worklist is clear.
    let missing = client
        .resolve_escalation(authed(
            &c.primary,
            triage::ResolveEscalationRequest { escalation_id: id.clone(), outcome: String::new() },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    client
        .resolve_escalation(authed(
            &c.primary,
            triage::ResolveEscalationRequest {
                escalation_id: id.clone(),
                outcome: "spoke with patient; safety plan reviewed".into(),
            },
        ))
        .await
        .unwrap();
    assert!(worklist(&tandem, &c.primary).await.is_empty());

    // Time to acknowledge is reported per level.
    let stats = client
        .get_acknowledgement_stats(authed(&c.supervisor, triage::GetAcknowledgementStatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let high = stats.levels.iter().find(|l| l.level() == triage::RiskLevel::High).expect("high level stats");
    assert_eq!((high.raised, high.acknowledged), (1, 1));
    assert!(high.max_seconds > 0.0);

    // Patients and other orgs see no worklist.
    let denied =
        client.list_worklist(authed(&c.patient_token, triage::ListWorklistRequest::default())).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let foreign = tandem.token("south", Role::Supervisor, "sup-9");
    assert!(worklist(&tandem, &foreign).await.is_empty());
    let denied =
        client.get_escalation(authed(&foreign, triage::GetEscalationRequest { escalation_id: id })).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    tandem.stop().await;
}
on_both!(an_acknowledgement_stops_the_chain_, an_acknowledgement_stops_the_chain);

async fn an_unacknowledged_alert_climbs_to_the_backup_even_across_a_restart(backend: StoreBackend) {
    let mut tandem = Tandem::start_with(backend, CONFIG).await;
    let c = clinic(&tandem).await;
    crisis_check_in(&tandem, &c, "crisis-1").await;
    let raised = wait_for(&tandem, &c.supervisor, "the escalation", |_| true).await;
    assert_eq!(raised.current_recipient, "dr-primary");
    // Restart between raise and deadline: the deadline lives in the database.
    let before_restart = SystemTime::now();
    tandem.restart().await;
    let climbed =
        wait_for(&tandem, &c.backup, "the backup to be alerted", |e| e.current_recipient == "dr-backup").await;
    assert_eq!(climbed.step, 1);
    let passed = climbed.timeline.iter().find(|t| t.kind == "deadline_passed").expect("timeline says why");
    assert_eq!(passed.actor, "dr-primary");
    let raised_at = SystemTime::try_from(raised.raised_at.unwrap()).unwrap();
    let climbed_at = SystemTime::try_from(passed.at.unwrap()).unwrap();
    assert!(climbed_at.duration_since(raised_at).unwrap() >= Duration::from_secs(3), "not before the deadline");
    assert!(climbed_at > before_restart || climbed_at.duration_since(raised_at).unwrap() >= Duration::from_secs(3));

    // Past the end of the chain: the org's crisis contact, and again until someone acknowledges.
    let on_call = tandem.token("north", Role::Clinician, "on-call");
    let contact =
        wait_for(&tandem, &on_call, "the crisis contact to be alerted", |e| e.current_recipient == "on-call").await;
    assert_eq!(contact.step, 2);
    let mut client = TriageServiceClient::new(tandem.channel().await);
    client
        .acknowledge_escalation(authed(
            &on_call,
            triage::AcknowledgeEscalationRequest { escalation_id: contact.id.clone(), note: String::new() },
        ))
        .await
        .expect("the crisis contact acknowledges");
    tandem.stop().await;
}
on_both!(an_unacknowledged_alert_climbs_, an_unacknowledged_alert_climbs_to_the_backup_even_across_a_restart);
