//! Metrics: one OpenTelemetry meter provider per process, exported over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (every
//! `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by default) and always readable in
//! the Prometheus text format for the scrape endpoint (`GET /metrics`).
//!
//! Labels are low-cardinality only: an org id at most, never a patient id
//! or anything a patient wrote. The README's "Metrics" section lists every
//! instrument; the names are the constants below and, for the event spine,
//! those in `tandem-events`.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::Encoder as _;

use crate::{TelemetryError, TelemetrySettings};

/// `tandem.checkins.accepted`: check-ins stored, by org and `crisis`.
pub const CHECKINS_ACCEPTED: &str = "tandem.checkins.accepted";
/// `tandem.triage.assessments`: risk assessments written, by org and level.
pub const ASSESSMENTS: &str = "tandem.triage.assessments";
/// `tandem.triage.escalations.open`: escalations not resolved, by level and state.
pub const ESCALATIONS_OPEN: &str = "tandem.triage.escalations.open";
/// `tandem.triage.escalations.oldest_age`: age of the oldest of them, seconds.
pub const ESCALATIONS_OLDEST_AGE: &str = "tandem.triage.escalations.oldest_age";
/// `tandem.triage.escalations.time_to_acknowledge`: raised to acknowledged, seconds.
pub const TIME_TO_ACKNOWLEDGE: &str = "tandem.triage.escalations.time_to_acknowledge";
/// `tandem.notifications.deliveries`: delivery attempts by channel, purpose and outcome.
pub const DELIVERIES: &str = "tandem.notifications.deliveries";
/// `tandem.events.outbox.pending`: outbox rows not yet published, per service.
pub const OUTBOX_PENDING: &str = "tandem.events.outbox.pending";
/// `tandem.events.outbox.oldest_age`: age of the oldest unpublished row, seconds.
pub const OUTBOX_OLDEST_AGE: &str = "tandem.events.outbox.oldest_age";

/// Bucket bounds of the time to acknowledge, in seconds: the acknowledgement
/// windows are minutes to hours, so the default millisecond-shaped buckets
/// would put every alert in the last one.
const ACK_BUCKETS: [f64; 13] =
    [15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0];

/// The process's metrics pipeline.
struct Pipeline {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

/// Builds the process's meter provider (Prometheus reader, plus OTLP when
/// an endpoint is set) and makes it the global one, once per process; later
/// calls return the provider the first one built. Call before any metric is
/// recorded: instruments created earlier record nothing.
pub fn install(settings: &TelemetrySettings) -> Result<SdkMeterProvider, TelemetryError> {
    if let Some(pipeline) = PIPELINE.get() {
        return Ok(pipeline.provider.clone());
    }
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        // Scope labels on every series would only add noise to dashboards.
        .scope_info_enabled(false)
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
    let mut builder = SdkMeterProvider::builder().with_resource(resource).with_reader(prometheus);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        builder = builder.with_periodic_exporter(exporter);
    }
    let pipeline = PIPELINE.get_or_init(|| Pipeline { provider: builder.build(), registry });
    opentelemetry::global::set_meter_provider(pipeline.provider.clone());
    Ok(pipeline.provider.clone())
}

/// Every metric of this process in the Prometheus text exposition format
/// (empty before [`install`]).
pub fn prometheus_text() -> String {
    let Some(pipeline) = PIPELINE.get() else { return String::new() };
    let mut text = Vec::new();
    if let Err(error) = prometheus::TextEncoder::new().encode(&pipeline.registry.gather(), &mut text) {
        tracing::warn!(%error, "cannot encode metrics");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// The Prometheus content type of [`prometheus_text`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Instruments {
    checkins: Counter<u64>,
    assessments: Counter<u64>,
    open: Gauge<u64>,
    oldest: Gauge<f64>,
    ack: Histogram<f64>,
    deliveries: Counter<u64>,
    outbox_pending: Gauge<u64>,
    outbox_oldest: Gauge<f64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("tandem");
        Instruments {
            checkins: meter
                .u64_counter(CHECKINS_ACCEPTED)
                .with_unit("{check-in}")
                .with_description("check-ins accepted and stored")
                .build(),
            assessments: meter
                .u64_counter(ASSESSMENTS)
                .with_unit("{assessment}")
                .with_description("risk assessments written, by level")
                .build(),
            open: meter
                .u64_gauge(ESCALATIONS_OPEN)
                .with_unit("{escalation}")
                .with_description("escalations not resolved, by level and state")
                .build(),
            oldest: meter
                .f64_gauge(ESCALATIONS_OLDEST_AGE)
                .with_unit("s")
                .with_description("age of the oldest escalation not resolved, by level and state (0 when none)")
                .build(),
            ack: meter
                .f64_histogram(TIME_TO_ACKNOWLEDGE)
                .with_unit("s")
                .with_description("time from an escalation being raised to a person acknowledging it")
                .with_boundaries(ACK_BUCKETS.to_vec())
                .build(),
            deliveries: meter
                .u64_counter(DELIVERIES)
                .with_unit("{delivery}")
                .with_description("delivery attempts by channel, purpose and outcome (delivered, retrying, failed)")
                .build(),
            outbox_pending: meter
                .u64_gauge(OUTBOX_PENDING)
                .with_unit("{event}")
                .with_description("outbox rows not yet published to the bus")
                .build(),
            outbox_oldest: meter
                .f64_gauge(OUTBOX_OLDEST_AGE)
                .with_unit("s")
                .with_description("age of the oldest outbox row not yet published (0 when none)")
                .build(),
        }
    })
}

/// A risk level's label: `RISK_LEVEL_HIGH` (or `High`) becomes `high`.
pub fn level_label(level: &str) -> String {
    level.trim_start_matches("RISK_LEVEL_").to_ascii_lowercase()
}

/// A check-in was accepted and stored.
pub fn checkin_accepted(org: &str, crisis: bool) {
    instruments().checkins.add(1, &[KeyValue::new("org", org.to_owned()), KeyValue::new("crisis", crisis)]);
}

/// A risk assessment was written at `level` (a `RiskLevel` name).
pub fn assessment(org: &str, level: &str) {
    instruments()
        .assessments
        .add(1, &[KeyValue::new("org", org.to_owned()), KeyValue::new("level", level_label(level))]);
}

/// How many escalations are open at `level` in `state`, and how old the
/// oldest is.
pub fn escalations_open(level: &str, state: &'static str, count: u64, oldest_age_secs: f64) {
    let attributes = [KeyValue::new("level", level_label(level)), KeyValue::new("state", state)];
    instruments().open.record(count, &attributes);
    instruments().oldest.record(oldest_age_secs.max(0.0), &attributes);
}

/// An escalation at `level` was acknowledged `secs` after it was raised.
pub fn acknowledged(level: &str, secs: f64) {
    instruments().ack.record(secs.max(0.0), &[KeyValue::new("level", level_label(level))]);
}

/// A delivery attempt over `channel` for `purpose` ended in `outcome`
/// (`delivered`, `retrying` or `failed`).
pub fn delivery(channel: &'static str, purpose: &'static str, outcome: &'static str) {
    instruments().deliveries.add(
        1,
        &[KeyValue::new("channel", channel), KeyValue::new("purpose", purpose), KeyValue::new("outcome", outcome)],
    );
}

/// The outbox of `service` holds `pending` unpublished rows, the oldest
/// `oldest_age_secs` old.
pub fn outbox(service: &str, pending: u64, oldest_age_secs: f64) {
    let attributes = [KeyValue::new("service", service.to_owned())];
    instruments().outbox_pending.record(pending, &attributes);
    instruments().outbox_oldest.record(oldest_age_secs.max(0.0), &attributes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_metrics_reach_the_prometheus_text() {
        let settings = TelemetrySettings::for_tests("metrics-test");
        install(&settings).unwrap();
        checkin_accepted("org-metrics-test", true);
        assessment("org-metrics-test", "RISK_LEVEL_IMMINENT");
        acknowledged("RISK_LEVEL_HIGH", 90.0);
        let text = prometheus_text();
        assert!(text.contains(r#"tandem_checkins_accepted_total{crisis="true",org="org-metrics-test"} 1"#), "{text}");
        assert!(
            text.contains(r#"tandem_triage_assessments_total{level="imminent",org="org-metrics-test"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_triage_escalations_time_to_acknowledge_seconds_bucket{level="high",le="120"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tandem_triage_escalations_time_to_acknowledge_seconds_bucket{level="high",le="60"} 0"#),
            "{text}"
        );
    }
}
