//! Bad requests around the body: ids, pagination, content types and oversize bodies.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_error, json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        bad_ids_get_400_naming_the_id,
        absurd_pagination_gets_422_naming_the_parameter,
        wrong_content_type_and_oversize_bodies_get_4xx,
    ],
}

async fn bad_ids_get_400_naming_the_id(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let long = "x".repeat(1000);
    let bad_ids = [
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
        "00000000-0000-0000-0000-0000000000001",
        "%00",
        "%E2%82%AC",
        long.as_str(),
    ];

    for id in bad_ids {
        let path = format!("/admin/v1/keys/{id}");
        // Act
        let responses = [
            app.get(&path).await,
            app.patch_json(&path, &json!({ "name": "x" })).await,
            app.delete(&path).await,
            app.rotate(id, None).await,
        ];
        // Assert
        for response in responses {
            let error =
                assert_error(response, StatusCode::BAD_REQUEST, "invalid_id", Some("id")).await;
            assert!(
                error["message"].as_str().unwrap().len() < 300,
                "the message quotes a bounded part of the id: {error}"
            );
        }
    }
}

async fn absurd_pagination_gets_422_naming_the_parameter(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let cases = [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=99999999999", "page"),
        ("page=1000001", "page"),
        ("page=", "page"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-5", "limit"),
        ("limit=1e3", "limit"),
        ("limit=18446744073709551616", "limit"),
        ("limit=ten", "limit"),
        ("page=1&limit=100000", "limit"),
        ("per_page=10", "per_page"),
        ("offset=5", "offset"),
        ("page=1&page=2", "page"),
    ];

    for (query, field) in cases {
        // Act
        let response = app.get(&format!("/admin/v1/keys?{query}")).await;
        // Assert
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "?{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "?{query}: {body}");
        assert_eq!(body["error"]["field"], field, "?{query}: {body}");
    }

    // The largest accepted values are fine.
    let (status, body) = json_of(app.get("/admin/v1/keys?page=1000000&limit=500").await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["total"], 1);
}

async fn wrong_content_type_and_oversize_bodies_get_4xx(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act + Assert: a form post is not JSON.
    let response = app
        .req(Method::POST, "/admin/v1/keys")
        .header("content-type", "text/plain")
        .body(r#"{"name": "a"}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;

    // A body past http.max_body_bytes (4 MiB) is refused with a JSON error.
    let huge = format!(r#"{{"name": "{}"}}"#, "n".repeat(5 * 1024 * 1024));
    let response = app.send_raw(Method::POST, "/admin/v1/keys", &huge).await;
    assert_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        Some("body"),
    )
    .await;

    // Unknown routes and methods answer in the same JSON shape.
    assert_error(
        app.get("/admin/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let response = app.req(Method::PUT, "/admin/v1/keys").send().await.unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}
