//! The verified identity behind a request.

use tandem_proto::ids::{OrgId, PatientId};

use crate::{AuthzError, Role};

/// A verified caller, built from a token's claims and placed in the request's extensions by
/// [`crate::AuthInterceptor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The organisation (tenant) the caller acts in; the token's `org` claim.
    pub org: OrgId,
    /// What the caller is; the token's `role` claim.
    pub role: Role,
    /// The token's `sub` claim: a patient's [`PatientId`] as text, a clinician's id, or an
    /// integration's client id.
    pub subject: String,
}

/// When the token behind a request stops being accepted: its `exp` plus
/// the verifier's clock-skew leeway. [`crate::AuthInterceptor`] stores it
/// beside the [`Caller`], so that calls that outlive a request (streams)
/// can end when their token does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry(pub std::time::SystemTime);

impl TokenExpiry {
    /// The expiry the interceptor attached to `request`, if any.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Option<std::time::SystemTime> {
        request.extensions().get::<TokenExpiry>().map(|expiry| expiry.0)
    }
}

impl Caller {
    /// The caller the interceptor attached to `request`.
    ///
    /// Fails only when the service was mounted without [`crate::AuthInterceptor`], which is a
    /// wiring bug, not a client mistake.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
        match request.extensions().get::<Caller>() {
            Some(caller) => Ok(caller),
            None => {
                tracing::error!("request reached a handler without an authenticated caller");
                Err(tonic::Status::unauthenticated(
                    "no authenticated caller: the server did not install the auth interceptor on this service",
                ))
            }
        }
    }

    /// Succeeds when the caller's role is one of `allowed`.
    pub fn require_role(&self, allowed: &[Role]) -> Result<(), AuthzError> {
        if allowed.contains(&self.role) {
            return Ok(());
        }
        Err(AuthzError::RoleNotPermitted { role: self.role })
    }

    /// Succeeds when `org` is the caller's own organisation.
    pub fn require_org(&self, org: &OrgId) -> Result<(), AuthzError> {
        if &self.org == org {
            return Ok(());
        }
        Err(AuthzError::OtherOrganisation)
    }

    /// The caller as the contracts record who did something.
    pub fn actor(&self) -> tandem_proto::common::v1::Actor {
        use tandem_proto::common::v1::Role as Wire;
        let role = match self.role {
            Role::Patient => Wire::Patient,
            Role::Clinician => Wire::Clinician,
            Role::Supervisor => Wire::Supervisor,
            Role::Integration => Wire::Integration,
            Role::Admin => Wire::Admin,
        };
        tandem_proto::common::v1::Actor { subject: self.subject.clone(), role: role as i32 }
    }

    /// The patient this caller is, when it is a patient.
    pub fn patient_id(&self) -> Option<PatientId> {
        if self.role != Role::Patient {
            return None;
        }
        self.subject.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clinician(org: &str) -> Caller {
        Caller { org: org.parse().unwrap(), role: Role::Clinician, subject: "c-17".to_owned() }
    }

    #[test]
    fn require_role_allows_listed_roles_only() {
        let caller = clinician("northside");
        assert_eq!(caller.require_role(&[Role::Clinician, Role::Supervisor]), Ok(()));
        assert_eq!(caller.require_role(&[Role::Admin]), Err(AuthzError::RoleNotPermitted { role: Role::Clinician }));
        assert!(caller.require_role(&[]).is_err());
    }

    #[test]
    fn require_org_denies_other_orgs_without_naming_them() {
        let caller = clinician("northside");
        assert_eq!(caller.require_org(&"northside".parse().unwrap()), Ok(()));
        let err = caller.require_org(&"southside-secret".parse().unwrap()).unwrap_err();
        assert_eq!(err, AuthzError::OtherOrganisation);
        let message = err.to_string();
        assert!(!message.contains("southside-secret"));
        assert!(!message.contains("northside"));
    }

    #[test]
    fn patient_id_is_only_for_patients() {
        let id = PatientId::new();
        let patient = Caller { org: "northside".parse().unwrap(), role: Role::Patient, subject: id.to_string() };
        assert_eq!(patient.patient_id(), Some(id));
        let clinician = Caller { role: Role::Clinician, ..patient };
        assert_eq!(clinician.patient_id(), None);
    }

    #[test]
    fn from_request_reads_extensions_and_explains_a_missing_interceptor() {
        let mut request = tonic::Request::new(());
        let status = Caller::from_request(&request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("interceptor"));

        request.extensions_mut().insert(clinician("northside"));
        assert_eq!(Caller::from_request(&request).unwrap(), &clinician("northside"));
    }
}
