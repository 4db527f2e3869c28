//! `/sdk/api-keys`: list (a bare array, partial access keys), create (the wire shape, the
//! full key once), get (with a JSON body, every key header), route precedence, delete.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{
    aix, aix_get, aix_send, assert_aix_error, assert_key_shape, captured_create, create,
    is_partial_of,
};
use crate::helpers::{json_of, keys_in, secret_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        list_is_a_bare_array_of_every_key_with_partial_access_keys,
        create_answers_the_wire_shape_with_the_full_key_once,
        get_accepts_a_json_body_and_every_key_header,
        fixed_routes_win_over_id_routes,
        delete_revokes_and_then_404s,
    ],
}

async fn list_is_a_bare_array_of_every_key_with_partial_access_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, secret) = app.create_inference_key("same name").await;
    app.create_inference_key("same name").await;
    let made = create(&app, &captured_create("from aix")).await;

    let response = aix(&app, &app.admin_key, Method::GET, "/sdk/api-keys")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(keys_in(&text).is_empty(), "a list shows a full key: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let keys = list.as_array().expect("the list is a bare JSON array");
    assert_eq!(keys.len(), 4, "{list}");
    keys.iter().for_each(assert_key_shape);
    let admin = keys
        .iter()
        .find(|k| k["id"] == app.admin_key_id.to_string())
        .expect("the admin key is listed");
    assert_eq!(admin["isAdmin"], true);
    assert!(
        is_partial_of(&admin["accessKey"], &app.admin_key),
        "{admin}"
    );
    assert_eq!(
        keys.iter().filter(|k| k["name"] == "same name").count(),
        2,
        "names need not be unique"
    );
    assert!(keys
        .iter()
        .any(|k| k["name"] == "same name" && is_partial_of(&k["accessKey"], &secret)));
    assert!(keys
        .iter()
        .any(|k| k["id"] == made["id"] && k["isAdmin"] == false));

    // Without a body, and with `Authorization: Token` (the v1 SDK), it is the same list.
    let response = app
        .client
        .get(app.url("/sdk/api-keys"))
        .header("authorization", format!("Token {}", app.admin_key))
        .send()
        .await
        .unwrap();
    let (status, again) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, list);
}

async fn create_answers_the_wire_shape_with_the_full_key_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("fresh")).await;
    assert_key_shape(&key);
    let secret = key["accessKey"].as_str().unwrap().to_string();
    assert_eq!(
        keys_in(&secret),
        std::slice::from_ref(&secret),
        "create shows the full key"
    );
    let id = key["id"].as_str().unwrap().to_string();
    assert_eq!(
        key,
        json!({
            "id": id,
            "name": "fresh",
            "budget": 5.0,
            "expiresAt": "2099-01-02T03:04:05.000000Z",
            "accessKey": secret,
            "isAdmin": false,
            "globalLimits": {"tpm": 100, "tpd": 1000, "rpm": 10, "rpd": 100, "tokenType": "input"},
            "assetsLimits": [{"tpm": 1, "tpd": 2, "rpm": 3, "rpd": 4, "tokenType": "total", "assetId": "m1"}],
        })
    );

    // The full key works, and is never shown again.
    assert_eq!(
        app.get_as(&secret, "/v1/key").await.status(),
        StatusCode::OK
    );
    let (status, got) = aix_get(&app, &app.admin_key, &format!("/sdk/api-keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(is_partial_of(&got["accessKey"], &secret), "{got}");
    let mut expected = key.clone();
    expected["accessKey"] = got["accessKey"].clone();
    assert_eq!(got, expected);

    // An ordinary keygate key: the native API reads the same values.
    let (status, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(native["kind"], "inference");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 5.0, "period": "lifetime"})
    );
    assert_eq!(
        native["limits"],
        json!({"rpm": 10, "rpd": 100, "tpm": 100, "tpd": 1000, "token_type": "input"})
    );
    assert_eq!(
        native["model_limits"],
        json!([{"model": "m1", "rpm": 3, "rpd": 4, "tpm": 1, "tpd": 2, "token_type": "total"}])
    );
    assert_eq!(native["expires_at"], "2099-01-02T03:04:05Z");

    // A minimal create: zeros and absent limits are "no limit", answered as 0, never null.
    let minimal = create(
        &app,
        &json!({"name": "minimal", "budget": null, "globalLimits": {"tpm": 0, "tpd": 0, "rpm": 0, "rpd": 0, "tokenType": null}, "assetsLimits": []}),
    )
    .await;
    assert_key_shape(&minimal);
    assert_eq!(minimal["budget"], Value::Null);
    assert_eq!(minimal["expiresAt"], Value::Null);
    assert_eq!(
        minimal["globalLimits"],
        json!({"tpm": 0, "tpd": 0, "rpm": 0, "rpd": 0, "tokenType": "total"})
    );
    let (_, native) = json_of(
        app.get(&format!(
            "/admin/v1/keys/{}",
            minimal["id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(
        native["limits"],
        json!({"rpm": null, "rpd": null, "tpm": null, "tpd": null, "token_type": "total"})
    );
    let bare = create(&app, &json!({"name": "bare"})).await;
    assert_key_shape(&bare);
    assert_eq!(bare["assetsLimits"], json!([]));

    // Keys created natively read the same way (null limits become 0).
    let native_key = app
        .create_key(&json!({"name": "native", "limits": {"rpm": 7}, "budget": {"limit_usd": 2, "period": "month"}}))
        .await;
    let (_, seen) = aix_get(
        &app,
        &app.admin_key,
        &format!("/sdk/api-keys/{}", native_key["id"].as_str().unwrap()),
    )
    .await;
    assert_key_shape(&seen);
    assert_eq!(seen["globalLimits"]["rpm"], 7);
    assert_eq!(seen["globalLimits"]["tpd"], 0);
    assert_eq!(seen["budget"], 2.0);
    assert!(is_partial_of(&seen["accessKey"], &secret_of(&native_key)));
}

async fn get_accepts_a_json_body_and_every_key_header(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("headers")).await;
    let path = format!("/sdk/api-keys/{}", key["id"].as_str().unwrap());
    let requests = [
        aix(&app, &app.admin_key, Method::GET, &path).body("{}"),
        app.client
            .get(app.url(&path))
            .header("x-api-key", &app.admin_key),
        app.client
            .get(app.url(&path))
            .header("x-aixplain-key", &app.admin_key),
        app.client
            .get(app.url(&path))
            .header("authorization", format!("Token {}", app.admin_key)),
        app.client.get(app.url(&path)).bearer_auth(&app.admin_key),
        // `?host=` (the SDK's optional get parameter) is ignored.
        aix(&app, &app.admin_key, Method::GET, &format!("{path}?host=x")).body("{}"),
    ];
    for request in requests {
        let (status, got) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["id"], key["id"]);
        assert_key_shape(&got);
    }
}

async fn fixed_routes_win_over_id_routes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (inference_id, inference) = app.create_inference_key("plain").await;

    // `usage-limits` is the calling key's usage, never an id: an inference key may read it.
    for key in [&app.admin_key, &inference] {
        let (status, usage) = aix_get(&app, key, "/sdk/api-keys/usage-limits").await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        assert_eq!(
            usage,
            json!([{"requestCount": 0, "requestCountLimit": 0, "tokenCount": 0, "tokenCountLimit": 0}])
        );
    }
    // `{id}` routes are management: admin only.
    let (status, body) = aix_get(&app, &inference, &format!("/sdk/api-keys/{inference_id}")).await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, body) = aix_get(
        &app,
        &inference,
        &format!("/sdk/api-keys/{inference_id}/usage-limits"),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "inference_key_not_for_admin",
    );
    let (status, usage) = aix_get(
        &app,
        &app.admin_key,
        &format!("/sdk/api-keys/{inference_id}/usage-limits"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert!(usage.is_array());
    // Other methods on the fixed route are 405, not an id lookup.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::DELETE,
        "/sdk/api-keys/usage-limits",
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

async fn delete_revokes_and_then_404s(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("doomed")).await;
    let secret = key["accessKey"].as_str().unwrap().to_string();
    let path = format!("/sdk/api-keys/{}", key["id"].as_str().unwrap());
    // The SDK's DELETE: no body (`Content-Length: 0`), JSON content type.
    let response = aix(&app, &app.admin_key, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let (status, body) = aix_get(&app, &app.admin_key, &path).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"statusCode": 404, "message": "API key not found", "error": "err.not_found"})
        )
    );
    let response = aix(&app, &app.admin_key, Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.get_as(&secret, "/v1/key").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, list) = aix_get(&app, &app.admin_key, "/sdk/api-keys").await;
    assert!(!list
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == key["id"]));
}
