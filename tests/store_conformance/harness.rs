//! Runs one test body against a fresh store of each backend, and builds test data.
//!
//! SQLite: a new file in a temporary directory. PostgreSQL: a new database
//! `kg_test_<uuid>` on the server named by `KEYGATE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards even when the body
//! panics.

use std::{future::Future, panic::resume_unwind, str::FromStr};

use chrono::{DateTime, TimeZone, Utc};
use keygate::{
    keys::model::{ApiKey, CompatFields, KeyKind, Limits},
    store::{self, AuditEvent, DynStore, Page, SecretRecord, Workspace},
};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Whether the harness migrates the store before handing it to the body.
#[derive(Clone, Copy)]
pub enum Setup {
    Migrated,
    Empty,
}

async fn open(url: &str, setup: Setup) -> DynStore {
    let store = store::connect(url).await.unwrap();
    if let Setup::Migrated = setup {
        store.migrate().await.unwrap();
    }
    store
}

/// Runs `body(store, url)` on a fresh SQLite file.
pub async fn run_sqlite<F, Fut>(body: F, setup: Setup)
where
    F: FnOnce(DynStore, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let store = open(&url, setup).await;
    assert_eq!(store.backend(), "sqlite");
    body(store, url).await;
}

/// Runs `body(store, url)` on a fresh PostgreSQL database, dropped afterwards.
pub async fn run_postgres<F, Fut>(body: F, setup: Setup)
where
    F: FnOnce(DynStore, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin_url =
        std::env::var("KEYGATE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_string());
    let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL at {admin_url} is not reachable ({e}); set KEYGATE_TEST_PG_URL")
    });
    let db = format!("kg_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("create database {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = with_database(&admin_url, &db);

    // Run the body in its own task so that a panic comes back here and the database is
    // dropped before the panic goes on.
    let outcome = tokio::spawn(async move {
        let store = open(&url, setup).await;
        assert_eq!(store.backend(), "postgres");
        body(store, url).await;
    })
    .await;

    sqlx::query(&format!("drop database if exists {db} with (force)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    if let Err(err) = outcome {
        match err.try_into_panic() {
            Ok(panic) => resume_unwind(panic),
            Err(err) => panic!("test task failed: {err}"),
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{db}?{query}"),
        None => format!("{base}/{db}"),
    }
}

// ---------------------------------------------------------------------------------------
// test data

pub fn page(page: u32, limit: u32) -> Page {
    Page { page, limit }
}

/// Id of the `default` workspace.
pub async fn default_ws(store: &DynStore) -> Uuid {
    store.default_workspace().await.unwrap().id
}

/// A fixed point in time (2025-03-10T12:00:00Z) plus `secs` seconds.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap() + chrono::TimeDelta::seconds(secs)
}

/// A UTC time from its parts.
pub fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

pub fn usd(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

pub fn lookup_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A key with only the required fields set, created at `created_at`.
pub fn new_key(workspace_id: Uuid, name: &str, created_at: DateTime<Utc>) -> ApiKey {
    ApiKey {
        id: Uuid::now_v7(),
        workspace_id,
        name: name.to_string(),
        kind: KeyKind::Inference,
        partial_key: "kg_abcd1234…9xYz".to_string(),
        last6: "a19xYz".to_string(),
        created_by: "cli".to_string(),
        created_at,
        updated_at: created_at,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
        metadata: serde_json::Map::new(),
        allowed_models: None,
        budget: None,
        limits: Limits::default(),
        model_limits: Vec::new(),
        max_parallel: None,
        ip_allowlist: None,
        alert_thresholds: None,
        compat: CompatFields::default(),
        wallet_address: None,
    }
}

pub fn secret_for(key: &ApiKey, created_at: DateTime<Utc>) -> SecretRecord {
    let lookup_id = lookup_id();
    SecretRecord {
        hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt{lookup_id}$hash"),
        lookup_id,
        key_id: key.id,
        valid_until: None,
        created_at,
    }
}

pub fn audit(workspace_id: Uuid, action: &str, target: &str, at: DateTime<Utc>) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        workspace_id,
        actor: "cli".to_string(),
        action: action.to_string(),
        target: target.to_string(),
        at,
        source: None,
        details: serde_json::json!({}),
    }
}

/// Inserts `key` (no cap) with a fresh secret, and returns that secret.
pub async fn insert(store: &DynStore, key: &ApiKey) -> SecretRecord {
    let secret = secret_for(key, key.created_at);
    let event = audit(
        key.workspace_id,
        "key.create",
        &format!("key:{}", key.id),
        key.created_at,
    );
    store.insert_key(key, &secret, None, &event).await.unwrap();
    secret
}

pub fn workspace(name: &str, created_at: DateTime<Utc>) -> Workspace {
    Workspace {
        id: Uuid::now_v7(),
        name: name.to_string(),
        key_cap: None,
        credits_usd: None,
        webhook_url: None,
        webhook_secret: None,
        created_at,
        updated_at: created_at,
    }
}

/// Creates a workspace named `name` and returns it.
pub async fn create_workspace(store: &DynStore, name: &str) -> Workspace {
    let ws = workspace(name, t(0));
    let event = audit(
        ws.id,
        "workspace.create",
        &format!("workspace:{}", ws.id),
        t(0),
    );
    store.create_workspace(&ws, &event).await.unwrap();
    ws
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
