//! Tests of token verification; key material comes from `tests/fixtures` (test-only keys).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, get_current_timestamp};
use serde_json::{Value, json};
use tandem_proto::ids::PatientId;

use super::*;

const SECRET: [u8; 32] = [9; 32];
const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-rsa-key.pem");
const EC_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-ec-p256-key.pem");
const OTHER_EC_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-ec-p256-other-key.pem");
const ED_PEM: &[u8] = include_bytes!("../../tests/fixtures/test-ed25519-key.pem");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn claims() -> Value {
    let now = get_current_timestamp();
    json!({
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": "clin-42",
        "org": "northside-clinic",
        "role": "clinician",
        "iat": now,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn hs_token(secret: &[u8], algorithm: Algorithm, claims: &Value) -> String {
    sign(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret).unwrap())
}

fn hs256(claims: &Value) -> String {
    hs_token(&SECRET, Algorithm::HS256, claims)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn hs_verifier() -> Verifier {
    Verifier::new(AuthConfig::development(SECRET.to_vec())).unwrap()
}

fn jwks_verifier(path: PathBuf) -> Result<Verifier, AuthError> {
    Verifier::new(AuthConfig {
        issuer: DEFAULT_ISSUER.to_owned(),
        audience: DEFAULT_AUDIENCE.to_owned(),
        keys: KeySource::JwksFile(path),
        leeway_secs: 0,
    })
}

fn header(algorithm: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    header
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PEM).unwrap()
}

/// The fixture JWKS with only the keys whose `kid` is listed.
fn jwks_with(kids: &[&str]) -> Value {
    let text = std::fs::read_to_string(fixture("test-jwks.json")).unwrap();
    let mut set: Value = serde_json::from_str(&text).unwrap();
    let keys = set["keys"].as_array_mut().unwrap();
    keys.retain(|key| kids.contains(&key["kid"].as_str().unwrap()));
    assert_eq!(keys.len(), kids.len());
    set
}

fn write_jwks(dir: &tempfile::TempDir, jwks: &Value) -> PathBuf {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec_pretty(jwks).unwrap()).unwrap();
    path
}

// --- HS256 (development) ---

#[test]
fn valid_hs256_token_yields_its_caller() {
    let caller = hs_verifier().verify(&hs256(&claims())).unwrap();
    assert_eq!(
        caller,
        Caller { org: "northside-clinic".parse().unwrap(), role: Role::Clinician, subject: "clin-42".to_owned() }
    );
}

#[test]
fn audience_may_be_an_array_that_contains_ours() {
    let token = hs256(&with(claims(), "aud", json!(["billing", DEFAULT_AUDIENCE])));
    assert!(hs_verifier().verify(&token).is_ok());
    let token = hs256(&with(claims(), "aud", json!(["billing", "reports"])));
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::AudienceMismatch)));
}

#[test]
fn patient_token_carries_the_patient_id() {
    let patient = PatientId::new();
    let token = hs256(&with(with(claims(), "role", json!("patient")), "sub", json!(patient.to_string())));
    let caller = hs_verifier().verify(&token).unwrap();
    assert_eq!(caller.patient_id(), Some(patient));
}

#[test]
fn expired_token_is_rejected() {
    let now = get_current_timestamp();
    let token = hs256(&with(claims(), "exp", json!(now - 3600)));
    let err = hs_verifier().verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::Expired), "{err}");
    assert!(err.to_string().starts_with("token expired"));
}

#[test]
fn leeway_tolerates_small_clock_skew_only() {
    let now = get_current_timestamp();
    // DEFAULT_LEEWAY_SECS is 60.
    let token = hs256(&with(claims(), "exp", json!(now - 20)));
    assert!(hs_verifier().verify(&token).is_ok());
    let token = hs256(&with(claims(), "exp", json!(now - 120)));
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::Expired)));
}

#[test]
fn token_not_yet_valid_is_rejected() {
    let now = get_current_timestamp();
    let token = hs256(&with(claims(), "nbf", json!(now + 3600)));
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::NotYetValid)));
    let token = hs256(&with(claims(), "nbf", json!(now - 10)));
    assert!(hs_verifier().verify(&token).is_ok());
}

#[test]
fn token_signed_with_another_secret_is_rejected() {
    let token = hs_token(&[1u8; 32], Algorithm::HS256, &claims());
    let err = hs_verifier().verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err}");
    assert!(err.to_string().starts_with("token signature does not verify"));
}

#[test]
fn tampered_claims_are_rejected() {
    let token = hs256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(&with(claims(), "role", json!("admin")));
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert!(matches!(hs_verifier().verify(&tampered), Err(AuthError::BadSignature)));
}

#[test]
fn wrong_issuer_is_rejected() {
    let token = hs256(&with(claims(), "iss", json!("evil-idp")));
    let err = hs_verifier().verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::UntrustedIssuer), "{err}");
    assert!(err.to_string().starts_with("token issuer is not trusted"));
    let token = hs256(&without(claims(), "iss"));
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::Claim { claim: "iss" })));
}

#[test]
fn wrong_audience_is_rejected() {
    let token = hs256(&with(claims(), "aud", json!("another-product")));
    let err = hs_verifier().verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::AudienceMismatch), "{err}");
    assert!(err.to_string().starts_with("token audience does not match"));
    let token = hs256(&without(claims(), "aud"));
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::Claim { claim: "aud" })));
}

#[test]
fn alg_none_is_rejected() {
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
    let err = hs_verifier().verify(&unsigned).unwrap_err();
    assert!(matches!(err, AuthError::AlgorithmNotAllowed { expected: Algorithm::HS256 }), "{err}");
}

#[test]
fn hs512_token_with_the_right_secret_is_rejected() {
    let token = hs_token(&SECRET, Algorithm::HS512, &claims());
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::AlgorithmNotAllowed { expected: Algorithm::HS256 })));
}

#[test]
fn rs256_tokens_are_rejected_by_the_hs256_verifier() {
    // A genuine RS256 token.
    let token = sign(&header(Algorithm::RS256, None), &claims(), &rsa_key());
    assert!(matches!(hs_verifier().verify(&token), Err(AuthError::AlgorithmNotAllowed { .. })));
    // An RS256 header over an HMAC made with the shared secret (algorithm confusion).
    let message = format!("{}.{}", b64(&json!({"alg": "RS256", "typ": "JWT"})), b64(&claims()));
    let mac =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(&SECRET).unwrap(), Algorithm::HS256)
            .unwrap();
    let forged = format!("{message}.{mac}");
    assert!(matches!(hs_verifier().verify(&forged), Err(AuthError::AlgorithmNotAllowed { .. })));
}

#[test]
fn missing_or_malformed_custom_claims_are_rejected() {
    let cases = [
        (without(claims(), "org"), "org"),
        (with(claims(), "org", json!("North Side")), "org"),
        (with(claims(), "org", json!(17)), "org"),
        (without(claims(), "role"), "role"),
        (with(claims(), "role", json!("superuser")), "role"),
        (with(claims(), "role", json!("Clinician")), "role"),
        (without(claims(), "sub"), "sub"),
        (with(claims(), "sub", json!("")), "sub"),
        (with(with(claims(), "role", json!("patient")), "sub", json!("alice")), "sub"),
        (without(claims(), "exp"), "exp"),
        (with(claims(), "exp", json!("tomorrow")), "exp"),
    ];
    for (claims, expected) in cases {
        let err = hs_verifier().verify(&hs256(&claims)).unwrap_err();
        match err {
            AuthError::Claim { claim } => assert_eq!(claim, expected, "{claims}"),
            other => panic!("expected claim `{expected}` error for {claims}, got {other}"),
        }
    }
    let err = hs_verifier().verify(&hs256(&without(claims(), "org"))).unwrap_err();
    assert_eq!(err.to_string(), "token claim `org` is missing or malformed");
}

#[test]
fn garbage_is_a_malformed_token() {
    for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.e30"] {
        assert!(matches!(hs_verifier().verify(token), Err(AuthError::MalformedToken)), "{token:?}");
    }
}

#[test]
fn unusable_configuration_is_refused() {
    let err = Verifier::new(AuthConfig::development(b"password".to_vec())).unwrap_err();
    assert!(matches!(err, AuthError::Config { .. }), "{err}");
    let mut config = AuthConfig::development(SECRET.to_vec());
    config.leeway_secs = u64::MAX;
    assert!(matches!(Verifier::new(config), Err(AuthError::Config { .. })));
    let mut config = AuthConfig::development(SECRET.to_vec());
    config.issuer = String::new();
    assert!(matches!(Verifier::new(config), Err(AuthError::Config { .. })));
}

#[test]
fn debug_output_hides_the_secret() {
    let config = AuthConfig::development(SECRET.to_vec());
    assert!(!format!("{config:?}").contains("9, 9"));
    assert!(!format!("{:?}", hs_verifier()).contains("9, 9"));
}

// --- JWKS ---

#[test]
fn jwks_fixture_verifies_rsa_ec_and_ed25519_tokens_by_kid() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    let ed_key = EncodingKey::from_ed_pem(ED_PEM).unwrap();
    let tokens = [
        sign(&header(Algorithm::RS256, Some("test-rsa")), &claims(), &rsa_key()),
        sign(&header(Algorithm::ES256, Some("test-ec")), &claims(), &ec_key()),
        sign(&header(Algorithm::EdDSA, Some("test-ed25519")), &claims(), &ed_key),
    ];
    for token in tokens {
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(caller.subject, "clin-42");
        assert_eq!(caller.org.as_str(), "northside-clinic");
    }
}

#[test]
fn jwks_encryption_keys_are_not_trusted_for_signatures() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    let token = sign(&header(Algorithm::RS256, Some("test-rsa-enc")), &claims(), &rsa_key());
    assert!(matches!(verifier.verify(&token), Err(AuthError::UnknownKeyId)));
}

#[test]
fn jwks_unknown_or_missing_kid_is_rejected() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    let token = sign(&header(Algorithm::RS256, Some("retired-key")), &claims(), &rsa_key());
    let err = verifier.verify(&token).unwrap_err();
    assert!(matches!(err, AuthError::UnknownKeyId), "{err}");
    assert!(err.to_string().starts_with("unknown key id"));
    let token = sign(&header(Algorithm::RS256, None), &claims(), &rsa_key());
    assert!(matches!(verifier.verify(&token), Err(AuthError::MissingKeyId { keys: 3 })));
}

#[test]
fn jwks_with_one_key_accepts_tokens_without_kid() {
    let dir = tempfile::tempdir().unwrap();
    let mut jwks = jwks_with(&["test-ec"]);
    jwks["keys"][0].as_object_mut().unwrap().remove("kid");
    let verifier = jwks_verifier(write_jwks(&dir, &jwks)).unwrap();
    let token = sign(&header(Algorithm::ES256, None), &claims(), &ec_key());
    assert_eq!(verifier.verify(&token).unwrap().role, Role::Clinician);
}

#[test]
fn jwks_token_alg_must_equal_the_key_alg() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    // A valid PS256 signature by the right RSA key, but the key is pinned to RS256.
    let token = sign(&header(Algorithm::PS256, Some("test-rsa")), &claims(), &rsa_key());
    assert!(matches!(verifier.verify(&token), Err(AuthError::AlgorithmNotAllowed { expected: Algorithm::RS256 })));
    // An RS256 token pointing at the EC key.
    let token = sign(&header(Algorithm::RS256, Some("test-ec")), &claims(), &rsa_key());
    assert!(matches!(verifier.verify(&token), Err(AuthError::AlgorithmNotAllowed { expected: Algorithm::ES256 })));
    // HS256 keyed with public key material: the classic RS256-to-HS256 confusion.
    let public_jwks = std::fs::read(fixture("test-jwks.json")).unwrap();
    let token =
        sign(&header(Algorithm::HS256, Some("test-rsa")), &claims(), &EncodingKey::from_secret(&public_jwks).unwrap());
    assert!(matches!(verifier.verify(&token), Err(AuthError::AlgorithmNotAllowed { .. })));
}

#[test]
fn jwks_token_signed_by_an_untrusted_key_is_rejected() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    let other = EncodingKey::from_ec_pem(OTHER_EC_PEM).unwrap();
    let token = sign(&header(Algorithm::ES256, Some("test-ec")), &claims(), &other);
    assert!(matches!(verifier.verify(&token), Err(AuthError::BadSignature)));
}

#[test]
fn jwks_tokens_get_the_same_claim_checks() {
    let verifier = jwks_verifier(fixture("test-jwks.json")).unwrap();
    let now = get_current_timestamp();
    let rs = |claims: &Value| sign(&header(Algorithm::RS256, Some("test-rsa")), claims, &rsa_key());
    assert!(matches!(verifier.verify(&rs(&with(claims(), "exp", json!(now - 5)))), Err(AuthError::Expired)));
    assert!(matches!(verifier.verify(&rs(&with(claims(), "iss", json!("x")))), Err(AuthError::UntrustedIssuer)));
    assert!(matches!(verifier.verify(&rs(&without(claims(), "role"))), Err(AuthError::Claim { claim: "role" })));
}

#[test]
fn jwks_file_problems_are_reported_at_startup() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nope.json");
    let err = jwks_verifier(missing).unwrap_err();
    assert!(matches!(err, AuthError::ReadJwks { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot read jwks file "));

    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(jwks_verifier(path), Err(AuthError::ParseJwks { .. })));

    let mut no_alg = jwks_with(&["test-rsa"]);
    no_alg["keys"][0].as_object_mut().unwrap().remove("alg");
    let err = jwks_verifier(write_jwks(&dir, &no_alg)).unwrap_err();
    assert!(matches!(&err, AuthError::JwksKey { key, .. } if key == "`test-rsa`"), "{err}");
    assert!(err.to_string().contains("has no `alg`"));

    let mut mismatched = jwks_with(&["test-rsa"]);
    mismatched["keys"][0]["alg"] = json!("ES256");
    let err = jwks_verifier(write_jwks(&dir, &mismatched)).unwrap_err();
    assert!(err.to_string().contains("does not match its `alg`"), "{err}");

    let mut duplicated = jwks_with(&["test-rsa", "test-ec"]);
    duplicated["keys"][1]["kid"] = json!("test-rsa");
    let err = jwks_verifier(write_jwks(&dir, &duplicated)).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");

    let mut weak = jwks_with(&["test-rsa"]);
    weak["keys"][0]["n"] = json!(URL_SAFE_NO_PAD.encode([0xc5u8; 128]));
    let err = jwks_verifier(write_jwks(&dir, &weak)).unwrap_err();
    assert!(err.to_string().contains("1024-bit"), "{err}");

    let mut short_ed = jwks_with(&["test-ed25519"]);
    short_ed["keys"][0]["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 16]));
    let err = jwks_verifier(write_jwks(&dir, &short_ed)).unwrap_err();
    assert!(matches!(err, AuthError::JwksKey { .. }), "{err}");

    let mut off_curve = jwks_with(&["test-ec"]);
    off_curve["keys"][0]["y"] = off_curve["keys"][0]["x"].clone();
    let err = jwks_verifier(write_jwks(&dir, &off_curve)).unwrap_err();
    assert!(err.to_string().contains("is not a valid ES256 public key"), "{err}");
}

#[test]
fn jwks_with_only_unsupported_keys_has_no_usable_key() {
    let dir = tempfile::tempdir().unwrap();
    let symmetric = json!({"keys": [
        {"kty": "oct", "alg": "HS256", "kid": "shared", "k": URL_SAFE_NO_PAD.encode(SECRET)},
        {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": "AQAB", "e": "AQAB"},
    ]});
    let err = jwks_verifier(write_jwks(&dir, &symmetric)).unwrap_err();
    assert!(matches!(err, AuthError::NoUsableKeys { .. }), "{err}");
    // And a symmetric JWK can never be used to accept an HS256 token.
    let mut mixed = jwks_with(&["test-ec"]);
    mixed["keys"].as_array_mut().unwrap().push(symmetric["keys"][0].clone());
    let verifier = jwks_verifier(write_jwks(&dir, &mixed)).unwrap();
    let token = sign(&header(Algorithm::HS256, Some("shared")), &claims(), &EncodingKey::from_secret(&SECRET).unwrap());
    assert!(matches!(verifier.verify(&token), Err(AuthError::UnknownKeyId)));
}
