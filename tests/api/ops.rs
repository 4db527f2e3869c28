//! Unauthenticated operational routes: health, readiness, the OpenAPI document and the
//! offline reference pages.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};

use crate::helpers::{json_of, spawn_app, Backend};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        healthz_answers_ok_without_a_key,
        readyz_answers_ready_when_the_store_is_migrated,
        openapi_document_lists_the_admin_paths,
        docs_page_works_offline,
        every_response_carries_a_request_id,
    ],
}

async fn healthz_answers_ok_without_a_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let response = app.req_anon(Method::GET, "/healthz").send().await.unwrap();

    // Assert
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

async fn readyz_answers_ready_when_the_store_is_migrated(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let response = app.req_anon(Method::GET, "/readyz").send().await.unwrap();

    // Assert
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
}

async fn openapi_document_lists_the_admin_paths(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let response = app
        .req_anon(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();

    // Assert
    let (status, doc) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/admin/v1/keys", &["get", "post"][..]),
        ("/admin/v1/keys/{id}", &["get", "patch", "delete"][..]),
        ("/admin/v1/keys/{id}/rotate", &["post"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["KeyView"].is_object());
    assert!(doc["components"]["schemas"]["KeyView"]["properties"]["secret"].is_null());
    assert!(doc["components"]["schemas"]["KeyWithSecretView"].is_object());
}

/// `src="…"` and `href="…"` values of an HTML page.
fn asset_refs(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=", "href="] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            if let Some(end) = rest[1..].find(quote) {
                refs.push(rest[1..1 + end].to_string());
            }
        }
    }
    refs
}

async fn docs_page_works_offline(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act: `/docs` (following any redirect) without a key.
    let response = app.req_anon(Method::GET, "/docs").send().await.unwrap();

    // Assert: HTML whose scripts and styles the binary serves itself.
    assert_eq!(response.status(), StatusCode::OK);
    let page_url = response.url().clone();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await.unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");
    for cdn in ["unpkg", "jsdelivr", "cdnjs", "googleapis", "cloudflare"] {
        assert!(
            !html.contains(cdn),
            "the docs page loads from a CDN ({cdn}):\n{html}"
        );
    }
    let refs = asset_refs(&html);
    let scripts = refs.iter().filter(|r| r.ends_with(".js")).count();
    let styles = refs.iter().filter(|r| r.ends_with(".css")).count();
    assert!(
        scripts >= 1 && styles >= 1,
        "no script or style on the page: {refs:?}"
    );
    for reference in &refs {
        let url = page_url.join(reference).unwrap();
        assert_eq!(
            url.host_str(),
            page_url.host_str(),
            "asset `{reference}` is not served by keygate"
        );
        assert_eq!(url.port(), page_url.port(), "asset `{reference}`");
        let asset = app.client.get(url.clone()).send().await.unwrap();
        assert_eq!(asset.status(), StatusCode::OK, "asset {url}");
        let body = asset.text().await.unwrap();
        assert!(!body.is_empty(), "asset {url} is empty");
        if reference.contains("initializer") {
            // The initializer points the UI at our own document.
            assert!(body.contains("/openapi.json"), "{body}");
            for cdn in ["unpkg", "jsdelivr", "cdnjs"] {
                assert!(!body.contains(cdn), "{url} loads from a CDN");
            }
        }
    }
}

async fn every_response_carries_a_request_id(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;

    // Act
    let generated = app.get("/admin/v1/keys").await;
    let refused = app
        .req_anon(Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    let echoed = app
        .req_anon(Method::GET, "/healthz")
        .header("x-request-id", "test-request-42")
        .send()
        .await
        .unwrap();

    // Assert
    for response in [&generated, &refused] {
        let id = response.headers().get("x-request-id");
        assert!(
            id.is_some_and(|v| !v.is_empty()),
            "{:?}",
            response.headers()
        );
    }
    assert_eq!(echoed.headers()["x-request-id"], "test-request-42");
}
