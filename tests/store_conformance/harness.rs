//! The store each conformance body asks for, on a fresh [`TestDb`] of the test's backend
//! (a SQLite file in a temporary directory, or a new PostgreSQL database on the server
//! named by `KEYGATE_TEST_PG_URL`, dropped afterwards even when the body panics), and
//! builders of test data.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use keygate::{
    keys::model::{ApiKey, CompatFields, KeyKind, Limits},
    store::{self, AuditEvent, DynStore, Page, SecretRecord, Workspace},
};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::support::{
    backends::{Backend, Fixture, Setup},
    db::TestDb,
};

/// A store on a fresh database of the test's backend, not migrated; the database lives
/// as long as the returned guard.
async fn open(setup: Setup) -> (DynStore, String, TestDb) {
    let db = TestDb::new(setup.backend).await;
    let store = store::connect(&db.url).await.unwrap();
    let expected = match setup.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(store.backend(), expected);
    (store, db.url.clone(), db)
}

/// A body taking a `DynStore` gets it migrated.
impl Fixture for DynStore {
    type Guard = TestDb;
    async fn prepare(setup: Setup) -> (DynStore, TestDb) {
        let (store, _, db) = open(setup).await;
        store.migrate().await.unwrap();
        (store, db)
    }
}

/// A store on an empty database (no migration run).
pub struct EmptyStore(pub DynStore);

impl Fixture for EmptyStore {
    type Guard = TestDb;
    async fn prepare(setup: Setup) -> (EmptyStore, TestDb) {
        let (store, _, db) = open(setup).await;
        (EmptyStore(store), db)
    }
}

/// A migrated store and its database URL, to reach the database directly.
pub struct StoreWithUrl(pub DynStore, pub String);

impl Fixture for StoreWithUrl {
    type Guard = TestDb;
    async fn prepare(setup: Setup) -> (StoreWithUrl, TestDb) {
        let (store, url, db) = open(setup).await;
        store.migrate().await.unwrap();
        (StoreWithUrl(store, url), db)
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
        fit_max_tokens: false,
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
    use crate::support::db::with_database;

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
