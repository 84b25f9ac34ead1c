//! `tandem serve <service>` as a container runs it: one service per
//! process, SERVING once it runs, out cleanly on SIGTERM after the drain; a
//! name it does not know is refused with the ones it does. And the four as
//! four processes on PostgreSQL and Kafka carry a crisis check-in to the
//! primary clinician's webhook, as a distributed deployment does.

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tandem_auth::Role;
use tandem_cli::scenario::{Clients, enroll_with_team, register_webhook};
use tandem_cli::serve::ServiceName;
use tandem_cli::webhook::Receiver;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1 as checkins;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{Running, TANDEM, authed, start_serve};

mod support;

/// TANDEM_SHUTDOWN_DRAIN of every process here.
const DRAIN: Duration = Duration::from_secs(2);

/// Only a hang reaches this; nothing here is a speed assertion.
const BOUND: Duration = Duration::from_secs(60);

async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest { service: service.to_owned() };
    Ok(HealthClient::new(channel.clone()).check(request).await?.into_inner().status())
}

/// A channel to `running` once its health says SERVING.
async fn serving(running: &Running) -> Channel {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{}", running.addr)).unwrap().connect().await
            && let Ok(ServingStatus::Serving) = health(&channel, "").await
        {
            return channel;
        }
        assert!(Instant::now() < deadline, "tandem serve at {} never said SERVING", running.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM, checks health turns NOT_SERVING during the drain, and
/// returns how the process exited and how long after the signal.
async fn sigterm(running: &mut Running, channel: &Channel) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    let status = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
    let mut saw_not_serving = false;
    while sent.elapsed() < DRAIN {
        if let Ok(ServingStatus::NotServing) = health(channel, "").await {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_not_serving, "health said NOT_SERVING during the drain");
    loop {
        if let Some(exit) = running.child.try_wait().expect("poll child") {
            return (exit, sent.elapsed());
        }
        assert!(sent.elapsed() < BOUND, "tandem serve did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Exited 0, after the drain and within the drain plus the grace in-flight
/// calls get (an idle service needs none of it).
fn assert_drained(service: ServiceName, exit: ExitStatus, took: Duration) {
    assert!(exit.success(), "tandem serve {service} exited with {exit}");
    assert!(took >= DRAIN, "tandem serve {service} exited {took:?} after SIGTERM, before the {DRAIN:?} drain");
    assert!(
        took < DRAIN + tandem_server::CALL_GRACE,
        "tandem serve {service} took {took:?} to exit after SIGTERM (drain {DRAIN:?})"
    );
}

/// One service on a fresh data dir (SQLite and the embedded log): it alone
/// answers health, it alone has a store, and SIGTERM drains it.
async fn serves_alone_and_drains_on_sigterm(service: ServiceName) {
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("data");
    let drain = format!("{}s", DRAIN.as_secs());
    let mut running = start_serve(service.as_str(), &data, &[("TANDEM_SHUTDOWN_DRAIN", drain.as_str())]);
    let channel = serving(&running).await;

    assert_eq!(health(&channel, service.grpc_name()).await.unwrap(), ServingStatus::Serving);
    for other in ServiceName::ALL.into_iter().filter(|other| *other != service) {
        let status = health(&channel, other.grpc_name()).await.expect_err("another service is not served here");
        assert_eq!(status.code(), Code::NotFound, "{other} in tandem serve {service}: {status:?}");
        assert!(!data.join(format!("{other}.db")).exists(), "tandem serve {service} opened {other}'s store");
    }
    assert!(data.join(format!("{service}.db")).exists(), "{service}.db in the data dir");

    let (exit, took) = sigterm(&mut running, &channel).await;
    assert_drained(service, exit, took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_careplans_alone_and_drain_on_sigterm() {
    serves_alone_and_drains_on_sigterm(ServiceName::Careplans).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_checkins_alone_and_drain_on_sigterm() {
    serves_alone_and_drains_on_sigterm(ServiceName::Checkins).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_triage_alone_and_drain_on_sigterm() {
    serves_alone_and_drains_on_sigterm(ServiceName::Triage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_notifications_alone_and_drain_on_sigterm() {
    serves_alone_and_drains_on_sigterm(ServiceName::Notifications).await;
}

#[test]
fn an_unknown_service_is_refused_with_the_ones_there_are() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(TANDEM).args(["serve", "nonsense", "--data-dir"]).arg(data_dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'nonsense'"), "{stderr}");
    for service in ServiceName::ALL {
        assert!(stderr.contains(service.as_str()), "{service} missing from: {stderr}");
    }
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0, "nothing written for a refused name");
}

#[test]
fn serve_help_lists_the_services_and_every_setting() {
    let output = Command::new(TANDEM).args(["serve", "--help"]).output().expect("run tandem serve --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for service in ServiceName::ALL {
        assert!(help.contains(&format!("- {service}:")), "{service} missing from --help: {help}");
    }
    for setting in tandem_server::config::SETTINGS {
        assert!(help.contains(setting.env), "{} missing from --help", setting.env);
    }
    assert!(help.contains("TANDEM_CHECKINS__"), "the services' own sections: {help}");
}

/// The distributed deployment on one machine: four `tandem serve`
/// processes, one fresh PostgreSQL database (a schema each) and one Kafka
/// broker. A crisis check-in sent to checkins reaches triage and then
/// notifications over Kafka, and pages the primary clinician's webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_serve_processes_on_postgres_and_kafka_page_the_primary_for_a_crisis() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let broker = tokio::task::spawn_blocking(tandem_events::testing::KafkaBroker::start).await.expect("start kafka");
    let secret = "serve-binary-test-secret-0123456789abcdef";
    let events = format!("kafka://{}?partitions=2", broker.brokers());
    let drain = format!("{}s", DRAIN.as_secs());
    let data_dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    for service in ServiceName::ALL {
        let env = [
            ("TANDEM_DATABASE_URL", database.url.as_str()),
            ("TANDEM_EVENTS", events.as_str()),
            ("TANDEM_AUTH__HS256_SECRET", secret),
            ("TANDEM_SHUTDOWN_DRAIN", drain.as_str()),
            ("TANDEM_INSTANCE_ID", &format!("serve-test-{service}")),
        ];
        // A data dir each, as containers have: nothing is shared through it.
        let running = start_serve(service.as_str(), &data_dir.path().join(service.as_str()), &env);
        processes.push((service, running));
    }
    let mut channels = Vec::new();
    for (_, running) in &processes {
        channels.push(serving(running).await);
    }
    let mut clients = Clients {
        plans: CarePlanServiceClient::new(channels[0].clone()),
        checkins: CheckInServiceClient::new(channels[1].clone()),
        triage: TriageServiceClient::new(channels[2].clone()),
        notifications: NotificationServiceClient::new(channels[3].clone()),
    };
    let token = |role: Role, subject: &str| {
        tandem_auth::mint_token(
            secret.as_bytes(),
            tandem_auth::DEFAULT_ISSUER,
            tandem_auth::DEFAULT_AUDIENCE,
            &"north".parse().unwrap(),
            role,
            subject,
            Duration::from_secs(3600),
        )
        .expect("mint token")
    };

    let ehr = token(Role::Integration, "ehr-1");
    let team = [("dr-primary", "Dr. Primary"), ("dr-backup", "Dr. Backup")];
    let patient = enroll_with_team(&mut clients, &ehr, "mrn-serve-1", "Alex Example", &team).await.expect("enrol");
    let receiver = Receiver::start().await.expect("webhook receiver");
    register_webhook(&mut clients, &token(Role::Clinician, "dr-primary"), "", &receiver, "/dr-primary")
        .await
        .expect("the primary's webhook, verified");

    // PHQ-9 item 9 ≥ 1 is a crisis trigger (LOINC 44249-1).
    let alex = token(Role::Patient, &patient.value);
    let reply = clients
        .checkins
        .submit_check_in(authed(
            &alex,
            checkins::SubmitCheckInRequest {
                idempotency_key: "serve-crisis".into(),
                patient_id: Some(patient.clone()),
                instruments: vec![checkins::InstrumentResponse {
                    instrument: "44249-1".into(),
                    answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 1],
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("the crisis check-in")
        .into_inner();
    assert!(reply.safety_response.is_some(), "the patient gets the safety response at once");
    let alert = receiver
        .wait_for(BOUND, |received| {
            received.path == "/dr-primary"
                && received.kind() == "escalation.notify"
                && received.json["data"]["patient_id"].as_str() == Some(patient.value.as_str())
        })
        .await;
    assert!(alert.is_some(), "the primary was never paged: {:?}", receiver.received());

    for ((service, running), channel) in processes.iter_mut().zip(&channels) {
        let (exit, took) = sigterm(running, channel).await;
        assert_drained(*service, exit, took);
    }
    drop(processes);
    database.drop_database().await;
}
