//! Create, list, retrieve, delete: the envelopes and the key shape the SDK parses, paging,
//! route precedence, and that Venice keys are ordinary keygate keys.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    assert_api_key_shape, assert_venice_error, create, keys_of, retrieve, set, venice, KEYS, WEB3,
};
use crate::helpers::{id_of, json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        create_answers_the_created_key_shape,
        list_retrieve_update_delete_answer_their_envelopes,
        venice_keys_are_ordinary_keygate_keys,
        list_pages_end_with_a_short_page,
        static_routes_win_over_the_id_route,
    ],
}

// ---------------------------------------------------------------------------------------

async fn create_answers_the_created_key_shape(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "tenant-1",
            "consumptionLimit": {"usd": 10.5, "diem": 2.0},
            "limitPeriod": "MONTH",
            "modelPrivacy": "PRIVATE_ONLY",
            "expiresAt": "2031-02-03T04:05:06Z",
            "ipAllowlist": ["1.2.3.4", "10.1.2.3/8", "2001:db8::1"]
        }),
    )
    .await;

    // CreatedApiKey: singular `consumptionLimit`, the full secret once.
    for field in [
        "id",
        "apiKey",
        "apiKeyType",
        "description",
        "consumptionLimit",
        "expiresAt",
        "limitPeriod",
        "ipAllowlist",
    ] {
        assert!(created.get(field).is_some(), "`{field}` missing: {created}");
    }
    assert!(created.get("consumptionLimits").is_none(), "{created}");
    Uuid::parse_str(created["id"].as_str().unwrap()).expect("ids are UUIDs");
    let secret = created["apiKey"].as_str().unwrap();
    assert!(secret.starts_with("kg_"), "{created}");
    assert_eq!(created["last6Chars"], &secret[secret.len() - 6..]);
    assert_eq!(created["apiKeyType"], "INFERENCE");
    assert_eq!(created["description"], "tenant-1");
    assert_eq!(
        created["consumptionLimit"],
        json!({"usd": 10.5, "diem": 2.0, "vcu": null})
    );
    assert!(
        created["consumptionLimit"]["usd"].is_f64(),
        "floats as JSON numbers"
    );
    assert_eq!(created["limitPeriod"], "MONTH");
    assert_eq!(created["modelPrivacy"], "PRIVATE_ONLY");
    assert_eq!(created["expiresAt"], "2031-02-03T04:05:06.000Z");
    assert_eq!(
        created["ipAllowlist"],
        json!(["1.2.3.4/32", "10.0.0.0/8", "2001:db8::1/128"])
    );

    // An ADMIN key, and a key without any limit: `consumptionLimit` is still there.
    let admin = create(&app, &json!({"apiKeyType": "ADMIN", "description": "ops"})).await;
    assert_eq!(admin["apiKeyType"], "ADMIN");
    assert_eq!(
        admin["consumptionLimit"],
        json!({"usd": null, "diem": null, "vcu": null})
    );
    assert_eq!(admin["limitPeriod"], Value::Null);
    assert_eq!(admin["expiresAt"], Value::Null);
    assert_eq!(admin["ipAllowlist"], json!([]));
    // The new admin key manages keys on this surface.
    let (status, _) = venice(
        &app,
        admin["apiKey"].as_str().unwrap(),
        Method::GET,
        KEYS,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // No `limitPeriod`: the USD limit is per EPOCH (a UTC day).
    let daily = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "d", "consumptionLimit": {"usd": 1}}),
    )
    .await;
    assert_eq!(daily["limitPeriod"], "EPOCH");
    assert_eq!(daily["consumptionLimit"]["usd"], 1.0);
}

async fn list_retrieve_update_delete_answer_their_envelopes(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "shape", "consumptionLimit": {"usd": 3}, "limitPeriod": "LIFETIME"}),
    )
    .await;
    let id = id_of(&created);

    // list: {"object": "list", "data": [ApiKey…]}
    let (status, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(keys_of(&list), set(&["object", "data"]));
    assert_eq!(list["object"], "list");
    let items = list["data"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "the bootstrap admin key and the new one: {list}"
    );
    items.iter().for_each(assert_api_key_shape);
    let mine = items.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_eq!(
        mine["consumptionLimits"],
        json!({"usd": 3.0, "diem": null, "vcu": null})
    );
    assert_eq!(mine["limitPeriod"], "LIFETIME");
    assert_eq!(
        mine["usage"]["trailingSevenDays"],
        json!({"usd": 0.0, "diem": 0.0, "vcu": 0.0})
    );
    assert_eq!(mine["lastUsedAt"], Value::Null);
    assert_eq!(mine["modelPrivacy"], Value::Null);
    let bootstrap = items
        .iter()
        .find(|k| k["id"] == app.admin_key_id.to_string().as_str())
        .unwrap();
    assert_eq!(bootstrap["apiKeyType"], "ADMIN");
    assert_eq!(bootstrap["limitPeriod"], Value::Null);

    // retrieve: {"data": ApiKey}
    let (status, got) = retrieve(&app, &id).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(keys_of(&got), set(&["data"]));
    assert_api_key_shape(&got["data"]);
    assert_eq!(&got["data"], mine);

    // update: {"data": ApiKey, "success": true}
    let (status, updated) = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": id, "description": "renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(keys_of(&updated), set(&["data", "success"]));
    assert_eq!(updated["success"], true);
    assert_api_key_shape(&updated["data"]);
    assert_eq!(updated["data"]["description"], "renamed");

    // delete: exactly {"success": true}; afterwards the key is Venice's 404.
    let (status, deleted) = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id={id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({"success": true}));
    let secret = created["apiKey"].as_str().unwrap();
    let (status, body) = venice(
        &app,
        secret,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    for (method, path, body) in [
        (Method::GET, format!("{KEYS}/{id}"), None),
        (Method::DELETE, format!("{KEYS}?id={id}"), None),
        (
            Method::PATCH,
            KEYS.to_string(),
            Some(json!({"id": id, "description": "x"})),
        ),
    ] {
        let (status, body) =
            venice(&app, &app.admin_key, method.clone(), &path, body.as_ref()).await;
        assert_venice_error(status, &body, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "API key not found", "{method} {path}");
    }
}

async fn venice_keys_are_ordinary_keygate_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "seen natively",
            "consumptionLimit": {"usd": 0.1},
            "limitPeriod": "MONTH",
            "ipAllowlist": ["192.0.2.7"]
        }),
    )
    .await;
    let id = id_of(&created);

    // The native admin API sees the key, its budget (exact decimal) and allowlist.
    let (status, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(status, StatusCode::OK, "{native}");
    assert_eq!(native["name"], "seen natively");
    assert_eq!(native["kind"], "inference");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 0.1, "period": "month"})
    );
    assert_eq!(native["ip_allowlist"], json!(["192.0.2.7/32"]));
    assert_eq!(native["created_by"], format!("key:{}", app.admin_key_id));
    assert_eq!(native["last6"], created["last6Chars"]);

    // A native change shows on the Venice surface.
    let response = app
        .patch_json(
            &format!("/admin/v1/keys/{id}"),
            &json!({"budget": {"limit_usd": 7, "period": "day"}, "ip_allowlist": null}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (_, got) = retrieve(&app, &id).await;
    assert_eq!(got["data"]["consumptionLimits"]["usd"], 7.0);
    assert_eq!(got["data"]["limitPeriod"], "EPOCH");
    assert_eq!(got["data"]["ipAllowlist"], json!([]));

    // The allowlist is enforced for the key itself (127.0.0.1 is not 192.0.2.7).
    let _ = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": id, "ipAllowlist": ["192.0.2.7"]})),
    )
    .await;
    let (status, body) = venice(
        &app,
        created["apiKey"].as_str().unwrap(),
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("This API key is restricted to configured IP addresses"),
        "{body}"
    );

    // Delete through Venice = revoke: the native API answers 404 too.
    let _ = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id={id}"),
        None,
    )
    .await;
    assert_eq!(
        app.get(&format!("/admin/v1/keys/{id}")).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn list_pages_end_with_a_short_page(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        create(
            &app,
            &json!({"apiKeyType": "INFERENCE", "description": format!("k{i}")}),
        )
        .await;
    }
    // 6 keys with the bootstrap admin key: pages of 4 are 4, 2, 0.
    let mut seen = BTreeSet::new();
    for (page, expected) in [(1, 4), (2, 2), (3, 0)] {
        let (status, list) = venice(
            &app,
            &app.admin_key,
            Method::GET,
            &format!("{KEYS}?page={page}&limit=4"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let items = list["data"].as_array().unwrap();
        assert_eq!(items.len(), expected, "page {page}: {list}");
        for item in items {
            assert!(
                seen.insert(item["id"].as_str().unwrap().to_string()),
                "a key on two pages"
            );
        }
    }
    let (_, all) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        6,
        "no parameters: every key (up to 500)"
    );
}

async fn static_routes_win_over_the_id_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, limits) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert!(limits["data"]["accessPermitted"].is_boolean(), "{limits}");
    let (status, log) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits/log",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{log}");
    assert_eq!(log["object"], "list");
    // Web3 is off here: its own 403, not a key lookup, and without any key.
    let response = app.req_anon(Method::GET, WEB3).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "WEB3_DISABLED");
    // Anything else under api_keys/ is an id: unknown ones and non-UUIDs are 404s.
    for id in [
        Uuid::new_v4().to_string(),
        "rate_limit".to_string(),
        "generate_web3_keys".to_string(),
        "%20".to_string(),
    ] {
        let (status, body) = retrieve(&app, &id).await;
        assert_venice_error(status, &body, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "API key not found", "{id}");
    }
    // Deeper unknown paths are the router's 404, still in Venice's shape.
    let (status, body) = venice(
        &app,
        &app.admin_key,
        Method::GET,
        "/api/v1/api_keys/rate_limits/nope",
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::NOT_FOUND);
    let (status, body) = venice(&app, &app.admin_key, Method::PUT, KEYS, None).await;
    assert_venice_error(status, &body, StatusCode::METHOD_NOT_ALLOWED);
}
