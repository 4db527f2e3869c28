//! Keeps this instance's caches in step with the key and workspace changes any instance
//! makes (DESIGN §7): a background task hears each change ([`KeyChanges`], PostgreSQL's
//! `LISTEN`/`NOTIFY`) and drops what this instance cached about it, so a key revoked,
//! changed or rotated on one replica is refused or applied on every other within
//! milliseconds, not after `keys.cache_ttl_ms` (which stays the safety net).
//!
//! Cached per key or workspace, and dropped on its change:
//! - the verified key (`KeyCache`): marked stale, so its next use re-reads the row;
//! - the key's budget account (`BudgetLedger::forget`): its spend baseline is re-read;
//! - the workspace's credits (`Gateway::forget_credits`) and its credits account.
//!
//! A missed change (the listening connection was lost) marks every cached key stale and
//! drops every workspace's credits. Left alone: a key's `max_parallel` semaphore (it
//! follows the cap of the key as read, and dropping it would free the slots of requests in
//! flight) and its rate-limit buckets (their rates come from the key read at each request).

use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};

use crate::{
    keys::cache::KeyCache,
    proxy::Gateway,
    store::{KeyChange, KeyChanges},
    usage::budget::BudgetLedger,
};

/// What this instance caches about keys and workspaces.
#[derive(Clone)]
pub struct Caches {
    pub keys: KeyCache,
    pub budgets: BudgetLedger,
    pub gateway: Arc<Gateway>,
}

impl Caches {
    /// Drops what was cached about `change`.
    pub fn forget(&self, change: KeyChange) {
        match change {
            KeyChange::Key {
                key_id,
                workspace_id: _,
            } => {
                self.keys.mark_stale(key_id);
                self.budgets.forget(key_id);
            }
            KeyChange::Workspace { workspace_id } => {
                self.gateway.forget_credits(Some(workspace_id));
                self.budgets.forget_workspace(workspace_id);
            }
            KeyChange::Missed => {
                self.keys.mark_all_stale();
                self.gateway.forget_credits(None);
            }
        }
    }
}

/// Applies every change `changes` hears to `caches` until `stop` turns true.
pub fn spawn(
    mut changes: KeyChanges,
    caches: Caches,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                change = changes.next() => {
                    tracing::debug!(?change, "key change heard");
                    caches.forget(change);
                }
                _ = stop.changed() => break,
            }
        }
    })
}
