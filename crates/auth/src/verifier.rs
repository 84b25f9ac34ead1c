//! Token verification: key loading, algorithm pinning and claim checks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tandem_proto::ids::{OrgId, PatientId};

use crate::{
    AuthError, Caller, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_LEEWAY_SECS, MAX_LEEWAY_SECS, MIN_HS256_SECRET_BYTES,
    Role, TokenExpiry,
};

/// Asymmetric algorithms a JWKS key may be pinned to.
const JWKS_ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// RSA moduli below 2048 bits are breakable; NIST SP 800-57 retired them after 2013.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Where verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// A shared HS256 secret; for development (`tandem up`) only.
    Hs256Secret(Vec<u8>),
    /// A JSON Web Key Set file of public keys published by the identity provider.
    JwksFile(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Hs256Secret(_) => f.write_str("Hs256Secret([redacted])"),
            KeySource::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
        }
    }
}

/// What a token must satisfy to be accepted.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The only trusted `iss`.
    pub issuer: String,
    /// The audience that `aud` must contain.
    pub audience: String,
    /// Where the verification keys come from.
    pub keys: KeySource,
    /// Clock-skew allowance for `exp` and `nbf`, at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
}

impl AuthConfig {
    /// The development configuration: default issuer and audience, an HS256 secret.
    pub fn development(secret: Vec<u8>) -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            keys: KeySource::Hs256Secret(secret),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// One key a token may be verified with, pinned to one algorithm.
struct TrustedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies bearer tokens and turns them into [`Caller`]s.
pub struct Verifier {
    hs256: bool,
    keys: Vec<TrustedKey>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(Option<&str>, Algorithm)> =
            self.keys.iter().map(|key| (key.kid.as_deref(), key.algorithm)).collect();
        f.debug_struct("Verifier").field("keys", &keys).finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the keys named by `config` and checks the configuration.
    pub fn new(config: AuthConfig) -> Result<Verifier, AuthError> {
        if config.issuer.is_empty() {
            return Err(config_error("issuer is empty: set the issuer your identity provider puts in `iss`"));
        }
        if config.audience.is_empty() {
            return Err(config_error("audience is empty: set the audience your tokens carry in `aud`"));
        }
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthError::Config {
                problem: format!(
                    "leeway of {} seconds is more than the maximum {MAX_LEEWAY_SECS}: fix the clocks instead",
                    config.leeway_secs
                ),
            });
        }
        let base = |algorithm: Algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.leeway = config.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = true;
            validation.set_issuer(&[&config.issuer]);
            validation.set_audience(&[&config.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation
        };
        match &config.keys {
            KeySource::Hs256Secret(secret) => {
                check_hs256_secret(secret)?;
                let key = DecodingKey::from_secret(secret)
                    .map_err(|err| config_error(format!("hs256 secret is unusable: {err}")))?;
                let algorithm = Algorithm::HS256;
                let keys = vec![TrustedKey { kid: None, algorithm, key, validation: base(algorithm) }];
                Ok(Verifier { hs256: true, keys })
            }
            KeySource::JwksFile(path) => {
                let keys = load_jwks(path)?
                    .into_iter()
                    .map(|(kid, algorithm, key)| TrustedKey { kid, algorithm, key, validation: base(algorithm) })
                    .collect();
                Ok(Verifier { hs256: false, keys })
            }
        }
    }

    /// Verifies `token` (the JWT alone, without `Bearer `) and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        self.verify_with_expiry(token).map(|(caller, _)| caller)
    }

    /// As [`Verifier::verify`], also saying until when the token is accepted.
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Caller, TokenExpiry), AuthError> {
        let header = peek_header(token)?;
        let trusted = self.select_key(header.kid.as_deref())?;
        // Pin the algorithm to the key, never to what the token claims: this is what stops
        // `alg: none` and RS256-public-key-as-HMAC-secret forgeries.
        if Algorithm::from_str(&header.alg).ok() != Some(trusted.algorithm) {
            return Err(AuthError::AlgorithmNotAllowed { expected: trusted.algorithm });
        }
        let data = jsonwebtoken::decode::<Value>(token, &trusted.key, &trusted.validation).map_err(token_error)?;
        let caller = caller_from_claims(&data.claims)?;
        // `exp` is required and was checked; the leeway is how long after it
        // the token is still accepted.
        let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(AuthError::Claim { claim: "exp" })?;
        let until =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp.saturating_add(trusted.validation.leeway));
        Ok((caller, TokenExpiry(until)))
    }

    fn select_key(&self, kid: Option<&str>) -> Result<&TrustedKey, AuthError> {
        if self.hs256 {
            // One shared secret; a `kid` chooses nothing.
            return self.keys.first().ok_or(AuthError::UnknownKeyId);
        }
        match kid {
            Some(kid) => self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)).ok_or(AuthError::UnknownKeyId),
            None => match self.keys.as_slice() {
                [only] => Ok(only),
                keys => Err(AuthError::MissingKeyId { keys: keys.len() }),
            },
        }
    }
}

fn config_error(problem: impl Into<String>) -> AuthError {
    AuthError::Config { problem: problem.into() }
}

/// Rejects secrets too short for HS256.
pub(crate) fn check_hs256_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(AuthError::Config {
            problem: format!(
                "hs256 secret is {} bytes, fewer than {MIN_HS256_SECRET_BYTES}: use DevSigningKey or 32 random bytes",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// The header fields needed before the signature can be checked.
#[derive(serde::Deserialize)]
struct PeekedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn peek_header(token: &str) -> Result<PeekedHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::MalformedToken);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::MalformedToken)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::MalformedToken)
}

fn token_error(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.into_kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::UntrustedIssuer,
        ErrorKind::InvalidAudience => AuthError::AudienceMismatch,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Claim { claim: spec_claim_name(&claim) }
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::MalformedToken
        }
        other => AuthError::Unverifiable { reason: format!("{other:?}").to_lowercase() },
    }
}

/// The static name of a registered claim the JWT library reports.
fn spec_claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}

fn caller_from_claims(claims: &Value) -> Result<Caller, AuthError> {
    let text = |claim: &'static str| claims.get(claim).and_then(Value::as_str).ok_or(AuthError::Claim { claim });
    let subject = text("sub")?;
    if subject.is_empty() {
        return Err(AuthError::Claim { claim: "sub" });
    }
    let org: OrgId = text("org")?.parse().map_err(|_| AuthError::Claim { claim: "org" })?;
    let role: Role = text("role")?.parse().map_err(|_| AuthError::Claim { claim: "role" })?;
    // A patient's subject is their id; services rely on `Caller::patient_id` for ownership.
    if role == Role::Patient && subject.parse::<PatientId>().is_err() {
        return Err(AuthError::Claim { claim: "sub" });
    }
    Ok(Caller { org, role, subject: subject.to_owned() })
}

/// Reads a JWKS file into (kid, pinned algorithm, key) triples.
fn load_jwks(path: &Path) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadJwks { path: path.to_owned(), source })?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|source| AuthError::ParseJwks { path: path.to_owned(), source })?;

    let mut keys: Vec<(Option<String>, Algorithm, DecodingKey)> = Vec::with_capacity(set.keys.len());
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("`{kid}`"),
            None => format!("#{index}"),
        };
        let key_error = |problem: String| AuthError::JwksKey { path: path.to_owned(), key: name.clone(), problem };
        if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
            tracing::debug!(key = %name, "skipping jwks key that is not for signatures");
            continue;
        }
        let Some(key_algorithm) = jwk.common.key_algorithm else {
            return Err(key_error(
                "has no `alg`: every signing key must name its algorithm so tokens cannot choose it".to_owned(),
            ));
        };
        let algorithm = match Algorithm::try_from(key_algorithm) {
            Ok(algorithm) if JWKS_ALGORITHMS.contains(&algorithm) => algorithm,
            _ => {
                tracing::warn!(
                    key = %name,
                    alg = %key_algorithm,
                    "skipping jwks key with an unsupported algorithm; supported: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"
                );
                continue;
            }
        };
        check_key_shape(jwk, algorithm).map_err(key_error)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|err| key_error(format!("cannot be decoded: {err}")))?;
        // Build a verifier once now so a broken key fails at startup, not on the first request.
        jsonwebtoken::crypto::verify("AA", b"probe", &key, algorithm)
            .map_err(|err| key_error(format!("is not a valid {algorithm:?} public key: {err}")))?;
        if let Some(kid) = &jwk.common.key_id
            && keys.iter().any(|(other, _, _)| other.as_deref() == Some(kid.as_str()))
        {
            return Err(key_error("appears twice: each `kid` must be unique".to_owned()));
        }
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }

    if keys.is_empty() {
        return Err(AuthError::NoUsableKeys { path: path.to_owned() });
    }
    if keys.len() > 1 && keys.iter().any(|(kid, _, _)| kid.is_none()) {
        tracing::warn!(
            path = %path.display(),
            "jwks holds several keys and some have no `kid`; tokens can never select those"
        );
    }
    Ok(keys)
}

/// Checks that a key's parameters fit the algorithm it is pinned to.
fn check_key_shape(jwk: &Jwk, algorithm: Algorithm) -> Result<(), String> {
    match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(rsa), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256) => {
            let modulus = URL_SAFE_NO_PAD.decode(&rsa.n).map_err(|_| "has an `n` that is not base64url".to_owned())?;
            let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(format!("is a {}-bit rsa key: use at least 2048 bits", significant * 8));
            }
            Ok(())
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) if ec.curve == EllipticCurve::P256 => Ok(()),
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) if ec.curve == EllipticCurve::P384 => Ok(()),
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) if okp.curve == EllipticCurve::Ed25519 => {
            // The verifier slices the first 32 bytes and would panic on a shorter key.
            match URL_SAFE_NO_PAD.decode(&okp.x) {
                Ok(x) if x.len() == 32 => Ok(()),
                _ => Err("has an `x` that is not a 32-byte Ed25519 public key".to_owned()),
            }
        }
        (_, algorithm) => Err(format!(
            "does not match its `alg` {algorithm:?}: RS*/PS* need kty RSA, ES256 needs EC P-256, ES384 needs EC P-384, EdDSA needs OKP Ed25519"
        )),
    }
}

#[cfg(test)]
mod tests;
