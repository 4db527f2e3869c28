//! PostgreSQL goes away for a while under steady traffic (the connections through a
//! [`PgProxy`] are cut and refused, `KEYGATE_TEST_OUTAGE_SECS`, default 20 s, as issue 13
//! asks) and comes back. Cached keys keep being served, `/readyz` follows the store,
//! everything that needs the store answers a documented 503 (never 500), and afterwards
//! the usage rows add up to exactly the requests answered 200.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    str::FromStr,
    time::{Duration, Instant},
};

use chrono::DateTime;
use keygate::{
    keys::{input::NewKey, Caller, CallerRole},
    store::{AuditEvent, Workspace},
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;

use crate::{
    load::{Request, Sample, Traffic},
    pg_proxy::PgProxy,
    support::{
        app::{spawn_proxy_with, TestApp, TestKey, PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT},
        backends::{Backend, FrontDoor, Setup},
        db::pg_admin_url,
        http::{assert_openai_error, chat_body, cost, json_body},
        upstream,
    },
};

/// How long the store stays away: `KEYGATE_TEST_OUTAGE_SECS`, default 20 (issue 13).
fn outage() -> Duration {
    let secs = std::env::var("KEYGATE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs.max(8))
}

/// The shared PostgreSQL server's address (from `KEYGATE_TEST_PG_URL`).
pub fn pg_server() -> SocketAddr {
    let url = url::Url::parse(&pg_admin_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    (host.as_str(), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .unwrap()
        .find(SocketAddr::is_ipv4)
        .expect("an IPv4 address for PostgreSQL")
}

/// keygate on PostgreSQL through `proxy`; also returns the direct URL of its database.
pub async fn spawn_behind(proxy: &PgProxy) -> (TestApp, String) {
    let mut direct = String::new();
    let app = spawn_proxy_with(
        Setup {
            backend: Backend::Postgres,
            door: FrontDoor::Fast,
        },
        |config| {
            direct = config.database_url.clone();
            config.database_url = proxy.url_for(&direct);
        },
    )
    .await;
    (app, direct)
}

/// Requests, input and output tokens and cost stored for a key, read straight from the
/// database (not through keygate).
pub async fn stored_usage(db_url: &str, key_id: &str) -> (i64, i64, i64, i64) {
    let store = keygate::store::connect(db_url).await.unwrap();
    let totals = store
        .key_usage_totals(Uuid::parse_str(key_id).unwrap(), DateTime::UNIX_EPOCH, None)
        .await
        .unwrap();
    (
        totals.requests,
        totals.input_tokens,
        totals.output_tokens,
        totals.cost_pico,
    )
}

/// An inference key in a new workspace granted `credits_usd`.
async fn key_with_credits(app: &TestApp, name: &str, credits_usd: &str) -> TestKey {
    let now = keygate::clock::now();
    let workspace = Workspace {
        id: Uuid::now_v7(),
        name: name.to_string(),
        key_cap: None,
        credits_usd: Some(Decimal::from_str(credits_usd).unwrap()),
        webhook_url: None,
        webhook_secret: None,
        created_at: now,
        updated_at: now,
    };
    let audit = AuditEvent {
        id: Uuid::now_v7(),
        workspace_id: workspace.id,
        actor: "test".into(),
        action: "workspace.create".into(),
        target: format!("workspace:{}", workspace.id),
        at: now,
        source: None,
        details: json!({}),
    };
    app.state
        .store
        .create_workspace(&workspace, &audit)
        .await
        .unwrap();
    let caller = Caller {
        workspace_id: workspace.id,
        actor: "test".into(),
        source: None,
        role: CallerRole::Admin,
        reach: keygate::keys::Reach::Own,
    };
    let created = app
        .state
        .keys
        .create(
            &caller,
            NewKey {
                name: name.to_string(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    TestKey {
        id: created.key.id.to_string(),
        secret: created.secret.expose().to_string(),
    }
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn readyz(app: &TestApp) -> StatusCode {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `/readyz` until it answers `want` (panics after `within`).
async fn wait_ready(app: &TestApp, want: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if readyz(app).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz did not say {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts an admin-shaped 503 `store_unavailable` (`{"error": {"code", "message"}}`).
async fn assert_admin_unavailable(response: reqwest::Response, what: &str) {
    let (status, body) = json_body(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_traffic_serves_cached_keys_and_loses_no_usage() {
    let outage = outage();
    let proxy = PgProxy::start(pg_server()).await;
    let (mut app, direct_url) = spawn_behind(&proxy).await;
    let body = chat_body(PRICED_MODEL, "hello there", None);

    // Before the outage: the steady key, a key in a workspace whose credits were read
    // (used once), are cached. The budget key and the other credits key are cached by
    // `GET /v1/models` (no budget or credits read); the last key was never used.
    let steady = app.plain_key().await;
    let budgeted = app
        .key_with(json!({ "budget": { "limit_usd": 10, "period": "month" } }))
        .await;
    let credits_known = key_with_credits(&app, "credits read", "100").await;
    let credits_unknown = key_with_credits(&app, "credits never read", "100").await;
    let never_used = app.plain_key().await;
    app.chat_ok(&credits_known.secret, &body).await;
    for key in [&budgeted, &credits_unknown] {
        assert_eq!(
            get_as(&app, &key.secret, "/v1/models").await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(readyz(&app).await, StatusCode::OK);

    let traffic = Traffic::start(
        Request {
            url: app.url("/v1/chat/completions"),
            key: steady.secret.clone(),
            body: body.clone(),
            headers: Vec::new(),
        },
        4,
        Duration::from_millis(20),
        false,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The store goes away.
    proxy.cut();
    let cut = Instant::now();
    let noticed = wait_ready(
        &app,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;

    // Whatever needs the store now: a documented 503, never a 500.
    let refused = app.chat(&never_used.secret, &body).await;
    assert_openai_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    let refused = app.chat(&budgeted.secret, &body).await;
    assert_openai_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "budget_unavailable",
    )
    .await;
    let refused = app.chat(&credits_unknown.secret, &body).await;
    assert_openai_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "budget_unavailable",
    )
    .await;
    let refused = get_as(&app, &budgeted.secret, "/v1/key").await;
    assert_openai_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    assert_admin_unavailable(
        get_as(&app, &app.admin_key, "/admin/v1/keys").await,
        "list keys",
    )
    .await;
    let created = app
        .client
        .post(app.url("/admin/v1/keys"))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "name": "during the outage" }))
        .send()
        .await
        .unwrap();
    assert_admin_unavailable(created, "create a key").await;
    let usage_path = format!("/admin/v1/keys/{}/usage", steady.id);
    assert_admin_unavailable(get_as(&app, &app.admin_key, &usage_path).await, "usage").await;
    for path in ["/api/v1/api_keys", "/sdk/api-keys"] {
        let status = get_as(&app, &app.admin_key, path).await.status();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    // Credits read before the outage still stand, like a cached key.
    let (status, answer) = json_body(app.chat(&credits_known.secret, &body).await).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let credits_known_ok = 2;

    let back_at = cut + outage;
    tokio::time::sleep(back_at.saturating_duration_since(Instant::now())).await;
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    proxy.restore();
    let restored = Instant::now();
    let recovered = wait_ready(&app, StatusCode::OK, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = traffic.stop().await;

    // After: everything works again.
    assert_eq!(
        get_as(&app, &app.admin_key, "/admin/v1/keys")
            .await
            .status(),
        StatusCode::OK
    );
    app.chat_ok(&never_used.secret, &body).await;
    app.chat_ok(&budgeted.secret, &body).await;

    // Every request of the cached key was answered 200, before, during and after.
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    assert!(
        failed.is_empty(),
        "not 200: {:?}",
        &failed[..failed.len().min(5)]
    );
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= cut && s.ended <= restored)
        .collect();
    assert!(
        during.len() >= 50,
        "only {} requests during the outage",
        during.len()
    );
    let slowest_at_all = during.iter().map(|s| s.latency()).max().unwrap();
    // Once the outage is known (the store's circuit open), cached keys wait for nothing.
    let settled = cut + Duration::from_secs(7);
    let slowest = during
        .iter()
        .filter(|s| s.started >= settled)
        .map(|s| s.latency())
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_millis(1500),
        "a cached key's request took {slowest:?} during the outage"
    );

    // Nothing lost, nothing twice: the final flush on shutdown, then the rows.
    app.shut_down().await;
    let answered = samples.len() as i64;
    let expected = upstream::expected_usage(&body);
    let (input, output) = (
        expected.prompt_tokens as i64,
        expected.completion_tokens as i64,
    );
    let (requests, input_tokens, output_tokens, cost_pico) =
        stored_usage(&direct_url, &steady.id).await;
    eprintln!(
        "store outage of {outage:?}: /readyz said 503 after {noticed:?} and 200 {recovered:?} after the store was back; {answered} requests answered 200 ({} during the outage, slowest {slowest_at_all:?} while the outage was found out, {slowest:?} after); usage rows: {requests} requests, {input_tokens} + {output_tokens} tokens",
        during.len()
    );
    assert_eq!(requests, answered);
    assert_eq!(
        (input_tokens, output_tokens),
        (answered * input, answered * output)
    );
    let unit_cost = cost(input, output, PRICED_INPUT, PRICED_OUTPUT);
    assert_eq!(
        Decimal::from(cost_pico) / Decimal::from(1_000_000_000_000_i64),
        unit_cost * Decimal::from(answered)
    );
    let (credits_requests, ..) = stored_usage(&direct_url, &credits_known.id).await;
    assert_eq!(credits_requests, credits_known_ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_calls_fail_fast_while_postgres_is_away_and_work_once_it_is_back() {
    let proxy = PgProxy::start(pg_server()).await;
    let (app, _) = spawn_behind(&proxy).await;
    let store = &app.state.store;
    store.default_workspace().await.unwrap();

    proxy.cut();
    // The first call finds out (the pool waits for its acquire timeout)…
    let first = store.default_workspace().await.unwrap_err();
    assert!(first.is_unavailable(), "{first}");
    // …the next ones do not wait.
    for _ in 0..20 {
        let started = Instant::now();
        let err = store.default_workspace().await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "a call took {:?} while the store was known away",
            started.elapsed()
        );
    }

    proxy.restore();
    let restored = Instant::now();
    while store.default_workspace().await.is_err() {
        assert!(
            restored.elapsed() < Duration::from_secs(10),
            "the store was not found again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "store reachable again {:?} after the proxy was restored",
        restored.elapsed()
    );
}
