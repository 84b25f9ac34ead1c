//! Building the statuses callers see.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Collects field violations while validating a request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid, and why (and what to send instead).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Whether any violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when empty, else InvalidArgument with a `google.rpc.BadRequest`.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(self.into_status())
    }

    /// InvalidArgument with a `google.rpc.BadRequest` listing every violation.
    pub fn into_status(self) -> Status {
        let summary = self
            .0
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {summary}"),
            ErrorDetails::with_bad_request(self.0),
        )
    }
}

/// InvalidArgument for a single bad field.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    let mut violations = Violations::new();
    violations.add(field, description);
    violations.into_status()
}

/// Internal, without leaking the cause to the caller; the cause is logged.
pub fn internal(error: &dyn std::error::Error) -> Status {
    tracing::error!(error = %error, "internal error");
    Status::internal("internal error; it was logged, try again or contact your Tandem operator")
}

/// A required typed id from its wire message: InvalidArgument on `field`
/// when absent (saying `what` to send) or on `field.value` when malformed.
pub fn required_id<W, T>(field: &str, id: Option<&W>, what: &str) -> Result<T, Status>
where
    T: for<'a> TryFrom<&'a W, Error = tandem_proto::ids::IdError>,
{
    let Some(id) = id else {
        return Err(invalid_field(field, format!("required: {what}")));
    };
    T::try_from(id).map_err(|error| invalid_field(format!("{field}.value"), error.to_string()))
}

/// A required patient id (see [`required_id`]).
pub fn patient_id(
    field: &str,
    id: Option<&tandem_proto::common::v1::PatientId>,
) -> Result<tandem_proto::ids::PatientId, Status> {
    required_id(field, id, "the patient's id")
}
