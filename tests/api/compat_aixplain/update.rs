//! `PUT /sdk/api-keys/{id}` with aiXplain's semantics.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{aix_send, assert_aix_error, assert_key_shape, captured_create, create, is_partial_of};
use crate::helpers::{json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        put_updates_with_aixplain_semantics,
    ],
}

async fn put_updates_with_aixplain_semantics(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = create(&app, &captured_create("before")).await;
    let secret = key["accessKey"].as_str().unwrap().to_string();
    let id = key["id"].as_str().unwrap().to_string();
    let path = format!("/sdk/api-keys/{id}");

    // What the SDK sends after `set_request_per_minute(7)` + `save()`: everything, with the id;
    // no expiresAt when the object has none (so it stays), 0 for unset limits.
    let (status, updated) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({
            "id": id,
            "name": "after",
            "budget": 7.25,
            "globalLimits": {"tpm": 0, "tpd": 0, "rpm": 7, "rpd": 0, "tokenType": "OUTPUT"},
            "assetsLimits": [{"tpm": 0, "tpd": 0, "rpm": 1, "rpd": 0, "tokenType": null, "assetId": "m2"}],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_key_shape(&updated);
    assert!(
        is_partial_of(&updated["accessKey"], &secret),
        "PUT never answers the full key: {updated}"
    );
    assert_eq!(updated["name"], "after");
    assert_eq!(updated["budget"], 7.25);
    assert_eq!(updated["expiresAt"], "2099-01-02T03:04:05.000000Z");
    assert_eq!(
        updated["globalLimits"],
        json!({"tpm": 0, "tpd": 0, "rpm": 7, "rpd": 0, "tokenType": "output"})
    );
    assert_eq!(
        updated["assetsLimits"],
        json!([{"tpm": 0, "tpd": 0, "rpm": 1, "rpd": 0, "tokenType": "total", "assetId": "m2"}])
    );
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["limits"]["tpm"], Value::Null, "0 is no limit");
    assert_eq!(
        native["budget"],
        json!({"limit_usd": 7.25, "period": "lifetime"})
    );

    // A budget keeps its period; `null` clears budget and expiry.
    app.patch_json(
        &format!("/admin/v1/keys/{id}"),
        &json!({"budget": {"limit_usd": 1, "period": "day"}}),
    )
    .await;
    let (status, _) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "after", "budget": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["budget"], json!({"limit_usd": 3.0, "period": "day"}));
    assert_eq!(
        native["limits"]["rpm"], 7,
        "absent globalLimits stay as they are"
    );
    let (status, cleared) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "after", "budget": null, "expiresAt": null, "isAdmin": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["budget"], Value::Null);
    assert_eq!(cleared["expiresAt"], Value::Null);

    // The id in the body must be the path's; the kind is read-only.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"id": app.admin_key_id.to_string(), "name": "x"}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &path,
        &json!({"name": "x", "isAdmin": true}),
    )
    .await;
    assert_aix_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    );
    assert!(
        body["message"].as_str().unwrap().contains("isAdmin"),
        "{body}"
    );
    // Unknown ids: 404 in aiXplain's words.
    let (status, body) = aix_send(
        &app,
        &app.admin_key,
        Method::PUT,
        &format!("/sdk/api-keys/{}", uuid::Uuid::new_v4()),
        &json!({"name": "x"}),
    )
    .await;
    assert_aix_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}
