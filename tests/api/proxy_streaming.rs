//! Streaming (DESIGN §5): SSE passed through as it arrives, the usage chunk asked for on
//! the client's behalf and hidden unless the client asked, and settlement exactly once on
//! every path (normal end, upstream break, client disconnect, idle timeout, no usage),
//! with the `max_parallel` slot released on each.

use std::time::Duration;

use keygate::proxy::tokens::BodyKind;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::proxy_helpers::{
    assert_openai_error, chat_body, json_body, keygate_prompt_tokens, keygate_text_tokens,
    read_sse, spawn_proxy, spawn_proxy_with, stream_body, stream_text, support::upstream as mock,
    Event, Setup, SseReader,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        the_usage_chunk_is_shown_when_asked_and_settles_once,
        a_client_disconnect_cancels_upstream_and_charges_what_was_produced_once,
    ],
    sqlite: [
        events_are_passed_through_as_they_arrive_and_the_usage_chunk_is_hidden,
        an_upstream_break_mid_stream_ends_with_an_error_event_and_charges_once,
        an_idle_upstream_ends_with_a_timeout_event_and_charges_once,
        answers_without_upstream_usage_are_counted_with_the_tokenizer,
        the_max_parallel_slot_is_released_on_every_path,
        asking_for_usage_keeps_the_rest_of_the_body_and_refuses_a_bad_stream_options,
    ],
}

const PROMPT: &str = "tell me a short story please";

fn error_event(events: &[Event]) -> Option<Value> {
    events
        .iter()
        .filter_map(Event::json)
        .find(|chunk| chunk.get("error").is_some())
}

/// Whether an event is the usage-only chunk (`choices: []` plus `usage`).
fn is_usage_chunk(event: &Event) -> bool {
    event.json().is_some_and(|chunk| {
        chunk["usage"].is_object() && chunk["choices"].as_array().is_some_and(Vec::is_empty)
    })
}

async fn events_are_passed_through_as_they_arrive_and_the_usage_chunk_is_hidden(setup: Setup) {
    // Arrange: 400 ms between events, so the whole answer takes about 4 s.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = stream_body("mock-slow-stream:400", PROMPT, None);

    // Act
    let response = app.chat(&key.secret, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(crate::proxy_helpers::header(&response, "content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    let total = reader.elapsed();

    // Assert: the first word arrived long before the end.
    let first_text = events
        .iter()
        .find(|e| !e.text().is_empty())
        .expect("a content chunk");
    assert!(
        first_text.at + Duration::from_secs(2) < total,
        "first content at {:?}, end at {total:?}: buffered?",
        first_text.at
    );
    assert_eq!(stream_text(&events), mock::reply_text(7));
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    // keygate asked for usage, and hid the extra chunk from a client that did not.
    let upstream = app.mock.requests_to("/v1/chat/completions");
    assert!(upstream[0].include_usage(), "{:?}", upstream[0].body);
    assert!(!events.iter().any(is_usage_chunk), "{events:?}");
    assert!(events
        .iter()
        .filter_map(Event::json)
        .all(|chunk| chunk["usage"].is_null()));
    // The hidden chunk's numbers were recorded.
    let expected = mock::expected_usage(&body);
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(
        (usage.requests, usage.input_tokens, usage.output_tokens),
        (
            1,
            expected.prompt_tokens as i64,
            expected.completion_tokens as i64
        )
    );
}

async fn the_usage_chunk_is_shown_when_asked_and_settles_once(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"limits": {"tpm": 10000}})).await;
    let body = stream_body(mock::DEFAULT_MODEL, PROMPT, Some(true));

    // Act
    let events = read_sse(app.chat(&key.secret, &body).await).await;

    // Assert
    let expected = mock::expected_usage(&body);
    let usage_chunks: Vec<Value> = events
        .iter()
        .filter(|e| is_usage_chunk(e))
        .filter_map(Event::json)
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{events:?}");
    assert_eq!(
        usage_chunks[0]["usage"]["prompt_tokens"],
        expected.prompt_tokens
    );
    assert_eq!(
        usage_chunks[0]["usage"]["completion_tokens"],
        expected.completion_tokens
    );
    assert_eq!(stream_text(&events), mock::reply_text(7));
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(
        (usage.requests, usage.input_tokens, usage.output_tokens),
        (
            1,
            expected.prompt_tokens as i64,
            expected.completion_tokens as i64
        )
    );
    // The token bucket was settled with the same numbers.
    let used = (expected.prompt_tokens + expected.completion_tokens) as i64;
    let left = app.remaining(&key.secret, "tpm", None).await;
    assert!((10000 - used..=10000 - used + 20).contains(&left), "{left}");
}

async fn an_upstream_break_mid_stream_ends_with_an_error_event_and_charges_once(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = stream_body(mock::MODEL_DROP_MID_STREAM, PROMPT, None);

    // Act
    let response = app.chat(&key.secret, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = read_sse(response).await;

    // Assert
    assert_eq!(stream_text(&events), "Hello there");
    let error = error_event(&events).expect("an error event");
    assert_eq!(error["error"]["code"], "upstream_error", "{error}");
    assert!(error["error"]["message"].is_string());
    assert_ne!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(
        usage.input_tokens,
        keygate_prompt_tokens(BodyKind::Chat, &body)
    );
    assert_eq!(usage.output_tokens, keygate_text_tokens("Hello there"));
    assert!(usage.output_tokens >= 1);
}

async fn a_client_disconnect_cancels_upstream_and_charges_what_was_produced_once(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = stream_body("mock-slow-stream:300", PROMPT, None);
    let response = app.chat(&key.secret, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = SseReader::new(response);
    let first = reader.next().await.expect("role chunk");
    let second = reader.next().await.expect("first word");
    assert_eq!(format!("{}{}", first.text(), second.text()), "Hello");

    // Act: the client goes away mid-answer.
    drop(reader);

    // Assert: the upstream call is cancelled …
    let cancelled = app
        .mock
        .wait_until(Duration::from_secs(5), |m| {
            m.cancelled_streams() == 1 && m.active_streams() == 0
        })
        .await;
    assert!(
        cancelled,
        "cancelled {}, active {}, completed {}",
        app.mock.cancelled_streams(),
        app.mock.active_streams(),
        app.mock.completed_streams()
    );
    // … and what was produced is charged, once.
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(
        usage.input_tokens,
        keygate_prompt_tokens(BodyKind::Chat, &body)
    );
    assert!(
        (1..=6).contains(&usage.output_tokens),
        "{} output tokens",
        usage.output_tokens
    );
    assert_eq!(app.mock.completed_streams(), 0);
}

async fn an_idle_upstream_ends_with_a_timeout_event_and_charges_once(setup: Setup) {
    // Arrange: the mock stalls for 30 s after two words.
    let app = spawn_proxy_with(setup, |config| {
        config.proxy.idle_timeout_secs = 0.5;
    })
    .await;
    let key = app.plain_key().await;
    let body = stream_body(mock::MODEL_STALL_MID_STREAM, PROMPT, None);

    // Act
    let response = app.chat(&key.secret, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;

    // Assert
    assert!(
        reader.elapsed() < Duration::from_secs(10),
        "{:?}",
        reader.elapsed()
    );
    assert_eq!(stream_text(&events), "Hello there");
    let error = error_event(&events).expect("an error event");
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    let usage = app.settled_usage(&key.id, 1).await;
    assert_eq!(usage.requests, 1);
    assert_eq!(
        usage.input_tokens,
        keygate_prompt_tokens(BodyKind::Chat, &body)
    );
    assert_eq!(usage.output_tokens, keygate_text_tokens("Hello there"));
    let cancelled = app
        .mock
        .wait_until(Duration::from_secs(5), |m| m.active_streams() == 0)
        .await;
    assert!(cancelled, "the stalled upstream call was left open");
}

async fn answers_without_upstream_usage_are_counted_with_the_tokenizer(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let streamed = stream_body(mock::MODEL_NO_USAGE, PROMPT, Some(true));
    let whole = chat_body(mock::MODEL_NO_USAGE, PROMPT, None);

    // Act
    let events = read_sse(app.chat(&key.secret, &streamed).await).await;
    let answer = app.chat_ok(&key.secret, &whole).await;

    // Assert
    assert_eq!(stream_text(&events), mock::reply_text(7));
    assert!(answer.get("usage").is_none(), "{answer}");
    let reply_tokens = keygate_text_tokens(&mock::reply_text(7));
    assert!(reply_tokens >= 1);
    let usage = app.settled_usage(&key.id, 2).await;
    assert_eq!(usage.requests, 2);
    assert_eq!(
        usage.input_tokens,
        keygate_prompt_tokens(BodyKind::Chat, &streamed)
            + keygate_prompt_tokens(BodyKind::Chat, &whole)
    );
    assert_eq!(usage.output_tokens, 2 * reply_tokens);
}

async fn the_max_parallel_slot_is_released_on_every_path(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"max_parallel": 1})).await;
    let quick = chat_body(mock::DEFAULT_MODEL, "hi", None);
    let slow = app
        .chat(
            &key.secret,
            &stream_body("mock-slow-stream:300", PROMPT, None),
        )
        .await;
    assert_eq!(slow.status(), StatusCode::OK);
    let mut reader = SseReader::new(slow);
    reader.next().await.expect("first event");

    // Act / Assert: a second request while the stream is open.
    let second = app.chat(&key.secret, &quick).await;
    let error =
        assert_openai_error(second, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded").await;
    assert!(
        error["message"].as_str().unwrap().contains("concurrency"),
        "{error}"
    );

    // Released after a client disconnect.
    drop(reader);
    let cancelled = app
        .mock
        .wait_until(Duration::from_secs(5), |m| m.cancelled_streams() == 1)
        .await;
    assert!(cancelled);
    app.chat_ok(&key.secret, &quick).await;

    // Released after an upstream error answer.
    let (status, _) = json_body(
        app.chat(&key.secret, &chat_body(mock::MODEL_ERROR_500, "hi", None))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    app.chat_ok(&key.secret, &quick).await;

    // Released after an upstream break mid-stream.
    let events = read_sse(
        app.chat(
            &key.secret,
            &stream_body(mock::MODEL_DROP_MID_STREAM, PROMPT, None),
        )
        .await,
    )
    .await;
    assert!(error_event(&events).is_some());
    app.chat_ok(&key.secret, &quick).await;

    // Released after an unreachable-upstream style failure (dropped connection).
    let (status, _) = json_body(
        app.chat(
            &key.secret,
            &chat_body(mock::MODEL_DROP_CONNECTION, "hi", None),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    app.chat_ok(&key.secret, &quick).await;

    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(events["total"], 1, "{events}");
    assert_eq!(events["data"][0]["limit"], "concurrency");
    assert_eq!(events["data"][0]["limit_value"], "1");
}

async fn asking_for_usage_keeps_the_rest_of_the_body_and_refuses_a_bad_stream_options(
    setup: Setup,
) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    // Spacing and member order a client chose, no `stream_options`.
    let plain = format!(
        "{{ \"model\" : \"{}\",\n \"messages\": [{{\"role\":\"user\",\"content\":\"{PROMPT}\"}}], \"stream\": true, \"user\": \"u-1\" }}",
        mock::DEFAULT_MODEL
    );
    let mut with_options = stream_body(mock::DEFAULT_MODEL, PROMPT, Some(false));
    with_options["stream_options"]["x_vendor_flag"] = json!(7);
    let mut bad_options = stream_body(mock::DEFAULT_MODEL, PROMPT, None);
    bad_options["stream_options"] = json!(5);

    // Act
    let plain_events = read_sse(
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .header("content-type", "application/json")
            .body(plain.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let option_events = read_sse(app.chat(&key.secret, &with_options).await).await;
    let refused = app.chat(&key.secret, &bad_options).await;

    // Assert: the upstream was asked for usage each time, with everything else as sent …
    let upstream = app.mock.requests_to("/v1/chat/completions");
    assert_eq!(upstream.len(), 2, "the bad body never reached the upstream");
    let mut expected: Value = serde_json::from_str(&plain).unwrap();
    expected["stream_options"] = json!({ "include_usage": true });
    assert_eq!(upstream[0].body.as_ref(), Some(&expected));
    let raw = String::from_utf8_lossy(&upstream[0].raw_body);
    assert!(raw.ends_with(&plain[1..]), "{raw}");
    let mut expected = with_options.clone();
    expected["stream_options"]["include_usage"] = json!(true);
    assert_eq!(upstream[1].body.as_ref(), Some(&expected));
    // … and neither client saw the usage chunk it did not ask for.
    for events in [&plain_events, &option_events] {
        assert_eq!(stream_text(events), mock::reply_text(7));
        assert!(!events.iter().any(is_usage_chunk), "{events:?}");
    }
    let error = assert_openai_error(refused, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(error["param"], "stream_options", "{error}");
}
