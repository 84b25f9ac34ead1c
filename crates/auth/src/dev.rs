//! Development signing keys and token minting for `tandem up` and tests.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tandem_proto::ids::{OrgId, PatientId};

use crate::verifier::check_hs256_secret;
use crate::{AuthError, Role};

/// Name of the development signing key file inside the data directory.
pub const DEV_SIGNING_KEY_FILE: &str = "dev-signing-key";

const DEV_KEY_BYTES: usize = 32;

/// A per-machine HS256 secret kept in `<data_dir>/dev-signing-key`, for development only.
pub struct DevSigningKey {
    bytes: [u8; DEV_KEY_BYTES],
    path: PathBuf,
}

impl fmt::Debug for DevSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevSigningKey").field("path", &self.path).field("bytes", &"[redacted]").finish()
    }
}

impl DevSigningKey {
    /// Reads the key from `data_dir`, creating the directory and a new random key if needed.
    ///
    /// Processes racing to create the key all end up with the same one: the file appears
    /// atomically (hard link of a fully written temporary file) and every process re-reads it.
    pub fn load_or_create(data_dir: &Path) -> Result<DevSigningKey, AuthError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DEV_SIGNING_KEY_FILE);
        if let Some(bytes) = read_key(&path)? {
            return Ok(DevSigningKey { bytes, path });
        }
        let candidate: [u8; DEV_KEY_BYTES] = rand::random();
        publish_new_key(data_dir, &path, &candidate)?;
        // Whoever won the race, the file now holds the one key every process must use.
        match read_key(&path)? {
            Some(bytes) => Ok(DevSigningKey { bytes, path }),
            None => Err(AuthError::DevKeyIo {
                path,
                source: io::Error::new(io::ErrorKind::NotFound, "key file vanished after it was created"),
            }),
        }
    }

    /// The secret, for [`crate::KeySource::Hs256Secret`] and [`mint_token`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the key is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AuthError + '_ {
    move |source| AuthError::DevKeyIo { path: path.to_owned(), source }
}

fn create_private_dir(dir: &Path) -> Result<(), AuthError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// The key in `path`, or `None` when there is no such file.
fn read_key(path: &Path) -> Result<Option<[u8; DEV_KEY_BYTES]>, AuthError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(path)(err)),
    };
    warn_if_readable_by_others(path);
    let corrupt = || AuthError::DevKeyCorrupt { path: path.to_owned() };
    let decoded = STANDARD.decode(text.trim()).map_err(|_| corrupt())?;
    let bytes: [u8; DEV_KEY_BYTES] = decoded.try_into().map_err(|_| corrupt())?;
    Ok(Some(bytes))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "development signing key is readable by other users: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes `key` to a private temporary file, then links it to `path` unless `path` exists.
fn publish_new_key(dir: &Path, path: &Path, key: &[u8; DEV_KEY_BYTES]) -> Result<(), AuthError> {
    let nonce: u64 = rand::random();
    let temp = dir.join(format!(".{DEV_SIGNING_KEY_FILE}.{}.{nonce:016x}.tmp", std::process::id()));
    let written = write_private_file(&temp, format!("{}\n", STANDARD.encode(key)).as_bytes());
    let linked = written.and_then(|()| match fs::hard_link(&temp, path) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    // The temporary name is ours alone; failing to remove it leaves litter, not a wrong key.
    let _ = fs::remove_file(&temp);
    linked.map_err(io_error(path))
}

fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The claims of a minted token.
#[derive(serde::Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    org: &'a str,
    role: Role,
    iat: u64,
    exp: u64,
}

/// Mints an HS256 token for development and tests, valid for `ttl` from now.
pub fn mint_token(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    org: &OrgId,
    role: Role,
    subject: &str,
    ttl: Duration,
) -> Result<String, AuthError> {
    check_hs256_secret(secret)?;
    let problem = |problem: &str| AuthError::Mint { problem: problem.to_owned() };
    if issuer.is_empty() || audience.is_empty() {
        return Err(problem("issuer and audience must not be empty"));
    }
    if subject.is_empty() {
        return Err(problem("subject is empty: pass the patient's or clinician's id"));
    }
    if role == Role::Patient && subject.parse::<PatientId>().is_err() {
        return Err(problem("a patient's subject must be their patient id (a uuid)"));
    }
    let iat = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        iss: issuer,
        aud: audience,
        sub: subject,
        org: org.as_str(),
        role,
        iat,
        exp: iat.saturating_add(ttl.as_secs()),
    };
    let key =
        EncodingKey::from_secret(secret).map_err(|err| AuthError::Mint { problem: err.to_string().to_lowercase() })?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|err| AuthError::Mint { problem: err.to_string().to_lowercase() })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::{AuthConfig, DEFAULT_AUDIENCE, DEFAULT_ISSUER, Verifier};

    #[test]
    fn load_or_create_returns_the_same_key_twice() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested").join("data");
        let first = DevSigningKey::load_or_create(&data_dir).unwrap();
        let second = DevSigningKey::load_or_create(&data_dir).unwrap();
        assert_eq!(first.bytes(), second.bytes());
        assert_eq!(first.bytes().len(), 32);
        assert_ne!(first.bytes(), &[0u8; 32]);
        assert_eq!(first.path(), data_dir.join(DEV_SIGNING_KEY_FILE));
        let stored = fs::read_to_string(first.path()).unwrap();
        assert_eq!(STANDARD.decode(stored.trim()).unwrap(), first.bytes());
        let leftovers: Vec<_> = fs::read_dir(&data_dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files must be cleaned up");
    }

    #[cfg(unix)]
    #[test]
    fn load_or_create_makes_the_key_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = DevSigningKey::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(key.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn load_or_create_racing_threads_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = Arc::new(dir.path().join("race"));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let data_dir = Arc::clone(&data_dir);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    DevSigningKey::load_or_create(&data_dir).unwrap().bytes().to_vec()
                })
            })
            .collect();
        let keys: Vec<Vec<u8>> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
        assert!(keys.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(fs::read_dir(data_dir.as_path()).unwrap().count(), 1);
    }

    #[test]
    fn load_or_create_reports_a_corrupt_key_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DEV_SIGNING_KEY_FILE), "not a key").unwrap();
        let err = DevSigningKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, AuthError::DevKeyCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("delete it"));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevSigningKey::load_or_create(dir.path()).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&format!("{:?}", key.bytes())));
    }

    #[test]
    fn minted_token_verifies_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevSigningKey::load_or_create(dir.path()).unwrap();
        let org: OrgId = "northside".parse().unwrap();
        let patient = PatientId::new().to_string();
        let token = mint_token(
            key.bytes(),
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
            &org,
            Role::Patient,
            &patient,
            Duration::from_secs(600),
        )
        .unwrap();
        let verifier = Verifier::new(AuthConfig::development(key.bytes().to_vec())).unwrap();
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(caller.org, org);
        assert_eq!(caller.role, Role::Patient);
        assert_eq!(caller.subject, patient);
    }

    #[test]
    fn mint_token_refuses_what_the_verifier_would_reject() {
        let secret = [7u8; 32];
        let org: OrgId = "northside".parse().unwrap();
        let ttl = Duration::from_secs(60);
        let mint = |secret: &[u8], role, subject: &str| {
            mint_token(secret, DEFAULT_ISSUER, DEFAULT_AUDIENCE, &org, role, subject, ttl)
        };
        assert!(matches!(mint(&secret, Role::Clinician, ""), Err(AuthError::Mint { .. })));
        assert!(matches!(mint(&secret, Role::Patient, "alice"), Err(AuthError::Mint { .. })));
        assert!(matches!(mint(b"short", Role::Clinician, "c-1"), Err(AuthError::Config { .. })));
        assert!(mint(&secret, Role::Clinician, "c-1").is_ok());
    }
}
