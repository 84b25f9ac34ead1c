//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! A message is signed as `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
//! where the key is the base64 part of a `whsec_...` secret. The id is the
//! delivery's stable id (the same on every retry, so receivers de-duplicate)
//! and the timestamp is Unix seconds, so a receiver can reject replays: a
//! timestamp outside its tolerance, or an id it has already accepted.
//!
//! Signing and verifying are the Standard Webhooks reference crate's
//! (`standardwebhooks`); this module adds secrets, our headers and a
//! receiver that also rejects replayed ids.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use standardwebhooks::{Webhook, WebhookError};

/// Header carrying the message id.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the Unix timestamp in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the signature(s).
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a secret we generate (the convention asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// Why a secret or a signed message is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret is not `whsec_` + base64.
    #[error("the signing secret must be \"whsec_\" followed by base64")]
    BadSecret,
    /// A header is missing or not text.
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    /// The timestamp is not a number.
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    /// The timestamp is outside the tolerance: a replay or a skewed clock.
    #[error("webhook-timestamp is outside the accepted window; replayed or the clocks disagree")]
    Stale,
    /// No signature matches.
    #[error("no webhook-signature matches the body")]
    Mismatch,
    /// The id was accepted before: a replay.
    #[error("webhook-id was already accepted; this is a replay")]
    Replayed,
}

/// A signing key from a `whsec_` secret.
#[derive(Clone)]
pub struct SigningKey(Arc<Webhook>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// The key of a `whsec_...` secret.
    pub fn from_secret(secret: &str) -> Result<Self, SignatureError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(SignatureError::BadSecret)?;
        // The reference crate accepts an empty key; a secret must have one.
        if STANDARD.decode(encoded).map_err(|_| SignatureError::BadSecret)?.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        Webhook::new(secret).map(|webhook| Self(Arc::new(webhook))).map_err(|_| SignatureError::BadSecret)
    }

    /// The `webhook-signature` value for a message. Our bodies are JSON, so
    /// always UTF-8 text as the convention requires; a body that was not
    /// would be signed as its lossy text and fail verification, never panic.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        self.0.sign(id, timestamp, text.as_bytes()).unwrap_or_default()
    }

    /// The three headers of a message sent at `now`.
    pub fn headers(&self, id: &str, now: SystemTime, body: &[u8]) -> [(&'static str, String); 3] {
        let timestamp = unix_seconds(now);
        [
            (HEADER_ID, id.to_owned()),
            (HEADER_TIMESTAMP, timestamp.to_string()),
            (HEADER_SIGNATURE, self.sign(id, timestamp, body)),
        ]
    }
}

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// Unix seconds of a time (negative before 1970).
pub fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// What a receiver of our webhooks does: verify the signature, reject
/// timestamps outside a tolerance and ids it accepted before. Provided for
/// integrators' tests and our own; ids are remembered for twice the
/// tolerance, after which their timestamps are stale anyway. The signature
/// is checked by the reference crate, which also holds the timestamp to its
/// own five minutes of the system clock.
#[derive(Debug)]
pub struct Receiver {
    key: SigningKey,
    tolerance: Duration,
    seen: HashMap<String, SystemTime>,
}

impl Receiver {
    /// A receiver with the endpoint's secret and a replay tolerance (the
    /// convention suggests five minutes).
    pub fn new(secret: &str, tolerance: Duration) -> Result<Self, SignatureError> {
        Ok(Self { key: SigningKey::from_secret(secret)?, tolerance, seen: HashMap::new() })
    }

    /// Accepts a message received at `now`, or says why not. `header`
    /// looks a header up by its lowercase name.
    pub fn accept<'a>(
        &mut self,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<String, SignatureError> {
        let id = header(HEADER_ID).ok_or(SignatureError::MissingHeader(HEADER_ID))?;
        let timestamp = header(HEADER_TIMESTAMP).ok_or(SignatureError::MissingHeader(HEADER_TIMESTAMP))?;
        let signatures = header(HEADER_SIGNATURE).ok_or(SignatureError::MissingHeader(HEADER_SIGNATURE))?;
        let timestamp: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        let skew = unix_seconds(now).abs_diff(timestamp);
        if skew > self.tolerance.as_secs() {
            return Err(SignatureError::Stale);
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in [(HEADER_ID, id), (HEADER_SIGNATURE, signatures)] {
            headers.insert(name, value.parse().map_err(|_| SignatureError::MissingHeader(name))?);
        }
        headers.insert(HEADER_TIMESTAMP, http::HeaderValue::from(timestamp));
        match self.key.0.verify(body, &headers) {
            Ok(()) => {}
            Err(WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError) => {
                return Err(SignatureError::Stale);
            }
            Err(_) => return Err(SignatureError::Mismatch),
        }
        let forget_before = now.checked_sub(self.tolerance * 2).unwrap_or(UNIX_EPOCH);
        self.seen.retain(|_, at| *at >= forget_before);
        if self.seen.contains_key(id) {
            return Err(SignatureError::Replayed);
        }
        self.seen.insert(id.to_owned(), now);
        Ok(id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn matches_the_reference_vector() {
        // The Standard Webhooks reference implementation's own test vector.
        let key = SigningKey::from_secret(SECRET).unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            key.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn the_reference_crate_verifies_our_headers() {
        let secret = new_secret();
        let key = SigningKey::from_secret(&secret).unwrap();
        let body = br#"{"type":"escalation.notify","data":{"step":0}}"#;
        let mut headers = http::HeaderMap::new();
        for (name, value) in key.headers("dlv_2", SystemTime::now(), body) {
            headers.insert(name, value.parse().unwrap());
        }
        let reference = standardwebhooks::Webhook::new(&secret).unwrap();
        reference.verify(body, &headers).unwrap();
        assert!(reference.verify(b"{\"tampered\":true}", &headers).is_err());
    }

    #[test]
    fn secrets_are_whsec_base64_of_enough_random_bytes() {
        let one = new_secret();
        assert!(one.starts_with("whsec_"));
        assert_ne!(one, new_secret());
        assert!(SigningKey::from_secret("not-a-secret").is_err());
        assert!(SigningKey::from_secret("whsec_!!!").is_err());
        assert!(SigningKey::from_secret("whsec_").is_err());
    }

    #[test]
    fn a_receiver_rejects_tampering_stale_timestamps_and_replays() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        let body = b"{\"n\":1}";
        // The reference crate holds timestamps to the real clock.
        let sent = SystemTime::now();
        let headers = key.headers("dlv_3", sent, body);
        let header = |name: &str| headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str());
        let mut receiver = Receiver::new(SECRET, Duration::from_secs(300)).unwrap();

        assert_eq!(receiver.accept(header, b"{\"n\":2}", sent), Err(SignatureError::Mismatch));
        assert_eq!(receiver.accept(header, body, sent + Duration::from_secs(301)), Err(SignatureError::Stale));
        assert_eq!(receiver.accept(header, body, sent - Duration::from_secs(301)), Err(SignatureError::Stale));
        assert_eq!(receiver.accept(header, body, sent + Duration::from_secs(5)), Ok("dlv_3".to_owned()));
        assert_eq!(receiver.accept(header, body, sent + Duration::from_secs(6)), Err(SignatureError::Replayed));

        // A signature list with an unknown version and a wrong one still
        // verifies through the right one.
        let timestamp = unix_seconds(sent);
        let right = key.sign("dlv_4", timestamp, body);
        let list = format!("v2,abc v1,AAAA {right}");
        let timestamp = timestamp.to_string();
        let fields =
            [("webhook-id", "dlv_4"), ("webhook-timestamp", timestamp.as_str()), ("webhook-signature", list.as_str())];
        let header = |name: &str| fields.iter().find(|(key, _)| *key == name).map(|(_, value)| *value);
        assert_eq!(receiver.accept(header, body, sent), Ok("dlv_4".to_owned()));
        let missing = |_: &str| None;
        assert_eq!(receiver.accept(missing, body, sent), Err(SignatureError::MissingHeader(HEADER_ID)));
    }
}
