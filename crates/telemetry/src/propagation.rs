//! W3C trace context carried in gRPC metadata.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads propagation fields from HTTP/2 headers (gRPC metadata).
#[derive(Debug)]
pub struct MetadataExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// Writes propagation fields into outgoing gRPC metadata.
#[derive(Debug)]
pub struct MetadataInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = tonic::metadata::MetadataValue::try_from(value.as_str()) else {
            return;
        };
        self.0.insert(key, value);
    }
}

/// The span for one incoming gRPC call, a child of the caller's trace
/// context when the call carries a `traceparent`. Use with tonic's
/// `Server::trace_fn`.
pub fn grpc_server_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(request.headers()));
    // A call without trace context simply starts a new trace.
    let _ = span.set_parent(parent);
    span
}

/// Writes the current span's context into outgoing metadata.
pub fn inject_current_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// The current span's W3C `traceparent`, if it has a valid context.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut fields = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut fields);
    fields.remove("traceparent")
}

/// An OpenTelemetry context whose remote parent is the given `traceparent`.
pub fn parent_context_from_traceparent(traceparent: &str) -> Context {
    let mut fields = std::collections::HashMap::new();
    fields.insert("traceparent".to_owned(), traceparent.to_owned());
    TraceContextPropagator::new().extract(&fields)
}

/// A client interceptor that sends the current trace context with each call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_current_context(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn server_span_is_a_child_of_the_incoming_traceparent() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let request = http::Request::builder()
                .uri("/tandem.careplans.v1.CarePlanService/GetPatient")
                .header("traceparent", TRACEPARENT)
                .body(())
                .unwrap();
            let span = grpc_server_span(&request);
            let _entered = span.enter();
            let child = tracing::info_span!("handler");
            let _child = child.enter();
            assert_eq!(
                child.context().span().span_context().trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            // What this span sends on carries the same trace.
            let sent = current_traceparent().unwrap();
            assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
            assert!(!sent.contains("00f067aa0ba902b7"), "a new span id is sent onwards");
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let server = spans.iter().find(|span| span.name.contains("GetPatient")).unwrap();
        assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
        let handler = spans.iter().find(|span| span.name == "handler").unwrap();
        assert_eq!(handler.parent_span_id, server.span_context.span_id());
    }

    #[test]
    fn injector_writes_traceparent_metadata() {
        let context = parent_context_from_traceparent(TRACEPARENT);
        let mut metadata = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(metadata.get("traceparent").unwrap(), TRACEPARENT);
    }
}
