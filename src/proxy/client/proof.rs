//! The client's answer framing against hyper's client, its reference: generated answers
//! (status lines, every way of framing a body, chunk extensions and trailers, 1xx heads)
//! and mutated ones, written to a real socket in arbitrary pieces, must read as hyper
//! reads them: the same status and body, or a refusal where hyper refuses. Where the two
//! differ by design, [`known_difference`] says how and why. `PROPTEST_CASES` raises the
//! case count (docs/testing.md).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    pool::{Conn, Pool, Transport},
    response::read_answer,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Answer { status: u16, body: Vec<u8> },
    Refused,
}

/// What keygate's client reads of `answer`, sent in pieces cut at `cuts`, then EOF.
async fn ours(answer: &[u8], cuts: &[usize], head: bool) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (answer, cuts) = (answer.to_vec(), cuts.to_vec());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut at = 0;
        for cut in cuts.into_iter().chain([answer.len()]) {
            let cut = cut.clamp(at, answer.len());
            if socket.write_all(&answer[at..cut]).await.is_err() {
                return;
            }
            at = cut;
            tokio::task::yield_now().await;
        }
        let _ = socket.shutdown().await;
        // Held open until the client is done, so that it sees EOF, never a reset.
        let _ = socket.read(&mut [0; 1]).await;
    });
    let tcp = TcpStream::connect(address).await.expect("connect");
    let outcome = match read_answer(
        Conn::new(Transport::Plain(tcp)),
        head,
        false,
        &Arc::new(Pool::default()),
    )
    .await
    {
        Err(_) => Outcome::Refused,
        Ok(mut response) => {
            let mut body = Vec::new();
            loop {
                match response.body.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => {
                        break Outcome::Answer {
                            status: response.status.as_u16(),
                            body,
                        }
                    }
                    Err(_) => break Outcome::Refused,
                }
            }
        }
    };
    let _ = server.await;
    outcome
}

/// What hyper's client (`client::conn::http1`) reads of the same bytes.
async fn hyper_reads(answer: &[u8], head: bool) -> Outcome {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let Ok((mut send, connection)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client)).await
    else {
        return Outcome::Refused;
    };
    tokio::spawn(connection);
    let answer = answer.to_vec();
    tokio::spawn(async move {
        // The request first: hyper refuses bytes it did not ask for.
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            match server.read(&mut byte).await {
                Ok(1) => request.push(byte[0]),
                _ => return,
            }
        }
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        let _ = server.read(&mut byte).await;
    });
    let method = if head {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri("/")
        .header("host", "upstream")
        .body(http_body_util::Empty::<Bytes>::new())
    else {
        return Outcome::Refused;
    };
    let Ok(response) = send.send_request(request).await else {
        return Outcome::Refused;
    };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(body) => Outcome::Answer {
            status,
            body: body.to_bytes().to_vec(),
        },
        Err(_) => Outcome::Refused,
    }
}

/// Answers keygate reads differently from hyper on purpose, and why. `None`: none
/// applies, so the two must agree.
fn known_difference(answer: &[u8], ours: &Outcome, hyper: &Outcome) -> Option<&'static str> {
    let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
    if *ours == Outcome::Refused && matches!(hyper, Outcome::Answer { status: 101, .. }) {
        return Some("a protocol switch nobody asked for is refused");
    }
    let mut lines = text.lines();
    let other_coding = lines.any(|line| {
        line.strip_prefix("transfer-encoding:")
            .is_some_and(|coding| coding.trim() != "chunked")
    });
    if *ours == Outcome::Refused && matches!(hyper, Outcome::Answer { .. }) && other_coding {
        // hyper reads such a body to the end of the connection (RFC 9112 §6.3), still
        // encoded; keygate would pass on a body it cannot read, so refuses it.
        return Some("a transfer-coding other than chunked is refused");
    }
    if *ours == Outcome::Refused
        && matches!(hyper, Outcome::Answer { .. })
        && trailer_has_bare_lf(answer)
    {
        // hyper hands trailer lines to httparse, which takes a lone LF as a line end
        // (RFC 9112 §2.2 allows, not requires, that); keygate wants CRLF there too.
        return Some("a lone LF in the trailers is refused");
    }
    None
}

/// Whether the trailer section (after the last chunk's line, `0…\r\n`) has an LF
/// without a CR before it.
fn trailer_has_bare_lf(answer: &[u8]) -> bool {
    let last_chunk = (1..answer.len()).rev().find(|&at| {
        answer[at - 1] == b'\n'
            && answer[at] == b'0'
            && answer[at..]
                .iter()
                .find(|&&b| b != b'0')
                .is_some_and(|b| matches!(b, b'\r' | b';' | b' '))
    });
    let Some(start) = last_chunk else {
        return false;
    };
    let Some(line_end) = answer[start..].windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let trailers = &answer[start + line_end + 2..];
    trailers
        .iter()
        .enumerate()
        .any(|(at, &b)| b == b'\n' && (at == 0 || trailers[at - 1] != b'\r'))
}

fn run(answer: &[u8], cuts: &[usize], head: bool) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (ours, hyper) = runtime.block_on(async {
        (
            ours(answer, cuts, head).await,
            hyper_reads(answer, head).await,
        )
    });
    if ours != hyper && known_difference(answer, &ours, &hyper).is_none() {
        return Err(TestCaseError::fail(format!(
            "keygate: {ours:?}\nhyper: {hyper:?}\nanswer: {:?}",
            String::from_utf8_lossy(answer)
        )));
    }
    Ok(())
}

/// How a generated answer frames its body.
#[derive(Debug, Clone)]
enum Framing {
    Length {
        off_by: i8,
    },
    Chunked {
        sizes: Vec<usize>,
        extension: bool,
        upper: bool,
        trailer: bool,
        zeros: usize,
    },
    Close,
    Both,
    OtherCoding,
    LengthList,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        3 => (-2i8..=2).prop_map(|off_by| if off_by.abs() == 2 { Framing::Length { off_by: 0 } } else { Framing::Length { off_by } }),
        4 => (proptest::collection::vec(1usize..20, 0..4), any::<bool>(), any::<bool>(), any::<bool>(), 0usize..3)
            .prop_map(|(sizes, extension, upper, trailer, zeros)| Framing::Chunked { sizes, extension, upper, trailer, zeros }),
        1 => Just(Framing::Close),
        1 => Just(Framing::Both),
        1 => Just(Framing::OtherCoding),
        1 => Just(Framing::LengthList),
    ]
}

fn build(
    status: u16,
    http10: bool,
    informational: bool,
    framing: &Framing,
    extra: &[&str],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    if informational {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    out.extend_from_slice(format!("{version} {status} X\r\n").as_bytes());
    for line in extra {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length { off_by } => {
            let length = (body.len() as i64 + i64::from(*off_by)).max(0);
            out.extend_from_slice(format!("content-length: {length}\r\n\r\n").as_bytes());
            out.extend_from_slice(body);
        }
        Framing::LengthList => {
            out.extend_from_slice(
                format!("content-length: {0}, {0}\r\n\r\n", body.len()).as_bytes(),
            );
            out.extend_from_slice(body);
        }
        Framing::Close => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
        Framing::OtherCoding => {
            out.extend_from_slice(b"transfer-encoding: gzip\r\n\r\n");
            out.extend_from_slice(body);
        }
        Framing::Both | Framing::Chunked { .. } => {
            if matches!(framing, Framing::Both) {
                out.extend_from_slice(b"content-length: 3\r\n");
            }
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let (sizes, extension, upper, trailer, zeros) = match framing {
                Framing::Chunked {
                    sizes,
                    extension,
                    upper,
                    trailer,
                    zeros,
                } => (sizes.clone(), *extension, *upper, *trailer, *zeros),
                _ => (vec![body.len().max(1)], false, false, false, 0),
            };
            let mut rest = body;
            for size in sizes {
                let size = size.min(rest.len());
                if size == 0 {
                    break;
                }
                let hex = if upper {
                    format!("{:0w$X}", size, w = zeros + 1)
                } else {
                    format!("{:0w$x}", size, w = zeros + 1)
                };
                out.extend_from_slice(hex.as_bytes());
                if extension {
                    out.extend_from_slice(b";name=\"v\"");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&rest[..size]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[size..];
            }
            out.extend_from_slice(b"0\r\n");
            if trailer {
                out.extend_from_slice(b"x-trailer: 1\r\nx-empty:\r\nx-tab:\ta b\x7e\xc3\xa9\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

fn answers() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let extra = proptest::collection::vec(
        prop::sample::select(vec![
            "content-type: text/plain",
            "connection: close",
            "connection: keep-alive",
            "x-empty:",
            "x-a: b",
            "x-sp : v",
            " folded",
            "x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ]),
        0..3,
    );
    (
        prop::sample::select(vec![200u16, 201, 204, 304, 404, 500, 101]),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        framing(),
        extra,
        proptest::collection::vec(prop::sample::select(b"ab\r\n0;".to_vec()), 0..40),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(status, http10, informational, framing, extra, body, head)| {
                (
                    build(status, http10, informational, &framing, &extra, &body),
                    head,
                )
            },
        )
}

/// An answer with a few bytes deleted, replaced or inserted.
fn mutated() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::sample::select(b"\r\n :;0aF-\t\x01\x7f\"".to_vec()),
    );
    (answers(), proptest::collection::vec(edit, 1..3)).prop_map(|((mut bytes, head), edits)| {
        for (at, kind, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 if at < bytes.len() => bytes[at] = byte,
                _ => bytes.insert(at, byte),
            }
        }
        (bytes, head)
    })
}

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(128))
}

/// Found by `mutated_answers_read_as_hyper_reads_them`: keygate read the chunks of an
/// HTTP/1.0 answer, whose framing RFC 9112 §6.1 calls faulty (hyper refuses it).
#[test]
fn an_http_1_0_answer_with_a_transfer_coding_is_refused() {
    let answer = b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
    assert_eq!(run(answer, &[], false).map_err(|e| e.to_string()), Ok(()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    assert_eq!(runtime.block_on(ours(answer, &[], false)), Outcome::Refused);
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn answers_read_as_hyper_reads_them(
        (answer, head) in answers(),
        mut cuts in proptest::collection::vec(0usize..200, 0..4),
    ) {
        cuts.sort_unstable();
        run(&answer, &cuts, head)?;
    }

    #[test]
    fn mutated_answers_read_as_hyper_reads_them(
        (answer, head) in mutated(),
        mut cuts in proptest::collection::vec(0usize..200, 0..4),
    ) {
        cuts.sort_unstable();
        run(&answer, &cuts, head)?;
    }
}
