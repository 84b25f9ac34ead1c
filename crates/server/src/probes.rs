//! The HTTP listener for Kubernetes and Prometheus, beside the gRPC port:
//! `GET /healthz` answers 200 while the process's gRPC health is SERVING
//! for all its services and 503 otherwise (a failing component, shutdown);
//! `GET /metrics` is the Prometheus text exposition of the process's
//! OpenTelemetry metrics.

use std::future::Future;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::Health;

/// The router of the probe listener, answering from `health`.
pub fn router(health: Health) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move { healthz(&health) }
            }),
        )
        .route("/metrics", get(metrics))
}

/// Serves the probes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health)).with_graceful_shutdown(shutdown).await
}

fn healthz(health: &Health) -> (StatusCode, String) {
    // The overall status is NOT_SERVING when any service's component fails.
    if health.is_serving("") {
        return (StatusCode::OK, "SERVING\n".to_owned());
    }
    // Which components, not why: reasons are for the logs.
    let mut failing: Vec<String> = health
        .failures()
        .into_iter()
        .map(|(service, component, _)| if service.is_empty() { component } else { format!("{service}: {component}") })
        .collect();
    failing.dedup();
    let mut body = "NOT_SERVING\n".to_owned();
    for line in failing {
        body.push_str(&line);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, tandem_telemetry::metrics::PROMETHEUS_CONTENT_TYPE)],
        tandem_telemetry::metrics::prometheus_text(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_follows_grpc_health_and_metrics_are_prometheus_text() {
        tandem_telemetry::metrics::install(&tandem_telemetry::TelemetrySettings::for_tests("probes-test")).unwrap();
        tandem_telemetry::metrics::checkin_accepted("org-probes-test", false);
        let health = Health::new();
        health.add_service("a.A");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, health.clone(), async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        let ok = get("/healthz").await.unwrap();
        assert_eq!(ok.status(), 200);
        health.report_for("a.A").failing("consumer a", "no partitions");
        let down = get("/healthz").await.unwrap();
        assert_eq!(down.status(), 503);
        assert!(down.text().await.unwrap().contains("a.A: consumer a"));
        health.report_for("a.A").recovered("consumer a");
        assert_eq!(get("/healthz").await.unwrap().status(), 200);

        let scraped = get("/metrics").await.unwrap();
        assert_eq!(scraped.status(), 200);
        assert!(scraped.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = scraped.text().await.unwrap();
        assert!(text.contains(r#"tandem_checkins_accepted_total{crisis="false",org="org-probes-test"} 1"#), "{text}");

        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
