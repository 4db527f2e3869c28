//! Connections to one upstream and the idle ones kept for reuse.
//!
//! The pool is a `Mutex<Vec<Conn>>` used as a stack: the most recently used connection
//! is reused first (its TCP window is warm and it is the least likely to have been closed
//! by the upstream), and the oldest sit at the bottom, where expiry trims them. Nothing
//! runs in the background: expired connections are dropped when the pool is touched.

use std::{
    io,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

/// Idle connections older than this are closed: upstreams and the middleboxes before
/// them drop idle connections after a minute or two, and a request sent on one of those
/// fails.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; a burst beyond this closes what it opened.
pub(super) const MAX_IDLE: usize = 256;

/// A TCP connection, or TLS over one.
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One upstream connection and the bytes read from it but not yet consumed.
pub(super) struct Conn {
    pub(super) io: Transport,
    /// Read but not yet consumed: the rest of a head's read, then body bytes. Empty
    /// whenever the connection is idle (anything left over means it is not reusable).
    pub(super) buf: BytesMut,
    /// When it was last checked in; meaningless while in use.
    idle_since: Instant,
}

impl Conn {
    pub(super) fn new(io: Transport) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
        }
    }

    /// Whether an idle connection can still carry a request: not closed by the upstream
    /// while it sat in the pool, and holding no unrequested bytes. Costs no system call
    /// unless the socket reports readiness (which an idle HTTP/1.1 connection only does
    /// when the upstream closed it, sent garbage, or the last read didn't drain it).
    fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.io.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) => {}
        }
        let mut byte = [0u8; 1];
        match &mut self.io {
            Transport::Plain(tcp) => {
                matches!(tcp.try_read(&mut byte), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
            // Read through TLS, not under it: the bytes may be a record that is no answer
            // (a session ticket), which rustls consumes and reports as nothing to read.
            Transport::Tls(tls) => {
                let mut buf = ReadBuf::new(&mut byte);
                Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

/// The idle connections to one upstream.
#[derive(Default)]
pub(super) struct Pool {
    /// Oldest at the bottom, most recently used on top.
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// The most recently used idle connection still usable, if any. Expired and closed
    /// ones met on the way are dropped (outside the lock: closing a socket is a system
    /// call, and a TLS one sends an alert).
    pub(super) fn check_out(&self, now: Instant) -> Option<Conn> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let conn = idle.pop()?;
                if now.saturating_duration_since(conn.idle_since) >= IDLE_TIMEOUT {
                    // Every connection below is older still.
                    let expired = std::mem::take(&mut *idle);
                    drop(idle);
                    drop(expired);
                    return None;
                }
                conn
            };
            let mut conn = conn;
            if conn.is_reusable() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose last answer was read to its end for the next request.
    pub(super) fn check_in(&self, mut conn: Conn, now: Instant) {
        conn.idle_since = now;
        let dropped: Vec<Conn> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let expired = idle
                .partition_point(|c| now.saturating_duration_since(c.idle_since) >= IDLE_TIMEOUT);
            let excess = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
            let dropped = if expired + excess > 0 {
                idle.drain(..expired + excess).collect()
            } else {
                Vec::new()
            };
            idle.push(conn);
            dropped
        };
        drop(dropped);
    }

    /// Idle connections held now (tests and diagnostics).
    pub(super) fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Lets a test reach into the idle connections (to break one on purpose).
    #[cfg(test)]
    pub(super) fn with_idle<R>(&self, f: impl FnOnce(&mut Vec<Conn>) -> R) -> R {
        f(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
