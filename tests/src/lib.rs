//! A running Tandem for end-to-end tests: `tandem up` in-process on port 0,
//! either embedded (SQLite files and the embedded event log) or distributed
//! (a PostgreSQL database of its own and Kafka, served by an Apache Kafka
//! broker of its own),
//! with tokens minted by the same key it verifies with. On PostgreSQL,
//! triage has a database of its own (`databases.triage`), so a test can
//! take triage's store away alone ([`Tandem::outage`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_events::EventBus;

use tandem_auth::{DevSigningKey, Role};
use tandem_proto::ids::OrgId;
use tandem_server::Settings;
use tandem_store::Backend;
use tandem_store::testing::TestDatabase;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub use tandem_store::Backend as StoreBackend;

/// A Tandem serving on a free port until [`Tandem::stop`].
#[derive(Debug)]
pub struct Tandem {
    /// Where it listens (a new port after [`Tandem::restart`]).
    pub addr: SocketAddr,
    /// Where it serves `/healthz` and `/metrics` (also new after a restart).
    pub probes: SocketAddr,
    /// The settings it runs with.
    pub settings: Settings,
    config: Vec<(String, String)>,
    secret: Vec<u8>,
    database: Option<TestDatabase>,
    triage_database: Option<TestDatabase>,
    // Kept alive (and killed on drop) for the distributed mode.
    _broker: Option<tandem_events::testing::KafkaBroker>,
    _data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Tandem {
    /// Starts `tandem up`: on SQLite, embedded (SQLite files and the
    /// embedded log in a temporary data dir); on PostgreSQL, distributed (a
    /// fresh database and Kafka served by an Apache Kafka broker of its own).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    /// As [`Tandem::start`], with extra configuration keys, e.g.
    /// `("triage.high_ack", "2s")` or `("streams.per_caller", "2")` (a value
    /// of digits is passed as a number).
    pub async fn start_with(backend: Backend, config: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        let (database, triage_database, broker) = match backend {
            Backend::Sqlite => (None, None, None),
            Backend::Postgres => {
                let broker = tokio::task::spawn_blocking(tandem_events::testing::KafkaBroker::start)
                    .await
                    .expect("start the kafka broker");
                let database = TestDatabase::create(Backend::Postgres).await;
                let triage = TestDatabase::create(Backend::Postgres).await;
                (Some(database), Some(triage), Some(broker))
            }
        };
        let events = match &broker {
            Some(broker) => format!("kafka://{}?partitions=4", broker.brokers()),
            None => "embedded".to_owned(),
        };
        let settings = Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.path().to_path_buf(),
            database_url: database.as_ref().map(|db| db.url.clone()).unwrap_or_default(),
            databases: triage_database.iter().map(|db| ("triage".to_owned(), db.url.clone())).collect(),
            events,
            ..Settings::default()
        };
        let secret = DevSigningKey::load_or_create(data_dir.path()).expect("dev key").bytes().to_vec();
        let mut tandem = Self {
            addr: settings.listen,
            probes: settings.listen,
            settings,
            config: config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            secret,
            database,
            triage_database,
            _broker: broker,
            _data_dir: data_dir,
            shutdown: None,
            task: None,
        };
        tandem.launch().await;
        tandem
    }

    async fn launch(&mut self) {
        // The process's metrics pipeline, as `tandem up` installs it, before
        // any instrument is created.
        tandem_telemetry::metrics::install(&tandem_telemetry::TelemetrySettings::for_tests("tandem-tests"))
            .expect("metrics pipeline");
        let listener = tokio::net::TcpListener::bind(self.settings.listen).await.expect("bind port 0");
        self.addr = listener.local_addr().expect("local addr");
        let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the probe port");
        self.probes = probes.local_addr().expect("probe addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let mut figment = figment::Figment::from(figment::providers::Serialized::defaults(&self.settings));
        for (key, value) in &self.config {
            // Numbers as numbers, as the environment provider reads them.
            figment = match value.parse::<i64>() {
                Ok(number) => figment.merge(figment::providers::Serialized::default(key, number)),
                Err(_) => figment.merge(figment::providers::Serialized::default(key, value)),
            };
        }
        // Keys of the shared settings (e.g. `streams.safety_poll`) apply too.
        let served: Settings = figment.extract().expect("the test's configuration is valid");
        self.task = Some(tokio::spawn(async move {
            tandem_cli::up::serve_with_probes(&served, &figment, listener, Some(probes), async move {
                let _ = stop.await;
            })
            .await
        }));
        self.shutdown = Some(shutdown);
        self.wait_until_connectable().await;
    }

    /// Stops the process's services and starts them again on the same
    /// data, as a restart after a crash or a deploy would.
    pub async fn restart(&mut self) {
        self.halt().await;
        self.launch().await;
    }

    /// Stops the process's services (a crash or a deploy), keeping its
    /// data, database and broker, until [`Tandem::up`].
    pub async fn down(&mut self) {
        self.halt().await;
    }

    /// Starts the services again after [`Tandem::down`], on a new port.
    pub async fn up(&mut self) {
        self.launch().await;
    }

    async fn halt(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }

    /// Retries `check` until it returns `Some`, for effects that travel
    /// through events; panics with `what` after 60 s.
    pub async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_until_connectable(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tandem did not accept connections on {}", self.addr);
    }

    /// `GET path` on the probe listener: the status and the body.
    pub async fn probe(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.probes)).await.expect("probe listener answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("probe body"))
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to tandem")
    }

    /// Enrols "Alex Example" (time zone UTC) as the EHR holding `ehr_token`
    /// would, under `external_id`, and returns the new patient's id.
    pub async fn enroll(&self, ehr_token: &str, external_id: &str) -> tandem_proto::common::v1::PatientId {
        let mut client =
            tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient::new(self.channel().await);
        let request = tandem_proto::careplans::v1::EnrollPatientRequest {
            idempotency_key: format!("enrol-{external_id}"),
            external_id: external_id.to_owned(),
            display_name: "Alex Example".into(),
            time_zone: "UTC".into(),
        };
        client
            .enroll_patient(authed(ehr_token, request))
            .await
            .expect("enrol the patient")
            .into_inner()
            .patient
            .and_then(|patient| patient.id)
            .expect("an enrolled patient has an id")
    }

    /// A valid token for the caller, from the key the server trusts.
    pub fn token(&self, org: &str, role: Role, subject: &str) -> String {
        self.token_valid_for(org, role, subject, Duration::from_secs(3600))
    }

    /// A token valid for `ttl`.
    pub fn token_valid_for(&self, org: &str, role: Role, subject: &str, ttl: Duration) -> String {
        let org: OrgId = org.parse().expect("org slug");
        tandem_auth::mint_token(
            &self.secret,
            &self.settings.auth.issuer,
            &self.settings.auth.audience,
            &org,
            role,
            subject,
            ttl,
        )
        .expect("mint token")
    }

    /// Stops the server and drops its databases.
    pub async fn stop(mut self) {
        self.halt().await;
        if let Some(database) = self.database.take() {
            database.drop_database().await;
        }
        if let Some(database) = self.triage_database.take() {
            database.drop_database().await;
        }
    }

    /// The event bus the server runs on, for publishing records as a
    /// producer would (embedded: the same log, shared in the process).
    pub async fn bus(&self) -> Arc<dyn EventBus> {
        let config = self.settings.events.parse().expect("the harness's TANDEM_EVENTS parses");
        tandem_events::connect(&config, &self.settings.data_dir).await.expect("connect to the event bus")
    }

    /// The Kafka bootstrap servers, when the server runs on Kafka.
    pub fn kafka_brokers(&self) -> Option<String> {
        let rest = self.settings.events.strip_prefix("kafka://")?;
        Some(rest.split('?').next().unwrap_or(rest).to_owned())
    }

    /// Takes `service`'s store away until [`Outage::end`]: on SQLite its
    /// file is held with `BEGIN EXCLUSIVE` (every write waits out the busy
    /// timeout, then fails); on PostgreSQL its database refuses connections
    /// and the open ones are terminated. Only triage has a database of its
    /// own on PostgreSQL; for the others the outage takes every service's.
    pub async fn outage(&self, service: &str) -> Outage {
        let url = self.settings.database_url_for(service).expect("a database url");
        Outage::begin(&url).await
    }
}

/// A service's database made unavailable by [`Tandem::outage`].
#[derive(Debug)]
pub enum Outage {
    /// SQLite: another connection holds the write lock.
    Locked(sqlx::SqliteConnection),
    /// PostgreSQL: the database refuses connections.
    Refusing {
        /// A connection to the admin database.
        admin: sqlx::PgConnection,
        /// The database taken away.
        database: String,
    },
}

impl Outage {
    /// Takes the database at `url` away (the storage tests' technique).
    pub async fn begin(url: &str) -> Self {
        use sqlx::Connection;
        if url.starts_with("sqlite:") {
            let mut lock = sqlx::SqliteConnection::connect(url).await.expect("open the sqlite file");
            sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut lock).await.expect("take the write lock");
            return Self::Locked(lock);
        }
        let mut admin = sqlx::PgConnection::connect(&tandem_store::testing::postgres_admin_url())
            .await
            .expect("connect as the test admin");
        let database = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_owned();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false")))
            .execute(&mut admin)
            .await
            .expect("refuse connections");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&database)
        .execute(&mut admin)
        .await
        .expect("terminate the open connections");
        Self::Refusing { admin, database }
    }

    /// Gives the database back.
    pub async fn end(self) {
        match self {
            Self::Locked(mut lock) => {
                sqlx::raw_sql("COMMIT").execute(&mut lock).await.expect("release the write lock");
            }
            Self::Refusing { mut admin, database } => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true")))
                    .execute(&mut admin)
                    .await
                    .expect("accept connections again");
            }
        }
    }
}

/// A request carrying a bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Declares an end-to-end test that runs on embedded SQLite and on
/// PostgreSQL: `both_backends!(name, |tandem| { ... });` where the block
/// may `.await` and `tandem` is a `&Tandem`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$tandem:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let running = $crate::Tandem::start($crate::StoreBackend::Sqlite).await;
                {
                    let $tandem: &$crate::Tandem = &running;
                    $body
                }
                running.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let running = $crate::Tandem::start($crate::StoreBackend::Postgres).await;
                {
                    let $tandem: &$crate::Tandem = &running;
                    $body
                }
                running.stop().await;
            }
        }
    };
}
