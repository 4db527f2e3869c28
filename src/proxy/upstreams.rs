//! The upstream table from config: which upstream serves a model, with what credential,
//! through one pooled HTTP client.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, ProxyConfig};

pub struct Upstream {
    pub name: String,
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    credential: Option<SecretString>,
    models: Vec<String>,
    /// Extra paths (after `/v1`) this upstream declares for pass-through, e.g. `/moderations`.
    pub passthrough: Vec<String>,
}

impl Upstream {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }

    pub fn serves_any(&self) -> bool {
        self.models.iter().any(|m| m == "*")
    }

    /// Models named exactly in the config (not `*`).
    pub fn named_models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(String::as_str).filter(|m| *m != "*")
    }

    pub fn declares(&self, path: &str) -> bool {
        self.passthrough.iter().any(|p| {
            path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// `Bearer <credential>` for the upstream, if it has one.
    pub fn authorization(&self) -> Option<String> {
        self.credential
            .as_ref()
            .map(|secret| format!("Bearer {}", secret.expose_secret()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstreams[{index}].api_key_env: environment variable `{var}` is not set")]
    MissingCredential { index: usize, var: String },
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct Upstreams {
    list: Vec<Upstream>,
    pub client: reqwest::Client,
}

impl Upstreams {
    pub fn from_config(config: &Config) -> Result<Upstreams, UpstreamConfigError> {
        let mut list = Vec::with_capacity(config.upstreams.len());
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let credential = match &upstream.api_key_env {
                Some(var) => match std::env::var(var) {
                    Ok(value) if !value.is_empty() => Some(SecretString::from(value)),
                    _ => {
                        return Err(UpstreamConfigError::MissingCredential {
                            index,
                            var: var.clone(),
                        })
                    }
                },
                None => None,
            };
            list.push(Upstream {
                name: upstream.name.clone(),
                base_url: upstream.base_url.trim_end_matches('/').to_string(),
                credential,
                models: upstream.models.clone(),
                passthrough: upstream
                    .passthrough
                    .iter()
                    .map(|p| format!("/{}", p.trim_matches('/')))
                    .collect(),
            });
        }
        Ok(Upstreams {
            list,
            client: client(&config.proxy)?,
        })
    }

    /// The first upstream listing `model` exactly, else the first with `*`.
    pub fn for_model(&self, model: &str) -> Option<&Upstream> {
        self.list
            .iter()
            .find(|u| u.models.iter().any(|m| m == model))
            .or_else(|| self.list.iter().find(|u| u.serves_any()))
    }

    /// The first upstream declaring `path` for pass-through.
    pub fn for_path(&self, path: &str) -> Option<&Upstream> {
        self.list.iter().find(|u| u.declares(path))
    }

    pub fn all(&self) -> &[Upstream] {
        &self.list
    }
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value)
}

fn client(config: &ProxyConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(secs(config.connect_timeout_secs))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        // Redirects would re-send the upstream credential to wherever they point.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}
