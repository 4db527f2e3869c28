//! HTTP as bytes: a crafted request sent over a plain TCP connection and the answer read
//! until the server closes it, with nothing normalised on the way.

use std::time::Duration;

use serde_json::Value;

use super::app::TestApp;

/// An answer as it came over the wire: every head (1xx ones too), and every byte after
/// the last head until the server closed the connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub heads: Vec<String>,
    pub rest: Vec<u8>,
}

impl RawAnswer {
    /// The final head's status code.
    pub fn status(&self) -> u16 {
        self.heads
            .last()
            .and_then(|head| head.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    /// The body after the final head, with chunked framing undone.
    pub fn body(&self) -> Vec<u8> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if !chunked {
            return self.rest.clone();
        }
        let mut body = Vec::new();
        let mut rest = &self.rest[..];
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .unwrap_or(0);
            rest = &rest[line_end + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body
    }

    /// The body as JSON; panics (showing it) if it is not.
    pub fn json(&self) -> Value {
        let body = self.body();
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {:?}",
                self.status(),
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// A header of the final head (name in any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.heads.last()?.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` (a whole HTTP/1.1 request, which should say `Connection: close`) to
/// `app` as bytes and reads everything until the server closes the connection: what a
/// crafted client sees, with nothing normalised on the way.
pub async fn raw_exchange(app: &TestApp, request: &[u8]) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the server closed the connection within 30 s")
        .unwrap();
    let mut heads = Vec::new();
    let mut rest = &bytes[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let informational = head.starts_with("HTTP/1.1 1");
        heads.push(head);
        rest = &rest[end + 4..];
        if !informational {
            break;
        }
    }
    RawAnswer {
        heads,
        rest: rest.to_vec(),
    }
}

/// A request head and body as bytes: `Connection: close`, the key as a bearer token,
/// and `Content-Length` unless `extra` sets `Transfer-Encoding` (the body is then sent
/// as one chunk, which hands the request to hyper and the router).
pub fn raw_request(
    method: &str,
    target: &str,
    key: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let chunked = extra
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !chunked && !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if chunked {
        if !body.is_empty() {
            bytes.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            bytes.extend_from_slice(body);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// The two ways into keygate: the fast path (a `Content-Length` body) and hyper with the
/// router (a chunked one).
pub const DOORS: [&[(&str, &str)]; 2] = [&[], &[("Transfer-Encoding", "chunked")]];
