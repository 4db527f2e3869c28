//! Helpers for the admin API and the store behind it: requests carrying the bootstrap
//! admin key (or another), keys and workspaces created as an admin, audit events.

use std::str::FromStr;

use keygate::{
    keys::{input::NewKey, Caller, CallerRole, KeyKind},
    store::{AuditEvent, Page, Workspace},
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use super::TestApp;
use crate::support::http::{id_of, json_body, json_of, secret_of};

impl TestApp {
    /// A request carrying the bootstrap admin key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_as(&self.admin_key, method, path)
    }

    /// A request carrying `key` as `Authorization: Bearer`.
    pub fn req_as(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// A request without any key.
    pub fn req_anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("GET")
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.req_as(key, Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.expect("DELETE")
    }

    /// Sends `body` as is, with `Content-Type: application/json`.
    pub async fn send_raw(&self, method: Method, path: &str, body: &str) -> Response {
        self.req(method, path)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Creates a key as the bootstrap admin; panics unless the answer is 201.
    pub async fn create_key(&self, body: &Value) -> Value {
        let response = self.post_json("/admin/v1/keys", body).await;
        let (status, json) = json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "create {body}: {json}");
        json
    }

    /// An inference key named `name`: (id, secret).
    pub async fn create_inference_key(&self, name: &str) -> (String, String) {
        let key = self.create_key(&json!({ "name": name })).await;
        (id_of(&key), secret_of(&key))
    }

    /// An admin key named `name`: (id, secret).
    pub async fn create_admin_key(&self, name: &str) -> (String, String) {
        let key = self
            .create_key(&json!({ "name": name, "kind": "admin" }))
            .await;
        (id_of(&key), secret_of(&key))
    }

    pub async fn rotate(&self, id: &str, body: Option<&Value>) -> Response {
        let mut request = self.req(Method::POST, &format!("/admin/v1/keys/{id}/rotate"));
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("rotate")
    }

    /// Status of `GET /admin/v1/keys` with `key`: tells whether an admin key is accepted.
    pub async fn admin_status_of(&self, key: &str) -> StatusCode {
        self.get_as(key, "/admin/v1/keys?limit=1").await.status()
    }

    /// A new workspace (straight through the store) with an admin key in it.
    /// Returns (workspace id, admin key id, admin secret).
    pub async fn create_workspace_with_admin(
        &self,
        name: &str,
        key_cap: Option<i64>,
    ) -> (Uuid, Uuid, String) {
        let now = keygate::clock::now();
        let workspace = Workspace {
            id: Uuid::now_v7(),
            name: name.to_string(),
            key_cap,
            credits_usd: None,
            webhook_url: None,
            webhook_secret: None,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEvent {
            id: Uuid::now_v7(),
            workspace_id: workspace.id,
            actor: "test".into(),
            action: "workspace.create".into(),
            target: format!("workspace:{}", workspace.id),
            at: now,
            source: None,
            details: json!({}),
        };
        self.store()
            .create_workspace(&workspace, &audit)
            .await
            .expect("create workspace");
        let caller = Caller {
            workspace_id: workspace.id,
            actor: "test".into(),
            source: None,
            role: CallerRole::Admin,
            reach: keygate::keys::Reach::Own,
        };
        let created = self
            .state
            .keys
            .create(
                &caller,
                NewKey {
                    name: format!("{name} admin"),
                    kind: Some(KeyKind::Admin),
                    ..NewKey::default()
                },
            )
            .await
            .expect("create the workspace's admin key");
        (
            workspace.id,
            created.key.id,
            created.secret.expose().to_string(),
        )
    }

    /// Every audit event of a workspace, newest first.
    pub async fn audit_events(&self, workspace_id: Uuid) -> Vec<AuditEvent> {
        self.store()
            .list_audit_events(
                workspace_id,
                Page {
                    page: 1,
                    limit: 500,
                },
            )
            .await
            .expect("list audit events")
            .items
    }

    /// `GET /admin/v1/keys/{id}`.
    pub async fn admin_get_key(&self, id: &str) -> Value {
        let (status, key) = self.admin_get(&format!("/admin/v1/keys/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        key
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .expect("admin GET");
        json_body(response).await
    }

    pub async fn admin_delete(&self, path: &str) -> StatusCode {
        self.client
            .delete(self.url(path))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .expect("admin DELETE")
            .status()
    }

    /// Sets the default workspace's credit balance straight in the store.
    pub async fn set_workspace_credits(&self, credits_usd: Option<&str>) {
        let store = &self.state.store;
        let mut workspace: Workspace = store.get_workspace(self.workspace_id).await.unwrap();
        workspace.credits_usd = credits_usd.map(|c| Decimal::from_str(c).unwrap());
        workspace.updated_at = keygate::clock::now();
        let audit = AuditEvent {
            id: Uuid::now_v7(),
            workspace_id: workspace.id,
            actor: "test".into(),
            action: "workspace.update".into(),
            target: format!("workspace:{}", workspace.id),
            at: keygate::clock::now(),
            source: None,
            details: json!({}),
        };
        store.update_workspace(&workspace, &audit).await.unwrap();
    }

    /// `GET /admin/v1/rate-limit-events` with a query string (without `?`).
    pub async fn rate_limit_events(&self, query: &str) -> Value {
        let (status, body) = self
            .admin_get(&format!("/admin/v1/rate-limit-events?{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}
