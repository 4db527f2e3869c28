//! Budget alerts (DESIGN §3, issue 15 §2): when a key's spend in its budget period crosses
//! one of its `alert_thresholds`, keygate POSTs a signed `budget.threshold` event to its
//! workspace's webhook, once per threshold and period across replicas and restarts.
//!
//! Nothing here runs per request. The usage writer, after each flush, hands over the ids
//! of the keys it wrote usage for ([`KeysToCheck`]); the [`check`] task reads those keys'
//! period spend from the store (the record of spend, shared by every replica) and, for
//! each threshold crossed, claims the alert in the store (`Store::claim_budget_alert`:
//! the one instance whose insert went in sends it). The [`deliver`] task then POSTs it,
//! retrying with backoff; each claimed alert is a store row that carries its delivery
//! state, so an operator can see it and a pending delivery survives a restart (a sweep
//! picks up due rows). Delivery is at least once: an attempt whose 2xx answer was not
//! recorded (crash, store down) is sent again, with the same `keygate-alert-id`.

mod check;
mod deliver;
pub mod signature;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{
    sync::{mpsc, watch, Notify},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{config::WebhooksConfig, store::DynStore, usage::writer::FlushHook};

pub use self::deliver::{NonPublicAddress, ALERT_ID_HEADER};

/// Audit actor of what keygate does by itself.
const ACTOR: &str = "keygate";

/// Keys whose usage was flushed and whose thresholds have not been checked since. A set,
/// so that a slow check coalesces many flushes instead of queueing them.
#[derive(Default)]
pub struct KeysToCheck {
    keys: Mutex<Inbox>,
    wake: Notify,
}

#[derive(Default)]
struct Inbox {
    keys: HashSet<Uuid>,
    /// The writer has ended: nothing more will arrive.
    closed: bool,
}

impl KeysToCheck {
    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hook for `usage::writer::AfterFlush::alerts`. When the writer drops it (its
    /// task ended, after the final flush), the checker finishes what it holds and ends.
    pub fn hook(self: &Arc<Self>) -> FlushHook {
        let sender = Arc::new(HookSender(self.clone()));
        Arc::new(move |keys: Vec<Uuid>| {
            let inbox = &sender.0;
            inbox.inbox().keys.extend(keys);
            inbox.wake.notify_one();
        })
    }

    /// Waits for keys; `None` once the writer has ended and everything was taken.
    async fn next(&self) -> Option<Vec<Uuid>> {
        loop {
            {
                let mut inbox = self.inbox();
                if !inbox.keys.is_empty() {
                    return Some(inbox.keys.drain().collect());
                }
                if inbox.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Owned by the hook closure; closes the inbox when the last copy is dropped.
struct HookSender(Arc<KeysToCheck>);

impl Drop for HookSender {
    fn drop(&mut self) {
        self.0.inbox().closed = true;
        self.0.wake.notify_one();
    }
}

/// Starts the checker and the delivery task. The checker ends after the usage writer (when
/// the hook is dropped); the delivery task when `stop` turns true, leaving what is pending
/// in the store for the next start (or another replica).
/// Fails only if the HTTP client cannot be built (its TLS setup).
pub fn spawn(
    store: DynStore,
    config: &WebhooksConfig,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<KeysToCheck>, Vec<JoinHandle<()>>), reqwest::Error> {
    let deliverer = deliver::Deliverer::new(store.clone(), config)?;
    let keys = Arc::new(KeysToCheck::default());
    let (claimed_tx, claimed_rx) = mpsc::channel(deliver::QUEUE);
    let checker = check::Checker::new(store, claimed_tx, deliver::lease(config));
    let check_task = tokio::spawn(checker.run(keys.clone()));
    let deliver_task = tokio::spawn(deliverer.run(claimed_rx, stop));
    Ok((keys, vec![check_task, deliver_task]))
}
