//! Who is asking, and what they may do where: the one place where roles (DESIGN §3) and
//! workspace scope (DESIGN §6) are decided. Every service (keys, workspaces, members, the
//! audit log) asks its `Caller` before acting, so the native API, the Venice and aiXplain
//! routes, the CLI and the console obey the same rules.
//!
//! Principals and how they act (docs/decisions.md, "Roles and scope"):
//! - an admin key of the `default` workspace (the bootstrap key among them): the
//!   operator, an owner of every workspace;
//! - an admin key of another workspace: an admin of its own workspace only;
//! - a console member: their role, in their own workspace only;
//! - the CLI (actor `cli`): an owner of every workspace.
//!
//! Outside its reach a caller is told "not found", never "forbidden": a 403 would confirm
//! that the workspace or key exists.

use serde_json::Value;
use uuid::Uuid;

use super::{ApiKey, KeyError};
use crate::store::{AuditEvent, Member, Role, DEFAULT_WORKSPACE_ID};

/// A caller's rights in a workspace it can see. Ordered: `Member < Admin < Owner`.
pub type CallerRole = Role;

/// Which workspaces a caller can see at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only its own (`Caller::workspace_id`).
    Own,
    /// Every workspace (the operator: `default`'s admin keys, the CLI).
    Every,
}

#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's own workspace: where its keys are created unless it names another.
    pub workspace_id: Uuid,
    /// Audit actor, e.g. `key:<uuid>`, `member:alice`, `cli`.
    pub actor: String,
    /// Client address, when the call came over HTTP.
    pub source: Option<String>,
    /// Its rights in every workspace it can see.
    pub role: CallerRole,
    pub reach: Reach,
}

impl Caller {
    /// An admin key acts as the operator when it belongs to the `default` workspace, else
    /// as an admin of its own workspace.
    pub fn for_admin_key(key: &ApiKey, source: Option<String>) -> Caller {
        let operator = key.workspace_id == DEFAULT_WORKSPACE_ID;
        Caller {
            workspace_id: key.workspace_id,
            actor: format!("key:{}", key.id),
            source,
            role: if operator { Role::Owner } else { Role::Admin },
            reach: if operator { Reach::Every } else { Reach::Own },
        }
    }

    /// A signed-in console member: their role, in their workspace.
    pub fn for_member(member: &Member, source: Option<String>) -> Caller {
        Caller {
            workspace_id: member.workspace_id,
            actor: format!("member:{}", member.username),
            source,
            role: member.role,
            reach: Reach::Own,
        }
    }

    /// The operator acting on the server's own machine (`keygate` commands, bootstrap).
    pub fn operator(actor: &str) -> Caller {
        Caller {
            workspace_id: DEFAULT_WORKSPACE_ID,
            actor: actor.to_string(),
            source: None,
            role: Role::Owner,
            reach: Reach::Every,
        }
    }

    /// The workspace a call is about: `requested`, or the caller's own. A workspace
    /// outside the caller's reach is "not found".
    pub fn target(&self, requested: Option<Uuid>) -> Result<Uuid, KeyError> {
        match requested {
            None => Ok(self.workspace_id),
            Some(id) if self.can_see(id) => Ok(id),
            Some(_) => Err(KeyError::WorkspaceNotFound),
        }
    }

    pub fn can_see(&self, workspace_id: Uuid) -> bool {
        self.reach == Reach::Every || workspace_id == self.workspace_id
    }

    /// Succeeds when the caller has at least `role` in `workspace_id`. Outside its reach:
    /// `WorkspaceNotFound`; inside with too few rights: `Forbidden` naming what is needed.
    pub fn require(&self, workspace_id: Uuid, role: Role, what: &str) -> Result<(), KeyError> {
        if !self.can_see(workspace_id) {
            return Err(KeyError::WorkspaceNotFound);
        }
        if self.role < role {
            let who = match role {
                Role::Owner => "workspace owners",
                Role::Admin => "workspace admins and owners",
                Role::Member => "workspace members",
            };
            return Err(KeyError::Forbidden(format!("only {who} may {what}")));
        }
        Ok(())
    }

    /// An audit event of this caller's action on `target` in `workspace_id`.
    pub fn audit(
        &self,
        workspace_id: Uuid,
        action: &str,
        target: String,
        details: Value,
    ) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            workspace_id,
            actor: self.actor.clone(),
            action: action.to_string(),
            target,
            at: crate::clock::now(),
            source: self.source.clone(),
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: Role) -> Caller {
        Caller {
            workspace_id: Uuid::from_u128(7),
            actor: "member:m".into(),
            source: None,
            role,
            reach: Reach::Own,
        }
    }

    #[test]
    fn roles_compare_by_rights() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
    }

    #[test]
    fn outside_the_reach_is_not_found_inside_too_few_rights_is_forbidden() {
        let caller = member(Role::Admin);
        let other = Uuid::from_u128(8);
        assert!(matches!(
            caller.require(other, Role::Member, "read"),
            Err(KeyError::WorkspaceNotFound)
        ));
        assert!(matches!(
            caller.target(Some(other)),
            Err(KeyError::WorkspaceNotFound)
        ));
        assert!(caller
            .require(caller.workspace_id, Role::Admin, "x")
            .is_ok());
        assert!(matches!(
            caller.require(caller.workspace_id, Role::Owner, "delete the workspace"),
            Err(KeyError::Forbidden(m)) if m.contains("owners")
        ));
        let operator = Caller::operator("cli");
        assert!(operator.require(other, Role::Owner, "x").is_ok());
        assert_eq!(operator.target(Some(other)).unwrap(), other);
    }
}
