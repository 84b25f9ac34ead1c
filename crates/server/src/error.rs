//! The one mapping from what went wrong to the gRPC status a caller sees.
//!
//! Every service answers a failure through [`ServiceError`]; nothing else
//! picks a status code for a domain or storage failure. A service's
//! repository error converts into it in one place (`impl From<RepoError>
//! for ServiceError`, next to the error), so the api code writes `?`; a
//! second, mechanical `impl From<RepoError> for tonic::Status` (through
//! `ServiceError`) lets the generated trait methods, which return `Status`,
//! do the same.
//!
//! | class | code | message | details |
//! |---|---|---|---|
//! | [`Invalid`](ServiceError::Invalid) | INVALID_ARGUMENT | `invalid request: field: why; ...` | `google.rpc.BadRequest` |
//! | [`Denied`](ServiceError::Denied) | PERMISSION_DENIED | fixed words, the same whether or not the thing exists | — |
//! | [`NotFound`](ServiceError::NotFound) | NOT_FOUND | only where the caller may know it exists | — |
//! | [`Stale`](ServiceError::Stale) | ABORTED | reload and apply again | — |
//! | [`Exists`](ServiceError::Exists) | ALREADY_EXISTS | what exists, and what to do | — |
//! | [`KeyReused`](ServiceError::KeyReused) | FAILED_PRECONDITION | send a new key, or the first request unchanged | `ErrorInfo` [`KEY_REUSED`](crate::idempotency::KEY_REUSED) |
//! | [`Precondition`](ServiceError::Precondition) | FAILED_PRECONDITION | what to do first | — |
//! | [`Unavailable`](ServiceError::Unavailable) | UNAVAILABLE | retry | `RetryInfo`, `RequestInfo` (correlation id) |
//! | [`Internal`](ServiceError::Internal) | INTERNAL | correlation id, nothing else | `RequestInfo` (correlation id) |
//!
//! A database or broker that is away (connection refused, pool timed out,
//! I/O error, SQLite busy or locked past its busy timeout, PostgreSQL
//! shutting down or refusing connections: [`tandem_store::is_unavailable`])
//! is UNAVAILABLE, so an EHR retries an idempotent call; every other
//! failure of ours is INTERNAL. The cause of both is logged with the
//! correlation id (the call's trace id, or a fresh id when there is no
//! trace) and never sent: a database error can quote stored values, and
//! patient text never leaves in a status message.
//!
//! A status built elsewhere passes through unchanged
//! ([`Status`](ServiceError::Status)): authentication, stream limits, and a
//! refused crisis check-in whose status carries the safety response as a
//! detail, which must never be rebuilt without it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::idempotency::KEY_REUSED;
use crate::status::Violations;

/// A cause kept for the log, never for the caller.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How long a client waits before retrying an UNAVAILABLE call, as a hint.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a call failed, in the classes callers act on; see the module docs
/// for the status each becomes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// The caller may not do this, or the thing does not exist: the same
    /// words either way, so a denial reveals nothing.
    #[error("{0}")]
    Denied(Cow<'static, str>),
    /// The thing does not exist, where the caller may know whether it does.
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The caller's change is based on a version that is no longer current
    /// (optimistic concurrency).
    #[error("{0}")]
    Stale(String),
    /// What the request would create exists already.
    #[error("{0}")]
    Exists(Cow<'static, str>),
    /// The idempotency key was used before for a different request.
    #[error("idempotency_key was already used for a different request")]
    KeyReused,
    /// The request is valid but the state does not allow it now.
    #[error("{0}")]
    Precondition(Cow<'static, str>),
    /// A database or broker is away; the same call may succeed later.
    #[error("a database or broker is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A fault of ours.
    #[error("internal error: {0}")]
    Internal(#[source] Cause),
    /// A status built elsewhere, passed on unchanged.
    #[error("{}", .0.message())]
    Status(Status),
}

impl ServiceError {
    /// PERMISSION_DENIED with `message`.
    pub fn denied(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Denied(message.into())
    }

    /// NOT_FOUND with `message`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::NotFound(message.into())
    }

    /// FAILED_PRECONDITION with `message`.
    pub fn precondition(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Precondition(message.into())
    }

    /// ALREADY_EXISTS with `message`.
    pub fn exists(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Exists(message.into())
    }

    /// INTERNAL for `cause`.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Self::Internal(cause.into())
    }

    /// UNAVAILABLE for `cause`.
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }

    /// The code this error becomes.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Denied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::Stale(_) => Code::Aborted,
            Self::Exists(_) => Code::AlreadyExists,
            Self::KeyReused | Self::Precondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Status(status) => status.code(),
        }
    }
}

impl From<Violations> for ServiceError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<Status> for ServiceError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<tandem_store::StoreError> for ServiceError {
    fn from(error: tandem_store::StoreError) -> Self {
        if error.is_unavailable() { Self::unavailable(error) } else { Self::internal(error) }
    }
}

impl From<tandem_store::sqlx::Error> for ServiceError {
    fn from(error: tandem_store::sqlx::Error) -> Self {
        tandem_store::StoreError::Sql(error).into()
    }
}

impl From<tandem_events::Error> for ServiceError {
    fn from(error: tandem_events::Error) -> Self {
        use tandem_events::Error as E;
        match error {
            E::Sql(error) => error.into(),
            E::Store(error) => error.into(),
            E::EmbeddedOpen { ref source, .. } if tandem_store::is_unavailable(source) => Self::unavailable(error),
            // The broker refused or failed, a record was not delivered, or
            // the bus is shutting down: each passes.
            E::Kafka { .. } | E::NotDelivered(_) | E::Closed => Self::unavailable(error),
            other => Self::internal(other),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Invalid(violations) => violations.into_status(),
            ServiceError::Denied(message) => Status::permission_denied(message),
            ServiceError::NotFound(message) => Status::not_found(message),
            ServiceError::Stale(message) => Status::aborted(message),
            ServiceError::Exists(message) => Status::already_exists(message),
            ServiceError::KeyReused => Status::with_error_details(
                Code::FailedPrecondition,
                "idempotency_key was already used for a different request: send a new key for a new request, \
                 or resend the first request unchanged to get its result",
                ErrorDetails::with_error_info(KEY_REUSED, "tandem", HashMap::new()),
            ),
            ServiceError::Precondition(message) => Status::failed_precondition(message),
            ServiceError::Unavailable(cause) => {
                let id = correlation_id();
                tracing::warn!(error = %cause, correlation_id = %id, "a database or broker is unavailable; the call may be retried");
                let mut details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
                details.set_request_info(id.clone(), "");
                Status::with_error_details(
                    Code::Unavailable,
                    format!(
                        "temporarily unavailable: a database or broker this call needs did not answer; nothing was \
                         changed, retry the same request in a moment (correlation id {id})"
                    ),
                    details,
                )
            }
            ServiceError::Internal(cause) => {
                let id = correlation_id();
                tracing::error!(error = %cause, correlation_id = %id, "internal error");
                Status::with_error_details(
                    Code::Internal,
                    format!("internal error (correlation id {id}); it was logged: give the id to your Tandem operator"),
                    ErrorDetails::with_request_info(id, ""),
                )
            }
            ServiceError::Status(status) => status,
        }
    }
}

/// The id a caller quotes and the log records for one failure: the call's
/// trace id, so the failure is found beside the rest of the call, or a
/// fresh one when the call has no trace.
fn correlation_id() -> String {
    tandem_telemetry::current_traceparent()
        .and_then(|traceparent| traceparent.split('-').nth(1).map(str::to_owned))
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENT_TEXT: &str = "Alex Example wrote: I want to end it";

    /// A cause that quotes patient text, as a database error quoting a
    /// stored value would.
    fn leaky() -> std::io::Error {
        std::io::Error::other(PATIENT_TEXT)
    }

    fn request_id(status: &Status) -> Option<String> {
        status.get_details_request_info().map(|info| info.request_id)
    }

    #[test]
    fn each_class_has_its_code() {
        let mut violations = Violations::new();
        violations.add("journal", "at most 20,000 characters");
        let cases = [
            (ServiceError::from(violations), Code::InvalidArgument),
            (ServiceError::denied("no"), Code::PermissionDenied),
            (ServiceError::not_found("none"), Code::NotFound),
            (ServiceError::Stale("stale".into()), Code::Aborted),
            (ServiceError::exists("exists"), Code::AlreadyExists),
            (ServiceError::KeyReused, Code::FailedPrecondition),
            (ServiceError::precondition("first"), Code::FailedPrecondition),
            (ServiceError::unavailable(leaky()), Code::Unavailable),
            (ServiceError::internal(leaky()), Code::Internal),
            (ServiceError::from(Status::resource_exhausted("limit")), Code::ResourceExhausted),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error:?}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
        }
    }

    #[test]
    fn invalid_input_lists_the_fields() {
        let mut violations = Violations::new();
        violations.add("journal", "at most 20,000 characters");
        let status = Status::from(ServiceError::from(violations));
        assert_eq!(status.message(), "invalid request: journal: at most 20,000 characters");
        let bad = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "journal");
    }

    #[test]
    fn a_reused_key_says_so_in_its_error_info() {
        let status = Status::from(ServiceError::KeyReused);
        assert!(status.message().contains("idempotency_key"), "{}", status.message());
        assert_eq!(status.get_details_error_info().map(|info| info.reason), Some(KEY_REUSED.to_owned()));
    }

    #[test]
    fn internal_carries_a_correlation_id_and_nothing_of_the_cause() {
        let first = Status::from(ServiceError::internal(leaky()));
        let second = Status::from(ServiceError::internal(leaky()));
        assert!(!first.message().contains("Alex") && !first.message().contains("end it"), "{}", first.message());
        let id = request_id(&first).expect("a RequestInfo with the correlation id");
        assert_eq!(id.len(), 32, "{id}");
        assert!(first.message().contains(&id), "the message quotes the id: {}", first.message());
        assert_ne!(Some(id), request_id(&second), "each failure has its own id without a trace");
    }

    #[test]
    fn unavailable_says_to_retry_and_nothing_of_the_cause() {
        let status = Status::from(ServiceError::unavailable(leaky()));
        assert!(status.message().contains("retry"), "{}", status.message());
        assert!(!status.message().contains("Alex"), "{}", status.message());
        assert_eq!(status.get_details_retry_info().and_then(|info| info.retry_delay), Some(RETRY_AFTER));
        assert!(request_id(&status).is_some_and(|id| status.message().contains(&id)));
    }

    #[test]
    fn storage_errors_are_unavailable_only_when_the_database_is_away() {
        let away = tandem_store::sqlx::Error::PoolTimedOut;
        assert_eq!(ServiceError::from(away).code(), Code::Unavailable);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(ServiceError::from(tandem_store::sqlx::Error::Io(refused)).code(), Code::Unavailable);
        let wrong = tandem_store::sqlx::Error::ColumnNotFound("name".into());
        assert_eq!(ServiceError::from(wrong).code(), Code::Internal);
        let outbox = tandem_events::Error::Sql(tandem_store::sqlx::Error::PoolTimedOut);
        assert_eq!(ServiceError::from(outbox).code(), Code::Unavailable);
        let envelope = tandem_events::Error::InvalidEnvelope("no patient".into());
        assert_eq!(ServiceError::from(envelope).code(), Code::Internal);
        assert_eq!(ServiceError::from(tandem_events::Error::Closed).code(), Code::Unavailable);
    }

    #[test]
    fn a_status_built_elsewhere_keeps_its_details() {
        let safety =
            tandem_proto::checkins::v1::SafetyResponse { triggers: vec!["phq9-item9".into()], ..Default::default() };
        let refused = crate::status::with_detail(&Status::from(ServiceError::KeyReused), "help is available", &safety);
        let passed = Status::from(ServiceError::from(refused));
        assert_eq!(passed.code(), Code::FailedPrecondition);
        assert_eq!(crate::status::detail(&passed), Some(safety));
        assert_eq!(passed.get_details_error_info().map(|info| info.reason), Some(KEY_REUSED.to_owned()));
    }
}
