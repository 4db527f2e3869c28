//! Budgets and workspace credits on the proxy (DESIGN §3–4): 402 once spent, unpriced
//! models never refused, and no overshoot beyond one request's estimate under concurrency.

use std::str::FromStr;

use keygate::proxy::tokens::BodyKind;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;

use crate::proxy_helpers::{
    assert_openai_error, chat_body, cost, json_body, keygate_prompt_tokens, spawn_proxy, usd,
    Setup, PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT, UNPRICED_MODEL,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        concurrent_requests_cannot_overshoot_a_budget,
    ],
    sqlite: [
        a_spent_budget_gets_402,
        spent_workspace_credits_get_402,
        unpriced_models_are_never_refused_by_a_budget,
    ],
}

/// "hi" is 4 prompt tokens for the mock, and it answers 7: 4.8e-6 USD at 0.15 / 0.60.
fn one_call_cost() -> Decimal {
    cost(4, 7, PRICED_INPUT, PRICED_OUTPUT)
}

async fn a_spent_budget_gets_402(setup: Setup) {
    // Arrange: a budget smaller than one call.
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({"budget": {"limit_usd": 0.000001, "period": "lifetime"}}))
        .await;
    let body = chat_body(PRICED_MODEL, "hi", None);

    // Act
    let first = app.chat(&key.secret, &body).await.status();
    let refused = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(
        first,
        StatusCode::OK,
        "admitted while the budget had money left"
    );
    let error = assert_openai_error(refused, StatusCode::PAYMENT_REQUIRED, "budget_exceeded").await;
    assert!(
        error["message"].as_str().unwrap().contains("budget"),
        "{error}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
    let info = app.key_info(&key.secret).await;
    assert_eq!(usd(&info["budget"]["spent_usd"]), one_call_cost(), "{info}");
    assert_eq!(
        usd(&info["budget"]["remaining_usd"]),
        Decimal::ZERO,
        "{info}"
    );
    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(events["total"], 1, "{events}");
    assert_eq!(events["data"][0]["limit"], "budget");
    assert_eq!(events["data"][0]["model"], PRICED_MODEL);
    assert_eq!(
        Decimal::from_str(events["data"][0]["limit_value"].as_str().unwrap()).unwrap(),
        Decimal::from_str("0.000001").unwrap(),
        "{events}"
    );
}

async fn spent_workspace_credits_get_402(setup: Setup) {
    // Arrange: credits smaller than one call, on a key without a budget or limits.
    let app = spawn_proxy(setup).await;
    app.set_workspace_credits(Some("0.000001")).await;
    let key = app.plain_key().await;
    let body = chat_body(PRICED_MODEL, "hi", None);

    // Act
    let first = app.chat(&key.secret, &body).await.status();
    let refused = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(first, StatusCode::OK, "admitted while credits were left");
    assert_openai_error(
        refused,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_credits",
    )
    .await;
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 1);
    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(events["total"], 1, "{events}");
    assert_eq!(events["data"][0]["limit"], "credits");
    assert_eq!(
        Decimal::from_str(events["data"][0]["limit_value"].as_str().unwrap()).unwrap(),
        Decimal::from_str("0.000001").unwrap(),
        "{events}"
    );
    // An unpriced model costs nothing, so spent credits do not stop it.
    let free = app
        .chat(&key.secret, &chat_body(UNPRICED_MODEL, "hi", None))
        .await;
    assert_eq!(free.status(), StatusCode::OK);
}

async fn unpriced_models_are_never_refused_by_a_budget(setup: Setup) {
    // Arrange: a budget spent on a priced model.
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({"budget": {"limit_usd": 0.000001, "period": "day"}}))
        .await;
    app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    let refused = app
        .chat(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await
        .status();

    // Act
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let body = chat_body(UNPRICED_MODEL, "a longer prompt than before", Some(100));
        statuses.push(app.chat(&key.secret, &body).await.status());
    }

    // Assert
    assert_eq!(refused, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(statuses, vec![StatusCode::OK; 3]);
    let rows = app.usage_rows(&key.id).await;
    let unpriced: Vec<_> = rows
        .iter()
        .filter(|r| r["model"] == UNPRICED_MODEL)
        .collect();
    assert!(!unpriced.is_empty(), "{rows:?}");
    assert!(
        unpriced.iter().all(|r| usd(&r["cost_usd"]).is_zero()),
        "{rows:?}"
    );
}

async fn concurrent_requests_cannot_overshoot_a_budget(setup: Setup) {
    // Arrange: a budget of about 20 calls, and 48 calls at once.
    const REQUESTS: usize = 48;
    let app = spawn_proxy(setup).await;
    let limit = Decimal::from_str("0.0001").unwrap();
    let key = app
        .key_with(json!({"budget": {"limit_usd": 0.0001, "period": "lifetime"}}))
        .await;
    let body = chat_body(PRICED_MODEL, "hi", Some(7));
    let estimate = cost(
        keygate_prompt_tokens(BodyKind::Chat, &body),
        7,
        PRICED_INPUT,
        PRICED_OUTPUT,
    );
    assert!(estimate >= one_call_cost());

    // Act
    let responses = futures::future::join_all(
        (0..REQUESTS).map(|_| async { json_body(app.chat(&key.secret, &body).await).await }),
    )
    .await;

    // Assert
    let admitted = responses
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count() as i64;
    for (status, body) in &responses {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::PAYMENT_REQUIRED, "{body}");
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
        }
    }
    assert!(admitted >= 1 && admitted < REQUESTS as i64, "{admitted}");
    let usage = app.settled_usage(&key.id, admitted).await;
    assert_eq!(usage.requests, admitted);
    assert_eq!(usage.cost_usd, one_call_cost() * Decimal::from(admitted));
    assert!(
        usage.cost_usd <= limit + estimate,
        "spent {} > limit {limit} + one estimate {estimate}",
        usage.cost_usd
    );
    let events = app
        .rate_limit_events(&format!("key_id={}&limit=500", key.id))
        .await;
    assert_eq!(events["total"], REQUESTS as i64 - admitted, "{events}");
    assert!(events["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["limit"] == "budget"));
}
