//! The triage service: every check-in and missed measure assessed with the
//! patient's history (`rules.rs`), escalations as a persisted state machine
//! that climbs the care team (`escalation.rs` decides, `engine.rs` writes,
//! `scheduler.rs` wakes on deadlines), the events it
//! consumes (`handlers.rs`), and the clinician worklist (`api.rs`).
//!
//! Triage is where a crisis event that can never be processed is decided
//! on: its own dead letters (through the consumer's hook) and those
//! notifications announces (`CrisisEventDeadLettered`) each open one
//! escalation to the org's crisis contact (`Engine::dead_lettered`,
//! `escalation::unprocessable`).

pub mod api;
pub mod clock;
pub mod config;
pub mod engine;
pub mod escalation;
pub mod handlers;
pub mod repo;
pub mod scheduler;

use std::sync::Arc;

use tandem_auth::{AuthInterceptor, Verifier};
use tandem_events::{Consumer, EventBus, Outbox, Relay, topics};
use tandem_proto::triage::v1::triage_service_server::TriageServiceServer;
use tandem_server::{Streams, Tasks};
use tandem_store::{Backend, Migrations, Store, StoreError, StoreOptions};
use tonic::service::interceptor::InterceptedService;

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "tandem.triage.v1.TriageService";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "triage";
/// Connections of the gRPC API's own pool: worklist reads and watches wait
/// on these, never on the ones the consumer and the deadline scheduler use.
pub const API_CONNECTIONS: u32 = 8;

/// This service's migrations.
pub static MIGRATIONS: Migrations = tandem_store::migrations![
    "0001_triage.sql",
    "0002_escalation_attempts.sql",
    "0003_dead_letter_escalations.sql",
    "0004_shared_projection.sql"
];

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event spine.
    #[error(transparent)]
    Events(#[from] tandem_events::Error),
}

/// A running triage service.
#[derive(Debug, Clone)]
pub struct Triage {
    store: Store,
    api_store: Store,
    engine: engine::Engine,
}

impl Triage {
    /// Opens (and migrates) the service's database and its outbox.
    pub async fn open(database_url: &str, settings: config::TriageSettings) -> Result<Self, StartError> {
        let store = Store::open(StoreOptions::new(database_url, SCHEMA), &MIGRATIONS).await?;
        tandem_events::install(&store).await?;
        let outbox = Outbox::new(store.clone(), "triage");
        let engine = engine::Engine::new(repo::Repo::new(store.clone()), outbox, Arc::new(settings));
        let api_store = store.separate_pool(API_CONNECTIONS).await?;
        Ok(Self { store, api_store, engine })
    }

    /// The escalation engine.
    pub fn engine(&self) -> &engine::Engine {
        &self.engine
    }

    /// Starts the relay, the consumer and the deadline scheduler.
    pub fn start(&self, bus: Arc<dyn EventBus>, tasks: &mut Tasks) {
        let relay = Relay::new(self.engine.outbox(), bus.clone());
        tasks.spawn("triage relay", relay.run(tasks.stopped()));
        let consumer = Consumer::new(
            bus,
            "triage",
            &[topics::CAREPLANS, topics::CHECKINS, topics::NOTIFICATIONS],
            self.store.clone(),
            Arc::new(handlers::TriageHandler::new(self.engine.clone())),
        )
        .with_alarm(Arc::new(handlers::DeadLetterPager::new(self.engine.clone())));
        tasks.spawn("triage consumer", consumer.run(tasks.stopped()));
        tasks.spawn("triage deadlines", scheduler::run(self.engine.clone(), tasks.stopped()));
        if self.store.backend() == Backend::Postgres {
            // Worklist changes made by other replicas wake this one's watchers.
            tasks.spawn("triage worklist listener", self.engine.changes().clone().listen(tasks.stopped()));
        }
    }

    /// The service's store (the pool of its consumer, relay and scheduler).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The gRPC API over its own pool, its streams bounded by `streams`.
    pub fn api(&self, streams: Streams) -> api::TriageApi {
        api::TriageApi::new(self.engine.with_repo(repo::Repo::new(self.api_store.clone())), streams)
    }

    /// The authenticated gRPC service; `streams` bounds its watches and ends
    /// them on shutdown (pass the server's).
    pub fn grpc_service(
        &self,
        verifier: Arc<Verifier>,
        streams: Streams,
    ) -> InterceptedService<TriageServiceServer<api::TriageApi>, AuthInterceptor> {
        TriageServiceServer::with_interceptor(self.api(streams), AuthInterceptor::new(verifier))
    }

    /// Stops using the database.
    pub async fn close(&self) {
        self.api_store.close().await;
        self.store.close().await;
    }
}

tandem_store::migrations_listed_test!(MIGRATIONS);
