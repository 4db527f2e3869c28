//! Command-line interface (DESIGN §9). clap structs and the commands that run them; every
//! key command calls the same `KeysService` functions as the HTTP surfaces.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;

use crate::{
    app,
    config::Config,
    http::admin::views::{KeyView, KeyWithSecretView},
    keys::{
        input::NewKey,
        model::{Budget, BudgetPeriod, KeyKind, Limits},
        Caller, CallerRole, KeysService, Token,
    },
    store::{Page, DEFAULT_WORKSPACE},
};

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
    /// Manage API keys directly in the store.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints its secret once (stdout) or one JSON object with --json.
    Create(CreateArgs),
    /// List the workspace's live keys.
    List {
        #[arg(long, default_value = DEFAULT_WORKSPACE)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: uuid::Uuid,
        #[arg(long, default_value = DEFAULT_WORKSPACE)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        id: uuid::Uuid,
        #[arg(long, default_value = DEFAULT_WORKSPACE)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a fresh key without storing it (for KEYGATE_BOOTSTRAP_ADMIN_KEY).
    Generate,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Inference,
    Admin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PeriodArg {
    Day,
    Month,
    Lifetime,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value = "inference")]
    pub kind: KindArg,
    #[arg(long, default_value = DEFAULT_WORKSPACE)]
    pub workspace: String,
    #[arg(long)]
    pub rpm: Option<u64>,
    #[arg(long)]
    pub rpd: Option<u64>,
    #[arg(long)]
    pub tpm: Option<u64>,
    #[arg(long)]
    pub tpd: Option<u64>,
    /// Budget in USD (exact decimal, e.g. 12.50).
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<Decimal>,
    #[arg(long, value_enum, default_value = "month")]
    pub budget_period: PeriodArg,
    /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<DateTime<Utc>>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    if let KeysCommand::Generate = command {
        return print_line(Token::generate().expose());
    }
    let store = app::open_store(config).await?;
    let keys = app::keys_service(config, store);
    match command {
        KeysCommand::Create(args) => create(&keys, args).await,
        KeysCommand::List { workspace, json } => {
            let caller = cli_caller(&keys, &workspace).await?;
            let mut all = Vec::new();
            let mut page = Page {
                page: 1,
                limit: 500,
            };
            loop {
                let batch = keys.list(&caller, page).await?;
                let done = batch.items.len() < page.limit as usize;
                all.extend(batch.items);
                if done {
                    break;
                }
                page.page += 1;
            }
            if json {
                let views: Vec<KeyView> = all.iter().map(KeyView::from).collect();
                print_line(&serde_json::to_string(&views)?)
            } else {
                for key in &all {
                    let view = KeyView::from(key);
                    print_line(&format!(
                        "{}  {:<9}  {:<8}  {}  {}",
                        view.id,
                        key.kind.as_str(),
                        format!("{:?}", view.status).to_lowercase(),
                        view.partial_key,
                        view.name
                    ))?;
                }
                Ok(())
            }
        }
        KeysCommand::Show {
            id,
            workspace,
            json,
        } => {
            let caller = cli_caller(&keys, &workspace).await?;
            let key = keys
                .get(&caller, id)
                .await
                .with_context(|| format!("key {id}"))?;
            print_key(&KeyView::from(&key), json)
        }
        KeysCommand::Revoke {
            id,
            workspace,
            json,
        } => {
            let caller = cli_caller(&keys, &workspace).await?;
            let key = keys
                .revoke(&caller, id)
                .await
                .with_context(|| format!("key {id}"))?;
            if json {
                print_line(&serde_json::to_string(&KeyView::from(&key))?)
            } else {
                eprintln!("revoked {id}");
                Ok(())
            }
        }
        KeysCommand::Generate => Ok(()),
    }
}

async fn create(keys: &KeysService, args: CreateArgs) -> anyhow::Result<()> {
    let caller = cli_caller(keys, &args.workspace).await?;
    let limits = Limits {
        rpm: args.rpm,
        rpd: args.rpd,
        tpm: args.tpm,
        tpd: args.tpd,
        token_type: Default::default(),
    };
    let new = NewKey {
        name: args.name,
        kind: Some(match args.kind {
            KindArg::Inference => KeyKind::Inference,
            KindArg::Admin => KeyKind::Admin,
        }),
        expires_at: args.expires_at,
        budget: args.budget_usd.map(|limit_usd| Budget {
            limit_usd,
            period: match args.budget_period {
                PeriodArg::Day => BudgetPeriod::Day,
                PeriodArg::Month => BudgetPeriod::Month,
                PeriodArg::Lifetime => BudgetPeriod::Lifetime,
            },
        }),
        limits: Some(limits),
        ..NewKey::default()
    };
    let created = keys.create(&caller, new).await?;
    if args.json {
        print_line(&serde_json::to_string(&KeyWithSecretView::from(&created))?)
    } else {
        eprintln!(
            "created key {} ({}); the secret below is shown only once:",
            created.key.id, created.key.name
        );
        print_line(created.secret.expose())
    }
}

async fn cli_caller(keys: &KeysService, workspace: &str) -> anyhow::Result<Caller> {
    let ws = keys
        .store()
        .find_workspace(workspace)
        .await
        .with_context(|| format!("workspace `{workspace}`"))?;
    Ok(Caller {
        workspace_id: ws.id,
        actor: "cli".into(),
        source: None,
        role: CallerRole::Admin,
    })
}

fn print_key(view: &KeyView, json: bool) -> anyhow::Result<()> {
    if json {
        print_line(&serde_json::to_string(view)?)
    } else {
        print_line(&serde_json::to_string_pretty(view)?)
    }
}

/// Machine-readable output goes to stdout; everything else to stderr.
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
