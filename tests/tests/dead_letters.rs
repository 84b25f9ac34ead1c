//! The crisis path when events cannot be processed, on embedded and on
//! PostgreSQL + Kafka: an unreadable crisis event pages the org's crisis
//! contact (once, though two services dead-letter it); a database outage of
//! triage's store while a crisis check-in is handled dead-letters nothing,
//! turns health NOT_SERVING while the event waits, and ends in the alert;
//! and on Kafka a restarted member with the same instance id takes its
//! partitions back without a rebalance and consumes what came meanwhile.

use std::time::Duration;

use tandem_auth::Role;
use tandem_cli::webhook::Receiver;
use tandem_events::{Record, headers, topics};
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1::CheckInSubmitted;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{EventId, OrgId, PatientId};
use tandem_proto::notifications::v1 as notifications;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Triage's gRPC service name, for its health.
const TRIAGE: &str = "tandem.triage.v1.TriageService";

/// Bounds waits so a broken build fails instead of hanging; never a
/// measure of speed. SQLite's busy timeout makes each attempt during an
/// outage last 10 s, and a crisis event alarms after five.
const PATIENCE: Duration = Duration::from_secs(240);

struct Clinic {
    receiver: Receiver,
    secrets: std::collections::HashMap<String, String>,
    patient: common::PatientId,
    patient_token: String,
}

/// A patient with a one-person care team; the primary and the org's crisis
/// contact ("on-call") each have a verified signed webhook.
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
    let mut secrets = std::collections::HashMap::new();
    let admin = tandem.token("north", Role::Admin, "admin-1");
    let mut notifications_client = NotificationServiceClient::new(tandem.channel().await);
    for subject in ["dr-primary", "on-call"] {
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
            .wait_for(PATIENCE, |r| r.path == path && r.kind() == "endpoint.verification")
            .await
            .expect("the verification code reaches the webhook");
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
    // Triage knows the care team once the primary may read the patient's rules.
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
    Clinic { receiver, secrets, patient_token: tandem.token("north", Role::Patient, &patient.value), patient }
}

fn notifies(c: &Clinic, path: &str) -> usize {
    c.receiver.received().iter().filter(|r| r.path == path && r.kind() == "escalation.notify").count()
}

async fn worklist(tandem: &Tandem, token: &str) -> Vec<triage::Escalation> {
    let mut client = TriageServiceClient::new(tandem.channel().await);
    client.list_worklist(authed(token, triage::ListWorklistRequest::default())).await.unwrap().into_inner().escalations
}

async fn triage_health(tandem: &Tandem) -> ServingStatus {
    let mut health = HealthClient::new(tandem.channel().await);
    let request = HealthCheckRequest { service: TRIAGE.to_owned() };
    health.check(request).await.expect("health answers").into_inner().status()
}

/// The alarms Tandem raised in this test process: ERROR log lines with an
/// `alarm` field (the interface log-based alerting reads), as (alarm,
/// patient).
static ALARMS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

#[derive(Default)]
struct AlarmFields {
    alarm: Option<String>,
    patient: Option<String>,
}

impl tracing::field::Visit for AlarmFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "alarm" => self.alarm = Some(value.to_owned()),
            "patient" => self.patient = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, format!("{value:?}").trim_matches('"'));
    }
}

struct AlarmLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AlarmLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        let mut fields = AlarmFields::default();
        event.record(&mut fields);
        if let Some(alarm) = fields.alarm {
            ALARMS.lock().unwrap().push((alarm, fields.patient.unwrap_or_default()));
        }
    }
}

/// Starts recording alarms (once per process).
fn record_alarms() {
    use tracing_subscriber::layer::SubscriberExt;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(AlarmLayer))
            .expect("the only subscriber of this test binary");
    });
}

/// Whether `alarm` was raised about `patient`.
fn alarmed(alarm: &str, patient: &str) -> bool {
    ALARMS.lock().unwrap().iter().any(|(raised, about)| raised == alarm && about == patient)
}

/// Polls `check` until it holds; panics with `what` after [`PATIENCE`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
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

async fn an_unreadable_crisis_event_pages_the_crisis_contact_once(backend: StoreBackend) {
    record_alarms();
    let tandem = Tandem::start(backend).await;
    let c = clinic(&tandem).await;
    // Bytes no service can read, on the check-ins topic under the patient's
    // key, declared a check-in: triage and notifications both consume it,
    // and both dead-letter it.
    let event_id = EventId::new().to_string();
    let garbage = Record {
        topic: topics::CHECKINS.to_owned(),
        key: c.patient.value.clone(),
        value: b"\xff\xff not an event envelope".to_vec(),
        headers: vec![
            (headers::EVENT_ID.to_owned(), event_id.clone()),
            (headers::EVENT_TYPE.to_owned(), "tandem.events.v1.CheckInSubmitted".to_owned()),
            (headers::ORG_ID.to_owned(), "north".to_owned()),
        ],
    };
    let bus = tandem.bus().await;
    assert!(bus.publish(std::slice::from_ref(&garbage)).await.into_iter().all(|r| r.is_ok()));

    let alert = c
        .receiver
        .wait_for(PATIENCE, |r| r.path == "/on-call" && r.kind() == "escalation.notify")
        .await
        .expect("the crisis contact is paged");
    assert!(alert.verifies_with(&c.secrets["/on-call"]), "the alert is signed");
    assert_eq!(alert.json["data"]["patient_id"], c.patient.value.as_str());
    assert_eq!(alert.json["data"]["level"], "RISK_LEVEL_IMMINENT", "unknown content pages at the highest level");

    // On the crisis contact's worklist, saying what could not be processed.
    let on_call = tandem.token("north", Role::Clinician, "on-call");
    let paged = worklist(&tandem, &on_call).await.into_iter().find(|e| e.current_recipient == "on-call");
    let paged = paged.expect("the dead letter's escalation is on the crisis contact's worklist");
    assert_eq!(alert.json["data"]["escalation_id"], paged.id.as_ref().unwrap().value.as_str());
    let raised = paged.timeline.iter().find(|t| t.kind == "raised").unwrap();
    assert!(raised.detail.contains("unprocessable crisis event"), "{}", raised.detail);
    assert!(raised.detail.contains(&event_id), "names the event: {}", raised.detail);

    // The second service's report of the same record joins it.
    let id = paged.id.clone();
    let mut client = TriageServiceClient::new(tandem.channel().await);
    until("the second dead letter of the record to be reported", || {
        let mut client = client.clone();
        let (id, token) = (id.clone(), on_call.clone());
        async move {
            let found = client.get_escalation(authed(&token, triage::GetEscalationRequest { escalation_id: id })).await;
            found.is_ok_and(|e| e.into_inner().escalation.unwrap().timeline.iter().any(|t| t.kind == "joined"))
        }
    })
    .await;
    assert_eq!(notifies(&c, "/on-call"), 1, "paged once, though two services dead-lettered it");
    assert_eq!(notifies(&c, "/dr-primary"), 0, "the care team is not paged for what nobody can read");
    let dead_letter_escalations =
        worklist(&tandem, &on_call).await.into_iter().filter(|e| e.current_recipient == "on-call").count();
    assert_eq!(dead_letter_escalations, 1);
    assert!(alarmed("crisis_dead_letter", &c.patient.value), "the dead letter itself raised its alarm");
    assert!(!alarmed("crisis_dead_letter_unpaged", &c.patient.value), "and someone was paged for it");

    // The crisis contact acknowledges: a human has it.
    client
        .acknowledge_escalation(authed(
            &on_call,
            triage::AcknowledgeEscalationRequest { escalation_id: id, note: "checking the dead-letter topic".into() },
        ))
        .await
        .expect("the crisis contact acknowledges");
    assert_eq!(triage_health(&tandem).await, ServingStatus::Serving);
    tandem.stop().await;
}
on_both!(an_unreadable_crisis_event_pages_, an_unreadable_crisis_event_pages_the_crisis_contact_once);

async fn a_database_outage_during_a_crisis_check_in_ends_in_the_alert_not_a_dead_letter(backend: StoreBackend) {
    record_alarms();
    let tandem = Tandem::start(backend).await;
    let c = clinic(&tandem).await;
    let outage = tandem.outage("triage").await;
    let mut checkins = CheckInServiceClient::new(tandem.channel().await);
    let reply = checkins
        .submit_check_in(authed(
            &c.patient_token,
            pb::SubmitCheckInRequest {
                idempotency_key: "crisis-1".into(),
                patient_id: Some(c.patient.clone()),
                instruments: vec![pb::InstrumentResponse {
                    instrument: "44249-1".into(),
                    answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 1],
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("check-ins accepts the check-in: only triage's store is away")
        .into_inner();
    assert!(reply.safety_response.is_some(), "the patient sees the safety response at once");

    // Triage cannot handle the crisis event: past its attempts it waits
    // with the alarm raised, and health says so.
    until("the crisis event to wait past its attempts, alarmed", || async {
        alarmed("crisis_event_retrying", &c.patient.value)
    })
    .await;
    assert_eq!(triage_health(&tandem).await, ServingStatus::NotServing, "health says so while it waits");
    assert_eq!(notifies(&c, "/dr-primary"), 0, "nobody could be paged while triage's store was away");

    outage.end().await;
    let alert = c
        .receiver
        .wait_for(PATIENCE, |r| r.path == "/dr-primary" && r.kind() == "escalation.notify")
        .await
        .expect("the primary is paged once the store is back");
    assert!(alert.verifies_with(&c.secrets["/dr-primary"]));
    until("triage to report SERVING again", || async { triage_health(&tandem).await == ServingStatus::Serving }).await;

    // Nothing was dead-lettered: triage's inbox handled every event, and the
    // crisis contact was never paged for a dead letter.
    let outcomes: Vec<String> = inbox_outcomes(&tandem.settings.database_url_for("triage").unwrap())
        .await
        .into_iter()
        .filter(|outcome| outcome != "handled")
        .collect();
    assert!(outcomes.is_empty(), "nothing dead-lettered: {outcomes:?}");
    assert!(!alarmed("crisis_dead_letter", &c.patient.value), "nothing dead-lettered");
    assert_eq!(notifies(&c, "/on-call"), 0);
    assert_eq!(notifies(&c, "/dr-primary"), 1);
    tandem.stop().await;
}
on_both!(
    a_database_outage_during_a_crisis_check_in_,
    a_database_outage_during_a_crisis_check_in_ends_in_the_alert_not_a_dead_letter
);

/// The outcomes in triage's consumer inbox.
async fn inbox_outcomes(url: &str) -> Vec<String> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.expect("open triage's store");
        return sqlx::query_scalar("SELECT outcome FROM inbox").fetch_all(&mut connection).await.unwrap();
    }
    let mut connection = sqlx::PgConnection::connect(url).await.expect("open triage's store");
    sqlx::query_scalar("SELECT outcome FROM triage.inbox").fetch_all(&mut connection).await.unwrap()
}

/// The triage group as the broker sees it: (state, member ids).
async fn triage_group(brokers: &str) -> (String, Vec<String>) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("client");
        let groups = client.fetch_group_list(Some("triage"), Duration::from_secs(10)).expect("list the group");
        let group = groups.groups().iter().find(|g| g.name() == "triage").expect("the triage group");
        (group.state().to_owned(), group.members().iter().map(|m| m.id().to_owned()).collect())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_takes_its_partitions_back_and_consumes_what_came_meanwhile() {
    let mut tandem = Tandem::start_with(StoreBackend::Postgres, &[("instance_id", "pod-a")]).await;
    let brokers = tandem.kafka_brokers().expect("on Kafka");
    let c = clinic(&tandem).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let member = loop {
        let (state, members) = triage_group(&brokers).await;
        if state == "Stable" && members.len() == 1 {
            break members[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the triage group never settled: {state} {members:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(member.starts_with("pod-a.triage-"), "a static member's id carries its instance id: {member}");

    // The process goes away. A static member leaves no gap: the broker
    // keeps its partitions for it (no LeaveGroup, no rebalance); a dynamic
    // member's would have left the group empty.
    tandem.down().await;
    let (state, members) = triage_group(&brokers).await;
    assert_eq!((state.as_str(), members), ("Stable", vec![member.clone()]), "the member keeps its place while down");

    // A crisis check-in arrives while it is down, as check-ins' relay would publish it.
    let patient: PatientId = c.patient.value.parse().unwrap();
    let org: OrgId = "north".parse().unwrap();
    let crisis = tandem_events::new_envelope(
        "checkins",
        &org,
        &patient,
        Payload::CheckInSubmitted(CheckInSubmitted {
            check_in: Some(pb::CheckIn { patient_id: Some(c.patient.clone()), ..Default::default() }),
            crisis_triggers: vec!["phq9-item9".into()],
            ..Default::default()
        }),
    );
    let bus = tandem.bus().await;
    let record = Record::from_envelope(topics::CHECKINS, &crisis).unwrap();
    assert!(bus.publish(&[record]).await.into_iter().all(|r| r.is_ok()));

    // Back with the same instance id: it takes the partitions back and
    // consumes the crisis event; the primary is paged.
    tandem.up().await;
    let alert = c
        .receiver
        .wait_for(PATIENCE, |r| r.path == "/dr-primary" && r.kind() == "escalation.notify")
        .await
        .expect("the crisis event is consumed after the restart");
    assert!(alert.verifies_with(&c.secrets["/dr-primary"]));
    let (state, members) = triage_group(&brokers).await;
    assert_eq!(state, "Stable");
    assert_eq!(members.len(), 1, "the restarted process replaced its old self: {members:?}");
    assert!(members[0].starts_with("pod-a.triage-"), "the same instance id: {members:?}");
    tandem.stop().await;
}
