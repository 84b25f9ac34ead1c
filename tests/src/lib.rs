//! A running Tandem for end-to-end tests: `tandem up` in-process on port 0,
//! on SQLite or on a PostgreSQL database of its own, with tokens minted by
//! the same key it verifies with.

use std::net::SocketAddr;
use std::time::Duration;

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
    /// Where it listens.
    pub addr: SocketAddr,
    /// The settings it runs with.
    pub settings: Settings,
    secret: Vec<u8>,
    database: Option<TestDatabase>,
    _data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Tandem {
    /// Starts `tandem up` on the backend: SQLite files in a temporary data
    /// dir, or a fresh PostgreSQL database.
    pub async fn start(backend: Backend) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create(Backend::Postgres).await),
        };
        let settings = Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.path().to_path_buf(),
            database_url: database
                .as_ref()
                .map(|db| db.url.clone())
                .unwrap_or_default(),
            ..Settings::default()
        };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let served = settings.clone();
        let task = tokio::spawn(async move {
            let figment = figment::Figment::from(figment::providers::Serialized::defaults(&served));
            tandem_cli::up::serve(&served, &figment, listener, async move {
                let _ = stop.await;
            })
            .await
        });
        let secret = DevSigningKey::load_or_create(data_dir.path())
            .expect("dev key")
            .bytes()
            .to_vec();
        let tandem = Self {
            addr,
            settings,
            secret,
            database,
            _data_dir: data_dir,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        tandem.wait_until_connectable().await;
        tandem
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

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to tandem")
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

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
        if let Some(database) = self.database.take() {
            database.drop_database().await;
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
