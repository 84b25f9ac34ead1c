//! Test support: one test body, run on SQLite and on PostgreSQL.
//!
//! Each PostgreSQL test gets a database of its own, created from
//! `TANDEM_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and dropped afterwards, also when the body panics. `scripts/test` sets the
//! variable up; without a reachable server the PostgreSQL half fails loudly.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use sqlx::Connection;
use sqlx::Executor;

use crate::{Backend, Migrations, Store, StoreOptions};

/// The admin URL PostgreSQL tests create their databases from.
pub fn postgres_admin_url() -> String {
    std::env::var("TANDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A throwaway database for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL services and stores connect to.
    pub url: String,
    backend: Backend,
    name: String,
    // Keeps the SQLite directory alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Creates an empty database on the backend.
    pub async fn create(backend: Backend) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory for sqlite");
                let url = format!("sqlite://{}/{name}.db", dir.path().display());
                Self { url, backend, name, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap_or_else(|error| {
                    panic!(
                        "cannot reach the test PostgreSQL at {admin}: {error}; run the tests through scripts/test, or set TANDEM_TEST_POSTGRES_URL"
                    )
                });
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .await
                    .expect("create the test database");
                conn.close().await.ok();
                let url = replace_database(&admin, &name);
                Self { url, backend, name, _dir: None }
            }
        }
    }

    /// A directory that lives as long as this database (SQLite only).
    pub fn dir(&self) -> Option<&std::path::Path> {
        self._dir.as_ref().map(|dir| dir.path())
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Drops the database (PostgreSQL) or its directory (SQLite).
    pub async fn drop_database(self) {
        if self.backend == Backend::Postgres {
            let admin = postgres_admin_url();
            if let Ok(mut conn) = sqlx::AnyConnection::connect(&admin).await {
                let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
                if let Err(error) = conn.execute(sqlx::AssertSqlSafe(statement)).await {
                    eprintln!("could not drop test database {}: {error}", self.name);
                }
                conn.close().await.ok();
            }
        }
    }
}

/// Replaces the database name of a PostgreSQL URL, keeping its query.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Runs `body` with a fresh, migrated store on `backend`, then drops the
/// database, and re-raises the body's panic if it had one.
pub async fn run<F, Fut>(backend: Backend, migrations: &Migrations, schema: &str, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let database = TestDatabase::create(backend).await;
    let store =
        Store::open(StoreOptions::new(database.url.clone(), schema), migrations).await.expect("open the test store");
    let outcome = AssertUnwindSafe(body(store.clone())).catch_unwind().await;
    store.close().await;
    database.drop_database().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Declares a storage test that runs one body on SQLite and on PostgreSQL:
/// `store_test!(name, &MIGRATIONS, "schema", |store| async move { ... });`
/// makes `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! store_test {
    ($name:ident, $migrations:expr, $schema:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::testing::run($crate::Backend::Sqlite, $migrations, $schema, $body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::testing::run($crate::Backend::Postgres, $migrations, $schema, $body).await;
            }
        }
    };
}

/// Panics unless `migrations` lists every `.sql` file in `dir` (a service's
/// `migrations/` directory) and renders for both backends: a migration
/// added to the directory but not to `tandem_store::migrations![...]` would
/// otherwise never run.
pub fn assert_every_migration_listed(migrations: &Migrations, dir: &str) {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {dir}: {error}"))
        .filter_map(|entry| entry.ok().map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".sql"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = migrations.files().iter().map(|file| file.name.to_owned()).collect();
    assert_eq!(listed, on_disk, "list every file of {dir} in migrations![...], in order");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if let Err(error) = migrations.migrator(backend) {
            panic!("{dir} on {backend}: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            replace_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h:5432", "t1"), "postgres://u@h:5432/t1");
    }
}
