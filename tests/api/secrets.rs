//! Secrets never rest anywhere in plain text: not in the SQLite files, not in any
//! PostgreSQL row, not in the server's log output (even at `RUST_LOG=trace`, through
//! either front door).

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate::keys::Token;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{postgres::PgPoolOptions, Row};

use crate::support::backends::backend_tests;
use crate::{
    helpers::{
        id_of, json_of, keys_in, secret_of, secret_part, spawn_app, spawn_serve, Backend, TestApp,
        TestDb,
    },
    proxy_helpers::{FrontDoor, Setup},
};

backend_tests! {
    both: [
        the_store_holds_no_plaintext_secret,
    ],
}

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [server_logs_hold_no_secret_even_at_trace],
    sqlite: [],
}

/// Everything the database holds, as text (PostgreSQL) or raw bytes (SQLite files).
async fn database_contents(app: &TestApp) -> Vec<u8> {
    match app.backend {
        Backend::Sqlite => {
            let files = app.db.sqlite_files();
            assert!(
                !files.is_empty(),
                "no SQLite file in {:?}",
                app.db.dir.path()
            );
            files
                .iter()
                .flat_map(|path| std::fs::read(path).expect("read SQLite file"))
                .collect()
        }
        Backend::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&app.db_url)
                .await
                .expect("connect to the test database");
            let tables: Vec<String> = sqlx::query_scalar(
                "select table_name::text from information_schema.tables
                 where table_schema = 'public' and table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
            .expect("list tables");
            assert!(tables.iter().any(|t| t == "api_key_secret"), "{tables:?}");
            let mut dump = String::new();
            for table in tables {
                let row = sqlx::query(&format!(
                    "select coalesce(string_agg(t::text, E'\\n'), '') from \"{table}\" t"
                ))
                .fetch_one(&pool)
                .await
                .expect("dump table");
                dump.push_str(&row.get::<String, _>(0));
                dump.push('\n');
            }
            pool.close().await;
            dump.into_bytes()
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn the_store_holds_no_plaintext_secret(backend: Backend) {
    // Arrange: keys of both kinds, one rotated with a grace period (two live secrets).
    let app = spawn_app(backend).await;
    let marker = format!("plaintext-check-{}", uuid::Uuid::new_v4().simple());
    let mut secrets = vec![app.admin_key.clone()];
    let inference = app
        .create_key(&json!({ "name": marker, "metadata": { "note": "hello" } }))
        .await;
    secrets.push(secret_of(&inference));
    let (admin_id, admin) = app.create_admin_key("second admin").await;
    secrets.push(admin.clone());
    assert_eq!(app.admin_status_of(&admin).await, StatusCode::OK);
    let (_, rotated) = json_of(
        app.rotate(&admin_id, Some(&json!({ "grace_seconds": 3600 })))
            .await,
    )
    .await;
    secrets.push(secret_of(&rotated));
    assert_eq!(
        app.admin_status_of(&secret_of(&rotated)).await,
        StatusCode::OK
    );
    let (_, _, other) = app.create_workspace_with_admin("elsewhere", None).await;
    secrets.push(other);

    // Act
    let contents = database_contents(&app).await;

    // Assert
    assert!(
        contains(&contents, &marker),
        "the dump does not even hold the key's name; it is not the database"
    );
    assert!(contains(&contents, "$argon2id$"), "no argon2id hash stored");
    for secret in &secrets {
        assert!(!contains(&contents, secret), "a full secret is stored");
        assert!(
            !contains(&contents, secret_part(secret)),
            "the random part of a secret is stored"
        );
    }
    let text = String::from_utf8_lossy(&contents);
    assert!(keys_in(&text).is_empty(), "a well-formed key is stored");
}

async fn server_logs_hold_no_secret_even_at_trace(setup: Setup) {
    // Arrange: the real binary, logging everything.
    let db = TestDb::new(setup.backend).await;
    let bootstrap = Token::generate().expose().to_string();
    let fast_path = if setup.door == FrontDoor::Fast {
        "true"
    } else {
        "false"
    };
    let server = spawn_serve(
        &db,
        &[
            ("RUST_LOG", "trace"),
            ("KEYGATE_BOOTSTRAP_ADMIN_KEY", bootstrap.as_str()),
            ("KEYGATE_HTTP__FAST_PATH", fast_path),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let call = |key: &str, method: Method, path: &str| {
        client.request(method, server.url(path)).bearer_auth(key)
    };
    let mut secrets = vec![bootstrap.clone()];

    // Act: create, use, rotate, refuse and delete keys over HTTP.
    let mut created = Vec::new();
    for body in [
        json!({ "name": "logged inference" }),
        json!({ "name": "logged admin", "kind": "admin" }),
    ] {
        let response = call(&bootstrap, Method::POST, "/admin/v1/keys")
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, key) = json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        secrets.push(secret_of(&key));
        created.push(key);
    }
    let inference = secret_of(&created[0]);
    let admin = secret_of(&created[1]);
    let response = call(&admin, Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = call(&inference, Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = call(
        &bootstrap,
        Method::POST,
        &format!("/admin/v1/keys/{}/rotate", id_of(&created[1])),
    )
    .json(&json!({ "grace_seconds": 60 }))
    .send()
    .await
    .unwrap();
    let (status, rotated) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_admin = secret_of(&rotated);
    secrets.push(new_admin.clone());
    for key in [&admin, &new_admin] {
        let response = call(key, Method::GET, "/admin/v1/keys")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let unknown = Token::generate().expose().to_string();
    secrets.push(unknown.clone());
    // Inference (the fast path's routes): no upstream serves the model, so a known key
    // gets 404 after authentication, an unknown one 401, an admin key 403.
    let chat = json!({ "model": "no-such-model", "messages": [] });
    for (key, status) in [
        (&inference, StatusCode::NOT_FOUND),
        (&unknown, StatusCode::UNAUTHORIZED),
        (&admin, StatusCode::FORBIDDEN),
    ] {
        let response = call(key, Method::POST, "/v1/chat/completions")
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
    }
    let response = client
        .post(server.url("/v1/embeddings"))
        .header("x-api-key", &inference)
        .json(&json!({ "model": "no-such-model", "input": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = call(&unknown, Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client
        .get(server.url("/admin/v1/keys"))
        .header("x-api-key", &new_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = call(
        &bootstrap,
        Method::DELETE,
        &format!("/admin/v1/keys/{}", id_of(&created[0])),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = call(&inference, Method::GET, "/admin/v1/keys")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (stdout, stderr) = server.stop().await;

    // Assert
    assert!(
        stderr.contains("TRACE") && stderr.contains("DEBUG"),
        "the server did not log at trace level:\n{stderr}"
    );
    assert!(
        stderr.contains("authentication refused"),
        "refusals are not logged:\n{stderr}"
    );
    for (name, output) in [("stdout", &stdout), ("stderr", &stderr)] {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "a secret appears in the server's {name}"
            );
            assert!(
                !output.contains(secret_part(secret)),
                "part of a secret appears in the server's {name}"
            );
        }
        assert_eq!(keys_in(output), Vec::<String>::new(), "a key in {name}");
    }
}
