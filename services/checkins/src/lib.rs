//! The checkins service: patient check-ins and the immediate safety response.
//!
//! `api.rs` is the gRPC surface, `due.rs` what is due when, `refused.rs`
//! the crisis signals of refused submissions, `repo.rs` the SQL (check-ins,
//! refused crisis signals and the projections of careplans events),
//! `submit.rs` the transactions that store a check-in or a refused signal
//! with its event.

pub mod api;
pub mod config;
pub mod due;
pub mod handlers;
pub mod missed;
pub mod refused;
pub mod repo;
pub mod submit;

use std::sync::Arc;

use tandem_auth::{AuthInterceptor, Verifier};
use tandem_events::{Consumer, EventBus, Outbox, Relay, topics};
use tandem_proto::checkins::v1::check_in_service_server::CheckInServiceServer;
use tandem_server::Tasks;
use tandem_store::{Migrations, Store, StoreError, StoreOptions};
use tonic::service::interceptor::InterceptedService;

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "tandem.checkins.v1.CheckInService";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "checkins";

/// This service's migrations.
pub static MIGRATIONS: Migrations = tandem_store::migrations![
    "0001_checkins.sql",
    "0002_missed_measures.sql",
    "0003_request_hash.sql",
    "0004_refused_crisis_signals.sql"
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

/// A running checkins service: its store, outbox and gRPC surface.
#[derive(Debug, Clone)]
pub struct CheckIns {
    store: Store,
    outbox: Outbox,
    settings: Arc<config::CheckInsSettings>,
}

impl CheckIns {
    /// Opens (and migrates) the service's database and its outbox.
    pub async fn open(database_url: &str, settings: config::CheckInsSettings) -> Result<Self, StartError> {
        let store = Store::open(StoreOptions::new(database_url, SCHEMA), &MIGRATIONS).await?;
        tandem_events::install(&store).await?;
        let outbox = Outbox::new(store.clone(), "checkins");
        Ok(Self { store, outbox, settings: Arc::new(settings) })
    }

    /// Starts the outbox relay and the consumer of careplans events.
    pub fn start(&self, bus: Arc<dyn EventBus>, tasks: &mut Tasks) {
        let relay = Relay::new(&self.outbox, bus.clone());
        tasks.spawn("checkins relay", relay.run(tasks.stopped()));
        let consumer = Consumer::new(
            bus,
            "checkins",
            &[topics::CAREPLANS],
            self.store.clone(),
            Arc::new(handlers::CarePlansProjection),
        );
        tasks.spawn("checkins consumer", consumer.run(tasks.stopped()));
        let scanner = missed::run(repo::Repo::new(self.store.clone()), self.outbox.clone(), tasks.stopped());
        tasks.spawn("checkins missed measures", scanner);
    }

    /// The service's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authenticated gRPC service.
    pub fn grpc_service(
        &self,
        verifier: Arc<Verifier>,
    ) -> InterceptedService<CheckInServiceServer<api::CheckInApi>, AuthInterceptor> {
        let api = api::CheckInApi::new(
            repo::Repo::new(self.store.clone()),
            self.settings.clone(),
            submit::Submitter::new(self.outbox.clone()),
        );
        CheckInServiceServer::with_interceptor(api, AuthInterceptor::new(verifier))
    }

    /// Stops using the database.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

tandem_store::migrations_listed_test!(MIGRATIONS);
