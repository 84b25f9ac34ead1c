//! The trace context of an incoming call is the parent of the spans its
//! handler makes, so one trace covers an EHR's call and what it causes.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tandem_auth::Role;
use tandem_proto::careplans::v1 as careplans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_tests::{StoreBackend, Tandem, authed};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_trace_context_parents_the_handler_spans() {
    // This test binary has one test, so the global subscriber is ours.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("install the test subscriber");

    let tandem = Tandem::start(StoreBackend::Sqlite).await;
    let token = tandem.token("north", Role::Integration, "ehr-client");
    let mut client = CarePlanServiceClient::new(tandem.channel().await);
    let mut request = authed(
        &token,
        careplans::EnrollPatientRequest {
            idempotency_key: "trace-1".into(),
            external_id: "mrn-trace".into(),
            display_name: "Trace Example".into(),
            time_zone: String::new(),
        },
    );
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01").parse().unwrap());
    client.enroll_patient(request).await.expect("enrol");
    tandem.stop().await;
    provider.force_flush().expect("flush spans");

    let spans = exporter.get_finished_spans().expect("finished spans");
    let server = spans
        .iter()
        .find(|span| span.name.ends_with("/EnrollPatient"))
        .unwrap_or_else(|| panic!("no server span among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(server.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN_ID, "the caller's span is the server span's parent");

    let handler =
        spans.iter().find(|span| span.name == "careplans.enroll_patient").expect("the handler's span was exported");
    assert_eq!(handler.span_context.trace_id().to_string(), TRACE_ID, "handler joins the caller's trace");
    assert_eq!(handler.parent_span_id, server.span_context.span_id(), "handler span is a child of the call");
}
