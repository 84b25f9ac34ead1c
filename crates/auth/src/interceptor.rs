//! The tonic interceptor that authenticates every request.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;

use crate::{AuthError, Caller, TokenExpiry, Verifier};

/// Verifies the `authorization: Bearer <jwt>` metadata of each request and stores the
/// resulting [`Caller`] in the request's extensions; rejects the request otherwise.
#[derive(Debug, Clone)]
pub struct AuthInterceptor {
    /// The verifier shared by every clone of the interceptor.
    pub verifier: Arc<Verifier>,
}

impl AuthInterceptor {
    /// An interceptor that verifies with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }

    /// The caller named by the bearer token in `metadata`.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        self.authenticate_with_expiry(metadata).map(|(caller, _)| caller)
    }

    /// The caller named by the bearer token in `metadata`, and until when its token is accepted.
    pub fn authenticate_with_expiry(&self, metadata: &MetadataMap) -> Result<(Caller, TokenExpiry), AuthError> {
        let token = bearer_token(metadata)?;
        self.verifier.verify_with_expiry(token)
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let (caller, expiry) = match self.authenticate_with_expiry(request.metadata()) {
            Ok(verified) => verified,
            Err(err) => {
                // The error never contains the token, so it is safe to log.
                tracing::debug!(error = %err, "rejected unauthenticated request");
                return Err(err.into());
            }
        };
        tracing::debug!(org = %caller.org, role = %caller.role, "authenticated caller");
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(expiry);
        Ok(request)
    }
}

/// The token from `authorization: Bearer <jwt>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let Some(value) = metadata.get("authorization") else {
        return Err(AuthError::MissingToken);
    };
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_proto::ids::OrgId;

    use super::*;
    use crate::{AuthConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER, Role, mint_token};

    const SECRET: [u8; 32] = [42; 32];

    fn interceptor() -> AuthInterceptor {
        AuthInterceptor::new(Arc::new(Verifier::new(AuthConfig::development(SECRET.to_vec())).unwrap()))
    }

    fn token() -> String {
        let org: OrgId = "northside".parse().unwrap();
        mint_token(&SECRET, DEFAULT_ISSUER, DEFAULT_AUDIENCE, &org, Role::Clinician, "clin-7", Duration::from_secs(300))
            .unwrap()
    }

    fn request_with(authorization: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn missing_header_is_unauthenticated_and_says_what_to_send() {
        let status = interceptor().call(request_with(None)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "missing bearer token: send metadata `authorization: Bearer <jwt>`");
    }

    #[test]
    fn wrong_scheme_is_unauthenticated() {
        let token = token();
        for value in [format!("Basic {token}"), token.clone(), "Bearer".to_owned(), "Bearer   ".to_owned()] {
            let status = interceptor().call(request_with(Some(&value))).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value}");
            assert!(!status.message().contains(&token), "the token must not be echoed");
        }
        let status = interceptor().call(request_with(Some(&format!("Basic {token}")))).unwrap_err();
        assert!(status.message().contains("bearer scheme"));
    }

    #[test]
    fn good_token_puts_the_caller_in_extensions() {
        let token = token();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let request = interceptor().call(request_with(Some(&format!("{scheme} {token}")))).unwrap();
            let caller = Caller::from_request(&request).unwrap();
            assert_eq!(caller.org.as_str(), "northside");
            assert_eq!(caller.role, Role::Clinician);
            assert_eq!(caller.subject, "clin-7");
        }
    }

    #[test]
    fn the_tokens_expiry_with_leeway_rides_beside_the_caller() {
        let before = std::time::SystemTime::now();
        let request = interceptor().call(request_with(Some(&format!("Bearer {}", token())))).unwrap();
        let until = crate::TokenExpiry::from_request(&request).expect("expiry in extensions");
        let leeway = Duration::from_secs(crate::DEFAULT_LEEWAY_SECS);
        // exp is whole seconds: minted within [before - 1 s, now] + 300 s.
        assert!(until >= before + Duration::from_secs(299) + leeway, "{until:?}");
        assert!(until <= std::time::SystemTime::now() + Duration::from_secs(300) + leeway, "{until:?}");
    }

    #[test]
    fn bad_token_is_unauthenticated_and_leaves_no_caller() {
        let org: OrgId = "northside".parse().unwrap();
        let ttl = Duration::from_secs(300);
        let forged = mint_token(&[7; 32], DEFAULT_ISSUER, DEFAULT_AUDIENCE, &org, Role::Admin, "x", ttl).unwrap();
        let status = interceptor().call(request_with(Some(&format!("Bearer {forged}")))).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().starts_with("token signature does not verify"));
    }
}
