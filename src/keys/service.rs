//! The single API for key management. The native admin API, the Venice and aiXplain
//! compatibility surfaces, the console and the CLI all call these functions, so each rule
//! (validation, caps, roles and scope, audit) lives here once. Authentication of presented
//! keys is in `verify.rs`; who may do what is decided by [`Caller`].

use std::sync::Arc;

use chrono::Duration;
use serde_json::json;
use uuid::Uuid;

use super::{
    cache::KeyCache,
    hashing::Hasher,
    input::{self, KeyPatch, NewKey},
    model::{ApiKey, KeyKind},
    token::Token,
    verify::InFlight,
    Caller, KeyError,
};
use crate::store::{
    DynStore, LastAdmin, Page, Paged, Role, SecretRecord, StoreError, DEFAULT_WORKSPACE_ID,
};

/// Longest rotation grace period: past a week, keeping the old secret is not a rotation.
pub const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

/// A key with its secret, returned once by create and rotate.
#[derive(Debug)]
pub struct KeyWithSecret {
    pub key: ApiKey,
    pub secret: Token,
}

#[derive(Clone)]
pub struct KeysService {
    pub(super) store: DynStore,
    pub(super) cache: KeyCache,
    pub(super) hasher: Hasher,
    pub(super) in_flight: Arc<InFlight>,
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

    /// The argon2 hasher (its concurrency bound is shared with member passwords).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
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
        let workspace_id = caller.target(new.workspace_id)?;
        let kind = new.kind.unwrap_or(KeyKind::Inference);
        let limits = new.limits.unwrap_or_default();
        let model_limits = new.model_limits.unwrap_or_default();
        if kind == KeyKind::Admin {
            caller.require(workspace_id, Role::Admin, "create admin keys")?;
        } else if new.budget.is_some()
            || !limits.is_empty()
            || !model_limits.is_empty()
            || new.max_parallel.is_some()
        {
            caller.require(workspace_id, Role::Admin, "set limits or budgets")?;
        } else {
            caller.require(workspace_id, Role::Member, "create keys")?;
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
        let workspace = self
            .store
            .get_workspace(workspace_id)
            .await
            .map_err(workspace_error)?;

        let key = ApiKey {
            id: Uuid::now_v7(),
            workspace_id,
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
            fit_max_tokens: new.fit_max_tokens.unwrap_or(false),
        };
        let secret = SecretRecord {
            lookup_id: token.lookup_id().to_string(),
            key_id: key.id,
            hash: self.hasher.hash(token.expose().to_string()).await?,
            valid_until: None,
            created_at: now,
        };
        let audit = caller.audit(
            workspace_id,
            "key.create",
            key_target(key.id),
            json!({ "name": key.name, "kind": kind.as_str() }),
        );
        self.store
            .insert_key(&key, &secret, workspace.key_cap, &audit)
            .await
            .map_err(workspace_error)?;
        Ok(KeyWithSecret { key, secret: token })
    }

    /// Live keys of `workspace` (default: the caller's own), oldest first.
    pub async fn list(
        &self,
        caller: &Caller,
        workspace: Option<Uuid>,
        page: Page,
    ) -> Result<Paged<ApiKey>, KeyError> {
        let workspace_id = self.readable_workspace(caller, workspace).await?;
        Ok(self.store.list_keys(workspace_id, page).await?)
    }

    /// The workspace a read is about (`requested`, or the caller's own), once it is known
    /// to exist and be visible to the caller (`WorkspaceNotFound` otherwise).
    pub async fn readable_workspace(
        &self,
        caller: &Caller,
        requested: Option<Uuid>,
    ) -> Result<Uuid, KeyError> {
        let workspace_id = caller.target(requested)?;
        caller.require(workspace_id, Role::Member, "read this workspace")?;
        if requested.is_some() {
            self.store
                .get_workspace(workspace_id)
                .await
                .map_err(workspace_error)?;
        }
        Ok(workspace_id)
    }

    /// A live key the caller can see: of its own workspace, or of any for the operator.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<ApiKey, KeyError> {
        let key = if caller.reach == super::Reach::Every {
            self.store.find_key(id).await?
        } else {
            self.store.get_key(caller.workspace_id, id).await?
        };
        if !caller.can_see(key.workspace_id) {
            return Err(KeyError::NotFound);
        }
        Ok(key)
    }

    /// Members may change, rotate and revoke the keys they made; anyone else's, and
    /// limits or kinds, need an admin.
    fn require_rights(
        caller: &Caller,
        key: &ApiKey,
        needs_admin: bool,
        what: &str,
    ) -> Result<(), KeyError> {
        let role = if needs_admin || key.created_by != caller.actor {
            Role::Admin
        } else {
            Role::Member
        };
        caller.require(key.workspace_id, role, what)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: KeyPatch,
    ) -> Result<ApiKey, KeyError> {
        let mut key = self.get(caller, id).await?;
        let touches_limits = patch.budget.is_some()
            || patch.limits.is_some()
            || patch.model_limits.is_some()
            || patch.max_parallel.is_some()
            || patch.kind.is_some();
        Self::require_rights(
            caller,
            &key,
            touches_limits,
            "change limits, kinds or other members' keys",
        )?;
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
        if let Some(fit) = patch.fit_max_tokens {
            key.fit_max_tokens = fit;
            changed.push("fit_max_tokens");
        }
        if let Some(compat) = patch.compat {
            key.compat = compat;
            changed.push("compat");
        }
        key.updated_at = crate::clock::now();
        let audit = caller.audit(
            key.workspace_id,
            "key.update",
            key_target(id),
            json!({ "fields": changed }),
        );
        self.store
            .update_key(&key, &audit, last_admin_rule(key.workspace_id))
            .await?;
        self.cache.mark_stale(id);
        Ok(key)
    }

    /// Revokes the key: it stops working at once on this instance, and on others as soon
    /// as they hear the store's change notice (PostgreSQL; `crate::key_changes`), within
    /// the cache TTL at the latest. The row stays for usage history; reads answer 404 from now on.
    /// `LastAdminKey` for the `default` workspace's last active admin key.
    pub async fn revoke(&self, caller: &Caller, id: Uuid) -> Result<ApiKey, KeyError> {
        let key = self.get(caller, id).await?;
        Self::require_rights(caller, &key, false, "delete other members' keys")?;
        let audit = caller.audit(
            key.workspace_id,
            "key.revoke",
            key_target(id),
            json!({ "name": key.name }),
        );
        let revoked = self
            .store
            .revoke_key(
                key.workspace_id,
                id,
                crate::clock::now(),
                &audit,
                last_admin_rule(key.workspace_id),
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
        let key = self.get(caller, id).await?;
        Self::require_rights(caller, &key, false, "rotate other members' keys")?;
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
        let audit = caller.audit(
            key.workspace_id,
            "key.rotate",
            key_target(id),
            json!({ "grace_seconds": grace_seconds }),
        );
        let key = self
            .store
            .rotate_key(
                key.workspace_id,
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

fn key_target(id: Uuid) -> String {
    format!("key:{id}")
}

/// A store error of a call about a workspace: `NotFound` means the workspace.
pub(crate) fn workspace_error(err: StoreError) -> KeyError {
    match err {
        StoreError::NotFound => KeyError::WorkspaceNotFound,
        other => other.into(),
    }
}
