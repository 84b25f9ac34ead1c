//! The checkins service in a container of its own.

use clap::Parser;

/// Serves tandem.checkins.v1.CheckInService with health and reflection.
#[derive(Debug, Parser)]
#[command(version, after_help = tandem_server::config::settings_help())]
struct Args {
    /// A TOML config file (also TANDEM_CONFIG).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = tandem_telemetry::init(&tandem_telemetry::TelemetrySettings::from_env("tandem-checkins"))?;
    let settings = tandem_server::Settings::load(args.config.as_deref())?;
    let verifier = settings.verifier()?;
    let figment = tandem_server::Settings::figment(args.config.as_deref())?;
    let checkins_settings = tandem_checkins::config::CheckInsSettings::load(&figment)?;
    let service = tandem_checkins::CheckIns::open(&settings.database_url_for("checkins")?, checkins_settings).await?;
    let bus = tandem_server::bus::connect(&settings).await?;
    let mut tasks = tandem_server::Tasks::new();
    tasks.set_service(tandem_checkins::SERVICE_NAME);
    service.start(bus.clone(), &mut tasks);
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "checkins serving");
    tandem_server::GrpcServer::new()
        .with_health(tasks.health().clone())
        .with_service(service.grpc_service(verifier))
        .drain_delay(settings.shutdown_drain)
        .serve(listener, tandem_server::shutdown_signal())
        .await?;
    for (task, error) in tasks.shutdown().await {
        tracing::error!(task, %error, "background task ended with an error");
    }
    if let Err(error) = bus.flush(std::time::Duration::from_secs(10)).await {
        tracing::warn!(%error, "event bus did not flush; unsent events stay in the outbox");
    }
    service.close().await;
    telemetry.shutdown();
    Ok(())
}
