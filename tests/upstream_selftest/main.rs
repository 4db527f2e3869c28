//! Self-test of the mock OpenAI upstream in `tests/support/upstream/`, driven with
//! reqwest directly (no keygate involved). One file per part of the mock; this one holds
//! the client helpers they share.

// Helpers are plain fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod answers;
mod server;
#[path = "../support/mod.rs"]
mod support;
mod switches;

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::support::upstream::*;

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
