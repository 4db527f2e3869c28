//! Refusals in Venice's shape with the statuses the SDK maps to its exceptions: failed
//! authentication, bad input (400 with Zod-like `issues`, never 500), the key cap (409).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{assert_issue, assert_venice_error, create, venice, KEYS};
use crate::helpers::{id_of, json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        auth_failures_use_the_venice_shape_and_sdk_statuses,
        bad_inputs_are_400_in_venice_shape_never_500,
        key_cap_is_a_409_conflict,
    ],
}

async fn auth_failures_use_the_venice_shape_and_sdk_statuses(backend: Backend) {
    let app = spawn_app(backend).await;
    let inference = create(
        &app,
        &json!({"apiKeyType": "INFERENCE", "description": "i"}),
    )
    .await;
    let inference = inference["apiKey"].as_str().unwrap();

    // No key / a bad key: 401 (AuthenticationError).
    let response = app.req_anon(Method::GET, KEYS).send().await.unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    let (status, body) = venice(&app, "kg_not_a_key", Method::GET, KEYS, None).await;
    assert_venice_error(status, &body, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "INVALID_API_KEY");

    // An inference key on management: 403 (PermissionDeniedError), not IP-restricted.
    for (method, path) in [
        (Method::GET, KEYS.to_string()),
        (Method::POST, KEYS.to_string()),
        (Method::GET, format!("{KEYS}/{}", app.admin_key_id)),
    ] {
        let (status, body) = venice(
            &app,
            inference,
            method,
            &path,
            Some(&json!({"apiKeyType": "INFERENCE", "description": "x"})),
        )
        .await;
        assert_venice_error(status, &body, StatusCode::FORBIDDEN);
        assert!(
            !body["error"]
                .as_str()
                .unwrap()
                .starts_with("This API key is restricted"),
            "{body}"
        );
    }
    // …but it reads its own rate limits and refusals.
    for path in [
        "/api/v1/api_keys/rate_limits",
        "/api/v1/api_keys/rate_limits/log",
    ] {
        let (status, body) = venice(&app, inference, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }

    // A key restricted to other addresses: 403 with the message the SDK turns into
    // ApiKeyIpRestrictedError.
    let restricted = create(
        &app,
        &json!({"apiKeyType": "ADMIN", "description": "r", "ipAllowlist": ["203.0.113.0/24"]}),
    )
    .await;
    let (status, body) = venice(
        &app,
        restricted["apiKey"].as_str().unwrap(),
        Method::GET,
        KEYS,
        None,
    )
    .await;
    assert_venice_error(status, &body, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .starts_with("this api key is restricted to configured ip addresses"),
        "{body}"
    );
}

async fn bad_inputs_are_400_in_venice_shape_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let ok = json!({"apiKeyType": "INFERENCE", "description": "x"});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let cases: Vec<(Value, Value)> = vec![
        (json!({"description": "x"}), json!(["apiKeyType"])),
        (json!({"apiKeyType": "INFERENCE"}), json!(["description"])),
        (with("apiKeyType", json!("SUPER")), json!(["apiKeyType"])),
        (with("apiKeyType", json!(1)), json!(["apiKeyType"])),
        (with("description", json!("")), json!(["description"])),
        (with("description", json!("   ")), json!(["description"])),
        (
            with("description", json!("x".repeat(201))),
            json!(["description"]),
        ),
        (with("description", json!(null)), json!(["description"])),
        (
            with("consumptionLimit", json!({"usd": -1})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"usd": "ten"})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"usd": 1e12})),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            with("consumptionLimit", json!({"diem": -0.5})),
            json!(["consumptionLimit", "diem"]),
        ),
        (
            with("consumptionLimit", json!({"vcu": 1e300})),
            json!(["consumptionLimit", "vcu"]),
        ),
        (
            with("consumptionLimit", json!({"eur": 1})),
            json!(["consumptionLimit", "eur"]),
        ),
        (
            with("consumptionLimit", json!(5)),
            json!(["consumptionLimit"]),
        ),
        (with("limitPeriod", json!("WEEK")), json!(["limitPeriod"])),
        (with("modelPrivacy", json!("NONE")), json!(["modelPrivacy"])),
        (
            with("expiresAt", json!("next tuesday")),
            json!(["expiresAt"]),
        ),
        (with("expiresAt", json!(1700000000)), json!(["expiresAt"])),
        (
            with("ipAllowlist", json!(["banana"])),
            json!(["ipAllowlist", 0]),
        ),
        (
            with("ipAllowlist", json!(["1.2.3.4", "1.2.3.4/33"])),
            json!(["ipAllowlist", 1]),
        ),
        (
            with("ipAllowlist", json!(vec!["1.2.3.4"; 101])),
            json!(["ipAllowlist"]),
        ),
        (
            with("ipAllowlist", json!(["1".repeat(65)])),
            json!(["ipAllowlist", 0]),
        ),
        (
            with("ipAllowlist", json!("1.2.3.4")),
            json!(["ipAllowlist"]),
        ),
        (
            with("consumptionLimits", json!({"usd": 1})),
            json!(["consumptionLimits"]),
        ),
    ];
    for (body, path) in cases {
        let (status, answer) = venice(&app, &app.admin_key, Method::POST, KEYS, Some(&body)).await;
        assert_issue(status, &answer, path.clone());
        assert_eq!(answer["error"], "Invalid request", "{body}: {answer}");
    }

    // Bodies that are not a JSON object: 400 (415 for another content type).
    for raw in [
        "",
        "{",
        "[]",
        "null",
        "\"x\"",
        "{\"apiKeyType\": \"INFERENCE\"} trailing",
    ] {
        let response = app.send_raw(Method::POST, KEYS, raw).await;
        let (status, body) = json_of(response).await;
        assert_venice_error(status, &body, StatusCode::BAD_REQUEST);
    }
    let response = app
        .req(Method::POST, KEYS)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_venice_error(status, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Updates.
    let key = create(&app, &ok).await;
    let id = id_of(&key);
    for (body, path) in [
        (json!({"description": "no id"}), json!(["id"])),
        (json!({"id": id, "expiresAt": "soon"}), json!(["expiresAt"])),
        (json!({"id": id, "description": ""}), json!(["description"])),
        (
            json!({"id": id, "ipAllowlist": ["300.1.1.1"]}),
            json!(["ipAllowlist", 0]),
        ),
        (
            json!({"id": id, "consumptionLimit": {"usd": -2}}),
            json!(["consumptionLimit", "usd"]),
        ),
        (
            json!({"id": id, "apiKeyType": "ADMIN"}),
            json!(["apiKeyType"]),
        ),
        (json!({"id": 5}), json!(["id"])),
    ] {
        let (status, answer) = venice(&app, &app.admin_key, Method::PATCH, KEYS, Some(&body)).await;
        assert_issue(status, &answer, path);
    }
    let (status, answer) = venice(
        &app,
        &app.admin_key,
        Method::PATCH,
        KEYS,
        Some(&json!({"id": "nope"})),
    )
    .await;
    assert_venice_error(status, &answer, StatusCode::NOT_FOUND);

    // Queries.
    for query in [
        "page=0",
        "page=abc",
        "limit=0",
        "limit=501",
        "limit=-1",
        "colour=red",
    ] {
        let (status, answer) = venice(
            &app,
            &app.admin_key,
            Method::GET,
            &format!("{KEYS}?{query}"),
            None,
        )
        .await;
        assert_venice_error(status, &answer, StatusCode::BAD_REQUEST);
        assert!(answer["issues"].is_array(), "{query}: {answer}");
    }
    for query in ["", "?id=", "?key=1"] {
        let (status, answer) = venice(
            &app,
            &app.admin_key,
            Method::DELETE,
            &format!("{KEYS}{query}"),
            None,
        )
        .await;
        assert_venice_error(status, &answer, StatusCode::BAD_REQUEST);
    }
    let (status, answer) = venice(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("{KEYS}?id=not-a-uuid"),
        None,
    )
    .await;
    assert_venice_error(status, &answer, StatusCode::NOT_FOUND);

    // Nothing was created by any of that: the bootstrap key and `key` only.
    let (_, list) = venice(&app, &app.admin_key, Method::GET, KEYS, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

async fn key_cap_is_a_409_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    // Cap 2: the workspace's admin key and one more.
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    let body = json!({"apiKeyType": "INFERENCE", "description": "one"});
    let (status, answer) = venice(&app, &admin, Method::POST, KEYS, Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = venice(&app, &admin, Method::POST, KEYS, Some(&body)).await;
    assert_venice_error(status, &answer, StatusCode::CONFLICT);
    assert!(
        answer["error"].as_str().unwrap().contains('2'),
        "names the cap: {answer}"
    );
    assert_eq!(answer["code"], "KEY_CAP_REACHED");
}
