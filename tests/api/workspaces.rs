//! `/admin/v1/workspaces` and `/admin/v1/audit-events` through HTTP (issue 15 §1): create
//! with the default key cap, read with live keys and spend, change, delete (409 with live
//! keys; `default` stays), webhook URLs (validated; the signing secret shown once), scope
//! (an admin key of another workspace sees only its own, 404 outside it) and the audit log.

use chrono::DurationRound;
use keygate::store::UsageDelta;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_error, both_backends, id_of, json_of, secret_of, spawn_app, spawn_app_with, Backend,
    TestApp,
};

both_backends!(
    workspaces_are_created_read_changed_and_listed,
    new_workspaces_get_the_default_key_cap_and_it_holds,
    a_workspace_with_live_keys_is_not_deleted_and_default_never,
    webhook_urls_are_checked_and_the_secret_is_shown_once,
    private_webhooks_are_allowed_when_configured,
    another_workspaces_admin_key_sees_only_its_own,
    the_operator_names_workspaces_on_keys_events_and_audit,
    the_audit_log_filters_and_holds_no_secret,
);

/// Creates a workspace as the bootstrap admin; panics unless 201.
pub async fn create_workspace(app: &TestApp, body: &Value) -> Value {
    let (status, ws) = json_of(app.post_json("/admin/v1/workspaces", body).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}: {ws}");
    ws
}

/// An admin key in workspace `ws`, made by the operator: (id, secret).
pub async fn admin_key_in(app: &TestApp, ws: &str) -> (String, String) {
    let key = app
        .create_key(&json!({ "name": "ws admin", "kind": "admin", "workspace_id": ws }))
        .await;
    assert_eq!(key["workspace_id"], ws);
    (id_of(&key), secret_of(&key))
}

async fn workspaces_are_created_read_changed_and_listed(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let ws = create_workspace(
        &app,
        &json!({ "name": "  acme  ", "key_cap": 3, "credits_usd": 12.5 }),
    )
    .await;

    // Assert: as created, and as read.
    let id = id_of(&ws);
    assert_eq!(ws["name"], "acme");
    assert_eq!(ws["key_cap"], 3);
    assert_eq!(ws["credits_usd"].as_f64(), Some(12.5));
    assert_eq!(ws["webhook_url"], Value::Null);
    assert_eq!(ws["live_keys"], 0);
    assert!(ws.get("webhook_secret").is_none(), "{ws}");
    let path = format!("/admin/v1/workspaces/{id}");
    let (status, read) = json_of(app.get(&path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, ws);

    // Live keys and this month's spend.
    let key = app
        .create_key(&json!({ "name": "k", "workspace_id": id }))
        .await;
    let ws_id: Uuid = id.parse().unwrap();
    app.store()
        .add_usage(&[UsageDelta {
            key_id: id_of(&key).parse().unwrap(),
            workspace_id: ws_id,
            model: "m".into(),
            minute: keygate::clock::now()
                .duration_trunc(chrono::Duration::minutes(1))
                .unwrap(),
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_pico: 1_250_000_000_000,
        }])
        .await
        .unwrap();
    let (_, read) = json_of(app.get(&path).await).await;
    assert_eq!(read["live_keys"], 1);
    assert_eq!(read["spent_this_month_usd"].as_f64(), Some(1.25));

    // Change: absent fields stay, `null` clears.
    let (status, changed) = json_of(
        app.patch_json(&path, &json!({ "name": "acme corp", "key_cap": null }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["name"], "acme corp");
    assert_eq!(changed["key_cap"], Value::Null);
    assert_eq!(changed["credits_usd"].as_f64(), Some(12.5));

    // The list has both, oldest first, with page/limit/total.
    let (status, list) = json_of(app.get("/admin/v1/workspaces?limit=1").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    assert_eq!(list["limit"], 1);
    assert_eq!(list["data"][0]["name"], "default");
    let (_, list) = json_of(app.get("/admin/v1/workspaces?page=2&limit=1").await).await;
    assert_eq!(list["data"][0]["id"], id.as_str());

    // Bad input is named.
    for (body, field) in [
        (json!({ "name": "" }), "name"),
        (json!({ "name": "x", "key_cap": -1 }), "key_cap"),
        (json!({ "name": "x", "credits_usd": -5 }), "credits_usd"),
        (json!({ "name": "x", "colour": "red" }), "colour"),
    ] {
        let response = app.post_json("/admin/v1/workspaces", &body).await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        )
        .await;
    }
    let taken = app
        .post_json("/admin/v1/workspaces", &json!({ "name": "acme corp" }))
        .await;
    assert_error(taken, StatusCode::CONFLICT, "name_taken", None).await;
    assert_error(
        app.get("/admin/v1/workspaces/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        Some("id"),
    )
    .await;
    assert_error(
        app.get(&format!("/admin/v1/workspaces/{}", Uuid::now_v7()))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
}

async fn new_workspaces_get_the_default_key_cap_and_it_holds(backend: Backend) {
    // Arrange: `keys.default_workspace_key_cap` is 10 unless configured.
    let app = spawn_app(backend).await;
    let ws = create_workspace(&app, &json!({ "name": "capped" })).await;
    assert_eq!(ws["key_cap"], 10);
    let uncapped = create_workspace(&app, &json!({ "name": "free", "key_cap": null })).await;
    assert_eq!(uncapped["key_cap"], Value::Null);
    let id = id_of(&ws);

    // Act: ten keys fit, the eleventh does not.
    for i in 0..10 {
        app.create_key(&json!({ "name": format!("k{i}"), "workspace_id": id }))
            .await;
    }
    let eleventh = app
        .post_json(
            "/admin/v1/keys",
            &json!({ "name": "k10", "workspace_id": id }),
        )
        .await;

    // Assert
    let error = assert_error(eleventh, StatusCode::CONFLICT, "key_cap_reached", None).await;
    assert!(error["message"].as_str().unwrap().contains("10"), "{error}");

    // A configured default applies to later workspaces.
    let app = spawn_app_with(backend, |c| c.keys.default_workspace_key_cap = Some(2)).await;
    let ws = create_workspace(&app, &json!({ "name": "small" })).await;
    assert_eq!(ws["key_cap"], 2);
}

async fn a_workspace_with_live_keys_is_not_deleted_and_default_never(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = create_workspace(&app, &json!({ "name": "doomed" })).await;
    let id = id_of(&ws);
    let key = app
        .create_key(&json!({ "name": "k", "workspace_id": id }))
        .await;
    let path = format!("/admin/v1/workspaces/{id}");

    // Act + Assert: refused while a key is live.
    let error = assert_error(
        app.delete(&path).await,
        StatusCode::CONFLICT,
        "workspace_has_keys",
        None,
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains('1'), "{error}");
    assert_eq!(
        app.delete(&format!("/admin/v1/keys/{}", id_of(&key)))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.delete(&path).await.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_error(
        app.delete(&path).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let gone_key = app
        .post_json(
            "/admin/v1/keys",
            &json!({ "name": "x", "workspace_id": id }),
        )
        .await;
    assert_error(gone_key, StatusCode::NOT_FOUND, "not_found", None).await;
    // Its name is free again.
    create_workspace(&app, &json!({ "name": "doomed" })).await;

    // `default` stays.
    let default = format!("/admin/v1/workspaces/{}", app.workspace_id);
    assert_error(
        app.delete(&default).await,
        StatusCode::CONFLICT,
        "default_workspace",
        None,
    )
    .await;
    assert_eq!(app.get(&default).await.status(), StatusCode::OK);
}

async fn webhook_urls_are_checked_and_the_secret_is_shown_once(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act + Assert: refused URLs name the field.
    for url in [
        "ftp://93.184.216.34/hook",
        "http://127.0.0.1:9000/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://localhost:9000/hook",
        "https://user:pw@93.184.216.34/hook",
        "not a url",
    ] {
        let response = app
            .post_json(
                "/admin/v1/workspaces",
                &json!({ "name": "hooked", "webhook_url": url }),
            )
            .await;
        assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("webhook_url"),
        )
        .await;
    }

    // A public address is accepted; its secret is shown in this answer only.
    let ws = create_workspace(
        &app,
        &json!({ "name": "hooked", "webhook_url": "https://93.184.216.34/hook" }),
    )
    .await;
    let secret = ws["webhook_secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 40,
        "{secret}"
    );
    let path = format!("/admin/v1/workspaces/{}", id_of(&ws));
    let (_, read) = json_of(app.get(&path).await).await;
    assert_eq!(read["webhook_url"], "https://93.184.216.34/hook");
    let (_, list) = json_of(app.get("/admin/v1/workspaces").await).await;
    assert!(!read.to_string().contains(&secret));
    assert!(!list.to_string().contains(&secret));

    // A new URL issues a new secret; a PATCH without one shows none; null removes it.
    let (_, changed) = json_of(
        app.patch_json(&path, &json!({ "webhook_url": "http://93.184.216.35/h" }))
            .await,
    )
    .await;
    let second = changed["webhook_secret"].as_str().unwrap().to_string();
    assert_ne!(second, secret);
    let (_, renamed) = json_of(app.patch_json(&path, &json!({ "name": "h2" })).await).await;
    assert!(renamed.get("webhook_secret").is_none(), "{renamed}");
    let (_, cleared) = json_of(app.patch_json(&path, &json!({ "webhook_url": null })).await).await;
    assert_eq!(cleared["webhook_url"], Value::Null);
    assert!(cleared.get("webhook_secret").is_none());
    let stored = app.store().get_workspace(id_of(&ws).parse().unwrap()).await;
    assert_eq!(stored.unwrap().webhook_secret, None);

    // Never in the audit log.
    let (_, log) = json_of(app.get("/admin/v1/audit-events?limit=500").await).await;
    let log = log.to_string();
    assert!(log.contains("workspace.create") && log.contains("workspace.update"));
    assert!(!log.contains(&secret) && !log.contains(&second), "{log}");
}

async fn private_webhooks_are_allowed_when_configured(backend: Backend) {
    // Arrange: `webhooks.allow_private = true` (a receiver on the operator's network).
    let app = spawn_app_with(backend, |c| c.webhooks.allow_private = true).await;

    // Act
    let ws = create_workspace(
        &app,
        &json!({ "name": "internal", "webhook_url": "http://127.0.0.1:9000/hook" }),
    )
    .await;

    // Assert: accepted; other rules still hold.
    assert_eq!(ws["webhook_url"], "http://127.0.0.1:9000/hook");
    assert!(ws["webhook_secret"].is_string());
    let ftp = app
        .post_json(
            "/admin/v1/workspaces",
            &json!({ "name": "x", "webhook_url": "ftp://127.0.0.1/" }),
        )
        .await;
    assert_error(
        ftp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("webhook_url"),
    )
    .await;
}

async fn another_workspaces_admin_key_sees_only_its_own(backend: Backend) {
    // Arrange: two workspaces; an admin key in the first.
    let app = spawn_app(backend).await;
    let mine = create_workspace(&app, &json!({ "name": "mine", "credits_usd": 5 })).await;
    let theirs = create_workspace(&app, &json!({ "name": "theirs" })).await;
    let (mine_id, theirs_id) = (id_of(&mine), id_of(&theirs));
    let (_, admin) = admin_key_in(&app, &mine_id).await;
    let as_admin = |method: Method, path: &str| app.req_as(&admin, method, path);
    let default_id = app.workspace_id.to_string();

    // Act + Assert: its own workspace is readable and its name and webhook changeable.
    let (status, list) = json_of(app.get_as(&admin, "/admin/v1/workspaces").await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["id"], mine_id.as_str());
    let own = format!("/admin/v1/workspaces/{mine_id}");
    assert_eq!(app.get_as(&admin, &own).await.status(), StatusCode::OK);
    let renamed = as_admin(Method::PATCH, &own)
        .json(&json!({ "name": "mine!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);

    // It acts as an admin, not an owner: credits, cap and deletion are refused (403, the
    // workspace is its own, so its existence is no secret).
    for (method, body) in [
        (Method::PATCH, json!({ "credits_usd": 1000 })),
        (Method::PATCH, json!({ "key_cap": 1000 })),
        (Method::DELETE, Value::Null),
    ] {
        let response = as_admin(method, &own).json(&body).send().await.unwrap();
        assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
    // Only the operator creates workspaces.
    let create = as_admin(Method::POST, "/admin/v1/workspaces")
        .json(&json!({ "name": "new" }))
        .send()
        .await
        .unwrap();
    assert_error(create, StatusCode::FORBIDDEN, "forbidden", None).await;

    // Anything of another workspace is 404, never 403.
    for ws in [&theirs_id, &default_id] {
        for (method, path, body) in [
            (
                Method::GET,
                format!("/admin/v1/workspaces/{ws}"),
                Value::Null,
            ),
            (
                Method::PATCH,
                format!("/admin/v1/workspaces/{ws}"),
                json!({ "name": "stolen" }),
            ),
            (
                Method::DELETE,
                format!("/admin/v1/workspaces/{ws}"),
                Value::Null,
            ),
            (
                Method::GET,
                format!("/admin/v1/workspaces/{ws}/members"),
                Value::Null,
            ),
            (
                Method::POST,
                format!("/admin/v1/workspaces/{ws}/members"),
                json!({ "username": "spy", "role": "member", "password": "long enough pw" }),
            ),
            (
                Method::GET,
                format!("/admin/v1/keys?workspace_id={ws}"),
                Value::Null,
            ),
            (
                Method::GET,
                format!("/admin/v1/rate-limit-events?workspace_id={ws}"),
                Value::Null,
            ),
            (
                Method::GET,
                format!("/admin/v1/audit-events?workspace_id={ws}"),
                Value::Null,
            ),
            (
                Method::POST,
                "/admin/v1/keys".to_string(),
                json!({ "name": "planted", "workspace_id": ws }),
            ),
        ] {
            let mut request = as_admin(method.clone(), &path);
            if !body.is_null() {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
        }
    }
    let (_, theirs_read) =
        json_of(app.get(&format!("/admin/v1/workspaces/{theirs_id}")).await).await;
    assert_eq!(theirs_read["name"], "theirs");
}

async fn the_operator_names_workspaces_on_keys_events_and_audit(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let ws = create_workspace(&app, &json!({ "name": "elsewhere" })).await;
    let id = id_of(&ws);

    // Act: the bootstrap key creates a key there and manages it.
    let key = app
        .create_key(&json!({ "name": "there", "workspace_id": id }))
        .await;
    let key_path = format!("/admin/v1/keys/{}", id_of(&key));

    // Assert
    assert_eq!(key["workspace_id"], id.as_str());
    let (_, list) = json_of(app.get(&format!("/admin/v1/keys?workspace_id={id}")).await).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["name"], "there");
    let (_, own) = json_of(app.get("/admin/v1/keys").await).await;
    assert!(
        !own.to_string().contains(&id_of(&key)),
        "the default list is its own workspace"
    );
    assert_eq!(app.get(&key_path).await.status(), StatusCode::OK);
    let (status, renamed) =
        json_of(app.patch_json(&key_path, &json!({ "name": "moved" })).await).await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    let (status, events) = json_of(
        app.get(&format!("/admin/v1/rate-limit-events?workspace_id={id}"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_eq!(events["total"], 0);
    let (_, log) = json_of(
        app.get(&format!("/admin/v1/audit-events?workspace_id={id}"))
            .await,
    )
    .await;
    let actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.update", "key.create", "workspace.create"]);
    for event in log["data"].as_array().unwrap() {
        assert_eq!(event["workspace_id"], id.as_str());
        assert_eq!(event["actor"], format!("key:{}", app.admin_key_id));
    }
    for path in [
        format!("/admin/v1/keys?workspace_id={}", Uuid::now_v7()),
        format!(
            "/admin/v1/rate-limit-events?workspace_id={}",
            Uuid::now_v7()
        ),
    ] {
        assert_error(
            app.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
    assert_error(
        app.get("/admin/v1/keys?workspace_id=nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        Some("workspace_id"),
    )
    .await;
}

async fn the_audit_log_filters_and_holds_no_secret(backend: Backend) {
    // Arrange: keys, a rotation, a workspace with a webhook and members.
    let app = spawn_app(backend).await;
    let created = app.create_key(&json!({ "name": "audited" })).await;
    let key_secret = secret_of(&created);
    let (_, rotated) = json_of(app.rotate(&id_of(&created), None).await).await;
    let ws = create_workspace(
        &app,
        &json!({ "name": "audited ws", "webhook_url": "https://93.184.216.34/" }),
    )
    .await;
    let ws_id = id_of(&ws);
    let password = "correct horse battery staple";
    let members = format!("/admin/v1/workspaces/{ws_id}/members");
    let (status, _) = json_of(
        app.post_json(
            &members,
            &json!({ "username": "alice", "role": "owner", "password": password }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_password = "another long passphrase";
    let (status, _) = json_of(
        app.patch_json(
            &format!("{members}/alice"),
            &json!({ "password": new_password }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Act: everything (the operator sees every workspace), then filters.
    let (status, all) = json_of(app.get("/admin/v1/audit-events?limit=500").await).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{all}");
    let data = all["data"].as_array().unwrap();
    let actions: Vec<&str> = data.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions[..5],
        [
            "member.update",
            "member.create",
            "workspace.create",
            "key.rotate",
            "key.create"
        ]
    );
    let first = &data[0];
    for field in [
        "id",
        "at",
        "actor",
        "action",
        "target",
        "workspace_id",
        "source_ip",
        "details",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    assert_eq!(first["source_ip"], "127.0.0.1");
    assert_eq!(first["target"], "member:alice");
    assert_eq!(first["details"]["fields"], json!(["password"]));
    let text = all.to_string();
    for secret in [
        key_secret.as_str(),
        secret_of(&rotated).as_str(),
        ws["webhook_secret"].as_str().unwrap(),
        password,
        new_password,
        "$argon2",
    ] {
        assert!(!text.contains(secret), "the audit log shows `{secret}`");
    }

    let count = |query: String| {
        let app = &app;
        async move {
            let (status, page) =
                json_of(app.get(&format!("/admin/v1/audit-events?{query}")).await).await;
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            page["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("action=key.rotate".into()).await, 1);
    assert_eq!(count(format!("target=key:{}", id_of(&created))).await, 2);
    assert_eq!(count(format!("workspace_id={ws_id}")).await, 3);
    assert_eq!(count(format!("actor=key:{}", Uuid::now_v7())).await, 0);
    let at = first["at"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(count(format!("action=member.update&from={at}")).await, 1);
    assert_eq!(count(format!("action=member.update&to={at}")).await, 0);
    let (_, one) = json_of(app.get("/admin/v1/audit-events?limit=1&page=2").await).await;
    assert_eq!(one["data"][0]["action"], "member.create");
    assert_eq!(one["total"].as_u64(), all["total"].as_u64());
    let response = app
        .get("/admin/v1/audit-events?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z")
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("from"),
    )
    .await;
}
