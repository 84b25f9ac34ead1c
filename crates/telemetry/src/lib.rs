//! Tracing and OpenTelemetry for every Tandem process.
//!
//! Logs go to stderr as plain text or JSON lines, filtered by `TANDEM_LOG`
//! (or `RUST_LOG`). Spans always carry OpenTelemetry context, so a call's
//! `traceparent` reaches the events and calls it causes; they are exported
//! over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, filtered by
//! `TANDEM_TRACE_LEVEL` of their own (a quiet log does not silence traces).
//! Metrics ([`metrics`]) go to the same endpoint and to a Prometheus scrape.

pub mod metrics;
mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use propagation::{
    MetadataExtractor, MetadataInjector, TraceContextInterceptor, current_traceparent, grpc_server_span,
    inject_current_context, parent_context_from_traceparent,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("log or trace filter `{filter}` is invalid: {reason}; use e.g. TANDEM_LOG=info,tandem=debug")]
    BadFilter {
        /// The filter text.
        filter: String,
        /// Why.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot set up the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed in this process")]
    AlreadyInstalled,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!("log format `{other}` is not plain or json")),
        }
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `service.name` of exported spans.
    pub service_name: String,
    /// The log filter, in `EnvFilter` syntax.
    pub filter: String,
    /// Which spans reach the OTLP exporter, in `EnvFilter` syntax; apart
    /// from `filter`, so quiet logs keep full traces.
    pub trace_filter: String,
    /// Plain or JSON lines.
    pub format: LogFormat,
    /// OTLP endpoint; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl TelemetrySettings {
    /// Settings from the environment: `TANDEM_LOG` or `RUST_LOG` (default
    /// `info`), `TANDEM_TRACE_LEVEL` (default `info`), `TANDEM_LOG_FORMAT`
    /// (`plain` or `json`) and `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env(service_name: &str) -> Self {
        let filter =
            std::env::var("TANDEM_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".to_owned());
        let trace_filter = std::env::var("TANDEM_TRACE_LEVEL")
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| "info".to_owned());
        let format = std::env::var("TANDEM_LOG_FORMAT").ok().and_then(|value| value.parse().ok()).unwrap_or_default();
        let otlp_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|value| !value.is_empty());
        Self { service_name: service_name.to_owned(), filter, trace_filter, format, otlp_endpoint }
    }

    /// Defaults that read no environment and export nothing, for tests.
    pub fn for_tests(service_name: &str) -> Self {
        Self {
            service_name: service_name.to_owned(),
            filter: "info".to_owned(),
            trace_filter: "info".to_owned(),
            format: LogFormat::Plain,
            otlp_endpoint: None,
        }
    }
}

/// Keeps the tracer and meter providers alive; [`Telemetry::shutdown`]
/// flushes spans and metrics.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Telemetry {
    /// The tracer provider, e.g. to force a flush.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Flushes and stops span export. Call once on shutdown.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            // Nothing to do but say so: the process is exiting.
            eprintln!("tandem: flushing traces failed: {error}");
        }
        if let Some(Err(error)) = self.meters.map(|meters| meters.shutdown()) {
            eprintln!("tandem: flushing metrics failed: {error}");
        }
    }
}

/// Builds the tracer provider for the settings: OTLP over gRPC when an
/// endpoint is set, else one that records context but exports nothing.
pub fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The subscriber for the settings: log lines filtered by `filter`, spans
/// for `provider` filtered by `trace_filter`, each layer on its own, so
/// `TANDEM_LOG=warn` quiets the log without taking spans from the exporter.
pub fn subscriber(
    settings: &TelemetrySettings,
    provider: &SdkTracerProvider,
) -> Result<impl tracing::Subscriber + Send + Sync + 'static, TelemetryError> {
    let parse = |filter: &str| {
        EnvFilter::try_new(filter)
            .map_err(|error| TelemetryError::BadFilter { filter: filter.to_owned(), reason: error.to_string() })
    };
    let log_filter = parse(&settings.filter)?;
    let trace_filter = parse(&settings.trace_filter)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("tandem")).with_filter(trace_filter).boxed();
    let log: Box<dyn Layer<Registry> + Send + Sync> = match settings.format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            // Colour only for people: log shippers get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    Ok(tracing_subscriber::registry().with(vec![otel, log]))
}

/// Installs the global subscriber with the given provider and the W3C trace
/// context propagator.
pub fn install(settings: &TelemetrySettings, provider: SdkTracerProvider) -> Result<Telemetry, TelemetryError> {
    let subscriber = subscriber(settings, &provider)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    subscriber.try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider, meters: None })
}

/// Sets up logging, tracing and metrics from the settings. Call once per
/// process, before any metric is recorded.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(settings)?;
    let meters = metrics::install(settings)?;
    let telemetry = install(settings, provider)?;
    Ok(Telemetry { meters: Some(meters), ..telemetry })
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    #[test]
    fn a_quiet_log_still_exports_info_spans() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let settings = TelemetrySettings { filter: "warn".to_owned(), ..TelemetrySettings::for_tests("trace-test") };
        let subscriber = subscriber(&settings, &provider).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("kept_at_info").in_scope(|| {});
            tracing::debug_span!("dropped_at_debug").in_scope(|| {});
        });
        provider.force_flush().unwrap();
        let names: Vec<String> =
            exporter.get_finished_spans().unwrap().into_iter().map(|span| span.name.into_owned()).collect();
        assert_eq!(names, ["kept_at_info"]);
    }

    #[test]
    fn the_trace_level_is_a_filter_of_its_own() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let settings = TelemetrySettings {
            filter: "debug".to_owned(),
            trace_filter: "warn".to_owned(),
            ..TelemetrySettings::for_tests("trace-test")
        };
        let subscriber = subscriber(&settings, &provider).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("not_exported").in_scope(|| {});
            tracing::warn_span!("exported").in_scope(|| {});
        });
        provider.force_flush().unwrap();
        let names: Vec<String> =
            exporter.get_finished_spans().unwrap().into_iter().map(|span| span.name.into_owned()).collect();
        assert_eq!(names, ["exported"]);
    }
}
