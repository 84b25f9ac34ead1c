//! Configuration shared by `tandem up` and the service binaries.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file
//! (`--config` or `TANDEM_CONFIG`), then `TANDEM_...` environment variables,
//! with `__` for nesting (`TANDEM_AUTH__ISSUER` sets `auth.issuer`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tandem_auth::{AuthConfig, DevSigningKey, KeySource, Verifier};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist.
    #[error("config file {0} does not exist; fix --config / TANDEM_CONFIG or remove it")]
    MissingFile(PathBuf),
    /// A value has the wrong shape.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    /// The auth keys could not be set up.
    #[error("cannot set up token verification: {0}")]
    Auth(#[from] tandem_auth::AuthError),
    /// Settings that contradict each other.
    #[error("{0}")]
    Conflict(String),
}

/// Token verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// A JWKS file with the issuer's public keys (production).
    pub jwks_file: Option<PathBuf>,
    /// An HS256 secret (development only); when neither this nor a JWKS
    /// file is set, a key is generated in the data directory.
    pub hs256_secret: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: tandem_auth::DEFAULT_ISSUER.to_owned(),
            audience: tandem_auth::DEFAULT_AUDIENCE.to_owned(),
            jwks_file: None,
            hs256_secret: None,
            leeway_secs: 30,
        }
    }
}

/// Settings of a Tandem server process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Address of the HTTP listener for `GET /healthz` and `GET /metrics`
    /// (Kubernetes probes, Prometheus scrapes); none = not served.
    pub health_listen: Option<SocketAddr>,
    /// Where SQLite files and the development signing key live.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; empty means SQLite files in the data directory.
    pub database_url: String,
    /// A PostgreSQL database of its own for a service (`databases.triage`),
    /// instead of its schema in `database_url`.
    pub databases: BTreeMap<String, String>,
    /// The event bus: `embedded` (a log in the data directory) or
    /// `kafka://host:port,...`.
    pub events: String,
    /// How long health says NOT_SERVING before the server stops taking calls.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
    /// This process's stable name for Kafka static group membership
    /// (`group.instance.id = <instance_id>.<group>`); empty = the host name
    /// (a Kubernetes pod's name). Two live processes must not share it.
    pub instance_id: String,
    /// Token verification.
    pub auth: AuthSettings,
    /// Bounds on long-lived streams (WatchWorklist, StreamInbox).
    pub streams: crate::StreamSettings,
    /// How long handled and consumed events are kept.
    pub retention: RetentionSettings,
}

/// How long the event spine keeps what it no longer needs (section
/// `retention`; `TANDEM_RETENTION__...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Time between retention passes.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How long a consumer's record of a handled event (its inbox row) is
    /// kept; longer than the bus can redeliver an event.
    #[serde(with = "humantime_serde")]
    pub handled_events: Duration,
    /// How long a record every group consumed stays in the embedded log.
    #[serde(with = "humantime_serde")]
    pub consumed_log: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let defaults = tandem_events::RetentionOptions::default();
        Self { every: defaults.every, handled_events: defaults.handled_events, consumed_log: defaults.consumed_log }
    }
}

impl From<RetentionSettings> for tandem_events::RetentionOptions {
    fn from(settings: RetentionSettings) -> Self {
        Self { every: settings.every, handled_events: settings.handled_events, consumed_log: settings.consumed_log }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            health_listen: None,
            data_dir: PathBuf::from("./tandem-data"),
            database_url: String::new(),
            databases: BTreeMap::new(),
            events: "embedded".to_owned(),
            shutdown_drain: Duration::ZERO,
            instance_id: String::new(),
            auth: AuthSettings::default(),
            streams: crate::StreamSettings::default(),
            retention: RetentionSettings::default(),
        }
    }
}

/// One documented setting, for `--help` and the README.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    /// The environment variable.
    pub env: &'static str,
    /// The key in the TOML file.
    pub key: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every setting with its default. A test keeps this in step with
/// [`Settings::default`].
pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        env: "TANDEM_CONFIG",
        key: "-",
        default: "(none)",
        doc: "optional TOML file with any of the keys below",
    },
    SettingDoc {
        env: "TANDEM_LISTEN",
        key: "listen",
        default: "127.0.0.1:50051",
        doc: "gRPC listen address (port 0 picks a free port)",
    },
    SettingDoc {
        env: "TANDEM_HEALTH_LISTEN",
        key: "health_listen",
        default: "(none)",
        doc: "HTTP address for GET /healthz (200 while gRPC health is SERVING, else 503) and GET /metrics (Prometheus); unset = not served",
    },
    SettingDoc {
        env: "TANDEM_DATA_DIR",
        key: "data_dir",
        default: "./tandem-data",
        doc: "SQLite files and the development signing key",
    },
    SettingDoc {
        env: "TANDEM_DATABASE_URL",
        key: "database_url",
        default: "",
        doc: "postgres://... to use PostgreSQL (one schema per service); empty = SQLite in the data dir",
    },
    SettingDoc {
        env: "TANDEM_DATABASES__<SERVICE>",
        key: "databases.<service>",
        default: "(none)",
        doc: "postgres://... of a database of the service's own (careplans, checkins, triage, notifications), instead of its schema in TANDEM_DATABASE_URL",
    },
    SettingDoc {
        env: "TANDEM_EVENTS",
        key: "events",
        default: "embedded",
        doc: "event bus: embedded (a durable log in the data dir) or kafka://host:port,... (?partitions=N&replication=N)",
    },
    SettingDoc {
        env: "TANDEM_SHUTDOWN_DRAIN",
        key: "shutdown_drain",
        default: "0s",
        doc: "time between health NOT_SERVING and refusing new calls on SIGTERM; open streams end when it is over",
    },
    SettingDoc {
        env: "TANDEM_INSTANCE_ID",
        key: "instance_id",
        default: "",
        doc: "this process's name for Kafka static group membership; empty = the host (pod) name; unique per live process",
    },
    SettingDoc {
        env: "TANDEM_AUTH__ISSUER",
        key: "auth.issuer",
        default: "tandem-dev",
        doc: "required `iss` of bearer tokens",
    },
    SettingDoc {
        env: "TANDEM_AUTH__AUDIENCE",
        key: "auth.audience",
        default: "tandem",
        doc: "required `aud` of bearer tokens",
    },
    SettingDoc {
        env: "TANDEM_AUTH__JWKS_FILE",
        key: "auth.jwks_file",
        default: "(none)",
        doc: "JWKS file of the issuer's public keys (production)",
    },
    SettingDoc {
        env: "TANDEM_AUTH__HS256_SECRET",
        key: "auth.hs256_secret",
        default: "(none)",
        doc: "HS256 secret, development only; unset = key generated in the data dir",
    },
    SettingDoc {
        env: "TANDEM_AUTH__LEEWAY_SECS",
        key: "auth.leeway_secs",
        default: "30",
        doc: "clock skew tolerated on exp/nbf",
    },
    SettingDoc {
        env: "TANDEM_STREAMS__PER_CALLER",
        key: "streams.per_caller",
        default: "5",
        doc: "open streams of one kind (WatchWorklist, StreamInbox) per caller; more get RESOURCE_EXHAUSTED",
    },
    SettingDoc {
        env: "TANDEM_STREAMS__PER_PROCESS",
        key: "streams.per_process",
        default: "1000",
        doc: "open streams per process, over all callers",
    },
    SettingDoc {
        env: "TANDEM_STREAMS__SAFETY_POLL",
        key: "streams.safety_poll",
        default: "30s",
        doc: "longest a stream waits for a change before re-reading the store anyway",
    },
    SettingDoc {
        env: "TANDEM_RETENTION__EVERY",
        key: "retention.every",
        default: "1h",
        doc: "time between retention passes over inboxes and the embedded log",
    },
    SettingDoc {
        env: "TANDEM_RETENTION__HANDLED_EVENTS",
        key: "retention.handled_events",
        default: "30days",
        doc: "how long consumers remember a handled event (keep it above the bus's redelivery window)",
    },
    SettingDoc {
        env: "TANDEM_RETENTION__CONSUMED_LOG",
        key: "retention.consumed_log",
        default: "30days",
        doc: "how long the embedded log keeps a record every consumer group has consumed",
    },
    SettingDoc { env: "TANDEM_LOG", key: "-", default: "info", doc: "log filter (RUST_LOG syntax)" },
    SettingDoc { env: "TANDEM_LOG_FORMAT", key: "-", default: "plain", doc: "plain or json log lines" },
    SettingDoc {
        env: "TANDEM_TRACE_LEVEL",
        key: "-",
        default: "info",
        doc: "which spans are exported over OTLP (RUST_LOG syntax), apart from TANDEM_LOG",
    },
    SettingDoc {
        env: "OTEL_EXPORTER_OTLP_ENDPOINT",
        key: "-",
        default: "(none)",
        doc: "OTLP/gRPC endpoint for traces and metrics, e.g. http://localhost:4317",
    },
];

/// The settings table as help text.
pub fn settings_help() -> String {
    let mut text = String::from("Settings (environment variable / config file key, default):\n");
    for setting in SETTINGS {
        text.push_str(&format!(
            "  {:<30} {:<18} [default: {}]\n      {}\n",
            setting.env,
            setting.key,
            if setting.default.is_empty() { "empty" } else { setting.default },
            setting.doc
        ));
    }
    text
}

impl Settings {
    /// Loads defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::figment(file)?.extract().map_err(|error| ConfigError::Invalid(Box::new(error)))
    }

    /// The layered sources, for callers that add their own overrides.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let file = file.map(Path::to_path_buf).or_else(|| std::env::var_os("TANDEM_CONFIG").map(PathBuf::from));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file));
            }
            figment = figment.merge(Toml::file(file));
        }
        Ok(figment.merge(Env::prefixed("TANDEM_").split("__")))
    }

    /// The database URL for one service: a PostgreSQL database of its own
    /// (`databases.<service>`), PostgreSQL shared by all services (each in
    /// its own schema), or a SQLite file of its own.
    pub fn database_url_for(&self, service: &str) -> Result<String, ConfigError> {
        if let Some(url) = self.databases.get(service).filter(|url| !url.is_empty()) {
            if !url.starts_with("postgres") {
                return Err(ConfigError::Conflict(format!(
                    "databases.{service} must be a postgres:// URL; SQLite files go in the data dir (TANDEM_DATA_DIR)"
                )));
            }
            return Ok(url.clone());
        }
        if self.database_url.is_empty() {
            return Ok(format!("sqlite://{}/{service}.db", self.data_dir.display()));
        }
        if self.database_url.starts_with("sqlite:") {
            return Err(ConfigError::Conflict(
                "TANDEM_DATABASE_URL is a sqlite URL, but services need a file each: leave it empty and set TANDEM_DATA_DIR instead"
                    .to_owned(),
            ));
        }
        Ok(self.database_url.clone())
    }

    /// The token verifier these settings describe.
    pub fn verifier(&self) -> Result<Arc<Verifier>, ConfigError> {
        let keys = if let Some(path) = &self.auth.jwks_file {
            KeySource::JwksFile(path.clone())
        } else if let Some(secret) = &self.auth.hs256_secret {
            if secret.len() < 32 {
                return Err(ConfigError::Conflict(
                    "TANDEM_AUTH__HS256_SECRET must be at least 32 characters".to_owned(),
                ));
            }
            KeySource::Hs256Secret(secret.as_bytes().to_vec())
        } else {
            let key = DevSigningKey::load_or_create(&self.data_dir)?;
            tracing::warn!(
                data_dir = %self.data_dir.display(),
                "using the development signing key from the data dir; set TANDEM_AUTH__JWKS_FILE in production"
            );
            KeySource::Hs256Secret(key.bytes().to_vec())
        };
        let config = AuthConfig {
            issuer: self.auth.issuer.clone(),
            audience: self.auth.audience.clone(),
            keys,
            leeway_secs: self.auth.leeway_secs,
        };
        Ok(Arc::new(Verifier::new(config)?))
    }
}

/// A service's own section of the configuration (e.g. `checkins`), or its
/// defaults when the section is absent. A malformed section is an error, never
/// silently replaced by defaults.
pub fn section<T>(figment: &Figment, key: &str) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + Default,
{
    if figment.find_value(key).is_err() {
        return Ok(T::default());
    }
    figment.extract_inner(key).map_err(|error| ConfigError::Invalid(Box::new(error)))
}

/// The configuration key of the subject paged when a patient's care-team
/// chain runs out or is not known. Triage pages it; check-ins reads the same
/// key to tell a patient truthfully who is being alerted. Services share the
/// setting through configuration, never by importing each other.
pub const CRISIS_CONTACT_KEY: &str = "triage.crisis_contact";

/// The crisis contact when none is configured.
pub const DEFAULT_CRISIS_CONTACT: &str = "on-call";

/// The configured crisis contact ([`CRISIS_CONTACT_KEY`]); empty means the
/// organisation has none.
pub fn crisis_contact(figment: &Figment) -> Result<String, ConfigError> {
    if figment.find_value(CRISIS_CONTACT_KEY).is_err() {
        return Ok(DEFAULT_CRISIS_CONTACT.to_owned());
    }
    let contact: String =
        figment.extract_inner(CRISIS_CONTACT_KEY).map_err(|error| ConfigError::Invalid(Box::new(error)))?;
    Ok(contact.trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_match_the_real_defaults() {
        let figment = Figment::from(Serialized::defaults(Settings::default()));
        for setting in SETTINGS.iter().filter(|setting| setting.key != "-") {
            let value = figment.find_value(setting.key);
            let text = match value {
                Ok(value) => match value {
                    figment::value::Value::String(_, text) => text,
                    figment::value::Value::Num(_, num) => num.to_u128().map(|n| n.to_string()).unwrap_or_default(),
                    figment::value::Value::Empty(..) => "(none)".to_owned(),
                    other => format!("{other:?}"),
                },
                Err(_) => "(none)".to_owned(),
            };
            assert_eq!(text, setting.default, "documented default of {}", setting.env);
        }
    }

    #[test]
    fn environment_overrides_defaults_and_nests_with_double_underscore() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TANDEM_LISTEN", "0.0.0.0:6000");
            jail.set_env("TANDEM_AUTH__ISSUER", "https://idp.example");
            let settings = Settings::load(None).map_err(|error| error.to_string())?;
            assert_eq!(settings.listen, SocketAddr::from(([0, 0, 0, 0], 6000)));
            assert_eq!(settings.auth.issuer, "https://idp.example");
            assert_eq!(settings.auth.audience, "tandem");
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tandem.toml",
                "data_dir = \"/srv/tandem\"\nshutdown_drain = \"5s\"\n[auth]\naudience = \"ehr\"\n",
            )?;
            jail.set_env("TANDEM_AUTH__AUDIENCE", "from-env");
            let settings = Settings::load(Some(Path::new("tandem.toml"))).map_err(|error| error.to_string())?;
            assert_eq!(settings.data_dir, PathBuf::from("/srv/tandem"));
            assert_eq!(settings.shutdown_drain, Duration::from_secs(5));
            assert_eq!(settings.auth.audience, "from-env");
            Ok(())
        });
    }

    #[test]
    fn the_crisis_contact_is_one_setting_for_every_service() {
        figment::Jail::expect_with(|jail| {
            let figment = Settings::figment(None).map_err(|error| error.to_string())?;
            assert_eq!(crisis_contact(&figment).map_err(|error| error.to_string())?, DEFAULT_CRISIS_CONTACT);
            jail.set_env("TANDEM_TRIAGE__CRISIS_CONTACT", "clinic-duty-phone");
            let figment = Settings::figment(None).map_err(|error| error.to_string())?;
            assert_eq!(crisis_contact(&figment).map_err(|error| error.to_string())?, "clinic-duty-phone");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let error = Settings::load(Some(Path::new("/nonexistent/tandem.toml"))).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[test]
    fn sqlite_gets_a_file_per_service_and_postgres_is_shared() {
        let mut settings = Settings { data_dir: PathBuf::from("/d"), ..Settings::default() };
        assert_eq!(settings.database_url_for("triage").unwrap(), "sqlite:///d/triage.db");
        settings.database_url = "postgres://p@h/db".to_owned();
        assert_eq!(settings.database_url_for("triage").unwrap(), "postgres://p@h/db");
        settings.database_url = "sqlite://x.db".to_owned();
        assert!(settings.database_url_for("triage").is_err());
        settings.database_url = "postgres://p@h/db".to_owned();
        settings.databases.insert("triage".to_owned(), "postgres://p@h/triage".to_owned());
        assert_eq!(settings.database_url_for("triage").unwrap(), "postgres://p@h/triage");
        assert_eq!(settings.database_url_for("checkins").unwrap(), "postgres://p@h/db");
        settings.databases.insert("triage".to_owned(), "sqlite://t.db".to_owned());
        assert!(settings.database_url_for("triage").is_err());
    }
}
