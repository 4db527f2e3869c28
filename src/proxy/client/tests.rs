//! The client against raw sockets that write canned bytes: every framing, reuse and
//! failure case is spelled out on the wire.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    chunked::{ChunkedDecoder, Decoded},
    pool::{Conn, Pool, Transport, IDLE_TIMEOUT, MAX_IDLE},
    RequestError, SendError, UpstreamClient, UpstreamTarget,
};
use crate::config::ProxyConfig;

fn client() -> UpstreamClient {
    UpstreamClient::new(&ProxyConfig::default()).unwrap()
}

fn target_at(base: &str) -> UpstreamTarget {
    UpstreamTarget::new(&base.parse().unwrap()).unwrap()
}

/// What a canned server does after reading one request.
#[derive(Clone)]
struct Reply {
    /// Written one after another, with a pause between them if `pause` is set.
    pieces: Vec<Vec<u8>>,
    pause: Option<Duration>,
    /// Close the connection after this answer.
    close: bool,
}

impl Reply {
    fn bytes(answer: &[u8]) -> Reply {
        Reply {
            pieces: vec![answer.to_vec()],
            pause: None,
            close: false,
        }
    }

    fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
}

struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Server {
    fn target(&self) -> UpstreamTarget {
        target_at(&format!("http://{}/v1", self.addr))
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

/// A server answering its n-th request (counted over all connections) with `answer(n)`.
/// With `linger`, a connection the client shut down is kept open rather than closed.
async fn serve(answer: impl Fn(usize) -> Reply + Send + Sync + 'static, linger: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).unwrap();
            acc.fetch_add(1, Ordering::SeqCst);
            let (answer, reqs) = (answer.clone(), reqs.clone());
            tokio::spawn(async move {
                loop {
                    let Some(request) = read_request(&mut stream).await else {
                        if linger {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        return;
                    };
                    let n = {
                        let mut reqs = reqs.lock().unwrap();
                        reqs.push(request);
                        reqs.len() - 1
                    };
                    let reply = answer(n);
                    for piece in &reply.pieces {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        if let Some(pause) = reply.pause {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    if reply.close {
                        return;
                    }
                }
            });
        }
    });
    Server {
        addr,
        accepted,
        requests,
    }
}

/// One request (head and `content-length` body) from `stream`; `None` at EOF.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                return Some(buf);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn body_of(response: super::UpstreamResponse) -> Result<Vec<u8>, std::io::Error> {
    let mut body = response.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        assert!(!chunk.is_empty(), "no empty chunks are handed on");
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn get(client: &UpstreamClient, target: &UpstreamTarget) -> Result<Vec<u8>, SendError> {
    let response = client
        .request(target, &Method::GET, "/x")
        .unwrap()
        .send(Bytes::new())
        .await?;
    Ok(body_of(response).await.unwrap())
}

const OK_HELLO: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn a_content_length_answer_is_read_and_the_request_is_written_as_expected() {
    let server = serve(|_| Reply::bytes(OK_HELLO), false).await;
    let (client, target) = (client(), server.target());
    let response = client
        .request(&target, &Method::POST, "/chat/completions?a=1")
        .unwrap()
        .header("authorization", b"Bearer up")
        .header("x-custom", b"v")
        .send(Bytes::from_static(b"{\"a\":1}"))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers["content-type"], "text/plain");
    assert_eq!(body_of(response).await.unwrap(), b"hello");
    let request = String::from_utf8(server.requests()[0].clone()).unwrap();
    assert_eq!(
        request,
        format!(
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer up\r\n\
             x-custom: v\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}",
            server.addr
        )
    );
}

#[tokio::test]
async fn content_length_is_sent_for_empty_posts_and_not_for_empty_gets() {
    let server = serve(|_| Reply::bytes(OK_HELLO), false).await;
    let (client, target) = (client(), server.target());
    get(&client, &target).await.unwrap();
    let response = client
        .request(&target, &Method::POST, "/x")
        .unwrap()
        .send(Bytes::new())
        .await
        .unwrap();
    body_of(response).await.unwrap();
    let requests = server.requests();
    assert!(!String::from_utf8_lossy(&requests[0]).contains("content-length"));
    assert!(String::from_utf8_lossy(&requests[1]).ends_with("content-length: 0\r\n\r\n"));
}

#[tokio::test]
async fn a_large_body_is_written_whole() {
    let server = serve(|_| Reply::bytes(OK_HELLO), false).await;
    let (client, target) = (client(), server.target());
    let body = Bytes::from((0..3_000_000u32).map(|i| i as u8).collect::<Vec<_>>());
    let response = client
        .request(&target, &Method::POST, "/x")
        .unwrap()
        .send(body.clone())
        .await
        .unwrap();
    assert_eq!(body_of(response).await.unwrap(), b"hello");
    let request = &server.requests()[0];
    assert!(request.ends_with(&body));
}

#[tokio::test]
async fn a_chunked_answer_split_byte_by_byte_is_decoded_and_handed_on_as_it_arrives() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value\r\nhello\r\n6 ; a=\"q\"\r\n world\r\nA\r\n0123456789\r\n\
        0\r\nx-trailer: 1\r\nx-other: 2\r\n\r\n";
    let server = serve(
        move |n| match n {
            0 => Reply {
                pieces: answer.iter().map(|b| vec![*b]).collect(),
                pause: Some(Duration::from_millis(1)),
                close: false,
            },
            _ => Reply::bytes(OK_HELLO),
        },
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    let response = client
        .request(&target, &Method::GET, "/x")
        .unwrap()
        .send(Bytes::new())
        .await
        .unwrap();
    let mut body = response.body;
    let mut chunks = 0;
    let mut out = Vec::new();
    while let Some(chunk) = body.chunk().await.unwrap() {
        chunks += 1;
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out, b"hello world0123456789");
    assert!(chunks > 3, "data is handed on before its chunk is complete");
    // Read to its end, the connection carries the next request.
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn chunk_data_is_handed_on_before_its_chunk_is_complete() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11\r\nfirst ")
            .await
            .unwrap();
        released.await.unwrap();
        stream.write_all(b"second half\r\n0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (client, target) = (client(), target_at(&format!("http://{addr}")));
    let response = client
        .request(&target, &Method::GET, "/")
        .unwrap()
        .send(Bytes::new())
        .await
        .unwrap();
    let mut body = response.body;
    let first = tokio::time::timeout(Duration::from_secs(5), body.chunk()).await;
    assert_eq!(first.unwrap().unwrap().unwrap(), "first ");
    release.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = body.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second half");
    assert_eq!(target.idle_connections(), 1);
}

#[test]
fn the_chunked_decoder_gives_the_same_data_however_the_input_is_split() {
    let wire: &[u8] = b"3\r\nabc\r\n1;x\r\nd\r\n10\r\n0123456789abcdef\r\n0\r\nt: 1\r\n\r\n";
    for split in 1..wire.len() {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut done = false;
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => out.extend_from_slice(&data),
                    Decoded::NeedMore => break,
                    Decoded::Done => {
                        done = true;
                        break;
                    }
                }
            }
        }
        assert!(done, "split {split}");
        assert_eq!(out, b"abcd0123456789abcdef", "split {split}");
    }
}

#[test]
fn the_chunked_decoder_refuses_malformed_framing() {
    for wire in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"5\nhello\r\n",
        b"3\r\nabcX\r\n",
        b"11111111111111111\r\n",
        b"3 x\r\n",
        b"0\r\nbad\ntrailer\r\n\r\n",
    ] {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(wire);
        let result = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(_)) => continue,
                other => break other,
            }
        };
        assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
    }
}

#[tokio::test]
async fn a_close_delimited_answer_is_read_to_eof_and_its_connection_not_reused() {
    let server = serve(
        |_| Reply::bytes(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").then_close(),
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    assert_eq!(get(&client, &target).await.unwrap(), b"until the end");
    assert_eq!(get(&client, &target).await.unwrap(), b"until the end");
    assert_eq!(server.accepted(), 2);
    assert_eq!(target.idle_connections(), 0);
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let server = serve(
        |_| {
            Reply::bytes(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                  HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            )
        },
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    let response = client
        .request(&target, &Method::POST, "/x")
        .unwrap()
        .send(Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CREATED);
    assert!(!response.headers.contains_key("link"));
    assert_eq!(body_of(response).await.unwrap(), b"ok");
}

#[tokio::test]
async fn head_answers_and_204_have_no_body_and_keep_the_connection() {
    let server = serve(
        |n| match n {
            0 => Reply::bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            1 => Reply::bytes(b"HTTP/1.1 204 No Content\r\n\r\n"),
            2 => Reply::bytes(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"),
            _ => Reply::bytes(OK_HELLO),
        },
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    let head = client
        .request(&target, &Method::HEAD, "/x")
        .unwrap()
        .send(Bytes::new())
        .await
        .unwrap();
    assert!(head.body.is_end());
    assert_eq!(body_of(head).await.unwrap(), b"");
    assert_eq!(get(&client, &target).await.unwrap(), b"");
    assert_eq!(get(&client, &target).await.unwrap(), b"");
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_connection_is_reused_for_the_next_request() {
    let server = serve(|_| Reply::bytes(OK_HELLO), false).await;
    let (client, target) = (client(), server.target());
    for _ in 0..3 {
        assert_eq!(get(&client, &target).await.unwrap(), b"hello");
        assert_eq!(target.idle_connections(), 1);
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn connection_close_on_either_side_means_no_reuse() {
    let server = serve(
        |n| match n {
            0 => {
                Reply::bytes(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            }
            2 => Reply::bytes(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            _ => Reply::bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        },
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    assert_eq!(get(&client, &target).await.unwrap(), b"ok");
    assert_eq!(target.idle_connections(), 0);
    let response = client
        .request(&target, &Method::GET, "/x")
        .unwrap()
        .header("connection", b"keep-alive, Close")
        .send(Bytes::new())
        .await
        .unwrap();
    assert_eq!(body_of(response).await.unwrap(), b"ok");
    assert_eq!(target.idle_connections(), 0);
    // An HTTP/1.0 answer is not reused either.
    assert_eq!(get(&client, &target).await.unwrap(), b"ok");
    assert_eq!(target.idle_connections(), 0);
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    let server = serve(|_| Reply::bytes(OK_HELLO).then_close(), false).await;
    let (client, target) = (client(), server.target());
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    assert_eq!(target.idle_connections(), 1);
    // Let the upstream's FIN arrive while the connection is idle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_pooled_connection_that_fails_before_the_request_is_written_is_retried_once() {
    let server = serve(|_| Reply::bytes(OK_HELLO), true).await;
    let (client, target) = (client(), server.target());
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    // Break the idle connection so that writing to it fails (EPIPE) while the upstream
    // keeps its end open: the pool cannot tell it is broken before using it.
    let mut idle = target.pool.with_idle(std::mem::take);
    for conn in &mut idle {
        conn.io.shutdown().await.unwrap();
    }
    target.pool.with_idle(|pool| pool.extend(idle));
    let response = client
        .request(&target, &Method::POST, "/x")
        .unwrap()
        .send(Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(body_of(response).await.unwrap(), b"hello");
    assert_eq!(server.accepted(), 2);
    assert_eq!(
        server.requests().len(),
        2,
        "the POST reached the upstream once"
    );
}

#[tokio::test]
async fn a_request_that_was_written_is_never_retried() {
    let server = serve(
        |n| match n {
            0 => Reply::bytes(OK_HELLO),
            _ => Reply::bytes(b"").then_close(),
        },
        false,
    )
    .await;
    let (client, target) = (client(), server.target());
    assert_eq!(get(&client, &target).await.unwrap(), b"hello");
    let err = client
        .request(&target, &Method::POST, "/x")
        .unwrap()
        .send(Bytes::from_static(b"{}"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SendError::Failed(m) if m.contains("closed the connection before the answer's head")),
        "{err}"
    );
    assert_eq!(server.accepted(), 1);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn dropping_a_body_midway_closes_its_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (saw_eof, eof) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut rest = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await;
        let _ = saw_eof.send(matches!(read, Ok(Ok(0))));
    });
    let (client, target) = (client(), target_at(&format!("http://{addr}")));
    let response = client
        .request(&target, &Method::GET, "/")
        .unwrap()
        .send(Bytes::new())
        .await
        .unwrap();
    let mut body = response.body;
    assert_eq!(body.chunk().await.unwrap().unwrap(), "0123456789");
    drop(body);
    assert!(eof.await.unwrap(), "the upstream saw EOF");
    assert_eq!(target.idle_connections(), 0);
}

#[tokio::test]
async fn malformed_answer_heads_are_errors() {
    let many_headers = format!(
        "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
        "x-h: v\r\n".repeat(101)
    );
    let huge_head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\r\n\r\n".to_vec(), "malformed answer head"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(), "malformed answer head"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
            "conflicting content-lengths",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok".to_vec(),
            "conflicting content-lengths",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok".to_vec(),
            "not a number",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
            "transfer-coding",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n".to_vec(),
            "transfer-coding",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".to_vec(),
            "switched protocols",
        ),
        (many_headers.into_bytes(), "more than 100 headers"),
        (huge_head.into_bytes(), "larger than 64 KiB"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-".to_vec(),
            "in the middle of the answer's head",
        ),
    ];
    for (answer, expected) in cases {
        let server = serve(move |_| Reply::bytes(&answer).then_close(), false).await;
        let err = client()
            .request(&server.target(), &Method::GET, "/")
            .unwrap()
            .send(Bytes::new())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, SendError::Failed(m) if m.contains(expected)),
            "expected `{expected}`, got `{err}`"
        );
    }
}

#[tokio::test]
async fn broken_bodies_are_errors_and_their_connections_are_not_reused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nxyz\r\nabc\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    ] {
        let server = serve(move |_| Reply::bytes(answer).then_close(), false).await;
        let target = server.target();
        let response = client()
            .request(&target, &Method::GET, "/")
            .unwrap()
            .send(Bytes::new())
            .await
            .unwrap();
        let mut body = response.body;
        let err = loop {
            match body.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{:?} ended cleanly", String::from_utf8_lossy(answer)),
                Err(err) => break err,
            }
        };
        assert!(!err.to_string().is_empty());
        assert!(body.is_end());
        assert!(
            body.chunk().await.unwrap().is_none(),
            "nothing after an error"
        );
        assert_eq!(target.idle_connections(), 0);
    }
}

#[tokio::test]
async fn invalid_request_headers_are_refused_and_nothing_is_sent() {
    let server = serve(|_| Reply::bytes(OK_HELLO), false).await;
    let (client, target) = (client(), server.target());
    for (name, value) in [
        ("x-evil", &b"a\r\nx-injected: 1"[..]),
        ("x-evil", b"a\nb"),
        ("x-evil", b"a\0b"),
        ("x evil", b"a"),
        ("x-evil:", b"a"),
        ("", b"a"),
        ("content-length", b"5"),
        ("Transfer-Encoding", b"chunked"),
        ("host", b"elsewhere"),
    ] {
        let err = client
            .request(&target, &Method::GET, "/")
            .unwrap()
            .header(name, value)
            .header("x-fine", b"ok")
            .send(Bytes::new())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, SendError::Failed(m) if m.starts_with("request not sent")),
            "{name}: {err}"
        );
    }
    assert!(matches!(
        client.request(&target, &Method::GET, "/a b"),
        Err(RequestError::Path)
    ));
    assert!(matches!(
        client.request(&target, &Method::GET, "/a\r\nb"),
        Err(RequestError::Path)
    ));
    assert_eq!(server.accepted(), 0);
}

#[test]
fn request_targets_join_the_base_path_and_the_request_path() {
    let client = client();
    for (base, path, line, host) in [
        (
            "http://127.0.0.1:9/v1",
            "/chat/completions",
            "/v1/chat/completions",
            "127.0.0.1:9",
        ),
        (
            "http://127.0.0.1:9/v1/",
            "/models?a=1&b=2",
            "/v1/models?a=1&b=2",
            "127.0.0.1:9",
        ),
        (
            "https://api.example.com",
            "/embeddings",
            "/embeddings",
            "api.example.com",
        ),
        ("https://api.example.com/", "", "/", "api.example.com"),
        ("http://[::1]:8080/p", "?q", "/p?q", "[::1]:8080"),
    ] {
        let target = target_at(base);
        let request = client.request(&target, &Method::GET, path).unwrap();
        let head = String::from_utf8(request.head).unwrap();
        assert_eq!(
            head,
            format!("GET {line} HTTP/1.1\r\nhost: {host}\r\n"),
            "{base}"
        );
    }
    let v6 = target_at("https://[::1]/");
    assert_eq!((&*v6.host, v6.port), ("::1", 443));
    assert!(UpstreamTarget::new(&"ftp://x/".parse().unwrap()).is_err());
}

#[tokio::test]
async fn the_pool_drops_expired_connections_and_keeps_at_most_max_idle() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let conn =
        || async move { Conn::new(Transport::Plain(TcpStream::connect(addr).await.unwrap())) };
    let pool = Pool::default();
    let start = Instant::now();
    for i in 0..MAX_IDLE + 3 {
        pool.check_in(conn().await, start + Duration::from_millis(i as u64));
    }
    assert_eq!(pool.idle_len(), MAX_IDLE);
    assert!(pool.check_out(start + Duration::from_secs(1)).is_some());
    assert_eq!(pool.idle_len(), MAX_IDLE - 1);
    // Checking one in later trims those that expired meanwhile.
    pool.check_in(
        conn().await,
        start + IDLE_TIMEOUT + Duration::from_millis(100),
    );
    assert!(pool.idle_len() < MAX_IDLE - 1);
    // Once the newest idle connection has expired, all of them have.
    assert!(pool.check_out(start + IDLE_TIMEOUT * 3).is_none());
    assert_eq!(pool.idle_len(), 0);
}

mod tls {
    use rustls::{
        pki_types::{CertificateDer, PrivatePkcs8KeyDer},
        HandshakeKind, ServerConfig,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;

    async fn answer_twice(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
        while read_request(stream).await.is_some() {
            stream.write_all(OK_HELLO).await.unwrap();
            stream.flush().await.unwrap();
        }
    }

    /// A TLS server for `localhost` with a self-signed certificate, on a port of its own,
    /// answering `hello` (and closing after each answer when `close_each`): its
    /// certificate, its port, the connections it accepted and how many of their handshakes
    /// resumed an earlier session.
    async fn tls_server(
        close_each: bool,
    ) -> (
        CertificateDer<'static>,
        u16,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
    ) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key.into())
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let resumed = Arc::new(AtomicUsize::new(0));
        let (accepted_count, resumed_count) = (accepted.clone(), resumed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let resumed_count = resumed_count.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                        resumed_count.fetch_add(1, Ordering::SeqCst);
                    }
                    if close_each {
                        if read_request(&mut tls).await.is_some() {
                            tls.write_all(CLOSE_HELLO).await.unwrap();
                            let _ = tls.shutdown().await;
                        }
                    } else {
                        answer_twice(&mut tls).await;
                    }
                });
            }
        });
        (cert, port, accepted, resumed)
    }

    const CLOSE_HELLO: &[u8] =
        b"HTTP/1.1 200 OK\r\nconnection: close\r\nContent-Length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn a_new_connection_resumes_the_tls_session_and_a_private_ca_is_trusted_per_upstream() {
        // Arrange: a server that closes after each answer, so each request needs a new
        // connection; one target trusting its certificate, one not.
        let (cert, port, accepted, resumed) = tls_server(true).await;
        let mut trusting = target_at(&format!("https://localhost:{port}/v1"));
        trusting.trust(&[cert]).unwrap();
        let other = target_at(&format!("https://localhost:{port}/v1"));
        let client = client();

        // Act
        let first = get(&client, &trusting).await.unwrap();
        let second = get(&client, &trusting).await.unwrap();
        let refused = get(&client, &other).await.err().unwrap();

        // Assert: two connections, the second resumed (no full handshake); the CA given
        // to one upstream is not trusted for another.
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"hello"[..], &b"hello"[..])
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(
            resumed.load(Ordering::SeqCst),
            1,
            "the second handshake resumed"
        );
        assert!(
            matches!(&refused, SendError::Failed(m) if m.contains("TLS handshake")),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn https_upstreams_are_reached_over_tls_and_their_certificate_is_checked() {
        let (cert, port, accepted, _) = tls_server(false).await;
        let target = target_at(&format!("https://localhost:{port}/v1"));

        let trusting = UpstreamClient::with_extra_roots(&ProxyConfig::default(), &[cert]).unwrap();
        assert_eq!(get(&trusting, &target).await.unwrap(), b"hello");
        assert_eq!(get(&trusting, &target).await.unwrap(), b"hello");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the TLS connection is reused"
        );

        // A fresh target: connections are pooled per target, whichever client opened them.
        let fresh = target_at(&format!("https://localhost:{port}/v1"));
        let err = get(&client(), &fresh).await.err().unwrap();
        assert!(
            matches!(&err, SendError::Failed(m) if m.contains("TLS handshake")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_clear_failure() {
    // Bind then drop: nothing listens on this port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = get(&client(), &target_at(&format!("http://{addr}")))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SendError::Failed(m) if m.starts_with("connecting to 127.0.0.1")),
        "{err}"
    );
}
