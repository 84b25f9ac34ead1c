//! Typed identifiers that cross module boundaries.
//!
//! Parse, don't validate: a value of one of these types is well formed, so code
//! that holds one never checks it again.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why an identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    /// The value was not a UUID.
    #[error(
        "{kind} must be a UUID such as 0190b6f4-7c1a-7d4e-9a51-3f1f2a9e0c11, got {len} characters that are not one"
    )]
    NotUuid { kind: &'static str, len: usize },
    /// The value had characters outside the allowed set or was too long.
    #[error("{kind} must be 1-64 characters of a-z, 0-9, '-' or '_' starting with a letter or digit")]
    BadSlug { kind: &'static str },
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The identifier as a UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                if value.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                Uuid::parse_str(value)
                    .map(Self)
                    .map_err(|_| IdError::NotUuid { kind: $kind, len: value.chars().count() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Hyphenated lowercase, the form every API and table uses.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// A patient, unique across all organisations.
    PatientId,
    "patient id"
);
uuid_id!(
    /// A care plan.
    CarePlanId,
    "care plan id"
);
uuid_id!(
    /// A patient check-in.
    CheckInId,
    "check-in id"
);
uuid_id!(
    /// An escalation raised by triage.
    EscalationId,
    "escalation id"
);
uuid_id!(
    /// An event on the bus.
    EventId,
    "event id"
);

/// An organisation (tenant): a short slug such as `northside-clinic`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

impl OrgId {
    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OrgId {
    type Err = IdError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Err(IdError::Empty { kind: "org id" });
        }
        let well_formed = value.len() <= 64
            && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed {
            return Err(IdError::BadSlug { kind: "org id" });
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for OrgId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for OrgId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_id_round_trips_through_text() {
        let id = PatientId::new();
        let parsed: PatientId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn patient_id_rejects_non_uuid() {
        assert_eq!("mrn-123".parse::<PatientId>(), Err(IdError::NotUuid { kind: "patient id", len: 7 }));
        assert_eq!("".parse::<PatientId>(), Err(IdError::Empty { kind: "patient id" }));
    }

    #[test]
    fn org_id_accepts_slugs_only() {
        assert!("northside-clinic".parse::<OrgId>().is_ok());
        assert!("org_2".parse::<OrgId>().is_ok());
        assert!("Northside".parse::<OrgId>().is_err());
        assert!("-lead".parse::<OrgId>().is_err());
        assert!("a b".parse::<OrgId>().is_err());
        assert!("x".repeat(65).parse::<OrgId>().is_err());
    }
}
