//! Idempotency keys. A retry with the same key and the same request replays
//! the first result; the same key with a different request is a conflict,
//! never a silent replay (a changed answer can carry a crisis the first one
//! did not). Keys are scoped by each service to (org, patient or caller,
//! operation), so one caller's key can never reach another patient's data.

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::ServiceError;

/// The `ErrorInfo.reason` of a key conflict, for clients that branch on it.
pub const KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";

/// A hex SHA-256 of what a request asks for. Pass the request with its
/// idempotency key cleared: the key names the request, it is not part of it.
pub fn fingerprint<M: Message>(request: &M) -> String {
    let digest = Sha256::digest(request.encode_to_vec());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether a stored request matches a new one. Rows stored before
/// fingerprints existed have none and replay as they always did.
pub fn same_request(stored: Option<&str>, new: &str) -> bool {
    stored.is_none_or(|stored| stored == new)
}

/// FAILED_PRECONDITION for a key reused with a different request
/// ([`ServiceError::KeyReused`]), with an `ErrorInfo` whose reason is
/// [`KEY_REUSED`].
pub fn key_conflict() -> Status {
    ServiceError::KeyReused.into()
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn fingerprints_differ_with_content_and_match_without() {
        let a = prost_types::Duration { seconds: 1, nanos: 0 };
        let b = prost_types::Duration { seconds: 2, nanos: 0 };
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 64);
    }

    #[test]
    fn legacy_rows_replay_and_different_requests_conflict() {
        assert!(same_request(None, "x"));
        assert!(same_request(Some("x"), "x"));
        assert!(!same_request(Some("x"), "y"));
        assert_eq!(key_conflict().code(), Code::FailedPrecondition);
    }
}
