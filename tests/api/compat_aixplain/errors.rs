//! Refusals in aiXplain's shape (`{statusCode, message, error: "err.…"}`), never a 500:
//! bad bodies name the field, the key cap is a 409.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{aix, aix_get, aix_send, assert_aix_error, captured_create, create, create_as};
use crate::helpers::{json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        errors_use_the_aixplain_shape_and_never_500,
        bad_bodies_get_4xx_naming_the_field,
        key_cap_is_409,
    ],
}

async fn errors_use_the_aixplain_shape_and_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, inference) = app.create_inference_key("inference").await;

    // No key, a bad key: 401.
    let response = app
        .client
        .get(app.url("/sdk/api-keys"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_api_key");
    for path in [
        "/sdk/api-keys",
        "/sdk/api-keys/usage-limits",
        "/v2/models/a%2Fb",
    ] {
        let (status, body) = aix_get(&app, "kg_not_a_key", path).await;
        assert_aix_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_api_key");
    }
    // An inference key managing keys: 403.
    let (status, body) = aix_get(&app, &inference, "/sdk/api-keys").await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, body) = aix_send(
        &app,
        &inference,
        Method::POST,
        "/sdk/api-keys",
        &json!({"name": "x"}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );

    // Unknown and malformed ids: aiXplain's 404, exactly.
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_string(),
        "%FF%FE".to_string(),
        "x".repeat(300),
    ] {
        for suffix in ["", "/usage-limits"] {
            let (status, body) =
                aix_get(&app, &app.admin_key, &format!("/sdk/api-keys/{id}{suffix}")).await;
            assert_eq!(
                (status, body),
                (
                    StatusCode::NOT_FOUND,
                    json!({"statusCode": 404, "message": "API key not found", "error": "err.not_found"})
                ),
                "id {id}{suffix}"
            );
        }
    }
    // Unknown routes and methods under /sdk and /v2 answer in the same shape.
    let (status, body) = aix_get(&app, &app.admin_key, "/sdk/nothing-here").await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PATCH,
        "/sdk/api-keys",
        &json!({}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

async fn bad_bodies_get_4xx_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let existing = create(&app, &captured_create("existing")).await;
    let put_path = format!("/sdk/api-keys/{}", existing["id"].as_str().unwrap());
    let future = "2099-01-01T00:00:00.000000Z";
    // (body, status, text the message must contain)
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("".into(), StatusCode::BAD_REQUEST, "empty"),
        ("{".into(), StatusCode::BAD_REQUEST, "JSON"),
        ("[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "array"),
        ("{}".into(), StatusCode::UNPROCESSABLE_ENTITY, "name"),
        (
            json!({"name": ""}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "x".repeat(201)}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": 5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            json!({"name": "a", "colour": 1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            json!({"name": "a", "budget": -1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "budget": "lots"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "budget": 1e300}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "budget",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": -1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": 1.5}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"rpm": 1e30}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.rpm",
        ),
        (
            json!({"name": "a", "globalLimits": {"tpd": u64::MAX}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.tpd",
        ),
        (
            json!({"name": "a", "globalLimits": {"tokenType": "tokens"}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits.tokenType",
        ),
        (
            json!({"name": "a", "globalLimits": {"rmp": 1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rmp",
        ),
        (
            json!({"name": "a", "globalLimits": [1]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "globalLimits",
        ),
        (
            json!({"name": "a", "assetsLimits": {"rpm": 1}}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"rpm": 1}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[0].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"rpm": 1, "assetId": "  "}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[0].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"assetId": "m"}, {"assetId": "m"}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assetsLimits[1].assetId",
        ),
        (
            json!({"name": "a", "assetsLimits": [{"assetId": "m", "tokenType": 3}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tokenType",
        ),
        (
            json!({"name": "a", "expiresAt": "soon"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": "2001-01-01T00:00:00.000000Z"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": 5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "expiresAt": "+999999-01-01T00:00:00Z"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expiresAt",
        ),
        (
            json!({"name": "a", "isAdmin": true, "expiresAt": future}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "isAdmin",
        ),
        (
            json!({"name": "a", "id": "01234567-89ab-cdef-0123-456789abcdef"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
    ];
    for (body, expected, needle) in &cases {
        let response = aix(&app, &app.admin_key, Method::POST, "/sdk/api-keys")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = json_of(response).await;
        assert!(status.is_client_error(), "POST {body}: {status} {answer}");
        let code = if *expected == StatusCode::BAD_REQUEST {
            "invalid_json"
        } else {
            "invalid_field"
        };
        assert_aix_error(status, &answer, *expected, code);
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "POST {body}: the message does not name `{needle}`: {answer}"
        );
    }
    // The same validation on update (a past expiry is allowed there: it expires the key now).
    for (body, expected, needle) in cases.iter().filter(|(body, _, _)| {
        !body.contains("2001-01-01") && body != "{}" && !body.contains("\"id\"")
    }) {
        let response = aix(&app, &app.admin_key, Method::PUT, &put_path)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = json_of(response).await;
        assert_eq!(status, *expected, "PUT {body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "PUT {body}: {answer}"
        );
    }
    // A body that is not JSON at all.
    let response = app
        .client
        .post(app.url("/sdk/api-keys"))
        .header("x-api-key", &app.admin_key)
        .header("content-type", "text/plain")
        .body("name=a")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Nothing of the refused creations was stored.
    let (_, list) = aix_get(&app, &app.admin_key, "/sdk/api-keys").await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

async fn key_cap_is_409(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.create_workspace_with_admin("capped", Some(2)).await;
    create_as(&app, &admin, "first").await;
    let (status, body) = aix_send(
        &app,
        &admin,
        Method::POST,
        "/sdk/api-keys",
        &json!({"name": "second", "budget": null, "assetsLimits": []}),
    )
    .await;
    assert_aix_error(status, &body, StatusCode::CONFLICT, "key_cap_reached");
    assert!(body["message"].as_str().unwrap().contains('2'), "{body}");
}
