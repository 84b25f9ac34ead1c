//! What every Tandem gRPC server shares: configuration, authentication,
//! health, reflection, request tracing, graceful shutdown and the one
//! mapping from errors to statuses ([`ServiceError`]). Services plug their
//! tonic services in; they never import each other.

pub mod bus;
pub mod config;
pub mod error;
pub mod health;
pub mod idempotency;
pub mod probes;
pub mod status;
pub mod streams;
pub mod tasks;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

pub use config::{AuthSettings, Settings};
pub use error::ServiceError;
pub use health::Health;
pub use streams::{StreamLease, StreamSettings, Streams};
pub use tasks::Tasks;

/// How long calls still running when the drain ends may take before the
/// server stops anyway: shutdown has a bound even with a stuck call.
pub const CALL_GRACE: Duration = Duration::from_secs(10);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Serving failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A set of gRPC services about to be served on one listener.
#[derive(Debug)]
pub struct GrpcServer {
    routes: Routes,
    names: Vec<&'static str>,
    drain_delay: Duration,
    call_grace: Duration,
    streams: Streams,
    health: Option<Health>,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    /// An empty server.
    pub fn new() -> Self {
        Self {
            routes: Routes::default(),
            names: Vec::new(),
            drain_delay: Duration::ZERO,
            call_grace: CALL_GRACE,
            streams: Streams::default(),
            health: None,
        }
    }

    /// Serves `health` (the one the background [`Tasks`] report to), so a
    /// task that dies turns its service NOT_SERVING; without it the server
    /// has a health of its own that only shutdown changes.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Adds a service; health checks know it by its fully qualified name.
    pub fn with_service<S>(mut self, service: S) -> Self
    where
        S: tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// How long to keep serving after health turns NOT_SERVING, so load
    /// balancers stop sending before in-flight calls drain.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// How long calls still running after the drain may take (default
    /// [`CALL_GRACE`]).
    pub fn call_grace(mut self, grace: Duration) -> Self {
        self.call_grace = grace;
        self
    }

    /// The streams the services of this server open: they are ended when
    /// the drain delay has passed, so shutdown never waits on a watch.
    pub fn streams(mut self, streams: Streams) -> Self {
        self.streams = streams;
        self
    }

    /// Serves until `shutdown` completes: then health says NOT_SERVING, the
    /// drain delay passes, open streams end (UNAVAILABLE: reconnect), new
    /// calls are refused and in-flight calls finish, for at most the call
    /// grace.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let reporter = self.health.clone().unwrap_or_default();
        for name in &self.names {
            reporter.add_service(name);
        }
        // Every service answers from the first call on.
        reporter.publish().await;
        let health = reporter.service();

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tandem_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let routes = self.routes.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha);
        let drain_delay = self.drain_delay;
        let streams = self.streams.clone();
        let call_grace = self.call_grace;
        let (drained, drain_ended) = tokio::sync::oneshot::channel::<()>();
        let draining = async move {
            shutdown.await;
            reporter.stopping().await;
            tracing::info!(delay_ms = drain_delay.as_millis() as u64, "shutting down: health is NOT_SERVING, draining");
            tokio::time::sleep(drain_delay).await;
            // Watches never end by themselves: end them, or the server
            // would wait for them until the orchestrator's SIGKILL.
            streams.end_all();
            let _ = drained.send(());
        };
        let serving = tonic::transport::Server::builder()
            .trace_fn(tandem_telemetry::grpc_server_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), draining);
        let grace = async move {
            if drain_ended.await.is_err() {
                // Stopped without a shutdown: nothing to bound.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(call_grace).await;
        };
        tokio::select! {
            served = serving => served?,
            () = grace => {
                tracing::warn!(grace_ms = call_grace.as_millis() as u64, "calls still running after the drain and the grace period; stopping without them");
            }
        }
        tracing::info!("grpc server stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => tracing::info!("received SIGINT"),
                    _ = terminate.recv() => tracing::info!("received SIGTERM"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        tracing::info!("received Ctrl-C");
    }
}
