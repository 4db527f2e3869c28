//! The normal answers: chat (JSON and SSE, with and without usage), legacy completions,
//! embeddings, models, pass-through paths and 404s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use super::{client, post, sse_json};
use crate::support::upstream::*;

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
