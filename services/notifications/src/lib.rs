//! The notifications service: delivery of alerts and reminders to clinicians and patients.
//!
//! `api.rs` is the gRPC surface. Its RPCs arrive with later issues and
//! answer UNIMPLEMENTED until then, after authentication.

pub mod api;

use std::sync::Arc;

use sqlx::migrate::Migrator;
use tandem_auth::{AuthInterceptor, Verifier};
use tandem_proto::notifications::v1::notification_service_server::NotificationServiceServer;
use tandem_store::{Migrations, Store, StoreError, StoreOptions};
use tonic::service::interceptor::InterceptedService;

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "tandem.notifications.v1.NotificationService";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "notifications";

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// This service's migrations.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// A running notifications service: its store and its gRPC surface.
#[derive(Debug, Clone)]
pub struct Notifications {
    store: Store,
}

impl Notifications {
    /// Opens (and migrates) the service's database.
    pub async fn open(database_url: &str) -> Result<Self, StoreError> {
        let store = Store::open(StoreOptions::new(database_url, SCHEMA), &MIGRATIONS).await?;
        Ok(Self { store })
    }

    /// The service's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The authenticated gRPC service.
    pub fn grpc_service(
        &self,
        verifier: Arc<Verifier>,
    ) -> InterceptedService<NotificationServiceServer<api::Api>, AuthInterceptor> {
        NotificationServiceServer::with_interceptor(api::Api, AuthInterceptor::new(verifier))
    }

    /// Stops using the database.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
