//! What the workspace imposes: isolation between workspaces, the key cap, the audit trail
//! naming the acting key.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, id_of, json_of, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        workspaces_are_isolated,
        key_cap_refuses_the_key_past_the_cap,
        admin_actions_are_audited_with_the_acting_key,
    ],
}

async fn workspaces_are_isolated(backend: Backend) {
    // Arrange: a key in the default workspace; another workspace with its own admin.
    let app = spawn_app(backend).await;
    let (mine, _) = app.create_inference_key("default's key").await;
    let (other_ws, other_admin_id, other_admin) =
        app.create_workspace_with_admin("other", None).await;
    let path = format!("/admin/v1/keys/{mine}");

    // Act + Assert: the other admin sees only its own workspace.
    let (status, list) = json_of(app.get_as(&other_admin, "/admin/v1/keys").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["id"], other_admin_id.to_string());
    assert_eq!(list["data"][0]["workspace_id"], other_ws.to_string());
    assert!(!list.to_string().contains(&mine));

    let other = |method: Method, path: &str| app.req_as(&other_admin, method, path);
    for response in [
        other(Method::GET, &path).send().await.unwrap(),
        other(Method::PATCH, &path)
            .json(&json!({ "name": "hijacked" }))
            .send()
            .await
            .unwrap(),
        other(Method::POST, &format!("{path}/rotate"))
            .send()
            .await
            .unwrap(),
        other(Method::DELETE, &path).send().await.unwrap(),
    ] {
        assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    }

    // Keys it creates land in its workspace. The default workspace's admin keys are the
    // operator's and see every workspace (issue 15), so the bootstrap key finds it.
    let (status, created) = json_of(
        other(Method::POST, "/admin/v1/keys")
            .json(&json!({ "name": "theirs" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["workspace_id"], other_ws.to_string());
    assert_eq!(created["created_by"], format!("key:{other_admin_id}"));
    let (status, seen) = json_of(
        app.get(&format!("/admin/v1/keys/{}", id_of(&created)))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["workspace_id"], other_ws.to_string());

    // The default workspace's key is untouched.
    let (status, key) = json_of(app.get(&path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key["name"], "default's key");
    assert_eq!(key["status"], "active");
    let (_, list) = json_of(app.get("/admin/v1/keys").await).await;
    assert_eq!(list["total"], 2, "{list}");
}

async fn key_cap_refuses_the_key_past_the_cap(backend: Backend) {
    // Arrange: a workspace capped at 2 live keys; its admin key is the first.
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    let create = |name: &str| {
        app.req_as(&admin, Method::POST, "/admin/v1/keys")
            .json(&json!({ "name": name }))
            .send()
    };

    // Act
    let second = create("second").await.unwrap();
    let third = create("third").await.unwrap();

    // Assert
    let (status, second) = json_of(second).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let error = assert_error(third, StatusCode::CONFLICT, "key_cap_reached", None).await;
    assert!(
        error["message"].as_str().unwrap().contains('2'),
        "the message names the cap: {error}"
    );

    // Revoked keys do not count: deleting one makes room again.
    let deleted = app
        .req_as(
            &admin,
            Method::DELETE,
            &format!("/admin/v1/keys/{}", id_of(&second)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(create("again").await.unwrap().status(), StatusCode::CREATED);
}

async fn admin_actions_are_audited_with_the_acting_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let (id, secret) = app.create_inference_key("audited").await;
    let path = format!("/admin/v1/keys/{id}");

    // Act
    assert_eq!(
        app.patch_json(&path, &json!({ "name": "audited 2" }))
            .await
            .status(),
        StatusCode::OK
    );
    let (_, rotated) = json_of(app.rotate(&id, Some(&json!({ "grace_seconds": 60 }))).await).await;
    assert_eq!(app.delete(&path).await.status(), StatusCode::NO_CONTENT);

    // Assert
    let events = app.audit_events(app.workspace_id).await;
    let target = format!("key:{id}");
    let actions: Vec<&str> = events
        .iter()
        .rev()
        .filter(|e| e.target == target)
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        ["key.create", "key.update", "key.rotate", "key.revoke"],
        "{events:?}"
    );
    for event in events.iter().filter(|e| e.target == target) {
        assert_eq!(
            event.actor,
            format!("key:{}", app.admin_key_id),
            "{event:?}"
        );
        assert_eq!(event.workspace_id, app.workspace_id);
        assert_eq!(event.source.as_deref(), Some("127.0.0.1"), "{event:?}");
        let details = event.details.to_string();
        assert!(!details.contains(&secret) && !details.contains(&secret_of(&rotated)));
    }
}
