//! One connection over its life: pipelined requests answered in order, a move to the router
//! and back, HTTP/1.0, `Connection: close`, idle and busy keep-alive, draining at shutdown.

use std::time::Duration;

use serde_json::json;

use super::{chat, get, post, reply_of, Wire, PROMPT};
use crate::proxy_helpers::{
    chat_body, spawn_proxy, spawn_proxy_with, stream_body, support::upstream as mock, Setup,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    sqlite: [
        pipelined_requests_are_answered_in_order_on_one_connection,
        a_connection_moves_to_the_router_and_back_to_inference_without_a_hitch,
        http_1_0_requests_are_answered_and_the_connection_closed,
        connection_close_is_honoured,
        shutdown_finishes_a_stream_in_flight_and_closes_idle_connections,
        idle_connections_close_after_the_keep_alive_timeout_and_busy_ones_stay,
    ],
}

async fn pipelined_requests_are_answered_in_order_on_one_connection(setup: Setup) {
    // Arrange: three requests asking for replies of different lengths.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut wire = Wire::connect(&app).await;
    let mut burst = Vec::new();
    for words in [3, 1, 5] {
        burst.extend(chat(
            &key.secret,
            &chat_body("gpt-4o-mini", PROMPT, Some(words)),
        ));
    }

    // Act: all three in one write.
    wire.send(&burst).await;
    let answers = [
        wire.answer().await,
        wire.answer().await,
        wire.answer().await,
    ];

    // Assert
    let replies: Vec<String> = answers.iter().map(reply_of).collect();
    assert_eq!(
        replies,
        ["Hello there this", "Hello", "Hello there this is a"]
    );
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.header("x-request-id").is_some());
        // The upstream sends its own `date`; an answer carries one (RFC 9110 §5.3: a
        // field that is not a list appears once).
        assert_eq!(answer.header_count("date"), 1, "{:?}", answer.headers);
        assert_eq!(answer.header("connection"), None);
    }
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .filter_map(|a| a.header("x-request-id"))
        .collect();
    assert_eq!(ids.len(), 3, "each answer has its own request id");
    assert_eq!(app.mock.request_count(), 3);
}

async fn a_connection_moves_to_the_router_and_back_to_inference_without_a_hitch(setup: Setup) {
    // Arrange: a key with an rpm limit, so every /v1 answer carries rate-limit headers.
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({ "limits": { "rpm": 100 } })).await;
    let mut wire = Wire::connect(&app).await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(2));

    // Act: inference, then the model list (served by the router), then inference again on
    // the same connection, and a request the router refuses.
    wire.send(&chat(&key.secret, &body)).await;
    let first = wire.answer().await;
    wire.send(&get("/v1/models", &key.secret)).await;
    let models = wire.answer().await;
    wire.send(&chat(&key.secret, &body)).await;
    let second = wire.answer().await;
    wire.send(&get("/admin/v1/keys", &key.secret)).await;
    let admin = wire.answer().await;

    // Assert
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(models.status, 200, "{}", models.text());
    assert!(models.json()["data"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(reply_of(&first), reply_of(&second));
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("98"));
    assert_eq!(
        admin.status,
        403,
        "an inference key on the admin API: {}",
        admin.text()
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 2);
}

async fn http_1_0_requests_are_answered_and_the_connection_closed(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();
    let mut wire = Wire::connect(&app).await;

    // Act
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let answer = wire.answer().await;

    // Assert
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(reply_of(&answer), "Hello");
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn connection_close_is_honoured(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut wire = Wire::connect(&app).await;

    // Act
    wire.send(&post(
        "/v1/chat/completions",
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
        "Connection: close\r\n",
    ))
    .await;
    let answer = wire.answer().await;

    // Assert
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn shutdown_finishes_a_stream_in_flight_and_closes_idle_connections(setup: Setup) {
    // Arrange: an idle keep-alive connection, and a stream that takes ~1.2 s.
    let mut app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut idle = Wire::connect(&app).await;
    idle.send(&chat(
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
    ))
    .await;
    assert_eq!(idle.answer().await.status, 200);
    let mut streaming = Wire::connect(&app).await;
    streaming
        .send(&chat(
            &key.secret,
            &stream_body(&format!("{}:200", mock::MODEL_SLOW_STREAM), PROMPT, None),
        ))
        .await;
    // Wait until the stream has started before shutting down.
    while !streaming.read.windows(4).any(|w| w == b"data") {
        assert!(streaming.fill().await);
    }

    // Act
    let (_, answer, idle_closed) = tokio::join!(
        app.shut_down(),
        streaming.answer(),
        idle.closed_within(Duration::from_secs(10)),
    );

    // Assert: the stream ran to its end, the idle connection was closed.
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\" reply\""), "{text}");
    assert!(
        idle_closed,
        "an idle connection stayed open through shutdown"
    );
}

async fn idle_connections_close_after_the_keep_alive_timeout_and_busy_ones_stay(setup: Setup) {
    // Arrange: a 1 s idle limit.
    let app = spawn_proxy_with(setup, |config| config.http.keep_alive_idle_secs = 1.0).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1));
    let mut idle_fast = Wire::connect(&app).await;
    idle_fast.send(&chat(&key.secret, &body)).await;
    assert_eq!(idle_fast.answer().await.status, 200);
    let mut idle_router = Wire::connect(&app).await;
    idle_router.send(&get("/v1/models", &key.secret)).await;
    assert_eq!(idle_router.answer().await.status, 200);
    let mut busy = Wire::connect(&app).await;

    // Act: `busy` sends a request every 0.4 s for 2.4 s, well past the idle limit …
    let started = std::time::Instant::now();
    for _ in 0..6 {
        busy.send(&chat(&key.secret, &body)).await;
        assert_eq!(
            busy.answer().await.status,
            200,
            "a busy connection was closed"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Assert: … and stays open, while the idle ones were closed.
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(idle_fast.closed_within(Duration::from_secs(3)).await);
    assert!(idle_router.closed_within(Duration::from_secs(3)).await);
    busy.send(&chat(&key.secret, &body)).await;
    assert_eq!(busy.answer().await.status, 200);
    // Idle again: closed after about a second.
    let idle_since = std::time::Instant::now();
    assert!(busy.closed_within(Duration::from_secs(5)).await);
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}
