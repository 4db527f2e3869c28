//! `keygate keys …`: create, list, show, update, rotate, revoke, usage and generate.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    admin::{all_local, body_as, query_param, to_value, Admin},
    print_line, print_value, Group,
};
use crate::{
    config::Config,
    http::admin::{
        usage::{UsageAnswer, UsageBucket},
        views::{KeyView, KeyWithSecretView},
    },
    keys::{input::KeyPatch, Token},
    store::Granularity,
    usage::RangeRequest,
};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints its secret once (stdout) or one JSON object with --json.
    Create(CreateArgs),
    /// List a workspace's live keys.
    List {
        /// Workspace name or id (default: `default`).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Show one key.
    Show {
        id: Uuid,
        /// Only if it belongs to this workspace (name or id).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Change a key: name, kind, expiry, limits, budget. Limit flags replace the key's
    /// limits as a whole.
    Update(UpdateArgs),
    /// Issue a new secret; prints it once (stdout) or one JSON object with --json.
    Rotate {
        id: Uuid,
        /// Seconds the old secret keeps working (default 0, at most 604800).
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        id: Uuid,
        /// Only if it belongs to this workspace (name or id).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// A key's usage per bucket and model.
    Usage {
        id: Uuid,
        /// Start, RFC 3339 (default: 24 hours before --to).
        #[arg(long, value_name = "RFC3339")]
        from: Option<DateTime<Utc>>,
        /// End, RFC 3339 (default: now).
        #[arg(long, value_name = "RFC3339")]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum)]
        granularity: Option<GranularityArg>,
        #[arg(long)]
        model: Option<String>,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GranularityArg {
    Minute,
    Hour,
    Day,
}

/// Limit and budget flags shared by create and update.
#[derive(Debug, Args)]
pub struct LimitArgs {
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
}

impl LimitArgs {
    fn limits(&self) -> Option<Value> {
        let limits = [
            ("rpm", self.rpm),
            ("rpd", self.rpd),
            ("tpm", self.tpm),
            ("tpd", self.tpd),
        ];
        if limits.iter().all(|(_, v)| v.is_none()) {
            return None;
        }
        let map: Map<String, Value> = limits
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name.to_string(), json!(v))))
            .collect();
        Some(Value::Object(map))
    }

    fn budget(&self) -> Option<Value> {
        self.budget_usd.map(|usd| {
            json!({
                "limit_usd": usd.to_string(),
                "period": match self.budget_period {
                    PeriodArg::Day => "day",
                    PeriodArg::Month => "month",
                    PeriodArg::Lifetime => "lifetime",
                },
            })
        })
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value = "inference")]
    pub kind: KindArg,
    /// Workspace name or id (default: `default`).
    #[arg(long)]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Lower a request's max_tokens to what the limits or budget have left instead of
    /// refusing it.
    #[arg(long)]
    pub fit_max_tokens: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: Uuid,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Expiry, RFC 3339 (a past time expires the key now).
    #[arg(long, value_name = "RFC3339", conflicts_with = "no_expiry")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Remove the expiry.
    #[arg(long)]
    pub no_expiry: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Remove every rate limit.
    #[arg(long, conflicts_with_all = ["rpm", "rpd", "tpm", "tpd"])]
    pub no_limits: bool,
    /// Remove the budget.
    #[arg(long, conflicts_with = "budget_usd")]
    pub no_budget: bool,
    /// Lower a request's max_tokens to what the limits or budget have left instead of
    /// refusing it.
    #[arg(long, conflicts_with = "no_fit_max_tokens")]
    pub fit_max_tokens: bool,
    /// Refuse such requests again (the default).
    #[arg(long)]
    pub no_fit_max_tokens: bool,
}

fn kind_name(kind: KindArg) -> &'static str {
    match kind {
        KindArg::Inference => "inference",
        KindArg::Admin => "admin",
    }
}

pub async fn run(config: &Config, group: Group<KeysCommand>) -> anyhow::Result<()> {
    if let KeysCommand::Generate = group.command {
        return print_line(Token::generate().expose());
    }
    let admin = Admin::connect(config, group.url.as_deref()).await?;
    let json = group.json;
    match group.command {
        KeysCommand::Create(args) => create(&admin, args, json).await,
        KeysCommand::List { workspace } => list(&admin, workspace.as_deref(), json).await,
        KeysCommand::Show { id, workspace } => {
            let key = show(&admin, id, workspace.as_deref()).await?;
            print_value(&key, json)
        }
        KeysCommand::Update(args) => {
            let id = args.id;
            let key = update(&admin, args)
                .await
                .with_context(|| format!("key {id}"))?;
            print_value(&key, json)
        }
        KeysCommand::Rotate { id, grace_seconds } => {
            let rotated = rotate(&admin, id, grace_seconds)
                .await
                .with_context(|| format!("key {id}"))?;
            print_secret(&rotated, json, "rotated")
        }
        KeysCommand::Revoke { id, workspace } => {
            // A key of another workspace than the one named is "not found", as on the API.
            show(&admin, id, workspace.as_deref()).await?;
            let key = revoke(&admin, id)
                .await
                .with_context(|| format!("key {id}"))?;
            if json {
                print_line(&serde_json::to_string(&key)?)
            } else {
                eprintln!("revoked {id}");
                Ok(())
            }
        }
        KeysCommand::Usage {
            id,
            from,
            to,
            granularity,
            model,
        } => {
            let range = RangeRequest {
                from,
                to,
                granularity: granularity.map(|g| match g {
                    GranularityArg::Minute => Granularity::Minute,
                    GranularityArg::Hour => Granularity::Hour,
                    GranularityArg::Day => Granularity::Day,
                }),
                model,
            };
            let answer = usage(&admin, id, range)
                .await
                .with_context(|| format!("key {id}"))?;
            print_usage(&answer, json)
        }
        KeysCommand::Generate => Ok(()),
    }
}

async fn create(admin: &Admin, args: CreateArgs, json: bool) -> anyhow::Result<()> {
    let mut body = json!({ "name": args.name, "kind": kind_name(args.kind) });
    if let Some(workspace) = &args.workspace {
        body["workspace_id"] = json!(admin
            .workspace_id(workspace)
            .await
            .with_context(|| format!("workspace `{workspace}`"))?);
    }
    if let Some(limits) = args.limits.limits() {
        body["limits"] = limits;
    }
    if let Some(budget) = args.limits.budget() {
        body["budget"] = budget;
    }
    if let Some(at) = args.expires_at {
        body["expires_at"] = json!(at);
    }
    if args.fit_max_tokens {
        body["fit_max_tokens"] = json!(true);
    }
    let created = match admin {
        Admin::Local(local) => {
            let created = local.keys.create(&local.caller, body_as(&body)?).await?;
            to_value(&KeyWithSecretView::from(&created))?
        }
        Admin::Remote(remote) => {
            remote
                .call(Method::POST, "/admin/v1/keys", Some(&body))
                .await?
        }
    };
    print_secret(&created, json, "created")
}

/// A key with its secret: one JSON object, or the secret alone on stdout.
fn print_secret(key: &Value, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        return print_line(&serde_json::to_string(key)?);
    }
    eprintln!(
        "{what} key {} ({}); the secret below is shown only once:",
        key["id"].as_str().unwrap_or_default(),
        key["name"].as_str().unwrap_or_default()
    );
    print_line(key["secret"].as_str().unwrap_or_default())
}

async fn list(admin: &Admin, workspace: Option<&str>, json: bool) -> anyhow::Result<()> {
    let workspace_id = match workspace {
        Some(w) => Some(
            admin
                .workspace_id(w)
                .await
                .with_context(|| format!("workspace `{w}`"))?,
        ),
        None => None,
    };
    let keys: Vec<Value> = match admin {
        Admin::Local(local) => all_local(|page| async move {
            Ok(local.keys.list(&local.caller, workspace_id, page).await?)
        })
        .await?
        .iter()
        .map(|key| to_value(&KeyView::from(key)))
        .collect::<anyhow::Result<_>>()?,
        Admin::Remote(remote) => {
            let mut path = String::from("/admin/v1/keys?");
            query_param(&mut path, "workspace_id", workspace_id);
            remote.all_pages(&path).await?
        }
    };
    if json {
        return print_line(&serde_json::to_string(&keys)?);
    }
    for key in &keys {
        let text = |field: &str| key[field].as_str().unwrap_or_default().to_string();
        print_line(&format!(
            "{}  {:<9}  {:<8}  {}  {}",
            text("id"),
            text("kind"),
            text("status"),
            text("partial_key"),
            text("name")
        ))?;
    }
    Ok(())
}

async fn show(admin: &Admin, id: Uuid, workspace: Option<&str>) -> anyhow::Result<Value> {
    let key = match admin {
        Admin::Local(local) => to_value(&KeyView::from(
            &local
                .keys
                .get(&local.caller, id)
                .await
                .with_context(|| format!("key {id}"))?,
        ))?,
        Admin::Remote(remote) => remote
            .call(Method::GET, &format!("/admin/v1/keys/{id}"), None)
            .await
            .with_context(|| format!("key {id}"))?,
    };
    if let Some(workspace) = workspace {
        let workspace_id = admin
            .workspace_id(workspace)
            .await
            .with_context(|| format!("workspace `{workspace}`"))?;
        if key["workspace_id"] != json!(workspace_id) {
            anyhow::bail!("key {id}: no such key in workspace `{workspace}`");
        }
    }
    Ok(key)
}

async fn update(admin: &Admin, args: UpdateArgs) -> anyhow::Result<Value> {
    let mut body = json!({});
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    if let Some(kind) = args.kind {
        body["kind"] = json!(kind_name(kind));
    }
    if let Some(at) = args.expires_at {
        body["expires_at"] = json!(at);
    } else if args.no_expiry {
        body["expires_at"] = Value::Null;
    }
    if let Some(limits) = args.limits.limits() {
        body["limits"] = limits;
    } else if args.no_limits {
        body["limits"] = Value::Null;
    }
    if let Some(budget) = args.limits.budget() {
        body["budget"] = budget;
    } else if args.no_budget {
        body["budget"] = Value::Null;
    }
    if args.fit_max_tokens || args.no_fit_max_tokens {
        body["fit_max_tokens"] = json!(args.fit_max_tokens);
    }
    match admin {
        Admin::Local(local) => {
            let patch: KeyPatch = body_as(&body)?;
            let key = local.keys.update(&local.caller, args.id, patch).await?;
            to_value(&KeyView::from(&key))
        }
        Admin::Remote(remote) => {
            remote
                .call(
                    Method::PATCH,
                    &format!("/admin/v1/keys/{}", args.id),
                    Some(&body),
                )
                .await
        }
    }
}

async fn rotate(admin: &Admin, id: Uuid, grace_seconds: u64) -> anyhow::Result<Value> {
    match admin {
        Admin::Local(local) => {
            let rotated = local.keys.rotate(&local.caller, id, grace_seconds).await?;
            to_value(&KeyWithSecretView::from(&rotated))
        }
        Admin::Remote(remote) => {
            remote
                .call(
                    Method::POST,
                    &format!("/admin/v1/keys/{id}/rotate"),
                    Some(&json!({ "grace_seconds": grace_seconds })),
                )
                .await
        }
    }
}

async fn revoke(admin: &Admin, id: Uuid) -> anyhow::Result<Value> {
    match admin {
        Admin::Local(local) => {
            let key = local.keys.revoke(&local.caller, id).await?;
            to_value(&KeyView::from(&key))
        }
        Admin::Remote(remote) => {
            // The API answers 204; the key as it was, marked revoked, is what the local
            // command prints.
            let mut key = remote
                .call(Method::GET, &format!("/admin/v1/keys/{id}"), None)
                .await?;
            remote
                .call(Method::DELETE, &format!("/admin/v1/keys/{id}"), None)
                .await?;
            key["status"] = json!("revoked");
            Ok(key)
        }
    }
}

async fn usage(admin: &Admin, id: Uuid, range: RangeRequest) -> anyhow::Result<Value> {
    match admin {
        Admin::Local(local) => {
            let key = local.keys.get(&local.caller, id).await?;
            let rows = local.usage.key_usage(key.id, range, Utc::now()).await?;
            to_value(&UsageAnswer {
                data: rows.into_iter().map(UsageBucket::from).collect(),
            })
        }
        Admin::Remote(remote) => {
            let mut path = format!("/admin/v1/keys/{id}/usage?");
            query_param(&mut path, "from", range.from.map(|t| t.to_rfc3339()));
            query_param(&mut path, "to", range.to.map(|t| t.to_rfc3339()));
            query_param(
                &mut path,
                "granularity",
                range.granularity.map(|g| match g {
                    Granularity::Minute => "minute",
                    Granularity::Hour => "hour",
                    Granularity::Day => "day",
                }),
            );
            query_param(&mut path, "model", range.model);
            remote
                .call(Method::GET, path.trim_end_matches('&'), None)
                .await
        }
    }
}

fn print_usage(answer: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_line(&serde_json::to_string(answer)?);
    }
    for row in answer["data"].as_array().into_iter().flatten() {
        print_line(&format!(
            "{}  {:<24}  requests {:>8}  input {:>10}  output {:>10}  cost_usd {}",
            row["start"].as_str().unwrap_or_default(),
            row["model"].as_str().unwrap_or_default(),
            row["requests"],
            row["input_tokens"],
            row["output_tokens"],
            row["cost_usd"],
        ))?;
    }
    Ok(())
}
