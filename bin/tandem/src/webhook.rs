//! A webhook receiver on localhost that records what Tandem sends and
//! checks Standard Webhooks signatures independently of the sender: the
//! demo shows alerts arriving with it, and end-to-end tests assert on it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::Notify;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/dr-primary`.
    pub path: String,
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The body, parsed as JSON (`Null` if it was not JSON).
    pub json: serde_json::Value,
    /// The raw body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// Whether the signature verifies with `secret` ("whsec_...").
    pub fn verifies_with(&self, secret: &str) -> bool {
        verify(secret, &self.id, &self.timestamp, &self.body, &self.signature)
    }

    /// The body's `type`.
    pub fn kind(&self) -> &str {
        self.json.get("type").and_then(|kind| kind.as_str()).unwrap_or_default()
    }
}

/// Checks a Standard Webhooks signature (with the reference crate, which
/// also holds the timestamp to five minutes of the system clock).
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], signature_header: &str) -> bool {
    let Ok(webhook) = standardwebhooks::Webhook::new(secret) else { return false };
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("webhook-id", id), ("webhook-timestamp", timestamp), ("webhook-signature", signature_header)]
    {
        let Ok(value) = value.parse() else { return false };
        headers.insert(name, value);
    }
    webhook.verify(body, &headers).is_ok()
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    failing: Mutex<Vec<String>>,
    arrived: Notify,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let path = uri.path().to_owned();
    if shared.failing.lock().map(|failing| failing.contains(&path)).unwrap_or(false) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let received = Received {
        path,
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        body,
        at: Instant::now(),
    };
    if let Ok(mut all) = shared.received.lock() {
        all.push(received);
    }
    shared.arrived.notify_waiters();
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 at a free port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(record).with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "webhook receiver stopped");
            }
        });
        Ok(Self { addr, shared, server })
    }

    /// The URL for `path` (e.g. "/dr-primary").
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes requests to `path` fail with 503 (or succeed again).
    pub fn set_failing(&self, path: &str, failing: bool) {
        if let Ok(mut paths) = self.shared.failing.lock() {
            paths.retain(|p| p != path);
            if failing {
                paths.push(path.to_owned());
            }
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().map(|all| all.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for a request matching `test`.
    pub async fn wait_for(&self, timeout: Duration, test: impl Fn(&Received) -> bool) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            if let Some(found) = self.received().into_iter().find(|r| test(r)) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.received().into_iter().find(|r| test(r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_fresh_signature_and_rejects_tampering_and_stale_ones() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let signature = standardwebhooks::Webhook::new(secret).unwrap().sign(id, now, body).unwrap();
        let timestamp = now.to_string();
        assert!(verify(secret, id, &timestamp, body, &signature));
        assert!(!verify(secret, id, &(now + 1).to_string(), body, &signature));
        assert!(!verify(secret, id, &timestamp, b"{}", &signature));
        assert!(!verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id, &timestamp, body, &signature));
        // The specification's own example, signed in 2021: too old to accept.
        let example = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(!verify(secret, id, "1614265330", body, example));
    }
}
