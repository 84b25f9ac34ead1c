//! Notifications as a clinic and its EHR use them, through the generated
//! client against the whole running Tandem, embedded and on PostgreSQL +
//! Kafka: a clinician registers a webhook, receives the verification code
//! at it, verifies it; bad registrations are refused with field violations;
//! other subjects and organisations cannot see or touch it; and an
//! escalation published into the running system reaches the clinician as a
//! signed alert.

// Escalation literals name every field today; the update keeps them
// compiling when triage adds fields.
#![allow(clippy::needless_update)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use tandem_auth::Role;
use tandem_events::{Record, topics};
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{AlertReason, EscalationChange, EscalationChanged};
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1 as triage;
use tandem_tests::{Tandem, authed, both_backends};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Text a patient wrote, planted in the escalation's timeline.
const PATIENT_TEXT: &str = "words from my journal that must stay inside tandem";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 that answers 200 to everything and
/// keeps what it received.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = got.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    if let Some(received) = read_request(socket).await {
                        store.lock().unwrap().push(received);
                    }
                });
            }
        });
        Self { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

async fn read_request(socket: tokio::net::TcpStream) -> Option<Received> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.ok()?;
    Some(Received { path, headers, body: String::from_utf8(body).ok()? })
}

/// Checks a Standard Webhooks signature with the reference crate.
fn assert_signed(secret: &str, request: &Received) {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    assert!(key.len() >= 24, "at least 24 random bytes");
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.headers[name].parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret).unwrap().verify(request.body.as_bytes(), &headers).unwrap();
}

/// The value of `"key":"..."` in a flat JSON text.
fn json_string(body: &str, key: &str) -> String {
    let start = body.find(&format!("\"{key}\":\"")).unwrap_or_else(|| panic!("no {key} in {body}")) + key.len() + 4;
    body[start..].split('"').next().unwrap().to_owned()
}

async fn client(tandem: &Tandem) -> NotificationServiceClient<Channel> {
    NotificationServiceClient::new(tandem.channel().await)
}

fn webhook(address: String) -> pb::RegisterEndpointRequest {
    pb::RegisterEndpointRequest { channel: pb::Channel::Webhook as i32, address, ..Default::default() }
}

/// Registers and verifies a webhook for the token's subject; returns (id, secret).
async fn verified_webhook(
    tandem: &Tandem,
    client: &mut NotificationServiceClient<Channel>,
    token: &str,
    receiver: &Receiver,
    path: &str,
) -> (String, String) {
    let registered = client.register_endpoint(authed(token, webhook(receiver.url(path)))).await.unwrap().into_inner();
    let endpoint = registered.endpoint.unwrap();
    let verification = tandem
        .eventually("the verification code at the webhook", || async {
            receiver.on(path).into_iter().find(|r| r.body.contains("endpoint.verification"))
        })
        .await;
    assert_signed(&registered.signing_secret, &verification);
    let code = json_string(&verification.body, "code");
    let request = pb::VerifyEndpointRequest { endpoint_id: endpoint.endpoint_id.clone(), code };
    let verified = client.verify_endpoint(authed(token, request)).await.unwrap().into_inner().endpoint.unwrap();
    assert!(verified.verified);
    (endpoint.endpoint_id, registered.signing_secret)
}

both_backends!(a_clinician_registers_and_verifies_a_webhook_that_stays_theirs, |tandem| {
    let receiver = Receiver::start().await;
    let mut client = client(tandem).await;
    let lee = tandem.token("north", Role::Clinician, "dr-lee");

    // Registration: the secret is shown once, the endpoint starts unverified.
    let registered = client.register_endpoint(authed(&lee, webhook(receiver.url("/lee")))).await.unwrap().into_inner();
    assert!(registered.signing_secret.starts_with("whsec_"));
    let endpoint = registered.endpoint.unwrap();
    assert_eq!(endpoint.subject, "dr-lee");
    assert_eq!(endpoint.channel, pb::Channel::Webhook as i32);
    assert!(!endpoint.verified);

    // The code arrives signed at the webhook; a wrong code is refused.
    let verification = tandem
        .eventually("the verification code", || async {
            receiver.on("/lee").into_iter().find(|r| r.body.contains("endpoint.verification"))
        })
        .await;
    assert_signed(&registered.signing_secret, &verification);
    let code = json_string(&verification.body, "code");
    assert_eq!(code.len(), 6);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify =
        |code: &str| pb::VerifyEndpointRequest { endpoint_id: endpoint.endpoint_id.clone(), code: code.into() };
    let status = client.verify_endpoint(authed(&lee, verify(wrong))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "code");

    // Another org and another clinician can neither verify, see nor delete it.
    let south = tandem.token("south", Role::Admin, "admin");
    let other = tandem.token("north", Role::Clinician, "dr-other");
    for token in [&south, &other] {
        let status = client.verify_endpoint(authed(token, verify(&code))).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let delete = pb::DeleteEndpointRequest { endpoint_id: endpoint.endpoint_id.clone() };
        let status = client.delete_endpoint(authed(token, delete)).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let listed = client.list_endpoints(authed(token, pb::ListEndpointsRequest {})).await.unwrap().into_inner();
        assert!(listed.endpoints.is_empty(), "{:?}", listed.endpoints);
    }

    let verified = client.verify_endpoint(authed(&lee, verify(&code))).await.unwrap().into_inner().endpoint.unwrap();
    assert!(verified.verified);
    let mine = client.list_endpoints(authed(&lee, pb::ListEndpointsRequest {})).await.unwrap().into_inner();
    assert_eq!(mine.endpoints.len(), 1);
    assert!(mine.endpoints[0].verified);

    // Registering for someone else is for admins and integrations: the
    // org's on-call crisis contact, for example.
    let for_on_call = pb::RegisterEndpointRequest {
        channel: pb::Channel::InApp as i32,
        subject: "on-call".into(),
        ..Default::default()
    };
    let status = client.register_endpoint(authed(&lee, for_on_call.clone())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let admin = tandem.token("north", Role::Admin, "north-admin");
    let on_call = client.register_endpoint(authed(&admin, for_on_call)).await.unwrap().into_inner().endpoint.unwrap();
    assert_eq!(on_call.subject, "on-call");
    assert!(on_call.verified, "in-app endpoints need no code");
    let org = client.list_endpoints(authed(&admin, pb::ListEndpointsRequest {})).await.unwrap().into_inner();
    let mut subjects: Vec<&str> = org.endpoints.iter().map(|e| e.subject.as_str()).collect();
    subjects.sort();
    assert_eq!(subjects, ["dr-lee", "on-call"]);

    // The owner deletes it.
    let delete = pb::DeleteEndpointRequest { endpoint_id: endpoint.endpoint_id.clone() };
    client.delete_endpoint(authed(&lee, delete)).await.unwrap();
    let mine = client.list_endpoints(authed(&lee, pb::ListEndpointsRequest {})).await.unwrap().into_inner();
    assert!(mine.endpoints.is_empty());
});

both_backends!(bad_registrations_are_refused_with_reasons, |tandem| {
    let mut client = client(tandem).await;
    let lee = tandem.token("north", Role::Clinician, "dr-lee");
    let bad = pb::RegisterEndpointRequest {
        channel: pb::Channel::Webhook as i32,
        address: "ftp://ehr.example/hook".into(),
        quiet_hours_start: "25:00".into(),
        quiet_hours_end: "07:00".into(),
        time_zone: "Nowhere/Land".into(),
        ..Default::default()
    };
    let status = client.register_endpoint(authed(&lee, bad)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields: Vec<String> =
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    fields.sort();
    assert_eq!(fields, ["address", "quiet_hours_start", "time_zone"]);

    let no_channel = pb::RegisterEndpointRequest { address: "https://ehr.example/hook".into(), ..Default::default() };
    let status = client.register_endpoint(authed(&lee, no_channel)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "channel");

    let phone = pb::RegisterEndpointRequest {
        channel: pb::Channel::Sms as i32,
        address: "555-0101".into(),
        ..Default::default()
    };
    let status = client.register_endpoint(authed(&lee, phone)).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "address");

    // `tandem up` without SMTP or an SMS provider says what to configure.
    let email = pb::RegisterEndpointRequest {
        channel: pb::Channel::Email as i32,
        address: "dr.lee@clinic.example".into(),
        ..Default::default()
    };
    let status = client.register_endpoint(authed(&lee, email)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("TANDEM_NOTIFICATIONS__SMTP__HOST"), "{}", status.message());

    // Without a token nothing is answered.
    let status = client.list_endpoints(pb::ListEndpointsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
});

both_backends!(an_escalation_reaches_the_clinician_as_a_signed_alert, |tandem| {
    let receiver = Receiver::start().await;
    let mut client = client(tandem).await;
    let lee = tandem.token("north", Role::Clinician, "dr-lee");
    let (_, secret) = verified_webhook(tandem, &mut client, &lee, &receiver, "/alerts").await;

    // Triage's event, published into the running system's bus.
    let org: OrgId = "north".parse().unwrap();
    let patient = PatientId::new();
    let escalation = EscalationId::new().to_string();
    let now = SystemTime::now();
    let changed = EscalationChanged {
        escalation: Some(triage::Escalation {
            id: Some(common::EscalationId { value: escalation.clone() }),
            patient_id: Some(patient.into()),
            level: triage::RiskLevel::Imminent as i32,
            state: triage::EscalationState::Notified as i32,
            step: 0,
            current_recipient: "dr-lee".into(),
            ack_deadline: Some((now + Duration::from_secs(600)).into()),
            raised_at: Some(now.into()),
            timeline: vec![triage::TimelineEntry { detail: PATIENT_TEXT.into(), ..Default::default() }],
            ..Default::default()
        }),
        kind: EscalationChange::Notify as i32,
        alert_reason: AlertReason::Raised as i32,
        ..Default::default()
    };
    let event =
        tandem_events::new_envelope("triage", &org, &patient, Payload::EscalationChanged(changed.with_legacy_fields()));
    let bus = tandem_server::bus::connect(&tandem.settings).await.unwrap();
    for result in bus.publish(&[Record::from_envelope(topics::TRIAGE, &event).unwrap()]).await {
        result.unwrap();
    }

    let alert = tandem
        .eventually("the alert at the webhook", || async {
            receiver.on("/alerts").into_iter().find(|r| r.body.contains("escalation.notify"))
        })
        .await;
    assert_signed(&secret, &alert);
    assert_eq!(json_string(&alert.body, "escalation_id"), escalation);
    assert_eq!(json_string(&alert.body, "patient_id"), patient.to_string());
    assert_eq!(json_string(&alert.body, "level"), "RISK_LEVEL_IMMINENT");
    assert!(
        json_string(&alert.body, "message")
            .starts_with("Tandem: an imminent-risk alert for one of your patients needs acknowledgement by"),
        "{}",
        alert.body
    );
    assert!(!alert.body.contains(PATIENT_TEXT));
});
