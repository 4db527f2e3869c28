//! `keygate workspaces …`: create, list, show, update and delete workspaces.

use anyhow::Context;
use clap::{Args, Subcommand};
use http::Method;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::{
    admin::{all_local, body_as, to_value, Admin},
    print_line, print_value, Group,
};
use crate::{
    config::Config,
    http::admin::workspaces::{WorkspaceChangeView, WorkspaceView},
};

#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// Create a workspace. A webhook URL's signing secret is printed once.
    Create(CreateArgs),
    /// List every workspace.
    List,
    /// Show a workspace (name or id), with its live keys and this month's spend.
    Show { workspace: String },
    /// Change a workspace (name or id).
    Update(UpdateArgs),
    /// Delete a workspace (name or id) and its members; refused while it has live keys.
    Delete { workspace: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    /// Most live keys (default: keys.default_workspace_key_cap).
    #[arg(long, conflicts_with = "no_key_cap")]
    pub key_cap: Option<i64>,
    /// No key cap at all.
    #[arg(long)]
    pub no_key_cap: bool,
    /// Prepaid credits in USD (exact decimal).
    #[arg(long, value_name = "USD")]
    pub credits_usd: Option<Decimal>,
    /// Where budget alerts are POSTed (http or https).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Name or id.
    pub workspace: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, conflicts_with = "no_key_cap")]
    pub key_cap: Option<i64>,
    #[arg(long)]
    pub no_key_cap: bool,
    #[arg(long, value_name = "USD", conflicts_with = "no_credits")]
    pub credits_usd: Option<Decimal>,
    /// Stop enforcing credits.
    #[arg(long)]
    pub no_credits: bool,
    /// A new URL; a new signing secret is printed once.
    #[arg(long, value_name = "URL", conflicts_with = "no_webhook")]
    pub webhook_url: Option<String>,
    /// Remove the webhook and its secret.
    #[arg(long)]
    pub no_webhook: bool,
}

pub async fn run(config: &Config, group: Group<WorkspacesCommand>) -> anyhow::Result<()> {
    let admin = Admin::connect(config, group.url.as_deref()).await?;
    let json = group.json;
    match group.command {
        WorkspacesCommand::Create(args) => {
            let mut body = json!({ "name": args.name });
            if let Some(cap) = args.key_cap {
                body["key_cap"] = json!(cap);
            } else if args.no_key_cap {
                body["key_cap"] = Value::Null;
            }
            if let Some(credits) = args.credits_usd {
                body["credits_usd"] = json!(credits.to_string());
            }
            if let Some(url) = args.webhook_url {
                body["webhook_url"] = json!(url);
            }
            let created = match &admin {
                Admin::Local(local) => to_value(&WorkspaceChangeView::from(
                    &local
                        .workspaces
                        .create(&local.caller, body_as(&body)?)
                        .await?,
                ))?,
                Admin::Remote(remote) => {
                    remote
                        .call(Method::POST, "/admin/v1/workspaces", Some(&body))
                        .await?
                }
            };
            print_change(&created, json)
        }
        WorkspacesCommand::List => {
            let all: Vec<Value> = match &admin {
                Admin::Local(local) => all_local(|page| async move {
                    Ok(local.workspaces.list(&local.caller, page).await?)
                })
                .await?
                .iter()
                .map(|ws| to_value(&WorkspaceView::from(ws)))
                .collect::<anyhow::Result<_>>()?,
                Admin::Remote(remote) => remote.all_pages("/admin/v1/workspaces?").await?,
            };
            if json {
                return print_line(&serde_json::to_string(&all)?);
            }
            for ws in &all {
                let cap = ws["key_cap"]
                    .as_i64()
                    .map_or("no cap".to_string(), |cap| format!("cap {cap}"));
                print_line(&format!(
                    "{}  {}  live keys {} ({cap})",
                    ws["id"].as_str().unwrap_or_default(),
                    ws["name"].as_str().unwrap_or_default(),
                    ws["live_keys"],
                ))?;
            }
            Ok(())
        }
        WorkspacesCommand::Show { workspace } => {
            let id = admin.workspace_id(&workspace).await?;
            let shown = match &admin {
                Admin::Local(local) => {
                    local.usage.flush().await;
                    to_value(&WorkspaceView::from(
                        &local.workspaces.get(&local.caller, id).await?,
                    ))
                }
                Admin::Remote(remote) => {
                    remote
                        .call(Method::GET, &format!("/admin/v1/workspaces/{id}"), None)
                        .await
                }
            }
            .with_context(|| format!("workspace `{workspace}`"))?;
            print_value(&shown, json)
        }
        WorkspacesCommand::Update(args) => {
            let id = admin.workspace_id(&args.workspace).await?;
            let mut body = json!({});
            if let Some(name) = args.name {
                body["name"] = json!(name);
            }
            if let Some(cap) = args.key_cap {
                body["key_cap"] = json!(cap);
            } else if args.no_key_cap {
                body["key_cap"] = Value::Null;
            }
            if let Some(credits) = args.credits_usd {
                body["credits_usd"] = json!(credits.to_string());
            } else if args.no_credits {
                body["credits_usd"] = Value::Null;
            }
            if let Some(url) = args.webhook_url {
                body["webhook_url"] = json!(url);
            } else if args.no_webhook {
                body["webhook_url"] = Value::Null;
            }
            let changed = match &admin {
                Admin::Local(local) => local
                    .workspaces
                    .update(&local.caller, id, body_as(&body)?)
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|change| to_value(&WorkspaceChangeView::from(&change))),
                Admin::Remote(remote) => {
                    remote
                        .call(
                            Method::PATCH,
                            &format!("/admin/v1/workspaces/{id}"),
                            Some(&body),
                        )
                        .await
                }
            }
            .with_context(|| format!("workspace `{}`", args.workspace))?;
            print_change(&changed, json)
        }
        WorkspacesCommand::Delete { workspace } => {
            let id = admin.workspace_id(&workspace).await?;
            match &admin {
                Admin::Local(local) => local
                    .workspaces
                    .delete(&local.caller, id)
                    .await
                    .map_err(anyhow::Error::from),
                Admin::Remote(remote) => remote
                    .call(Method::DELETE, &format!("/admin/v1/workspaces/{id}"), None)
                    .await
                    .map(|_| ()),
            }
            .with_context(|| format!("workspace `{workspace}`"))?;
            if json {
                print_line(&json!({ "id": id, "deleted": true }).to_string())
            } else {
                eprintln!("deleted workspace {workspace} ({id})");
                Ok(())
            }
        }
    }
}

/// A created or changed workspace; a new webhook secret is pointed out on stderr.
fn print_change(workspace: &Value, json: bool) -> anyhow::Result<()> {
    if !json && workspace.get("webhook_secret").is_some() {
        eprintln!("the webhook_secret below is shown only once; budget alerts are signed with it");
    }
    print_value(workspace, json)
}
