//! Budget alerts (issue 15 §2): a key's spend crossing its `alert_thresholds` POSTs a
//! signed `budget.threshold` event to its workspace's webhook, once per threshold and
//! period, across restarts and replicas; failed deliveries are retried; a non-public
//! destination is never called unless `webhooks.allow_private`.
//!
//! Every priced call here costs exactly 0.1 USD: "hi" is 4 prompt tokens for the mock, at
//! 25 000 USD per million input tokens (output free), so a budget of 1 USD crosses 0.5
//! at the 5th call, 0.8 at the 8th and 1.0 at the 10th.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    app::{price, spawn_proxy_with, spawn_replicas, TestApp, TestKey, PRICED_MODEL},
    backends::{backend_tests, Backend, Setup},
    http::{chat_body, json_body},
    webhook::{verify, Delivery, WebhookReceiver},
};

backend_tests! {
    both: [
        each_threshold_is_posted_once_signed_and_never_again,
        a_failing_receiver_gets_the_alert_on_the_third_attempt,
        a_non_public_destination_is_never_called,
    ],
}

/// 0.1 USD per call (see the module docs), webhooks to 127.0.0.1 allowed, quick retries.
fn alerting(config: &mut Config) {
    config.models = vec![price(PRICED_MODEL, "25000", "0")];
    config.webhooks.allow_private = true;
    config.webhooks.retry_initial_secs = 0.05;
}

/// Points a workspace's webhook at `url`; returns the signing secret shown once.
async fn set_webhook(app: &TestApp, workspace_id: &str, url: &str) -> String {
    let (status, ws) = json_body(
        app.patch_json(
            &format!("/admin/v1/workspaces/{workspace_id}"),
            &json!({ "webhook_url": url }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ws}");
    ws["webhook_secret"].as_str().unwrap().to_string()
}

/// A key with a daily budget of 1 USD and these thresholds (in `workspace_id`, if given).
async fn alerted_key(app: &TestApp, thresholds: Value, workspace_id: Option<&str>) -> TestKey {
    let mut body = json!({
        "name": "alerted",
        "budget": {"limit_usd": 1, "period": "day"},
        "alert_thresholds": thresholds,
    });
    if let Some(ws) = workspace_id {
        body["workspace_id"] = json!(ws);
    }
    app.key_with(body).await
}

async fn calls(app: &TestApp, key: &TestKey, n: usize) {
    for _ in 0..n {
        app.chat_ok(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
            .await;
    }
}

/// Polls the audit log until `n` events with `action` exist (at most 20 s); returns them.
async fn audit_events(app: &TestApp, action: &str, n: usize) -> Vec<Value> {
    let path = format!("/admin/v1/audit-events?action={action}&limit=100");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = app.admin_get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let found = page["data"].as_array().unwrap().clone();
        if found.len() >= n {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} `{action}` events expected: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn today() -> String {
    let midnight = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap();
    midnight
        .and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The delivery is signed with `secret` and carries the documented event.
fn assert_alert(delivery: &Delivery, secret: &str, key: &TestKey, threshold: f64, app: &TestApp) {
    verify(secret, delivery).unwrap_or_else(|e| panic!("{e}: {delivery:?}"));
    assert_eq!(delivery.header("content-type"), "application/json");
    let event = delivery.json();
    assert_eq!(event["type"], "budget.threshold", "{event}");
    assert_eq!(event["key_id"], key.id.as_str());
    assert_eq!(event["key_name"], "alerted");
    assert_eq!(event["workspace_id"], app.workspace_id.to_string());
    assert_eq!(event["threshold"], threshold, "{event}");
    assert_eq!(event["limit_usd"], 1.0, "{event}");
    let spent = event["spent_usd"].as_f64().unwrap();
    assert!(
        spent >= threshold && spent < threshold + 0.05,
        "spent {spent} at threshold {threshold}: {event}"
    );
    assert_eq!(event["period_start"], today(), "{event}");
    let at = DateTime::parse_from_rfc3339(event["at"].as_str().unwrap()).unwrap();
    assert!((Utc::now() - at.with_timezone(&Utc)).num_seconds().abs() < 60);
    assert_eq!(
        event.as_object().unwrap().len(),
        9,
        "only the documented fields: {event}"
    );
}

fn thresholds_of(deliveries: &[Delivery]) -> Vec<f64> {
    deliveries
        .iter()
        .map(|d| d.json()["threshold"].as_f64().unwrap())
        .collect()
}

async fn each_threshold_is_posted_once_signed_and_never_again(backend: Backend) {
    // Arrange
    let receiver = WebhookReceiver::start().await;
    let mut app = spawn_proxy_with(backend, alerting).await;
    let secret = set_webhook(&app, &app.workspace_id.to_string(), &receiver.url).await;
    let key = alerted_key(&app, json!([0.5, 0.8, 1.0]), None).await;

    // Act + Assert: 0.5 at the 5th call.
    calls(&app, &key, 5).await;
    let got = receiver.wait_for(1).await;
    assert_alert(&got[0], &secret, &key, 0.5, &app);

    // Two more calls cross nothing; the 8th crosses 0.8, and 0.5 is not sent again.
    calls(&app, &key, 3).await;
    let got = receiver.wait_for(2).await;
    assert_alert(&got[1], &secret, &key, 0.8, &app);

    // A restart forgets nothing: the store holds the claims.
    app.shut_down().await;
    let app = app.spawn_peer(|_| {}).await;
    calls(&app, &key, 1).await;
    calls(&app, &key, 1).await;
    let got = receiver.wait_for(3).await;
    assert_alert(&got[2], &secret, &key, 1.0, &app);
    let refused = app
        .chat(&key.secret, &chat_body(PRICED_MODEL, "hi", None))
        .await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);

    // Each alert was audited once, without the secret or the URL; by then every check of
    // the calls above has run, and nothing was sent twice.
    let sent = audit_events(&app, "budget_alert.sent", 3).await;
    assert_eq!(sent.len(), 3, "{sent:#?}");
    for event in &sent {
        assert_eq!(event["actor"], "keygate");
        assert_eq!(event["target"], format!("key:{}", key.id));
        assert_eq!(event["details"]["attempts"], 1, "{event}");
        let text = event.to_string();
        assert!(
            !text.contains(&secret) && !text.contains(&receiver.url),
            "{text}"
        );
    }
    let got = receiver.deliveries();
    assert_eq!(thresholds_of(&got), [0.5, 0.8, 1.0]);
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|d| d.header("keygate-alert-id")).collect();
    assert_eq!(ids.len(), 3);
}

async fn a_failing_receiver_gets_the_alert_on_the_third_attempt(backend: Backend) {
    // Arrange: a receiver that answers 500 twice.
    let receiver = WebhookReceiver::failing_first(2).await;
    let app = spawn_proxy_with(backend, alerting).await;
    let secret = set_webhook(&app, &app.workspace_id.to_string(), &receiver.url).await;
    let key = alerted_key(&app, json!([0.5]), None).await;

    // Act
    calls(&app, &key, 5).await;

    // Assert: three POSTs of the same alert, each freshly signed; the third accepted.
    let got = receiver.wait_for(3).await;
    let answered: Vec<StatusCode> = got.iter().map(|d| d.answered).collect();
    assert_eq!(
        answered,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::NO_CONTENT
        ]
    );
    for delivery in &got {
        assert_alert(delivery, &secret, &key, 0.5, &app);
        assert_eq!(delivery.body, got[0].body, "the same event every time");
        assert_eq!(
            delivery.header("keygate-alert-id"),
            got[0].header("keygate-alert-id")
        );
    }
    let sent = audit_events(&app, "budget_alert.sent", 1).await;
    assert_eq!(sent[0]["details"]["attempts"], 3, "{sent:#?}");
    assert_eq!(receiver.deliveries().len(), 3, "nothing after the 2xx");
}

async fn a_non_public_destination_is_never_called(backend: Backend) {
    // Arrange: webhooks saved while private addresses were allowed (an IP literal in the
    // default workspace, a name that resolves to loopback in another), then a restart
    // with `allow_private = false` (what a DNS change would also do to a saved name).
    let receiver = WebhookReceiver::start().await;
    let mut app = spawn_proxy_with(backend, alerting).await;
    set_webhook(&app, &app.workspace_id.to_string(), &receiver.url).await;
    let (status, other) = json_body(
        app.post_json(
            "/admin/v1/workspaces",
            &json!({
                "name": "named-host",
                "webhook_url": format!("http://localhost:{}/hook", receiver.port),
            }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let by_ip = alerted_key(&app, json!([0.5]), None).await;
    let by_name = alerted_key(&app, json!([0.5]), Some(other["id"].as_str().unwrap())).await;
    app.shut_down().await;
    let app = app
        .spawn_peer(|config| config.webhooks.allow_private = false)
        .await;

    // Act: both keys cross 0.5.
    calls(&app, &by_ip, 5).await;
    calls(&app, &by_name, 5).await;

    // Assert: both alerts are recorded as refused, and the receiver never heard of them.
    let refused = audit_events(&app, "budget_alert.refused", 2).await;
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for event in &refused {
        let error = event["details"]["error"].as_str().unwrap();
        assert!(error.contains("non-public"), "{event}");
        assert!(
            error.contains("127.0.0.1") || error.contains("::1"),
            "{event}"
        );
    }
    let targets: std::collections::HashSet<&str> = refused
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(format!("key:{}", by_ip.id).as_str()));
    assert!(targets.contains(format!("key:{}", by_name.id).as_str()));
    assert!(
        receiver.deliveries().is_empty(),
        "{:#?}",
        receiver.deliveries()
    );
}

/// Two replicas on one PostgreSQL, both serving the key: each sees the thresholds crossed
/// in the shared store, one claim wins, and every alert arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_alert_once() {
    // Arrange
    let receiver = WebhookReceiver::start().await;
    let replicas = spawn_replicas(2, Setup::from(Backend::Postgres), |_, config| {
        alerting(config)
    })
    .await;
    let first = &replicas[0];
    let secret = set_webhook(first, &first.workspace_id.to_string(), &receiver.url).await;
    let key = alerted_key(first, json!([0.5, 0.8, 1.0]), None).await;

    // Act: ten calls, alternating between the replicas, two at a time.
    for _ in 0..5 {
        futures::future::join(calls(&replicas[0], &key, 1), calls(&replicas[1], &key, 1)).await;
    }

    // Assert
    let sent = audit_events(first, "budget_alert.sent", 3).await;
    assert_eq!(sent.len(), 3, "{sent:#?}");
    let got = receiver.wait_for(3).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let mut thresholds = thresholds_of(&got);
    thresholds.sort_by(f64::total_cmp);
    assert_eq!(thresholds, [0.5, 0.8, 1.0]);
    for delivery in &got {
        verify(&secret, delivery).unwrap();
    }
}
