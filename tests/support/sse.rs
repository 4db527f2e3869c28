//! Reading an SSE answer event by event as it arrives, with the time each event came.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Response;
use serde_json::Value;

/// One SSE event as the client received it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The `data:` payload (`[DONE]` verbatim).
    pub data: String,
    /// When it arrived, from the start of the read.
    pub at: Duration,
}

impl Event {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// Text of a chat or completion chunk.
    pub fn text(&self) -> String {
        let Some(chunk) = self.json() else {
            return String::new();
        };
        chunk["choices"]
            .as_array()
            .map(|choices| {
                choices
                    .iter()
                    .filter_map(|c| {
                        c["delta"]["content"]
                            .as_str()
                            .or_else(|| c["text"].as_str())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads an SSE body event by event as it arrives.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    started: Instant,
    pub ended: bool,
}

impl SseReader {
    pub fn new(response: Response) -> SseReader {
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            started: Instant::now(),
            ended: false,
        }
    }

    /// The next event; `None` at the end of the body (or on a broken body). Panics after 20 s.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let raw: Vec<u8> = self.buffer.drain(..end).collect();
                let text = String::from_utf8_lossy(&raw);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(Event {
                    data: data.join("\n"),
                    at: self.started.elapsed(),
                });
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.stream.next()).await {
                Err(_) => panic!("no SSE bytes for 20 s"),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// All remaining events.
    pub async fn rest(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Reads a whole SSE answer.
pub async fn read_sse(response: Response) -> Vec<Event> {
    SseReader::new(response).rest().await
}

/// The generated text of a stream's events.
pub fn stream_text(events: &[Event]) -> String {
    events.iter().map(Event::text).collect()
}
