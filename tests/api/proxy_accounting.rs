//! Accounting (DESIGN §3, §6, §7): usage per key·model·minute with exact tokens and cost,
//! the rate-limit event log with its filters, the final flush on shutdown, `/v1/key`, and
//! the OpenAPI document.

use std::{collections::BTreeSet, str::FromStr, time::Duration};

use chrono::{SecondsFormat, Timelike, Utc};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::proxy_helpers::{
    chat_body, cost, eventually, json_body, limit_view, spawn_proxy, support::upstream as mock,
    usd, Setup, PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT, UNPRICED_MODEL,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        usage_is_exact_per_key_model_and_minute,
    ],
    sqlite: [
        every_refusal_is_listed_in_the_rate_limit_events,
        recorded_usage_is_flushed_on_shutdown,
        key_self_service_shows_limits_remaining_and_budget,
        key_self_service_works_without_limits,
        the_openapi_document_lists_the_proxy_routes,
    ],
}

/// Sums of the rows of one model: (requests, input, output, cost).
fn model_totals(rows: &[Value], model: &str) -> (i64, i64, i64, Decimal) {
    rows.iter()
        .filter(|r| r["model"] == model)
        .fold((0, 0, 0, Decimal::ZERO), |acc, r| {
            (
                acc.0 + r["requests"].as_i64().unwrap(),
                acc.1 + r["input_tokens"].as_i64().unwrap(),
                acc.2 + r["output_tokens"].as_i64().unwrap(),
                acc.3 + usd(&r["cost_usd"]),
            )
        })
}

async fn usage_is_exact_per_key_model_and_minute(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let other = app.plain_key().await;

    // Act: mock counts: "one two three" = 6 prompt tokens, "hi" = 4; replies of 5 and 7.
    app.chat_ok(
        &key.secret,
        &chat_body(PRICED_MODEL, "one two three", Some(5)),
    )
    .await;
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    app.chat_ok(&key.secret, &chat_body(UNPRICED_MODEL, "hi", None))
        .await;
    app.chat_ok(&other.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;

    // Assert
    let rows = app.usage_rows(&key.id).await;
    let expected_cost =
        cost(6, 5, PRICED_INPUT, PRICED_OUTPUT) + cost(4, 7, PRICED_INPUT, PRICED_OUTPUT);
    assert_eq!(expected_cost, Decimal::from_str("0.0000087").unwrap());
    assert_eq!(
        model_totals(&rows, PRICED_MODEL),
        (2, 10, 12, expected_cost),
        "{rows:?}"
    );
    assert_eq!(
        model_totals(&rows, UNPRICED_MODEL),
        (1, 4, 7, Decimal::ZERO),
        "{rows:?}"
    );
    assert!(rows.len() <= 4, "one row per model and minute: {rows:?}");
    for row in &rows {
        let start: chrono::DateTime<Utc> = row["start"].as_str().unwrap().parse().unwrap();
        assert_eq!((start.second(), start.nanosecond()), (0, 0), "{row}");
        assert!((Utc::now() - start).num_minutes() <= 2, "{row}");
    }
    // The other key's call is its own.
    let other_rows = app.usage_rows(&other.id).await;
    assert_eq!(
        model_totals(&other_rows, PRICED_MODEL),
        (1, 4, 7, cost(4, 7, PRICED_INPUT, PRICED_OUTPUT))
    );
    // `model` filters; coarser granularities sum the same.
    let from = (Utc::now() - chrono::Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (status, filtered) = app
        .admin_get(&format!(
            "/admin/v1/keys/{}/usage?granularity=minute&from={from}&model={UNPRICED_MODEL}",
            key.id
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{filtered}");
    let filtered = filtered["data"].as_array().unwrap();
    assert!(filtered.iter().all(|r| r["model"] == UNPRICED_MODEL));
    assert_eq!(model_totals(filtered, UNPRICED_MODEL).0, 1);
    for granularity in ["hour", "day"] {
        let (status, body) = app
            .admin_get(&format!(
                "/admin/v1/keys/{}/usage?granularity={granularity}&from={from}",
                key.id
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(
            model_totals(data, PRICED_MODEL),
            (2, 10, 12, expected_cost),
            "{granularity}: {body}"
        );
    }
}

async fn every_refusal_is_listed_in_the_rate_limit_events(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let started = Utc::now() - chrono::Duration::seconds(1);
    let rpm = app.key_with(json!({"limits": {"rpm": 1}})).await;
    let tpm = app.key_with(json!({"limits": {"tpm": 10}})).await;
    let budget = app
        .key_with(json!({"budget": {"limit_usd": 0.000001, "period": "month"}}))
        .await;
    let concurrency = app.key_with(json!({"max_parallel": 0})).await;
    let credits = app.plain_key().await;
    let hi = chat_body(mock::DEFAULT_MODEL, "hi", None);
    let priced = chat_body(PRICED_MODEL, "hi", None);

    // Act: one refusal of each kind.
    app.chat_ok(&rpm.secret, &hi).await;
    assert_eq!(
        app.chat(&rpm.secret, &hi).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let big = chat_body(mock::DEFAULT_MODEL, "hi", Some(50));
    assert_eq!(
        app.chat(&tpm.secret, &big).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.chat_ok(&budget.secret, &priced).await;
    assert_eq!(
        app.chat(&budget.secret, &priced).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(
        app.chat(&concurrency.secret, &hi).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Credits are read through a short cache: wait for the new balance to apply.
    app.set_workspace_credits(Some("0.000001")).await;
    let refused = eventually(Duration::from_secs(10), || async {
        app.chat(&credits.secret, &priced).await.status() == StatusCode::PAYMENT_REQUIRED
    })
    .await;
    assert!(refused, "spent workspace credits never refused a call");
    let ended = Utc::now() + chrono::Duration::seconds(1);

    // Assert: every refusal is listed, newest first.
    let all = app.rate_limit_events("limit=100").await;
    let data = all["data"].as_array().unwrap();
    assert_eq!(all["total"], 5, "{all}");
    let seen: BTreeSet<(String, String, String, String)> = data
        .iter()
        .map(|e| {
            (
                e["key_id"].as_str().unwrap().to_string(),
                e["model"].as_str().unwrap_or_default().to_string(),
                e["limit"].as_str().unwrap().to_string(),
                e["limit_value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let decimal = |v: &str| Decimal::from_str(v).unwrap().normalize().to_string();
    let normalized: BTreeSet<_> = seen
        .into_iter()
        .map(|(k, m, l, v)| {
            let v = if l == "budget" || l == "credits" {
                decimal(&v)
            } else {
                v
            };
            (k, m, l, v)
        })
        .collect();
    let expected: BTreeSet<_> = [
        (&rpm, mock::DEFAULT_MODEL, "rpm", "1"),
        (&tpm, mock::DEFAULT_MODEL, "tpm", "10"),
        (&budget, PRICED_MODEL, "budget", "0.000001"),
        (&concurrency, mock::DEFAULT_MODEL, "concurrency", "0"),
        (&credits, PRICED_MODEL, "credits", "0.000001"),
    ]
    .into_iter()
    .map(|(k, m, l, v)| (k.id.clone(), m.to_string(), l.to_string(), v.to_string()))
    .collect();
    assert_eq!(normalized, expected, "{all}");
    let times: Vec<chrono::DateTime<Utc>> = data
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // key_id filter.
    let one = app.rate_limit_events(&format!("key_id={}", tpm.id)).await;
    assert_eq!(one["total"], 1, "{one}");
    assert_eq!(one["data"][0]["limit"], "tpm");
    let none = app
        .rate_limit_events(&format!("key_id={}", Uuid::now_v7()))
        .await;
    assert_eq!(none["total"], 0, "{none}");

    // from / to.
    let fmt = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let inside = app
        .rate_limit_events(&format!("from={}&to={}", fmt(started), fmt(ended)))
        .await;
    assert_eq!(inside["total"], 5, "{inside}");
    let after = app.rate_limit_events(&format!("from={}", fmt(ended))).await;
    assert_eq!(after["total"], 0, "{after}");
    let before = app.rate_limit_events(&format!("to={}", fmt(started))).await;
    assert_eq!(before["total"], 0, "{before}");

    // Pagination.
    let mut paged = Vec::new();
    for page in 1..=3 {
        let body = app.rate_limit_events(&format!("page={page}&limit=2")).await;
        assert_eq!(body["total"], 5, "{body}");
        assert_eq!(body["page"], page);
        assert_eq!(body["limit"], 2);
        let items = body["data"].as_array().unwrap().clone();
        assert_eq!(items.len(), if page < 3 { 2 } else { 1 }, "{body}");
        paged.extend(items);
    }
    assert_eq!(&paged, data, "pages in order make up the whole list");
}

async fn recorded_usage_is_flushed_on_shutdown(setup: Setup) {
    // Arrange
    let mut app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;

    // Act: shut down right away, as on SIGTERM.
    app.shut_down().await;

    // Assert: a fresh connection to the store sees the call.
    let store = keygate::app::open_store(&app.config).await.unwrap();
    let totals = store
        .key_usage_totals(
            Uuid::parse_str(&key.id).unwrap(),
            chrono::DateTime::UNIX_EPOCH,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (totals.requests, totals.input_tokens, totals.output_tokens),
        (1, 4, 7)
    );
    assert_eq!(
        Decimal::from(totals.cost_pico) / Decimal::from(keygate::money::PICO_PER_USD),
        cost(4, 7, PRICED_INPUT, PRICED_OUTPUT)
    );
}

async fn key_self_service_shows_limits_remaining_and_budget(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({
            "name": "self service",
            "limits": {"rpm": 2, "tpm": 1000},
            "model_limits": [{"model": PRICED_MODEL, "rpm": 3}],
            "budget": {"limit_usd": 1, "period": "day"},
        }))
        .await;
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;

    // Act: wait for the call to settle, then read.
    let settled = eventually(Duration::from_secs(5), || async {
        let info = app.key_info(&key.secret).await;
        usd(&info["budget"]["reserved_usd"]).is_zero()
            && limit_view(&info, "tpm", None)["remaining"].as_i64() >= Some(1000 - 11)
    })
    .await;
    assert!(settled);
    let info = app.key_info(&key.secret).await;

    // Assert
    assert_eq!(info["id"], key.id.as_str());
    assert_eq!(info["name"], "self service");
    assert_eq!(info["status"], "active");
    let rpm = limit_view(&info, "rpm", None);
    assert_eq!(rpm["value"], 2);
    assert_eq!(rpm["remaining"], 1, "{info}");
    let reset = rpm["reset_seconds"].as_f64().unwrap();
    assert!(
        reset > 0.0 && reset <= 30.0,
        "one of 2 rpm refills in 30 s: {info}"
    );
    let resets_at: chrono::DateTime<Utc> = rpm["resets_at"].as_str().unwrap().parse().unwrap();
    assert!(
        resets_at > Utc::now() - chrono::Duration::seconds(1),
        "{info}"
    );
    let tpm = limit_view(&info, "tpm", None);
    assert_eq!(tpm["value"], 1000);
    assert!(
        (989..=1000).contains(&tpm["remaining"].as_i64().unwrap()),
        "{info}"
    );
    let model_rpm = limit_view(&info, "rpm", Some(PRICED_MODEL));
    assert_eq!(model_rpm["value"], 3);
    assert_eq!(model_rpm["remaining"], 2, "{info}");

    let budget = &info["budget"];
    let spent = cost(4, 7, PRICED_INPUT, PRICED_OUTPUT);
    assert_eq!(usd(&budget["limit_usd"]), Decimal::ONE, "{info}");
    assert_eq!(budget["period"], "day");
    assert_eq!(usd(&budget["spent_usd"]), spent, "{info}");
    assert_eq!(
        usd(&budget["remaining_usd"]),
        Decimal::ONE - spent,
        "{info}"
    );
    let period_start: chrono::DateTime<Utc> =
        budget["period_start"].as_str().unwrap().parse().unwrap();
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    assert_eq!(period_start, today, "{info}");
    let resets_at: chrono::DateTime<Utc> = budget["resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(resets_at, today + chrono::Duration::days(1), "{info}");
}

async fn key_self_service_works_without_limits(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;

    // Act
    let (status, info) = json_body(app.get_as(&key.secret, "/v1/key").await).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["id"], key.id.as_str());
    assert_eq!(info["kind"], "inference");
    assert_eq!(info["status"], "active");
    assert_eq!(info["limits"], json!([]));
    assert!(info["budget"].is_null(), "{info}");
    assert!(info["allowed_models"].is_null(), "{info}");
    assert!(
        !info.to_string().contains(&key.secret),
        "/v1/key must not echo the secret"
    );
}

async fn the_openapi_document_lists_the_proxy_routes(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;

    // Act
    let (status, document) = json_body(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/key",
        "/admin/v1/keys/{id}/usage",
        "/admin/v1/rate-limit-events",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI paths"
        );
    }
}
