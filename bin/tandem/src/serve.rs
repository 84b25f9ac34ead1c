//! Serving services in this process: `tandem serve <service>` runs one,
//! `tandem up` all four, through the same open, start, serve and drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tandem_auth::Verifier;
use tandem_events::EventBus;
use tandem_server::{GrpcServer, Settings, Streams, Tasks};
use tokio::net::TcpListener;

/// How long unsent events get to reach the bus at shutdown; what is left
/// stays in the outboxes for the next start.
const BUS_FLUSH: Duration = Duration::from_secs(10);

/// A service one `tandem serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// tandem.careplans.v1.CarePlanService: enrolment, care teams, care plans, safety plans.
    Careplans,
    /// tandem.checkins.v1.CheckInService: check-ins, scoring and the immediate safety response.
    Checkins,
    /// tandem.triage.v1.TriageService: risk assessment, escalations, the worklist and its watch.
    Triage,
    /// tandem.notifications.v1.NotificationService: alerts and reminders over every channel.
    Notifications,
}

impl ServiceName {
    /// Every service.
    pub const ALL: [Self; 4] = [Self::Careplans, Self::Checkins, Self::Triage, Self::Notifications];

    /// The name on the command line, in configuration (`databases.<name>`,
    /// the service's own section) and in its SQLite file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Careplans => "careplans",
            Self::Checkins => "checkins",
            Self::Triage => "triage",
            Self::Notifications => "notifications",
        }
    }

    /// The gRPC service's fully qualified name, as health checks know it.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::Careplans => tandem_careplans::SERVICE_NAME,
            Self::Checkins => tandem_checkins::SERVICE_NAME,
            Self::Triage => tandem_triage::SERVICE_NAME,
            Self::Notifications => tandem_notifications::SERVICE_NAME,
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service opened on its store.
#[derive(Debug, Clone)]
pub enum Service {
    /// Care plans.
    Careplans(tandem_careplans::CarePlans),
    /// Check-ins.
    Checkins(tandem_checkins::CheckIns),
    /// Triage.
    Triage(tandem_triage::Triage),
    /// Notifications.
    Notifications(tandem_notifications::Notifications),
}

impl Service {
    /// Opens the service's store (creating and migrating it) with its own
    /// section of the configuration.
    pub async fn open(name: ServiceName, settings: &Settings, figment: &figment::Figment) -> anyhow::Result<Self> {
        let url = settings.database_url_for(name.as_str())?;
        let context = || format!("opening the {name} store");
        Ok(match name {
            ServiceName::Careplans => {
                Self::Careplans(tandem_careplans::CarePlans::open(&url).await.with_context(context)?)
            }
            ServiceName::Checkins => {
                let section = tandem_checkins::config::CheckInsSettings::load(figment)?;
                Self::Checkins(tandem_checkins::CheckIns::open(&url, section).await.with_context(context)?)
            }
            ServiceName::Triage => {
                let section = tandem_server::config::section(figment, "triage")?;
                Self::Triage(tandem_triage::Triage::open(&url, section).await.with_context(context)?)
            }
            ServiceName::Notifications => {
                let section = tandem_server::config::section(figment, "notifications")?;
                Self::Notifications(
                    tandem_notifications::Notifications::open(&url, section).await.with_context(context)?,
                )
            }
        })
    }

    /// Which service this is.
    pub fn name(&self) -> ServiceName {
        match self {
            Self::Careplans(_) => ServiceName::Careplans,
            Self::Checkins(_) => ServiceName::Checkins,
            Self::Triage(_) => ServiceName::Triage,
            Self::Notifications(_) => ServiceName::Notifications,
        }
    }

    /// Starts the service's relays, consumers and schedulers on `bus`, tied
    /// to its gRPC health.
    pub fn start(&self, bus: &Arc<dyn EventBus>, tasks: &mut Tasks) {
        tasks.set_service(self.name().grpc_name());
        match self {
            Self::Careplans(service) => service.start(bus.clone(), tasks),
            Self::Checkins(service) => service.start(bus.clone(), tasks),
            Self::Triage(service) => service.start(bus.clone(), tasks),
            Self::Notifications(service) => service.start(bus.clone(), tasks),
        }
    }

    /// Adds the service's gRPC API to `server`.
    fn route(&self, server: GrpcServer, verifier: &Arc<Verifier>, streams: &Streams) -> GrpcServer {
        match self {
            Self::Careplans(service) => server.with_service(service.grpc_service(verifier.clone())),
            Self::Checkins(service) => server.with_service(service.grpc_service(verifier.clone())),
            Self::Triage(service) => server.with_service(service.grpc_service(verifier.clone(), streams.clone())),
            Self::Notifications(service) => {
                server.with_service(service.grpc_service(verifier.clone(), streams.clone()))
            }
        }
    }

    /// The service's store.
    pub fn store(&self) -> &tandem_store::Store {
        match self {
            Self::Careplans(service) => service.store(),
            Self::Checkins(service) => service.store(),
            Self::Triage(service) => service.store(),
            Self::Notifications(service) => service.store(),
        }
    }

    /// Closes the store.
    pub async fn close(&self) {
        match self {
            Self::Careplans(service) => service.close().await,
            Self::Checkins(service) => service.close().await,
            Self::Triage(service) => service.close().await,
            Self::Notifications(service) => service.close().await,
        }
    }
}

/// How often the outbox lag is read for the metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// As [`run_with_probes`], with the probe listener (`GET /healthz`,
/// `GET /metrics`) on `settings.health_listen` when it is set.
pub async fn run(
    names: &[ServiceName],
    settings: &Settings,
    figment: &figment::Figment,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let probes = match settings.health_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for /healthz and /metrics; set TANDEM_HEALTH_LISTEN to a free address")
        })?),
        None => None,
    };
    run_with_probes(names, settings, figment, listener, probes, shutdown).await
}

/// Opens `names`, starts their background work and the process's retention
/// on the configured bus, and serves their gRPC APIs (with health and
/// reflection) on `listener`, and `/healthz` and `/metrics` on `probes`,
/// until `shutdown` completes. Then: health NOT_SERVING (`/healthz` 503),
/// the drain delay, open streams ended, in-flight calls finished; then
/// background tasks stopped, the bus flushed and the stores closed.
pub async fn run_with_probes(
    names: &[ServiceName],
    settings: &Settings,
    figment: &figment::Figment,
    listener: TcpListener,
    probes: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Bad keys fail before any store is touched.
    let verifier = settings.verifier()?;
    // The data dir holds the SQLite files, the embedded event log and the
    // development signing key.
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
    let mut services = Vec::with_capacity(names.len());
    for name in names {
        services.push(Service::open(*name, settings, figment).await?);
    }
    let bus = tandem_server::bus::connect(settings).await?;
    let mut tasks = Tasks::new();
    for service in &services {
        service.start(&bus, &mut tasks);
    }
    tasks.set_service("");
    let stores = services.iter().map(|service| service.store().clone()).collect();
    let retention = tandem_events::Retention::new(stores, bus.clone(), settings.retention.into());
    tasks.spawn("retention", retention.run(tasks.stopped()));
    let outboxes = services.iter().map(|service| (service.name(), service.store().clone())).collect();
    tasks.spawn("outbox metrics", sample_outboxes(outboxes, tasks.stopped()));
    // One set of stream bounds for the process: the per-process cap covers
    // watches and inbox streams together.
    let streams = Streams::new(settings.streams.clone());
    let mut server = GrpcServer::new()
        .with_health(tasks.health().clone())
        .drain_delay(settings.shutdown_drain)
        .streams(streams.clone());
    for service in &services {
        server = service.route(server, &verifier, &streams);
    }
    let (probes_stop, probes_stopped) = tokio::sync::oneshot::channel::<()>();
    let probes = probes.map(|probes| {
        if let Ok(addr) = probes.local_addr() {
            tracing::info!(%addr, "serving /healthz and /metrics");
        }
        let health = tasks.health().clone();
        tokio::spawn(tandem_server::probes::serve(probes, health, async move {
            let _ = probes_stopped.await;
        }))
    });
    let served = server.serve(listener, shutdown).await;
    // Probes answered 503 through the drain; they end with gRPC.
    let _ = probes_stop.send(());
    if let Some(Ok(Err(error))) = match probes {
        Some(probes) => Some(probes.await),
        None => None,
    } {
        tracing::warn!(%error, "the /healthz and /metrics listener failed");
    }
    // gRPC has drained: stop relays, consumers and schedulers (notifications
    // lets deliveries in flight finish and be recorded; what is left stays
    // queued, in the outboxes and in the log for the next start).
    for (task, error) in tasks.shutdown().await {
        tracing::error!(task, %error, "background task ended with an error");
    }
    if let Err(error) = bus.flush(BUS_FLUSH).await {
        tracing::warn!(%error, "event bus did not flush; unsent events stay in the outboxes");
    }
    for service in &services {
        service.close().await;
    }
    served.context("serving gRPC")
}

/// Records the outbox lag of every service (unsent rows, age of the oldest)
/// until `stop` completes. A failed read is logged and tried again later:
/// metrics never take health down.
async fn sample_outboxes(
    outboxes: Vec<(ServiceName, tandem_store::Store)>,
    stop: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    loop {
        let now = tandem_store::unix_micros(std::time::SystemTime::now());
        for (name, store) in &outboxes {
            match tandem_events::Outbox::unsent(store).await {
                Ok((unsent, oldest)) => {
                    let age = oldest.map(|at| now.saturating_sub(at) as f64 / 1e6).unwrap_or(0.0);
                    tandem_telemetry::metrics::outbox(name.as_str(), unsent, age);
                }
                Err(error) => tracing::debug!(service = name.as_str(), %error, "cannot read the outbox lag"),
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}
