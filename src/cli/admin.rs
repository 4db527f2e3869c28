//! Where an admin command acts: on the configured store through the services (actor
//! `cli`, an owner of every workspace), or through a running server's API (`--url` and
//! `KEYGATE_ADMIN_KEY`, acting as that key).
//!
//! The remote side uses keygate's own HTTP/1.1 client (`proxy::client`, plain or rustls
//! TLS with the public roots) rather than adding reqwest: it is already in the binary
//! and the CLI sends a handful of small JSON requests (docs/decisions.md).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    app,
    config::{Config, ProxyConfig},
    keys::{Caller, KeysService},
    proxy::client::{UpstreamClient, UpstreamTarget},
    store::Page,
    usage::UsageReader,
    workspaces::{MembersService, WorkspacesService},
};

/// The environment variable holding the admin key for `--url`.
pub const ADMIN_KEY_ENV: &str = "KEYGATE_ADMIN_KEY";
/// A remote call gets this long for its whole answer.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Answers larger than this are refused (a page of 500 keys is well under).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

pub enum Admin {
    Local(Box<Local>),
    Remote(Remote),
}

/// The services on the configured store, acting as `cli`.
pub struct Local {
    pub caller: Caller,
    pub keys: KeysService,
    pub workspaces: WorkspacesService,
    pub members: MembersService,
    pub usage: UsageReader,
    /// Stops the (idle) usage writer the reader needs when the command ends.
    _stop: watch::Sender<bool>,
}

pub struct Remote {
    client: UpstreamClient,
    target: UpstreamTarget,
    key: String,
}

impl Admin {
    pub async fn connect(config: &Config, url: Option<&str>) -> anyhow::Result<Admin> {
        match url {
            Some(url) => Ok(Admin::Remote(Remote::new(url)?)),
            None => {
                let store = app::open_store(config).await?;
                let keys = app::keys_service(config, store.clone());
                let (workspaces, members) = app::workspace_services(config, &keys);
                let (stop, stop_rx) = watch::channel(false);
                let (recorder, _writer) =
                    crate::usage::spawn_writer(store.clone(), Duration::from_secs(1), stop_rx);
                Ok(Admin::Local(Box::new(Local {
                    caller: Caller::operator("cli"),
                    keys,
                    workspaces,
                    members,
                    usage: UsageReader::new(store, recorder),
                    _stop: stop,
                })))
            }
        }
    }

    /// A workspace named by id or by name.
    pub async fn workspace_id(&self, reference: &str) -> anyhow::Result<Uuid> {
        if let Ok(id) = Uuid::parse_str(reference) {
            return Ok(id);
        }
        let found = match self {
            Admin::Local(local) => local
                .keys
                .store()
                .find_workspace(reference)
                .await
                .ok()
                .map(|ws| ws.id),
            Admin::Remote(remote) => {
                let all = remote.all_pages("/admin/v1/workspaces?").await?;
                all.iter()
                    .find(|ws| ws["name"] == reference)
                    .and_then(|ws| ws["id"].as_str())
                    .and_then(|id| Uuid::parse_str(id).ok())
            }
        };
        found.ok_or_else(|| anyhow!("no workspace `{reference}`"))
    }
}

impl Remote {
    fn new(url: &str) -> anyhow::Result<Remote> {
        let key = std::env::var(ADMIN_KEY_ENV)
            .map_err(|_| anyhow!("--url needs an admin key in {ADMIN_KEY_ENV}"))?;
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url `{url}` is not a URL"))?;
        let target = UpstreamTarget::new(&uri)
            .map_err(|e| anyhow!("--url `{url}`: {e} (expected http://host:port)"))?;
        let client = UpstreamClient::new(&ProxyConfig::default())?;
        Ok(Remote {
            client,
            target,
            key,
        })
    }

    /// Sends one request; the answer's JSON (`Value::Null` for 204). A refusal becomes an
    /// error carrying the server's status, code and message.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        tokio::time::timeout(REMOTE_TIMEOUT, self.send(method, path_and_query, body))
            .await
            .map_err(|_| anyhow!("the server did not answer within {REMOTE_TIMEOUT:?}"))?
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let authorization = format!("Bearer {}", self.key);
        let mut request = self
            .client
            .request(&self.target, &method, path_and_query)?
            .header("authorization", authorization.as_bytes())
            .header("accept", b"application/json");
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", b"application/json");
                Bytes::from(serde_json::to_vec(body)?)
            }
            None => Bytes::new(),
        };
        let mut response = request.send(bytes).await?;
        let mut answer = Vec::new();
        while let Some(chunk) = response.body.chunk().await? {
            answer.extend_from_slice(&chunk);
            if answer.len() > MAX_ANSWER_BYTES {
                bail!("the server's answer is larger than {MAX_ANSWER_BYTES} bytes");
            }
        }
        let status = response.status;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let json: Value = serde_json::from_slice(&answer).with_context(|| {
            format!(
                "the server answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&answer)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        })?;
        if !status.is_success() {
            let error = &json["error"];
            let code = error["code"].as_str().unwrap_or("error");
            let message = error["message"].as_str().unwrap_or("(no message)");
            bail!("the server refused ({status}, {code}): {message}");
        }
        Ok(json)
    }

    /// Every item of a paginated list (`path` ends in `?` or `&`).
    pub async fn all_pages(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut page = 1u32;
        loop {
            let answer = self
                .call(Method::GET, &format!("{path}page={page}&limit=500"), None)
                .await?;
            let items = answer["data"].as_array().cloned().unwrap_or_default();
            let done = items.len() < 500;
            all.extend(items);
            if done {
                return Ok(all);
            }
            page += 1;
        }
    }
}

/// A request body as the service's input type, read exactly as the API reads it.
pub fn body_as<T: DeserializeOwned>(body: &Value) -> anyhow::Result<T> {
    serde_json::from_value(body.clone()).map_err(|e| anyhow!("{e}"))
}

pub fn to_value<T: Serialize>(view: &T) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(view)?)
}

/// Every page of a store list, 500 at a time.
pub async fn all_local<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(Page) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<crate::store::Paged<T>>>,
{
    let mut all = Vec::new();
    let mut page = Page {
        page: 1,
        limit: 500,
    };
    loop {
        let batch = fetch(page).await?;
        let done = batch.items.len() < page.limit as usize;
        all.extend(batch.items);
        if done {
            return Ok(all);
        }
        page.page += 1;
    }
}

/// Appends `name=value` (URL-encoded) to a query string when `value` is given.
pub fn query_param(query: &mut String, name: &str, value: Option<impl ToString>) {
    if let Some(value) = value {
        let value = value.to_string();
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        query.push_str(name);
        query.push('=');
        query.push_str(&encoded);
        query.push('&');
    }
}
