//! Delivery of claimed budget alerts: one owned task, attempts in flight side by side (at
//! most [`MAX_IN_FLIGHT`]), retries on a timer, and a sweep of the store for due rows
//! (after a restart, or when another instance died holding one).
//!
//! **Once at a time.** A pending row is only attempted by the instance that moved its
//! `next_attempt_at` forward (`Store::lease_budget_alert`; the claim is the first lease),
//! and the lease outlasts an attempt, so two instances never POST the same alert at once.
//!
//! **Retries.** A connect error, a timeout or a non-2xx answer is retried after
//! `retry_initial_secs`, doubling per attempt up to [`MAX_BACKOFF`], each wait drawn
//! between half and all of that (jitter, so that many alerts failing together do not
//! retry together), until `retry_for_secs` after the claim; then the row is `failed`.
//!
//! **Public destinations only.** Unless `webhooks.allow_private`, the URL's host is checked
//! again at every attempt: an IP literal directly, a name by [`PublicResolver`], which
//! resolves it, refuses if any address is non-public, and hands the checked addresses to
//! the connection (so the address connected to is one that was checked; a second lookup
//! could answer differently: DNS rebinding). Redirects are not followed and no proxy is
//! used, for the same reason. A refused alert is `refused`, never retried, and audited.
//!
//! Why reqwest, not hyper's client directly: it gives the per-attempt timeout, rustls with
//! the public roots, and a resolver hook that lets the checked addresses be the connected
//! ones, which is exactly the part that matters here; the hand-written upstream client
//! (`proxy::client`) is built for the proxy's hot path, not for this.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use uuid::Uuid;

use super::{signature, ACTOR};
use crate::{
    config::WebhooksConfig,
    store::{
        AlertAttempt, AlertStatus, AuditEvent, BudgetAlert, BudgetAlertId, DynStore, StoreError,
    },
    workspaces::webhook::is_public,
};

/// Claimed alerts waiting for the delivery task (more wait in the store for the sweep).
pub(super) const QUEUE: usize = 1024;
/// Attempts in flight at once.
const MAX_IN_FLIGHT: usize = 32;
/// How often the store is swept for due rows (and once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEP_BATCH: u32 = 100;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The receiver's answer is read up to this many bytes, then dropped (only its status
/// matters; a huge or endless body must not hold memory or the attempt).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A lease outlasts an attempt by this much (store writes around it, clock skew).
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// The header that identifies an alert across retries, so a receiver can drop a repeat.
pub const ALERT_ID_HEADER: &str = "keygate-alert-id";

/// How long an instance owns an alert it is about to attempt.
pub(super) fn lease(config: &WebhooksConfig) -> Duration {
    config.attempt_timeout() + LEASE_MARGIN
}

/// A webhook destination that is, or resolves to, a non-public address while
/// `webhooks.allow_private` is off.
#[derive(Debug, thiserror::Error)]
#[error("`{host}` is or resolves to {ip}, a loopback, private, link-local or other non-public address (webhooks.allow_private is off)")]
pub struct NonPublicAddress {
    pub host: String,
    pub ip: IpAddr,
}

/// Resolves webhook hosts and, unless private addresses are allowed, refuses a name with
/// any non-public address; the addresses it returns are the ones reqwest connects to.
struct PublicResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private {
                if let Some(ip) = found.iter().map(SocketAddr::ip).find(|ip| !is_public(*ip)) {
                    return Err(Box::new(NonPublicAddress { host, ip }) as _);
                }
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// How one attempt ended.
enum Outcome {
    Delivered,
    /// Worth another attempt (connect error, timeout, non-2xx, store briefly away).
    Retry(String),
    /// The destination is not public: final.
    Refused(String),
    /// Nowhere to send it any more (workspace deleted, webhook removed): final.
    Gone(String),
}

/// What every attempt needs; shared by the tasks of the attempts in flight.
struct Sender {
    store: DynStore,
    client: reqwest::Client,
    allow_private: bool,
    attempt_timeout: Duration,
}

pub(super) struct Deliverer {
    sender: Arc<Sender>,
    retry_for: Duration,
    retry_initial: Duration,
    lease: Duration,
    /// Retries due on this instance: (when, sequence) → the alert.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    waiting: HashMap<u64, BudgetAlert>,
    next_seq: u64,
}

impl Deliverer {
    pub fn new(store: DynStore, config: &WebhooksConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(PublicResolver {
                allow_private: config.allow_private,
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.attempt_timeout())
            .connect_timeout(config.attempt_timeout())
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            sender: Arc::new(Sender {
                store,
                client,
                allow_private: config.allow_private,
                attempt_timeout: config.attempt_timeout(),
            }),
            retry_for: config.retry_for(),
            retry_initial: config.retry_initial(),
            lease: lease(config),
            timers: BinaryHeap::new(),
            waiting: HashMap::new(),
            next_seq: 0,
        })
    }

    pub async fn run(
        mut self,
        mut claimed: mpsc::Receiver<BudgetAlert>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut in_flight: JoinSet<(BudgetAlert, Outcome)> = JoinSet::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut claims_open = true;
        if *stop.borrow_and_update() {
            return;
        }
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let room = in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow_and_update() {
                        break;
                    }
                }
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                    Ok((alert, outcome)) => self.settle(alert, outcome).await,
                    Err(error) => tracing::error!(%error, "a budget alert attempt panicked"),
                },
                received = claimed.recv(), if room && claims_open => match received {
                    // The claim leased it to this instance: attempt at once.
                    Some(alert) => self.spawn_attempt(&mut in_flight, alert),
                    None => claims_open = false,
                },
                () = sleep_until(next_timer), if room && next_timer.is_some() => {
                    if let Some(Reverse((_, seq))) = self.timers.pop() {
                        if let Some(alert) = self.waiting.remove(&seq) {
                            self.lease_and_attempt(&mut in_flight, alert).await;
                        }
                    }
                }
                _ = sweep.tick(), if room => {
                    match self.sender.store.due_budget_alerts(Utc::now(), SWEEP_BATCH).await {
                        Ok(due) => {
                            for alert in due {
                                self.lease_and_attempt(&mut in_flight, alert).await;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot read pending budget alerts"),
                    }
                }
            }
        }
        // Let the attempts in flight end (each within its timeout) and record them, so a
        // POST that was answered is not sent again after a restart. What is scheduled
        // stays pending in the store, for the next start or another instance.
        while let Some(done) = in_flight.join_next().await {
            if let Ok((alert, outcome)) = done {
                self.settle(alert, outcome).await;
            }
        }
    }

    fn spawn_attempt(&self, in_flight: &mut JoinSet<(BudgetAlert, Outcome)>, alert: BudgetAlert) {
        let sender = self.sender.clone();
        in_flight.spawn(async move {
            let outcome = sender.attempt(&alert).await;
            (alert, outcome)
        });
    }

    /// Attempts `alert` if this instance gets its lease (another may have it).
    async fn lease_and_attempt(
        &self,
        in_flight: &mut JoinSet<(BudgetAlert, Outcome)>,
        alert: BudgetAlert,
    ) {
        let now = Utc::now();
        match self
            .sender
            .store
            .lease_budget_alert(&alert.id, now, now + self.lease)
            .await
        {
            Ok(true) => self.spawn_attempt(in_flight, alert),
            Ok(false) => {}
            // Still pending in the store: the sweep tries again.
            Err(error) => tracing::warn!(%error, "cannot lease a budget alert"),
        }
    }

    /// Records the attempt and schedules the next one, or the final status and its audit
    /// event.
    async fn settle(&mut self, mut alert: BudgetAlert, outcome: Outcome) {
        let now = Utc::now();
        let attempts = alert.attempts + 1;
        let key_id = alert.id.key_id;
        let (status, error, retry_in) = match outcome {
            Outcome::Delivered => {
                tracing::info!(%key_id, attempts, "budget alert delivered");
                (AlertStatus::Delivered, None, None)
            }
            Outcome::Refused(error) => {
                tracing::warn!(%key_id, %error, "budget alert refused: the webhook is not public");
                (AlertStatus::Refused, Some(error), None)
            }
            Outcome::Gone(error) => {
                tracing::warn!(%key_id, %error, "budget alert dropped");
                (AlertStatus::Failed, Some(error), None)
            }
            Outcome::Retry(error) => {
                let wait = backoff(self.retry_initial, attempts);
                let horizon = alert.claimed_at + self.retry_for;
                if now + wait > horizon {
                    tracing::warn!(%key_id, attempts, %error, "budget alert given up");
                    let error = format!("gave up after {attempts} attempts: {error}");
                    (AlertStatus::Failed, Some(error), None)
                } else {
                    tracing::info!(%key_id, attempts, %error, retry_in = ?wait, "budget alert attempt failed");
                    (AlertStatus::Pending, Some(error), Some(wait))
                }
            }
        };
        let attempt = AlertAttempt {
            at: now,
            status,
            error,
            next_attempt_at: retry_in.map(|wait| now + wait),
        };
        let audit =
            (status != AlertStatus::Pending).then(|| audit_event(&alert, &attempt, attempts));
        if let Err(error) = self
            .sender
            .store
            .record_budget_alert_attempt(&alert.id, &attempt, audit.as_ref())
            .await
        {
            // The row keeps its lease and is attempted again after it (at least once).
            tracing::error!(%key_id, %error, "cannot record a budget alert attempt");
        }
        if let Some(wait) = retry_in {
            alert.attempts = attempts;
            alert.last_error = attempt.error;
            alert.next_attempt_at = attempt.next_attempt_at;
            let seq = self.next_seq;
            self.next_seq += 1;
            self.timers.push(Reverse((Instant::now() + wait, seq)));
            self.waiting.insert(seq, alert);
        }
    }
}

impl Sender {
    async fn attempt(&self, alert: &BudgetAlert) -> Outcome {
        let workspace = match self.store.get_workspace(alert.workspace_id).await {
            Ok(ws) => ws,
            Err(StoreError::NotFound) => return Outcome::Gone("the workspace was deleted".into()),
            Err(e) => return Outcome::Retry(format!("the store: {e}")),
        };
        let (Some(url), Some(secret)) = (workspace.webhook_url, workspace.webhook_secret) else {
            return Outcome::Gone("the workspace has no webhook URL any more".into());
        };
        let Ok(parsed) = url::Url::parse(&url) else {
            return Outcome::Gone("the workspace's webhook URL does not parse".into());
        };
        if !self.allow_private {
            let literal = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !is_public(*ip)) {
                let host = parsed.host_str().unwrap_or_default().to_string();
                return Outcome::Refused(NonPublicAddress { host, ip }.to_string());
            }
        }
        let timestamp = Utc::now().timestamp();
        let request = self
            .client
            .post(parsed)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                signature::SIGNATURE_HEADER,
                signature::signature_header(secret.expose(), timestamp, &alert.payload),
            )
            .header(ALERT_ID_HEADER, alert_id(&alert.id))
            .body(alert.payload.clone());
        let sent = tokio::time::timeout(self.attempt_timeout, async {
            let mut answer = request.send().await?;
            let status = answer.status();
            let mut read = 0;
            while read < MAX_ANSWER_BYTES {
                match answer.chunk().await? {
                    Some(chunk) => read += chunk.len(),
                    None => break,
                }
            }
            Ok::<_, reqwest::Error>(status)
        })
        .await;
        match sent {
            Err(_) => Outcome::Retry(format!(
                "no answer within {} s",
                self.attempt_timeout.as_secs_f64()
            )),
            Ok(Err(error)) => match non_public(&error) {
                Some(refusal) => Outcome::Refused(refusal.to_string()),
                None => Outcome::Retry(describe(error)),
            },
            Ok(Ok(status)) if status.is_success() => Outcome::Delivered,
            Ok(Ok(status)) => Outcome::Retry(format!("the webhook answered {status}")),
        }
    }
}

/// The resolver's refusal, if that is why the request failed.
fn non_public(error: &reqwest::Error) -> Option<&NonPublicAddress> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<NonPublicAddress>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
}

/// The error and its causes, without the URL (which may carry a token in its path).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The wait after `attempts` failed attempts: `initial · 2^(attempts−1)`, at most
/// [`MAX_BACKOFF`], drawn from its upper half.
fn backoff(initial: Duration, attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    let full = initial.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

fn alert_id(id: &BudgetAlertId) -> String {
    format!(
        "{}.{}.{}",
        id.key_id,
        id.period_start.timestamp(),
        id.threshold_bp
    )
}

/// `budget_alert.sent`, `.refused` or `.failed`: the alert's facts, never the URL (it may
/// carry a token) or the secret.
fn audit_event(alert: &BudgetAlert, attempt: &AlertAttempt, attempts: i64) -> AuditEvent {
    let action = match attempt.status {
        AlertStatus::Delivered => "budget_alert.sent",
        AlertStatus::Refused => "budget_alert.refused",
        AlertStatus::Failed | AlertStatus::Pending => "budget_alert.failed",
    };
    let payload: Value = serde_json::from_str(&alert.payload).unwrap_or(Value::Null);
    let mut details = json!({
        "threshold": payload["threshold"],
        "spent_usd": payload["spent_usd"],
        "limit_usd": payload["limit_usd"],
        "period_start": payload["period_start"],
        "attempts": attempts,
    });
    if let Some(error) = &attempt.error {
        details["error"] = json!(error);
    }
    AuditEvent {
        id: Uuid::now_v7(),
        workspace_id: alert.workspace_id,
        actor: ACTOR.into(),
        action: action.into(),
        target: format!("key:{}", alert.id.key_id),
        at: attempt.at,
        source: None,
        details,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let initial = Duration::from_secs(5);
        for attempts in 1..=30 {
            let full = initial
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(MAX_BACKOFF);
            let wait = backoff(initial, attempts);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
        }
        assert!(backoff(initial, 1) <= Duration::from_secs(5));
        assert!(backoff(initial, 40) <= MAX_BACKOFF);
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use reqwest::dns::Resolve;
        let name = || "localhost".parse::<reqwest::dns::Name>().unwrap();
        let refused = PublicResolver {
            allow_private: false,
        }
        .resolve(name())
        .await;
        let error = refused.err().unwrap();
        assert!(
            error.downcast_ref::<NonPublicAddress>().is_some(),
            "{error}"
        );
        let allowed = PublicResolver {
            allow_private: true,
        }
        .resolve(name())
        .await
        .unwrap();
        assert!(allowed.into_iter().any(|a| a.ip().is_loopback()));
    }
}
