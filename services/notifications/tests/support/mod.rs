//! Test support: a real HTTP receiver, a minimal SMTP sink, a service on a
//! throwaway database and embedded bus, and event helpers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use futures::FutureExt;
use prost::Message as _;
use tandem_auth::{Caller, Role};
use tandem_events::testing::TestBus;
use tandem_events::{EventBus, Record, TopicSpec, topics};
use tandem_notifications::Notifications;
use tandem_notifications::config::{AlertRetry, NotificationsSettings};
use tandem_proto::common::v1 as common;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::events::v1::{EscalationChange, EscalationChanged, EventEnvelope};
use tandem_proto::ids::{OrgId, PatientId};
use tandem_proto::notifications::v1 as pb;
use tandem_proto::notifications::v1::notification_service_server::NotificationService;
use tandem_proto::triage::v1 as triage;
use tandem_server::Tasks;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Text a patient wrote, planted where a careless alert could pick it up.
pub const PATIENT_TEXT: &str = "i wrote this in my journal and it must never leave tandem";

/// Waits for `check` to return `Some`, polling; panics after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the receiver answers on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer with this status.
    Answer(u16),
    /// Never answer.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The status it was answered with; `None` if it was left hanging.
    pub answered: Option<u16>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }

    pub fn is(&self, kind: &str) -> bool {
        self.json()["type"] == kind
    }
}

#[derive(Debug, Default)]
struct HookState {
    requests: Mutex<Vec<Received>>,
    modes: Mutex<HashMap<String, Mode>>,
}

/// A real HTTP server on 127.0.0.1:0 that records every request.
pub struct Hook {
    pub addr: SocketAddr,
    state: Arc<HookState>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(state): State<Arc<HookState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let path = uri.path().to_owned();
    let mode = state.modes.lock().unwrap().get(&path).copied().unwrap_or(Mode::Answer(200));
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
        .collect();
    let answered = match mode {
        Mode::Answer(code) => Some(code),
        Mode::Hang => None,
    };
    state.requests.lock().unwrap().push(Received { path, headers, body: body.to_vec(), answered });
    match mode {
        Mode::Answer(code) => StatusCode::from_u16(code).unwrap(),
        Mode::Hang => std::future::pending().await,
    }
}

impl Hook {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HookState::default());
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, path: &str, mode: Mode) {
        self.state.modes.lock().unwrap().insert(path.to_owned(), mode);
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.state.requests.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits for a request on `path` whose JSON `type` is `kind`.
    pub async fn wait_for(&self, path: &str, kind: &str) -> Received {
        eventually(&format!("a {kind} request on {path}"), || async {
            self.requests(path).into_iter().find(|r| r.is(kind))
        })
        .await
    }

    /// Stops listening: later connections are refused.
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A minimal SMTP server that accepts every message and keeps its text.
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = messages.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(smtp_session(socket, store.clone()));
            }
        });
        Self { port, messages }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, needle: &str) -> String {
        eventually(&format!("an email containing {needle:?}"), || async {
            self.messages().into_iter().find(|m| m.contains(needle))
        })
        .await
    }
}

async fn smtp_session(socket: tokio::net::TcpStream, store: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let command = line.to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
            b"250 sink\r\n"
        } else if command.starts_with("DATA") {
            if write.write_all(b"354 end with .\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                data.push_str(&line);
                data.push('\n');
            }
            store.lock().unwrap().push(data);
            b"250 queued\r\n"
        } else if command.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Settings for tests: tiny delays, no reminder scheduler.
pub fn fast_settings() -> NotificationsSettings {
    let mut settings = NotificationsSettings {
        alert_retry: AlertRetry {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_attempts: 3,
            give_up_after: Duration::from_secs(30),
        },
        ..NotificationsSettings::default()
    };
    settings.worker.poll = Duration::from_millis(100);
    settings.worker.lease = Duration::from_secs(2);
    settings.reminders.enabled = false;
    settings
}

/// A notifications service on a throwaway database and embedded bus.
pub struct Env {
    pub service: Notifications,
    pub bus: Arc<dyn EventBus>,
    _test_bus: TestBus,
    tasks: Mutex<Option<Tasks>>,
    database: Mutex<Option<TestDatabase>>,
}

impl Env {
    pub async fn start(backend: Backend, settings: NotificationsSettings) -> Self {
        let database = TestDatabase::create(backend).await;
        let test_bus = TestBus::embedded().await;
        let bus = test_bus.bus.clone();
        bus.ensure_topics(&TopicSpec::standard(bus.default_partitions())).await.unwrap();
        let service = Notifications::open(&database.url, settings).await.unwrap();
        let mut tasks = Tasks::new();
        service.start(bus.clone(), &mut tasks);
        Self { service, bus, _test_bus: test_bus, tasks: Mutex::new(Some(tasks)), database: Mutex::new(Some(database)) }
    }

    pub async fn stop(&self) {
        let tasks = self.tasks.lock().unwrap().take();
        if let Some(tasks) = tasks {
            let failures = tasks.shutdown().await;
            assert!(failures.is_empty(), "background tasks ended with errors: {failures:?}");
        }
        self.service.close().await;
        let database = self.database.lock().unwrap().take();
        if let Some(database) = database {
            database.drop_database().await;
        }
    }

    /// Every event in the outbox, oldest first.
    pub async fn outbox(&self) -> Vec<EventEnvelope> {
        outbox_events(&self.service).await
    }
}

/// Every event in a service's outbox, oldest first.
pub async fn outbox_events(service: &Notifications) -> Vec<EventEnvelope> {
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox ORDER BY seq").fetch_all(service.store().pool()).await.unwrap();
    rows.iter().map(|bytes| EventEnvelope::decode(bytes.as_slice()).unwrap()).collect()
}

/// Runs `body` against a fresh service; stops it and drops its database
/// afterwards, also when the body panics.
pub async fn with_env<F, Fut>(backend: Backend, settings: NotificationsSettings, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = Arc::new(Env::start(backend, settings).await);
    let outcome = AssertUnwindSafe(body(env.clone())).catch_unwind().await;
    env.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A request as the auth interceptor would hand it over.
pub fn as_caller<T>(org: &str, role: Role, subject: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller { org: org.parse().unwrap(), role, subject: subject.to_owned() });
    request
}

/// Registers a webhook for `subject` at `path` of `hook` and verifies it
/// with the code the hook received; returns (endpoint id, secret).
pub async fn verified_webhook(service: &Notifications, hook: &Hook, subject: &str, path: &str) -> (String, String) {
    let api = service.api();
    let registered = api
        .register_endpoint(as_caller(
            "north",
            Role::Clinician,
            subject,
            pb::RegisterEndpointRequest {
                channel: pb::Channel::Webhook as i32,
                address: hook.url(path),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let endpoint = registered.endpoint.unwrap();
    assert!(!endpoint.verified);
    let verification = hook.wait_for(path, "endpoint.verification").await;
    let code = verification.json()["code"].as_str().unwrap().to_owned();
    let verified = api
        .verify_endpoint(as_caller(
            "north",
            Role::Clinician,
            subject,
            pb::VerifyEndpointRequest { endpoint_id: endpoint.endpoint_id.clone(), code },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.endpoint.unwrap().verified);
    (endpoint.endpoint_id, registered.signing_secret)
}

/// An `EscalationChanged` as triage publishes it; `change` as in the
/// deprecated string, e.g. "notify".
// Every Escalation field is set today; the update keeps this compiling when
// triage adds fields.
#[allow(clippy::needless_update)]
pub fn escalation_event(
    patient: &PatientId,
    escalation: &str,
    step: u32,
    recipient: &str,
    change: &str,
) -> EventEnvelope {
    let org: OrgId = "north".parse().unwrap();
    let now = SystemTime::now();
    let changed = EscalationChanged {
        escalation: Some(triage::Escalation {
            id: Some(common::EscalationId { value: escalation.to_owned() }),
            patient_id: Some((*patient).into()),
            level: triage::RiskLevel::High as i32,
            state: triage::EscalationState::Notified as i32,
            step,
            current_recipient: recipient.to_owned(),
            ack_deadline: Some((now + Duration::from_secs(15 * 60)).into()),
            raised_at: Some(now.into()),
            timeline: vec![triage::TimelineEntry {
                at: Some(now.into()),
                kind: "raised".into(),
                actor: "triage".into(),
                detail: PATIENT_TEXT.into(),
            }],
            ..Default::default()
        }),
        kind: EscalationChange::from_legacy_name(change) as i32,
        ..Default::default()
    };
    tandem_events::new_envelope("triage", &org, patient, Payload::EscalationChanged(changed.with_legacy_fields()))
}

/// Publishes an event on its topic.
pub async fn publish(bus: &Arc<dyn EventBus>, topic: &str, event: &EventEnvelope) {
    let record = Record::from_envelope(topic, event).unwrap();
    for result in bus.publish(&[record]).await {
        result.unwrap();
    }
}

/// Publishes triage's event.
pub async fn publish_triage(bus: &Arc<dyn EventBus>, event: &EventEnvelope) {
    publish(bus, topics::TRIAGE, event).await;
}

/// The `NotificationDelivered` and `NotificationFailed` events about an escalation.
pub fn receipts(
    events: &[EventEnvelope],
    escalation: &str,
) -> (Vec<tandem_proto::events::v1::NotificationDelivered>, Vec<tandem_proto::events::v1::NotificationFailed>) {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for event in events {
        match &event.payload {
            Some(Payload::NotificationDelivered(d))
                if d.escalation_id.as_ref().is_some_and(|id| id.value == escalation) =>
            {
                delivered.push(d.clone())
            }
            Some(Payload::NotificationFailed(f))
                if f.escalation_id.as_ref().is_some_and(|id| id.value == escalation) =>
            {
                failed.push(f.clone())
            }
            _ => {}
        }
    }
    (delivered, failed)
}

/// A new escalation id.
pub fn new_escalation() -> String {
    tandem_proto::ids::EscalationId::new().to_string()
}
