//! Slow clients: a request that started arriving has `http.request_read_timeout_secs` to
//! finish (bodies and heads trickled byte by byte, a head whose body never comes), while
//! requests that arrive in pieces in time are served.

use std::time::Duration;

use serde_json::json;

use super::{chat, post, Answer, Wire, PROMPT};
use crate::proxy_helpers::{chat_body, spawn_proxy_with, Setup, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    sqlite: [
        a_chunked_body_trickled_byte_by_byte_is_cut_off_at_the_read_timeout,
        a_head_whose_body_never_comes_is_cut_off_at_the_read_timeout,
        a_head_trickled_byte_by_byte_is_cut_off_at_the_read_timeout,
        requests_that_arrive_in_pieces_in_time_are_served_and_keep_alive_outlasts_the_read_timeout,
    ],
}

/// The read timeout these tests set (`http.request_read_timeout_secs`), and how much
/// later than it a connection may close (scheduling on a busy test machine).
const READ_TIMEOUT: Duration = Duration::from_secs(1);

const SLACK: Duration = Duration::from_secs(2);

async fn spawn_with_short_read_timeout(setup: Setup) -> TestApp {
    spawn_proxy_with(setup, |config| {
        config.http.request_read_timeout_secs = READ_TIMEOUT.as_secs_f64();
    })
    .await
}

fn assert_cut_off(what: &str, closed_after: Option<Duration>) {
    let closed_after = closed_after.unwrap_or_else(|| panic!("{what}: still open"));
    assert!(
        closed_after >= READ_TIMEOUT.mul_f32(0.9) && closed_after < READ_TIMEOUT + SLACK,
        "{what}: closed after {closed_after:?}"
    );
}

async fn a_chunked_body_trickled_byte_by_byte_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout; chunked bodies always go through hyper.
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;

    // Act: the body, one byte every 200 ms.
    let closed_after = wire
        .trickle_until_closed(
            body.as_bytes(),
            Duration::from_millis(200),
            Duration::from_secs(8),
        )
        .await;

    // Assert
    assert_cut_off("a trickled chunked body", closed_after);
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_head_whose_body_never_comes_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout; one route the router serves, one the fast path does.
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let heads = [
        format!(
            "POST /admin/v1/keys HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            app.admin_key
        ),
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            key.secret
        ),
    ];

    for head in heads {
        // Act: the head and one byte of the body, then nothing.
        let mut wire = Wire::connect(&app).await;
        wire.send(head.as_bytes()).await;
        let closed_after = wire
            .trickle_until_closed(b"", Duration::from_millis(200), Duration::from_secs(8))
            .await;

        // Assert
        assert_cut_off(head.lines().next().unwrap_or_default(), closed_after);
    }
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_head_trickled_byte_by_byte_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout (the keep-alive limit stays 75 s).
    let app = spawn_with_short_read_timeout(setup).await;
    let heads = [
        "GET /admin/v1/keys HTTP/1.1\r\nHost: keygate\r\nX-Slow: abcdefghijklmnopqrstuvwxyz",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nX-Slow: abcdefghijklmnopqrstuvwxyz",
    ];

    for head in heads {
        // Act: the request line at once, then the head one byte every 200 ms.
        let (line, rest) = head.split_at(head.find("\r\n").unwrap_or_default() + 2);
        let mut wire = Wire::connect(&app).await;
        wire.send(line.as_bytes()).await;
        let closed_after = wire
            .trickle_until_closed(
                rest.as_bytes(),
                Duration::from_millis(200),
                Duration::from_secs(8),
            )
            .await;

        // Assert
        assert_cut_off(line.trim_end(), closed_after);
    }
}

async fn requests_that_arrive_in_pieces_in_time_are_served_and_keep_alive_outlasts_the_read_timeout(
    setup: Setup,
) {
    // Arrange: a 1 s read timeout, the keep-alive limit at its default (75 s).
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let chat_request = chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)));
    let create = post(
        "/admin/v1/keys",
        &app.admin_key,
        &json!({ "name": "sent in pieces" }),
        "",
    );
    let mut wire = Wire::connect(&app).await;

    // Act: each request in three pieces 300 ms apart (0.6 s in all), then an idle pause
    // longer than the read timeout before the next.
    let mut answers = Vec::new();
    for request in [&chat_request, &create, &chat_request] {
        let third = request.len() / 3;
        for piece in [
            &request[..third],
            &request[third..2 * third],
            &request[2 * third..],
        ] {
            wire.send(piece).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answers.push(wire.answer().await);
        tokio::time::sleep(READ_TIMEOUT * 2).await;
    }

    // Assert
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [200, 201, 200],
        "{:?}",
        answers.last().map(Answer::text)
    );
    wire.send(&chat_request).await;
    assert_eq!(wire.answer().await.status, 200);
}
