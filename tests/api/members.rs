//! `/admin/v1/workspaces/{id}/members…` through HTTP (issue 15 §1): add (password ≥ 12
//! characters, argon2id), list (never a hash), change role or password, remove; the last
//! owner stays; the console's password check (`MembersService::sign_in`) and its audit.

use keygate::store::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    helpers::{assert_error, both_backends, id_of, json_of, spawn_app, Backend, TestApp},
    workspaces::{admin_key_in, create_workspace},
};

both_backends!(
    members_are_added_listed_changed_and_removed,
    bad_members_are_refused_with_the_field_named,
    the_last_owner_cannot_be_removed_or_demoted,
    a_workspace_admin_key_manages_members_but_not_owners,
    sign_in_checks_the_password_and_audits_both_outcomes,
);

async fn workspace(app: &TestApp) -> String {
    id_of(&create_workspace(app, &json!({ "name": "team" })).await)
}

async fn add(app: &TestApp, ws: &str, username: &str, role: &str) -> Value {
    let (status, member) = json_of(
        app.post_json(
            &format!("/admin/v1/workspaces/{ws}/members"),
            &json!({ "username": username, "role": role, "password": "a long password" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{member}");
    member
}

async fn members_are_added_listed_changed_and_removed(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = workspace(&app).await;
    let base = format!("/admin/v1/workspaces/{ws}/members");

    // Act
    let alice = add(&app, &ws, "Alice@Example.com", "owner").await;
    add(&app, &ws, "bob", "member").await;

    // Assert: stored lower-case, never a hash or a password.
    assert_eq!(alice["username"], "alice@example.com");
    assert_eq!(alice["role"], "owner");
    assert_eq!(alice["workspace_id"], ws.as_str());
    let (status, list) = json_of(app.get(&base).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    assert_eq!(list["data"][1]["username"], "bob");
    let text = list.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("a long password"),
        "{text}"
    );
    let stored = app
        .store()
        .find_member(ws.parse().unwrap(), "alice@example.com")
        .await
        .unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"));
    let (_, page) = json_of(app.get(&format!("{base}?limit=1&page=2")).await).await;
    assert_eq!(page["data"][0]["username"], "bob");
    assert_eq!(page["total"], 2);

    // Change a role (any case in the path) and a password.
    let (status, bob) = json_of(
        app.patch_json(&format!("{base}/BOB"), &json!({ "role": "admin" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bob}");
    assert_eq!(bob["role"], "admin");
    let before = app
        .store()
        .find_member(ws.parse().unwrap(), "bob")
        .await
        .unwrap();
    let (status, _) = json_of(
        app.patch_json(
            &format!("{base}/bob"),
            &json!({ "password": "a brand new password" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let after = app
        .store()
        .find_member(ws.parse().unwrap(), "bob")
        .await
        .unwrap();
    assert_ne!(before.password_hash, after.password_hash);
    assert_eq!(after.role, Role::Admin);

    // Remove.
    assert_eq!(
        app.delete(&format!("{base}/bob")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        app.delete(&format!("{base}/bob")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let (_, list) = json_of(app.get(&base).await).await;
    assert_eq!(list["total"], 1);
}

async fn bad_members_are_refused_with_the_field_named(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = workspace(&app).await;
    let base = format!("/admin/v1/workspaces/{ws}/members");
    add(&app, &ws, "alice", "owner").await;

    // Act + Assert
    for (body, status, code, field) in [
        (
            json!({ "username": "carol", "role": "member", "password": "short" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("password"),
        ),
        (
            json!({ "username": "no spaces", "role": "member", "password": "long enough pw" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("username"),
        ),
        (
            json!({ "username": "carol", "role": "root", "password": "long enough pw" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("role"),
        ),
        (
            json!({ "username": "carol", "role": "member" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            None,
        ),
        (
            json!({ "username": "ALICE", "role": "member", "password": "long enough pw" }),
            StatusCode::CONFLICT,
            "username_taken",
            None,
        ),
    ] {
        assert_error(app.post_json(&base, &body).await, status, code, field).await;
    }
    assert_error(
        app.patch_json(&format!("{base}/alice"), &json!({ "password": "short" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("password"),
    )
    .await;
    assert_error(
        app.patch_json(&format!("{base}/nobody"), &json!({ "role": "member" }))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let (_, list) = json_of(app.get(&base).await).await;
    assert_eq!(list["total"], 1, "nothing refused was stored: {list}");
}

async fn the_last_owner_cannot_be_removed_or_demoted(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = workspace(&app).await;
    let base = format!("/admin/v1/workspaces/{ws}/members");
    add(&app, &ws, "alice", "owner").await;

    // Act + Assert
    assert_error(
        app.delete(&format!("{base}/alice")).await,
        StatusCode::CONFLICT,
        "last_owner",
        None,
    )
    .await;
    assert_error(
        app.patch_json(&format!("{base}/alice"), &json!({ "role": "admin" }))
            .await,
        StatusCode::CONFLICT,
        "last_owner",
        None,
    )
    .await;
    // With a second owner it works.
    add(&app, &ws, "bob", "owner").await;
    let (status, alice) = json_of(
        app.patch_json(&format!("{base}/alice"), &json!({ "role": "member" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{alice}");
    assert_error(
        app.delete(&format!("{base}/bob")).await,
        StatusCode::CONFLICT,
        "last_owner",
        None,
    )
    .await;
}

async fn a_workspace_admin_key_manages_members_but_not_owners(backend: Backend) {
    // Arrange: an admin key of the workspace acts as its admin.
    let app = spawn_app(backend).await;
    let ws = workspace(&app).await;
    add(&app, &ws, "owen", "owner").await;
    let (_, admin) = admin_key_in(&app, &ws).await;
    let base = format!("/admin/v1/workspaces/{ws}/members");
    let send = |method: Method, path: String, body: Value| {
        let app = &app;
        let admin = &admin;
        async move {
            let mut request = app.req_as(admin, method, &path);
            if !body.is_null() {
                request = request.json(&body);
            }
            request.send().await.unwrap()
        }
    };

    // Act + Assert: members and admins, yes.
    let added = send(
        Method::POST,
        base.clone(),
        json!({ "username": "mia", "role": "member", "password": "long enough pw" }),
    )
    .await;
    assert_eq!(added.status(), StatusCode::CREATED);
    let promoted = send(
        Method::PATCH,
        format!("{base}/mia"),
        json!({ "role": "admin" }),
    )
    .await;
    assert_eq!(promoted.status(), StatusCode::OK);
    assert_eq!(
        send(Method::GET, base.clone(), Value::Null).await.status(),
        StatusCode::OK
    );

    // Owners, no: adding one, making one, changing or removing one.
    for (method, path, body) in [
        (
            Method::POST,
            base.clone(),
            json!({ "username": "boss", "role": "owner", "password": "long enough pw" }),
        ),
        (
            Method::PATCH,
            format!("{base}/mia"),
            json!({ "role": "owner" }),
        ),
        (
            Method::PATCH,
            format!("{base}/owen"),
            json!({ "password": "hijacked password" }),
        ),
        (Method::DELETE, format!("{base}/owen"), Value::Null),
    ] {
        let response = send(method, path, body).await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
    assert_eq!(
        send(Method::DELETE, format!("{base}/mia"), Value::Null)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
}

async fn sign_in_checks_the_password_and_audits_both_outcomes(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = workspace(&app).await;
    add(&app, &ws, "alice", "admin").await;
    let ws_id = ws.parse().unwrap();
    let members = &app.state.members;

    // Act
    let good = members
        .sign_in(ws_id, "ALICE", "a long password", Some("10.0.0.1".into()))
        .await
        .unwrap();
    let wrong = members
        .sign_in(ws_id, "alice", "a wrong password", Some("10.0.0.2".into()))
        .await
        .unwrap();
    let unknown = members
        .sign_in(ws_id, "mallory", "a long password", None)
        .await
        .unwrap();

    // Assert
    let signed_in = good.expect("the right password signs in");
    assert_eq!(signed_in.member.username, "alice");
    assert_eq!(signed_in.audit.action, "member.sign_in");
    assert_eq!(signed_in.audit.actor, "member:alice");
    assert!(wrong.is_none() && unknown.is_none());
    let events = app.audit_events(ws_id).await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "member.sign_in_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{events:?}");
    assert_eq!(failed[1].target, "member:alice");
    assert_eq!(failed[1].source.as_deref(), Some("10.0.0.2"));
    assert_eq!(failed[0].target, "member:mallory");
    let text = format!("{events:?}");
    assert!(!text.contains("a wrong password") && !text.contains("a long password"));
}
