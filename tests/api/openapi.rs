//! The served `/openapi.json` tells the truth (issue 13 §1 hole 9), checked here on the cases
//! schemathesis found (`tests/openapi/schemathesis.sh` runs it over the whole document in
//! CI): parameters declared where the server reads them, every `$ref` resolving, the
//! answers the layers give documented on every operation they reach, the constraints the
//! server enforces stated, and the values the document allows accepted by the server.

use fancy_regex::Regex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{id_of, json_of, spawn_app, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        numbers_written_as_whole_floats_are_integers,
        usd_amounts_beyond_decimal_precision_are_rounded,
        rotate_takes_a_null_body,
        key_names_are_accepted_exactly_when_the_pattern_matches,
        model_names_are_accepted_exactly_when_the_pattern_matches,
    ],
}

async fn document(app: &TestApp) -> Value {
    let (status, doc) = json_of(
        app.req_anon(Method::GET, "/openapi.json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    doc
}

/// `(method, path, operation)` for every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                all.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    all
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no component schema {name}");
    schema
}

#[tokio::test]
async fn parameters_are_declared_where_the_server_reads_them() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    for (method, path, operation) in operations(&doc) {
        let params = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let templated: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for name in &templated {
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == *name && p["in"] == "path"),
                "{method} {path}: path parameter `{name}` undeclared"
            );
        }
        for param in &params {
            if param["in"] == "path" {
                let name = param["name"].as_str().unwrap();
                assert!(
                    templated.contains(&name),
                    "{method} {path}: `{name}` declared `in: path` but the path has no {{{name}}}"
                );
            }
        }
    }
    // The five operations schemathesis found with query parameters declared `in: path`.
    for (method, path, names) in [
        ("get", "/admin/v1/keys", &["page", "limit"][..]),
        ("get", "/api/v1/api_keys", &["page", "limit"][..]),
        (
            "get",
            "/admin/v1/keys/{id}/usage",
            &["from", "to", "granularity", "model"][..],
        ),
        (
            "get",
            "/admin/v1/rate-limit-events",
            &["key_id", "from", "to", "page", "limit"][..],
        ),
        ("delete", "/api/v1/api_keys", &["id"][..]),
    ] {
        let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
        for name in names {
            let param = params.iter().find(|p| p["name"] == *name).unwrap();
            assert_eq!(param["in"], "query", "{method} {path} `{name}`");
        }
    }
    // The page bounds the server enforces.
    let page = &doc["paths"]["/admin/v1/keys"]["get"]["parameters"][0];
    assert_eq!(page["name"], "page");
    assert_eq!(page["schema"]["minimum"], 1);
    assert_eq!(page["schema"]["maximum"], 1_000_000);
    // Venice's DELETE needs its `id`.
    let id = &doc["paths"]["/api/v1/api_keys"]["delete"]["parameters"][0];
    assert_eq!(id["required"], true);
    // Admin ids are UUIDs; anything else is a 400 `invalid_id`, which is documented.
    for (method, path) in [
        ("get", "/admin/v1/keys/{id}"),
        ("patch", "/admin/v1/keys/{id}"),
        ("delete", "/admin/v1/keys/{id}"),
        ("post", "/admin/v1/keys/{id}/rotate"),
        ("get", "/admin/v1/keys/{id}/usage"),
    ] {
        let operation = &doc["paths"][path][method];
        let id = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "id")
            .unwrap();
        assert_eq!(id["schema"]["format"], "uuid", "{method} {path}");
        assert!(operation["responses"]["400"].is_object(), "{method} {path}");
    }
}

#[tokio::test]
async fn every_reference_resolves() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    fn walk(value: &Value, doc: &Value, seen: &mut usize) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    let pointer = target.strip_prefix('#').expect("local reference");
                    assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
                    *seen += 1;
                }
                map.values().for_each(|v| walk(v, doc, seen));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, doc, seen)),
            _ => {}
        }
    }
    let mut seen = 0;
    walk(&doc, &doc, &mut seen);
    assert!(seen > 50, "only {seen} references found");
    // Security requirements name schemes that exist.
    for (method, path, operation) in operations(&doc) {
        for requirement in operation["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(
                    doc["components"]["securitySchemes"][scheme].is_object(),
                    "{method} {path}: unknown security scheme {scheme}"
                );
            }
        }
    }
}

#[tokio::test]
async fn answers_of_the_layers_are_documented_on_every_operation() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    for (method, path, operation) in operations(&doc) {
        let responses = &operation["responses"];
        let has = |status: &str| responses[status].is_object();
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        if secured {
            for status in ["401", "403", "429"] {
                assert!(has(status), "{method} {path} lacks {status}");
            }
            // Either header carries the key on every route.
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                .collect();
            assert_eq!(schemes, ["bearer", "x_api_key"], "{method} {path}");
        }
        if operation["requestBody"].is_object() {
            for status in ["400", "413"] {
                assert!(has(status), "{method} {path} lacks {status}");
            }
            if !path.starts_with("/v1/") {
                assert!(has("415"), "{method} {path} lacks 415");
            }
        }
        // Every refusal documents its body.
        for (status, response) in responses.as_object().unwrap() {
            if status.starts_with('4') {
                assert!(
                    response["content"]["application/json"]["schema"].is_object(),
                    "{method} {path} {status} has no body schema"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_document_states_what_the_server_enforces() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc = document(&app).await;
    // Venice issue paths hold field names and list indexes.
    let items = &schema(&doc, "Issue")["properties"]["path"]["items"];
    assert_eq!(items["$ref"], "#/components/schemas/PathSegment");
    let alternatives: Vec<Value> = schema(&doc, "PathSegment")["oneOf"]
        .as_array()
        .expect("string or number")
        .iter()
        .map(|a| a["type"].clone())
        .collect();
    assert_eq!(alternatives, [json!("string"), json!("integer")]);
    // `granularity` is documented inline (its component was referenced but missing).
    let usage = &doc["paths"]["/admin/v1/keys/{id}/usage"]["get"]["parameters"];
    let granularity = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "granularity")
        .unwrap();
    assert_eq!(
        granularity["schema"]["enum"],
        json!(["minute", "hour", "day"])
    );
    // `name` and `kind` cannot be cleared: the server refuses `null`, so does the document.
    let patch = &schema(&doc, "KeyPatch")["properties"];
    assert_eq!(patch["name"]["type"], "string");
    assert!(patch["kind"]["oneOf"].is_null(), "{}", patch["kind"]);
    assert_eq!(patch["fit_max_tokens"]["type"], "boolean");
    assert_eq!(
        schema(&doc, "NewKey")["properties"]["fit_max_tokens"]["type"],
        json!(["boolean", "null"])
    );
    assert_eq!(
        schema(&doc, "KeyView")["properties"]["fit_max_tokens"]["type"],
        "boolean"
    );
    for (name, field) in [
        ("NewKey", "name"),
        ("KeyPatch", "name"),
        ("CreateApiKeyRequest", "description"),
        ("AixplainSaveRequest", "name"),
    ] {
        let property = &schema(&doc, name)["properties"][field];
        assert_eq!(property["minLength"], 1, "{name}.{field}");
        assert!(property["pattern"].is_string(), "{name}.{field}");
    }
    // Removing, demoting or expiring the last admin key is refused on every surface.
    for (method, path) in [
        ("patch", "/admin/v1/keys/{id}"),
        ("delete", "/admin/v1/keys/{id}"),
        ("patch", "/api/v1/api_keys"),
        ("delete", "/api/v1/api_keys"),
        ("put", "/sdk/api-keys/{id}"),
        ("delete", "/sdk/api-keys/{id}"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]["409"].is_object(),
            "{method} {path} lacks 409 last_admin_key"
        );
    }
    let limits = &schema(&doc, "Limits")["properties"];
    assert_eq!(limits["rpm"]["maximum"], 1_000_000_000_000_000_u64);
    let new_key = &schema(&doc, "NewKey")["properties"];
    assert_eq!(new_key["max_parallel"]["maximum"], 1_000_000);
    assert_eq!(new_key["allowed_models"]["maxItems"], 1000);
    assert_eq!(new_key["allowed_models"]["items"]["maxLength"], 200);
    assert_eq!(new_key["ip_allowlist"]["maxItems"], 100);
}

/// `2.0` is the integer 2 to JSON Schema, so to the document: the server takes it too.
async fn numbers_written_as_whole_floats_are_integers(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, key) = json_of(
        app.post_json(
            "/admin/v1/keys",
            &json!({"name": "floats", "limits": {"rpm": 5.0, "tpd": 1e3}, "max_parallel": 2.0}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["limits"]["rpm"], 5);
    assert_eq!(key["limits"]["tpd"], 1000);
    assert_eq!(key["max_parallel"], 2);
    let rotated = app
        .rotate(&id_of(&key), Some(&json!({"grace_seconds": 304.0})))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    // A fraction is still refused, naming the field.
    let (status, body) = json_of(
        app.post_json(
            "/admin/v1/keys",
            &json!({"name": "f", "limits": {"rpm": 5.5}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "limits.rpm");
}

async fn usd_amounts_beyond_decimal_precision_are_rounded(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, key) = json_of(
        app.post_json(
            "/admin/v1/keys",
            &json!({"name": "tiny", "budget": {"limit_usd": 8.693357400746478e-206, "period": "day"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["budget"]["limit_usd"], 0.0);
}

/// The rotate body is optional; `null` means the same as no body.
async fn rotate_takes_a_null_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_key(&json!({"name": "rotated"})).await;
    let response = app
        .req(
            Method::POST,
            &format!("/admin/v1/keys/{}/rotate", id_of(&key)),
        )
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The documented name `pattern` and the server's rule (`keys::input::validate_name`)
/// agree, on the edges of both: trimming, length after trimming, control characters.
async fn key_names_are_accepted_exactly_when_the_pattern_matches(backend: Backend) {
    let app = spawn_app(backend).await;
    let doc = document(&app).await;
    let pattern = schema(&doc, "NewKey")["properties"]["name"]["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let pattern = Regex::new(&pattern).unwrap();
    let x200 = "x".repeat(200);
    let names = [
        "a".to_string(),
        " a ".into(),
        "\ta\n".into(),
        String::new(),
        " ".into(),
        "\t\n".into(),
        "a\u{0}b".into(),
        "a\u{1c}b".into(),
        "\u{1c}a".into(),
        "a\u{7f}".into(),
        "a\u{9f}".into(),
        x200.clone(),
        format!("{x200}x"),
        format!(" {x200}  "),
        format!("\u{3000}{x200}\u{2028}"),
        "é".repeat(200),
        "é".repeat(201),
        "😀".repeat(200),
        "\u{a0}a".into(),
        "a\u{85}".into(),
        "a  b".into(),
        "a\tb".into(),
        "ad\u{200b}min".into(),
        "\u{202e}fdp.exe".into(),
        "\u{feff}a".into(),
        "a\u{2066}".into(),
        "a\u{061c}".into(),
    ];
    for name in names {
        let documented = pattern.is_match(&name).unwrap();
        let response = app
            .post_json("/admin/v1/keys", &json!({ "name": name }))
            .await;
        let accepted = match response.status() {
            StatusCode::CREATED => true,
            StatusCode::UNPROCESSABLE_ENTITY => false,
            other => panic!("{name:?}: {other}"),
        };
        assert_eq!(
            accepted,
            documented,
            "{name:?}: the server {} it, the pattern {} it",
            if accepted { "accepts" } else { "refuses" },
            if documented { "allows" } else { "forbids" },
        );
    }
}

/// The same for model names (`allowed_models`, `model_limits[].model`), which are not
/// trimmed: a control character anywhere is refused, white space alone too.
async fn model_names_are_accepted_exactly_when_the_pattern_matches(backend: Backend) {
    let app = spawn_app(backend).await;
    let doc = document(&app).await;
    let items = &schema(&doc, "NewKey")["properties"]["allowed_models"]["items"];
    let pattern = Regex::new(items["pattern"].as_str().unwrap()).unwrap();
    let max = items["maxLength"].as_u64().unwrap() as usize;
    let m200 = "m".repeat(200);
    let models = [
        "gpt-4o-mini".to_string(),
        " gpt ".into(),
        " ".into(),
        "\u{3000}".into(),
        "gpt\n".into(),
        "\tgpt".into(),
        "g\u{0}pt".into(),
        "g\u{200b}pt".into(),
        "openai/gpt-4o".into(),
        m200.clone(),
        format!("{m200}m"),
    ];
    for model in models {
        let documented =
            !model.is_empty() && model.chars().count() <= max && pattern.is_match(&model).unwrap();
        let response = app
            .post_json(
                "/admin/v1/keys",
                &json!({ "name": "m", "allowed_models": [model] }),
            )
            .await;
        let accepted = match response.status() {
            StatusCode::CREATED => true,
            StatusCode::UNPROCESSABLE_ENTITY => false,
            other => panic!("{model:?}: {other}"),
        };
        assert_eq!(accepted, documented, "{model:?}");
    }
}
