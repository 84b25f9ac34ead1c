//! Where an alert's time goes, hop by hop, read after the run from the
//! timestamps the path writes anyway (outbox and inbox rows, the embedded
//! log), so measuring adds nothing to the path itself.

use std::time::SystemTime;

use anyhow::Context;
use tandem_proto::events::v1::EscalationChange;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_server::Settings;
use tandem_store::sqlx::Row;
use tandem_store::{Store, StoreOptions, sqlx};

/// One alert's wall-clock marks, in Unix microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Marks {
    /// The patient's id.
    pub patient: String,
    /// `SubmitCheckIn` sent.
    pub submitted: i64,
    /// The webhook received.
    pub arrived: i64,
}

/// The hops, in path order, each named by what it covers.
pub(crate) const HOPS: [&str; 5] = [
    "submit → check-in event written (API, scoring, checkins' transaction)",
    "checkins' commit, relay, bus → triage consumer starts the event",
    "triage assesses, escalates → notify event written",
    "triage's commit, relay, bus → notifications consumer starts the notify event",
    "notifications queues the alert, commits, worker claims, POSTs → webhook received",
];

/// Per-hop durations of every alert that has all its marks, in ms.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    /// `hops[i]` holds one duration per alert.
    pub hops: Vec<Vec<f64>>,
    /// On the embedded log, the relay-and-bus hops split at the append:
    /// event written → append starts (the producer's commit, the relay's
    /// wake-up and read), append starts → consumer starts (the append's
    /// commit, the consumer's wake-up and fetch).
    pub appends: Vec<(String, Vec<f64>)>,
}

async fn open(settings: &Settings, service: &str, migrations: &tandem_store::Migrations) -> anyhow::Result<Store> {
    let url = settings.database_url_for(service)?;
    let options = StoreOptions { max_connections: 1, ..StoreOptions::new(url, service) };
    Store::open(options, migrations).await.with_context(|| format!("reading the {service} store"))
}

async fn optional_i64(store: &Store, sql: &'static str, binds: &[&str]) -> anyhow::Result<Option<i64>> {
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = query.bind((*bind).to_owned());
    }
    let row = query.fetch_optional(store.pool()).await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>, _>(0)?,
        None => None,
    })
}

fn ms(from: i64, to: i64) -> f64 {
    (to - from) as f64 / 1e3
}

/// Reads the marks the path left for each alert. Call after the run.
pub(crate) async fn read(settings: &Settings, alerts: &[Marks]) -> anyhow::Result<Breakdown> {
    let checkins = open(settings, "checkins", &tandem_checkins::MIGRATIONS).await?;
    let triage = open(settings, "triage", &tandem_triage::MIGRATIONS).await?;
    let notifications = open(settings, "notifications", &tandem_notifications::MIGRATIONS).await?;
    let log = if settings.events.trim() == "embedded" {
        let path = settings.data_dir.join("events.db");
        Some(sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await?)
    } else {
        None
    };
    let mut breakdown = Breakdown { hops: vec![Vec::new(); HOPS.len()], ..Breakdown::default() };
    let mut checkins_append = Vec::new();
    let mut triage_append = Vec::new();
    for alert in alerts {
        let patient = alert.patient.as_str();
        let Some(check_in) = sqlx::query(
            "SELECT event_id, created_at FROM outbox WHERE partition_key = $1 \
             AND event_type = 'tandem.events.v1.CheckInSubmitted' ORDER BY seq DESC LIMIT 1",
        )
        .bind(patient.to_owned())
        .fetch_optional(checkins.pool())
        .await?
        else {
            continue;
        };
        let check_in_id: String = check_in.try_get(0)?;
        let check_in_created: i64 = check_in.try_get(1)?;
        let Some(triage_started) = optional_i64(
            &triage,
            "SELECT handled_at FROM inbox WHERE consumer_group = 'triage' AND event_id = $1",
            &[&check_in_id],
        )
        .await?
        else {
            continue;
        };
        // The first "notify" EscalationChanged of the patient's escalation.
        let rows = sqlx::query(
            "SELECT event_id, created_at, payload FROM outbox WHERE partition_key = $1 \
             AND event_type = 'tandem.events.v1.EscalationChanged' ORDER BY seq",
        )
        .bind(patient.to_owned())
        .fetch_all(triage.pool())
        .await?;
        let mut notify = None;
        for row in &rows {
            let payload: Vec<u8> = row.try_get(2)?;
            let is_notify = matches!(
                tandem_events::decode(&payload).ok().and_then(|event| event.payload),
                Some(Payload::EscalationChanged(changed)) if changed.what_changed() == EscalationChange::Notify
            );
            if is_notify {
                notify = Some((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
                break;
            }
        }
        let Some((notify_id, notify_created)) = notify else { continue };
        let Some(notifications_started) = optional_i64(
            &notifications,
            "SELECT handled_at FROM inbox WHERE consumer_group = 'notifications' AND event_id = $1",
            &[&notify_id],
        )
        .await?
        else {
            continue;
        };
        let marks =
            [alert.submitted, check_in_created, triage_started, notify_created, notifications_started, alert.arrived];
        for (hop, pair) in breakdown.hops.iter_mut().zip(marks.windows(2)) {
            hop.push(ms(pair[0], pair[1]));
        }
        if let Some(log) = &log {
            for (id, created, started, into) in [
                (&check_in_id, check_in_created, triage_started, &mut checkins_append),
                (&notify_id, notify_created, notifications_started, &mut triage_append),
            ] {
                let appended: Option<i64> = sqlx::query_scalar("SELECT appended_at FROM log WHERE headers LIKE $1")
                    .bind(format!("%{id}%"))
                    .fetch_optional(log)
                    .await?;
                if let Some(appended) = appended {
                    into.push((ms(created, appended), ms(appended, started)));
                }
            }
        }
    }
    for (name, pairs) in [("check-in", checkins_append), ("notify", triage_append)] {
        if pairs.is_empty() {
            continue;
        }
        let written = format!("{name} event written → log append starts");
        breakdown.appends.push((written, pairs.iter().map(|pair| pair.0).collect()));
        let appended = format!("{name} log append starts → consumer starts");
        breakdown.appends.push((appended, pairs.iter().map(|pair| pair.1).collect()));
    }
    checkins.close().await;
    triage.close().await;
    notifications.close().await;
    Ok(breakdown)
}

/// Unix microseconds of `time`.
pub(crate) fn micros(time: SystemTime) -> i64 {
    tandem_store::unix_micros(time)
}
