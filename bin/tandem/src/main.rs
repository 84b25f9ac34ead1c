//! `tandem`: run Tandem on embedded defaults, and the tools around it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use tandem_auth::Role;
use tandem_cli::serve::ServiceName;
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
    /// Runs one service in this process: careplans, checkins, triage or
    /// notifications, one container each in a distributed deployment.
    ///
    /// The service's gRPC API with health and reflection, its relays,
    /// consumers and schedulers, and retention of its inbox, on PostgreSQL
    /// (TANDEM_DATABASE_URL) and Kafka (TANDEM_EVENTS), or on a SQLite file
    /// and the embedded log in the data dir. On SIGTERM or SIGINT it drains
    /// like `tandem up`: health NOT_SERVING, TANDEM_SHUTDOWN_DRAIN, open
    /// streams ended, in-flight calls finished, background work stopped,
    /// unsent events flushed.
    #[command(after_help = serve_help())]
    Serve(ServeArgs),
    /// Mints a development token signed with the key `tandem up` uses, and
    /// prints it on stdout.
    Token(TokenArgs),
    /// Plays a clinic's weeks through the public API, embedded in a
    /// temporary directory: a plan, check-ins, a crisis, the alert climbing
    /// the care team until a clinician acknowledges. Exits 0 only if a human
    /// acknowledged.
    Demo,
    /// Benchmarks, reported and never asserted: alert latency, and the event
    /// spine's relay and consumer throughput.
    Bench(BenchArgs),
    /// Reads texts from stdin (one per line, or JSON lines with a `text`
    /// field) and writes one JSON line per text with its crisis-language
    /// level and evidence spans, for reviewing the vocabulary and
    /// backtesting a change on past texts.
    Detect(DetectArgs),
}

#[derive(Debug, clap::Args)]
struct DetectArgs {
    /// Prints only texts at or above this level: none, low, moderate, high or imminent.
    #[arg(long, value_name = "LEVEL")]
    min_level: Option<tandem_clinical::TextRiskLevel>,
    /// Also prints the matches that did not count (negated, reported, idiom, ...) and why.
    #[arg(long)]
    explain: bool,
    /// Uses this vocabulary file instead of the built-in one, to backtest an edit of
    /// crates/clinical/data/crisis_vocabulary.toml without rebuilding.
    #[arg(long, value_name = "FILE")]
    vocabulary: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Alert latency: crisis check-in accepted → signed webhook received, p50 and p99.
    Alerts {
        /// Crisis check-ins to time (the first only warms up).
        #[arg(long, default_value_t = 50)]
        alerts: usize,
        /// PostgreSQL URL; empty runs on SQLite in a temporary directory.
        #[arg(long, default_value = "")]
        database_url: String,
        /// Event bus: `embedded` or kafka://host:port.
        #[arg(long, default_value = "embedded")]
        events: String,
        /// WatchWorklist streams kept open during the run (five per supervisor).
        #[arg(long, default_value_t = 0)]
        watchers: usize,
    },
    /// Event spine: outbox relay (outbox → bus) and consumer (inbox +
    /// handler) throughput in events per second.
    Events {
        /// Events to publish and consume.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Event bus: `embedded` or kafka://host:port.
        #[arg(long, default_value = "embedded")]
        bus: String,
    },
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
struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    service: ServiceName,
    #[command(flatten)]
    common: CommonArgs,
    /// Overrides TANDEM_LISTEN; port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// `tandem serve --help`: the settings every service reads, then the sections of its own.
fn serve_help() -> String {
    let mut help = tandem_server::config::settings_help();
    help.push_str(
        "\nEach service also reads a section of its own (file [checkins], environment TANDEM_CHECKINS__..., \
         and so on; the README lists the keys):\n  \
         checkins       crisis resources shown to patients; also triage.crisis_contact\n  \
         triage         acknowledgement deadlines, deterioration and disengagement rules, crisis_contact\n  \
         notifications  SMTP, SMS provider, alert retries, reminders and quiet hours, retention\n",
    );
    help
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
    load_figment(common, listen)?.extract().context("invalid configuration")
}

fn load_figment(common: &CommonArgs, listen: Option<SocketAddr>) -> anyhow::Result<figment::Figment> {
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
        Command::Serve(args) => serve(args).await,
        Command::Token(args) => token(args),
        Command::Demo => demo().await,
        Command::Bench(args) => bench(args).await,
        Command::Detect(args) => detect(args),
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut settings = tandem_telemetry::TelemetrySettings::from_env("tandem-bench");
    if std::env::var_os("TANDEM_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
        settings.filter = "error".to_owned();
    }
    let telemetry = tandem_telemetry::init(&settings)?;
    let result = match args.what {
        BenchWhat::Alerts { alerts, database_url, events, watchers } => {
            bench_alerts(alerts, database_url, events, watchers).await
        }
        BenchWhat::Events { count, bus } => bench_events(count, &bus).await,
    };
    telemetry.shutdown();
    result
}

async fn bench_alerts(alerts: usize, database_url: String, events: String, watchers: usize) -> anyhow::Result<()> {
    let config = tandem_cli::bench::AlertBench { alerts, database_url, events, watchers };
    let latencies = tandem_cli::bench::alerts(&config).await?;
    if watchers > 0 {
        println!("with {watchers} open WatchWorklist streams");
    }
    let store = if config.database_url.is_empty() { "sqlite" } else { "postgresql" };
    println!("| store | events | alerts timed | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {store} | {} | {} | {:.1} | {:.1} | {:.1} |",
        config.events.split('?').next().unwrap_or_default(),
        latencies.count,
        latencies.p50_ms,
        latencies.p99_ms,
        latencies.max_ms
    );
    let breakdown = &latencies.breakdown;
    let named = tandem_cli::bench::HOPS.iter().map(|name| (*name).to_owned()).zip(&breakdown.hops);
    let extra = breakdown.appends.iter().map(|(name, values)| (format!("(embedded log) {name}"), values));
    println!();
    println!("| hop | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, values) in named.chain(extra) {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let quantile = |q| tandem_cli::bench::percentile(&sorted, q);
        println!("| {name} | {:.1} | {:.1} | {:.1} |", quantile(0.5), quantile(0.99), quantile(1.0));
    }
    Ok(())
}

async fn bench_events(count: usize, bus: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config: tandem_events::BusConfig = bus.parse()?;
    let bus = tandem_events::connect(&config, dir.path()).await?;
    let bench =
        tandem_events::bench::BenchConfig { events: count, ..tandem_events::bench::BenchConfig::new(dir.path()) };
    let report = tandem_events::bench::run(bus, &bench).await?;
    println!("| backend | events | enqueue events/s | relay events/s | consumer events/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} |",
        report.backend, report.events, report.enqueue_per_sec, report.relay_per_sec, report.consume_per_sec
    );
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    // Logs stay quiet unless asked for: the demo prints its own timeline.
    let mut settings = tandem_telemetry::TelemetrySettings::from_env("tandem-demo");
    if std::env::var_os("TANDEM_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
        settings.filter = "error".to_owned();
    }
    let telemetry = tandem_telemetry::init(&settings)?;
    let acknowledged = tandem_cli::demo::run().await;
    telemetry.shutdown();
    match acknowledged? {
        true => {
            println!("\ndemo ok: a human acknowledged the alert");
            Ok(())
        }
        false => anyhow::bail!("demo failed: nobody acknowledged the alert"),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let telemetry = tandem_telemetry::init(&tandem_telemetry::TelemetrySettings::from_env("tandem"))?;
    let figment = load_figment(&args.common, args.listen)?;
    let settings: Settings = figment.extract().context("invalid configuration")?;
    let listener = bind(&settings).await?;
    let addr = listener.local_addr()?;
    // Printed on stdout, for people and for scripts that wait for it.
    println!("tandem listening on {addr} ({})", store(&settings, &tandem_cli::up::SERVICES));
    println!("  try: grpcurl -plaintext {addr} list");
    let served = tandem_cli::up::serve(&settings, &figment, listener, tandem_server::shutdown_signal()).await;
    telemetry.shutdown();
    served
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let service = args.service;
    let telemetry =
        tandem_telemetry::init(&tandem_telemetry::TelemetrySettings::from_env(&format!("tandem-{service}")))?;
    let figment = load_figment(&args.common, args.listen)?;
    let settings: Settings = figment.extract().context("invalid configuration")?;
    let listener = bind(&settings).await?;
    let addr = listener.local_addr()?;
    println!("tandem serve {service} listening on {addr} ({})", store(&settings, &[service]));
    // Also logged: in a container, the logs are what people read.
    tracing::info!(service = service.as_str(), %addr, "serving");
    let served =
        tandem_cli::serve::run(&[service], &settings, &figment, listener, tandem_server::shutdown_signal()).await;
    telemetry.shutdown();
    served
}

async fn bind(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(settings.listen).await.with_context(|| {
        format!("cannot listen on {}; is another tandem running? try --listen 127.0.0.1:0", settings.listen)
    })
}

/// Where `services` keep their data, as people read it.
fn store(settings: &Settings, services: &[ServiceName]) -> String {
    let url = |service: &ServiceName| settings.database_url_for(service.as_str()).unwrap_or_default();
    if services.iter().any(|service| url(service).starts_with("postgres")) {
        "postgresql".to_owned()
    } else {
        format!("sqlite files in {}", settings.data_dir.display())
    }
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
        None => tandem_auth::DevSigningKey::load_or_create(&settings.data_dir)?.bytes().to_vec(),
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

/// One output line of `tandem detect`.
#[derive(serde::Serialize)]
struct DetectedLine<'a> {
    /// 1-based line number in the input, so results can be joined back to it.
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    level: &'static str,
    findings: Vec<DetectedSpan<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    suppressed: Option<Vec<DetectedSpan<'a>>>,
}

#[derive(serde::Serialize)]
struct DetectedSpan<'a> {
    category: &'static str,
    level: &'static str,
    start: usize,
    end: usize,
    matched: &'a str,
    rule: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    qualifier: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idiom: Option<&'a str>,
}

/// The text of a `tandem detect` input line, and its `id` when it is a JSON object with a
/// string `text`; any other line is the text itself.
fn detect_input(line: &str) -> (Option<serde_json::Value>, std::borrow::Cow<'_, str>) {
    if line.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line)
        && let Some(serde_json::Value::String(text)) = object.remove("text")
    {
        return (object.remove("id"), text.into());
    }
    (None, line.into())
}

fn detect(args: DetectArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    use tandem_clinical::{TextRiskLevel, Vocabulary};

    let invalid = |errors: &tandem_clinical::ValidationErrors| {
        errors.violations().iter().map(|v| format!("\n  {}: {}", v.field, v.description)).collect::<String>()
    };
    let loaded;
    let vocabulary = match &args.vocabulary {
        Some(path) => {
            let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            loaded = Vocabulary::parse(&source).map_err(|errors| {
                anyhow::anyhow!("{} is not a valid vocabulary:{}", path.display(), invalid(&errors))
            })?;
            // Broken examples are warnings, not errors: the point of a backtest is to see an
            // edit's effect, and an example it breaks is part of that effect.
            for failure in loaded.check_examples() {
                eprintln!("tandem detect: warning: {failure}");
            }
            &loaded
        }
        None => Vocabulary::builtin()
            .map_err(|errors| anyhow::anyhow!("the built-in vocabulary is invalid:{}", invalid(errors)))?,
    };
    let min_level = args.min_level.unwrap_or_default();
    let mut input = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut counts: std::collections::BTreeMap<TextRiskLevel, usize> = std::collections::BTreeMap::new();
    let mut raw = Vec::new();
    let mut line_number = 0;
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        line_number += 1;
        // Invalid UTF-8 is replaced, not fatal: one bad byte must not stop a backtest.
        let decoded = String::from_utf8_lossy(&raw);
        let line = decoded.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let (id, text) = detect_input(line);
        let detection = vocabulary.detect(&text);
        *counts.entry(detection.level).or_default() += 1;
        if detection.level < min_level {
            continue;
        }
        let cue = |span: &Option<std::ops::Range<usize>>| span.clone().and_then(|span| text.get(span));
        let output = DetectedLine {
            line: line_number,
            id,
            level: detection.level.as_str(),
            findings: detection
                .findings
                .iter()
                .map(|finding| DetectedSpan {
                    category: finding.category.as_str(),
                    level: finding.level.as_str(),
                    start: finding.span.start,
                    end: finding.span.end,
                    matched: &finding.matched,
                    rule: &finding.rule,
                    qualifier: Some(finding.qualifier.as_str()),
                    reason: None,
                    cue: None,
                    idiom: None,
                })
                .collect(),
            suppressed: args.explain.then(|| {
                detection
                    .suppressed
                    .iter()
                    .map(|item| DetectedSpan {
                        category: item.category.as_str(),
                        level: item.vocabulary_level.as_str(),
                        start: item.span.start,
                        end: item.span.end,
                        matched: &item.matched,
                        rule: &item.rule,
                        qualifier: None,
                        reason: Some(item.reason.as_str()),
                        cue: cue(&item.cue),
                        idiom: item.idiom.as_deref(),
                    })
                    .collect()
            }),
        };
        let written =
            serde_json::to_writer(&mut out, &output).map_err(std::io::Error::from).and_then(|()| writeln!(out));
        match written {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    match out.flush() {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    let summary: Vec<String> = counts.iter().map(|(level, count)| format!("{level} {count}")).collect();
    eprintln!(
        "tandem detect: {} texts ({}); vocabulary {}",
        counts.values().sum::<usize>(),
        summary.join(", "),
        vocabulary.revision()
    );
    Ok(())
}
