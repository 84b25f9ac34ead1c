//! `tandem`: run Tandem on embedded defaults, and the tools around it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use tandem_auth::Role;
use tandem_proto::ids::OrgId;
use tandem_server::Settings;

/// Tandem: the backbone of hybrid mental-health care.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs all four services in one process on one gRPC port, on SQLite
    /// files in the data dir (or PostgreSQL with TANDEM_DATABASE_URL).
    #[command(after_help = tandem_server::config::settings_help())]
    Up(UpArgs),
    /// Mints a development token signed with the key `tandem up` uses, and
    /// prints it on stdout.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct CommonArgs {
    /// A TOML config file (also TANDEM_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides TANDEM_DATA_DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Overrides TANDEM_LISTEN; port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// patient, clinician, supervisor, integration or admin.
    #[arg(long)]
    role: Role,
    /// The organisation slug, e.g. demo-clinic.
    #[arg(long)]
    org: OrgId,
    /// The subject: a patient id for patients, a clinician or client id otherwise.
    #[arg(long)]
    sub: String,
    /// How long the token is valid, e.g. 15m, 8h.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

fn load_settings(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<Settings> {
    load_figment(common, listen)?
        .extract()
        .context("invalid configuration")
}

fn load_figment(
    common: &CommonArgs,
    listen: Option<SocketAddr>,
) -> anyhow::Result<figment::Figment> {
    let mut figment = Settings::figment(common.config.as_deref())?;
    if let Some(data_dir) = &common.data_dir {
        figment = figment.merge(Serialized::default("data_dir", data_dir));
    }
    if let Some(listen) = listen {
        figment = figment.merge(Serialized::default("listen", listen));
    }
    Ok(figment)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Token(args) => token(args),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let telemetry =
        tandem_telemetry::init(&tandem_telemetry::TelemetrySettings::from_env("tandem"))?;
    let figment = load_figment(&args.common, args.listen)?;
    let settings: Settings = figment.extract().context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another tandem running? try --listen 127.0.0.1:0",
                settings.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let store = if settings.database_url.is_empty() {
        format!("sqlite files in {}", settings.data_dir.display())
    } else {
        "postgresql".to_owned()
    };
    // Printed on stdout, for people and for scripts that wait for it.
    println!("tandem listening on {addr} ({store})");
    println!("  try: grpcurl -plaintext {addr} list");
    let served = tandem_cli::up::serve(
        &settings,
        &figment,
        listener,
        tandem_server::shutdown_signal(),
    )
    .await;
    telemetry.shutdown();
    served
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let settings = load_settings(&args.common, None)?;
    if settings.auth.jwks_file.is_some() {
        bail!(
            "tandem token mints development tokens only; with TANDEM_AUTH__JWKS_FILE set, get tokens from your identity provider"
        );
    }
    let secret = match &settings.auth.hs256_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => tandem_auth::DevSigningKey::load_or_create(&settings.data_dir)?
            .bytes()
            .to_vec(),
    };
    if args.sub.trim().is_empty() {
        bail!("--sub must not be empty");
    }
    if args.role == Role::Patient && args.sub.parse::<tandem_proto::ids::PatientId>().is_err() {
        bail!("a patient token's --sub must be the patient's id (a UUID from EnrollPatient)");
    }
    let token = tandem_auth::mint_token(
        &secret,
        &settings.auth.issuer,
        &settings.auth.audience,
        &args.org,
        args.role,
        &args.sub,
        args.ttl,
    )?;
    println!("{token}");
    Ok(())
}
