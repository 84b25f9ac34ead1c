//! Authentication and authorisation failures, and their gRPC status codes.

use std::io;
use std::path::PathBuf;

use jsonwebtoken::Algorithm;

use crate::Role;

/// Why a caller could not be authenticated, or why the key setup failed.
///
/// Every message says what went wrong and what to do; none echoes the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request carried no token.
    #[error("missing bearer token: send metadata `authorization: Bearer <jwt>`")]
    MissingToken,
    /// The `authorization` metadata used another scheme or was not text.
    #[error("authorization metadata must use the bearer scheme: send `authorization: Bearer <jwt>`")]
    NotBearer,
    /// The token is not three base64url parts, or its header or claims are not JSON.
    #[error("token is not a well-formed jwt: expected three base64url parts separated by dots")]
    MalformedToken,
    /// The token header names an algorithm other than the one pinned to the key.
    #[error("token algorithm is not accepted: the verifying key is pinned to {expected:?}")]
    AlgorithmNotAllowed {
        /// The algorithm the selected key accepts.
        expected: Algorithm,
    },
    /// The signature was not made by the trusted key.
    #[error("token signature does not verify: it was not signed by a trusted key")]
    BadSignature,
    /// `exp` is in the past, beyond the leeway.
    #[error("token expired: obtain a new token")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token is not valid yet: its `nbf` is in the future, check the issuer's clock")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not trusted: `iss` must be the issuer this server is configured with")]
    UntrustedIssuer,
    /// `aud` does not include the configured audience.
    #[error("token audience does not match: `aud` must include this server's audience")]
    AudienceMismatch,
    /// A required claim is absent or has the wrong shape.
    #[error("token claim `{claim}` is missing or malformed")]
    Claim {
        /// The claim's name.
        claim: &'static str,
    },
    /// The token's `kid` names no key in the JWKS.
    #[error("unknown key id: the token's `kid` is not in the configured jwks, refresh the jwks file")]
    UnknownKeyId,
    /// The token has no `kid` and the JWKS holds more than one key.
    #[error("token header has no `kid` and the jwks holds {keys} keys: the issuer must set `kid`")]
    MissingKeyId {
        /// How many usable keys the JWKS holds.
        keys: usize,
    },
    /// The token failed verification for a reason the other variants do not name.
    #[error("token cannot be verified: {reason}")]
    Unverifiable {
        /// What the JWT library reported.
        reason: String,
    },
    /// The JWKS file could not be read.
    #[error("cannot read jwks file {}: {source}", path.display())]
    ReadJwks {
        /// The configured path.
        path: PathBuf,
        /// The I/O failure.
        source: io::Error,
    },
    /// The JWKS file is not a JSON Web Key Set.
    #[error("cannot parse jwks file {}: {source}; expected {{\"keys\": [...]}}", path.display())]
    ParseJwks {
        /// The configured path.
        path: PathBuf,
        /// The JSON failure.
        source: serde_json::Error,
    },
    /// One key of the JWKS file is unusable.
    #[error("jwks file {}: key {key} {problem}", path.display())]
    JwksKey {
        /// The configured path.
        path: PathBuf,
        /// The key's `kid`, or its position when it has none.
        key: String,
        /// What is wrong with it and what to do.
        problem: String,
    },
    /// The JWKS file holds no key this server can verify with.
    #[error(
        "jwks file {} holds no usable signing key: publish one with `alg` RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA",
        path.display()
    )]
    NoUsableKeys {
        /// The configured path.
        path: PathBuf,
    },
    /// The auth configuration is unusable.
    #[error("auth configuration is invalid: {problem}")]
    Config {
        /// What is wrong and what to do.
        problem: String,
    },
    /// The development signing key could not be read or written.
    #[error("cannot read or write development signing key {}: {source}", path.display())]
    DevKeyIo {
        /// The key file or its directory.
        path: PathBuf,
        /// The I/O failure.
        source: io::Error,
    },
    /// The development signing key file holds something other than a key.
    #[error(
        "development signing key {} is not 32 base64-encoded bytes: delete it and a new one is created",
        path.display()
    )]
    DevKeyCorrupt {
        /// The key file.
        path: PathBuf,
    },
    /// A token could not be minted.
    #[error("cannot mint token: {problem}")]
    Mint {
        /// What is wrong and what to do.
        problem: String,
    },
}

impl AuthError {
    /// Whether this error is about the presented token rather than the server's own setup.
    pub fn is_token_error(&self) -> bool {
        !matches!(
            self,
            AuthError::ReadJwks { .. }
                | AuthError::ParseJwks { .. }
                | AuthError::JwksKey { .. }
                | AuthError::NoUsableKeys { .. }
                | AuthError::Config { .. }
                | AuthError::DevKeyIo { .. }
                | AuthError::DevKeyCorrupt { .. }
                | AuthError::Mint { .. }
        )
    }
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        if err.is_token_error() {
            return tonic::Status::unauthenticated(err.to_string());
        }
        // Setup errors name server paths; a client needs none of that.
        tonic::Status::unauthenticated("authentication is unavailable: the server's key setup failed")
    }
}

/// Why an authenticated caller may not do what it asked.
///
/// Messages never name another organisation, so a denial reveals nothing about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// The caller's role is not among those the operation allows.
    #[error("permission denied: role `{role}` may not perform this operation")]
    RoleNotPermitted {
        /// The caller's own role.
        role: Role,
    },
    /// The operation names an organisation other than the caller's.
    #[error("permission denied: callers may act only within their own organisation")]
    OtherOrganisation,
}

impl From<AuthzError> for tonic::Status {
    fn from(err: AuthzError) -> Self {
        tonic::Status::permission_denied(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_map_to_unauthenticated_with_their_message() {
        let status = tonic::Status::from(AuthError::Expired);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "token expired: obtain a new token");
        let status = tonic::Status::from(AuthError::Claim { claim: "org" });
        assert_eq!(status.message(), "token claim `org` is missing or malformed");
    }

    #[test]
    fn setup_errors_map_to_unauthenticated_without_server_paths() {
        let err = AuthError::ReadJwks {
            path: PathBuf::from("/etc/tandem/secret-place/jwks.json"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(err.to_string().starts_with("cannot read jwks file /etc/tandem/secret-place/jwks.json"));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(!status.message().contains("secret-place"));
    }

    #[test]
    fn authz_errors_map_to_permission_denied() {
        let status = tonic::Status::from(AuthzError::RoleNotPermitted { role: Role::Patient });
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "permission denied: role `patient` may not perform this operation");
        let status = tonic::Status::from(AuthzError::OtherOrganisation);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
