//! Metrics and probes as Kubernetes and Prometheus see them: a crisis
//! check-in shows up on `GET /metrics` as an accepted crisis check-in, a
//! high assessment, an open escalation and, once acknowledged, a time to
//! acknowledge; `GET /healthz` is 200 while every service is SERVING.

use tandem_auth::Role;
use tandem_proto::checkins::v1 as pb;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_tests::{Tandem, authed, both_backends};

/// The value of the series `series` (name and labels, exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scraped(tandem: &Tandem, what: &str, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    tandem
        .eventually(what, || async {
            let (status, text) = tandem.probe("/metrics").await;
            assert_eq!(status, 200);
            value(&text, series).filter(|found| wanted(*found))
        })
        .await
}

both_backends!(a_crisis_check_in_shows_on_the_scrape_endpoint, |tandem| {
    // An org of its own per backend: counters are per process, and both
    // backends' tests may run in one.
    let org = if tandem.kafka_brokers().is_some() { "metrics-pg" } else { "metrics-embedded" };
    let (status, body) = tandem.probe("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "SERVING\n"));

    let ehr = tandem.token(org, Role::Integration, "ehr-client");
    let patient = tandem.enroll(&ehr, "mrn-1").await;
    let patient_token = tandem.token(org, Role::Patient, &patient.value);
    let reply = CheckInServiceClient::new(tandem.channel().await)
        .submit_check_in(authed(
            &patient_token,
            pb::SubmitCheckInRequest {
                idempotency_key: "crisis-1".into(),
                patient_id: Some(patient.clone()),
                instruments: vec![pb::InstrumentResponse {
                    instrument: "44249-1".into(),
                    // PHQ-9 item 9 >= 1: a crisis trigger.
                    answers: vec![1, 1, 1, 1, 1, 1, 1, 1, 1],
                }],
                ..Default::default()
            },
        ))
        .await
        .expect("a crisis check-in is accepted")
        .into_inner();
    assert!(reply.safety_response.is_some());

    let accepted = format!(r#"tandem_checkins_accepted_total{{crisis="true",org="{org}"}}"#);
    assert_eq!(scraped(tandem, "the crisis check-in counted", &accepted, |_| true).await, 1.0);
    let assessed = format!(r#"tandem_triage_assessments_total{{level="high",org="{org}"}}"#);
    assert_eq!(scraped(tandem, "the high assessment counted", &assessed, |_| true).await, 1.0);
    let open = r#"tandem_triage_escalations_open{level="high",state="notified"}"#;
    scraped(tandem, "the open escalation gauged", open, |count| count >= 1.0).await;
    let age = r#"tandem_triage_escalations_oldest_age_seconds{level="high",state="notified"}"#;
    scraped(tandem, "the escalation's age gauged", age, |secs| (0.0..600.0).contains(&secs)).await;

    // The crisis contact holds it (no care team): they acknowledge.
    let admin = tandem.token(org, Role::Admin, "admin-1");
    let client = TriageServiceClient::new(tandem.channel().await);
    let escalation = tandem
        .eventually("the escalation on the worklist", || {
            let mut client = client.clone();
            let admin = admin.clone();
            async move {
                let list = client.list_worklist(authed(&admin, triage::ListWorklistRequest::default())).await.ok()?;
                list.into_inner().escalations.into_iter().next()
            }
        })
        .await;
    let escalation_id = escalation.id.clone();
    let acknowledged = tandem
        .eventually("the acknowledgement", || {
            let mut client = client.clone();
            let admin = admin.clone();
            let request = triage::AcknowledgeEscalationRequest {
                escalation_id: escalation_id.clone(),
                note: "calling the patient now".into(),
            };
            async move { client.acknowledge_escalation(authed(&admin, request)).await.ok() }
        })
        .await;
    assert_eq!(acknowledged.into_inner().escalation.unwrap().state(), triage::EscalationState::Acknowledged);
    let timed = r#"tandem_triage_escalations_time_to_acknowledge_seconds_count{level="high"}"#;
    scraped(tandem, "the time to acknowledge observed", timed, |count| count >= 1.0).await;
    // The event spine: every service's outbox is gauged, and the consumers'
    // lag probes report triage's lag on the check-ins topic.
    for service in ["careplans", "checkins", "triage", "notifications"] {
        let pending = format!(r#"tandem_events_outbox_pending{{service="{service}"}}"#);
        scraped(tandem, "the outbox lag gauged", &pending, |_| true).await;
    }
    let lag = r#"tandem_events_consumer_lag{group="triage",topic="tandem.checkins.v1"}"#;
    scraped(tandem, "triage's consumer lag gauged", lag, |_| true).await;
    let (status, _) = tandem.probe("/healthz").await;
    assert_eq!(status, 200);
});
