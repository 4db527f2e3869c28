//! HTTP/1.1 answers written straight into a byte buffer, for the inference fast path
//! (`super::fast`): the status line, header lines, a cached `date`, and chunked framing
//! for streamed answers. A whole answer (head and body) then goes out in one write.

use std::{
    cell::RefCell,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, StatusCode};

use crate::http::ratelimit_headers::HeaderSink;

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Whether an answer has a body: not for 1xx, 204 and 304 (RFC 9110 §15.2, §15.3.5,
/// §15.4.5), nor for an answer to `HEAD`. One without a body has no `content-length` or
/// `transfer-encoding` from keygate either, whatever the upstream sent (even an SSE
/// content type on a 204): a client would otherwise read the next answer as this body.
pub fn has_body(status: StatusCode, head_request: bool) -> bool {
    !(head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// An answer's head being written into `out`: status line first, then [`Head::header`]
/// lines, then [`Head::end`].
pub struct Head<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Head<'a> {
    pub fn new(out: &'a mut Vec<u8>, status: StatusCode) -> Self {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        Head { out }
    }

    /// One header line. Names and values come from `http` types or from keygate itself,
    /// so they never hold CR or LF.
    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn headers(&mut self, headers: &HeaderMap) -> &mut Self {
        for (name, value) in headers {
            self.header(name.as_str(), value.as_bytes());
        }
        self
    }

    pub fn content_length(&mut self, length: usize) -> &mut Self {
        self.header(
            "content-length",
            itoa::Buffer::new().format(length).as_bytes(),
        )
    }

    /// `date`, as hyper adds it to every answer (RFC 9110 §6.6.1: an origin server with a
    /// clock sends it). Formatted once per second per thread.
    pub fn date(&mut self) -> &mut Self {
        thread_local! {
            static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        DATE.with_borrow_mut(|(cached_second, text)| {
            if *cached_second != second {
                *text = httpdate::fmt_http_date(now);
                *cached_second = second;
            }
            self.out.extend_from_slice(b"date: ");
            self.out.extend_from_slice(text.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        });
        self
    }

    /// The blank line that ends the head.
    pub fn end(&mut self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

impl HeaderSink for Head<'_> {
    fn put(&mut self, name: &'static str, value: &[u8]) {
        self.header(name, value);
    }
}

/// One chunk of a chunked body. An empty `data` writes nothing: a zero-size chunk would
/// end the body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    let digits = hex(data.len(), &mut size);
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lower-case hex, without leading zeros.
fn hex(mut n: usize, buffer: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buffer[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn heads_are_written_as_http_1_1() {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Head::new(&mut out, StatusCode::TOO_MANY_REQUESTS)
            .headers(&headers)
            .content_length(12)
            .end();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n"
        );
    }

    #[test]
    fn only_answers_that_may_have_a_body_get_one() {
        for status in [100, 101, 103, 204, 304] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            assert!(!has_body(status, false), "{status}");
        }
        for status in [200, 201, 205, 400, 404, 500] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT);
            assert!(has_body(status, false), "{status}");
            assert!(!has_body(status, true), "HEAD {status}");
        }
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        let mut head = Head { out: &mut out };
        head.date();
        let line = String::from_utf8_lossy(&out);
        let value = line
            .strip_prefix("date: ")
            .and_then(|rest| rest.strip_suffix("\r\n"))
            .unwrap_or_default();
        assert!(httpdate::parse_http_date(value).is_ok(), "{line:?}");
    }

    #[test]
    fn chunks_carry_their_size_in_hex_and_empty_data_writes_nothing() {
        let mut out = Vec::new();
        chunk(&mut out, b"");
        assert!(out.is_empty());
        chunk(&mut out, &[b'a'; 26]);
        assert_eq!(&out[..4], b"1a\r\n");
        assert_eq!(&out[out.len() - 2..], b"\r\n");
        let mut buffer = [0u8; 16];
        assert_eq!(hex(0, &mut buffer), b"0");
        assert_eq!(hex(0xabc123, &mut buffer), b"abc123");
        assert_eq!(hex(usize::MAX, &mut buffer), b"ffffffffffffffff");
    }
}
