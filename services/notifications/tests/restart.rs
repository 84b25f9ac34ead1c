//! Killing the service mid-delivery and starting it again delivers every
//! pending alert, and none twice to the same channel.
//!
//! The first life runs in a runtime of its own. While the webhook receiver
//! holds the alert request open (the channel has not accepted it), that
//! runtime is shut down: every task is dropped where it stands, as in a
//! crash. No graceful stop, no outcome recorded, the claim left behind. A
//! second life on the same database must attempt the alert again, with the
//! same webhook-id, and record it delivered exactly once.

mod support;

use std::time::Duration;

use tandem_events::TopicSpec;
use tandem_events::testing::TestBus;
use tandem_notifications::Notifications;
use tandem_notifications::handlers::alert_key;
use tandem_proto::ids::PatientId;
use tandem_server::Tasks;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;

use support::*;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

fn killed_mid_delivery_then_restarted(backend: Backend) {
    let main = runtime(2);
    let (database, test_bus, hook) = main.block_on(async {
        let database = TestDatabase::create(backend).await;
        let test_bus = TestBus::embedded().await;
        test_bus.bus.ensure_topics(&TopicSpec::standard(test_bus.bus.default_partitions())).await.unwrap();
        (database, test_bus, Hook::start().await)
    });
    let bus = test_bus.bus.clone();
    let mut settings = fast_settings();
    // A claim left by the dead process expires after this (PostgreSQL; on
    // SQLite a starting worker releases every claim at once).
    settings.worker.lease = Duration::from_secs(1);
    let patient = PatientId::new();
    let escalation = new_escalation();

    // First life: register, verify, and get killed while the alert is in flight.
    let first = runtime(1);
    first.block_on(async {
        let service = Notifications::open(&database.url, settings.clone()).await.unwrap();
        let mut tasks = Tasks::new();
        service.start(bus.clone(), &mut tasks);
        verified_webhook(&service, &hook, "dr-primary", "/primary").await;
        hook.set("/primary", Mode::Hang);
        publish_triage(&bus, &escalation_event(&patient, &escalation, 0, "dr-primary", "notify")).await;
        hook.wait_for("/primary", "escalation.notify").await;
        // Leave the tasks running: the runtime's death stops them.
        std::mem::forget(tasks);
    });
    first.shutdown_background();

    // Second life on the same database and bus.
    main.block_on(async {
        hook.set("/primary", Mode::Answer(200));
        let service = Notifications::open(&database.url, settings).await.unwrap();
        let mut tasks = Tasks::new();
        service.start(bus.clone(), &mut tasks);
        let delivered = eventually("the alert delivered after the restart", || async {
            let (delivered, _) = receipts(&outbox_events(&service).await, &escalation);
            (!delivered.is_empty()).then_some(delivered)
        })
        .await;
        assert_eq!(delivered.len(), 1, "one receipt");
        let alerts: Vec<_> = hook.requests("/primary").into_iter().filter(|r| r.is("escalation.notify")).collect();
        let accepted: Vec<_> = alerts.iter().filter(|r| r.answered == Some(200)).collect();
        assert_eq!(accepted.len(), 1, "accepted once: {alerts:?}");
        assert_eq!(alerts.iter().filter(|r| r.answered.is_none()).count(), 1, "the request the crash cut off");
        assert!(alerts.iter().all(|r| r.header("webhook-id") == alerts[0].header("webhook-id")), "one webhook-id");
        let queued = service.repo().deliveries_of(&alert_key(&escalation, 0)).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1, "delivered");
        // A graceful stop now leaves nothing behind and sends nothing more.
        let failures = tasks.shutdown().await;
        assert!(failures.is_empty(), "background tasks ended with errors: {failures:?}");
        let after: Vec<_> = hook.requests("/primary").into_iter().filter(|r| r.is("escalation.notify")).collect();
        assert_eq!(after.len(), alerts.len());
        service.close().await;
        database.drop_database().await;
    });
    main.block_on(async move {
        drop(bus);
        drop(test_bus);
    });
}

#[test]
fn killed_mid_delivery_then_restarted_sqlite() {
    killed_mid_delivery_then_restarted(Backend::Sqlite);
}

#[test]
fn killed_mid_delivery_then_restarted_postgres() {
    killed_mid_delivery_then_restarted(Backend::Postgres);
}
