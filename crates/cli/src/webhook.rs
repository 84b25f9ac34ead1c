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
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
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

/// Checks a Standard Webhooks signature: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` keyed with the base64 secret after `whsec_`.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], signature_header: &str) -> bool {
    let Some(key) = secret.strip_prefix("whsec_").and_then(|encoded| STANDARD.decode(encoded).ok()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { return false };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    // The header may carry several space-separated signatures.
    signature_header.split(' ').any(|candidate| candidate.strip_prefix("v1,") == Some(expected.as_str()))
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
    fn verifies_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let timestamp = "1614265330";
        let body = br#"{"test": 2432232314}"#;
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify(secret, id, timestamp, body, signature));
        assert!(!verify(secret, id, "1614265331", body, signature));
        assert!(!verify(secret, id, timestamp, b"{}", signature));
    }
}
