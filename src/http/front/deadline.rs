//! The router path's rule for slow clients, the fast path's own: a request that has
//! started arriving has `http.request_read_timeout_secs` to arrive whole, head and body;
//! past it the connection is closed (a client trickling a body or never finishing a head
//! would otherwise hold a connection and a task for as long as it likes).
//!
//! Why by hand: hyper's header-read timeout runs from when a connection starts *waiting*
//! for a head, so it serves as the keep-alive limit here and cannot also be the 30 s
//! from a head's first byte; and hyper has no deadline for bodies. So the connection's
//! reads ([`Io`]) see bytes arrive, the service sees each request's head
//! ([`Clock::head`]), the end of its body ([`RequestBody`]) and the end of its answer
//! ([`AnswerBody`]); together they know when a request started arriving and when it has
//! arrived whole. Only HTTP/1 is timed: an HTTP/2 connection multiplexes requests.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

/// One connection's arrival deadline, shared by its reads and its requests.
#[derive(Clone)]
pub struct Clock(Arc<Mutex<State>>);

struct State {
    timeout: Duration,
    /// When the request now arriving must have arrived whole.
    deadline: Option<Instant>,
    /// A request's head has arrived and its answer is not finished: bytes read now are
    /// its body, or the next request sent ahead of time (pipelining).
    answering: bool,
    /// Bytes came while answering: the next request may have started arriving.
    read_while_answering: bool,
    /// HTTP/2: not timed here.
    off: bool,
}

impl Clock {
    /// A clock for a new router connection: `deadline` is its first request's if that
    /// started arriving on the fast path in pieces (the fast path's deadline holds on).
    pub fn new(timeout: Duration, deadline: Option<Instant>) -> Clock {
        Clock(Arc::new(Mutex::new(State {
            timeout,
            deadline,
            answering: false,
            read_while_answering: false,
            off: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes were read from the client.
    fn arrived(&self, bytes: &[u8]) {
        let mut state = self.state();
        if state.off {
            return;
        }
        if state.answering {
            // While a body is still due these are its bytes; after it, the next request's.
            if state.deadline.is_none() {
                state.read_while_answering = true;
            }
        } else if state.deadline.is_none() {
            if bytes.starts_with(b"PRI * HTTP/2.0") {
                state.off = true;
            } else {
                state.deadline = Some(Instant::now() + state.timeout);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let state = self.state();
        state.deadline.filter(|_| !state.off)
    }

    /// A request's head has arrived (the service is called); `whole`: it has no body.
    pub fn head(&self, http2: bool, whole: bool) {
        let mut state = self.state();
        state.off |= http2;
        state.answering = true;
        state.read_while_answering = false;
        if whole {
            state.deadline = None;
        } else if state.deadline.is_none() {
            // Its first bytes came with the last answer's: its body gets the time from here.
            state.deadline = Some(Instant::now() + state.timeout);
        }
    }

    /// The request's body has arrived, or nobody will read the rest (hyper then drains
    /// what is already there without waiting, or closes the connection).
    fn body_done(&self) {
        self.state().deadline = None;
    }

    /// The answer has gone out: the connection waits for its next request, which started
    /// arriving already if bytes came meanwhile (as on the fast path, its deadline runs
    /// from here).
    fn answered(&self) {
        let mut state = self.state();
        state.answering = false;
        state.deadline = None;
        if std::mem::take(&mut state.read_while_answering) && !state.off {
            state.deadline = Some(Instant::now() + state.timeout);
        }
    }
}

/// The router connection's socket: the bytes the fast path already read come first, and
/// a read still waiting at the arrival deadline fails (`TimedOut`), which closes the
/// connection.
pub struct Io {
    read: Bytes,
    stream: TcpStream,
    clock: Clock,
    /// Armed for `armed_for`, re-armed when the deadline changes.
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl Io {
    pub fn new(stream: TcpStream, read: Bytes, clock: Clock) -> Io {
        if !read.is_empty() {
            clock.arrived(&read);
        }
        Io {
            read,
            stream,
            clock,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.has_remaining() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.arrived(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some(deadline) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                if this.armed_for != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed_for = Some(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request did not arrive in time (http.request_read_timeout_secs)",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request body that tells the clock when it has all arrived, or is dropped unread.
pub struct RequestBody<B> {
    inner: B,
    clock: Clock,
}

impl<B> RequestBody<B> {
    pub fn new(inner: B, clock: Clock) -> Self {
        RequestBody { inner, clock }
    }
}

impl<B: HttpBody + Unpin> HttpBody for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.clock.body_done();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RequestBody<B> {
    fn drop(&mut self) {
        self.clock.body_done();
    }
}

/// An answer body that tells the clock when it has gone out (hyper drops it then).
pub struct AnswerBody<B> {
    inner: B,
    clock: Clock,
}

impl<B> AnswerBody<B> {
    pub fn new(inner: B, clock: Clock) -> Self {
        AnswerBody { inner, clock }
    }
}

impl<B: HttpBody + Unpin> HttpBody for AnswerBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for AnswerBody<B> {
    fn drop(&mut self) {
        self.clock.answered();
    }
}
