//! Fixtures for the usage tests: a migrated SQLite store in a temp dir and stored keys.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    keys::model::{ApiKey, Budget, BudgetPeriod},
    store::{AuditEvent, DynStore, SecretRecord, UsageDelta},
};

pub(crate) async fn sqlite_store() -> (tempfile::TempDir, DynStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store = crate::store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (dir, store)
}

pub(crate) fn usd(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

pub(crate) fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

pub(crate) fn budget(limit: &str, period: BudgetPeriod) -> Option<Budget> {
    Some(Budget {
        limit_usd: usd(limit),
        period,
    })
}

/// Inserts a live inference key in the default workspace.
pub(crate) async fn insert_key(store: &DynStore, budget: Option<Budget>) -> ApiKey {
    let workspace = store.default_workspace().await.unwrap();
    let key = ApiKey {
        budget,
        ..ApiKey::for_tests(workspace.id, "test")
    };
    let (id, now) = (key.id, key.created_at);
    let secret = SecretRecord {
        lookup_id: id.simple().to_string(),
        key_id: id,
        hash: "not-a-real-hash".into(),
        valid_until: None,
        created_at: now,
    };
    let audit = AuditEvent {
        id: Uuid::now_v7(),
        workspace_id: workspace.id,
        actor: "test".into(),
        action: "key.create".into(),
        target: format!("key:{id}"),
        at: now,
        source: None,
        details: serde_json::json!({}),
    };
    store.insert_key(&key, &secret, None, &audit).await.unwrap();
    key
}

/// Writes `cost_pico` of usage for `key` at `minute` straight to the store.
pub(crate) async fn stored_usage(
    store: &DynStore,
    key: &ApiKey,
    minute: DateTime<Utc>,
    cost_pico: i64,
) {
    store
        .add_usage(&[UsageDelta {
            key_id: key.id,
            workspace_id: key.workspace_id,
            model: "m".into(),
            minute,
            requests: 1,
            input_tokens: 10,
            output_tokens: 10,
            cost_pico,
        }])
        .await
        .unwrap();
}

/// Makes every usage read and write fail (or work again) by renaming the table from a
/// second connection: a transient store failure without a fake store.
pub(crate) async fn break_usage_table(dir: &tempfile::TempDir, broken: bool) {
    use sqlx::Connection;
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let sql = if broken {
        "alter table usage_minute rename to usage_minute_offline"
    } else {
        "alter table usage_minute_offline rename to usage_minute"
    };
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}
