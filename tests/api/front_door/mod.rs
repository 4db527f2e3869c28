//! The front doors at the wire (src/http/front/): the inference fast path and the
//! hand-off to hyper must look to a client like one HTTP/1.1 server — keep-alive and
//! pipelining, a connection that moves to the router mid-way, bodies the fast path does
//! not read itself (chunked, `Expect`), HTTP/1.0, `Connection: close`, bad requests, a
//! client leaving early, slow clients, and draining at shutdown. Raw TCP, so what is
//! checked is exactly what goes over the wire. Every test runs through both front doors
//! (`http.fast_path` on and off), and one sends the same requests through both and
//! compares the answers. This file holds the raw connection ([`Wire`]) they share.

mod connections;
mod differential;
mod read_timeout;
mod requests;

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy_helpers::TestApp;

const PROMPT: &str = "say hello in five words";

/// One raw HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("not JSON ({err}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that writes raw bytes and parses answers itself.
struct Wire {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Wire {
    async fn connect(app: &TestApp) -> Wire {
        let address = app.address.trim_start_matches("http://");
        Wire {
            stream: TcpStream::connect(address).await.expect("connect"),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more; `false` at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
            .await
            .expect("the server answers within 20 s")
            .unwrap_or(0);
        self.read.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer (a 1xx is an answer of its own).
    async fn answer(&mut self) -> Answer {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut slots);
            match response
                .parse(&self.read)
                .expect("a well-formed answer head")
            {
                httparse::Status::Complete(len) => {
                    let headers = response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (response.code.unwrap_or(0), headers, len);
                }
                httparse::Status::Partial => {
                    assert!(self.fill().await, "EOF inside an answer head");
                }
            }
        };
        self.read.drain(..head_len);
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if status < 200 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            answer.body = self.chunked_body().await;
        } else if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("a numeric content-length");
            while self.read.len() < length {
                assert!(self.fill().await, "EOF inside a body");
            }
            answer.body = self.read.drain(..length).collect();
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.read);
        }
        answer
    }

    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = self.read.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                assert!(self.fill().await, "EOF inside a chunk size");
            };
            let size_text = String::from_utf8_lossy(&self.read[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("a hex chunk size");
            while self.read.len() < line_end + 2 + size + 2 {
                assert!(self.fill().await, "EOF inside a chunk");
            }
            body.extend_from_slice(&self.read[line_end + 2..line_end + 2 + size]);
            assert_eq!(
                &self.read[line_end + 2 + size..line_end + 4 + size],
                b"\r\n"
            );
            self.read.drain(..line_end + 4 + size);
            if size == 0 {
                return body;
            }
        }
    }

    /// Sends `bytes` one at a time, `every` apart, until the server closes the connection
    /// or `give_up` passes; returns how long the server let it go on, if it closed it.
    /// Whatever the server says before closing (a 408, say) is read and dropped.
    async fn trickle_until_closed(
        &mut self,
        bytes: &[u8],
        every: Duration,
        give_up: Duration,
    ) -> Option<Duration> {
        let started = std::time::Instant::now();
        let mut chunk = [0u8; 1024];
        let mut next = bytes.iter();
        while started.elapsed() < give_up {
            let read = tokio::time::timeout(every, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => {}
            }
            if let Some(byte) = next.next() {
                if self.stream.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
        None
    }

    /// Whether the server closes the connection (EOF) within `wait`, with nothing unread.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(wait, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn post(path: &str, key: &str, body: &Value, extra_headers: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chat(key: &str, body: &Value) -> Vec<u8> {
    post("/v1/chat/completions", key, body, "")
}

fn get(path: &str, key: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\n\r\n")
        .into_bytes()
}

fn reply_of(answer: &Answer) -> String {
    answer.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
