//! `MembersService`: a workspace's console users (DESIGN §3 "Member") and their password
//! check for the console's sign-in.
//!
//! Admins and owners manage members; only owners add owners, change an owner or make
//! someone an owner (otherwise an admin could make themselves an owner through a second
//! account). A member may change their own password. The last owner cannot be removed or
//! demoted (checked by the store in the same transaction as the change).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::input::{self, MemberPatch, NewMember};
use crate::{
    keys::{hashing::Hasher, service::workspace_error, Caller, KeyError},
    store::{AuditEvent, DynStore, Member, Role, StoreError},
};

/// The result of a successful sign-in: the member, and the `member.sign_in` audit event
/// that the console writes in the transaction that creates its session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub member: Member,
    pub audit: AuditEvent,
}

#[derive(Clone)]
pub struct MembersService {
    store: DynStore,
    hasher: Hasher,
    /// A hash of nothing anyone knows, verified when a username is unknown, so that a
    /// failed sign-in takes as long whether or not the member exists.
    decoy_hash: Arc<OnceCell<String>>,
}

fn member_target(username: &str) -> String {
    format!("member:{username}")
}

fn not_found(err: StoreError) -> KeyError {
    match err {
        StoreError::NotFound => KeyError::MemberNotFound,
        other => other.into(),
    }
}

impl MembersService {
    pub fn new(store: DynStore, hasher: Hasher) -> Self {
        MembersService {
            store,
            hasher,
            decoy_hash: Arc::default(),
        }
    }

    /// The workspace, when the caller may manage its members.
    async fn managed(&self, caller: &Caller, workspace_id: Uuid) -> Result<(), KeyError> {
        caller.require(workspace_id, Role::Admin, "manage members")?;
        self.store
            .get_workspace(workspace_id)
            .await
            .map_err(workspace_error)?;
        Ok(())
    }

    pub async fn add(
        &self,
        caller: &Caller,
        workspace_id: Uuid,
        new: NewMember,
    ) -> Result<Member, KeyError> {
        self.managed(caller, workspace_id).await?;
        if new.role == Role::Owner {
            caller.require(workspace_id, Role::Owner, "add owners")?;
        }
        let username = input::normalize_username(&new.username)?;
        input::validate_password(&new.password)?;
        let password_hash = self.hasher.hash(new.password).await?;
        let now = crate::clock::now();
        let member = Member {
            id: Uuid::now_v7(),
            workspace_id,
            username,
            role: new.role,
            password_hash,
            created_at: now,
            updated_at: now,
        };
        let audit = caller.audit(
            workspace_id,
            "member.create",
            member_target(&member.username),
            json!({ "username": member.username, "role": member.role.as_str() }),
        );
        self.store
            .create_member(&member, &audit)
            .await
            .map_err(workspace_error)?;
        Ok(member)
    }

    /// Every member of the workspace, oldest first.
    pub async fn list(&self, caller: &Caller, workspace_id: Uuid) -> Result<Vec<Member>, KeyError> {
        self.managed(caller, workspace_id).await?;
        Ok(self.store.list_members(workspace_id).await?)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        workspace_id: Uuid,
        username: &str,
        patch: MemberPatch,
    ) -> Result<Member, KeyError> {
        let username = username.to_ascii_lowercase();
        let themselves = caller.workspace_id == workspace_id
            && caller.actor == member_target(&username)
            && patch.role.is_none();
        if !themselves {
            caller.require(workspace_id, Role::Admin, "manage members")?;
        }
        let mut member = self
            .store
            .find_member(workspace_id, &username)
            .await
            .map_err(not_found)?;
        if !themselves && (member.role == Role::Owner || patch.role == Some(Role::Owner)) {
            caller.require(workspace_id, Role::Owner, "change owners or make owners")?;
        }
        let mut changed = Vec::new();
        if let Some(role) = patch.role {
            member.role = role;
            changed.push("role");
        }
        if let Some(password) = patch.password {
            input::validate_password(&password)?;
            member.password_hash = self.hasher.hash(password).await?;
            changed.push("password");
        }
        member.updated_at = crate::clock::now();
        let audit = caller.audit(
            workspace_id,
            "member.update",
            member_target(&member.username),
            json!({ "fields": changed, "role": member.role.as_str() }),
        );
        self.store
            .update_member(&member, &audit)
            .await
            .map_err(not_found)?;
        Ok(member)
    }

    pub async fn remove(
        &self,
        caller: &Caller,
        workspace_id: Uuid,
        username: &str,
    ) -> Result<(), KeyError> {
        caller.require(workspace_id, Role::Admin, "manage members")?;
        let member = self
            .store
            .find_member(workspace_id, &username.to_ascii_lowercase())
            .await
            .map_err(not_found)?;
        if member.role == Role::Owner {
            caller.require(workspace_id, Role::Owner, "remove owners")?;
        }
        let audit = caller.audit(
            workspace_id,
            "member.delete",
            member_target(&member.username),
            json!({ "username": member.username, "role": member.role.as_str() }),
        );
        self.store
            .delete_member(workspace_id, member.id, &audit)
            .await
            .map_err(not_found)
    }

    /// Checks a console sign-in. `Ok(None)` for a wrong username or password, after
    /// recording a `member.sign_in_failed` event (never the password). On success the
    /// `member.sign_in` event is returned for the caller to write with the session it
    /// creates. The console limits attempts per address and username before calling this.
    pub async fn sign_in(
        &self,
        workspace_id: Uuid,
        username: &str,
        password: &str,
        source: Option<String>,
    ) -> Result<Option<SignedIn>, KeyError> {
        // A name that cannot be a username cannot sign in; not worth an audit row.
        let Ok(username) = input::normalize_username(username) else {
            return Ok(None);
        };
        let found = match self.store.find_member(workspace_id, &username).await {
            Ok(member) => Some(member),
            Err(StoreError::NotFound) => None,
            Err(err) => return Err(err.into()),
        };
        let hash = match &found {
            Some(member) => member.password_hash.clone(),
            None => self.decoy_hash().await?,
        };
        let matched = self.hasher.verify(password.to_string(), hash).await?;
        let event = |action: &str, actor: String| AuditEvent {
            id: Uuid::now_v7(),
            workspace_id,
            actor,
            action: action.to_string(),
            target: member_target(&username),
            at: crate::clock::now(),
            source: source.clone(),
            details: json!({ "username": username }),
        };
        match found {
            Some(member) if matched => Ok(Some(SignedIn {
                audit: event("member.sign_in", member_target(&member.username)),
                member,
            })),
            _ => {
                self.store
                    .add_audit_event(&event("member.sign_in_failed", "anonymous".into()))
                    .await?;
                Ok(None)
            }
        }
    }

    async fn decoy_hash(&self) -> Result<String, KeyError> {
        let hasher = self.hasher.clone();
        let hash = self
            .decoy_hash
            .get_or_try_init(|| async move {
                hasher
                    .hash(crate::keys::Token::generate().expose().to_string())
                    .await
            })
            .await?;
        Ok(hash.clone())
    }
}
