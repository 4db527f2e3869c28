//! Self-test of the mock OpenAI upstream in `tests/support/upstream.rs`, driven with
//! reqwest directly (no keygate involved).

// Helpers are plain fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::upstream::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{}", mock.base_url, path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Parses a full SSE body into JSON chunks; asserts it ends with exactly one `[DONE]`.
fn sse_json(text: &str) -> Vec<Value> {
    let data = sse_data(text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Reads the next SSE event (one `data: …\n\n`) from a streaming response, buffering.
async fn next_event<B: AsRef<[u8]>>(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buf: &mut String,
) -> Option<String> {
    loop {
        if let Some(pos) = buf.find("\n\n") {
            let event: String = buf.drain(..pos + 2).collect();
            return Some(event);
        }
        match stream.next().await {
            Some(Ok(bytes)) => buf.push_str(std::str::from_utf8(bytes.as_ref()).unwrap()),
            Some(Err(e)) => panic!("body error: {e}"),
            None => return None,
        }
    }
}

#[tokio::test]
async fn chat_non_stream_shape_and_usage() {
    let mock = MockUpstream::start().await;
    assert!(mock.base_url.starts_with("http://127.0.0.1:"));
    assert!(mock.base_url.ends_with("/v1"));
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "say hello please"}]},
        ],
    });
    let resp = post(&mock, "/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "9999");
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "Hello there this is a test reply"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // (3 + 3 words) + (3 + 3 words) = 12
    assert_eq!(prompt_tokens_for(&body), 12);
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 19);
    assert_eq!(
        expected_usage(&body),
        ExpectedUsage {
            prompt_tokens: 12,
            completion_tokens: 7,
            total_tokens: 19
        }
    );

    // max_tokens below the reply length truncates: 3 words, finish_reason "length".
    let body =
        json!({"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello there this");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 7);
    // max_completion_tokens wins over max_tokens; larger limits do not lengthen the reply.
    let body = json!({"model": "m", "max_tokens": 1, "max_completion_tokens": 100, "n": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = post(&mock, "/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["content"], reply_text(7));
    assert_eq!(v["usage"]["completion_tokens"], 14);
    assert_eq!(completion_tokens_for(&body), 14);
}

#[tokio::test]
async fn chat_stream_without_include_usage() {
    let mock = MockUpstream::start().await;
    let body = chat_request("gpt-4o-mini", "one two three", true);
    let resp = post(&mock, "/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let text = resp.text().await.unwrap();
    let chunks = sse_json(&text);
    // role + 7 words + finish, no usage chunk
    assert_eq!(chunks.len(), 1 + 7 + 1, "{text}");
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["id"], id);
        assert!(c.get("usage").is_none(), "no usage field unless asked: {c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..8]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, reply_text(7));
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hello");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " there");
    assert_eq!(chunks[8]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[8]["choices"][0]["delta"], json!({}));
    assert_eq!(mock.completed_streams(), 1);
    assert_eq!(mock.cancelled_streams(), 0);
    assert_eq!(mock.active_streams(), 0);
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let mock = MockUpstream::start().await;
    let mut body = chat_request("gpt-4o-mini", "one two three", true);
    body["stream_options"] = json!({"include_usage": true});
    body["max_tokens"] = json!(5);
    let text = post(&mock, "/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_json(&text);
    assert_eq!(chunks.len(), 1 + 5 + 1 + 1, "{text}");
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["usage"], Value::Null, "usage: null on every other chunk");
        assert!(c.get("usage").is_some());
    }
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 6);
    assert_eq!(last["usage"]["completion_tokens"], 5);
    assert_eq!(last["usage"]["total_tokens"], 11);
    assert!(mock.last_request().unwrap().include_usage());
}

#[tokio::test]
async fn slow_stream_sends_one_frame_per_event() {
    let mock = MockUpstream::start().await;
    let body = chat_request(MODEL_SLOW_STREAM, "hi", true);
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url))
        .header(DELAY_HEADER, "40")
        .json(&body)
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    let mut stream = resp.bytes_stream();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(String::from_utf8(frame.unwrap().to_vec()).unwrap());
    }
    // role + 7 words + finish + [DONE], each its own frame.
    assert_eq!(frames.len(), 10, "{frames:?}");
    for f in &frames {
        assert!(f.starts_with("data: ") && f.ends_with("\n\n"), "{f:?}");
        assert_eq!(f.matches("data: ").count(), 1, "{f:?}");
    }
    assert_eq!(frames[9], "data: [DONE]\n\n");
    assert!(start.elapsed() >= Duration::from_millis(9 * 40 - 20));
    // The model name with a delay suffix works the same.
    let body = chat_request("mock-slow-stream:30", "hi", true);
    let start = Instant::now();
    let text = post(&mock, "/chat/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(9 * 30));
    assert_eq!(sse_json(&text)[0]["model"], "mock-slow-stream:30");
}

#[tokio::test]
async fn legacy_completions() {
    let mock = MockUpstream::start().await;
    let body =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 4});
    let v: Value = post(&mock, "/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(v["choices"][0]["text"], "Hello there this is");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
    );

    // Array prompt: one choice per prompt.
    let body = json!({"model": "m", "prompt": ["a b", "c"]});
    let v: Value = post(&mock, "/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 14);
    // Token-id prompt counts ids.
    assert_eq!(prompt_tokens_for(&json!({"prompt": [1, 2, 3, 4]})), 4);
    assert_eq!(prompt_tokens_for(&json!({"prompt": [[1, 2], [3]]})), 3);

    // Stream, with usage.
    let body = json!({"model": "m", "prompt": "x y", "stream": true,
        "stream_options": {"include_usage": true}});
    let text = post(&mock, "/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_json(&text);
    assert_eq!(chunks.len(), 7 + 1 + 1, "{text}");
    let joined: String = chunks[..7]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, reply_text(7));
    assert_eq!(chunks[0]["object"], "text_completion");
    assert_eq!(chunks[7]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"][0]["text"], "");
    assert_eq!(chunks[8]["choices"], json!([]));
    assert_eq!(
        chunks[8]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9})
    );

    // Stream without usage.
    let body = json!({"model": "m", "prompt": "x y", "stream": true});
    let text = post(&mock, "/completions", &body)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_json(&text);
    assert_eq!(chunks.len(), 8);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn embeddings() {
    let mock = MockUpstream::start().await;
    let body = json!({"model": "text-embedding-3-small", "input": "the quick brown fox"});
    let v: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["index"], 0);
    assert_eq!(
        v["data"][0]["embedding"].as_array().unwrap().len(),
        EMBEDDING_DIMS
    );
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    // Deterministic.
    let again: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"], again["data"]);

    let body = json!({"model": "e", "input": ["a b", "c", "d e f"]});
    let v: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));

    // base64 encoding_format (what the official SDKs ask for by default).
    let body = json!({"model": "e", "input": "a b", "encoding_format": "base64"});
    let v: Value = post(&mock, "/embeddings", &body)
        .await
        .json()
        .await
        .unwrap();
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(b64.len(), 44); // 32 bytes
    let expected: Vec<u8> = embedding_for(&json!("a b"))
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    assert_eq!(b64, base64_encode(&expected));
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
}

#[tokio::test]
async fn models_passthrough_paths_and_404() {
    let mock = MockUpstream::start().await;
    let c = client();
    let v: Value = c
        .get(format!("{}/models", mock.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, MODEL_IDS);

    let r = c
        .get(format!("{}/models/gpt-4o-mini", mock.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "gpt-4o-mini");
    let r = c
        .get(format!("{}/models/nope", mock.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_found"
    );

    let r = c
        .get(format!("{}/files", mock.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"object": "list", "data": []})
    );

    let v: Value = post(&mock, "/moderations", &json!({"input": "hello"}))
        .await
        .json()
        .await
        .unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("modr-"));
    assert_eq!(v["results"][0]["flagged"], false);

    let r = post(&mock, "/nope", &json!({"model": "m"})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "Invalid URL (POST /v1/nope)");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // Bad JSON and missing fields get OpenAI-style 400s.
    let r = c
        .post(format!("{}/chat/completions", mock.base_url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(&mock, "/chat/completions", &json!({"messages": []})).await;
    assert_eq!(r.status(), 400);
    let r = post(&mock, "/chat/completions", &json!({"model": "m"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["param"],
        "messages"
    );

    // Everything was recorded, 404s and 400s included.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 9);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/v1/models");
    assert!(reqs[0].body.is_none());
    assert_eq!(reqs[5].path, "/v1/nope");
    assert_eq!(reqs[6].body, None);
    assert_eq!(reqs[6].raw_body, b"{not json");
    assert_eq!(mock.requests_to("/v1/chat/completions").len(), 3);
}

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
