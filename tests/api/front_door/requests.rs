//! Requests the fast path does not simply read: chunked and `Expect: 100-continue` bodies,
//! oversize bodies and malformed heads, a refused request whose body never came, a client
//! that leaves early, headers in any case.

use std::time::Duration;

use serde_json::json;

use super::{chat, post, reply_of, Wire, PROMPT};
use crate::proxy_helpers::{
    chat_body, spawn_proxy, spawn_proxy_with, support::upstream as mock, Setup,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    sqlite: [
        chunked_and_expect_continue_bodies_are_served,
        oversize_bodies_get_413_and_malformed_heads_get_400,
        a_refused_request_whose_body_never_came_closes_the_connection,
        a_client_that_leaves_while_the_upstream_thinks_frees_its_slot_at_once,
        headers_are_stripped_whatever_their_case_and_the_request_id_travels,
    ],
}

async fn chunked_and_expect_continue_bodies_are_served(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(2)).to_string();
    let (front, back) = body.split_at(body.len() / 2);

    // Act: a chunked body in two chunks, then a body sent only after `100 Continue`.
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{front}\r\n{:x}\r\n{back}\r\n0\r\n\r\n",
            key.secret,
            front.len(),
            back.len()
        )
        .as_bytes(),
    )
    .await;
    let chunked = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let interim = wire.answer().await;
    wire.send(body.as_bytes()).await;
    let expected = wire.answer().await;

    // Assert
    assert_eq!(chunked.status, 200, "{}", chunked.text());
    assert_eq!(reply_of(&chunked), "Hello there");
    assert_eq!(interim.status, 100);
    assert_eq!(expected.status, 200, "{}", expected.text());
    assert_eq!(reply_of(&expected), "Hello there");
}

async fn oversize_bodies_get_413_and_malformed_heads_get_400(setup: Setup) {
    // Arrange: a 1 KiB body limit.
    let app = spawn_proxy_with(setup, |config| config.http.max_body_bytes = 1024).await;
    let key = app.plain_key().await;
    let big = chat_body("gpt-4o-mini", &"word ".repeat(400), None);

    // Act
    let mut wire = Wire::connect(&app).await;
    wire.send(&chat(&key.secret, &big)).await;
    let too_large = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n")
        .await;
    let conflicting = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await;
    let malformed = wire.answer().await;

    // Assert
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert_eq!(too_large.json()["error"]["code"], "body_too_large");
    assert_eq!(conflicting.status, 400, "{}", conflicting.text());
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_refused_request_whose_body_never_came_closes_the_connection(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let mut wire = Wire::connect(&app).await;

    // Act: a bad key, and only part of the declared body.
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer kg_nope\r\nContent-Length: 500\r\n\r\n{\"model\":")
        .await;
    let answer = wire.answer().await;

    // Assert: refused at once (no wait for the body), then closed rather than kept in an
    // unknown state.
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "invalid_api_key");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn a_client_that_leaves_while_the_upstream_thinks_frees_its_slot_at_once(setup: Setup) {
    // Arrange: one request at a time; the first one's upstream takes 5 s to answer.
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({ "max_parallel": 1 })).await;
    let slow = chat_body(
        &format!("{}:5000", mock::MODEL_SLOW_FIRST_BYTE),
        PROMPT,
        None,
    );
    let mut leaving = Wire::connect(&app).await;
    leaving.send(&chat(&key.secret, &slow)).await;
    let upstream_has_it = app
        .mock
        .wait_until(Duration::from_secs(5), |m| m.request_count() == 1)
        .await;
    assert!(
        upstream_has_it,
        "the slow request never reached the upstream"
    );
    let busy = app
        .chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)))
        .await;
    assert_eq!(
        busy.status(),
        429,
        "the slot is taken while the first waits"
    );

    // Act: the first client goes away.
    drop(leaving);

    // Assert: its slot comes back long before the upstream would have answered.
    let started = std::time::Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let response = app
            .chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)))
            .await;
        status = response.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 200,
        "the slot was not released when the client left"
    );
}

async fn headers_are_stripped_whatever_their_case_and_the_request_id_travels(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();

    // Act: the fast path keeps the client's spelling of header names.
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHOST: keygate\r\nAuthorization: Bearer {}\r\nX-API-KEY: {}\r\nCookie: session=abc\r\nX-Forwarded-For: 203.0.113.9\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nOpenAI-Organization: org-x\r\nX-Client-Trace: trace-123\r\nContent-Length: {}\r\n\r\n{body}",
            key.secret,
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let generated = wire.answer().await;
    wire.send(&post(
        "/v1/chat/completions",
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
        "X-Request-Id: client-chosen-id\r\n",
    ))
    .await;
    let chosen = wire.answer().await;

    // Assert
    assert_eq!(generated.status, 200, "{}", generated.text());
    let requests = app.mock.requests_to("/v1/chat/completions");
    let first = &requests[0];
    for name in [
        "authorization",
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "keep-alive",
        "te",
        "openai-organization",
    ] {
        assert!(
            first.header(name).is_none(),
            "`{name}` was forwarded: {:?}",
            first.headers
        );
    }
    assert_eq!(first.header("x-client-trace"), Some("trace-123"));
    assert_eq!(first.header_all("host").len(), 1, "{:?}", first.headers);
    // The id keygate made is the one it answers with and the one the upstream saw.
    let id = generated.header("x-request-id").expect("an id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(first.header("x-request-id"), Some(id));
    assert_eq!(chosen.header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(requests[1].header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(requests[1].header_all("x-request-id").len(), 1);
}
