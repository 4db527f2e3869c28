//! Which models exist for a key (`GET /v1/models`): the models the configuration names,
//! plus those wildcard (`*`) upstreams list at their own `/models`, cached for a minute,
//! less what the key's `allowed_models` excludes.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Deserialize;
use tokio::time::Instant;

use super::{forward, headers::RequestHeaders, model_allowed, upstreams::Upstream, Gateway};
use crate::keys::ApiKey;

/// How long a wildcard upstream's own model list is reused.
const MODEL_LIST_TTL: Duration = Duration::from_secs(60);

impl Gateway {
    /// The models `key` may use, with the upstream serving each: models named in the
    /// config, plus what wildcard (`*`) upstreams list at their `/models`.
    pub async fn models_for(&self, key: &ApiKey) -> Vec<(String, String)> {
        let mut models: Vec<(String, String)> = Vec::new();
        let push = |id: &str, owner: &str, models: &mut Vec<(String, String)>| {
            if model_allowed(key, id) && !models.iter().any(|(m, _)| m == id) {
                models.push((id.to_string(), owner.to_string()));
            }
        };
        for upstream in self.upstreams.all() {
            for model in upstream.named_models() {
                push(model, &upstream.name, &mut models);
            }
            if upstream.serves_any() {
                for model in self.upstream_models(upstream).await {
                    push(&model, &upstream.name, &mut models);
                }
                // Allowed models routed to this wildcard upstream exist even if it doesn't list them.
                for model in key.allowed_models.iter().flatten() {
                    if self
                        .upstreams
                        .first_for_model(model)
                        .is_some_and(|u| u.name == upstream.name)
                    {
                        push(model, &upstream.name, &mut models);
                    }
                }
            }
        }
        models
    }

    async fn upstream_models(&self, upstream: &Upstream) -> Vec<String> {
        {
            let cache = self.model_lists.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((models, at)) = cache.get(&upstream.name) {
                if at.elapsed() < MODEL_LIST_TTL {
                    return models.clone();
                }
            }
        }
        let models = match self.fetch_models(upstream).await {
            Ok(list) => list.data.into_iter().map(|m| m.id).collect(),
            Err(err) => {
                tracing::warn!(upstream = %upstream.name, error = %err, "upstream model list unavailable");
                Vec::new()
            }
        };
        let mut cache = self.model_lists.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            upstream.name.clone(),
            (models.clone(), std::time::Instant::now()),
        );
        models
    }

    async fn fetch_models(&self, upstream: &Upstream) -> Result<ModelList, String> {
        let request = self.build_request(
            upstream,
            &Method::GET,
            "/models",
            None,
            &RequestHeaders::Map(HeaderMap::new()),
            "",
        )?;
        let deadline = Instant::now() + self.timeouts.first_byte;
        let response = tokio::time::timeout(self.timeouts.first_byte, request.send(Bytes::new()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|err| err.to_string())?;
        if !response.status.is_success() {
            return Err(format!("answered {}", response.status));
        }
        let bytes = forward::read_whole(response, deadline, self.timeouts.first_byte, "")
            .await
            .map_err(|err| err.to_string())?;
        serde_json::from_slice(&bytes).map_err(|err| format!("unreadable: {err}"))
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}
