//! Command-line interface (DESIGN §9). clap structs and the commands that run them; every
//! key command calls the same `KeysService` functions as the HTTP surfaces. `health` is the
//! container health check: one GET, no configuration, no store.

use std::{io::Write, net::SocketAddr, path::PathBuf, time::Duration};

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
    /// Check a running gateway: exits 0 when the URL answers 2xx, 1 otherwise.
    /// Reads no configuration (a container HEALTHCHECK needs no shell tools).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The URL to GET (http:// only: it checks the local listener).
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    pub url: url::Url,
    /// Give up after this many seconds (connecting and answering together).
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub timeout_secs: f64,
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

/// One GET to `args.url`; Ok when it answers 2xx within the timeout. hyper's client
/// connection is enough here: one request on a fresh connection, no pool, no TLS.
pub async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let url = &args.url;
    anyhow::ensure!(
        url.scheme() == "http",
        "--url: only http:// is supported (it checks the local listener), got {}",
        url.scheme()
    );
    let host = url.host_str().context("--url has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout-secs must be a positive number")?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let status = tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let status = sender.send_request(request).await?.status();
        connection.abort();
        anyhow::Ok(status)
    })
    .await
    .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))?
    .with_context(|| format!("{url}"))?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
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
