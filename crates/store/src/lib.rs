//! A database URL gives a migrated pool, on SQLite (the embedded default) or
//! PostgreSQL (production).
//!
//! Services write portable SQL against [`sqlx::Any`]: `$1`-style parameters,
//! `TEXT`/`BIGINT` columns, times as Unix microseconds. On PostgreSQL each
//! service lives in its own schema, set as the connection's `search_path`;
//! on SQLite each service has its own file.

pub mod changes;
mod migrations;
pub mod paging;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

pub use changes::{ChangeFeed, Changes};
pub use migrations::{MigrationFile, Migrations, render as render_migration};
pub use sqlx;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend we support.
    #[error(
        "unsupported database url scheme `{0}`: use sqlite://path/to/file.db or postgres://user@host:port/database"
    )]
    UnsupportedUrl(String),
    /// The schema name is not a plain identifier.
    #[error("schema name `{0}` must be lowercase letters, digits and '_'")]
    BadSchema(String),
    /// The database could not be reached.
    #[error("cannot connect to the {backend} database: {source}; check TANDEM_DATABASE_URL and that the server is up")]
    Connect {
        /// Which backend.
        backend: Backend,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration file cannot be read as one (a build defect its tests catch).
    #[error("the service's migration files are invalid: {0}")]
    Migrations(String),
    /// Migrations failed.
    #[error("migrating schema `{schema}` failed: {source}")]
    Migrate {
        /// The service schema.
        schema: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The two supported database backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one file per service.
    Sqlite,
    /// PostgreSQL: one schema per service.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

impl FromStr for Backend {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            other => Err(StoreError::UnsupportedUrl(other.to_owned())),
        }
    }
}

/// A pool for one service's data, migrated and ready.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    // SQLite: the one connection write transactions take turns on, shared
    // with separate pools (see `begin_write`); PostgreSQL: `pool`.
    writer: AnyPool,
    backend: Backend,
    schema: String,
    // How the pool was made, for a separate pool on the same database.
    url: String,
    pool_options: AnyPoolOptions,
}

/// When a SQLite commit is on disk (`PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// The write-ahead log is synced on every commit: a commit survives an
    /// OS crash or a power loss. A patient told "your care team was alerted"
    /// must never lose the check-in that said so, so this is the default.
    #[default]
    Full,
    /// The log is synced only at checkpoints: a commit survives a process
    /// crash, but an OS crash or power loss can lose the last commits.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// How to open a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database URL.
    pub url: String,
    /// The service's schema (PostgreSQL) — also used in messages.
    pub schema: String,
    /// Pool size.
    pub max_connections: u32,
    /// When a SQLite commit is durable; PostgreSQL commits are durable as
    /// the server is configured (`synchronous_commit`, on by default).
    pub synchronous: Synchronous,
}

impl StoreOptions {
    /// Options with the default pool size, durable commits.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self { url: url.into(), schema: schema.into(), max_connections: 8, synchronous: Synchronous::Full }
    }
}

impl Store {
    /// Connects, creates the service's schema if needed and applies its migrations.
    pub async fn open(options: StoreOptions, migrations: &Migrations) -> Result<Self, StoreError> {
        install_default_drivers();
        let backend: Backend = options.url.parse()?;
        let schema = options.schema.clone();
        let schema_ok =
            !schema.is_empty() && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !schema_ok {
            return Err(StoreError::BadSchema(schema));
        }
        if backend == Backend::Postgres {
            create_schema(&options.url, &schema, backend).await?;
        }
        let url = match backend {
            // mode=rwc creates the file on first start.
            Backend::Sqlite if !options.url.contains("mode=") => {
                let separator = if options.url.contains('?') { '&' } else { '?' };
                format!("{}{separator}mode=rwc", options.url)
            }
            _ => options.url.clone(),
        };
        let session_schema = schema.clone();
        let synchronous = options.synchronous.pragma();
        let pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection is a file handle in this process: it cannot
            // have gone away while idle, so checking it before every
            // checkout is a round trip to its thread for nothing, paid on
            // every transaction of the crisis path. A PostgreSQL connection
            // can be dropped by the server or the network, so it is checked.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                let statement = match backend {
                    // WAL lets readers run beside the writer; the busy timeout
                    // makes a second writer wait instead of failing at once;
                    // synchronous says when a commit is on disk.
                    Backend::Sqlite => format!(
                        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous};"
                    ),
                    Backend::Postgres => format!("SET search_path TO \"{session_schema}\""),
                };
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(statement)).await?;
                    Ok(())
                })
            });
        let pool =
            pool_options.clone().connect(&url).await.map_err(|source| StoreError::Connect { backend, source })?;
        let writer = match backend {
            Backend::Sqlite => pool_options
                .clone()
                .max_connections(1)
                .connect(&url)
                .await
                .map_err(|source| StoreError::Connect { backend, source })?,
            Backend::Postgres => pool.clone(),
        };
        let migrator = migrations.migrator(backend).map_err(StoreError::Migrations)?;
        migrator.run(&pool).await.map_err(|source| StoreError::Migrate { schema: schema.clone(), source })?;
        tracing::debug!(%backend, schema = %schema, "store ready");
        Ok(Self { pool, writer, backend, schema, url, pool_options })
    }

    /// Another pool of `max_connections` on the same database and schema
    /// (already migrated), so that one kind of work cannot take the
    /// connections another needs: a service gives its gRPC API and streams
    /// such a pool, and keeps this one for its event consumers, relay and
    /// schedulers.
    pub async fn separate_pool(&self, max_connections: u32) -> Result<Store, StoreError> {
        let backend = self.backend;
        let pool = self
            .pool_options
            .clone()
            .max_connections(max_connections.max(1))
            .connect(&self.url)
            .await
            .map_err(|source| StoreError::Connect { backend, source })?;
        let writer = match backend {
            // One writer per SQLite file, whichever pool asks.
            Backend::Sqlite => self.writer.clone(),
            Backend::Postgres => pool.clone(),
        };
        Ok(Self { pool, writer, ..self.clone() })
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The service schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Begins a transaction that will write. On SQLite, where a file has
    /// one writer at a time, write transactions take turns on one
    /// connection of their own (shared with [`Store::separate_pool`]s): a
    /// writer waits in line and is woken when the one before it ends,
    /// instead of polling SQLite's lock in its busy handler, which sleeps
    /// 1, 2, 5, 10... ms between tries. It takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a writer never fails on a lock upgrade.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Closes the pool, waiting for connections to be returned. On SQLite
    /// this closes the writer its separate pools share too: close them
    /// together, when the service stops.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

async fn create_schema(url: &str, schema: &str, backend: Backend) -> Result<(), StoreError> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.map_err(|source| StoreError::Connect { backend, source })?;
    let statement = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    if let Err(error) = conn.execute(sqlx::AssertSqlSafe(statement)).await {
        // Two services starting at once can race on CREATE SCHEMA IF NOT
        // EXISTS; the loser sees a unique violation and the schema exists.
        let raced =
            error.as_database_error().and_then(|db| db.code()).is_some_and(|code| code == "23505" || code == "42P06");
        if !raced {
            return Err(error.into());
        }
    }
    conn.close().await?;
    Ok(())
}

/// Microseconds since the Unix epoch: the portable time column.
pub fn unix_micros(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The time `micros` after the Unix epoch: the inverse of [`unix_micros`].
pub fn from_unix_micros(micros: i64) -> std::time::SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    match u64::try_from(micros) {
        Ok(after) => UNIX_EPOCH + Duration::from_micros(after),
        Err(_) => UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs()),
    }
}

/// Whether an error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| db.is_unique_violation())
}

impl StoreError {
    /// Whether the database is away rather than the request or the data
    /// wrong: a retry of the same call may succeed (see [`is_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Sql(error) => is_unavailable(error),
            StoreError::UnsupportedUrl(_)
            | StoreError::BadSchema(_)
            | StoreError::Migrations(_)
            | StoreError::Migrate { .. } => false,
        }
    }
}

/// Whether an error says the database is away (down, unreachable, out of
/// connections, locked past its busy timeout) rather than that the request
/// or the data is wrong: the same call may succeed when it is back.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                return sqlite_unavailable(sqlite);
            }
            if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return postgres_unavailable(postgres);
            }
            false
        }
        _ => false,
    }
}

/// SQLite result codes (https://sqlite.org/rescode.html); the driver reports
/// the extended code, whose low byte is the primary one.
fn sqlite_unavailable(error: &sqlx::sqlite::SqliteError) -> bool {
    const BUSY: i64 = 5;
    const LOCKED: i64 = 6;
    const IOERR: i64 = 10;
    const FULL: i64 = 13;
    const CANTOPEN: i64 = 14;
    let Some(code) = sqlx::error::DatabaseError::code(error).and_then(|code| code.parse::<i64>().ok()) else {
        return false;
    };
    matches!(code & 0xff, BUSY | LOCKED | IOERR | FULL | CANTOPEN)
}

/// PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
fn postgres_unavailable(error: &sqlx::postgres::PgDatabaseError) -> bool {
    let code = error.code();
    // 08: connection exception; 53: insufficient resources (too many
    // connections, disk full); 58: system error (I/O).
    if code.starts_with("08") || code.starts_with("53") || code.starts_with("58") {
        return true;
    }
    // 57P01 admin_shutdown (the server stops, or an operator ended the
    // session), 57P02 crash_shutdown, 57P03 cannot_connect_now (starting
    // up), 57P05 idle_session_timeout.
    if matches!(code, "57P01" | "57P02" | "57P03" | "57P05") {
        return true;
    }
    // A database that refuses connections (ALLOW_CONNECTIONS false during
    // maintenance) answers object_not_in_prerequisite_state from the check
    // at connect time; the same code elsewhere is a real error.
    code == "55000" && error.routine() == Some("CheckMyDatabase")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::TestDatabase;

    static NO_MIGRATIONS: Migrations = Migrations::none();

    /// Work on a separate pool (the API, its streams) can hold every one of
    /// its connections and the store's own pool (event consumers) still
    /// gets one.
    async fn a_separate_pool_cannot_take_the_stores_connections(backend: Backend) {
        let database = TestDatabase::create(backend).await;
        let options = StoreOptions { max_connections: 2, ..StoreOptions::new(database.url.clone(), "pools") };
        let store = Store::open(options, &NO_MIGRATIONS).await.expect("open");
        let api = store.separate_pool(2).await.expect("separate pool");
        assert_eq!((api.backend(), api.schema()), (store.backend(), store.schema()));
        let held = [api.pool().acquire().await.unwrap(), api.pool().acquire().await.unwrap()];
        let busy = tokio::time::timeout(Duration::from_millis(200), api.pool().acquire()).await;
        assert!(busy.is_err(), "the separate pool is full");
        let mut consumer = tokio::time::timeout(Duration::from_secs(30), store.pool().acquire())
            .await
            .expect("the store's pool is not affected by the separate one")
            .unwrap();
        let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *consumer).await.unwrap();
        assert_eq!(one, 1);
        drop((held, consumer));
        api.close().await;
        store.close().await;
        database.drop_database().await;
    }

    #[tokio::test]
    async fn a_separate_pool_cannot_take_the_stores_connections_sqlite() {
        a_separate_pool_cannot_take_the_stores_connections(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_separate_pool_cannot_take_the_stores_connections_postgres() {
        a_separate_pool_cannot_take_the_stores_connections(Backend::Postgres).await;
    }

    async fn synchronous_of(options: StoreOptions) -> i64 {
        let store = Store::open(options, &NO_MIGRATIONS).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
        drop(conn);
        // A separate pool commits the same way.
        let api = store.separate_pool(1).await.unwrap();
        let mut conn = api.pool().acquire().await.unwrap();
        let separate: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(separate, level);
        drop(conn);
        api.close().await;
        store.close().await;
        level
    }

    /// A database that is away reads as unavailable; a bad query or a
    /// constraint does not.
    async fn an_outage_is_unavailable_and_a_bad_query_is_not(backend: Backend) {
        use sqlx::Connection;
        let database = TestDatabase::create(backend).await;
        let store = Store::open(StoreOptions::new(database.url.clone(), "outage"), &NO_MIGRATIONS).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (id BIGINT PRIMARY KEY)").execute(store.pool()).await.unwrap();
        sqlx::raw_sql("INSERT INTO t (id) VALUES (1)").execute(store.pool()).await.unwrap();
        let duplicate = sqlx::raw_sql("INSERT INTO t (id) VALUES (1)").execute(store.pool()).await.unwrap_err();
        assert!(is_unique_violation(&duplicate) && !is_unavailable(&duplicate), "{duplicate}");
        let syntax = sqlx::raw_sql("SELEKT 1").execute(store.pool()).await.unwrap_err();
        assert!(!is_unavailable(&syntax), "{syntax}");
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        match backend {
            Backend::Sqlite => {
                // Another process holds the write lock past our busy timeout.
                let mut holder = sqlx::AnyConnection::connect(&database.url).await.unwrap();
                sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();
                let mut writer = sqlx::AnyConnection::connect(&database.url).await.unwrap();
                sqlx::raw_sql("PRAGMA busy_timeout = 50").execute(&mut writer).await.unwrap();
                let busy = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut writer).await.unwrap_err();
                assert!(is_unavailable(&busy), "{busy}");
                assert!(StoreError::Sql(busy).is_unavailable());
                sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
            }
            Backend::Postgres => {
                // An operator ends the sessions and refuses new ones.
                let mut session = sqlx::AnyConnection::connect(&database.url).await.unwrap();
                let mut admin = sqlx::AnyConnection::connect(&testing::postgres_admin_url()).await.unwrap();
                let name = database.url.rsplit('/').next().unwrap().to_owned();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                    .bind(&name)
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let ended = sqlx::raw_sql("SELECT 1").execute(&mut session).await.unwrap_err();
                assert!(is_unavailable(&ended), "{ended}");
                let refused = sqlx::AnyConnection::connect(&database.url).await.unwrap_err();
                assert!(is_unavailable(&refused), "{refused}");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
        store.close().await;
        database.drop_database().await;
    }

    #[tokio::test]
    async fn an_outage_is_unavailable_and_a_bad_query_is_not_sqlite() {
        an_outage_is_unavailable_and_a_bad_query_is_not(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn an_outage_is_unavailable_and_a_bad_query_is_not_postgres() {
        an_outage_is_unavailable_and_a_bad_query_is_not(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn sqlite_commits_are_durable_unless_asked_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
        // PRAGMA synchronous: 1 = NORMAL, 2 = FULL.
        assert_eq!(synchronous_of(StoreOptions::new(url("full"), "full")).await, 2);
        let normal = StoreOptions { synchronous: Synchronous::Normal, ..StoreOptions::new(url("normal"), "normal") };
        assert_eq!(synchronous_of(normal).await, 1);
    }
}
