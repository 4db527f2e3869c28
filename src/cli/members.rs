//! `keygate members …`: add, list, update and remove a workspace's members. Passwords are
//! read from standard input (`--password-stdin`) or a terminal prompt, never from an
//! argument (arguments show in `ps` and shell history).

use std::io::{IsTerminal, Read};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use super::{
    admin::{body_as, to_value, Admin},
    print_line, print_value, Group,
};
use crate::{config::Config, http::admin::members::MemberView};

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a member; the password is read from stdin (--password-stdin) or a prompt.
    Add {
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List a workspace's members.
    List {
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
    /// Change a member's role, or password (--password-stdin, or --password to be asked).
    Update {
        username: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        #[command(flatten)]
        password: PasswordArgs,
        /// Set a new password, asked for on the terminal.
        #[arg(long = "password", conflicts_with = "password_stdin")]
        prompt_password: bool,
    },
    /// Remove a member.
    Remove {
        username: String,
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
}

#[derive(Debug, Args)]
pub struct WorkspaceArg {
    /// Workspace name or id.
    #[arg(long)]
    pub workspace: String,
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the password from standard input (one line).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Owner,
    Admin,
    Member,
}

fn role_name(role: RoleArg) -> &'static str {
    match role {
        RoleArg::Owner => "owner",
        RoleArg::Admin => "admin",
        RoleArg::Member => "member",
    }
}

/// The password from stdin (without its line ending) or from a prompt on the terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        return Ok(password.to_string());
    }
    // A script (stdin not a terminal) must say where the password comes from, rather than
    // wait on a prompt nobody sees.
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; pipe it in with --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| {
        anyhow!("cannot ask for the password ({e}); pipe it in with --password-stdin")
    })?;
    let second = rpassword::prompt_password("Password (again): ")
        .map_err(|e| anyhow!("cannot ask for the password ({e})"))?;
    if first != second {
        bail!("the two passwords differ");
    }
    Ok(first)
}

pub async fn run(config: &Config, group: Group<MembersCommand>) -> anyhow::Result<()> {
    let admin = Admin::connect(config, group.url.as_deref()).await?;
    let json = group.json;
    match group.command {
        MembersCommand::Add {
            workspace,
            username,
            role,
            password,
        } => {
            let id = admin.workspace_id(&workspace.workspace).await?;
            let body = json!({
                "username": username,
                "role": role_name(role),
                "password": read_password(password.password_stdin)?,
            });
            let member = match &admin {
                Admin::Local(local) => local
                    .members
                    .add(&local.caller, id, body_as(&body)?)
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|m| to_value(&MemberView::from(&m))),
                Admin::Remote(remote) => {
                    let path = format!("/admin/v1/workspaces/{id}/members");
                    remote.call(Method::POST, &path, Some(&body)).await
                }
            }
            .with_context(|| format!("member `{username}`"))?;
            print_value(&member, json)
        }
        MembersCommand::List { workspace } => {
            let id = admin.workspace_id(&workspace.workspace).await?;
            let members: Vec<Value> = match &admin {
                Admin::Local(local) => local
                    .members
                    .list(&local.caller, id)
                    .await?
                    .iter()
                    .map(|m| to_value(&MemberView::from(m)))
                    .collect::<anyhow::Result<_>>()?,
                Admin::Remote(remote) => {
                    remote
                        .all_pages(&format!("/admin/v1/workspaces/{id}/members?"))
                        .await?
                }
            };
            if json {
                return print_line(&serde_json::to_string(&members)?);
            }
            for member in &members {
                print_line(&format!(
                    "{:<8}  {}",
                    member["role"].as_str().unwrap_or_default(),
                    member["username"].as_str().unwrap_or_default()
                ))?;
            }
            Ok(())
        }
        MembersCommand::Update {
            username,
            workspace,
            role,
            password,
            prompt_password,
        } => {
            let id = admin.workspace_id(&workspace.workspace).await?;
            let mut body = json!({});
            if let Some(role) = role {
                body["role"] = json!(role_name(role));
            }
            if password.password_stdin || prompt_password {
                body["password"] = json!(read_password(password.password_stdin)?);
            }
            let member = match &admin {
                Admin::Local(local) => local
                    .members
                    .update(&local.caller, id, &username, body_as(&body)?)
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|m| to_value(&MemberView::from(&m))),
                Admin::Remote(remote) => {
                    let path = format!("/admin/v1/workspaces/{id}/members/{username}");
                    remote.call(Method::PATCH, &path, Some(&body)).await
                }
            }
            .with_context(|| format!("member `{username}`"))?;
            print_value(&member, json)
        }
        MembersCommand::Remove {
            username,
            workspace,
        } => {
            let id = admin.workspace_id(&workspace.workspace).await?;
            match &admin {
                Admin::Local(local) => local
                    .members
                    .remove(&local.caller, id, &username)
                    .await
                    .map_err(anyhow::Error::from),
                Admin::Remote(remote) => {
                    let path = format!("/admin/v1/workspaces/{id}/members/{username}");
                    remote.call(Method::DELETE, &path, None).await.map(|_| ())
                }
            }
            .with_context(|| format!("member `{username}`"))?;
            if json {
                print_line(&json!({ "username": username, "removed": true }).to_string())
            } else {
                eprintln!("removed member {username}");
                Ok(())
            }
        }
    }
}
