//! Updates: `expiresAt` in its three forms, each field changed and cleared with an empty value.

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{assert_issue, create, retrieve, venice, YearAhead, KEYS};
use crate::helpers::{id_of, json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        expires_at_accepts_its_three_forms,
        update_changes_each_field_and_clears_with_empty_values,
    ],
}

async fn expires_at_accepts_its_three_forms(backend: Backend) {
    let app = spawn_app(backend).await;
    let year = Utc::now().year_ahead();
    for (given, expected) in [
        (json!(""), Value::Null),
        (
            json!(format!("{year}-02-03")),
            json!(format!("{year}-02-03T00:00:00.000Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06.789Z")),
            json!(format!("{year}-02-03T04:05:06.789Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06+02:00")),
            json!(format!("{year}-02-03T02:05:06.000Z")),
        ),
        (
            json!(format!("{year}-02-03T04:05:06")),
            json!(format!("{year}-02-03T04:05:06.000Z")),
        ),
    ] {
        let created = create(
            &app,
            &json!({"apiKeyType": "INFERENCE", "description": "e", "expiresAt": given}),
        )
        .await;
        assert_eq!(created["expiresAt"], expected, "{given}");
        let (_, got) = retrieve(&app, &id_of(&created)).await;
        assert_eq!(got["data"]["expiresAt"], expected, "{given}");
        if !expected.is_null() {
            // "" on update removes the expiry.
            let (status, updated) = venice(
                &app,
                &app.admin_key,
                Method::PATCH,
                KEYS,
                Some(&json!({"id": id_of(&created), "expiresAt": ""})),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{updated}");
            assert_eq!(updated["data"]["expiresAt"], Value::Null);
        }
    }
    // Today 00:00 UTC is past, and so is yesterday: refused at creation.
    let today = Utc::now().format("%Y-%m-%d").to_string();
    for past in [today, "2001-01-01T00:00:00Z".to_string()] {
        let (status, body) = venice(
            &app,
            &app.admin_key,
            Method::POST,
            KEYS,
            Some(&json!({"apiKeyType": "INFERENCE", "description": "e", "expiresAt": past})),
        )
        .await;
        assert_issue(status, &body, json!(["expiresAt"]));
    }
}

async fn update_changes_each_field_and_clears_with_empty_values(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        &json!({
            "apiKeyType": "INFERENCE",
            "description": "before",
            "consumptionLimit": {"usd": 5, "diem": 1, "vcu": 2},
            "limitPeriod": "MONTH",
            "modelPrivacy": "ALL",
            "ipAllowlist": ["10.0.0.0/8"]
        }),
    )
    .await;
    let id = id_of(&created);
    let patch = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            let mut body = body;
            body["id"] = json!(id);
            let (status, updated) =
                venice(app, &app.admin_key, Method::PATCH, KEYS, Some(&body)).await;
            assert_eq!(status, StatusCode::OK, "{body}: {updated}");
            updated["data"].clone()
        }
    };

    let key = patch(json!({"description": "after"})).await;
    assert_eq!(key["description"], "after");
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": 5.0, "diem": 1.0, "vcu": 2.0}),
        "unchanged"
    );

    let key = patch(json!({"limitPeriod": "LIFETIME"})).await;
    assert_eq!(key["limitPeriod"], "LIFETIME");
    assert_eq!(key["consumptionLimits"]["usd"], 5.0);

    // consumptionLimit replaces the limits as a whole and keeps the period.
    let key = patch(json!({"consumptionLimit": {"usd": 2.25}})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": 2.25, "diem": null, "vcu": null})
    );
    assert_eq!(key["limitPeriod"], "LIFETIME");
    let key = patch(json!({"consumptionLimit": {"diem": 1.0}, "limitPeriod": "EPOCH"})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": null, "diem": 1.0, "vcu": null})
    );
    assert_eq!(key["limitPeriod"], Value::Null, "no USD limit, no period");
    let key = patch(json!({"consumptionLimit": {"usd": 4}, "limitPeriod": "EPOCH"})).await;
    assert_eq!(key["limitPeriod"], "EPOCH");
    let key = patch(json!({"consumptionLimit": {}})).await;
    assert_eq!(
        key["consumptionLimits"],
        json!({"usd": null, "diem": null, "vcu": null})
    );

    let key = patch(json!({"modelPrivacy": "PRIVATE_TEXT"})).await;
    assert_eq!(key["modelPrivacy"], "PRIVATE_TEXT");

    let key = patch(json!({"ipAllowlist": ["1.2.3.4", "::1"]})).await;
    assert_eq!(key["ipAllowlist"], json!(["1.2.3.4/32", "::1/128"]));
    let key = patch(json!({"ipAllowlist": []})).await;
    assert_eq!(key["ipAllowlist"], json!([]));

    let year = Utc::now().year_ahead();
    let key = patch(json!({"expiresAt": format!("{year}-06-07")})).await;
    assert_eq!(key["expiresAt"], format!("{year}-06-07T00:00:00.000Z"));
    let key = patch(json!({"expiresAt": ""})).await;
    assert_eq!(key["expiresAt"], Value::Null);

    // The native view agrees.
    let (_, native) = json_of(app.get(&format!("/admin/v1/keys/{id}")).await).await;
    assert_eq!(native["name"], "after");
    assert_eq!(native["budget"], Value::Null);
    assert_eq!(native["ip_allowlist"], Value::Null);
    assert_eq!(native["expires_at"], Value::Null);
}
