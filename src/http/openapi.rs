//! `/openapi.json`, generated from the handlers and types, and `/docs`, a browsable
//! reference whose assets are compiled into the binary (utoipa-swagger-ui's `vendored`
//! feature), so it works on machines without internet.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, inference, me, metrics, ops};

mod constraints;
mod layers;

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "Self-hosted API-key gateway for LLM inference"),
    paths(
        ops::healthz,
        ops::readyz,
        metrics::scrape,
        admin::keys::create_key,
        admin::keys::list_keys,
        admin::keys::get_key,
        admin::keys::update_key,
        admin::keys::delete_key,
        admin::keys::rotate_key,
        admin::usage::key_usage,
        admin::usage::rate_limit_events,
        admin::workspaces::create_workspace,
        admin::workspaces::list_workspaces,
        admin::workspaces::get_workspace,
        admin::workspaces::update_workspace,
        admin::workspaces::delete_workspace,
        admin::members::add_member,
        admin::members::list_members,
        admin::members::update_member,
        admin::members::remove_member,
        admin::audit::list_audit_events,
        inference::chat_completions,
        inference::completions,
        inference::embeddings,
        inference::messages,
        inference::count_tokens,
        inference::list_models,
        inference::passthrough,
        me::key_info,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "keys", description = "Create, list, change, rotate and revoke API keys (admin keys only)"),
        (name = "usage", description = "Usage per key and model, and the log of refused requests"),
        (name = "workspaces", description = "Workspaces, their members and the audit log. An admin key of the `default` workspace (the operator) manages every workspace; any other admin key acts as an admin of its own workspace and gets 404 outside it"),
        (name = "inference", description = "OpenAI-compatible inference, Anthropic's Messages API, the model list and key self-service"),
        (name = "ops", description = "Health, readiness and Prometheus metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kg_…")
                    .build(),
            ),
        );
    }
}

/// The whole document as served: the native API plus the compatibility surfaces, with the
/// answers the layers give before any handler runs and the limits the server enforces.
/// JSON rather than utoipa's typed tree: the constraints are written on it as JSON, and
/// utoipa's types do not read every keyword back.
pub fn document() -> serde_json::Value {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::compat::venice::VeniceApi::openapi());
    doc.merge(super::compat::aixplain::AixplainApi::openapi());
    layers::add_layer_answers(&mut doc);
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    constraints::add_constraints(&mut json);
    json
}

pub fn docs() -> SwaggerUi {
    SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", document())
}
