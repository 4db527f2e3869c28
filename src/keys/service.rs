//! The single API for key management. The native admin API, the Venice and aiXplain
//! compatibility surfaces, the console and the CLI all call these functions, so each rule
//! (validation, caps, roles, audit) lives here once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{
    cache::{CachedKey, KeyCache, Lookup},
    guard::FailedAuthGuard,
    hashing::Hasher,
    input::{self, KeyPatch, NewKey},
    model::{ApiKey, KeyKind},
    token::{self, Token},
    AuthError, KeyError,
};
use crate::store::{
    AuditEvent, DynStore, LastAdmin, Page, Paged, SecretRecord, StoreError, DEFAULT_WORKSPACE_ID,
};

/// Longest rotation grace period: past a week, keeping the old secret is not a rotation.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// Who is asking, as established by the surface that received the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub workspace_id: Uuid,
    /// Audit actor, e.g. `key:<uuid>`, `member:alice`, `cli`.
    pub actor: String,
    pub source: Option<String>,
    pub role: CallerRole,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerRole {
    /// An admin key, a workspace owner or admin, or the CLI: may do everything in the workspace.
    Admin,
    /// A plain member (console): may create inference keys without limits and delete their own.
    Member,
}

impl Caller {
    fn audit(&self, action: &str, target: Uuid, details: serde_json::Value) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            workspace_id: self.workspace_id,
            actor: self.actor.clone(),
            action: action.to_string(),
            target: format!("key:{target}"),
            at: crate::clock::now(),
            source: self.source.clone(),
            details,
        }
    }

    fn require_admin(&self, what: &str) -> Result<(), KeyError> {
        match self.role {
            CallerRole::Admin => Ok(()),
            CallerRole::Member => Err(KeyError::Forbidden(format!(
                "only workspace admins may {what}"
            ))),
        }
    }
}

/// A key with its secret, returned once by create and rotate.
#[derive(Debug)]
pub struct KeyWithSecret {
    pub key: ApiKey,
    pub secret: Token,
}

#[derive(Clone)]
pub struct KeysService {
    store: DynStore,
    cache: KeyCache,
    hasher: Hasher,
    in_flight: Arc<InFlight>,
}

/// One verification (or re-read) per presented secret at a time. Without it, a client
/// opening 32 connections with a key this instance has not seen yet runs 32 argon2
/// hashes at once (seconds of CPU, ~7 MiB each) where one suffices: the others wait for
/// it and then find the key in the cache. Keyed by the secret's digest, like the cache.
#[derive(Default)]
struct InFlight {
    turns: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl InFlight {
    fn turn_for(&self, digest: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(digest).or_default().clone()
    }

    /// Forgets the digest's turn once nobody holds or waits for it.
    fn release(&self, digest: &[u8; 32]) {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        // One reference is the map's own, one the caller's.
        if turns
            .get(digest)
            .is_some_and(|turn| Arc::strong_count(turn) <= 2)
        {
            turns.remove(digest);
        }
    }
}

/// Releases a digest's turn however the verification ends (a cancelled request too).
struct TurnGuard<'a> {
    in_flight: &'a InFlight,
    digest: [u8; 32],
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.release(&self.digest);
    }
}

impl KeysService {
    pub fn new(store: DynStore, cache: KeyCache) -> Self {
        KeysService {
            store,
            cache,
            hasher: Hasher::default(),
            in_flight: Arc::default(),
        }
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// argon2 verifications this instance has run (once per key, however many callers).
    pub fn verifications(&self) -> u64 {
        self.hasher.verifications()
    }

    pub async fn create(&self, caller: &Caller, new: NewKey) -> Result<KeyWithSecret, KeyError> {
        self.create_with_token(caller, new, Token::generate()).await
    }

    /// Creates a key whose secret is `token` (the bootstrap key given by the operator).
    pub async fn create_with_token(
        &self,
        caller: &Caller,
        new: NewKey,
        token: Token,
    ) -> Result<KeyWithSecret, KeyError> {
        let kind = new.kind.unwrap_or(KeyKind::Inference);
        if kind == KeyKind::Admin {
            caller.require_admin("create admin keys")?;
        }
        let limits = new.limits.unwrap_or_default();
        let model_limits = new.model_limits.unwrap_or_default();
        if caller.role == CallerRole::Member
            && (new.budget.is_some()
                || !limits.is_empty()
                || !model_limits.is_empty()
                || new.max_parallel.is_some())
        {
            caller.require_admin("set limits or budgets")?;
        }
        let now = crate::clock::now();
        let expires_at = new.expires_at.map(crate::clock::truncate);
        let name = input::validate_name(&new.name)?;
        if expires_at.is_some_and(|at| at <= now) {
            return Err(KeyError::Invalid {
                field: "expires_at".into(),
                message: "must be in the future".into(),
            });
        }
        input::validate_limits(&limits)?;
        input::validate_model_limits(&model_limits)?;
        if let Some(models) = &new.allowed_models {
            input::validate_allowed_models(models)?;
        }
        if let Some(budget) = &new.budget {
            input::validate_budget(budget)?;
        }
        let metadata = new.metadata.unwrap_or_default();
        input::validate_metadata(&metadata)?;
        if let Some(value) = new.max_parallel {
            input::validate_max_parallel(value)?;
        }
        let ip_allowlist = new
            .ip_allowlist
            .as_deref()
            .map(input::parse_ip_allowlist)
            .transpose()?;
        let alert_thresholds = new
            .alert_thresholds
            .as_deref()
            .map(input::validate_alert_thresholds)
            .transpose()?;
        let workspace = self.store.get_workspace(caller.workspace_id).await?;

        let key = ApiKey {
            id: Uuid::now_v7(),
            workspace_id: caller.workspace_id,
            name,
            kind,
            partial_key: token.partial(),
            last6: token.last6(),
            created_by: caller.actor.clone(),
            created_at: now,
            updated_at: now,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            metadata,
            allowed_models: new.allowed_models,
            budget: new.budget,
            limits,
            model_limits,
            max_parallel: new.max_parallel,
            ip_allowlist,
            alert_thresholds,
            compat: new.compat,
            wallet_address: new.wallet_address,
        };
        let secret = SecretRecord {
            lookup_id: token.lookup_id().to_string(),
            key_id: key.id,
            hash: self.hasher.hash(token.expose().to_string()).await?,
            valid_until: None,
            created_at: now,
        };
        let audit = caller.audit(
            "key.create",
            key.id,
            json!({ "name": key.name, "kind": kind.as_str() }),
        );
        self.store
            .insert_key(&key, &secret, workspace.key_cap, &audit)
            .await
            .map_err(|e| match e {
                StoreError::KeyCapReached { cap } => KeyError::CapReached { cap },
                other => other.into(),
            })?;
        Ok(KeyWithSecret { key, secret: token })
    }

    pub async fn list(&self, caller: &Caller, page: Page) -> Result<Paged<ApiKey>, KeyError> {
        Ok(self.store.list_keys(caller.workspace_id, page).await?)
    }

    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<ApiKey, KeyError> {
        Ok(self.store.get_key(caller.workspace_id, id).await?)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: KeyPatch,
    ) -> Result<ApiKey, KeyError> {
        let mut key = self.store.get_key(caller.workspace_id, id).await?;
        let touches_limits = patch.budget.is_some()
            || patch.limits.is_some()
            || patch.model_limits.is_some()
            || patch.max_parallel.is_some()
            || patch.kind.is_some();
        if touches_limits || key.created_by != caller.actor {
            caller.require_admin("change limits, kinds or other members' keys")?;
        }
        let mut changed = Vec::new();
        if let Some(name) = patch.name {
            key.name = input::validate_name(&name)?;
            changed.push("name");
        }
        if let Some(kind) = patch.kind {
            key.kind = kind;
            changed.push("kind");
        }
        if let Some(expires_at) = patch.expires_at {
            key.expires_at = expires_at.map(crate::clock::truncate);
            changed.push("expires_at");
        }
        if let Some(budget) = patch.budget {
            if let Some(budget) = &budget {
                input::validate_budget(budget)?;
            }
            key.budget = budget;
            changed.push("budget");
        }
        if let Some(limits) = patch.limits {
            let limits = limits.unwrap_or_default();
            input::validate_limits(&limits)?;
            key.limits = limits;
            changed.push("limits");
        }
        if let Some(model_limits) = patch.model_limits {
            let model_limits = model_limits.unwrap_or_default();
            input::validate_model_limits(&model_limits)?;
            key.model_limits = model_limits;
            changed.push("model_limits");
        }
        if let Some(allowed) = patch.allowed_models {
            if let Some(models) = &allowed {
                input::validate_allowed_models(models)?;
            }
            key.allowed_models = allowed;
            changed.push("allowed_models");
        }
        if let Some(metadata) = patch.metadata {
            let metadata = metadata.unwrap_or_default();
            input::validate_metadata(&metadata)?;
            key.metadata = metadata;
            changed.push("metadata");
        }
        if let Some(max_parallel) = patch.max_parallel {
            if let Some(value) = max_parallel {
                input::validate_max_parallel(value)?;
            }
            key.max_parallel = max_parallel;
            changed.push("max_parallel");
        }
        if let Some(entries) = patch.ip_allowlist {
            key.ip_allowlist = entries
                .as_deref()
                .map(input::parse_ip_allowlist)
                .transpose()?;
            changed.push("ip_allowlist");
        }
        if let Some(thresholds) = patch.alert_thresholds {
            key.alert_thresholds = thresholds
                .as_deref()
                .map(input::validate_alert_thresholds)
                .transpose()?;
            changed.push("alert_thresholds");
        }
        if let Some(compat) = patch.compat {
            key.compat = compat;
            changed.push("compat");
        }
        key.updated_at = crate::clock::now();
        let audit = caller.audit("key.update", id, json!({ "fields": changed }));
        self.store
            .update_key(&key, &audit, last_admin_rule(key.workspace_id))
            .await?;
        self.cache.mark_stale(id);
        Ok(key)
    }

    /// Revokes the key: it stops working at once on this instance, and within the cache
    /// TTL on others. The row stays for usage history; reads answer 404 from now on.
    /// `LastAdminKey` for the `default` workspace's last active admin key.
    pub async fn revoke(&self, caller: &Caller, id: Uuid) -> Result<ApiKey, KeyError> {
        let key = self.store.get_key(caller.workspace_id, id).await?;
        if key.created_by != caller.actor {
            caller.require_admin("delete other members' keys")?;
        }
        let audit = caller.audit("key.revoke", id, json!({ "name": key.name }));
        let revoked = self
            .store
            .revoke_key(
                caller.workspace_id,
                id,
                crate::clock::now(),
                &audit,
                last_admin_rule(caller.workspace_id),
            )
            .await?;
        self.cache.mark_stale(id);
        Ok(revoked)
    }

    /// Issues a new secret. The old one keeps working for `grace_seconds` (0 = stops now).
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: Uuid,
        grace_seconds: u64,
    ) -> Result<KeyWithSecret, KeyError> {
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(KeyError::Invalid {
                field: "grace_seconds".into(),
                message: format!("must be at most {MAX_GRACE_SECONDS} (7 days)"),
            });
        }
        let key = self.store.get_key(caller.workspace_id, id).await?;
        if key.created_by != caller.actor {
            caller.require_admin("rotate other members' keys")?;
        }
        let token = Token::generate();
        let now = crate::clock::now();
        let secret = SecretRecord {
            lookup_id: token.lookup_id().to_string(),
            key_id: id,
            hash: self.hasher.hash(token.expose().to_string()).await?,
            valid_until: None,
            created_at: now,
        };
        let grace = Duration::seconds(i64::try_from(grace_seconds).unwrap_or(i64::MAX));
        let audit = caller.audit("key.rotate", id, json!({ "grace_seconds": grace_seconds }));
        let key = self
            .store
            .rotate_key(
                caller.workspace_id,
                id,
                &secret,
                &token.partial(),
                &token.last6(),
                now + grace,
                &audit,
            )
            .await?;
        self.cache.mark_stale(id);
        Ok(KeyWithSecret { key, secret: token })
    }

    /// Authenticates a presented key string: shape and checksum first (no I/O), then the
    /// digest cache, then the store and argon2 once. Returns keys of either kind; the
    /// caller decides whether the kind fits the route. No failed-attempt guard: see
    /// [`Self::authenticate_from`] for keys presented by a client.
    pub async fn authenticate(&self, presented: &str) -> Result<Arc<ApiKey>, AuthError> {
        self.authenticate_from(presented, None).await
    }

    /// [`Self::authenticate`] for a key presented from `client`'s address, under its
    /// failed-attempt guard. The guard sees only what would cost a store read or an argon2
    /// run: a key this instance has verified before (a digest-cache hit, fresh or due for a
    /// re-read) is never refused or counted, nor is a malformed one (see `super::guard`).
    pub async fn authenticate_from(
        &self,
        presented: &str,
        client: Option<(IpAddr, &FailedAuthGuard)>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        let checked = Token::check(presented)?;
        let digest = token::digest(checked);
        let (key, secret_valid_until) = match self.cache.get(&digest) {
            Lookup::Fresh {
                key,
                secret_valid_until,
            } => (key, secret_valid_until),
            Lookup::Stale(_) => {
                let token = Token::parse(checked)?;
                self.verify_once(&token, digest).await?
            }
            Lookup::Miss => return self.authenticate_unseen(checked, digest, client).await,
        };
        check_usable(&key, secret_valid_until, Utc::now())?;
        Ok(key)
    }

    /// A key this instance has not verified: refused unread while `client`'s address is
    /// blocked, and a failure counts against the address.
    async fn authenticate_unseen(
        &self,
        checked: &str,
        digest: [u8; 32],
        client: Option<(IpAddr, &FailedAuthGuard)>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        if let Some(retry_after) = client.and_then(|(ip, guard)| guard.blocked_for(ip)) {
            return Err(AuthError::TooManyAttempts { retry_after });
        }
        let outcome = async {
            let token = Token::parse(checked)?;
            let (key, secret_valid_until) = self.verify_once(&token, digest).await?;
            check_usable(&key, secret_valid_until, Utc::now())?;
            Ok(key)
        }
        .await;
        match outcome {
            // A store or hashing failure says nothing about the key.
            Err(err) if !matches!(err, AuthError::Store(_) | AuthError::Hash(_)) => {
                match client.and_then(|(ip, guard)| guard.record_failure(ip)) {
                    Some(retry_after) => Err(AuthError::TooManyAttempts { retry_after }),
                    None => Err(err),
                }
            }
            outcome => outcome,
        }
    }

    /// The slow path, one caller per digest at a time (see [`InFlight`]); whoever waited
    /// finds the cache filled by the caller before it.
    async fn verify_once(
        &self,
        token: &Token,
        digest: [u8; 32],
    ) -> Result<(Arc<ApiKey>, Option<DateTime<Utc>>), AuthError> {
        let turn = self.in_flight.turn_for(digest);
        // Dropped before `turn` (reverse order), so `release` sees the map's reference
        // and this caller's, plus one per waiter.
        let _release = TurnGuard {
            in_flight: &self.in_flight,
            digest,
        };
        let _my_turn = turn.lock().await;
        let entry = match self.cache.get(&digest) {
            Lookup::Fresh {
                key,
                secret_valid_until,
            } => return Ok((key, secret_valid_until)),
            Lookup::Stale(entry) => match self.refresh(digest, entry.clone()).await {
                Ok(Some(entry)) => entry,
                Ok(None) => self.verify(token, digest).await?,
                // The store cannot say whether the key changed: keep trusting what it said
                // last, for another TTL (docs/decisions.md, "Store outages").
                Err(AuthError::Store(err)) if err.is_unavailable() => {
                    tracing::debug!(error = %err, key_id = %entry.key.id, "store unavailable; serving the cached key");
                    let entry = CachedKey {
                        refreshed_at: Instant::now(),
                        ..entry
                    };
                    self.cache.insert(digest, entry.clone());
                    entry
                }
                Err(err) => return Err(err),
            },
            Lookup::Miss => self.verify(token, digest).await?,
        };
        Ok((entry.key, entry.secret_valid_until))
    }

    /// Re-reads a cached key's row. `None` when the stored hash changed and the secret must
    /// be verified again.
    async fn refresh(
        &self,
        digest: [u8; 32],
        entry: CachedKey,
    ) -> Result<Option<CachedKey>, AuthError> {
        match self.store.find_secret(&entry.lookup_id).await? {
            Some((secret, key)) if secret.hash == entry.hash => {
                let fresh = CachedKey {
                    key: Arc::new(key),
                    lookup_id: entry.lookup_id,
                    hash: entry.hash,
                    secret_valid_until: secret.valid_until,
                    refreshed_at: Instant::now(),
                };
                self.cache.insert(digest, fresh.clone());
                Ok(Some(fresh))
            }
            Some(_) => Ok(None),
            None => {
                self.cache.remove(&digest);
                Err(AuthError::Unknown)
            }
        }
    }

    async fn verify(&self, token: &Token, digest: [u8; 32]) -> Result<CachedKey, AuthError> {
        let Some((secret, key)) = self.store.find_secret(token.lookup_id()).await? else {
            return Err(AuthError::Unknown);
        };
        if !self
            .hasher
            .verify(token.expose().to_string(), secret.hash.clone())
            .await?
        {
            return Err(AuthError::Unknown);
        }
        let entry = CachedKey {
            key: Arc::new(key),
            lookup_id: secret.lookup_id,
            hash: secret.hash,
            secret_valid_until: secret.valid_until,
            refreshed_at: Instant::now(),
        };
        self.cache.insert(digest, entry.clone());
        Ok(entry)
    }
}

/// The `default` workspace keeps an active admin key: without one, only the CLI on the
/// server's own machine could manage its keys again (an automated client once revoked its
/// own last key). Revoking, demoting or expiring that key fails with `LastAdminKey`,
/// checked by the store in the same transaction as the change (docs/decisions.md).
fn last_admin_rule(workspace_id: Uuid) -> LastAdmin {
    if workspace_id == DEFAULT_WORKSPACE_ID {
        LastAdmin::Keep
    } else {
        LastAdmin::MayGo
    }
}

fn check_usable(
    key: &ApiKey,
    secret_valid_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    if key.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(AuthError::Expired);
    }
    if secret_valid_until.is_some_and(|at| at <= now) {
        return Err(AuthError::Rotated);
    }
    Ok(())
}
