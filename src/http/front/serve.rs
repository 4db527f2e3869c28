//! Serving connections: accept, serve each connection's inference requests on the fast
//! path (`super::fast`), and hand the connection to hyper and the axum router when a
//! request needs them. On shutdown: stop accepting, close idle connections, let every
//! request in flight finish (streams included), then return.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::{pin, Pin},
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt;

use super::fast::{Connection, Ending};
use crate::state::AppState;

/// Serves `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = crate::http::router(state.clone());
    // Every connection holds a receiver; `closed()` resolves when the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers and SSE events are small writes; without TCP_NODELAY, Nagle's algorithm
        // would hold each until the client's delayed ACK (~40 ms).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
        }
        tokio::spawn(connection(
            state.clone(),
            router.clone(),
            stream,
            peer,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
    Ok(())
}

async fn connection(
    state: AppState,
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let ending = Connection::new(&state, stream, peer).serve(&mut stop).await;
    if let Ending::HandOff(stream, read) = ending {
        let io = Replay { read, stream };
        serve_with_hyper(
            router,
            io,
            peer,
            state.config.http.keep_alive_idle(),
            &mut stop,
        )
        .await;
    }
    // Dropping `stop` tells `serve` this connection is done.
}

/// The rest of a connection, served by hyper and the router (both HTTP/1 and, for a
/// client that opens with the HTTP/2 preface, h2c), as `axum::serve` would.
async fn serve_with_hyper(
    router: Router,
    io: Replay,
    peer: SocketAddr,
    keep_alive_idle: Duration,
    stop: &mut watch::Receiver<bool>,
) {
    let service = router.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.map(Body::new)
    });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The same idle limit as the fast path: hyper's header-read timeout runs while a
    // keep-alive connection waits for its next request's head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(keep_alive_idle);
    let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let mut stopping = *stop.borrow();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::trace!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Like axum::serve: a failed accept of one connection is skipped; anything else (such as
/// running out of file descriptors) is logged and retried after a second.
async fn accept_failed(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A connection whose first bytes were already read by the fast path: reads return
/// those first, then the socket's.
struct Replay {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Replay {
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
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
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
