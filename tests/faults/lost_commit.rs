//! A usage flush whose commit went through while its answer was lost (the connection
//! broke right after `COMMIT` reached PostgreSQL): keygate cannot tell it from a failed
//! one, retries it, and must not count it twice. Same for refused requests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    pg_proxy::PgProxy,
    store_outage::{pg_server, spawn_behind, stored_usage},
    support::{
        app::{TestApp, PRICED_MODEL},
        http::{chat_body, json_body},
    },
};

/// Waits until the proxy has swallowed `n` commit answers (panics after 10 s).
async fn wait_lost(proxy: &PgProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.lost_commits() < n {
        assert!(Instant::now() < deadline, "no commit answer was lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn chat_status(app: &TestApp, key: &str) -> StatusCode {
    let body = chat_body(PRICED_MODEL, "hello there", None);
    json_body(app.chat(key, &body).await).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_flush_whose_commit_answer_is_lost_is_counted_once() {
    let proxy = PgProxy::start(pg_server()).await;
    let (mut app, direct_url) = spawn_behind(&proxy).await;
    let key = app.plain_key().await;

    for _ in 0..10 {
        assert_eq!(chat_status(&app, &key.secret).await, StatusCode::OK);
    }
    proxy.lose_next_commit_reply("usage_minute");
    wait_lost(&proxy, 1).await;
    for _ in 0..5 {
        assert_eq!(chat_status(&app, &key.secret).await, StatusCode::OK);
    }
    app.shut_down().await;

    let (requests, ..) = stored_usage(&direct_url, &key.id).await;
    assert_eq!(requests, 15, "10 before the lost answer, 5 after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_whose_commit_answer_is_lost_are_stored_once_and_later_ones_too() {
    let proxy = PgProxy::start(pg_server()).await;
    let (mut app, direct_url) = spawn_behind(&proxy).await;
    let key = app.key_with(json!({ "limits": { "rpm": 1 } })).await;

    assert_eq!(chat_status(&app, &key.secret).await, StatusCode::OK);
    proxy.lose_next_commit_reply("rate_limit_event");
    assert_eq!(
        chat_status(&app, &key.secret).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    wait_lost(&proxy, 1).await;
    assert_eq!(
        chat_status(&app, &key.secret).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.shut_down().await;

    let store = keygate::store::connect(&direct_url).await.unwrap();
    let events = store
        .list_rate_limit_events(
            app.workspace_id,
            &keygate::store::EventFilter::default(),
            keygate::store::Page { page: 1, limit: 50 },
        )
        .await
        .unwrap();
    assert_eq!(events.total, 2, "{:?}", events.items);
    let (requests, ..) = stored_usage(&direct_url, &key.id).await;
    assert_eq!(requests, 1);
}
