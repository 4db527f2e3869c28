//! Hearing the key changes that every instance announces (`NOTIFY` on
//! [`PgStore::KEY_CHANGE_CHANNEL`], sent in the changing transaction, so a notice arrives
//! only once the change is committed and readable).
//!
//! A notice is lost when the listening connection is (PostgreSQL keeps no backlog for a
//! session that is gone), so a lost connection is reported as [`KeyChange::Missed`] once
//! the listener is listening again: whatever changed in between is in the store, and
//! anything after arrives as a notice.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::{PgListener, PgNotification};
use uuid::Uuid;

use super::PgStore;
use crate::store::{KeyChange, StoreResult};

/// The `NOTIFY` payload: JSON, `{"key_id": …, "workspace_id": …}` for a change of one key,
/// `{"workspace_id": …}` (no `key_id`) for a change of a workspace that admission reads
/// (its credits) or its deletion. Older instances sent the key's bare uuid; that is still
/// understood, so a rolling upgrade loses no notice.
#[derive(Debug, Deserialize)]
pub(super) struct Notice {
    #[serde(default)]
    key_id: Option<Uuid>,
    workspace_id: Uuid,
}

impl Notice {
    pub(super) fn payload(key_id: Option<Uuid>, workspace_id: Uuid) -> String {
        match key_id {
            Some(key_id) => json!({ "key_id": key_id, "workspace_id": workspace_id }),
            None => json!({ "workspace_id": workspace_id }),
        }
        .to_string()
    }

    /// What a payload says changed; `Missed` for a payload this version cannot read (from
    /// a newer instance, say), since something did change.
    fn read(payload: &str) -> KeyChange {
        if let Ok(key_id) = Uuid::parse_str(payload) {
            return KeyChange::Key {
                key_id,
                workspace_id: None,
            };
        }
        match serde_json::from_str::<Notice>(payload) {
            Ok(Notice {
                key_id: Some(key_id),
                workspace_id,
            }) => KeyChange::Key {
                key_id,
                workspace_id: Some(workspace_id),
            },
            Ok(Notice {
                key_id: None,
                workspace_id,
            }) => KeyChange::Workspace { workspace_id },
            Err(err) => {
                tracing::warn!(%payload, error = %err, "unreadable key-change notice; treating every cached key as changed");
                KeyChange::Missed
            }
        }
    }
}

/// Longest pause between two attempts to listen again while PostgreSQL is away.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A `LISTEN` on [`PgStore::KEY_CHANGE_CHANNEL`] over a connection of its own, taken from
/// the store's pool for as long as this lives.
pub struct KeyChanges {
    pool: sqlx::PgPool,
    /// `None` after a failure, until listening again succeeds.
    listener: Option<PgListener>,
}

impl std::fmt::Debug for KeyChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyChanges")
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

impl KeyChanges {
    /// Listens from now on: every change committed after this returns will be heard.
    pub(super) async fn start(store: &PgStore) -> StoreResult<KeyChanges> {
        let pool = store.pool().clone();
        let listener = listen(&pool).await?;
        Ok(KeyChanges {
            pool,
            listener: Some(listener),
        })
    }

    /// The next change. Never fails: while PostgreSQL cannot be reached it keeps trying
    /// (with a growing, jittered pause) and then answers [`KeyChange::Missed`].
    pub async fn next(&mut self) -> KeyChange {
        let mut pause = Duration::from_millis(100);
        loop {
            let Some(listener) = self.listener.as_mut() else {
                match listen(&self.pool).await {
                    Ok(listener) => {
                        tracing::info!("listening for key changes again");
                        self.listener = Some(listener);
                        return KeyChange::Missed;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot listen for key changes yet");
                        tokio::time::sleep(jittered(pause)).await;
                        pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        continue;
                    }
                }
            };
            // sqlx reconnects (and listens again) before answering `Ok(None)` for a lost
            // connection; any other failure drops the listener, and the loop above makes
            // a new one.
            match listener.try_recv().await {
                Ok(Some(notice)) => return read(&notice),
                Ok(None) => {
                    tracing::warn!("the key-change listener lost its connection and listens again; every cached key will be re-read");
                    return KeyChange::Missed;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the key-change listener failed; listening again");
                    self.listener = None;
                }
            }
        }
    }
}

async fn listen(pool: &sqlx::PgPool) -> StoreResult<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(PgStore::KEY_CHANGE_CHANNEL).await?;
    Ok(listener)
}

fn read(notice: &PgNotification) -> KeyChange {
    Notice::read(notice.payload())
}

/// `pause` ± 25 %, so that replicas which lost PostgreSQL together do not retry in step.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_as_the_change_they_name() {
        let key_id = Uuid::now_v7();
        let workspace_id = Uuid::now_v7();
        let key = Notice::payload(Some(key_id), workspace_id);
        assert_eq!(
            Notice::read(&key),
            KeyChange::Key {
                key_id,
                workspace_id: Some(workspace_id)
            }
        );
        let workspace = Notice::payload(None, workspace_id);
        assert_eq!(workspace, format!(r#"{{"workspace_id":"{workspace_id}"}}"#));
        assert_eq!(
            Notice::read(&workspace),
            KeyChange::Workspace { workspace_id }
        );
        // What instances before the JSON payload sent.
        assert_eq!(
            Notice::read(&key_id.to_string()),
            KeyChange::Key {
                key_id,
                workspace_id: None
            }
        );
        assert_eq!(Notice::read("something else"), KeyChange::Missed);
    }
}
