//! `tandem up`: all four services in one process, on one port.

use std::future::Future;

use std::sync::Arc;

use anyhow::Context;
use tandem_events::EventBus;
use tandem_server::{GrpcServer, Settings, Streams, Tasks};
use tokio::net::TcpListener;

/// The four services, opened on their stores.
#[derive(Debug, Clone)]
pub struct Services {
    /// Care plans.
    pub careplans: tandem_careplans::CarePlans,
    /// Check-ins.
    pub checkins: tandem_checkins::CheckIns,
    /// Triage.
    pub triage: tandem_triage::Triage,
    /// Notifications.
    pub notifications: tandem_notifications::Notifications,
}

impl Services {
    /// Opens every service's store (creating and migrating it).
    pub async fn open(settings: &Settings, figment: &figment::Figment) -> anyhow::Result<Self> {
        // The data dir holds the SQLite files, the embedded event log and the
        // development signing key.
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
        let careplans = tandem_careplans::CarePlans::open(&settings.database_url_for("careplans")?)
            .await
            .context("opening the careplans store")?;
        let checkins_settings = tandem_checkins::config::CheckInsSettings::load(figment)?;
        let checkins = tandem_checkins::CheckIns::open(&settings.database_url_for("checkins")?, checkins_settings)
            .await
            .context("opening the checkins store")?;
        let triage = tandem_triage::Triage::open(
            &settings.database_url_for("triage")?,
            tandem_server::config::section(figment, "triage")?,
        )
        .await
        .context("opening the triage store")?;
        let notifications_settings = tandem_server::config::section(figment, "notifications")?;
        let notifications = tandem_notifications::Notifications::open(
            &settings.database_url_for("notifications")?,
            notifications_settings,
        )
        .await
        .context("opening the notifications store")?;
        Ok(Self { careplans, checkins, triage, notifications })
    }

    /// Starts every service's relays and consumers on `bus`, each
    /// service's tasks tied to its gRPC health.
    pub fn start(&self, bus: &Arc<dyn EventBus>, tasks: &mut Tasks) {
        tasks.set_service(tandem_careplans::SERVICE_NAME);
        self.careplans.start(bus.clone(), tasks);
        tasks.set_service(tandem_checkins::SERVICE_NAME);
        self.checkins.start(bus.clone(), tasks);
        tasks.set_service(tandem_notifications::SERVICE_NAME);
        self.notifications.start(bus.clone(), tasks);
        tasks.set_service(tandem_triage::SERVICE_NAME);
        self.triage.start(bus.clone(), tasks);
    }

    /// Every service's store.
    pub fn stores(&self) -> Vec<tandem_store::Store> {
        vec![
            self.careplans.store().clone(),
            self.checkins.store().clone(),
            self.triage.store().clone(),
            self.notifications.store().clone(),
        ]
    }

    /// Closes every store.
    pub async fn close(&self) {
        self.careplans.close().await;
        self.checkins.close().await;
        self.triage.close().await;
        self.notifications.close().await;
    }
}

/// Serves all four services on `listener` until `shutdown` completes, then
/// drains and closes the stores.
pub async fn serve(
    settings: &Settings,
    figment: &figment::Figment,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let verifier = settings.verifier()?;
    let services = Services::open(settings, figment).await?;
    let bus = tandem_server::bus::connect(settings).await?;
    let mut tasks = Tasks::new();
    services.start(&bus, &mut tasks);
    tasks.set_service("");
    let retention = tandem_events::Retention::new(services.stores(), bus.clone(), settings.retention.into());
    tasks.spawn("retention", retention.run(tasks.stopped()));
    // One set of stream bounds for the process: the per-process cap covers
    // watches and inbox streams together.
    let streams = Streams::new(settings.streams.clone());
    let server = GrpcServer::new()
        .with_health(tasks.health().clone())
        .with_service(services.careplans.grpc_service(verifier.clone()))
        .with_service(services.checkins.grpc_service(verifier.clone()))
        .with_service(services.triage.grpc_service(verifier.clone(), streams.clone()))
        .with_service(services.notifications.grpc_service(verifier, streams.clone()))
        .drain_delay(settings.shutdown_drain)
        .streams(streams);
    let served = server.serve(listener, shutdown).await;
    // gRPC has drained: stop relays and consumers (what they had not
    // finished stays in the outboxes and the log for the next start).
    for (task, error) in tasks.shutdown().await {
        tracing::error!(task, %error, "background task ended with an error");
    }
    if let Err(error) = bus.flush(std::time::Duration::from_secs(10)).await {
        tracing::warn!(%error, "event bus did not flush; unsent events stay in the outboxes");
    }
    services.close().await;
    served.context("serving gRPC")
}
