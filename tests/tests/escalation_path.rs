//! Who holds an alert, at which severity, as an EHR, a patient and the
//! paged clinicians see it, embedded and on PostgreSQL + Kafka: a
//! higher-level trigger re-alerts the holder at the new level and deadline
//! on every channel, an acknowledged escalation is never re-alerted, and
//! the care team arriving takes an alert back from the crisis contact.

use std::time::{Duration, SystemTime};

use tandem_auth::Role;
use tandem_cli::scenario::{Clients, register_webhook};
use tandem_cli::webhook::{Received, Receiver};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};
use tokio_stream::StreamExt;

const ORG: &str = "north";
/// Words the crisis-language detector must read as risk above moderate.
const CRISIS_JOURNAL: &str = "I can't keep doing this. I've been thinking about killing myself.";
const WAIT: Duration = Duration::from_secs(60);

async fn clients(tandem: &Tandem) -> Clients {
    let channel = tandem.channel().await;
    Clients {
        plans: CarePlanServiceClient::new(channel.clone()),
        checkins: CheckInServiceClient::new(channel.clone()),
        triage: TriageServiceClient::new(channel.clone()),
        notifications: NotificationServiceClient::new(channel),
    }
}

async fn enroll(c: &mut Clients, ehr: &str) -> common::PatientId {
    c.plans
        .enroll_patient(authed(
            ehr,
            plans::EnrollPatientRequest {
                idempotency_key: "enrol".into(),
                external_id: "mrn-7".into(),
                display_name: "Alex Example".into(),
                time_zone: "UTC".into(),
            },
        ))
        .await
        .expect("enrol")
        .into_inner()
        .patient
        .and_then(|p| p.id)
        .expect("a patient id")
}

async fn set_team(c: &mut Clients, ehr: &str, patient: &common::PatientId) {
    let member = |id: &str, role: plans::CareTeamRole| plans::CareTeamMember {
        clinician_id: id.into(),
        role: role as i32,
        display_name: id.into(),
    };
    c.plans
        .set_care_team(authed(
            ehr,
            plans::SetCareTeamRequest {
                patient_id: Some(patient.clone()),
                members: vec![
                    member("dr-primary", plans::CareTeamRole::Primary),
                    member("dr-backup", plans::CareTeamRole::Backup),
                ],
            },
        ))
        .await
        .expect("set the care team");
}

/// Verified signed webhooks at `receiver`, one per (subject, path); the
/// crisis contact's is registered by an admin. Returns (path, secret).
async fn webhooks(
    tandem: &Tandem,
    c: &mut Clients,
    receiver: &Receiver,
    hooks: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let admin = tandem.token(ORG, Role::Admin, "admin-1");
    let mut secrets = std::collections::HashMap::new();
    for (subject, path) in hooks {
        let (token, for_subject) = if *subject == "on-call" {
            (admin.clone(), (*subject).to_owned())
        } else {
            (tandem.token(ORG, Role::Clinician, subject), String::new())
        };
        let secret =
            register_webhook(c, &token, &for_subject, receiver, path).await.expect("register and verify a webhook");
        secrets.insert((*path).to_owned(), secret);
    }
    secrets
}

/// Events of different topics arrive in any order: a trigger before the
/// care team reaches the crisis contact (as it must). Wait until triage
/// knows the team (a clinician may read the patient's rules only then).
async fn triage_knows_the_team(tandem: &Tandem, c: &Clients, clinician: &str, patient: &common::PatientId) {
    tandem
        .eventually("triage to know the care team", || {
            let mut client = c.triage.clone();
            let request = triage::GetTriageConfigRequest { patient_id: Some(patient.clone()) };
            async move { client.get_triage_config(authed(clinician, request)).await.ok() }
        })
        .await;
}

async fn check_in(c: &mut Clients, token: &str, patient: &common::PatientId, request: pb::SubmitCheckInRequest) {
    c.checkins
        .submit_check_in(authed(token, pb::SubmitCheckInRequest { patient_id: Some(patient.clone()), ..request }))
        .await
        .expect("the check-in is accepted");
}

fn phq9(key: &str, answers: [i32; 9]) -> pb::SubmitCheckInRequest {
    pb::SubmitCheckInRequest {
        idempotency_key: key.into(),
        instruments: vec![pb::InstrumentResponse { instrument: "44249-1".into(), answers: answers.to_vec() }],
        ..Default::default()
    }
}

fn journal(key: &str) -> pb::SubmitCheckInRequest {
    pb::SubmitCheckInRequest { idempotency_key: key.into(), journal: CRISIS_JOURNAL.into(), ..Default::default() }
}

async fn alert_on(receiver: &Receiver, path: &str, attempt: u64) -> Received {
    receiver
        .wait_for(WAIT, |r| r.path == path && r.kind() == "escalation.notify" && r.json["data"]["attempt"] == attempt)
        .await
        .unwrap_or_else(|| panic!("alert attempt {attempt} never reached {path}"))
}

fn alerts_on(receiver: &Receiver, path: &str) -> usize {
    receiver.received().iter().filter(|r| r.path == path && r.kind() == "escalation.notify").count()
}

fn deadline(alert: &Received) -> SystemTime {
    let text = alert.json["data"]["ack_deadline"].as_str().expect("the alert has a deadline");
    let at: prost_types::Timestamp = text.parse().expect("an RFC 3339 deadline");
    SystemTime::try_from(at).expect("a deadline in range")
}

async fn escalation(tandem: &Tandem, token: &str, id: &str) -> triage::Escalation {
    let mut client = TriageServiceClient::new(tandem.channel().await);
    let request = triage::GetEscalationRequest { escalation_id: Some(common::EscalationId { value: id.into() }) };
    client.get_escalation(authed(token, request)).await.expect("read the escalation").into_inner().escalation.unwrap()
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::StoreBackend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_kafka() {
                super::$name(super::StoreBackend::Postgres).await;
            }
        }
    };
}

on_both!(a_higher_trigger_re_alerts_the_holder_at_the_new_level_on_every_channel);
async fn a_higher_trigger_re_alerts_the_holder_at_the_new_level_on_every_channel(backend: StoreBackend) {
    // The product's windows: moderate 24 h, high 15 min, imminent 5 min.
    let tandem = Tandem::start(backend).await;
    let mut c = clients(&tandem).await;
    let ehr = tandem.token(ORG, Role::Integration, "ehr-client");
    let patient = enroll(&mut c, &ehr).await;
    set_team(&mut c, &ehr, &patient).await;
    let receiver = Receiver::start().await.expect("webhook receiver");
    let hooks = [("dr-primary", "/dr-primary"), ("dr-primary", "/dr-primary-pager"), ("dr-backup", "/dr-backup")];
    let secrets = webhooks(&tandem, &mut c, &receiver, &hooks).await;
    let primary = tandem.token(ORG, Role::Clinician, "dr-primary");
    triage_knows_the_team(&tandem, &c, &primary, &patient).await;

    // Reliable deterioration (PHQ-9 5 → 11): a moderate escalation.
    let sam = tandem.token(ORG, Role::Patient, &patient.value);
    check_in(&mut c, &sam, &patient, phq9("week-1", [1, 1, 1, 1, 1, 0, 0, 0, 0])).await;
    check_in(&mut c, &sam, &patient, phq9("week-2", [2, 2, 2, 1, 1, 1, 1, 1, 0])).await;
    let first = alert_on(&receiver, "/dr-primary", 0).await;
    assert_eq!(first.json["data"]["level"], "RISK_LEVEL_MODERATE");
    let id = first.json["data"]["escalation_id"].as_str().unwrap().to_owned();

    // Then crisis language: the primary, who holds it, is paged again at
    // the higher level with the shorter deadline, on both channels.
    check_in(&mut c, &sam, &patient, journal("journal-1")).await;
    for path in ["/dr-primary", "/dr-primary-pager"] {
        let again = alert_on(&receiver, path, 1).await;
        assert!(again.verifies_with(&secrets[path]), "{path}: the re-alert is signed");
        let data = &again.json["data"];
        assert_eq!(data["escalation_id"], id.as_str());
        assert_ne!(data["level"], "RISK_LEVEL_MODERATE", "{path}: the new level");
        assert_eq!(data["previous_level"], "RISK_LEVEL_MODERATE");
        assert_eq!(data["reason"], "level_raised");
        assert_eq!(data["step"], 0, "the same holder");
        let message = data["message"].as_str().unwrap();
        assert!(message.starts_with("Tandem: RAISED to "), "{message}");
        assert!(deadline(&again) < deadline(&first), "the deadline is sooner than the moderate one");
        assert!(deadline(&again) <= SystemTime::now() + Duration::from_secs(15 * 60));
        assert_ne!(again.id, first.id, "a new notification, not a retry of the first");
        assert_eq!(alerts_on(&receiver, path), 2, "{path}: the first alert and the re-alert, each once");
    }
    let now = escalation(&tandem, &primary, &id).await;
    assert_ne!(now.level(), triage::RiskLevel::Moderate);
    assert_eq!((now.step, now.attempt, now.current_recipient.as_str()), (0, Some(1), "dr-primary"));
    // Delivery receipts come in as they may; the escalation's own steps are in order.
    let kinds: Vec<_> = now.timeline.iter().map(|t| t.kind.as_str()).filter(|kind| *kind != "delivered").collect();
    assert_eq!(kinds, ["raised", "notify", "joined", "level_raised", "notify"]);
    assert_eq!(alerts_on(&receiver, "/dr-backup"), 0, "the backup is not paged by a raise");
    tandem.stop().await;
}

on_both!(an_acknowledged_escalation_is_not_re_alerted_when_its_level_rises);
async fn an_acknowledged_escalation_is_not_re_alerted_when_its_level_rises(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let mut c = clients(&tandem).await;
    let ehr = tandem.token(ORG, Role::Integration, "ehr-client");
    let patient = enroll(&mut c, &ehr).await;
    set_team(&mut c, &ehr, &patient).await;
    let receiver = Receiver::start().await.expect("webhook receiver");
    webhooks(&tandem, &mut c, &receiver, &[("dr-primary", "/dr-primary")]).await;
    let primary = tandem.token(ORG, Role::Clinician, "dr-primary");
    triage_knows_the_team(&tandem, &c, &primary, &patient).await;
    let sam = tandem.token(ORG, Role::Patient, &patient.value);
    check_in(&mut c, &sam, &patient, phq9("week-1", [1, 1, 1, 1, 1, 0, 0, 0, 0])).await;
    check_in(&mut c, &sam, &patient, phq9("week-2", [2, 2, 2, 1, 1, 1, 1, 1, 0])).await;
    let first = alert_on(&receiver, "/dr-primary", 0).await;
    let id = first.json["data"]["escalation_id"].as_str().unwrap().to_owned();
    c.triage
        .acknowledge_escalation(authed(
            &primary,
            triage::AcknowledgeEscalationRequest {
                escalation_id: Some(common::EscalationId { value: id.clone() }),
                note: "calling now".into(),
            },
        ))
        .await
        .expect("the primary acknowledges");

    check_in(&mut c, &sam, &patient, journal("journal-1")).await;
    let raised = tandem
        .eventually("the journal to join and raise the level", || {
            let tandem = &tandem;
            let (primary, id) = (primary.clone(), id.clone());
            async move {
                let e = escalation(tandem, &primary, &id).await;
                e.timeline.iter().any(|t| t.kind == "level_raised").then_some(e)
            }
        })
        .await;
    assert_eq!(raised.state(), triage::EscalationState::Acknowledged);
    assert_ne!(raised.level(), triage::RiskLevel::Moderate);
    assert_eq!(raised.attempt, Some(0), "no new alert attempt");
    let after_raise = raised.timeline.iter().skip_while(|t| t.kind != "level_raised");
    assert!(after_raise.clone().all(|t| t.kind != "notify"), "a human has it: nobody is paged");
    assert_eq!(alerts_on(&receiver, "/dr-primary"), 1);
    tandem.stop().await;
}

on_both!(the_care_team_arriving_takes_the_alert_back_from_the_crisis_contact);
async fn the_care_team_arriving_takes_the_alert_back_from_the_crisis_contact(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let mut c = clients(&tandem).await;
    let ehr = tandem.token(ORG, Role::Integration, "ehr-client");
    // Enrolled, but the EHR has not sent the care team yet.
    let patient = enroll(&mut c, &ehr).await;
    let receiver = Receiver::start().await.expect("webhook receiver");
    let hooks = [("on-call", "/on-call"), ("dr-primary", "/dr-primary"), ("dr-backup", "/dr-backup")];
    let secrets = webhooks(&tandem, &mut c, &receiver, &hooks).await;
    let sam = tandem.token(ORG, Role::Patient, &patient.value);
    check_in(&mut c, &sam, &patient, phq9("crisis-1", [1, 1, 1, 1, 1, 1, 1, 1, 1])).await;

    // Nobody on a care team yet: the org's crisis contact is paged.
    let paged = alert_on(&receiver, "/on-call", 0).await;
    let id = paged.json["data"]["escalation_id"].as_str().unwrap().to_owned();

    // A supervisor watches the worklist.
    let supervisor = tandem.token(ORG, Role::Supervisor, "sup-1");
    let mut watch = c
        .triage
        .clone()
        .watch_worklist(authed(&supervisor, triage::WatchWorklistRequest {}))
        .await
        .expect("watch the worklist")
        .into_inner();

    // The care team arrives: the primary is paged at once, with a fresh
    // deadline, and the crisis contact is told it went back.
    set_team(&mut c, &ehr, &patient).await;
    let back = alert_on(&receiver, "/dr-primary", 1).await;
    assert!(back.verifies_with(&secrets["/dr-primary"]));
    let data = &back.json["data"];
    assert_eq!(data["escalation_id"], id.as_str());
    assert_eq!(data["level"], "RISK_LEVEL_HIGH");
    assert_eq!(data["reason"], "care_team_known");
    assert_eq!(data["step"], 0);
    assert!(deadline(&back) > SystemTime::now(), "a deadline still ahead");
    let told = receiver
        .wait_for(WAIT, |r| r.path == "/on-call" && r.kind() == "escalation.handed_back")
        .await
        .expect("the crisis contact is told it was handed back");
    assert!(told.verifies_with(&secrets["/on-call"]));
    assert_eq!(told.json["data"]["now_with"], "dr-primary");

    let primary = tandem.token(ORG, Role::Clinician, "dr-primary");
    let now = escalation(&tandem, &primary, &id).await;
    assert_eq!(now.state(), triage::EscalationState::Notified);
    assert_eq!((now.step, now.attempt, now.current_recipient.as_str()), (0, Some(1), "dr-primary"));
    let handed = now.timeline.iter().find(|t| t.kind == "handed_back").expect("the timeline says so");
    assert_eq!(handed.actor, "on-call");
    assert_eq!(alerts_on(&receiver, "/on-call"), 1, "the crisis contact was paged once");
    assert_eq!(alerts_on(&receiver, "/dr-primary"), 1);
    assert_eq!(alerts_on(&receiver, "/dr-backup"), 0);
    // The watch shows who holds it now.
    let shown = tokio::time::timeout(WAIT, async {
        while let Some(item) = watch.next().await {
            let e = item.expect("a worklist item").escalation.unwrap();
            if e.current_recipient == "dr-primary" {
                return e;
            }
        }
        panic!("the watch ended")
    })
    .await
    .expect("the watch shows the hand-back");
    assert_eq!(shown.attempt, Some(1));
    // An open watch would hold the server's shutdown; end it.
    drop(watch);

    // The primary takes it.
    c.triage
        .acknowledge_escalation(authed(
            &primary,
            triage::AcknowledgeEscalationRequest {
                escalation_id: Some(common::EscalationId { value: id }),
                note: String::new(),
            },
        ))
        .await
        .expect("the primary acknowledges");
    tandem.stop().await;
}
