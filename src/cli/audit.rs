//! `keygate audit list` and `keygate rate-limit-events list`: the two logs, one page at a
//! time (`--page`, `--limit`), newest first. `--json` prints the API's page object.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    admin::{query_param, Admin},
    print_line, Group,
};
use crate::{
    config::Config,
    http::admin::{audit::AuditEventView, usage::RateLimitEventView},
    store::{EventFilter, Page},
    workspaces::AuditQuery,
};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first (every workspace's unless --workspace).
    List {
        /// Workspace name or id.
        #[arg(long)]
        workspace: Option<String>,
        /// Only this actor's (`cli`, `key:<id>`, `member:<username>`…).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (`key.create`, `workspace.delete`…).
        #[arg(long)]
        action: Option<String>,
        /// Only about this target (`key:<id>`, `workspace:<id>`, `member:<username>`).
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        range: RangeArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List refused requests, newest first.
    List {
        /// Workspace name or id (default: `default`).
        #[arg(long)]
        workspace: Option<String>,
        /// Only this key's.
        #[arg(long)]
        key_id: Option<Uuid>,
        #[command(flatten)]
        range: RangeArgs,
    },
}

#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Start, RFC 3339 (inclusive).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<DateTime<Utc>>,
    /// End, RFC 3339 (exclusive).
    #[arg(long, value_name = "RFC3339")]
    pub to: Option<DateTime<Utc>>,
    /// 1-based page.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub page: u32,
    /// Items per page (at most 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
}

impl RangeArgs {
    fn page(&self) -> Page {
        Page {
            page: self.page,
            limit: self.limit,
        }
    }

    fn query(&self, query: &mut String) {
        query_param(query, "from", self.from.map(|t| t.to_rfc3339()));
        query_param(query, "to", self.to.map(|t| t.to_rfc3339()));
        query_param(query, "page", Some(self.page));
        query_param(query, "limit", Some(self.limit));
    }
}

/// A page object `{"data", "page", "limit", "total"}` as the API answers.
fn page_of(data: Vec<Value>, page: Page, total: u64) -> Value {
    json!({ "data": data, "page": page.page, "limit": page.limit, "total": total })
}

async fn workspace(admin: &Admin, reference: Option<&str>) -> anyhow::Result<Option<Uuid>> {
    match reference {
        Some(reference) => Ok(Some(admin.workspace_id(reference).await?)),
        None => Ok(None),
    }
}

pub async fn run_audit(config: &Config, group: Group<AuditCommand>) -> anyhow::Result<()> {
    let admin = Admin::connect(config, group.url.as_deref()).await?;
    let AuditCommand::List {
        workspace: reference,
        actor,
        action,
        target,
        range,
    } = group.command;
    let workspace_id = workspace(&admin, reference.as_deref()).await?;
    let answer = match &admin {
        Admin::Local(local) => {
            let query = AuditQuery {
                workspace_id,
                actor,
                action,
                target,
                from: range.from,
                to: range.to,
            };
            let events = local
                .workspaces
                .audit_events(&local.caller, query, range.page())
                .await?;
            let data = events
                .items
                .iter()
                .map(|e| serde_json::to_value(AuditEventView::from(e)))
                .collect::<Result<_, _>>()?;
            page_of(data, range.page(), events.total)
        }
        Admin::Remote(remote) => {
            let mut path = String::from("/admin/v1/audit-events?");
            query_param(&mut path, "workspace_id", workspace_id);
            query_param(&mut path, "actor", actor);
            query_param(&mut path, "action", action);
            query_param(&mut path, "target", target);
            range.query(&mut path);
            remote
                .call(Method::GET, path.trim_end_matches('&'), None)
                .await?
        }
    };
    if group.json {
        return print_line(&answer.to_string());
    }
    for event in answer["data"].as_array().into_iter().flatten() {
        print_line(&format!(
            "{}  {:<22}  {:<44}  {}  {}",
            event["at"].as_str().unwrap_or_default(),
            event["action"].as_str().unwrap_or_default(),
            event["actor"].as_str().unwrap_or_default(),
            event["target"].as_str().unwrap_or_default(),
            event["details"],
        ))?;
    }
    Ok(())
}

pub async fn run_events(config: &Config, group: Group<EventsCommand>) -> anyhow::Result<()> {
    let admin = Admin::connect(config, group.url.as_deref()).await?;
    let EventsCommand::List {
        workspace: reference,
        key_id,
        range,
    } = group.command;
    let workspace_id = workspace(&admin, reference.as_deref()).await?;
    let answer = match &admin {
        Admin::Local(local) => {
            let workspace_id = local
                .keys
                .readable_workspace(&local.caller, workspace_id)
                .await?;
            let filter = EventFilter {
                key_id,
                from: range.from,
                to: range.to,
            };
            let events = local
                .usage
                .refusals(workspace_id, &filter, range.page())
                .await?;
            let data = events
                .items
                .into_iter()
                .map(|e| {
                    serde_json::to_value(RateLimitEventView {
                        key_id: e.key_id,
                        model: e.model,
                        limit: e.limit,
                        limit_value: e.limit_value,
                        at: e.at,
                    })
                })
                .collect::<Result<_, _>>()?;
            page_of(data, range.page(), events.total)
        }
        Admin::Remote(remote) => {
            let mut path = String::from("/admin/v1/rate-limit-events?");
            query_param(&mut path, "workspace_id", workspace_id);
            query_param(&mut path, "key_id", key_id);
            range.query(&mut path);
            remote
                .call(Method::GET, path.trim_end_matches('&'), None)
                .await?
        }
    };
    if group.json {
        return print_line(&answer.to_string());
    }
    for event in answer["data"].as_array().into_iter().flatten() {
        print_line(&format!(
            "{}  {}  {:<11}  {:>10}  {}",
            event["at"].as_str().unwrap_or_default(),
            event["key_id"].as_str().unwrap_or_default(),
            event["limit"].as_str().unwrap_or_default(),
            event["limit_value"].as_str().unwrap_or_default(),
            event["model"].as_str().unwrap_or("-"),
        ))?;
    }
    Ok(())
}
