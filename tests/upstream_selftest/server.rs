//! The server itself: recorded requests and the `Authorization` check, stopping on drop,
//! the exact bytes on the wire, and the token formulas.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use super::{client, next_event, post};
use crate::support::upstream::*;

#[tokio::test]
async fn records_requests_and_checks_authorization() {
    let mock = MockUpstream::start_with_api_key("sk-upstream").await;
    let c = client();
    let body = chat_request("m", "hello world", true);
    let r = c
        .post(format!("{}/chat/completions?x=1", mock.base_url))
        .header("Authorization", "Bearer sk-upstream")
        .header("X-Custom-Thing", "abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let r = c
        .post(format!("{}/chat/completions", mock.base_url))
        .header("Authorization", "Bearer sk-client-key-1234")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(v["error"]["message"].as_str().unwrap().contains("****1234"));
    let r = c
        .get(format!("{}/models", mock.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    let first = &reqs[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.query.as_deref(), Some("x=1"));
    assert_eq!(first.header("x-custom-thing"), Some("abc"));
    assert_eq!(first.header("X-CUSTOM-THING"), Some("abc"));
    assert!(first.headers.iter().any(|(n, _)| n == "x-custom-thing"));
    assert!(first.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(first.body.as_ref(), Some(&body));
    assert_eq!(first.model(), Some("m"));
    assert!(first.is_stream());
    assert!(!first.include_usage());
    assert_eq!(first.authorization.as_deref(), Some("Bearer sk-upstream"));
    assert_eq!(first.auth_ok, Some(true));
    assert_eq!(reqs[1].auth_ok, Some(false));
    assert_eq!(reqs[2].authorization, None);
    assert_eq!(reqs[2].auth_ok, Some(false));
    assert_eq!(mock.auth_failures().len(), 2);

    // Without an expectation nothing is judged.
    mock.expect_api_key(None);
    mock.clear_requests();
    let r = post(&mock, "/chat/completions", &chat_request("m", "x", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.requests()[0].auth_ok, None);
}

#[tokio::test]
async fn stops_on_drop() {
    let mock = MockUpstream::start().await;
    let addr = mock.addr;
    let resp = post(
        &mock,
        "/chat/completions",
        &chat_request(MODEL_STALL_MID_STREAM, "x", true),
    )
    .await;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    next_event(&mut stream, &mut buf).await.unwrap();
    drop(mock);
    // The stalled stream is cut short rather than lingering 30 s.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "stream still open after the mock was dropped");
    // New connections are refused.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused);
}

/// Sends a raw HTTP/1.1 request and reads until the server closes; returns the bytes.
async fn raw_exchange(mock: &MockUpstream, path: &str, body: &Value) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break, // EOF or reset
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "server did not close the connection");
    buf
}

#[tokio::test]
async fn raw_wire_format() {
    let mock = MockUpstream::start().await;
    // Drop-connection: the socket closes without a single byte.
    let got = raw_exchange(
        &mock,
        "/v1/chat/completions",
        &chat_request(MODEL_DROP_CONNECTION, "x", false),
    )
    .await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // A normal stream is chunked and ends with the terminating zero-size chunk.
    let got = raw_exchange(&mock, "/v1/chat/completions", &chat_request("m", "x", true)).await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream; charset=utf-8\r\n"));
    assert!(text.ends_with("data: [done]\n\n\r\n0\r\n\r\n"), "{text}");

    // Drop mid-stream: headers and 3 events, then the connection ends without the
    // terminating chunk.
    let got = raw_exchange(
        &mock,
        "/v1/chat/completions",
        &chat_request(MODEL_DROP_MID_STREAM, "x", true),
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 3, "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    assert!(!text.contains("[DONE]"));
}

#[test]
fn token_formulas() {
    let body = json!({"messages": [
        {"role": "system", "content": "a b c"},
        {"role": "user", "content": "  d   e "},
        {"role": "assistant", "content": null, "tool_calls": []},
    ]});
    assert_eq!(prompt_tokens_for(&body), (3 + 3) + (3 + 2) + 3);
    assert_eq!(prompt_tokens_for(&json!({"input": ["a", "b c"]})), 3);
    assert_eq!(prompt_tokens_for(&json!({})), 0);
    assert_eq!(completion_words_per_choice(&json!({"max_tokens": 0})), 0);
    assert_eq!(completion_words_per_choice(&json!({"max_tokens": 50})), 7);
    assert_eq!(completion_tokens_for(&json!({"input": "x"})), 0);
    assert_eq!(reply_text(0), "");
    assert_eq!(reply_text(1), "Hello");
    assert_eq!(reply_text(7).split(' ').count(), REPLY_WORDS.len());
    assert_eq!(finish_reason_for(&json!({"max_tokens": 6})), "length");
    assert_eq!(finish_reason_for(&json!({"max_tokens": 7})), "stop");
    assert_eq!(
        sse_data("data: {\"a\":1}\n\ndata: [DONE]\n\n"),
        vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]
    );
}
