//! The care plans service: patients, care plans, care teams and safety plans.
//!
//! `api.rs` is the gRPC surface (validation, authorization, mapping),
//! `repo.rs` the SQL, `domain.rs` the types.

pub mod api;
pub mod domain;
pub mod plan;
pub mod plans_repo;
pub mod repo;

use std::sync::Arc;

use tandem_auth::{AuthInterceptor, Verifier};
use tandem_events::{EventBus, Outbox, Relay};
use tandem_proto::careplans::v1::care_plan_service_server::CarePlanServiceServer;
use tandem_server::Tasks;
use tandem_store::{Migrations, Store, StoreError, StoreOptions};
use tonic::service::interceptor::InterceptedService;

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "tandem.careplans.v1.CarePlanService";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "careplans";

/// This service's migrations.
pub static MIGRATIONS: Migrations =
    tandem_store::migrations!["0001_patients.sql", "0002_care_plans.sql", "0003_scoped_idempotency.sql"];

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

/// A running care plans service: its store, its outbox and its gRPC surface.
#[derive(Debug, Clone)]
pub struct CarePlans {
    store: Store,
    outbox: Outbox,
}

impl CarePlans {
    /// Opens (and migrates) the service's database and its outbox.
    pub async fn open(database_url: &str) -> Result<Self, StartError> {
        let store = Store::open(StoreOptions::new(database_url, SCHEMA), &MIGRATIONS).await?;
        tandem_events::install(&store).await?;
        let outbox = Outbox::new(store.clone(), "careplans");
        Ok(Self { store, outbox })
    }

    /// Starts the outbox relay that publishes this service's events.
    pub fn start(&self, bus: Arc<dyn EventBus>, tasks: &mut Tasks) {
        let relay = Relay::new(&self.outbox, bus);
        tasks.spawn("careplans relay", relay.run(tasks.stopped()));
    }

    /// The service's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authenticated gRPC service.
    pub fn grpc_service(
        &self,
        verifier: Arc<Verifier>,
    ) -> InterceptedService<CarePlanServiceServer<api::CarePlanApi>, AuthInterceptor> {
        let api = api::CarePlanApi::new(repo::Repo::new(self.store.clone(), self.outbox.clone()));
        CarePlanServiceServer::with_interceptor(api, AuthInterceptor::new(verifier))
    }

    /// Stops using the database.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

tandem_store::migrations_listed_test!(MIGRATIONS);
