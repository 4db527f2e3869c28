//! The inference fast path: HTTP/1.1 `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and Anthropic's `/v1/messages` (and its `count_tokens`) with a
//! `Content-Length` body, read and answered on the connection's
//! own task without hyper or the router stack. Everything else (other routes and methods,
//! chunked or `Expect` bodies, HTTP/1.0, upgrades, malformed requests) is handed to hyper
//! and the axum router, with the bytes already read, for the rest of the connection
//! (`super::serve`), so those requests are served exactly as before.
//!
//! Why by hand: these three routes carry nearly all of a gateway's traffic. On one core
//! shared with the upstream, hyper's server dispatcher plus the router's middleware cost
//! more per request than auth, limits and accounting together (docs/performance.md); a
//! loop that parses the head with httparse, calls the same gateway and writes the answer
//! in one write does the same work for a fraction of it. The admission steps are the
//! router's, from the same functions (`super::admission`): request id → panic guard →
//! address, body limit, key (failed-attempt guard, IP allowlist), inference key → proxy.
//! A request arriving in pieces has `http.request_read_timeout_secs` from its first byte
//! to arrive whole.
//!
//! While the gateway works, the client's socket is watched: a client that goes away
//! cancels the request (the upstream call is dropped, the meter settles once), as hyper
//! does. Bytes the client sends meanwhile (a pipelined request) are kept for later.

use std::{
    future::Future,
    net::SocketAddr,
    ops::Range,
    pin::{pin, Pin},
    time::Duration,
};

use axum::http::{header::CONNECTION, HeaderValue, Method};
use bytes::{Buf, Bytes, BytesMut};
use futures::{
    future::{Either, Fuse, FusedFuture},
    FutureExt, StreamExt,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::{Instant, Sleep},
};
use tracing::{instrument::Instrumented, Instrument, Span};

use super::{
    admission::{self, Admitted, Arrival},
    wire::{self, Head},
};
use crate::{
    error::{ApiError, Surface},
    http::{
        inference::{self, Answer},
        ratelimit_headers, REQUEST_ID,
    },
    keys::AuthError,
    limits::BucketState,
    proxy::{
        headers::{RawHeaders, RequestHeaders},
        AnswerBody, Endpoint, InferenceRequest, ProxyAnswer,
    },
    state::AppState,
};

/// Headers a request head may have on the fast path (more go to hyper, which allows 100).
const MAX_HEADERS: usize = 64;
/// Longest request head read here; a longer one goes to hyper, which answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes a client may send ahead (pipelining) while its request is being answered; past
/// this, keygate stops reading until it gets to them.
const MAX_READ_AHEAD: usize = 64 * 1024;
/// Bodies larger than this are written after the head instead of copied behind it.
const COPY_BODY_BELOW: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// How a connection left the fast path.
pub enum Ending {
    /// Closed: by the client, after `Connection: close`, on an error, or at shutdown.
    Closed,
    /// A request the fast path does not serve: hyper takes the connection, starting with
    /// these bytes already read from it, and the request's deadline if it started
    /// arriving in pieces.
    HandOff(TcpStream, Bytes, Option<Instant>),
}

/// A request head the fast path serves.
struct FastRequest {
    endpoint: Endpoint,
    head_len: usize,
    /// Path after `/v1`, and the query if any.
    path: &'static str,
    query: Option<String>,
    /// (name, value) of each header line, as ranges in the head.
    lines: Vec<(Range<u32>, Range<u32>)>,
    content_length: usize,
    /// The client asked to close the connection after this answer.
    close: bool,
}

enum Parsed {
    /// The head has not all arrived yet.
    Partial,
    Fast(FastRequest),
    /// Anything else: hyper and the router serve it, and the rest of the connection.
    Other,
}

pub struct Connection<'a> {
    state: &'a AppState,
    stream: TcpStream,
    peer: SocketAddr,
    /// Read from the client, not yet consumed.
    buffer: BytesMut,
    /// The answer being written; reused across requests.
    out: Vec<u8>,
    /// `http.keep_alive_idle_secs`, read once per connection.
    keep_alive_idle: Duration,
    /// `http.request_read_timeout_secs`, read once per connection.
    request_read_timeout: Duration,
    /// When the request being read must have arrived whole: set once it arrives in
    /// pieces (its first byte came with an earlier read than its head's end).
    deadline: Option<Instant>,
}

impl<'a> Connection<'a> {
    pub fn new(state: &'a AppState, stream: TcpStream, peer: SocketAddr) -> Self {
        Connection {
            state,
            stream,
            peer,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(READ_CHUNK),
            keep_alive_idle: state.config.http.keep_alive_idle(),
            request_read_timeout: state.config.http.request_read_timeout(),
            deadline: None,
        }
    }

    /// Serves requests until the connection closes or needs hyper. `stop` turns true at
    /// shutdown: an idle connection closes at once, a busy one after its answer.
    pub async fn serve(mut self, stop: &mut watch::Receiver<bool>) -> Ending {
        // Armed once per connection, not per request: the shutdown signal and the
        // keep-alive timer (re-armed only when it fires before its real deadline).
        let mut stopping = stop.clone();
        let mut stopped = pin!(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
        .fuse());
        let mut idle_timer = pin!(tokio::time::sleep(self.keep_alive_idle));
        loop {
            let request = match self
                .next_request(stopped.as_mut(), idle_timer.as_mut())
                .await
            {
                Some(Parsed::Fast(request)) => request,
                Some(Parsed::Other) => {
                    return Ending::HandOff(self.stream, self.buffer.freeze(), self.deadline);
                }
                Some(Parsed::Partial) | None => return Ending::Closed,
            };
            let close = request.close || *stop.borrow();
            if !self.serve_one(request, close).await || close {
                let _ = self.stream.shutdown().await;
                return Ending::Closed;
            }
        }
    }

    /// Reads until a whole request head is buffered. `None`: the client closed, went
    /// quiet for too long, or keygate is stopping while the connection is idle.
    async fn next_request(
        &mut self,
        mut stopped: Pin<&mut Fuse<impl Future<Output = ()>>>,
        mut idle_timer: Pin<&mut Sleep>,
    ) -> Option<Parsed> {
        let idle_until = Instant::now() + self.keep_alive_idle;
        self.deadline = None;
        loop {
            match parse(&self.buffer) {
                Parsed::Partial if self.buffer.len() <= MAX_HEAD_BYTES => {}
                Parsed::Partial => return Some(Parsed::Other),
                parsed => return Some(parsed),
            }
            let got_data = if self.buffer.is_empty() {
                if stopped.is_terminated() {
                    return None;
                }
                loop {
                    tokio::select! {
                        got_data = read_some(&mut self.stream, &mut self.buffer) => break got_data,
                        () = stopped.as_mut() => return None,
                        () = idle_timer.as_mut() => {
                            if Instant::now() >= idle_until {
                                return None;
                            }
                            idle_timer.as_mut().reset(idle_until);
                        }
                    }
                }
            } else {
                // A request arriving in pieces gets a deadline from its first byte.
                let timeout = self.request_read_timeout;
                let deadline = *self
                    .deadline
                    .get_or_insert_with(|| Instant::now() + timeout);
                read_more(&mut self.stream, &mut self.buffer, deadline).await
            };
            if !got_data {
                return None;
            }
        }
    }

    /// Answers one request. `false`: the connection cannot go on (the client left, or its
    /// body was not read).
    async fn serve_one(&mut self, request: FastRequest, close: bool) -> bool {
        let FastRequest {
            endpoint,
            head_len,
            path,
            query,
            lines,
            content_length,
            ..
        } = request;
        let head = self.buffer.split_to(head_len).freeze();
        let raw = RawHeaders::new(head, lines);
        let request_id = admission::request_id(raw.value(REQUEST_ID.as_str()));
        let headers = RequestHeaders::Raw(raw);
        // DEBUG, not INFO like the router's: a span per request cost more than the limiter;
        // the proxy's own log events name the request id and key instead.
        let span = tracing::debug_span!(
            "request",
            method = "POST",
            route = endpoint_route(endpoint),
            request_id = request_id.to_str().unwrap_or_default(),
            key_id = tracing::field::Empty,
        );
        let state = self.state;
        let arrival = Arrival {
            path: endpoint_route(endpoint),
            headers: &headers,
            peer: Some(self.peer),
            content_length: Some(content_length as u64),
        };
        let surface = Surface::for_path(endpoint_route(endpoint));
        let admitted =
            admission::guarded(surface, in_span(admission::admit(state, arrival), &span)).await;
        let metrics = &state.metrics;
        let route = endpoint_index(endpoint);
        let key = match admitted {
            Ok(Ok(Admitted { key: Some(key), .. })) => {
                span.record("key_id", tracing::field::display(key.id));
                key
            }
            // The inference routes are not public: an admitted request has a key.
            Ok(Ok(Admitted { key: None, .. })) => {
                let refusal = ApiError::from(AuthError::Missing).on(surface);
                metrics.count_fast_request(route, refusal.status.as_u16(), None);
                return self
                    .refuse(&refusal, content_length, &request_id, close)
                    .await;
            }
            Ok(Err(refusal)) => {
                metrics.count_fast_request(route, refusal.status.as_u16(), None);
                return self
                    .refuse(&refusal, content_length, &request_id, close)
                    .await;
            }
            Err(panicked) => {
                metrics.count_fast_request(route, panicked.status.as_u16(), None);
                self.write_refusal(&panicked, &[], &request_id, true).await;
                return false;
            }
        };

        if self.buffer.len() < content_length {
            let timeout = self.request_read_timeout;
            let deadline = *self
                .deadline
                .get_or_insert_with(|| Instant::now() + timeout);
            while self.buffer.len() < content_length {
                if !read_more(&mut self.stream, &mut self.buffer, deadline).await {
                    return false;
                }
            }
        }
        let body = self.buffer.split_to(content_length).freeze();
        let request = InferenceRequest {
            key,
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            endpoint,
            path: path.to_owned(),
            query,
            method: Method::POST,
            headers,
            body,
        };
        // Boxed once here: the gateway's future is a few KB, and each wrapper below (and
        // the `select!`) would otherwise move it.
        let answer = Box::pin(inference::answer(state, request));
        let answer = admission::guarded(surface, in_span(answer, &span));
        let answer = tokio::select! {
            answer = answer => answer,
            () = client_gone(&self.stream, &mut self.buffer) => return false,
        };
        match answer {
            Ok((Answer::Proxied(answer), model)) => {
                metrics.count_fast_request(route, answer.status.as_u16(), model);
                self.write_answer(answer, &request_id, close).await
            }
            Ok((Answer::Refused(refusal, limits), model)) => {
                metrics.count_fast_request(route, refusal.status.as_u16(), model);
                self.write_refusal(&refusal, &limits, &request_id, close)
                    .await
            }
            Err(panicked) => {
                metrics.count_fast_request(route, panicked.status.as_u16(), None);
                self.write_refusal(&panicked, &[], &request_id, true).await;
                false
            }
        }
    }

    /// Answers a request refused at admission. Its body is skipped if it is all here;
    /// otherwise the connection closes rather than read a body nobody will use.
    async fn refuse(
        &mut self,
        refusal: &ApiError,
        content_length: usize,
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        let body_read = self.buffer.len() >= content_length;
        if body_read {
            self.buffer.advance(content_length);
        }
        let close = close || !body_read;
        self.write_refusal(refusal, &[], request_id, close).await && body_read
    }

    async fn write_answer(
        &mut self,
        answer: ProxyAnswer,
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        let ProxyAnswer {
            status,
            headers,
            body,
            limits,
        } = answer;
        self.out.clear();
        let mut head = Head::new(&mut self.out, status);
        head.headers(&headers);
        ratelimit_headers::write(&mut head, &limits);
        common_headers(&mut head, request_id, close);
        if !wire::has_body(status, false) {
            // Dropping a streamed body settles its meter, as for a client gone.
            drop(body);
            head.end();
            return self.write_with_body(Bytes::new()).await;
        }
        match body {
            AnswerBody::Whole(body) => {
                head.content_length(body.len());
                head.end();
                self.write_with_body(body).await
            }
            AnswerBody::Stream(mut events) => {
                head.header("transfer-encoding", b"chunked");
                head.end();
                // What the upstream already sent goes out with the head, in one write;
                // after that each batch of events goes out as it arrives.
                let mut ended = take_ready(&mut events, &mut self.out);
                loop {
                    if self.stream.write_all(&self.out).await.is_err() {
                        return false; // the client left: dropping `events` settles the meter
                    }
                    if ended {
                        return true;
                    }
                    let next = tokio::select! {
                        next = events.next() => next,
                        () = client_gone(&self.stream, &mut self.buffer) => return false,
                    };
                    self.out.clear();
                    match next {
                        Some(Ok(event)) => {
                            wire::chunk(&mut self.out, &event);
                            ended = take_ready(&mut events, &mut self.out);
                        }
                        None => {
                            self.out.extend_from_slice(wire::LAST_CHUNK);
                            ended = true;
                        }
                        // Closing without the last chunk tells the client the body broke.
                        Some(Err(_)) => return false,
                    }
                }
            }
        }
    }

    /// A refusal as the error layer renders it (JSON body, `Retry-After`), with the
    /// buckets' rate-limit headers.
    async fn write_refusal(
        &mut self,
        refusal: &ApiError,
        limits: &[BucketState],
        request_id: &HeaderValue,
        close: bool,
    ) -> bool {
        let rendered = refusal.render();
        self.out.clear();
        let mut head = Head::new(&mut self.out, rendered.status);
        for (name, value) in rendered.headers() {
            head.header(name.as_str(), value.as_bytes());
        }
        ratelimit_headers::write(&mut head, limits);
        common_headers(&mut head, request_id, close);
        head.content_length(rendered.body.len());
        head.end();
        self.write_with_body(rendered.body).await
    }

    /// The head in `out`, then `body`: one write when the body is small.
    async fn write_with_body(&mut self, body: Bytes) -> bool {
        if body.len() < COPY_BODY_BELOW {
            self.out.extend_from_slice(&body);
            return self.stream.write_all(&self.out).await.is_ok();
        }
        self.stream.write_all(&self.out).await.is_ok() && self.stream.write_all(&body).await.is_ok()
    }
}

/// What every fast-path answer carries besides its own headers.
fn common_headers(head: &mut Head<'_>, request_id: &HeaderValue, close: bool) {
    head.header(REQUEST_ID.as_str(), request_id.as_bytes());
    head.date();
    if close {
        head.header(CONNECTION.as_str(), b"close");
    }
}

/// Appends every event the stream has ready now, as chunks; `true` once it has ended
/// (the last chunk is then in `out` too).
fn take_ready(events: &mut crate::proxy::stream::ByteStream, out: &mut Vec<u8>) -> bool {
    loop {
        match events.next().now_or_never() {
            Some(Some(Ok(event))) => wire::chunk(out, &event),
            Some(None) => {
                out.extend_from_slice(wire::LAST_CHUNK);
                return true;
            }
            // An error ends the stream on the next poll, with the connection.
            Some(Some(Err(_))) | None => return false,
        }
    }
}

/// Reads what the client sent into `buffer`. `false`: closed, failed or past `deadline`.
async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut, deadline: Instant) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, read_some(stream, buffer)).await,
        Ok(true)
    )
}

/// Reads what the client sent into `buffer`. `false`: closed or failed.
async fn read_some(stream: &mut TcpStream, buffer: &mut BytesMut) -> bool {
    buffer.reserve(READ_CHUNK);
    matches!(stream.read_buf(buffer).await, Ok(n) if n > 0)
}

/// `future` inside `span` when that span is recorded (DEBUG); otherwise as it is, without
/// the wrapper's cost on every poll.
fn in_span<F: Future>(future: F, span: &Span) -> Either<Instrumented<F>, F> {
    if span.is_disabled() {
        Either::Right(future)
    } else {
        Either::Left(future.instrument(span.clone()))
    }
}

/// Resolves when the client has closed its connection (or it failed). Whatever it sends
/// meanwhile (a pipelined request) is kept in `buffer`, up to [`MAX_READ_AHEAD`].
async fn client_gone(stream: &TcpStream, buffer: &mut BytesMut) {
    loop {
        if buffer.len() >= MAX_READ_AHEAD || stream.readable().await.is_err() {
            // Stop reading ahead; a closed connection shows when it is next written.
            return std::future::pending().await;
        }
        buffer.reserve(READ_CHUNK);
        match stream.try_read_buf(buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

fn hot_endpoint(path: &str) -> Option<(Endpoint, &'static str)> {
    match path {
        "/v1/chat/completions" => Some((Endpoint::ChatCompletions, "/chat/completions")),
        "/v1/completions" => Some((Endpoint::Completions, "/completions")),
        "/v1/embeddings" => Some((Endpoint::Embeddings, "/embeddings")),
        "/v1/messages" => Some((Endpoint::Messages, "/messages")),
        "/v1/messages/count_tokens" => Some((Endpoint::CountTokens, "/messages/count_tokens")),
        _ => None,
    }
}

/// The fast path's route as `Metrics::count_fast_request` numbers it.
fn endpoint_index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
        Endpoint::Messages => 3,
        Endpoint::CountTokens => 4,
        // Never served here (`hot_endpoint`); out of range, so not counted twice.
        Endpoint::Other => usize::MAX,
    }
}

fn endpoint_route(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Other => "/v1/{*path}",
        served => served.route(),
    }
}

/// Reads a request head from the start of `buffer` and decides who serves it.
fn parse(buffer: &[u8]) -> Parsed {
    if buffer.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // hyper answers 400 or 431 (or speaks HTTP/2, whose preface is no HTTP/1 head).
        Err(_) => return Parsed::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = request.path else {
        return Parsed::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let Some((endpoint, path)) = hot_endpoint(path) else {
        return Parsed::Other;
    };
    let mut lines = Vec::with_capacity(request.headers.len());
    let mut content_length = None;
    let mut close = false;
    // Offsets of the parser's slices in `buffer` (they all point into it).
    let offset = |part: &[u8]| (part.as_ptr() as usize).wrapping_sub(buffer.as_ptr() as usize);
    let span = |part: &[u8]| -> Option<Range<u32>> {
        let start = u32::try_from(offset(part)).ok()?;
        let end = u32::try_from(offset(part) + part.len()).ok()?;
        (end as usize <= head_len).then_some(start..end)
    };
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length, body_length(header.value)) {
                (None, Some(length)) => content_length = Some(length),
                (Some(seen), Some(length)) if seen == length => {}
                // Unreadable or conflicting lengths: hyper answers 400.
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if option.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        }
        let (Some(name), Some(value)) = (span(name), span(header.value)) else {
            return Parsed::Other;
        };
        lines.push((name, value));
    }
    // Bigger than `usize` holds, or bigger than `http.max_body_bytes` allows: admission
    // refuses it (413) before any of it is read.
    let content_length = content_length.unwrap_or(0);
    Parsed::Fast(FastRequest {
        endpoint,
        head_len,
        path,
        query,
        lines,
        content_length,
        close,
    })
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), at most what fits a `usize`.
fn body_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(head: &str) -> Option<FastRequest> {
        match parse(head.as_bytes()) {
            Parsed::Fast(request) => Some(request),
            _ => None,
        }
    }

    fn is_other(head: &str) -> bool {
        matches!(parse(head.as_bytes()), Parsed::Other)
    }

    #[test]
    fn hot_posts_with_a_length_are_served_here() {
        let head = "POST /v1/chat/completions?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: keep-alive, Close\r\n\r\n";
        let request = fast(&format!("{head}{{}}")).expect("fast");
        assert_eq!(request.endpoint, Endpoint::ChatCompletions);
        assert_eq!(request.path, "/chat/completions");
        assert_eq!(request.query.as_deref(), Some("a=1"));
        assert_eq!(request.content_length, 12);
        assert!(request.close);
        assert_eq!(request.head_len, head.len());
        let raw = RawHeaders::new(Bytes::copy_from_slice(head.as_bytes()), request.lines);
        let headers = RequestHeaders::Raw(raw);
        assert_eq!(headers.get("host"), Some(&b"x"[..]));
        assert_eq!(headers.text("connection"), Some("keep-alive, Close"));
        let request = fast("POST /v1/embeddings HTTP/1.1\r\n\r\n").expect("fast");
        assert_eq!(request.content_length, 0);
        assert!(!request.close);
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for head in [
            "GET /v1/chat/completions HTTP/1.1\r\n\r\n",
            "POST /v1/models HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions/ HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(is_other(head), "{head:?}");
        }
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert!(matches!(parse(b""), Parsed::Partial));
        assert!(matches!(
            parse(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le"),
            Parsed::Partial
        ));
    }

    #[test]
    fn repeated_equal_lengths_are_one_length() {
        let request =
            fast("POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(request.map(|r| r.content_length), Some(2));
        assert_eq!(body_length(b"18446744073709551615"), None);
        assert_eq!(body_length(b"007"), Some(7));
    }
}
