//! `tandem bench`: measured, never asserted.
//!
//! - `alerts`: alert latency, from a crisis check-in accepted to the signed
//!   webhook received by the care team's endpoint, p50 and p99.
//! - `events`: event-spine throughput (outbox relay, consumer) on the bus.

mod hops;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tandem_auth::Role;
use tandem_proto::checkins::v1 as checkins;
use tandem_server::Settings;

pub use self::hops::Breakdown;
use crate::scenario::{Running, authed, enroll_with_team, register_webhook};
use crate::webhook::Receiver;

/// Where the alert benchmark runs.
#[derive(Debug, Clone)]
pub struct AlertBench {
    /// Crisis check-ins, one per patient, sent one after another.
    pub alerts: usize,
    /// `TANDEM_DATABASE_URL` (empty for SQLite in a temporary directory).
    pub database_url: String,
    /// `TANDEM_EVENTS` (`embedded` or `kafka://...`).
    pub events: String,
    /// WatchWorklist streams kept open (and read) during the run, as
    /// clinicians' consoles would: five per supervisor, the per-caller cap.
    pub watchers: usize,
}

/// Latencies of one run, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Alerts measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Where the time went, hop by hop.
    pub breakdown: Breakdown,
}

/// The hops of [`Breakdown::hops`], in path order.
pub const HOPS: [&str; 5] = hops::HOPS;

/// The `q` quantile (0..=1) of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

/// Runs the alert-latency benchmark.
pub async fn alerts(config: &AlertBench) -> anyhow::Result<Latencies> {
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().to_path_buf(),
        database_url: config.database_url.clone(),
        events: config.events.clone(),
        ..Settings::default()
    };
    let running = Running::start(settings.clone(), &[]).await?;
    let mut clients = running.clients.clone();
    let org = "bench-clinic";
    let ehr = running.token(org, Role::Integration, "ehr")?;
    let clinician = running.token(org, Role::Clinician, "dr-bench")?;
    let receiver = Receiver::start().await?;
    register_webhook(&mut clients, &clinician, "", &receiver, "/dr-bench").await?;
    let mut patients = Vec::with_capacity(config.alerts);
    for n in 0..config.alerts {
        let id =
            enroll_with_team(&mut clients, &ehr, &format!("bench-{n}"), "Bench Patient", &[("dr-bench", "Dr. Bench")])
                .await?;
        patients.push(id);
    }
    // Events of different topics arrive in any order: wait until triage knows
    // every care team (a clinician may read a patient's rules only then), or
    // an alert goes to the crisis contact, as it must when the chain is unknown.
    for patient in &patients {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let request = tandem_proto::triage::v1::GetTriageConfigRequest { patient_id: Some(patient.clone()) };
            if clients.triage.get_triage_config(authed(&clinician, request)?).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("triage never learned the care team of {}", patient.value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut watching = tokio::task::JoinSet::new();
    for n in 0..config.watchers {
        let supervisor = running.token(org, Role::Supervisor, &format!("sup-{}", n / 5))?;
        let request = tandem_proto::triage::v1::WatchWorklistRequest {};
        let mut stream = clients.triage.watch_worklist(authed(&supervisor, request)?).await?.into_inner();
        watching.spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    }
    // Warm-up: the first alert is not counted.
    let mut latencies = Vec::with_capacity(config.alerts);
    let mut marks = Vec::with_capacity(config.alerts);
    for (n, patient) in patients.iter().enumerate() {
        let token = running.token(org, Role::Patient, &patient.value)?;
        let started = Instant::now();
        let submitted = SystemTime::now();
        clients
            .checkins
            .submit_check_in(authed(
                &token,
                checkins::SubmitCheckInRequest {
                    idempotency_key: format!("bench-{n}"),
                    patient_id: Some(patient.clone()),
                    instruments: vec![checkins::InstrumentResponse {
                        instrument: "44249-1".into(),
                        answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 2],
                    }],
                    ..Default::default()
                },
            )?)
            .await?;
        let value = patient.value.clone();
        let arrived = receiver
            .wait_for(Duration::from_secs(120), move |r| {
                r.kind() == "escalation.notify" && r.json["data"]["patient_id"].as_str() == Some(value.as_str())
            })
            .await
            .with_context(|| format!("alert {n} never arrived"))?;
        let took = arrived.at.saturating_duration_since(started);
        if n > 0 {
            latencies.push(took.as_secs_f64() * 1e3);
            marks.push(hops::Marks {
                patient: patient.value.clone(),
                submitted: hops::micros(submitted),
                arrived: hops::micros(submitted + took),
            });
        }
    }
    watching.abort_all();
    running.stop().await?;
    if latencies.is_empty() {
        bail!("run at least 2 alerts: the first one only warms up");
    }
    let breakdown = hops::read(&settings, &marks).await?;
    latencies.sort_by(f64::total_cmp);
    Ok(Latencies {
        count: latencies.len(),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        breakdown,
    })
}
