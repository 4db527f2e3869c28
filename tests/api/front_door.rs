//! The front doors at the wire (src/http/front/): the inference fast path and the
//! hand-off to hyper must look to a client like one HTTP/1.1 server — keep-alive and
//! pipelining, a connection that moves to the router mid-way, bodies the fast path does
//! not read itself (chunked, `Expect`), HTTP/1.0, `Connection: close`, bad requests, a
//! client leaving early, slow clients, and draining at shutdown. Raw TCP, so what is
//! checked is exactly what goes over the wire. Every test runs through both front doors
//! (`http.fast_path` on and off), and one sends the same requests through both and
//! compares the answers.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy_helpers::{
    chat_body, spawn_proxy, spawn_proxy_with, stream_body, support::upstream as mock, Backend,
    FrontDoor, Setup, TestApp,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [],
    sqlite: [
        pipelined_requests_are_answered_in_order_on_one_connection,
        a_connection_moves_to_the_router_and_back_to_inference_without_a_hitch,
        chunked_and_expect_continue_bodies_are_served,
        http_1_0_requests_are_answered_and_the_connection_closed,
        connection_close_is_honoured,
        oversize_bodies_get_413_and_malformed_heads_get_400,
        a_refused_request_whose_body_never_came_closes_the_connection,
        a_client_that_leaves_while_the_upstream_thinks_frees_its_slot_at_once,
        shutdown_finishes_a_stream_in_flight_and_closes_idle_connections,
        headers_are_stripped_whatever_their_case_and_the_request_id_travels,
        idle_connections_close_after_the_keep_alive_timeout_and_busy_ones_stay,
        a_chunked_body_trickled_byte_by_byte_is_cut_off_at_the_read_timeout,
        a_head_whose_body_never_comes_is_cut_off_at_the_read_timeout,
        a_head_trickled_byte_by_byte_is_cut_off_at_the_read_timeout,
        requests_that_arrive_in_pieces_in_time_are_served_and_keep_alive_outlasts_the_read_timeout,
    ],
}

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

async fn pipelined_requests_are_answered_in_order_on_one_connection(setup: Setup) {
    // Arrange: three requests asking for replies of different lengths.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut wire = Wire::connect(&app).await;
    let mut burst = Vec::new();
    for words in [3, 1, 5] {
        burst.extend(chat(
            &key.secret,
            &chat_body("gpt-4o-mini", PROMPT, Some(words)),
        ));
    }

    // Act: all three in one write.
    wire.send(&burst).await;
    let answers = [
        wire.answer().await,
        wire.answer().await,
        wire.answer().await,
    ];

    // Assert
    let replies: Vec<String> = answers.iter().map(reply_of).collect();
    assert_eq!(
        replies,
        ["Hello there this", "Hello", "Hello there this is a"]
    );
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.header("x-request-id").is_some());
        // The upstream sends its own `date`; an answer carries one (RFC 9110 §5.3: a
        // field that is not a list appears once).
        assert_eq!(answer.header_count("date"), 1, "{:?}", answer.headers);
        assert_eq!(answer.header("connection"), None);
    }
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .filter_map(|a| a.header("x-request-id"))
        .collect();
    assert_eq!(ids.len(), 3, "each answer has its own request id");
    assert_eq!(app.mock.request_count(), 3);
}

async fn a_connection_moves_to_the_router_and_back_to_inference_without_a_hitch(setup: Setup) {
    // Arrange: a key with an rpm limit, so every /v1 answer carries rate-limit headers.
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({ "limits": { "rpm": 100 } })).await;
    let mut wire = Wire::connect(&app).await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(2));

    // Act: inference, then the model list (served by the router), then inference again on
    // the same connection, and a request the router refuses.
    wire.send(&chat(&key.secret, &body)).await;
    let first = wire.answer().await;
    wire.send(&get("/v1/models", &key.secret)).await;
    let models = wire.answer().await;
    wire.send(&chat(&key.secret, &body)).await;
    let second = wire.answer().await;
    wire.send(&get("/admin/v1/keys", &key.secret)).await;
    let admin = wire.answer().await;

    // Assert
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(models.status, 200, "{}", models.text());
    assert!(models.json()["data"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(reply_of(&first), reply_of(&second));
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("98"));
    assert_eq!(
        admin.status,
        403,
        "an inference key on the admin API: {}",
        admin.text()
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 2);
}

async fn chunked_and_expect_continue_bodies_are_served(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(2)).to_string();
    let (front, back) = body.split_at(body.len() / 2);

    // Act: a chunked body in two chunks, then a body sent only after `100 Continue`.
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{front}\r\n{:x}\r\n{back}\r\n0\r\n\r\n",
            key.secret,
            front.len(),
            back.len()
        )
        .as_bytes(),
    )
    .await;
    let chunked = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let interim = wire.answer().await;
    wire.send(body.as_bytes()).await;
    let expected = wire.answer().await;

    // Assert
    assert_eq!(chunked.status, 200, "{}", chunked.text());
    assert_eq!(reply_of(&chunked), "Hello there");
    assert_eq!(interim.status, 100);
    assert_eq!(expected.status, 200, "{}", expected.text());
    assert_eq!(reply_of(&expected), "Hello there");
}

async fn http_1_0_requests_are_answered_and_the_connection_closed(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();
    let mut wire = Wire::connect(&app).await;

    // Act
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let answer = wire.answer().await;

    // Assert
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(reply_of(&answer), "Hello");
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn connection_close_is_honoured(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut wire = Wire::connect(&app).await;

    // Act
    wire.send(&post(
        "/v1/chat/completions",
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
        "Connection: close\r\n",
    ))
    .await;
    let answer = wire.answer().await;

    // Assert
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn oversize_bodies_get_413_and_malformed_heads_get_400(setup: Setup) {
    // Arrange: a 1 KiB body limit.
    let app = spawn_proxy_with(setup, |config| config.http.max_body_bytes = 1024).await;
    let key = app.plain_key().await;
    let big = chat_body("gpt-4o-mini", &"word ".repeat(400), None);

    // Act
    let mut wire = Wire::connect(&app).await;
    wire.send(&chat(&key.secret, &big)).await;
    let too_large = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n")
        .await;
    let conflicting = wire.answer().await;
    let mut wire = Wire::connect(&app).await;
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await;
    let malformed = wire.answer().await;

    // Assert
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert_eq!(too_large.json()["error"]["code"], "body_too_large");
    assert_eq!(conflicting.status, 400, "{}", conflicting.text());
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_refused_request_whose_body_never_came_closes_the_connection(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let mut wire = Wire::connect(&app).await;

    // Act: a bad key, and only part of the declared body.
    wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer kg_nope\r\nContent-Length: 500\r\n\r\n{\"model\":")
        .await;
    let answer = wire.answer().await;

    // Assert: refused at once (no wait for the body), then closed rather than kept in an
    // unknown state.
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "invalid_api_key");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

async fn a_client_that_leaves_while_the_upstream_thinks_frees_its_slot_at_once(setup: Setup) {
    // Arrange: one request at a time; the first one's upstream takes 5 s to answer.
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({ "max_parallel": 1 })).await;
    let slow = chat_body(
        &format!("{}:5000", mock::MODEL_SLOW_FIRST_BYTE),
        PROMPT,
        None,
    );
    let mut leaving = Wire::connect(&app).await;
    leaving.send(&chat(&key.secret, &slow)).await;
    let upstream_has_it = app
        .mock
        .wait_until(Duration::from_secs(5), |m| m.request_count() == 1)
        .await;
    assert!(
        upstream_has_it,
        "the slow request never reached the upstream"
    );
    let busy = app
        .chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)))
        .await;
    assert_eq!(
        busy.status(),
        429,
        "the slot is taken while the first waits"
    );

    // Act: the first client goes away.
    drop(leaving);

    // Assert: its slot comes back long before the upstream would have answered.
    let started = std::time::Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let response = app
            .chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)))
            .await;
        status = response.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 200,
        "the slot was not released when the client left"
    );
}

async fn shutdown_finishes_a_stream_in_flight_and_closes_idle_connections(setup: Setup) {
    // Arrange: an idle keep-alive connection, and a stream that takes ~1.2 s.
    let mut app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let mut idle = Wire::connect(&app).await;
    idle.send(&chat(
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
    ))
    .await;
    assert_eq!(idle.answer().await.status, 200);
    let mut streaming = Wire::connect(&app).await;
    streaming
        .send(&chat(
            &key.secret,
            &stream_body(&format!("{}:200", mock::MODEL_SLOW_STREAM), PROMPT, None),
        ))
        .await;
    // Wait until the stream has started before shutting down.
    while !streaming.read.windows(4).any(|w| w == b"data") {
        assert!(streaming.fill().await);
    }

    // Act
    let (_, answer, idle_closed) = tokio::join!(
        app.shut_down(),
        streaming.answer(),
        idle.closed_within(Duration::from_secs(10)),
    );

    // Assert: the stream ran to its end, the idle connection was closed.
    assert_eq!(answer.status, 200);
    let text = answer.text();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\" reply\""), "{text}");
    assert!(
        idle_closed,
        "an idle connection stayed open through shutdown"
    );
}

async fn headers_are_stripped_whatever_their_case_and_the_request_id_travels(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();

    // Act: the fast path keeps the client's spelling of header names.
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHOST: keygate\r\nAuthorization: Bearer {}\r\nX-API-KEY: {}\r\nCookie: session=abc\r\nX-Forwarded-For: 203.0.113.9\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nOpenAI-Organization: org-x\r\nX-Client-Trace: trace-123\r\nContent-Length: {}\r\n\r\n{body}",
            key.secret,
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let generated = wire.answer().await;
    wire.send(&post(
        "/v1/chat/completions",
        &key.secret,
        &chat_body("gpt-4o-mini", PROMPT, Some(1)),
        "X-Request-Id: client-chosen-id\r\n",
    ))
    .await;
    let chosen = wire.answer().await;

    // Assert
    assert_eq!(generated.status, 200, "{}", generated.text());
    let requests = app.mock.requests_to("/v1/chat/completions");
    let first = &requests[0];
    for name in [
        "authorization",
        "x-api-key",
        "cookie",
        "x-forwarded-for",
        "keep-alive",
        "te",
        "openai-organization",
    ] {
        assert!(
            first.header(name).is_none(),
            "`{name}` was forwarded: {:?}",
            first.headers
        );
    }
    assert_eq!(first.header("x-client-trace"), Some("trace-123"));
    assert_eq!(first.header_all("host").len(), 1, "{:?}", first.headers);
    // The id keygate made is the one it answers with and the one the upstream saw.
    let id = generated.header("x-request-id").expect("an id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(first.header("x-request-id"), Some(id));
    assert_eq!(chosen.header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(requests[1].header("x-request-id"), Some("client-chosen-id"));
    assert_eq!(requests[1].header_all("x-request-id").len(), 1);
}

async fn idle_connections_close_after_the_keep_alive_timeout_and_busy_ones_stay(setup: Setup) {
    // Arrange: a 1 s idle limit.
    let app = spawn_proxy_with(setup, |config| config.http.keep_alive_idle_secs = 1.0).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1));
    let mut idle_fast = Wire::connect(&app).await;
    idle_fast.send(&chat(&key.secret, &body)).await;
    assert_eq!(idle_fast.answer().await.status, 200);
    let mut idle_router = Wire::connect(&app).await;
    idle_router.send(&get("/v1/models", &key.secret)).await;
    assert_eq!(idle_router.answer().await.status, 200);
    let mut busy = Wire::connect(&app).await;

    // Act: `busy` sends a request every 0.4 s for 2.4 s, well past the idle limit …
    let started = std::time::Instant::now();
    for _ in 0..6 {
        busy.send(&chat(&key.secret, &body)).await;
        assert_eq!(
            busy.answer().await.status,
            200,
            "a busy connection was closed"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Assert: … and stays open, while the idle ones were closed.
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(idle_fast.closed_within(Duration::from_secs(3)).await);
    assert!(idle_router.closed_within(Duration::from_secs(3)).await);
    busy.send(&chat(&key.secret, &body)).await;
    assert_eq!(busy.answer().await.status, 200);
    // Idle again: closed after about a second.
    let idle_since = std::time::Instant::now();
    assert!(busy.closed_within(Duration::from_secs(5)).await);
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

/// The read timeout these tests set (`http.request_read_timeout_secs`), and how much
/// later than it a connection may close (scheduling on a busy test machine).
const READ_TIMEOUT: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(2);

async fn spawn_with_short_read_timeout(setup: Setup) -> TestApp {
    spawn_proxy_with(setup, |config| {
        config.http.request_read_timeout_secs = READ_TIMEOUT.as_secs_f64();
    })
    .await
}

fn assert_cut_off(what: &str, closed_after: Option<Duration>) {
    let closed_after = closed_after.unwrap_or_else(|| panic!("{what}: still open"));
    assert!(
        closed_after >= READ_TIMEOUT.mul_f32(0.9) && closed_after < READ_TIMEOUT + SLACK,
        "{what}: closed after {closed_after:?}"
    );
}

async fn a_chunked_body_trickled_byte_by_byte_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout; chunked bodies always go through hyper.
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let body = chat_body("gpt-4o-mini", PROMPT, Some(1)).to_string();
    let mut wire = Wire::connect(&app).await;
    wire.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            key.secret,
            body.len()
        )
        .as_bytes(),
    )
    .await;

    // Act: the body, one byte every 200 ms.
    let closed_after = wire
        .trickle_until_closed(
            body.as_bytes(),
            Duration::from_millis(200),
            Duration::from_secs(8),
        )
        .await;

    // Assert
    assert_cut_off("a trickled chunked body", closed_after);
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_head_whose_body_never_comes_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout; one route the router serves, one the fast path does.
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let heads = [
        format!(
            "POST /admin/v1/keys HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            app.admin_key
        ),
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            key.secret
        ),
    ];

    for head in heads {
        // Act: the head and one byte of the body, then nothing.
        let mut wire = Wire::connect(&app).await;
        wire.send(head.as_bytes()).await;
        let closed_after = wire
            .trickle_until_closed(b"", Duration::from_millis(200), Duration::from_secs(8))
            .await;

        // Assert
        assert_cut_off(head.lines().next().unwrap_or_default(), closed_after);
    }
    assert_eq!(app.mock.request_count(), 0);
}

async fn a_head_trickled_byte_by_byte_is_cut_off_at_the_read_timeout(setup: Setup) {
    // Arrange: a 1 s read timeout (the keep-alive limit stays 75 s).
    let app = spawn_with_short_read_timeout(setup).await;
    let heads = [
        "GET /admin/v1/keys HTTP/1.1\r\nHost: keygate\r\nX-Slow: abcdefghijklmnopqrstuvwxyz",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nX-Slow: abcdefghijklmnopqrstuvwxyz",
    ];

    for head in heads {
        // Act: the request line at once, then the head one byte every 200 ms.
        let (line, rest) = head.split_at(head.find("\r\n").unwrap_or_default() + 2);
        let mut wire = Wire::connect(&app).await;
        wire.send(line.as_bytes()).await;
        let closed_after = wire
            .trickle_until_closed(
                rest.as_bytes(),
                Duration::from_millis(200),
                Duration::from_secs(8),
            )
            .await;

        // Assert
        assert_cut_off(line.trim_end(), closed_after);
    }
}

async fn requests_that_arrive_in_pieces_in_time_are_served_and_keep_alive_outlasts_the_read_timeout(
    setup: Setup,
) {
    // Arrange: a 1 s read timeout, the keep-alive limit at its default (75 s).
    let app = spawn_with_short_read_timeout(setup).await;
    let key = app.plain_key().await;
    let chat_request = chat(&key.secret, &chat_body("gpt-4o-mini", PROMPT, Some(1)));
    let create = post(
        "/admin/v1/keys",
        &app.admin_key,
        &json!({ "name": "sent in pieces" }),
        "",
    );
    let mut wire = Wire::connect(&app).await;

    // Act: each request in three pieces 300 ms apart (0.6 s in all), then an idle pause
    // longer than the read timeout before the next.
    let mut answers = Vec::new();
    for request in [&chat_request, &create, &chat_request] {
        let third = request.len() / 3;
        for piece in [
            &request[..third],
            &request[third..2 * third],
            &request[2 * third..],
        ] {
            wire.send(piece).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answers.push(wire.answer().await);
        tokio::time::sleep(READ_TIMEOUT * 2).await;
    }

    // Assert
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [200, 201, 200],
        "{:?}",
        answers.last().map(Answer::text)
    );
    wire.send(&chat_request).await;
    assert_eq!(wire.answer().await.status, 200);
}

/// The keys of one app that the differential requests use.
struct DoorKeys {
    plain: String,
    rpm_one: String,
    allowed: String,
    elsewhere: String,
    admin: String,
}

/// One request of the differential test, and whether its answer's body is keygate's
/// own (compared byte for byte) or the upstream's (ids and times differ per call).
struct Case {
    name: &'static str,
    request: fn(&DoorKeys) -> Vec<u8>,
    own_body: bool,
}

/// An answer reduced to what both doors must agree on: status, header names and the
/// values keygate sets (not `date` or a generated request id), and keygate's own bodies.
fn comparable(answer: &Answer, own_body: bool) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| name != "date" && name != "x-request-id")
        .map(|(name, value)| {
            let keep_value = !name.starts_with("x-ratelimit-reset")
                && name != "ratelimit"
                && name != "x-upstream-request-id";
            (
                name.clone(),
                if keep_value {
                    value.clone()
                } else {
                    String::new()
                },
            )
        })
        .collect();
    headers.sort();
    // Keygate's own bodies, less the time a refusal says to wait (it moves on).
    let body = if own_body {
        answer
            .text()
            .split("; retry in")
            .next()
            .unwrap_or_default()
            .to_owned()
    } else {
        String::new()
    };
    (answer.status, headers, body)
}

#[tokio::test(flavor = "current_thread")]
async fn both_front_doors_answer_every_request_alike() {
    // Arrange: the same app behind each door, with the same kinds of keys.
    let configure = |config: &mut keygate::Config| config.http.max_body_bytes = 2048;
    let mut doors = Vec::new();
    for door in [FrontDoor::Fast, FrontDoor::Router] {
        let setup = Setup {
            backend: Backend::Sqlite,
            door,
        };
        let app = spawn_proxy_with(setup, configure).await;
        let keys = DoorKeys {
            plain: app.plain_key().await.secret,
            rpm_one: app.key_with(json!({ "limits": { "rpm": 1 } })).await.secret,
            allowed: app
                .key_with(json!({ "allowed_models": [mock::DEFAULT_MODEL] }))
                .await
                .secret,
            elsewhere: app
                .key_with(json!({ "ip_allowlist": ["203.0.113.0/24"] }))
                .await
                .secret,
            admin: app.admin_key.clone(),
        };
        doors.push((app, keys));
    }
    fn chat_with(key: &str, body: &str, extra: &str) -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
    fn ok() -> String {
        chat_body(mock::DEFAULT_MODEL, PROMPT, Some(2)).to_string()
    }
    let cases = [
        Case {
            name: "answered",
            request: |k| chat_with(&k.plain, &ok(), ""),
            own_body: false,
        },
        Case {
            name: "no key",
            request: |_| {
                let body = ok();
                format!("POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
            },
            own_body: true,
        },
        Case {
            name: "unknown key",
            request: |_| chat_with("kg_nope", &ok(), ""),
            own_body: true,
        },
        Case {
            name: "admin key",
            request: |k| chat_with(&k.admin, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "aiXplain token scheme",
            request: |k| {
                let body = ok();
                format!("POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Token {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "x-api-key",
            request: |k| {
                let body = ok();
                format!("POST /v1/embeddings HTTP/1.1\r\nHost: keygate\r\nX-Api-Key: {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "not JSON",
            request: |k| chat_with(&k.plain, "{\"model\": ", ""),
            own_body: true,
        },
        Case {
            name: "not an object",
            request: |k| chat_with(&k.plain, "[1]", ""),
            own_body: true,
        },
        Case {
            name: "empty body",
            request: |k| chat_with(&k.plain, "", ""),
            own_body: true,
        },
        Case {
            name: "no model",
            request: |k| chat_with(&k.plain, r#"{"messages":[]}"#, ""),
            own_body: true,
        },
        Case {
            name: "model not allowed",
            request: |k| {
                chat_with(
                    &k.allowed,
                    &chat_body("gpt-4o-mini", PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "address not allowed",
            request: |k| chat_with(&k.elsewhere, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "rpm: first",
            request: |k| chat_with(&k.rpm_one, &ok(), ""),
            own_body: false,
        },
        Case {
            name: "rpm: refused",
            request: |k| chat_with(&k.rpm_one, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "too large",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::DEFAULT_MODEL, &"word ".repeat(500), None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "upstream 400",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::MODEL_ERROR_400, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "upstream 429",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::MODEL_ERROR_429, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "streamed",
            request: |k| {
                chat_with(
                    &k.plain,
                    &stream_body(mock::DEFAULT_MODEL, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: false,
        },
        Case {
            name: "client request id",
            request: |k| chat_with(&k.plain, &ok(), "X-Request-Id: mine-123\r\n"),
            own_body: false,
        },
        Case {
            name: "query string",
            request: |k| {
                let body = ok();
                format!("POST /v1/chat/completions?trace=1 HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "unknown key, body not all sent",
            request: |_| {
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer kg_nope\r\nContent-Length: 100\r\n\r\n{\"model\":".to_vec()
            },
            own_body: true,
        },
        Case {
            name: "two keys",
            request: |k| {
                chat_with(
                    &k.plain,
                    &ok(),
                    &format!("Authorization: Bearer {}\r\n", k.admin),
                )
            },
            own_body: false,
        },
    ];

    // Act: every case on one connection per door (a closed one is reopened).
    let mut answers: Vec<Vec<Answer>> = Vec::new();
    for (app, keys) in &doors {
        let mut wire = Wire::connect(app).await;
        let mut door_answers = Vec::new();
        for case in &cases {
            wire.send(&(case.request)(keys)).await;
            let answer = wire.answer().await;
            if answer.header("connection") == Some("close") {
                wire = Wire::connect(app).await;
            }
            door_answers.push(answer);
        }
        answers.push(door_answers);
    }

    // Assert
    let mut differences = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let fast = comparable(&answers[0][i], case.own_body);
        let router = comparable(&answers[1][i], case.own_body);
        if fast != router {
            differences.push(format!(
                "{}:\n  fast:   {fast:?}\n  router: {router:?}",
                case.name
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let at = |name: &str| cases.iter().position(|case| case.name == name).unwrap();
    for door in &answers {
        assert_eq!(
            door[at("client request id")].header("x-request-id"),
            Some("mine-123"),
            "the client's id is kept"
        );
        assert_eq!(
            door[at("unknown key, body not all sent")].header("connection"),
            Some("close")
        );
    }
}
