//! Building the statuses callers see: field violations, details beside
//! them, typed ids. Which code a failure gets is decided in one place,
//! [`crate::error::ServiceError`].

use prost::{Message, Name};
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

/// `status` with `detail` added to its `google.rpc.Status` details, next to
/// those it has (a BadRequest, an ErrorInfo), and a new message.
pub fn with_detail<M: Name>(status: &Status, message: impl Into<String>, detail: &M) -> Status {
    let mut rpc = tonic_types::Status::decode(status.details()).unwrap_or_default();
    rpc.code = status.code() as i32;
    let message = message.into();
    rpc.message.clone_from(&message);
    match prost_types::Any::from_msg(detail) {
        Ok(any) => rpc.details.push(any),
        // Encoding into a Vec cannot run out of space.
        Err(error) => tracing::error!(%error, "cannot encode an error detail"),
    }
    Status::with_details_and_metadata(status.code(), message, rpc.encode_to_vec().into(), status.metadata().clone())
}

/// The detail of type `M` in a status's `google.rpc.Status` details, if any:
/// what a client does to read, e.g., the safety response of a refused check-in.
pub fn detail<M: Name + Default>(status: &Status) -> Option<M> {
    let rpc = tonic_types::Status::decode(status.details()).ok()?;
    rpc.details.iter().find(|any| any.type_url == M::type_url()).and_then(|any| any.to_msg().ok())
}

/// InvalidArgument for a single bad field.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    let mut violations = Violations::new();
    violations.add(field, description);
    violations.into_status()
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

#[cfg(test)]
mod tests {
    use tandem_proto::checkins::v1::SafetyResponse;

    use super::*;

    #[test]
    fn a_custom_detail_sits_beside_the_bad_request() {
        let status = invalid_field("journal", "at most 20,000 characters");
        let safety = SafetyResponse { triggers: vec!["crisis-language".into()], ..Default::default() };
        let with = with_detail(&status, "invalid request; help is available now", &safety);
        assert_eq!(with.code(), Code::InvalidArgument);
        assert_eq!(with.message(), "invalid request; help is available now");
        assert_eq!(with.get_details_bad_request().map(|b| b.field_violations.len()), Some(1));
        assert_eq!(detail::<SafetyResponse>(&with), Some(safety));
        assert_eq!(detail::<SafetyResponse>(&status), None);
    }
}
