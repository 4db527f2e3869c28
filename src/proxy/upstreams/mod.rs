//! The upstream table from config: which upstreams serve a model (`select`: in tiers by
//! priority, spread by weight) or a pass-through path, with what credential, model names
//! and health (`health`: a breaker each), and where each is (with its own pool of
//! connections), plus the one HTTP client that sends to all of them.

mod health;
mod path;
mod select;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use http::{HeaderValue, Uri};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

pub use self::{
    health::{Breaker, BreakerState, FailureCause, Pass, MAX_RETRY_AFTER},
    select::Candidates,
};
use self::{path::PathRefusal, select::Route};
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
    /// The client's model name → this upstream's.
    model_mapping: BTreeMap<String, String>,
    /// Passive health: whether requests are sent here now.
    pub breaker: Breaker,
}

impl Upstream {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model) || self.model_mapping.contains_key(model)
    }

    /// This upstream's name for the client's `model`, when its `model_mapping` renames it.
    pub fn mapped_model(&self, model: &str) -> Option<&str> {
        self.model_mapping.get(model).map(String::as_str)
    }

    pub fn serves_any(&self) -> bool {
        self.models.iter().any(|m| m == "*")
    }

    /// Models named exactly in the config (not `*`), the mapped ones included.
    pub fn named_models(&self) -> impl Iterator<Item = &str> {
        let mapped = self
            .model_mapping
            .keys()
            .filter(|m| !self.models.contains(m));
        self.models
            .iter()
            .filter(|m| *m != "*")
            .chain(mapped)
            .map(String::as_str)
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
    #[error("upstreams[{index}].ca_file: {reason}")]
    CaFile { index: usize, reason: String },
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

pub struct Upstreams {
    list: Vec<Upstream>,
    /// The candidates of every model some upstream names exactly (the `*` upstreams
    /// included, in their tier).
    named: HashMap<String, Route>,
    /// The candidates of any other model: the `*` upstreams.
    wildcard: Option<Route>,
    /// One route per upstream, for pass-through paths (no fallback: see
    /// docs/decisions.md).
    alone: Vec<Route>,
    pub client: UpstreamClient,
}

/// One upstream's health, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UpstreamHealth {
    pub name: String,
    /// `closed` (in use), `open` (skipped while cooling down) or `half_open` (the next
    /// request is a probe).
    pub state: &'static str,
    /// Failures in a row since its last success.
    pub consecutive_failures: u32,
    /// Seconds of cool-down left, when open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_remaining_secs: Option<f64>,
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
            let mut target = UpstreamTarget::new(&base_uri)
                .map_err(|source| UpstreamConfigError::Target { index, source })?;
            if let Some(path) = &upstream.ca_file {
                let roots = read_ca_file(path)
                    .map_err(|reason| UpstreamConfigError::CaFile { index, reason })?;
                target
                    .trust(&roots)
                    .map_err(|err| UpstreamConfigError::CaFile {
                        index,
                        reason: format!("`{}`: {err}", path.display()),
                    })?;
            }
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
                model_mapping: upstream.model_mapping.clone(),
                breaker: Breaker::new(
                    &upstream.name,
                    config.proxy.breaker_failures,
                    Duration::from_secs_f64(config.proxy.breaker_cooldown_secs),
                ),
            });
        }
        // A candidate's tier: its priority, then named before `*` (select.rs).
        let upstreams = &config.upstreams;
        let candidate = |index: usize, by_name: bool| {
            let upstream = &upstreams[index];
            (index, (upstream.priority, !by_name), upstream.weight)
        };
        let by_name = |index: usize, model: &str| {
            let upstream = &upstreams[index];
            upstream.models.iter().any(|m| m == model) || upstream.model_mapping.contains_key(model)
        };
        let wildcards: Vec<usize> = (0..upstreams.len())
            .filter(|&index| upstreams[index].models.iter().any(|m| m == "*"))
            .collect();
        let names: BTreeSet<&String> = upstreams
            .iter()
            .flat_map(|u| u.models.iter().chain(u.model_mapping.keys()))
            .filter(|m| *m != "*")
            .collect();
        let named = names
            .into_iter()
            .map(|model| {
                let candidates = (0..upstreams.len())
                    .filter_map(|index| {
                        if by_name(index, model) {
                            Some(candidate(index, true))
                        } else {
                            wildcards.contains(&index).then(|| candidate(index, false))
                        }
                    })
                    .collect();
                (model.clone(), Route::new(candidates))
            })
            .collect();
        let wildcard = (!wildcards.is_empty())
            .then(|| Route::new(wildcards.iter().map(|&i| candidate(i, false)).collect()));
        let alone = (0..list.len())
            .map(|i| Route::new(vec![(i, (0, false), 1)]))
            .collect();
        Ok(Upstreams {
            list,
            named,
            wildcard,
            alone,
            client: UpstreamClient::new(&config.proxy)?,
        })
    }

    /// The candidates for `model`, best first (`select`); `None`: no upstream serves it.
    pub fn for_model(&self, model: &str) -> Option<Candidates<'_>> {
        self.named
            .get(model)
            .or(self.wildcard.as_ref())
            .map(|route| Candidates::new(&self.list, route))
    }

    /// The upstream a model's first request would go to when all are healthy (the model
    /// list names it as the model's owner).
    pub fn first_for_model(&self, model: &str) -> Option<&Upstream> {
        self.named
            .get(model)
            .or(self.wildcard.as_ref())
            .and_then(|route| route.members().next())
            .map(|index| &self.list[index])
    }

    /// Every upstream's breaker state, in configuration order.
    pub fn health(&self) -> Vec<UpstreamHealth> {
        let now = Instant::now();
        self.list
            .iter()
            .map(|upstream| {
                let (state, failures, left) = upstream.breaker.state(now);
                UpstreamHealth {
                    name: upstream.name.clone(),
                    state: state.as_str(),
                    consecutive_failures: failures,
                    cooldown_remaining_secs: left.map(|left| left.as_secs_f64()),
                }
            })
            .collect()
    }

    /// The first upstream declaring `path` (after `/v1`, as received) for pass-through,
    /// and the path to forward to it: `path` normalised, so that no upstream can resolve
    /// it to somewhere outside what it declared.
    pub fn for_path(&self, path: &str) -> Result<(Candidates<'_>, String), InferenceError> {
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
        match self.list.iter().position(|u| u.declares(&normal)) {
            Some(index) => Ok((Candidates::new(&self.list, &self.alone[index]), normal)),
            None => Err(InferenceError::PathNotFound(format!("/v1{normal}"))),
        }
    }

    pub fn all(&self) -> &[Upstream] {
        &self.list
    }
}

/// The certificates of a PEM file, at least one.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let roots = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read `{shown}`: {err}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("`{shown}` is not a PEM certificate file: {err}"))?;
    if roots.is_empty() {
        return Err(format!("`{shown}` holds no PEM certificate"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn with_passthrough(passthrough: &[&str]) -> Config {
        Config {
            upstreams: vec![UpstreamConfig {
                passthrough: passthrough.iter().map(|p| p.to_string()).collect(),
                ..UpstreamConfig::new("u", "http://127.0.0.1:9/v1", &["*"])
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

    fn with_ca_file(path: &std::path::Path) -> Config {
        Config {
            upstreams: vec![UpstreamConfig {
                ca_file: Some(path.to_owned()),
                ..UpstreamConfig::new("u", "https://localhost:9/v1", &["*"])
            }],
            ..Config::default()
        }
    }

    #[test]
    fn a_ca_file_is_read_and_a_bad_one_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&good, certified.cert.pem()).unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");

        assert!(Upstreams::from_config(&with_ca_file(&good)).is_ok());
        for (path, says) in [
            (&empty, "holds no PEM certificate"),
            (&missing, "cannot read"),
        ] {
            let err = Upstreams::from_config(&with_ca_file(path))
                .err()
                .unwrap()
                .to_string();
            assert!(err.starts_with("upstreams[0].ca_file: "), "{err}");
            assert!(
                err.contains(says) && err.contains(&*path.to_string_lossy()),
                "{err}"
            );
        }
    }
}
