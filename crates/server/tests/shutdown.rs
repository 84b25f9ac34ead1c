//! Shutdown has a bound: open streams end when the drain is over, and a
//! call that never ends cannot keep the server from stopping.

use std::time::Duration;

use tandem_auth::{Caller, Role};
use tandem_server::{GrpcServer, StreamSettings, Streams};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Far more than any of these steps needs; only a hang reaches it.
const BOUND: Duration = Duration::from_secs(60);

fn request_from(subject: &str) -> tonic::Request<()> {
    let mut request = tonic::Request::new(());
    request.extensions_mut().insert(Caller {
        org: "north".parse().unwrap(),
        role: Role::Clinician,
        subject: subject.to_owned(),
    });
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_at_the_end_of_the_drain_and_the_server_stops() {
    let streams = Streams::new(StreamSettings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        GrpcServer::new()
            .drain_delay(Duration::from_millis(300))
            .call_grace(Duration::from_millis(300))
            .streams(streams.clone())
            .serve(listener, async move {
                let _ = stopped.await;
            }),
    );

    // A watch as a service would run it: it never ends by itself.
    let lease = streams.open("Watch", &request_from("dr-a")).expect("admitted");
    let mut watch = lease.spawn(|sender| async move {
        let _ = sender.send(Ok("first")).await;
        std::future::pending::<()>().await;
    });
    assert_eq!(watch.next().await.unwrap().unwrap(), "first");

    // A health Watch is a call that never ends either, outside our streams.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let mut health_watch =
        health.watch(HealthCheckRequest { service: String::new() }).await.expect("health watch").into_inner();
    let serving = health_watch.next().await.unwrap().unwrap();
    assert_eq!(serving.status, 1, "SERVING");

    stop.send(()).unwrap();
    let status = tokio::time::timeout(BOUND, watch.next())
        .await
        .expect("the stream ends when the drain is over")
        .expect("with a final status")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("open the stream again"), "{status:?}");
    let refused = streams.open("Watch", &request_from("dr-b")).unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "no new streams once shutting down");

    tokio::time::timeout(BOUND, server)
        .await
        .expect("the server stops although a health watch is still open")
        .unwrap()
        .expect("a clean stop");
}
