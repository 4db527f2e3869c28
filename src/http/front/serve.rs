//! Serving connections: accept, serve each connection's inference requests on the fast
//! path (`super::fast`), and hand the connection to hyper and the axum router when a
//! request needs them (or at once, with `http.fast_path = false`). On shutdown: stop
//! accepting, close idle connections, let every request in flight finish (streams
//! included), then return.

use std::{future::Future, io, net::SocketAddr, pin::pin, time::Duration};

use axum::{body::Body, extract::ConnectInfo, response::Response, Router};
use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt;

use super::{
    deadline::{AnswerBody, Clock, Io, RequestBody},
    fast::{Connection, Ending},
};
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
    let (stream, read, deadline) = if state.config.http.fast_path {
        match Connection::new(&state, stream, peer).serve(&mut stop).await {
            Ending::HandOff(stream, read, deadline) => (stream, read, deadline),
            Ending::Closed => return,
        }
    } else {
        (stream, Bytes::new(), None)
    };
    let http = &state.config.http;
    let clock = Clock::new(http.request_read_timeout(), deadline);
    let io = Io::new(stream, read, clock.clone());
    serve_with_hyper(router, io, clock, peer, http.keep_alive_idle(), &mut stop).await;
    // Dropping `stop` tells `serve` this connection is done.
}

/// The rest of a connection, served by hyper and the router (both HTTP/1 and, for a
/// client that opens with the HTTP/2 preface, h2c), as `axum::serve` would, plus the
/// arrival deadline `clock` keeps (`super::deadline`).
async fn serve_with_hyper(
    router: Router,
    io: Io,
    clock: Clock,
    peer: SocketAddr,
    keep_alive_idle: Duration,
    stop: &mut watch::Receiver<bool>,
) {
    let service = router
        .map_request({
            let clock = clock.clone();
            move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let http2 = request.version() == http::Version::HTTP_2;
                clock.head(http2, request.body().is_end_stream());
                let clock = clock.clone();
                request.map(|body| Body::new(RequestBody::new(body, clock)))
            }
        })
        .map_response(move |response: Response| {
            let clock = clock.clone();
            response.map(|body| Body::new(AnswerBody::new(body, clock)))
        });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The keep-alive limit: hyper's header-read timeout runs while a connection waits for
    // its next request's head (a request that started arriving has less: `Clock`).
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
