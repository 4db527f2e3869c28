//! `WorkspacesService`: create, read, change and delete workspaces, and read the audit
//! log. Roles and scope come from [`Caller`]: only the operator creates workspaces; any
//! member reads their workspace; admins change its name and webhook; owners change its
//! key cap and credits, and delete it.

use chrono::{DateTime, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::json;
use uuid::Uuid;

use super::{
    input::{self, NewWorkspace, WorkspacePatch},
    webhook,
};
use crate::{
    keys::{input::validate_name, service::workspace_error, Caller, KeyError, Reach},
    store::{
        AuditEvent, AuditFilter, DynStore, Page, Paged, Role, WebhookSecret, Workspace,
        DEFAULT_WORKSPACE_ID,
    },
    usage::budget::period_bounds,
};

/// Reads of a page of workspaces run this many at a time.
const READS_IN_PARALLEL: usize = 8;

/// A workspace with what its readers want to know at a glance.
#[derive(Debug, Clone)]
pub struct WorkspaceDetails {
    pub workspace: Workspace,
    /// Live (not revoked) keys, what the key cap counts.
    pub live_keys: u64,
    /// Spend of all its keys since the start of this UTC month, in pico-USD.
    pub spent_this_month_pico: i64,
}

/// The answer to a create or change: the workspace, and its new webhook signing secret
/// when this call set a webhook URL (shown this once).
#[derive(Debug, Clone)]
pub struct WorkspaceChange {
    pub details: WorkspaceDetails,
    pub new_webhook_secret: Option<WebhookSecret>,
}

/// Which audit events to read; see [`WorkspacesService::audit_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub workspace_id: Option<Uuid>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct WorkspacesService {
    store: DynStore,
    /// Cap given to new workspaces that do not name one (`keys.default_workspace_key_cap`).
    default_key_cap: Option<i64>,
    /// `webhooks.allow_private`.
    allow_private_webhooks: bool,
}

impl WorkspacesService {
    pub fn new(
        store: DynStore,
        default_key_cap: Option<i64>,
        allow_private_webhooks: bool,
    ) -> Self {
        WorkspacesService {
            store,
            default_key_cap,
            allow_private_webhooks,
        }
    }

    pub async fn create(
        &self,
        caller: &Caller,
        new: NewWorkspace,
    ) -> Result<WorkspaceChange, KeyError> {
        if caller.reach != Reach::Every {
            return Err(KeyError::Forbidden(
                "only the operator (an admin key of the default workspace, or the CLI) may \
                 create workspaces"
                    .into(),
            ));
        }
        let name = validate_name(&new.name)?;
        let key_cap = input::validate_key_cap(new.key_cap.unwrap_or(self.default_key_cap))?;
        let credits_usd = input::validate_credits(new.credits_usd)?;
        let webhook_url = match &new.webhook_url {
            Some(url) => Some(webhook::validate_url(url, self.allow_private_webhooks).await?),
            None => None,
        };
        let webhook_secret = webhook_url.as_ref().map(|_| webhook::new_secret());
        let now = crate::clock::now();
        let workspace = Workspace {
            id: Uuid::now_v7(),
            name,
            key_cap,
            credits_usd,
            webhook_url,
            webhook_secret: webhook_secret.clone(),
            created_at: now,
            updated_at: now,
        };
        let audit = caller.audit(
            workspace.id,
            "workspace.create",
            workspace_target(workspace.id),
            json!({
                "name": workspace.name,
                "key_cap": workspace.key_cap,
                "credits_usd": workspace.credits_usd.map(|c| c.to_string()),
                "webhook_url": workspace.webhook_url,
            }),
        );
        self.store.create_workspace(&workspace, &audit).await?;
        Ok(WorkspaceChange {
            details: WorkspaceDetails {
                workspace,
                live_keys: 0,
                spent_this_month_pico: 0,
            },
            new_webhook_secret: webhook_secret,
        })
    }

    /// The workspaces the caller can see, oldest first: every one for the operator, its
    /// own for anyone else.
    pub async fn list(
        &self,
        caller: &Caller,
        page: Page,
    ) -> Result<Paged<WorkspaceDetails>, KeyError> {
        let workspaces = if caller.reach == Reach::Every {
            self.store.list_workspaces(page).await?
        } else {
            let own = self.read(caller, caller.workspace_id).await?;
            let items = if page.page == 1 {
                vec![own]
            } else {
                Vec::new()
            };
            Paged { items, total: 1 }
        };
        let now = crate::clock::now();
        let items = stream::iter(workspaces.items)
            .map(|workspace| self.details(workspace, now))
            .buffered(READS_IN_PARALLEL)
            .try_collect()
            .await?;
        Ok(Paged {
            items,
            total: workspaces.total,
        })
    }

    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceDetails, KeyError> {
        let workspace = self.read(caller, id).await?;
        Ok(self.details(workspace, crate::clock::now()).await?)
    }

    /// The workspace, if the caller may read it (any member of it).
    async fn read(&self, caller: &Caller, id: Uuid) -> Result<Workspace, KeyError> {
        caller.require(id, Role::Member, "read this workspace")?;
        self.store.get_workspace(id).await.map_err(workspace_error)
    }

    async fn details(
        &self,
        workspace: Workspace,
        now: DateTime<Utc>,
    ) -> Result<WorkspaceDetails, crate::store::StoreError> {
        let (month_start, _) = period_bounds(crate::domain::key::BudgetPeriod::Month, now);
        let live_keys = self.store.count_live_keys(workspace.id).await?;
        let spent = self
            .store
            .workspace_usage_totals(workspace.id, month_start)
            .await?;
        Ok(WorkspaceDetails {
            workspace,
            live_keys,
            spent_this_month_pico: spent.cost_pico,
        })
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: WorkspacePatch,
    ) -> Result<WorkspaceChange, KeyError> {
        caller.require(id, Role::Admin, "change a workspace")?;
        if patch.key_cap.is_some() || patch.credits_usd.is_some() {
            caller.require(id, Role::Owner, "change a workspace's key cap or credits")?;
        }
        let mut workspace = self
            .store
            .get_workspace(id)
            .await
            .map_err(workspace_error)?;
        let mut changed = Vec::new();
        let mut new_webhook_secret = None;
        if let Some(name) = patch.name {
            workspace.name = validate_name(&name)?;
            changed.push("name");
        }
        if let Some(cap) = patch.key_cap {
            workspace.key_cap = input::validate_key_cap(cap)?;
            changed.push("key_cap");
        }
        if let Some(credits) = patch.credits_usd {
            workspace.credits_usd = input::validate_credits(credits)?;
            changed.push("credits_usd");
        }
        if let Some(url) = patch.webhook_url {
            match url {
                Some(url) => {
                    let url = webhook::validate_url(&url, self.allow_private_webhooks).await?;
                    let secret = webhook::new_secret();
                    workspace.webhook_url = Some(url);
                    workspace.webhook_secret = Some(secret.clone());
                    new_webhook_secret = Some(secret);
                }
                None => {
                    workspace.webhook_url = None;
                    workspace.webhook_secret = None;
                }
            }
            changed.push("webhook_url");
        }
        workspace.updated_at = crate::clock::now();
        let audit = caller.audit(
            id,
            "workspace.update",
            workspace_target(id),
            json!({
                "fields": changed,
                "key_cap": workspace.key_cap,
                "credits_usd": workspace.credits_usd.map(|c| c.to_string()),
                "webhook_url": workspace.webhook_url,
            }),
        );
        self.store
            .update_workspace(&workspace, &audit)
            .await
            .map_err(workspace_error)?;
        let details = self.details(workspace, crate::clock::now()).await?;
        Ok(WorkspaceChange {
            details,
            new_webhook_secret,
        })
    }

    /// Deletes the workspace and its members. Refused while it has live keys, and always
    /// for `default`, which keygate needs (the bootstrap key, the Web3 flow).
    pub async fn delete(&self, caller: &Caller, id: Uuid) -> Result<(), KeyError> {
        caller.require(id, Role::Owner, "delete a workspace")?;
        let workspace = self
            .store
            .get_workspace(id)
            .await
            .map_err(workspace_error)?;
        if id == DEFAULT_WORKSPACE_ID {
            return Err(KeyError::Conflict {
                code: "default_workspace",
                message: "the default workspace cannot be deleted".into(),
            });
        }
        let now = crate::clock::now();
        let audit = caller.audit(
            id,
            "workspace.delete",
            workspace_target(id),
            json!({ "name": workspace.name }),
        );
        self.store
            .delete_workspace(id, now, &audit)
            .await
            .map_err(workspace_error)
    }

    /// Audit events, newest first. Reading the log needs an admin. Without a
    /// `workspace_id`, the operator reads every workspace's events (deleted ones too, whose
    /// history stays), anyone else their own workspace's.
    pub async fn audit_events(
        &self,
        caller: &Caller,
        query: AuditQuery,
        page: Page,
    ) -> Result<Paged<AuditEvent>, KeyError> {
        let workspace_id = match query.workspace_id {
            Some(id) => {
                caller.require(id, Role::Admin, "read the audit log")?;
                Some(id)
            }
            None => {
                caller.require(caller.workspace_id, Role::Admin, "read the audit log")?;
                (caller.reach == Reach::Own).then_some(caller.workspace_id)
            }
        };
        if let (Some(from), Some(to)) = (query.from, query.to) {
            if from >= to {
                return Err(KeyError::Invalid {
                    field: "from".into(),
                    message: "must be before `to`".into(),
                });
            }
        }
        let filter = AuditFilter {
            workspace_id,
            actor: query.actor,
            action: query.action,
            target: query.target,
            from: query.from,
            to: query.to,
        };
        Ok(self.store.find_audit_events(&filter, page).await?)
    }
}

pub(super) fn workspace_target(id: Uuid) -> String {
    format!("workspace:{id}")
}
