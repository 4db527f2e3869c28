//! The behaviour switches: no usage, errors, slow and stalled answers, streams and
//! connections dropped, clients that leave.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::{client, next_event, post, sse_json};
use crate::support::upstream::*;

#[tokio::test]
async fn no_usage_model() {
    let mock = MockUpstream::start().await;
    let body = chat_request(MODEL_NO_USAGE, "hi", false);
    let v: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert!(v.get("usage").is_none(), "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], reply_text(7));

    let mut body = chat_request(MODEL_NO_USAGE, "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&mock, "/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_json(&text);
    assert_eq!(chunks.len(), 9);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{text}");
    assert!(chunks
        .iter()
        .all(|c| !c["choices"].as_array().unwrap().is_empty()));

    let v: Value = post(
        &mock,
        "/completions",
        &json!({"model": MODEL_NO_USAGE, "prompt": "x"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(v.get("usage").is_none());
    let v: Value = post(
        &mock,
        "/embeddings",
        &json!({"model": MODEL_NO_USAGE, "input": "x"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(v.get("usage").is_none());
}

#[tokio::test]
async fn error_models() {
    let mock = MockUpstream::start().await;
    for stream in [false, true] {
        let r = post(
            &mock,
            "/chat/completions",
            &chat_request(MODEL_ERROR_400, "x", stream),
        )
        .await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.text().await.unwrap(), ERROR_400_BODY);
        let v: Value = serde_json::from_str(ERROR_400_BODY).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "bad thing", "type": "invalid_request_error", "param": null, "code": "bad_request"}})
        );

        let r = post(
            &mock,
            "/chat/completions",
            &chat_request(MODEL_ERROR_429, "x", stream),
        )
        .await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["message"].is_string());
        assert!(v["error"].get("param").is_some());

        for (model, status) in [(MODEL_ERROR_500, 500), (MODEL_ERROR_503, 503)] {
            let r = post(
                &mock,
                "/chat/completions",
                &chat_request(model, "x", stream),
            )
            .await;
            assert_eq!(r.status(), status);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["type"], "server_error");
            assert!(v["error"]["message"].is_string());
            assert_eq!(v["error"]["code"], Value::Null);
        }
    }
    // Same switches on the other endpoints.
    let r = post(
        &mock,
        "/embeddings",
        &json!({"model": MODEL_ERROR_503, "input": "x"}),
    )
    .await;
    assert_eq!(r.status(), 503);
    let r = post(
        &mock,
        "/completions",
        &json!({"model": MODEL_ERROR_429, "prompt": "x"}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(mock.started_streams(), 0);
}

#[tokio::test]
async fn slow_first_byte() {
    let mock = MockUpstream::start().await;
    let c = client();
    let start = Instant::now();
    let r = c
        .post(format!("{}/chat/completions", mock.base_url))
        .header(DELAY_HEADER, "300")
        .json(&chat_request(MODEL_SLOW_FIRST_BYTE, "hi", false))
        .send()
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 7);

    // Streaming: the headers themselves are late.
    let start = Instant::now();
    let r = post(
        &mock,
        "/chat/completions",
        &chat_request("mock-slow-first-byte:250", "hi", true),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(sse_json(&r.text().await.unwrap()).len(), 9);

    // Default delay: the response is not there after 1 s (a client timeout fires).
    let start = Instant::now();
    let err = c
        .post(format!("{}/chat/completions", mock.base_url))
        .timeout(Duration::from_millis(1000))
        .json(&chat_request(MODEL_SLOW_FIRST_BYTE, "hi", false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(start.elapsed() >= Duration::from_millis(1000));
    assert_eq!(DEFAULT_FIRST_BYTE_DELAY_MS, 3000);
}

#[tokio::test]
async fn stall_mid_stream_then_client_drops() {
    let mock = MockUpstream::start().await;
    let resp = post(
        &mock,
        "/chat/completions",
        &chat_request(MODEL_STALL_MID_STREAM, "hi", true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next_event(&mut stream, &mut buf).await.unwrap());
    }
    assert!(events[0].contains("\"role\":\"assistant\""));
    assert!(events[1].contains("\"content\":\"Hello\""));
    assert!(events[2].contains("\"content\":\" there\""));
    // Nothing more for a while: the stream is stalled.
    let next = tokio::time::timeout(
        Duration::from_millis(500),
        next_event(&mut stream, &mut buf),
    )
    .await;
    assert!(next.is_err(), "stream should be stalled");
    assert_eq!(mock.active_streams(), 1);
    assert_eq!(mock.cancelled_streams(), 0);

    drop(stream);
    assert!(
        mock.wait_for_no_active_streams(Duration::from_secs(5))
            .await,
        "upstream did not notice the client went away"
    );
    assert_eq!(mock.cancelled_streams(), 1);
    assert_eq!(mock.completed_streams(), 0);
}

#[tokio::test]
async fn stall_mid_stream_short_delay_completes() {
    let mock = MockUpstream::start().await;
    let mut body = chat_request(MODEL_STALL_MID_STREAM, "hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let start = Instant::now();
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url))
        .header(DELAY_HEADER, "200")
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    let chunks = sse_json(&text);
    assert_eq!(chunks.len(), 1 + 7 + 1 + 1);
    assert_eq!(chunks[9]["usage"]["completion_tokens"], 7);
    assert_eq!(mock.completed_streams(), 1);
    assert_eq!(mock.cancelled_streams(), 0);
    assert_eq!(mock.active_streams(), 0);
}

#[tokio::test]
async fn drop_mid_stream_is_a_body_error() {
    let mock = MockUpstream::start().await;
    for path in ["/chat/completions", "/completions"] {
        let body = json!({"model": MODEL_DROP_MID_STREAM, "messages": [{"role": "user", "content": "x"}],
            "prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
        let resp = post(&mock, path, &body).await;
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut received = String::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => received.push_str(std::str::from_utf8(&b).unwrap()),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.expect("the body must end with an error, not a clean end");
        assert!(error.is_body() || error.is_decode(), "{error:?}");
        let data = sse_data(&received);
        let expected = if path == "/chat/completions" { 3 } else { 2 };
        assert_eq!(data.len(), expected, "{received}");
        assert!(!received.contains("[DONE]"));
    }
    assert!(
        mock.wait_for_no_active_streams(Duration::from_secs(5))
            .await
    );
    assert_eq!(mock.cancelled_streams(), 0);
}

#[tokio::test]
async fn slow_stream_client_disconnect_is_counted() {
    let mock = MockUpstream::start().await;
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url))
        .header(DELAY_HEADER, "100")
        .json(&chat_request(MODEL_SLOW_STREAM, "hi", true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    next_event(&mut stream, &mut buf).await.unwrap();
    next_event(&mut stream, &mut buf).await.unwrap();
    assert_eq!(mock.active_streams(), 1);
    drop(stream);
    assert!(
        mock.wait_for_no_active_streams(Duration::from_secs(5))
            .await
    );
    assert_eq!(mock.cancelled_streams(), 1);
    assert_eq!(mock.started_streams(), 1);
}

#[tokio::test]
async fn drop_connection_gives_no_response() {
    let mock = MockUpstream::start().await;
    let c = client();
    // Warm a pooled connection first, then make sure the drop is not retried into success.
    let ok = post(&mock, "/chat/completions", &chat_request("m", "x", false)).await;
    assert_eq!(ok.status(), 200);
    for stream in [false, true] {
        let err = c
            .post(format!("{}/chat/completions", mock.base_url))
            .json(&chat_request(MODEL_DROP_CONNECTION, "x", stream))
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_timeout(), "{err:?}");
        assert!(err.status().is_none(), "{err:?}");
        assert!(err.is_request() || err.is_connect(), "{err:?}");
    }
    // The mock still serves afterwards, on the same client.
    let ok = c
        .post(format!("{}/chat/completions", mock.base_url))
        .json(&chat_request("m", "x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let drops = mock
        .requests()
        .iter()
        .filter(|r| r.model() == Some(MODEL_DROP_CONNECTION))
        .count();
    assert_eq!(drops, 2);
}
