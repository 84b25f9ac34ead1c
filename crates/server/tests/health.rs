//! A consumer task that dies takes its service's gRPC health (and the
//! process's) to NOT_SERVING, as a Kubernetes probe sees it: on SQLite with
//! the embedded log, and on PostgreSQL with Kafka.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Any;
use tandem_events::testing::TestBus;
use tandem_events::{Consumer, EventBus, Handler, HandlerError, Record, TopicSpec, new_envelope, topics};
use tandem_proto::events::v1::EventEnvelope;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{CheckInSubmitted, MeasureMissed};
use tandem_proto::ids::{OrgId, PatientId};
use tandem_server::{GrpcServer, Tasks};
use tandem_store::testing::TestDatabase;
use tandem_store::{Backend, Migrations, Store, StoreOptions};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

static MIGRATIONS: Migrations = tandem_store::migrations![in "tests/migrations": "0001_handled.sql"];

const TRIAGE: &str = "tandem.triage.v1.TriageService";
const CHECKINS: &str = "tandem.checkins.v1.CheckInService";

/// Handles check-ins; a bug makes it panic on a missed-measure event.
#[derive(Debug)]
struct PanicsOnMissedMeasures;

#[async_trait]
impl Handler for PanicsOnMissedMeasures {
    async fn handle(&self, tx: &mut sqlx::Transaction<'_, Any>, event: &EventEnvelope) -> Result<(), HandlerError> {
        if matches!(event.payload, Some(Payload::MeasureMissed(_))) {
            panic!("handler bug on event {}", event.event_id);
        }
        sqlx::query("INSERT INTO handled (event_id) VALUES ($1)").bind(&event.event_id).execute(&mut **tx).await?;
        Ok(())
    }
}

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let reply = client.check(HealthCheckRequest { service: service.to_owned() }).await.expect("health check");
    ServingStatus::try_from(reply.into_inner().status).expect("a known status")
}

async fn handled(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM handled").fetch_one(store.pool()).await.unwrap()
}

async fn a_consumer_task_that_dies_turns_its_service_not_serving(test: TestBus, backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::open(StoreOptions::new(database.url.clone(), "svc"), &MIGRATIONS).await.unwrap();
    tandem_events::install(&store).await.unwrap();
    let bus: Arc<dyn EventBus> = test.bus.clone();
    bus.ensure_topics(&[TopicSpec::new(topics::CHECKINS, 2)]).await.unwrap();

    let mut tasks = Tasks::new();
    tasks.set_service(TRIAGE);
    let consumer =
        Consumer::new(bus.clone(), "triage", &[topics::CHECKINS], store.clone(), Arc::new(PanicsOnMissedMeasures));
    tasks.spawn("triage consumer", consumer.run(tasks.stopped()));
    tasks.set_service(CHECKINS);
    let stopped = tasks.stopped();
    tasks.spawn("checkins relay", async move {
        stopped.await;
        Ok::<(), String>(())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(GrpcServer::new().with_health(tasks.health().clone()).serve(listener, async move {
        let _ = server_stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let mut client = loop {
        if let Ok(channel) = channel.connect().await {
            break HealthClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Health answers only for registered services: register ours.
    tasks.health().add_service(TRIAGE);
    tasks.health().add_service(CHECKINS);

    let org: OrgId = "northside-clinic".parse().unwrap();
    let patient = PatientId::new();
    let check_in = new_envelope(
        "checkins",
        &org,
        &patient,
        Payload::CheckInSubmitted(CheckInSubmitted {
            crisis_triggers: vec!["phq9-item9".into()],
            ..Default::default()
        }),
    );
    let publish = |event: &EventEnvelope| Record::from_envelope(topics::CHECKINS, event).unwrap();
    assert!(bus.publish(&[publish(&check_in)]).await.iter().all(Result::is_ok));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while handled(&store).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the check-in to be handled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&mut client, "").await, ServingStatus::Serving);
    assert_eq!(status(&mut client, TRIAGE).await, ServingStatus::Serving);

    // The bug kills the consumer task.
    let missed = new_envelope("checkins", &org, &patient, Payload::MeasureMissed(MeasureMissed::default()));
    assert!(bus.publish(&[publish(&missed)]).await.iter().all(Result::is_ok));
    while status(&mut client, TRIAGE).await != ServingStatus::NotServing {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for triage to be NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&mut client, "").await, ServingStatus::NotServing, "the process as a whole is unhealthy");
    assert_eq!(status(&mut client, CHECKINS).await, ServingStatus::Serving, "other services keep serving");
    let failures = tasks.health().failures();
    assert!(
        failures.iter().any(|(service, task, reason)| service == TRIAGE
            && task == "triage consumer"
            && reason.contains("panicked")),
        "{failures:?}"
    );

    let _ = stop_server.send(());
    server.await.unwrap().unwrap();
    let ended: Vec<&str> = tasks.shutdown().await.into_iter().map(|(name, _)| name).collect();
    assert_eq!(ended, ["triage consumer"]);
    store.close().await;
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_on_sqlite() {
    a_consumer_task_that_dies_turns_its_service_not_serving(TestBus::embedded().await, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_on_postgres() {
    a_consumer_task_that_dies_turns_its_service_not_serving(TestBus::kafka().await, Backend::Postgres).await;
}
