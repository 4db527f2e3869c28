//! The rest of the surface: `/v2/models/{id}` and the aiXplain routes in `/openapi.json`.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::aix_get;
use crate::helpers::{json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        v2_models_answers_the_path_as_id,
        openapi_lists_the_aixplain_routes,
    ],
}

async fn v2_models_answers_the_path_as_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, inference) = app.create_inference_key("inference").await;
    for key in [&app.admin_key, &inference] {
        for (path, id) in [
            (
                "/v2/models/openai%2Fgpt-4o-mini%2Fopenai",
                "openai/gpt-4o-mini/openai",
            ),
            ("/v2/models/openai/gpt-4o-mini", "openai/gpt-4o-mini"),
            ("/v2/models/plain-id", "plain-id"),
        ] {
            let (status, body) = aix_get(&app, key, path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!(body, json!({ "id": id }));
        }
    }
}

async fn openapi_lists_the_aixplain_routes(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, doc) = json_of(
        app.req_anon(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for (path, methods) in [
        ("/sdk/api-keys", &["get", "post"][..]),
        ("/sdk/api-keys/{id}", &["get", "put", "delete"][..]),
        ("/sdk/api-keys/{id}/usage-limits", &["get"][..]),
        ("/sdk/api-keys/usage-limits", &["get"][..]),
        ("/v2/models/{path}", &["get"][..]),
    ] {
        for method in methods {
            let operation = &doc["paths"][path][method];
            assert!(
                operation.is_object(),
                "{method} {path} missing from /openapi.json"
            );
            assert_eq!(operation["tags"], json!(["aixplain"]), "{method} {path}");
        }
    }
    assert!(doc["components"]["schemas"]["AixplainKey"].is_object());
    assert!(doc["components"]["securitySchemes"]["x_api_key"].is_object());
}
