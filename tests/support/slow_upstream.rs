//! An upstream that misbehaves in time, for keygate's timeout tests: it accepts and never
//! answers, or answers one byte a second. Raw TCP, because [`super::upstream::MockUpstream`]
//! sits on hyper, which writes a response head in one piece and so cannot trickle it.
//!
//! [`SlowUpstream::start`] listens on `127.0.0.1:0`; dropping it stops the listener and
//! every connection. Each request's behaviour is chosen by its body's `model`:
//!
//! | model          | what the upstream does                                                  |
//! |----------------|-------------------------------------------------------------------------|
//! | `silent`       | reads the request, never writes a byte (the connection stays open)      |
//! | `drip-head`    | writes a `200` head one byte per [`DRIP_EVERY`]                          |
//! | `drip-body`    | writes a JSON head at once, then its body one byte per [`DRIP_EVERY`]    |
//! | `drip-stream`  | writes an SSE head at once, then one chunk of one byte per [`DRIP_EVERY`] |
//! | `stall-body`   | writes a JSON head and [`STALL_AFTER`] body bytes, then nothing          |
//! | `stall-stream` | writes an SSE head and one event, then nothing                           |
//! | anything else  | answers at once: a chat completion with [`NORMAL_USAGE`]                 |
//!
//! Every request received is counted ([`SlowUpstream::requests`]), so a test can wait
//! until keygate's request is in the upstream's hands.

#![allow(dead_code)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

pub const SILENT: &str = "silent";
pub const DRIP_HEAD: &str = "drip-head";
pub const DRIP_BODY: &str = "drip-body";
pub const DRIP_STREAM: &str = "drip-stream";
pub const STALL_BODY: &str = "stall-body";
pub const STALL_STREAM: &str = "stall-stream";

/// The pace of the dripping behaviours.
pub const DRIP_EVERY: Duration = Duration::from_secs(1);
/// Body bytes `stall-body` sends before it stalls.
pub const STALL_AFTER: usize = 10;
/// `(prompt_tokens, completion_tokens)` of a normal answer.
pub const NORMAL_USAGE: (u64, u64) = (10, 5);

pub struct SlowUpstream {
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl SlowUpstream {
    pub async fn start() -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let accept = tokio::spawn(async move {
            // Owned here, so aborting this task drops every connection with it.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(serve(stream, counter.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        SlowUpstream {
            base_url: format!("http://{addr}/v1"),
            requests,
            accept,
        }
    }

    /// Requests received so far (whole heads and bodies read).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have been received (panics after 10 s).
    pub async fn wait_for_requests(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.requests() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slow upstream got {} requests, not {n}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves the connection's requests until one of them misbehaves or the peer leaves.
async fn serve(mut stream: TcpStream, requests: Arc<AtomicUsize>) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    while let Some(body) = read_request(&mut stream, &mut buffer).await {
        requests.fetch_add(1, Ordering::SeqCst);
        let model = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["model"].as_str().map(str::to_string))
            .unwrap_or_default();
        let keep_going = match model.as_str() {
            SILENT => {
                // Hold the connection open and read (and ignore) whatever comes.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                false
            }
            DRIP_HEAD => {
                let answer = json_answer(&model);
                drip(&mut stream, &answer).await;
                false
            }
            DRIP_BODY => {
                let answer = json_answer(&model);
                let split = head_len(&answer);
                if write(&mut stream, &answer[..split]).await {
                    drip(&mut stream, &answer[split..]).await;
                }
                false
            }
            STALL_BODY => {
                let answer = json_answer(&model);
                let split = head_len(&answer) + STALL_AFTER;
                if write(&mut stream, &answer[..split]).await {
                    std::future::pending::<()>().await;
                }
                false
            }
            DRIP_STREAM => {
                if write(&mut stream, SSE_HEAD.as_bytes()).await {
                    for byte in sse_event("Hello").bytes().cycle() {
                        let chunk = [b"1\r\n".as_slice(), &[byte], b"\r\n"].concat();
                        if !write(&mut stream, &chunk).await {
                            break;
                        }
                        tokio::time::sleep(DRIP_EVERY).await;
                    }
                }
                false
            }
            STALL_STREAM => {
                let event = sse_event("Hello");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if write(&mut stream, format!("{SSE_HEAD}{chunk}").as_bytes()).await {
                    std::future::pending::<()>().await;
                }
                false
            }
            _ => write(&mut stream, &json_answer(&model)).await,
        };
        if !keep_going {
            return;
        }
    }
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn sse_event(text: &str) -> String {
    let chunk = json!({
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "slow",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// A whole `200` answer (head and body) to a chat request.
fn json_answer(model: &str) -> Vec<u8> {
    let (prompt, completion) = NORMAL_USAGE;
    let body = json!({
        "id": "chatcmpl-slow",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn head_len(answer: &[u8]) -> usize {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |i| i + 4)
}

/// Writes everything; false when the peer is gone.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok()
}

/// Writes one byte per [`DRIP_EVERY`]; false when the peer is gone.
async fn drip(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    for byte in bytes {
        if !write(stream, std::slice::from_ref(byte)).await {
            return false;
        }
        tokio::time::sleep(DRIP_EVERY).await;
    }
    true
}

/// Reads one request (head, then a `content-length` body); its body, or `None` when the
/// peer closed. `buffer` keeps bytes of the next request.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        read_more(stream, buffer).await?;
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some(body)
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}
