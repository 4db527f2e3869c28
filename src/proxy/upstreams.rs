//! The upstream table from config: which upstream serves a model or a pass-through path,
//! with what credential, and where it is (with its own pool of connections), plus the
//! one HTTP client that sends to all of them.

mod path;

use http::{HeaderValue, Uri};
use secrecy::{ExposeSecret, SecretString};

use self::path::PathRefusal;
use super::{
    client::{ClientBuildError, TargetError, UpstreamClient, UpstreamTarget},
    InferenceError,
};
use crate::config::Config;

pub struct Upstream {
    pub name: String,
    /// From the configured `base_url` (e.g. `https://api.openai.com/v1`): where to connect,
    /// the path prefix a request's path is appended to, and the idle connections.
    pub target: UpstreamTarget,
    /// `Bearer <credential>`, built once and marked sensitive (never logged).
    authorization: Option<HeaderValue>,
    models: Vec<String>,
    /// Extra paths (after `/v1`) this upstream declares for pass-through, e.g.
    /// `/moderations`, normalised (`path::normalize`).
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

    /// Whether the normalised `path` is a declared path or below one.
    pub fn declares(&self, path: &str) -> bool {
        self.passthrough
            .iter()
            .any(|declared| path::is_within(path, declared))
    }

    /// `Bearer <credential>` for the upstream, if it has one.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstreams[{index}].api_key_env: environment variable `{var}` is not set")]
    MissingCredential { index: usize, var: String },
    #[error("upstreams[{index}].base_url: not a usable URL")]
    BaseUrl { index: usize },
    #[error("upstreams[{index}].base_url: {source}")]
    Target { index: usize, source: TargetError },
    #[error(
        "upstreams[{index}].api_key_env: the credential in `{var}` is not a valid header value"
    )]
    BadCredential { index: usize, var: String },
    #[error("upstreams[{index}].passthrough: `{path}` is not a usable path")]
    Passthrough { index: usize, path: String },
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

pub struct Upstreams {
    list: Vec<Upstream>,
    pub client: UpstreamClient,
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
            let authorization = match credential {
                Some(secret) => {
                    let bearer = format!("Bearer {}", secret.expose_secret());
                    let mut value = HeaderValue::from_str(&bearer).map_err(|_| {
                        UpstreamConfigError::BadCredential {
                            index,
                            var: upstream.api_key_env.clone().unwrap_or_default(),
                        }
                    })?;
                    value.set_sensitive(true);
                    Some(value)
                }
                None => None,
            };
            // `url` normalises what it accepts (IDNA hosts, percent-encoding, default
            // ports), so its serialisation is always a valid `http::Uri`. A trailing slash
            // is dropped when a request's path is appended (`UpstreamClient::request`).
            let base_uri = url::Url::parse(&upstream.base_url)
                .ok()
                .and_then(|url| Uri::try_from(url.as_str()).ok())
                .ok_or(UpstreamConfigError::BaseUrl { index })?;
            let target = UpstreamTarget::new(&base_uri)
                .map_err(|source| UpstreamConfigError::Target { index, source })?;
            let passthrough = upstream
                .passthrough
                .iter()
                .map(|declared| {
                    path::normalize(&format!("/{}", declared.trim_matches('/'))).map_err(|_| {
                        UpstreamConfigError::Passthrough {
                            index,
                            path: declared.clone(),
                        }
                    })
                })
                .collect::<Result<_, _>>()?;
            list.push(Upstream {
                name: upstream.name.clone(),
                target,
                authorization,
                models: upstream.models.clone(),
                passthrough,
            });
        }
        Ok(Upstreams {
            list,
            client: UpstreamClient::new(&config.proxy)?,
        })
    }

    /// The first upstream listing `model` exactly, else the first with `*`.
    pub fn for_model(&self, model: &str) -> Option<&Upstream> {
        self.list
            .iter()
            .find(|u| u.models.iter().any(|m| m == model))
            .or_else(|| self.list.iter().find(|u| u.serves_any()))
    }

    /// The first upstream declaring `path` (after `/v1`, as received) for pass-through,
    /// and the path to forward to it: `path` normalised, so that no upstream can resolve
    /// it to somewhere outside what it declared.
    pub fn for_path(&self, path: &str) -> Result<(&Upstream, String), InferenceError> {
        let normal = path::normalize(path).map_err(|refusal| match refusal {
            PathRefusal::EncodedSeparator => InferenceError::InvalidRequest {
                message: "the path may not contain `\\` or an encoded `/` or `\\` (%2F, %5C)"
                    .into(),
                param: None,
            },
            PathRefusal::BadEncoding => InferenceError::InvalidRequest {
                message: "the path has a `%` that is not followed by two hex digits".into(),
                param: None,
            },
            PathRefusal::AboveRoot => InferenceError::PathNotFound(format!("/v1{path}")),
        })?;
        match self.list.iter().find(|u| u.declares(&normal)) {
            Some(upstream) => Ok((upstream, normal)),
            None => Err(InferenceError::PathNotFound(format!("/v1{normal}"))),
        }
    }

    pub fn all(&self) -> &[Upstream] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn with_passthrough(passthrough: &[&str]) -> Config {
        Config {
            upstreams: vec![UpstreamConfig {
                name: "u".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key_env: None,
                models: vec!["*".into()],
                passthrough: passthrough.iter().map(|p| p.to_string()).collect(),
            }],
            ..Config::default()
        }
    }

    #[test]
    fn declared_paths_are_normalised_and_matched_by_segment() {
        let upstreams = Upstreams::from_config(&with_passthrough(&["moderations/", "/a/./b"]))
            .unwrap_or_else(|err| panic!("{err}"));
        let path = |path: &str| upstreams.for_path(path).map(|(_, path)| path).ok();
        assert_eq!(path("/x/../moderations").as_deref(), Some("/moderations"));
        assert_eq!(path("/a/b/c").as_deref(), Some("/a/b/c"));
        assert_eq!(path("/moderationsX"), None);
        assert_eq!(path("/moderations/../files"), None);
    }

    #[test]
    fn a_declared_path_above_the_root_is_a_config_error() {
        let err = Upstreams::from_config(&with_passthrough(&["../files"])).err();
        assert!(
            matches!(err, Some(UpstreamConfigError::Passthrough { index: 0, .. })),
            "{err:?}"
        );
    }
}
