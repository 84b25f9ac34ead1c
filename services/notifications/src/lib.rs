//! The notifications service: crisis alerts to clinicians and reminders to
//! patients, over signed webhooks, email, SMS and the in-app inbox.
//!
//! The crisis path: triage's `EscalationChanged { change: "notify" }` becomes
//! one alert per (escalation, attempt) and one queued delivery per verified
//! endpoint of the step's recipient (`handlers.rs`); the delivery worker
//! (`worker.rs`) attempts them with bounded back-off (`retry.rs`) through the
//! channels (`channels.rs`, `signing.rs`), records each outcome with its
//! `NotificationDelivered` event, and reports `NotificationFailed` as soon as
//! every endpoint failed, or at once when there is none, so triage moves the
//! chain on. Reminders (`reminders.rs`) wait out quiet hours (`quiet.rs`);
//! crisis alerts never do. `api.rs` is the gRPC surface, `repo.rs` the SQL.

pub mod api;
pub mod channels;
pub mod config;
pub mod endpoint;
pub mod handlers;
pub mod inbox;
pub mod message;
pub mod quiet;
pub mod reminders;
pub mod repo;
pub mod retry;
pub mod signing;
pub mod worker;

use std::sync::Arc;

use tandem_auth::{AuthInterceptor, Verifier};
use tandem_events::{Consumer, EventBus, Outbox, Relay, topics};
use tandem_proto::notifications::v1::notification_service_server::NotificationServiceServer;
use tandem_server::{Streams, Tasks};
use tandem_store::{Backend, Migrations, Store, StoreError, StoreOptions};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;

pub use config::NotificationsSettings;

/// The gRPC service name, for health checks.
pub const SERVICE_NAME: &str = "tandem.notifications.v1.NotificationService";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "notifications";
/// The consumer group of this service.
pub const CONSUMER_GROUP: &str = "notifications";
/// Connections of the gRPC API's own pool: endpoint calls and inbox streams
/// wait on these, never on the ones the consumer and the worker use.
pub const API_CONNECTIONS: u32 = 8;

/// This service's migrations.
pub static MIGRATIONS: Migrations = tandem_store::migrations!["0001_notifications.sql", "0002_alert_attempts.sql"];

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The event spine.
    #[error(transparent)]
    Events(#[from] tandem_events::Error),
    /// The channel settings.
    #[error(transparent)]
    Channels(#[from] channels::SetupError),
}

/// A running notifications service: its store, outbox, channels and gRPC surface.
#[derive(Debug, Clone)]
pub struct Notifications {
    store: Store,
    api_store: Store,
    outbox: Outbox,
    settings: Arc<NotificationsSettings>,
    channels: Arc<channels::Channels>,
    wake: Arc<Notify>,
    inbox: inbox::InboxHub,
    // Bounds the streams of `api()`; the server's are passed to `grpc_service`.
    streams: Streams,
}

impl Notifications {
    /// Opens (and migrates) the service's database and its outbox, and sets
    /// up the channels the settings configure.
    pub async fn open(database_url: &str, settings: NotificationsSettings) -> Result<Self, StartError> {
        let channels = Arc::new(channels::Channels::new(&settings)?);
        let store = Store::open(StoreOptions::new(database_url, SCHEMA), &MIGRATIONS).await?;
        tandem_events::install(&store).await?;
        let outbox = Outbox::new(store.clone(), "notifications");
        let api_store = store.separate_pool(API_CONNECTIONS).await?;
        let inbox = inbox::InboxHub::new(&store);
        Ok(Self {
            store,
            api_store,
            outbox,
            settings: Arc::new(settings),
            channels,
            wake: Arc::new(Notify::new()),
            inbox,
            streams: Streams::default(),
        })
    }

    /// Starts the outbox relay, the consumer of triage, careplans and
    /// checkins events, the delivery worker and the reminder scheduler.
    pub fn start(&self, bus: Arc<dyn EventBus>, tasks: &mut Tasks) {
        let relay = Relay::new(&self.outbox, bus.clone());
        tasks.spawn("notifications relay", relay.run(tasks.stopped()));
        let consumer = Consumer::new(
            bus,
            CONSUMER_GROUP,
            &[topics::TRIAGE, topics::CAREPLANS, topics::CHECKINS],
            self.store.clone(),
            Arc::new(self.handler()),
        )
        .with_alarm(Arc::new(handlers::DeadLetterAnnouncer::new(self.repo(), self.outbox.clone())));
        tasks.spawn("notifications consumer", consumer.run(tasks.stopped()));
        tasks.spawn("notifications delivery worker", self.worker().run(tasks.stopped()));
        if self.settings.reminders.enabled {
            tasks.spawn("notifications reminder scheduler", self.scheduler().run(tasks.stopped()));
        }
        tasks.spawn("notifications retention", retention(self.repo(), self.settings.clone(), tasks.stopped()));
        if self.store.backend() == Backend::Postgres {
            // Inbox rows written by other replicas wake this one's streams.
            tasks.spawn("notifications inbox listener", self.inbox.feed().clone().listen(tasks.stopped()));
        }
    }

    /// The event handler the consumer runs.
    pub fn handler(&self) -> handlers::EventHandler {
        handlers::EventHandler::new(self.repo(), self.outbox.clone(), self.wake.clone())
    }

    /// The delivery worker.
    pub fn worker(&self) -> worker::Worker {
        worker::Worker::new(
            self.repo(),
            self.outbox.clone(),
            self.channels.clone(),
            self.settings.clone(),
            self.wake.clone(),
            self.inbox.clone(),
        )
    }

    /// The reminder scheduler.
    pub fn scheduler(&self) -> reminders::Scheduler {
        reminders::Scheduler::new(self.repo(), self.settings.clone(), self.wake.clone())
    }

    /// The repository (on the pool of the consumer, worker and relay).
    pub fn repo(&self) -> repo::Repo {
        repo::Repo::new(self.store.clone())
    }

    /// The service's store (the pool of its consumer, worker and relay).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The service's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The gRPC service without authentication, for tests that place a
    /// [`tandem_auth::Caller`] in the request themselves.
    pub fn api(&self) -> api::Api {
        self.api_with(self.streams.clone())
    }

    /// The gRPC service on the API's own pool, its streams bounded by `streams`.
    fn api_with(&self, streams: Streams) -> api::Api {
        api::Api::new(
            repo::Repo::new(self.api_store.clone()),
            self.outbox.clone(),
            self.channels.clone(),
            self.settings.clone(),
            self.wake.clone(),
            self.inbox.clone(),
            streams,
        )
    }

    /// The authenticated gRPC service; `streams` bounds its inbox streams
    /// and ends them on shutdown (pass the server's).
    pub fn grpc_service(
        &self,
        verifier: Arc<Verifier>,
        streams: Streams,
    ) -> InterceptedService<NotificationServiceServer<api::Api>, AuthInterceptor> {
        NotificationServiceServer::with_interceptor(self.api_with(streams), AuthInterceptor::new(verifier))
    }

    /// Stops using the database.
    pub async fn close(&self) {
        self.api_store.close().await;
        self.store.close().await;
    }
}

/// Removes finished deliveries and old in-app messages on a timer
/// (`notifications.retention`); a failed pass is tried again next time.
async fn retention(
    repo: repo::Repo,
    settings: Arc<NotificationsSettings>,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), repo::RepoError> {
    tokio::pin!(stop);
    loop {
        let now = repo::now_micros();
        let age = |kept: std::time::Duration| now.saturating_sub(i64::try_from(kept.as_micros()).unwrap_or(i64::MAX));
        let retention = &settings.retention;
        match repo.prune(age(retention.deliveries), age(retention.in_app)).await {
            Ok((0, 0)) => {}
            Ok((deliveries, in_app)) => tracing::info!(deliveries, in_app, "notifications retention pass"),
            Err(error) => tracing::warn!(%error, "notifications retention pass failed; trying again next pass"),
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(retention.every) => {}
        }
    }
}

tandem_store::migrations_listed_test!(MIGRATIONS);
