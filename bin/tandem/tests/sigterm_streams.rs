//! SIGTERM with open watch streams: `tandem up` ends every open
//! WatchWorklist and StreamInbox when the drain is over (UNAVAILABLE, so
//! clients reconnect elsewhere) and exits cleanly, instead of waiting for
//! them until the orchestrator's SIGKILL. Embedded and PostgreSQL + Kafka.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_auth::{DevSigningKey, Role};
use tandem_proto::notifications::v1 as notifications;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{authed, start_up};

mod support;

/// Only a hang reaches this; nothing here is a speed assertion.
const BOUND: Duration = Duration::from_secs(60);

async fn serving(addr: &str) -> Channel {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            let status = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
            if status.is_ok_and(|status| status.into_inner().status() == ServingStatus::Serving) {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "tandem up at {addr} never said SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sigterm_ends_open_streams_and_exits(backend: Backend) {
    let data_dir = tempfile::tempdir().expect("data dir");
    let secret = DevSigningKey::load_or_create(data_dir.path()).expect("dev key").bytes().to_vec();
    let mut env = vec![("TANDEM_SHUTDOWN_DRAIN".to_owned(), "2s".to_owned())];
    let mut resources = None;
    if backend == Backend::Postgres {
        let database = TestDatabase::create(Backend::Postgres).await;
        let broker =
            tokio::task::spawn_blocking(tandem_events::testing::KafkaBroker::start).await.expect("start kafka");
        env.push(("TANDEM_DATABASE_URL".to_owned(), database.url.clone()));
        env.push(("TANDEM_EVENTS".to_owned(), format!("kafka://{}?partitions=4", broker.brokers())));
        resources = Some((database, broker));
    }
    let mut running = start_up(data_dir.path(), &env);
    let channel = serving(&running.addr).await;
    let defaults = tandem_server::Settings::default();
    let token = |role: Role, subject: &str| {
        tandem_auth::mint_token(
            &secret,
            &defaults.auth.issuer,
            &defaults.auth.audience,
            &"north".parse().unwrap(),
            role,
            subject,
            Duration::from_secs(3600),
        )
        .expect("mint token")
    };

    let mut watches = Vec::new();
    for supervisor in ["sup-1", "sup-2"] {
        let supervisor = token(Role::Supervisor, supervisor);
        for _ in 0..5 {
            let mut client = TriageServiceClient::new(channel.clone());
            let watch = client.watch_worklist(authed(&supervisor, triage::WatchWorklistRequest {})).await;
            watches.push(watch.expect("a watch").into_inner());
        }
    }
    let clinician = token(Role::Clinician, "dr-1");
    let mut client = NotificationServiceClient::new(channel.clone());
    let mut inbox = client
        .stream_inbox(authed(&clinician, notifications::StreamInboxRequest {}))
        .await
        .expect("inbox")
        .into_inner();

    let status = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
    for watch in &mut watches {
        let end = tokio::time::timeout(BOUND, watch.message()).await.expect("the watch ends");
        let status = end.expect_err("with a status that says why");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
    let end = tokio::time::timeout(BOUND, inbox.message()).await.expect("the inbox stream ends");
    assert_eq!(end.expect_err("with a status").code(), Code::Unavailable);

    let deadline = Instant::now() + BOUND;
    let exit = loop {
        if let Some(exit) = running.child.try_wait().expect("poll child") {
            break exit;
        }
        assert!(Instant::now() < deadline, "tandem up did not exit after SIGTERM with streams open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "tandem up exited with {exit}");
    drop(running);
    if let Some((database, _broker)) = resources {
        database.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_exits_embedded() {
    sigterm_ends_open_streams_and_exits(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_and_exits_postgres_kafka() {
    sigterm_ends_open_streams_and_exits(Backend::Postgres).await;
}
