//! `GET /metrics` (issue 12 §4): the operator's admin key on the main port, no key on
//! `metrics.listen`; exact counts of requests, tokens, cost and refusals for this app's
//! own traffic (each app has its own series, so a before/after difference is exact);
//! and label values that never carry a key, a key id or a raw path.

use reqwest::{header, Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::proxy_helpers::{
    chat_body, cost, json_body, spawn_proxy, spawn_proxy_with, Setup, TestApp, PRICED_INPUT,
    PRICED_MODEL, PRICED_OUTPUT,
};
use crate::support::{backends::backend_tests, metrics::Exposition};

backend_tests! {
    doors: both,
    both: [
        metrics_need_the_operators_admin_key,
        proxied_requests_tokens_and_cost_are_counted_exactly,
    ],
    sqlite: [
        a_rate_limit_refusal_is_counted_by_its_limit,
        no_label_carries_a_key_a_key_id_or_a_raw_path,
        metrics_listen_serves_without_a_key_until_shutdown,
        metrics_off_answers_404_naming_the_setting,
    ],
}

const CHAT: &str = "/v1/chat/completions";

/// `/metrics` with the bootstrap (operator) key, parsed and validated.
async fn scrape(app: &TestApp) -> Exposition {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    exposition(response).await
}

async fn exposition(response: reqwest::Response) -> Exposition {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    Exposition::parse(&text).unwrap_or_else(|why| panic!("{why}\n{text}"))
}

fn requests(scrape: &Exposition, route: &str, status: &str, model: Option<&str>) -> f64 {
    let mut labels = vec![("route", route), ("status", status)];
    labels.extend(model.map(|m| ("model", m)));
    scrape.value("keygate_requests_total", &labels)
}

fn cost_usd(scrape: &Exposition, model: &str) -> Decimal {
    let sample = scrape
        .sample("keygate_cost_usd_total", &[("model", model)])
        .expect("a cost series per configured model");
    sample.text.parse().unwrap()
}

async fn metrics_need_the_operators_admin_key(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let inference = app.plain_key().await;
    let (_, _, workspace_admin) = app.create_workspace_with_admin("metrics-ws", None).await;

    // Act
    let anonymous = app.req_anon(Method::GET, "/metrics").send().await.unwrap();
    let with_inference_key = app.get_as(&inference.secret, "/metrics").await;
    let with_workspace_admin = app.get_as(&workspace_admin, "/metrics").await;
    let with_x_api_key = app
        .req_anon(Method::GET, "/metrics")
        .header("x-api-key", &app.admin_key)
        .send()
        .await
        .unwrap();
    let operator = app.get("/metrics").await;

    // Assert
    let (status, body) = json_body(anonymous).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = json_body(with_inference_key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "inference_key_not_for_admin");
    let (status, body) = json_body(with_workspace_admin).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(with_x_api_key.status(), StatusCode::OK);
    assert_eq!(operator.status(), StatusCode::OK);
    let scrape = exposition(operator).await;
    let backend = [("backend", app.store().backend())];
    assert!(scrape.value("keygate_store_pool_max_connections", &backend) >= 1.0);
    assert!(
        scrape
            .sample("keygate_store_pool_connections", &backend)
            .is_some(),
        "pool size for {backend:?}"
    );
    assert_eq!(
        scrape.value("keygate_limiter_backend", &[("backend", "memory")]),
        1.0
    );
    // The refusals above went through the router's counter with their route.
    assert_eq!(requests(&scrape, "/metrics", "401", None), 1.0);
    assert_eq!(requests(&scrape, "/metrics", "403", None), 2.0);
}

async fn proxied_requests_tokens_and_cost_are_counted_exactly(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let before = scrape(&app).await;

    // Act
    let (mut input, mut output) = (0_i64, 0_i64);
    for i in 0..5 {
        let answer = app
            .chat_ok(
                &key.secret,
                &chat_body(PRICED_MODEL, &"word ".repeat(i + 1), None),
            )
            .await;
        input += answer["usage"]["prompt_tokens"].as_i64().unwrap();
        output += answer["usage"]["completion_tokens"].as_i64().unwrap();
    }
    let unknown = app
        .chat(
            &key.secret,
            &chat_body("a-model-nobody-configured", "hi", None),
        )
        .await;
    let after = scrape(&app).await;

    // Assert
    assert_eq!(unknown.status(), StatusCode::OK);
    let model = Some(PRICED_MODEL);
    assert_eq!(
        requests(&after, CHAT, "200", model) - requests(&before, CHAT, "200", model),
        5.0
    );
    assert_eq!(
        requests(&after, CHAT, "200", Some("other"))
            - requests(&before, CHAT, "200", Some("other")),
        1.0
    );
    let tokens = |scrape: &Exposition, kind| {
        scrape.value(
            "keygate_tokens_total",
            &[("model", PRICED_MODEL), ("type", kind)],
        )
    };
    assert_eq!(
        tokens(&after, "input") - tokens(&before, "input"),
        input as f64
    );
    assert_eq!(
        tokens(&after, "output") - tokens(&before, "output"),
        output as f64
    );
    assert_eq!(
        cost_usd(&after, PRICED_MODEL) - cost_usd(&before, PRICED_MODEL),
        cost(input, output, PRICED_INPUT, PRICED_OUTPUT)
    );
    let upstream = [("upstream", "mock"), ("model", PRICED_MODEL)];
    for histogram in [
        "keygate_upstream_ttfb_seconds_count",
        "keygate_upstream_duration_seconds_count",
    ] {
        assert_eq!(
            after.value(histogram, &upstream) - before.value(histogram, &upstream),
            5.0,
            "{histogram}"
        );
    }
    assert_eq!(after.value("keygate_requests_in_flight", &[]), 0.0);
    assert!(after.value("keygate_key_cache_hits_total", &[]) >= 5.0);
}

async fn a_rate_limit_refusal_is_counted_by_its_limit(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"limits": {"rpm": 1}})).await;
    let body = chat_body(PRICED_MODEL, "hi", None);
    let before = scrape(&app).await;

    // Act
    let first = app.chat(&key.secret, &body).await.status();
    let second = app.chat(&key.secret, &body).await.status();
    let after = scrape(&app).await;

    // Assert
    assert_eq!(
        (first, second),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    let refusals =
        |scrape: &Exposition, limit| scrape.value("keygate_refusals_total", &[("limit", limit)]);
    assert_eq!(refusals(&after, "rpm") - refusals(&before, "rpm"), 1.0);
    for other in ["rpd", "tpm", "tpd", "budget", "credits", "concurrency"] {
        assert_eq!(refusals(&after, other), refusals(&before, other), "{other}");
    }
    let model = Some(PRICED_MODEL);
    assert_eq!(
        requests(&after, CHAT, "429", model) - requests(&before, CHAT, "429", model),
        1.0
    );
}

async fn no_label_carries_a_key_a_key_id_or_a_raw_path(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let (other_admin_id, other_admin) = app.create_admin_key("second admin").await;
    let made_up = format!("kg_{}", "x".repeat(60));

    // Act: inference with a good and a bad key, admin calls naming key ids in the path.
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let refused = app
        .chat(&made_up, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let listed = app
        .get_as(&other_admin, &format!("/admin/v1/keys/{}", key.id))
        .await;
    let missing = app
        .get(&format!("/admin/v1/keys/{}", uuid::Uuid::new_v4()))
        .await;
    let unrouted = app.get(&format!("/no/such/{}", key.secret)).await;
    let response = app.get("/metrics").await;
    let text = response.text().await.unwrap();

    // Assert
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(unrouted.status(), StatusCode::NOT_FOUND);
    let scrape = Exposition::parse(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
    for secret in [&key.secret, &other_admin, &app.admin_key, &made_up] {
        assert!(!text.contains(secret.as_str()), "a key secret in /metrics");
    }
    for id in [&key.id, &other_admin_id, &app.admin_key_id.to_string()] {
        assert!(!text.contains(id.as_str()), "a key id in /metrics");
    }
    assert!(!text.contains("kg_") && !text.contains("kg-"), "{text}");
    assert_eq!(
        requests(&scrape, "/admin/v1/keys/{id}", "200", None),
        1.0,
        "the route template, not the path"
    );
    assert_eq!(requests(&scrape, "/admin/v1/keys/{id}", "404", None), 1.0);
    assert_eq!(requests(&scrape, "unmatched", "404", None), 1.0);
    assert_eq!(requests(&scrape, CHAT, "401", None), 1.0);
    for sample in &scrape.samples {
        for value in sample.labels.values() {
            assert!(!value.contains("/no/such"), "raw path in {sample:?}");
        }
    }
}

async fn metrics_listen_serves_without_a_key_until_shutdown(setup: Setup) {
    // Arrange
    let mut app = spawn_proxy_with(setup, |config| {
        config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let key = app.plain_key().await;
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let address = app
        .metrics_address
        .clone()
        .expect("metrics.listen is bound");

    // Act
    let open = app
        .client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap();
    let main_port = app.req_anon(Method::GET, "/metrics").send().await.unwrap();
    let elsewhere = app
        .client
        .get(format!("{address}/admin/v1/keys"))
        .send()
        .await
        .unwrap();
    app.shut_down().await;
    let after_shutdown = app.client.get(format!("{address}/metrics")).send().await;

    // Assert
    assert_eq!(open.status(), StatusCode::OK);
    let scrape = exposition(open).await;
    assert_eq!(requests(&scrape, CHAT, "200", Some(PRICED_MODEL)), 1.0);
    assert_eq!(main_port.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    assert!(
        after_shutdown.is_err(),
        "the metrics listener stops with the app"
    );
}

async fn metrics_off_answers_404_naming_the_setting(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| config.metrics.enabled = false).await;
    let key = app.plain_key().await;

    // Act
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let response = app.get("/metrics").await;

    // Assert
    let (status, body): (StatusCode, Value) = json_body(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.to_string().contains("metrics.enabled"),
        "names the setting: {body}"
    );
}

#[test]
fn the_parser_reads_templates_escapes_and_histograms() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\n\
        a_total{route=\"/keys/{id}\",m=\"x\\\"y\\\\z\"} 3\n\
        # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    let parsed = Exposition::parse(text).unwrap();
    assert_eq!(
        parsed.value("a_total", &[("route", "/keys/{id}"), ("m", "x\"y\\z")]),
        3.0
    );
    assert_eq!(parsed.value("h_count", &[]), 2.0);
}

#[test]
fn the_parser_refuses_what_prometheus_refuses() {
    for bad in [
        "a_total 1\n",
        "# TYPE a_total counter\na_total{x=1} 1\n",
        "# TYPE a_total counter\na_total{x=\"1\" 1\n",
        "# TYPE a_total counter\na_total one\n",
        "# TYPE a counter\na 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
        "# TYPE g gauge\ng 1\ng 2\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "{bad:?}");
    }
}
