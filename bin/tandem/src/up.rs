//! `tandem up`: all four services in one process, on one port.

use std::future::Future;

use tandem_server::Settings;
use tokio::net::TcpListener;

use crate::serve::ServiceName;

/// The services `tandem up` runs, in the order their background work starts.
pub const SERVICES: [ServiceName; 4] =
    [ServiceName::Careplans, ServiceName::Checkins, ServiceName::Notifications, ServiceName::Triage];

/// Serves all four services on `listener` until `shutdown` completes, then
/// drains and closes the stores.
pub async fn serve(
    settings: &Settings,
    figment: &figment::Figment,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::serve::run(&SERVICES, settings, figment, listener, shutdown).await
}

/// As [`serve`], with `/healthz` and `/metrics` on `probes`.
pub async fn serve_with_probes(
    settings: &Settings,
    figment: &figment::Figment,
    listener: TcpListener,
    probes: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::serve::run_with_probes(&SERVICES, settings, figment, listener, probes, shutdown).await
}
