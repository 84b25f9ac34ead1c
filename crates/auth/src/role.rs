//! What a caller may do.

use std::fmt;
use std::str::FromStr;

/// The kind of caller a token speaks for; carried in the token's `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A patient acting on their own record.
    Patient,
    /// A clinician caring for patients in their organisation.
    Clinician,
    /// A clinician who oversees other clinicians' caseloads.
    Supervisor,
    /// A machine client such as an EHR integration.
    Integration,
    /// An operator administering the organisation.
    Admin,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 5] = [Role::Patient, Role::Clinician, Role::Supervisor, Role::Integration, Role::Admin];

    /// The lowercase name used in tokens and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Clinician => "clinician",
            Role::Supervisor => "supervisor",
            Role::Integration => "integration",
            Role::Admin => "admin",
        }
    }
}

/// A role name that is not one of the five roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role: expected one of patient, clinician, supervisor, integration, admin")]
pub struct ParseRoleError;

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|role| role.as_str() == value).ok_or(ParseRoleError)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_through_text_and_serde() {
        for role in Role::ALL {
            let text = role.to_string();
            assert_eq!(text, text.to_lowercase());
            assert_eq!(text.parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        assert_eq!("supervisor".parse::<Role>(), Ok(Role::Supervisor));
    }

    #[test]
    fn role_rejects_unknown_and_differently_cased_names() {
        assert_eq!("Clinician".parse::<Role>(), Err(ParseRoleError));
        assert_eq!("root".parse::<Role>(), Err(ParseRoleError));
        assert_eq!("".parse::<Role>(), Err(ParseRoleError));
        assert!(serde_json::from_str::<Role>("\"ADMIN\"").is_err());
    }
}
