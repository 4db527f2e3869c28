//! The threshold checker: for keys whose usage was just flushed, read their budget
//! period's spend from the store and claim every alert whose threshold it has reached.
//!
//! Cost: a key's budget, thresholds and its workspace's webhook are read once per
//! [`KEY_TTL`] (so a key without alerts costs two reads a minute while it is used); a key
//! with alerts costs one spend query per flush that wrote its usage (≤ 1 a second) until
//! every threshold of the period is claimed, then nothing until the next period.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::KeysToCheck;
use crate::{
    domain::ApiKey,
    keys::model::Budget,
    money::{pico_to_usd, usd_to_pico},
    store::{BudgetAlert, BudgetAlertId, DynStore, NewBudgetAlert, StoreError},
    usage::budget::period_bounds,
};

/// How long a key's alert settings are trusted before they are read again (a key or
/// webhook changed through another instance takes effect within this).
const KEY_TTL: Duration = Duration::from_secs(30);

/// The body POSTed to the webhook (issue 15 §2).
#[derive(Debug, Serialize)]
pub(super) struct Payload<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub key_id: Uuid,
    pub key_name: &'a str,
    pub workspace_id: Uuid,
    pub threshold: f64,
    #[serde(with = "crate::money::usd")]
    pub spent_usd: rust_decimal::Decimal,
    #[serde(with = "crate::money::usd")]
    pub limit_usd: rust_decimal::Decimal,
    pub period_start: String,
    pub at: String,
}

/// What a key's alerts need, and which of them this instance knows are claimed.
struct KeyAlerts {
    name: String,
    workspace_id: Uuid,
    budget: Budget,
    /// Ascending, in basis points (the store's unit) with the fraction as the key has it.
    thresholds: Vec<(i64, f64)>,
    claimed: HashSet<(DateTime<Utc>, i64)>,
}

struct Watched {
    loaded: Instant,
    /// `None`: no budget, no thresholds, no webhook, or the key is gone.
    alerts: Option<KeyAlerts>,
}

pub(super) struct Checker {
    store: DynStore,
    claimed: mpsc::Sender<BudgetAlert>,
    /// The claimer's first attempt owns the alert for this long (see `deliver::lease`).
    lease: Duration,
    watched: HashMap<Uuid, Watched>,
}

impl Checker {
    pub fn new(store: DynStore, claimed: mpsc::Sender<BudgetAlert>, lease: Duration) -> Self {
        Checker {
            store,
            claimed,
            lease,
            watched: HashMap::new(),
        }
    }

    pub async fn run(mut self, keys: Arc<KeysToCheck>) {
        while let Some(batch) = keys.next().await {
            self.watched.retain(|_, w| w.loaded.elapsed() < KEY_TTL);
            for key_id in batch {
                if let Err(error) = self.check(key_id).await {
                    // The next flush that writes this key's usage checks it again.
                    tracing::warn!(%key_id, %error, "budget alert check failed");
                }
            }
        }
    }

    async fn check(&mut self, key_id: Uuid) -> Result<(), StoreError> {
        if !self.watched.contains_key(&key_id) {
            let alerts = self.load(key_id).await?;
            self.watched.insert(
                key_id,
                Watched {
                    loaded: Instant::now(),
                    alerts,
                },
            );
        }
        let Some(alerts) = self
            .watched
            .get_mut(&key_id)
            .and_then(|w| w.alerts.as_mut())
        else {
            return Ok(());
        };
        let now = Utc::now();
        let (period_start, _) = period_bounds(alerts.budget.period, now);
        let open: Vec<(i64, f64)> = alerts
            .thresholds
            .iter()
            .copied()
            .filter(|(bp, _)| !alerts.claimed.contains(&(period_start, *bp)))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let spent = self
            .store
            .key_usage_totals(key_id, period_start, None)
            .await?
            .cost_pico;
        let limit = usd_to_pico(alerts.budget.limit_usd);
        for (bp, fraction) in open
            .into_iter()
            .filter(|(bp, _)| crossed(spent, limit, *bp))
        {
            let payload = Payload {
                kind: "budget.threshold",
                key_id,
                key_name: &alerts.name,
                workspace_id: alerts.workspace_id,
                threshold: fraction,
                spent_usd: pico_to_usd(spent),
                limit_usd: alerts.budget.limit_usd,
                period_start: rfc3339(period_start),
                at: rfc3339(now),
            };
            let alert = NewBudgetAlert {
                id: BudgetAlertId {
                    key_id,
                    period_start,
                    threshold_bp: bp,
                },
                workspace_id: alerts.workspace_id,
                payload: serde_json::to_string(&payload)
                    .unwrap_or_else(|_| unreachable!("the payload is plain data")),
                claimed_at: now,
                next_attempt_at: now + self.lease,
            };
            if self.store.claim_budget_alert(&alert).await? {
                tracing::info!(%key_id, threshold = payload.threshold, "budget threshold crossed");
                let claimed = BudgetAlert {
                    id: alert.id,
                    workspace_id: alert.workspace_id,
                    payload: alert.payload,
                    claimed_at: now,
                    status: crate::store::AlertStatus::Pending,
                    attempts: 0,
                    last_error: None,
                    next_attempt_at: Some(alert.next_attempt_at),
                    finished_at: None,
                };
                // Full queue: the row is in the store, and the sweep sends it once its
                // first lease has run out.
                let _ = self.claimed.try_send(claimed);
            }
            alerts.claimed.insert((period_start, bp));
        }
        Ok(())
    }

    async fn load(&self, key_id: Uuid) -> Result<Option<KeyAlerts>, StoreError> {
        let key: ApiKey = match self.store.find_key(key_id).await {
            Ok(key) => key,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (Some(budget), Some(thresholds)) = (key.budget, key.alert_thresholds) else {
            return Ok(None);
        };
        let mut thresholds: Vec<(i64, f64)> =
            thresholds.iter().map(|t| (basis_points(*t), *t)).collect();
        thresholds.sort_unstable_by_key(|(bp, _)| *bp);
        thresholds.dedup_by_key(|(bp, _)| *bp);
        if thresholds.is_empty() {
            return Ok(None);
        }
        let workspace = match self.store.get_workspace(key.workspace_id).await {
            Ok(ws) => ws,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if workspace.webhook_url.is_none() {
            return Ok(None);
        }
        Ok(Some(KeyAlerts {
            name: key.name,
            workspace_id: key.workspace_id,
            budget,
            thresholds,
            claimed: HashSet::new(),
        }))
    }
}

/// A fraction of the budget in basis points (0.8 → 8000); thresholds are validated as
/// fractions when the key is saved, so this stays small.
fn basis_points(fraction: f64) -> i64 {
    (fraction * 10_000.0).round() as i64
}

/// `spent` has reached `bp` basis points of `limit` (some money was spent: a zero budget
/// is not "crossed" by nothing).
fn crossed(spent_pico: i64, limit_pico: i64, bp: i64) -> bool {
    spent_pico > 0 && i128::from(spent_pico) * 10_000 >= i128::from(limit_pico) * i128::from(bp)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_crossed_exactly() {
        let usd = 1_000_000_000_000;
        assert!(!crossed(usd / 2 - 1, usd, 5000));
        assert!(crossed(usd / 2, usd, 5000));
        assert!(crossed(usd, usd, 10_000));
        assert!(!crossed(0, 0, 5000), "nothing spent crosses nothing");
        assert!(crossed(1, 0, 10_000));
        assert_eq!(basis_points(0.8), 8000);
        assert_eq!(basis_points(0.29), 2900);
        assert_eq!(basis_points(1.0), 10_000);
    }
}
