//! Reading an answer: its head (parsed by httparse), how its body is framed (RFC 9112
//! §6.3), and the body itself, read from the socket by whichever task polls it.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{
    chunked::{ChunkedDecoder, Decoded},
    pool::{Conn, Pool},
};

/// Largest answer head accepted, and most header lines in it.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before a read: enough for a head or a few SSE events;
/// a body of known length gets up to `MAX_READ_SIZE` at once.
const READ_SIZE: usize = 8 * 1024;
const MAX_READ_SIZE: usize = 64 * 1024;

/// An upstream's answer, available once its head has arrived.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ResponseBody,
}

/// How the body's end is known.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes the connection.
    Close,
}

/// An answer's body, read straight from the upstream socket by whoever polls it. Read to
/// its end, it puts the connection back in the pool when it can carry another request;
/// dropped before that, it closes the connection, which cancels the upstream call.
#[derive(Default)]
pub struct ResponseBody {
    /// `None` once the body has ended (or for a body that never had one).
    read: Option<BodyRead>,
}

struct BodyRead {
    conn: Conn,
    framing: Framing,
    /// Where the connection goes at the end, if it can carry another request.
    pool: Option<Arc<Pool>>,
}

impl ResponseBody {
    /// The next piece of the body as it arrives, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, io::Error> {
        poll_fn(|cx| self.poll_chunk(cx)).await.transpose()
    }

    /// Whether the end has been reached (or the body failed): nothing more will come.
    pub fn is_end(&self) -> bool {
        self.read.is_none()
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        loop {
            let Some(read) = self.read.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut read.conn.buf;
            match &mut read.framing {
                Framing::Length(remaining) => {
                    if !buf.is_empty() {
                        let take =
                            usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                        let data = buf.split_to(take).freeze();
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            self.end();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::Done) => {
                        self.end();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => return Poll::Ready(Some(Err(self.fail(err)))),
                },
                Framing::Close => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(buf.split().freeze())));
                    }
                }
            }
            let room = match read.framing {
                Framing::Length(remaining) => {
                    usize::try_from(remaining).map_or(MAX_READ_SIZE, |r| r.clamp(1, MAX_READ_SIZE))
                }
                _ => READ_SIZE,
            };
            match ready!(fill(&mut read.conn, room, cx)) {
                Ok(0) if matches!(read.framing, Framing::Close) => {
                    self.read = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let err = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the answer's body",
                    );
                    return Poll::Ready(Some(Err(self.fail(err))));
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Some(Err(self.fail(err)))),
            }
        }
    }

    /// The body is complete: the connection goes back to the pool if it may.
    fn end(&mut self) {
        let Some(BodyRead {
            mut conn,
            pool: Some(pool),
            ..
        }) = self.read.take()
        else {
            return;
        };
        if conn.buf.is_empty() {
            // The buffer's spare room keeps its whole allocation alive (the chunks handed
            // on share it): past a read's worth, 256 idle connections would hold megabytes.
            if conn.buf.capacity() > READ_SIZE {
                conn.buf = BytesMut::new();
            }
            pool.check_in(conn, Instant::now());
        }
    }

    /// The body broke: its connection is closed, and nothing more will be read.
    fn fail(&mut self, err: io::Error) -> io::Error {
        self.read = None;
        err
    }
}

impl Stream for ResponseBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

/// Reads what is available into the connection's buffer, making `room` for it unless
/// some is left from earlier reads: `Ok(0)` at EOF.
fn fill(conn: &mut Conn, room: usize, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < room.min(READ_SIZE / 4) {
        conn.buf.reserve(room);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

/// Reads the answer's head (skipping 1xx ones) and returns the answer with its body.
/// `head_request` and `request_close` say what the request was; `pool` is where the
/// connection goes once the body is read, if the answer lets it be reused.
pub(super) async fn read_answer(
    mut conn: Conn,
    head_request: bool,
    request_close: bool,
    pool: &Arc<Pool>,
) -> Result<UpstreamResponse, String> {
    let head = loop {
        match parse_head(&mut conn.buf)? {
            Some(head) if head.status.is_informational() => {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err("the upstream switched protocols without being asked to".into());
                }
            }
            Some(head) => break head,
            None => {
                if conn.buf.len() >= MAX_HEAD_BYTES {
                    return Err(format!(
                        "the answer's head is larger than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    ));
                }
                let read = poll_fn(|cx| fill(&mut conn, READ_SIZE, cx))
                    .await
                    .map_err(|err| format!("reading the answer's head failed: {err}"))?;
                if read == 0 {
                    return Err(if conn.buf.is_empty() {
                        "the upstream closed the connection before the answer's head".into()
                    } else {
                        "the upstream closed the connection in the middle of the answer's head"
                            .into()
                    });
                }
            }
        }
    };
    let Head {
        status,
        headers,
        http11,
    } = head;
    let (framing, framing_reusable) = framing(status, &headers, head_request, http11)?;
    let reusable = framing_reusable && http11 && !request_close && !says_close(&headers);
    let empty = matches!(framing, Framing::Length(0));
    let mut body = ResponseBody {
        read: Some(BodyRead {
            conn,
            framing,
            pool: reusable.then(|| pool.clone()),
        }),
    };
    if empty {
        // Nothing to read: the connection is free for the next request already.
        body.end();
    }
    Ok(UpstreamResponse {
        status,
        headers,
        body,
    })
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    http11: bool,
}

/// One complete head from the front of `buf` (consumed), or `None` if more is needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut lines);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("the answer has more than {MAX_HEADERS} headers"))
        }
        Err(err) => return Err(format!("malformed answer head: {err}")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(format!(
            "the answer's head is larger than {} KiB",
            MAX_HEAD_BYTES / 1024
        ));
    }
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or("malformed answer head: bad status code")?;
    let http11 = parsed.version == Some(1);
    // Values share the head's bytes (one buffer, no copy per value).
    let offset = |part: &[u8]| (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let mut named = Vec::with_capacity(parsed.headers.len());
    for line in parsed.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes())
            .map_err(|_| format!("malformed answer head: bad header name `{}`", line.name))?;
        named.push((name, offset(line.value), line.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, start, value_len) in named {
        let value = head
            .get(start..start + value_len)
            .map(|_| head.slice(start..start + value_len))
            .and_then(|value| HeaderValue::from_maybe_shared(value).ok())
            .ok_or_else(|| format!("malformed answer head: bad value for header `{name}`"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        headers,
        http11,
    }))
}

/// How the body is framed, and whether that framing lets the connection be reused.
fn framing(
    status: StatusCode,
    headers: &HeaderMap,
    head_request: bool,
    http11: bool,
) -> Result<(Framing, bool), String> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    // RFC 9112 §6.1: HTTP/1.0 has no transfer codings; such an answer's framing is faulty.
    if !http11 && headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err("an HTTP/1.0 answer with a transfer-encoding".into());
    }
    let (mut codings, mut chunked_only) = (0, true);
    for coding in headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty())
    {
        codings += 1;
        chunked_only &= coding.eq_ignore_ascii_case(b"chunked");
    }
    if codings > 0 {
        // Only `chunked` alone is read: any other coding would have to be undone here.
        if !chunked_only || codings != 1 {
            return Err("the answer uses a transfer-coding other than `chunked`".into());
        }
        // A length beside a transfer-coding is a smuggling attempt or a broken upstream:
        // read the chunks, but trust nothing after them (RFC 9112 §6.1).
        let reusable = !headers.contains_key(http::header::CONTENT_LENGTH);
        return Ok((Framing::Chunked(ChunkedDecoder::default()), reusable));
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("the answer's content-length is not a number")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("the answer has conflicting content-lengths".into());
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(length) => (Framing::Length(length), true),
        None => (Framing::Close, false),
    })
}

/// Whether a `Connection` header lists `close`.
fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}
