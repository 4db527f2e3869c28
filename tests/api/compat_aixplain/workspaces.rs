//! Keys made on this surface stay in their workspace.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{aix_get, aix_send, assert_aix_error, captured_create, create, create_as};
use crate::helpers::{spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        workspaces_are_isolated,
    ],
}

async fn workspaces_are_isolated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, other_admin_id, other_admin) = app.create_workspace_with_admin("other", None).await;
    let mine = create(&app, &captured_create("mine")).await;
    let theirs = create_as(&app, &other_admin, "theirs").await;

    let (_, list) = aix_get(&app, &other_admin, "/sdk/api-keys").await;
    let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|k| &k["id"]).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&&theirs["id"]) && ids.contains(&&json!(other_admin_id.to_string())));
    let mine_path = format!("/sdk/api-keys/{}", mine["id"].as_str().unwrap());
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::PUT, ""),
        (Method::DELETE, ""),
        (Method::GET, "/usage-limits"),
    ] {
        let (status, body) = aix_send(
            &app,
            &other_admin,
            method.clone(),
            &format!("{mine_path}{suffix}"),
            &json!({"name": "stolen"}),
        )
        .await;
        assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, still) = aix_get(&app, &app.admin_key, &mine_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["name"], "mine");
}
