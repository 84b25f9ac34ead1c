//! Watch and inbox streams cannot starve the crisis path or hold shutdown:
//! with many streams open a crisis check-in is still escalated and its
//! webhook delivered; streams wake on changes, not on a poll; a caller is
//! capped; a stream ends when its token expires and when the server shuts
//! down, and the server then stops. Embedded and PostgreSQL + Kafka.

use std::time::Duration;

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
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

/// Only a hang reaches this; nothing here is a speed assertion.
const BOUND: Duration = Duration::from_secs(60);

/// A patient with a care team whose primary has a verified signed webhook
/// and an in-app endpoint.
struct Clinic {
    receiver: Receiver,
    patient: common::PatientId,
    patient_token: String,
}

async fn clinic(tandem: &Tandem) -> Clinic {
    let mut plans_client = CarePlanServiceClient::new(tandem.channel().await);
    let ehr = tandem.token("north", Role::Integration, "ehr-client");
    let patient = tandem.enroll(&ehr, "mrn-1").await;
    plans_client
        .set_care_team(authed(
            &ehr,
            plans::SetCareTeamRequest {
                patient_id: Some(patient.clone()),
                members: vec![plans::CareTeamMember {
                    clinician_id: "dr-primary".into(),
                    role: plans::CareTeamRole::Primary as i32,
                    display_name: "dr-primary".into(),
                }],
            },
        ))
        .await
        .unwrap();
    let receiver = Receiver::start().await.expect("webhook receiver");
    let primary = tandem.token("north", Role::Clinician, "dr-primary");
    let mut notifications_client = NotificationServiceClient::new(tandem.channel().await);
    let registered = notifications_client
        .register_endpoint(authed(
            &primary,
            notifications::RegisterEndpointRequest {
                channel: notifications::Channel::Webhook as i32,
                address: receiver.url("/dr-primary"),
                ..Default::default()
            },
        ))
        .await
        .expect("register a webhook")
        .into_inner();
    let code = receiver
        .wait_for(BOUND, |r| r.path == "/dr-primary" && r.kind() == "endpoint.verification")
        .await
        .expect("the verification code reaches the webhook");
    notifications_client
        .verify_endpoint(authed(
            &primary,
            notifications::VerifyEndpointRequest {
                endpoint_id: registered.endpoint.unwrap().endpoint_id,
                code: code.json["code"].as_str().unwrap().to_owned(),
            },
        ))
        .await
        .expect("verify the webhook");
    notifications_client
        .register_endpoint(authed(
            &primary,
            notifications::RegisterEndpointRequest {
                channel: notifications::Channel::InApp as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("register in-app");
    // Wait until triage knows the care team, or the alert would go to the
    // crisis contact, as it must while the chain is unknown.
    let client = TriageServiceClient::new(tandem.channel().await);
    tandem
        .eventually("triage to know the care team", || {
            let mut client = client.clone();
            let request = triage::GetTriageConfigRequest { patient_id: Some(patient.clone()) };
            let primary = primary.clone();
            async move { client.get_triage_config(authed(&primary, request)).await.ok() }
        })
        .await;
    Clinic { receiver, patient_token: tandem.token("north", Role::Patient, &patient.value), patient }
}

async fn crisis_check_in(tandem: &Tandem, c: &Clinic, key: &str) {
    let mut checkins = CheckInServiceClient::new(tandem.channel().await);
    let reply = checkins
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
        .into_inner();
    assert!(reply.safety_response.is_some(), "the patient gets the safety response at once");
}

async fn watch(tandem: &Tandem, token: &str) -> Result<Streaming<triage::WatchWorklistResponse>, tonic::Status> {
    let mut client = TriageServiceClient::new(tandem.channel().await);
    client.watch_worklist(authed(token, triage::WatchWorklistRequest {})).await.map(|response| response.into_inner())
}

async fn inbox(tandem: &Tandem, token: &str) -> Result<Streaming<notifications::StreamInboxResponse>, tonic::Status> {
    let mut client = NotificationServiceClient::new(tandem.channel().await);
    client.stream_inbox(authed(token, notifications::StreamInboxRequest {})).await.map(|response| response.into_inner())
}

/// Reads `stream` until an escalation passes `test`.
async fn next_matching(
    stream: &mut Streaming<triage::WatchWorklistResponse>,
    what: &str,
    test: impl Fn(&triage::Escalation) -> bool,
) -> triage::Escalation {
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let item = stream.next().await.expect("the watch is open").expect("an item, not an error");
            if let Some(escalation) = item.escalation
                && test(&escalation)
            {
                return escalation;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what} on the watch"))
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

/// Twenty worklist watches (four supervisors at the per-caller cap of five)
/// and five inbox streams are open; a crisis check-in is still escalated and
/// its signed webhook reaches the primary, and every watch sees it.
async fn twenty_open_watches_do_not_delay_an_alert(backend: StoreBackend) {
    let tandem = Tandem::start(backend).await;
    let c = clinic(&tandem).await;
    let mut watches = Vec::new();
    for supervisor in 1..=4 {
        let token = tandem.token("north", Role::Supervisor, &format!("sup-{supervisor}"));
        for _ in 0..5 {
            watches.push(watch(&tandem, &token).await.expect("a watch within the cap"));
        }
    }
    assert_eq!(watches.len(), 20);
    let mut inboxes = Vec::new();
    for clinician in 1..=5 {
        let token = tandem.token("north", Role::Clinician, &format!("dr-{clinician}"));
        inboxes.push(inbox(&tandem, &token).await.expect("an inbox stream"));
    }

    crisis_check_in(&tandem, &c, "crisis-1").await;
    let alert = c
        .receiver
        .wait_for(BOUND, |r| r.path == "/dr-primary" && r.kind() == "escalation.notify")
        .await
        .expect("the primary's webhook fires with twenty watches open");
    let escalation_id = alert.json["data"]["escalation_id"].as_str().expect("escalation id").to_owned();

    for (index, stream) in watches.iter_mut().enumerate() {
        let seen = next_matching(stream, &format!("the escalation on watch {index}"), |e| {
            e.id.as_ref().is_some_and(|id| id.value == escalation_id)
        })
        .await;
        assert_eq!(seen.level(), triage::RiskLevel::High);
    }
    drop((watches, inboxes));
    tandem.stop().await;
}
on_both!(twenty_open_watches_do_not_delay_an_alert_, twenty_open_watches_do_not_delay_an_alert);

/// With a safety poll of an hour, only the wake-up on change can bring the
/// escalation, its acknowledgement and the in-app alert to open streams.
async fn streams_wake_on_change_not_on_the_poll(backend: StoreBackend) {
    let tandem = Tandem::start_with(backend, &[("streams.safety_poll", "1h")]).await;
    let c = clinic(&tandem).await;
    let supervisor = tandem.token("north", Role::Supervisor, "sup-1");
    let primary = tandem.token("north", Role::Clinician, "dr-primary");
    let mut watching = watch(&tandem, &supervisor).await.unwrap();
    let mut primary_watch = watch(&tandem, &primary).await.unwrap();
    let mut primary_inbox = inbox(&tandem, &primary).await.unwrap();

    crisis_check_in(&tandem, &c, "crisis-1").await;
    let raised = next_matching(&mut watching, "the new escalation", |e| {
        e.state() == triage::EscalationState::Notified && e.current_recipient == "dr-primary"
    })
    .await;
    next_matching(&mut primary_watch, "the primary's own escalation", |e| e.id == raised.id).await;
    let in_app = tokio::time::timeout(BOUND, primary_inbox.next())
        .await
        .expect("the in-app alert arrives without the poll")
        .expect("the inbox is open")
        .expect("an item");
    assert_eq!(in_app.kind, "alert");

    let mut client = TriageServiceClient::new(tandem.channel().await);
    client
        .acknowledge_escalation(authed(
            &primary,
            triage::AcknowledgeEscalationRequest { escalation_id: raised.id.clone(), note: String::new() },
        ))
        .await
        .expect("the primary acknowledges");
    next_matching(&mut watching, "the acknowledgement", |e| {
        e.id == raised.id && e.state() == triage::EscalationState::Acknowledged
    })
    .await;
    drop((watching, primary_watch, primary_inbox));
    tandem.stop().await;
}
on_both!(streams_wake_on_change_not_on_the_poll_, streams_wake_on_change_not_on_the_poll);

/// One caller may hold `streams.per_caller` streams of a kind: the next is
/// RESOURCE_EXHAUSTED with what to do, other callers are unaffected, and a
/// closed stream frees its place. A stream ends when its token expires.
async fn streams_are_capped_per_caller_and_end_with_their_token(backend: StoreBackend) {
    let tandem = Tandem::start_with(backend, &[("streams.per_caller", "2"), ("auth.leeway_secs", "0")]).await;
    let supervisor = tandem.token("north", Role::Supervisor, "sup-1");
    let first = watch(&tandem, &supervisor).await.expect("first watch");
    let _second = watch(&tandem, &supervisor).await.expect("second watch");
    let refused = watch(&tandem, &supervisor).await.expect_err("a third watch is over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("at most 2") && refused.message().contains("close one"), "{refused:?}");
    // The cap is per caller and per kind.
    let other = tandem.token("north", Role::Supervisor, "sup-2");
    let _others = watch(&tandem, &other).await.expect("another caller is not affected");
    let _inbox = inbox(&tandem, &supervisor).await.expect("an inbox stream is another kind");
    let _inbox_two = inbox(&tandem, &supervisor).await.expect("second inbox stream");
    assert_eq!(inbox(&tandem, &supervisor).await.expect_err("third inbox").code(), Code::ResourceExhausted);
    // Hanging up frees the place (once the server noticed).
    drop(first);
    let _third = tandem
        .eventually("a closed watch to free its place", || {
            let supervisor = supervisor.clone();
            let tandem = &tandem;
            async move { watch(tandem, &supervisor).await.ok() }
        })
        .await;

    // A token valid for two seconds: the stream ends then, saying why.
    let short = tandem.token_valid_for("north", Role::Supervisor, "sup-3", Duration::from_secs(2));
    let mut expiring = watch(&tandem, &short).await.expect("a watch with a short token");
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            match expiring.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return status,
                None => panic!("the watch ended without saying why"),
            }
        }
    })
    .await
    .expect("the watch ends when its token expires");
    assert_eq!(ended.code(), Code::Unauthenticated);
    assert!(ended.message().contains("new token"), "{ended:?}");
    tandem.stop().await;
}
on_both!(streams_are_capped_per_caller_, streams_are_capped_per_caller_and_end_with_their_token);

/// Open watches and inbox streams never end by themselves; shutting down
/// ends them (UNAVAILABLE: reconnect) when the drain is over, and the server
/// stops instead of waiting for them forever.
async fn shutdown_ends_open_streams(backend: StoreBackend) {
    let tandem = Tandem::start_with(backend, &[("shutdown_drain", "1s")]).await;
    let supervisor = tandem.token("north", Role::Supervisor, "sup-1");
    let clinician = tandem.token("north", Role::Clinician, "dr-1");
    let mut watches = Vec::new();
    for _ in 0..5 {
        watches.push(watch(&tandem, &supervisor).await.unwrap());
    }
    let mut inboxes = vec![inbox(&tandem, &clinician).await.unwrap()];
    tokio::time::timeout(BOUND, tandem.stop()).await.expect("the server stops with streams open");
    for stream in &mut watches {
        let end = tokio::time::timeout(BOUND, stream.next()).await.expect("the watch ended");
        let status = end.expect("with a status").expect_err("the status says why");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "ended by the server, not cut off: {status:?}");
    }
    for stream in &mut inboxes {
        let end = tokio::time::timeout(BOUND, stream.next()).await.expect("the inbox stream ended");
        let status = end.expect("with a status").expect_err("the status says why");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "ended by the server, not cut off: {status:?}");
    }
}
on_both!(shutdown_ends_open_streams_, shutdown_ends_open_streams);
