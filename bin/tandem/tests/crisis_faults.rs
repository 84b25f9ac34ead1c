//! The crisis path under crashes, on PostgreSQL + Apache Kafka: `tandem up`
//! is killed with SIGKILL three times a few seconds apart while patients
//! submit crisis check-ins, and restarted each time on the same database and
//! broker. Every crisis check-in that was accepted (the patient saw "your
//! care team was alerted") must end in an escalation whose signed alert
//! reaches a human within 30 s of the last restart, and no alert may be
//! delivered twice to the same channel as two different messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_auth::{DevSigningKey, Role};
use tandem_cli::webhook::Receiver;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as checkins;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::notifications::v1 as notifications;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;
use tonic::transport::Channel;

use crate::support::start_up;

mod support;

const ORG: &str = "north";
const PATIENTS: usize = 80;

/// A request with a bearer token that gives up after 5 s: the server may be
/// killed while it is in flight.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = support::authed(token, message);
    request.set_timeout(Duration::from_secs(5));
    request
}

async fn channel(addr: &str) -> Option<Channel> {
    Channel::from_shared(format!("http://{addr}")).ok()?.connect_timeout(Duration::from_secs(2)).connect().await.ok()
}

async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(channel) = channel(addr).await {
            return channel;
        }
        assert!(Instant::now() < deadline, "tandem at {addr} never accepted connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Tokens {
    secret: Vec<u8>,
}

impl Tokens {
    fn mint(&self, role: Role, subject: &str) -> String {
        let defaults = tandem_server::Settings::default();
        tandem_auth::mint_token(
            &self.secret,
            &defaults.auth.issuer,
            &defaults.auth.audience,
            &ORG.parse().expect("org"),
            role,
            subject,
            Duration::from_secs(3600),
        )
        .expect("mint token")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_crisis_check_ins_reach_a_human_across_three_sigkills() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let broker = tokio::task::spawn_blocking(tandem_events::testing::KafkaBroker::start).await.expect("start kafka");
    let data_dir = tempfile::tempdir().expect("data dir");
    let tokens = Tokens { secret: DevSigningKey::load_or_create(data_dir.path()).expect("dev key").bytes().to_vec() };
    let env = vec![
        ("TANDEM_DATABASE_URL".to_owned(), database.url.clone()),
        ("TANDEM_EVENTS".to_owned(), format!("kafka://{}?partitions=4", broker.brokers())),
        ("TANDEM_LOG".to_owned(), "error".to_owned()),
    ];
    let mut running = start_up(data_dir.path(), &env);
    let first = connect(&running.addr).await;

    // The clinic: patients with one primary each, whose signed webhook (and
    // the org's crisis contact's) records every alert.
    let ehr = tokens.mint(Role::Integration, "ehr-client");
    let admin = tokens.mint(Role::Admin, "admin-1");
    let receiver = Receiver::start().await.expect("webhook receiver");
    let mut care = CarePlanServiceClient::new(first.clone());
    let mut patients = Vec::new();
    for n in 0..PATIENTS {
        let patient = care
            .enroll_patient(authed(
                &ehr,
                plans::EnrollPatientRequest {
                    idempotency_key: format!("p-{n}"),
                    external_id: format!("mrn-{n}"),
                    display_name: format!("Patient {n}"),
                    time_zone: "UTC".into(),
                },
            ))
            .await
            .expect("enrol")
            .into_inner()
            .patient
            .expect("patient")
            .id
            .expect("id");
        care.set_care_team(authed(
            &ehr,
            plans::SetCareTeamRequest {
                patient_id: Some(patient.clone()),
                members: vec![plans::CareTeamMember {
                    clinician_id: "dr-primary".into(),
                    role: plans::CareTeamRole::Primary as i32,
                    display_name: "Dr Primary".into(),
                }],
            },
        ))
        .await
        .expect("care team");
        patients.push(patient);
    }
    let mut endpoints = NotificationServiceClient::new(first.clone());
    for (subject, token, register_for) in [
        ("dr-primary", tokens.mint(Role::Clinician, "dr-primary"), String::new()),
        ("on-call", admin.clone(), "on-call".to_owned()),
    ] {
        let path = format!("/{subject}");
        let registered = endpoints
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
            .wait_for(Duration::from_secs(60), |r| r.path == path && r.kind() == "endpoint.verification")
            .await
            .expect("the verification code arrives");
        endpoints
            .verify_endpoint(authed(
                &token,
                notifications::VerifyEndpointRequest {
                    endpoint_id: registered.endpoint.expect("endpoint").endpoint_id,
                    code: code.json["code"].as_str().expect("code").to_owned(),
                },
            ))
            .await
            .expect("verify the webhook");
    }

    // Patients submit crisis check-ins (PHQ-9 item 9 = 3), one each, while
    // the process is killed. A submission that fails because the server is
    // down is retried with the same key, as an app would.
    let addr = Arc::new(Mutex::new(running.addr.clone()));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let addr = addr.clone();
        let accepted = accepted.clone();
        let patients = patients.clone();
        let tokens: Vec<String> = patients.iter().map(|p| tokens.mint(Role::Patient, &p.value)).collect();
        tokio::spawn(async move {
            for (n, patient) in patients.iter().enumerate() {
                let request = checkins::SubmitCheckInRequest {
                    idempotency_key: format!("crisis-{n}"),
                    patient_id: Some(patient.clone()),
                    instruments: vec![checkins::InstrumentResponse {
                        instrument: "44249-1".into(),
                        answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 3],
                    }],
                    ..Default::default()
                };
                let give_up = Instant::now() + Duration::from_secs(120);
                loop {
                    let current = addr.lock().expect("addr").clone();
                    if let Some(channel) = channel(&current).await {
                        let reply = CheckInServiceClient::new(channel)
                            .submit_check_in(authed(&tokens[n], request.clone()))
                            .await;
                        if let Ok(reply) = reply {
                            let reply = reply.into_inner();
                            assert!(reply.safety_response.is_some(), "a crisis check-in shows the safety response");
                            accepted.lock().expect("accepted").push(patient.value.clone());
                            break;
                        }
                    }
                    assert!(Instant::now() < give_up, "check-in {n} was never accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    for kill in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        running.child.kill().expect("SIGKILL tandem up");
        running.child.wait().expect("reap");
        eprintln!("kill {}: {} check-ins accepted so far", kill + 1, accepted.lock().expect("accepted").len());
        running = start_up(data_dir.path(), &env);
        *addr.lock().expect("addr") = running.addr.clone();
    }
    let last_restart = Instant::now();
    load.await.expect("the load finished");
    let accepted: HashSet<String> = accepted.lock().expect("accepted").iter().cloned().collect();
    assert_eq!(accepted.len(), PATIENTS, "every patient's crisis check-in was accepted in the end");

    // Every accepted crisis check-in's patient gets an escalation alert to a
    // human within 30 s of the last restart.
    let alerted_patient = |r: &tandem_cli::webhook::Received| {
        (r.kind() == "escalation.notify").then(|| r.json["data"]["patient_id"].as_str().unwrap_or_default().to_owned())
    };
    let deadline = last_restart + Duration::from_secs(30);
    loop {
        let alerted: HashSet<String> = receiver.received().iter().filter_map(alerted_patient).collect();
        let missing: Vec<&String> = accepted.iter().filter(|p| !alerted.contains(*p)).collect();
        if missing.is_empty() {
            eprintln!("every alert delivered {:?} after the last restart", last_restart.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted crisis check-ins had no alert 30 s after the last restart",
            missing.len(),
            accepted.len()
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        receiver.wait_for(remaining.min(Duration::from_secs(1)), |_| false).await;
    }

    // None twice to the same channel: one escalation per patient, and each
    // (escalation, step, recipient) delivered as one message (a redelivery
    // after a crash keeps its webhook-id, so a receiver drops it).
    let mut messages: HashMap<(String, String, String), HashSet<String>> = HashMap::new();
    let mut escalations: HashMap<String, HashSet<String>> = HashMap::new();
    for r in receiver.received().iter().filter(|r| r.kind() == "escalation.notify") {
        let data = &r.json["data"];
        let field = |name: &str| data[name].as_str().map(str::to_owned).unwrap_or_else(|| data[name].to_string());
        escalations.entry(field("patient_id")).or_default().insert(field("escalation_id"));
        messages.entry((field("escalation_id"), field("step"), r.path.clone())).or_default().insert(r.id.clone());
    }
    for (patient, ids) in &escalations {
        assert_eq!(ids.len(), 1, "patient {patient} got {} escalations for one crisis", ids.len());
    }
    for (key, ids) in &messages {
        assert_eq!(ids.len(), 1, "{key:?} was delivered as {} different messages", ids.len());
    }
    drop(running);
    drop(broker);
    database.drop_database().await;
}
