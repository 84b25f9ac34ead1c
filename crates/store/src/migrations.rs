//! A service's migrations, written once for both databases.
//!
//! Each migration is one file, `migrations/<version>_<description>.sql`, in PostgreSQL's
//! dialect; [`render`] turns it into SQLite's, and that is the only place the two dialects
//! differ:
//!
//! - types: `BYTEA` is `BLOB`; `BIGSERIAL PRIMARY KEY` is `INTEGER PRIMARY KEY
//!   AUTOINCREMENT`;
//! - a change one dialect cannot express as the other does (SQLite cannot drop a primary
//!   key, so it rebuilds the table) is written twice in the same file, each half after a
//!   line `-- dialect: postgres` or `-- dialect: sqlite`; a line `-- dialect: all` goes back
//!   to text both share, as is the text before the first such line.
//!
//! Files are compiled in with [`migrations!`](crate::migrations), and versions, descriptions
//! and checksums are those `sqlx::migrate!` gave the files when each dialect had a tree of
//! its own, so a database migrated by an earlier release opens unchanged.

use std::borrow::Cow;
use std::sync::OnceLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

use crate::Backend;

/// One migration file, compiled in.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// The file's name, `<version>_<description>.sql`.
    pub name: &'static str,
    /// Its SQL, in PostgreSQL's dialect with SQLite's where it differs.
    pub sql: &'static str,
}

/// A service's migrations: its files, rendered once per backend on first use.
#[derive(Debug)]
pub struct Migrations {
    files: &'static [MigrationFile],
    sqlite: OnceLock<Result<Migrator, String>>,
    postgres: OnceLock<Result<Migrator, String>>,
}

impl Migrations {
    /// The migrations in `files` (see [`migrations!`](crate::migrations)).
    pub const fn new(files: &'static [MigrationFile]) -> Self {
        Self { files, sqlite: OnceLock::new(), postgres: OnceLock::new() }
    }

    /// No migrations, for stores whose tables their users create.
    pub const fn none() -> Self {
        Self::new(&[])
    }

    /// The files.
    pub fn files(&self) -> &'static [MigrationFile] {
        self.files
    }

    /// The migrator for `backend`, or why a file cannot be one (a name without a version,
    /// an unknown dialect section).
    pub fn migrator(&self, backend: Backend) -> Result<&Migrator, String> {
        let cell = match backend {
            Backend::Sqlite => &self.sqlite,
            Backend::Postgres => &self.postgres,
        };
        cell.get_or_init(|| build(self.files, backend)).as_ref().map_err(Clone::clone)
    }
}

fn build(files: &[MigrationFile], backend: Backend) -> Result<Migrator, String> {
    let mut migrations = Vec::with_capacity(files.len());
    for file in files {
        let (version, description) = name_parts(file.name)?;
        let sql = render(file.sql, backend).map_err(|error| format!("{}: {error}", file.name))?;
        let no_tx = sql.starts_with("-- no-transaction");
        migrations.push(Migration::new(
            version,
            Cow::Owned(description),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            no_tx,
        ));
    }
    Ok(Migrator::with_migrations(migrations))
}

/// The version and description in a file name, as `sqlx::migrate!` reads them: `0002_care_plans.sql`
/// is version 2, "care plans".
fn name_parts(name: &str) -> Result<(i64, String), String> {
    let bad = || format!("migration file {name:?} is not named <version>_<description>.sql");
    let (version, rest) = name.split_once('_').ok_or_else(bad)?;
    let description = rest.strip_suffix(".sql").ok_or_else(bad)?;
    let version = version.parse().map_err(|_| bad())?;
    Ok((version, description.replace('_', " ")))
}

/// The line that starts a dialect's half of a migration.
const SECTION: &str = "-- dialect: ";

/// `sql`, written in PostgreSQL's dialect, for `backend`: the shared text, then the section
/// for `backend` if there are sections, with SQLite's types in SQLite's.
pub fn render(sql: &str, backend: Backend) -> Result<String, String> {
    let wanted = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let mut rendered = String::with_capacity(sql.len());
    // Whether the lines read now are for `backend`: shared text is.
    let mut keep = true;
    for line in sql.split_inclusive('\n') {
        if let Some(dialect) = line.strip_prefix(SECTION) {
            keep = match dialect.trim() {
                "all" => true,
                "sqlite" | "postgres" => dialect.trim() == wanted,
                other => return Err(format!("unknown dialect {other:?}; use postgres, sqlite or all")),
            };
            continue;
        }
        if keep {
            rendered.push_str(line);
        }
    }
    Ok(match backend {
        Backend::Postgres => rendered,
        Backend::Sqlite => {
            rendered.replace("BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT").replace("BYTEA", "BLOB")
        }
    })
}

/// The [`Migrations`] of the files named, in `migrations/` under the calling crate's
/// manifest directory, compiled in:
///
/// ```ignore
/// pub static MIGRATIONS: Migrations = tandem_store::migrations!["0001_patients.sql", "0002_care_plans.sql"];
/// ```
///
/// or, from another directory of the crate, `migrations![in "tests/migrations": "0001_rows.sql"]`.
#[macro_export]
macro_rules! migrations {
    (in $dir:literal: $($file:literal),* $(,)?) => {
        $crate::Migrations::new(&[
            $($crate::MigrationFile {
                name: $file,
                sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $dir, "/", $file)),
            }),*
        ])
    };
    ($($file:literal),* $(,)?) => {
        $crate::migrations![in "migrations": $($file),*]
    };
}

/// A test, in the calling crate, that its `MIGRATIONS` list every file of its `migrations/`
/// directory and render for both backends
/// ([`testing::assert_every_migration_listed`](crate::testing::assert_every_migration_listed);
/// needs tandem-store's `testing` feature in dev-dependencies):
///
/// ```ignore
/// tandem_store::migrations_listed_test!(MIGRATIONS);
/// ```
#[macro_export]
macro_rules! migrations_listed_test {
    ($migrations:path) => {
        #[cfg(test)]
        #[test]
        fn every_migration_file_is_listed() {
            $crate::testing::assert_every_migration_listed(
                &$migrations,
                concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"),
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_rendered_for_sqlite_and_left_for_postgres() {
        let sql = "CREATE TABLE t (\n    seq BIGSERIAL PRIMARY KEY,\n    body BYTEA NOT NULL\n);\n";
        assert_eq!(render(sql, Backend::Postgres).as_deref(), Ok(sql));
        assert_eq!(
            render(sql, Backend::Sqlite).as_deref(),
            Ok("CREATE TABLE t (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n    body BLOB NOT NULL\n);\n")
        );
    }

    #[test]
    fn sections_keep_the_shared_text_and_their_own_dialect() {
        let sql = "-- shared\n-- dialect: postgres\nALTER TABLE a DROP CONSTRAINT a_pkey;\n-- dialect: sqlite\nCREATE TABLE a2 (x BYTEA);\n-- dialect: all\nDROP INDEX b;\n";
        assert_eq!(
            render(sql, Backend::Postgres).as_deref(),
            Ok("-- shared\nALTER TABLE a DROP CONSTRAINT a_pkey;\nDROP INDEX b;\n")
        );
        assert_eq!(
            render(sql, Backend::Sqlite).as_deref(),
            Ok("-- shared\nCREATE TABLE a2 (x BLOB);\nDROP INDEX b;\n")
        );
        assert!(render("-- dialect: mysql\nSELECT 1;\n", Backend::Sqlite).is_err());
    }

    #[test]
    fn names_are_read_as_sqlx_reads_them() {
        assert_eq!(name_parts("0002_care_plans.sql"), Ok((2, "care plans".to_owned())));
        assert!(name_parts("care_plans.sql").is_err());
        assert!(name_parts("0002.sql").is_err());
        assert!(name_parts("0002_care_plans.txt").is_err());
    }

    #[test]
    fn a_migrator_is_built_per_backend_with_sqlx_checksums() {
        static FILES: [MigrationFile; 1] =
            [MigrationFile { name: "0001_rows.sql", sql: "CREATE TABLE rows (body BYTEA NOT NULL);\n" }];
        let migrations = Migrations::new(&FILES);
        let sqlite = migrations.migrator(Backend::Sqlite).expect("renders");
        let first = sqlite.iter().next().expect("one migration");
        assert_eq!((first.version, first.description.as_ref()), (1, "rows"));
        assert_eq!(
            first.checksum.as_ref(),
            sqlx::migrate::Migration::new(
                1,
                "rows".into(),
                MigrationType::Simple,
                "CREATE TABLE rows (body BLOB NOT NULL);\n".into_sql_str(),
                false
            )
            .checksum
            .as_ref()
        );
        assert_eq!(migrations.migrator(Backend::Postgres).map(|m| m.iter().count()), Ok(1));
    }
}
