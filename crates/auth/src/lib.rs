//! Who is calling: JWT verification, roles, the caller's identity and a tonic interceptor
//! that puts a verified [`Caller`] into every request's extensions.
//!
//! Production verifies tokens against a JWKS file published by the identity provider
//! ([`KeySource::JwksFile`]); `tandem up` uses a per-machine HS256 secret
//! ([`DevSigningKey`]) and [`mint_token`] to hand out development tokens.
//!
//! Handlers read the caller with [`Caller::from_request`] and check it with
//! [`Caller::require_role`] and [`Caller::require_org`].

mod caller;
mod dev;
mod error;
mod interceptor;
mod role;
mod verifier;

pub use caller::{Caller, TokenExpiry};
pub use dev::{DEV_SIGNING_KEY_FILE, DevSigningKey, mint_token};
pub use error::{AuthError, AuthzError};
pub use interceptor::AuthInterceptor;
pub use role::{ParseRoleError, Role};
pub use verifier::{AuthConfig, KeySource, Verifier};

/// Issuer of development tokens, and the default trusted issuer.
pub const DEFAULT_ISSUER: &str = "tandem-dev";

/// Audience of development tokens, and the default expected audience.
pub const DEFAULT_AUDIENCE: &str = "tandem";

/// Default clock-skew allowance, in seconds, for `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// Largest accepted clock-skew allowance, in seconds; more would keep expired tokens alive.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
