//! Command-line interface (DESIGN §9): the clap structs and, one file per group, the
//! commands that run them. A command group is one `Command` variant plus one `run`
//! function in its file.
//!
//! Every admin action has a command, and every command obeys the same rules as the API:
//! run locally, it calls the services (`KeysService`, `WorkspacesService`,
//! `MembersService`) on the configured store as the actor `cli`, an owner of every
//! workspace; with `--url URL` and `KEYGATE_ADMIN_KEY` it sends the same request to a
//! running server instead (`admin.rs`). Either way it builds the API's request body and
//! prints the API's answer, so `--json` output is the same as the API's.

mod admin;
mod audit;
mod health;
mod keys;
mod members;
mod workspaces;

pub use self::health::{health, HealthArgs};

use std::{io::Write, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

pub use self::{
    audit::{AuditCommand, EventsCommand},
    keys::KeysCommand,
    members::MembersCommand,
    workspaces::WorkspacesCommand,
};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "Self-hosted API-key gateway for LLM inference"
)]
pub struct Cli {
    /// Config file (default: config/keygate.toml when it exists).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (migrates the store first).
    Serve {
        /// Address to listen on, overriding the config (e.g. 0.0.0.0:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Apply the store's migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys(Group<KeysCommand>),
    /// Manage workspaces.
    Workspaces(Group<WorkspacesCommand>),
    /// Manage a workspace's members (console users).
    Members(Group<MembersCommand>),
    /// Read the audit log.
    Audit(Group<AuditCommand>),
    /// Read the log of refused requests.
    #[command(name = "rate-limit-events")]
    RateLimitEvents(Group<EventsCommand>),
    /// Check a running gateway: exits 0 when the URL answers 2xx, 1 otherwise.
    /// Reads no configuration (a container HEALTHCHECK needs no shell tools).
    Health(HealthArgs),
}

/// A command group: where to act, how to print, and the command.
#[derive(Debug, Args)]
pub struct Group<C: Subcommand> {
    /// Act through the API of the keygate server at URL (e.g. http://127.0.0.1:8080) with
    /// the admin key in KEYGATE_ADMIN_KEY, instead of on the configured store directly.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Print the API's JSON answer (one line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: C,
}

/// Runs an admin command group (everything but `serve` and `migrate`).
pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keys(group) => keys::run(config, group).await,
        Command::Workspaces(group) => workspaces::run(config, group).await,
        Command::Members(group) => members::run(config, group).await,
        Command::Audit(group) => audit::run_audit(config, group).await,
        Command::RateLimitEvents(group) => audit::run_events(config, group).await,
        Command::Serve { .. } | Command::Migrate | Command::Health(_) => {
            anyhow::bail!("`serve`, `migrate` and `health` are not admin commands")
        }
    }
}

/// Machine-readable output goes to stdout; everything else to stderr.
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// One JSON value: on one line with `--json`, pretty otherwise.
fn print_value(value: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        print_line(&serde_json::to_string(value)?)
    } else {
        print_line(&serde_json::to_string_pretty(value)?)
    }
}
