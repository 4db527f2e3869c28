//! A database nobody else uses, per test (or shared by the replicas of one test): a SQLite
//! file in a temporary directory, or a fresh PostgreSQL database on the shared server,
//! dropped when the last user lets go of it.

use std::path::PathBuf;

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::backends::Backend;

/// Server-level PostgreSQL URL used to create and drop the per-test databases.
pub fn pg_admin_url() -> String {
    std::env::var("KEYGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database nobody else uses. SQLite: a file in a temp dir that goes with it.
/// PostgreSQL: `kg_api_<uuid>`, dropped (with force) when this value is dropped.
pub struct TestDb {
    pub url: String,
    /// Holds the SQLite file (and the CLI's config files) for as long as the test runs.
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("keygate.db");
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("kg_api_{}", Uuid::new_v4().simple());
                let admin = pg_admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::raw_sql(&format!("create database \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                let _ = conn.close().await;
                TestDb {
                    url: with_database(&admin, &name),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// The SQLite database file and its WAL/SHM companions (whichever exist).
    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .expect("read temp dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("keygate.db"))
            })
            .collect()
    }

    /// Writes a config file naming this database and returns its path.
    pub fn config_file(&self) -> PathBuf {
        let path = self.dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            format!("database_url = {}\n", toml_string(&self.url)),
        )
        .expect("write config file");
        path
    }
}

/// `url` (a PostgreSQL server URL) with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).expect("KEYGATE_TEST_PG_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop may run inside the test's runtime; do the async work on a thread of its own.
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::raw_sql(&format!("drop database if exists \"{name}\" with (force)"))
                            .execute(&mut conn)
                            .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
