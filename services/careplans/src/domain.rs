//! The service's domain types: parsed, so a value that exists is valid.

use std::time::SystemTime;

use tandem_proto::ids::{OrgId, PatientId};

/// A patient enrolled in an organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// Tandem's id.
    pub id: PatientId,
    /// The organisation.
    pub org: OrgId,
    /// The EHR's identifier, unique within the org.
    pub external_id: String,
    /// The name clinicians see.
    pub display_name: String,
    /// An IANA time zone name.
    pub time_zone: chrono_tz::Tz,
    /// When the patient was enrolled.
    pub enrolled_at: SystemTime,
}

/// What an enrolment asks for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPatient {
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// The EHR's identifier.
    pub external_id: String,
    /// The name clinicians see.
    pub display_name: String,
    /// The patient's time zone.
    pub time_zone: chrono_tz::Tz,
}
