//! The upstream HTTP/1.1 client: one pool of keep-alive connections per upstream, plain
//! TCP or rustls, `TCP_NODELAY`, no redirects.
//!
//! Why not hyper's client (or reqwest, which is built on it): hyper runs each connection
//! in a task of its own and hands every request, answer head and body chunk across a
//! channel to it. On the proxy's hot path that hop (a task wake-up and a channel send per
//! request and per chunk) was the largest cost left. Here all of a request's I/O happens
//! in the task that sends it: `RequestBuilder::send` writes the request and reads the
//! answer's head on the caller's task, and `ResponseBody` reads the socket in whichever
//! task polls it. Heads are parsed by httparse; only the framing (`response`, `chunked`)
//! and the pool (`pool`) are written here, because they are what that design changes.
//!
//! Requests are written from raw bytes (`RequestBuilder::header` takes `&str` and `&[u8]`)
//! so a caller holding headers from its own parser needs no `http::HeaderMap`.

mod chunked;
mod pool;
mod response;
mod tls;

#[cfg(test)]
mod proof;
#[cfg(test)]
mod tests;

use std::{
    io::{self, IoSlice},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Uri};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsConnector;

pub use self::response::{ResponseBody, UpstreamResponse};
use self::{
    pool::{Conn, Pool, Transport},
    response::read_answer,
};
use crate::config::ProxyConfig;

/// Bodies up to this size are copied after the head and leave in one write; larger ones
/// are written from their own buffer (vectored), which a copy would cost more than.
const INLINE_BODY: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot set up TLS for upstreams: {0}")]
    Tls(#[from] rustls::Error),
    #[error("proxy.connect_timeout_secs is not a usable duration")]
    ConnectTimeout,
}

/// Why an upstream call failed before its answer's head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    /// Anything else; the message says what went wrong (it is logged, never sent).
    #[error("{0}")]
    Failed(String),
}

/// Why a request cannot be written. Nothing is sent for such a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("the path contains a space, a control or a non-ASCII byte")]
    Path,
    #[error("invalid request header name `{0}`")]
    HeaderName(String),
    #[error("the value of request header `{0}` contains CR, LF or NUL")]
    HeaderValue(String),
    #[error("request header `{0}` is written by the client itself")]
    Reserved(String),
}

/// Why a configured base URL cannot be an upstream.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the scheme must be http or https")]
    Scheme,
    #[error("the URL has no host")]
    Host,
    #[error("the host is not a valid TLS server name")]
    ServerName,
}

/// Where an upstream is (from its base URL) and its idle connections.
pub struct UpstreamTarget {
    /// For connecting: the host without IPv6 brackets.
    host: Box<str>,
    port: u16,
    /// `host[:port]` as the `Host` header carries it.
    host_header: Box<str>,
    /// `Some` for `https`.
    server_name: Option<ServerName<'static>>,
    /// The base URL's path without its trailing slash; every request path is appended.
    prefix: Box<str>,
    pool: Arc<Pool>,
    /// This upstream's own TLS setup when it trusts a private CA (`ca_file`); otherwise
    /// the client's. Its own, so a CA given for one upstream is trusted for no other.
    tls: Option<TlsConnector>,
}

impl UpstreamTarget {
    pub fn new(base: &Uri) -> Result<Self, TargetError> {
        let https = match base.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(TargetError::Scheme),
        };
        let host = base
            .host()
            .filter(|h| !h.is_empty())
            .ok_or(TargetError::Host)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = match https {
            true => {
                Some(ServerName::try_from(bare.to_owned()).map_err(|_| TargetError::ServerName)?)
            }
            false => None,
        };
        Ok(UpstreamTarget {
            host: bare.into(),
            port: base.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host_header: match base.port_u16() {
                Some(port) => format!("{host}:{port}").into(),
                None => host.into(),
            },
            server_name,
            prefix: base.path().trim_end_matches('/').into(),
            pool: Arc::default(),
            tls: None,
        })
    }

    /// Trusts `roots` (DER certificates, e.g. a private CA) for this upstream only,
    /// besides the public web roots.
    pub fn trust(&mut self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        self.tls = Some(TlsConnector::from(tls::client_config(roots)?));
        Ok(())
    }

    /// Connections kept idle for reuse right now.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_len()
    }
}

#[derive(Clone)]
pub struct UpstreamClient {
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(config: &ProxyConfig) -> Result<Self, ClientBuildError> {
        Self::with_extra_roots(config, &[])
    }

    /// A client that also trusts `roots` (DER certificates) for `https` upstreams, besides
    /// the public web roots: for an upstream behind a private CA, and for tests.
    pub fn with_extra_roots(
        config: &ProxyConfig,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, ClientBuildError> {
        Ok(UpstreamClient {
            tls: TlsConnector::from(tls::client_config(roots)?),
            connect_timeout: Duration::try_from_secs_f64(config.connect_timeout_secs)
                .map_err(|_| ClientBuildError::ConnectTimeout)?,
        })
    }

    /// Starts a request to `target`. `path_and_query` (e.g. `/chat/completions?x=1`) is
    /// appended to the base URL's path. The method, path and `Host` are written now;
    /// headers follow with `RequestBuilder::header`.
    pub fn request<'a>(
        &'a self,
        target: &'a UpstreamTarget,
        method: &Method,
        path_and_query: &str,
    ) -> Result<RequestBuilder<'a>, RequestError> {
        if !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RequestError::Path);
        }
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        let start = head.len();
        head.extend_from_slice(target.prefix.as_bytes());
        head.extend_from_slice(path_and_query.as_bytes());
        if head.get(start) != Some(&b'/') {
            head.insert(start, b'/');
        }
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(target.host_header.as_bytes());
        head.extend_from_slice(b"\r\n");
        Ok(RequestBuilder {
            client: self,
            target,
            head,
            head_request: method == Method::HEAD,
            // RFC 9110 §8.6: these methods anticipate a body, so say when it is empty.
            length_always: matches!(*method, Method::POST | Method::PUT | Method::PATCH),
            close: false,
            error: None,
        })
    }

    /// A new connection to `target`, TLS included, within the connect timeout.
    async fn connect(&self, target: &UpstreamTarget) -> Result<Conn, SendError> {
        tokio::time::timeout(self.connect_timeout, self.open(target))
            .await
            .unwrap_or(Err(SendError::ConnectTimeout))
    }

    async fn open(&self, target: &UpstreamTarget) -> Result<Conn, SendError> {
        let tcp = TcpStream::connect((&*target.host, target.port))
            .await
            .map_err(|err| match err.kind() {
                io::ErrorKind::TimedOut => SendError::ConnectTimeout,
                _ => SendError::Failed(format!(
                    "connecting to {}:{} failed: {err}",
                    target.host, target.port
                )),
            })?;
        // Requests and SSE events are small writes that must leave at once.
        tcp.set_nodelay(true)
            .map_err(|err| SendError::Failed(format!("cannot set TCP_NODELAY: {err}")))?;
        let io = match &target.server_name {
            None => Transport::Plain(tcp),
            Some(name) => {
                let connector = target.tls.as_ref().unwrap_or(&self.tls);
                let tls = connector.connect(name.clone(), tcp).await.map_err(|err| {
                    SendError::Failed(format!(
                        "TLS handshake with {}:{} failed: {err}",
                        target.host, target.port
                    ))
                })?;
                Transport::Tls(Box::new(tls))
            }
        };
        Ok(Conn::new(io))
    }
}

/// A request being written: its head so far, in wire format.
pub struct RequestBuilder<'a> {
    client: &'a UpstreamClient,
    target: &'a UpstreamTarget,
    head: Vec<u8>,
    head_request: bool,
    length_always: bool,
    /// The caller sent `Connection: close`: the connection is not reused.
    close: bool,
    /// The first header that could not be written; `send` reports it.
    error: Option<RequestError>,
}

impl RequestBuilder<'_> {
    /// Adds a header line. An invalid one (name not a token, value with CR, LF or NUL,
    /// or a framing header this client writes itself) makes `send` fail: it is never
    /// written, so it can never split or smuggle a request.
    pub fn header(mut self, name: impl AsRef<[u8]>, value: &[u8]) -> Self {
        let name = name.as_ref();
        if self.error.is_some() {
            return self;
        }
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            self.error = Some(RequestError::HeaderName(
                String::from_utf8_lossy(name).escape_debug().to_string(),
            ));
        } else if value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            self.error = Some(RequestError::HeaderValue(
                String::from_utf8_lossy(name).into_owned(),
            ));
        } else if ["host", "content-length", "transfer-encoding"]
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved.as_bytes()))
        {
            self.error = Some(RequestError::Reserved(
                String::from_utf8_lossy(name).into_owned(),
            ));
        } else {
            if name.eq_ignore_ascii_case(b"connection") {
                self.close |= value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            self.head.extend_from_slice(name);
            self.head.extend_from_slice(b": ");
            self.head.extend_from_slice(value);
            self.head.extend_from_slice(b"\r\n");
        }
        self
    }

    /// Sends the request with `body` and resolves when the answer's head has arrived
    /// (1xx answers skipped). Redirects are never followed: they would re-send the
    /// upstream credential to wherever they point.
    ///
    /// A pooled connection that fails before any of the request was written is replaced
    /// by a new one, once. Once bytes were written, nothing is retried: the upstream may
    /// have acted on them.
    pub async fn send(self, body: Bytes) -> Result<UpstreamResponse, SendError> {
        let RequestBuilder {
            client,
            target,
            mut head,
            head_request,
            length_always,
            close,
            error,
        } = self;
        if let Some(err) = error {
            return Err(SendError::Failed(format!("request not sent: {err}")));
        }
        if !body.is_empty() || length_always {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let body: &[u8] = if body.len() <= INLINE_BODY {
            head.extend_from_slice(&body);
            &[]
        } else {
            &body
        };

        let reused = match target.pool.check_out(Instant::now()) {
            Some(mut conn) => match write_request(&mut conn.io, &head, body).await {
                Ok(()) => Some(conn),
                // Nothing reached the upstream: a new connection can carry the request.
                Err(Unwritten::Nothing(_)) => None,
                Err(err) => return Err(err.into_send_error()),
            },
            None => None,
        };
        let conn = match reused {
            Some(conn) => conn,
            None => {
                // Boxed: the connect and TLS handshake state is large, and would otherwise
                // be part of (and moved with) every request's future.
                let mut conn = Box::pin(client.connect(target)).await?;
                write_request(&mut conn.io, &head, body)
                    .await
                    .map_err(Unwritten::into_send_error)?;
                conn
            }
        };
        read_answer(conn, head_request, close, &target.pool)
            .await
            .map_err(SendError::Failed)
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A request write that failed, and whether any of it had been accepted.
enum Unwritten {
    /// The first write failed: nothing reached the upstream.
    Nothing(io::Error),
    Partly(io::Error),
}

impl Unwritten {
    fn into_send_error(self) -> SendError {
        let (Unwritten::Nothing(err) | Unwritten::Partly(err)) = self;
        SendError::Failed(format!("writing the request failed: {err}"))
    }
}

/// Writes the whole request, handling partial writes.
async fn write_request(io: &mut Transport, head: &[u8], body: &[u8]) -> Result<(), Unwritten> {
    let (mut head_at, mut body_at) = (0, 0);
    let mut accepted = false;
    let fail = |accepted: bool, err: io::Error| match accepted {
        false => Unwritten::Nothing(err),
        true => Unwritten::Partly(err),
    };
    while head_at < head.len() || body_at < body.len() {
        // One buffer (the usual case: small bodies ride behind the head) goes out with a
        // plain write, which costs the kernel less than a vectored one.
        let written = if body_at == body.len() {
            io.write(&head[head_at..]).await
        } else {
            let slices = [
                IoSlice::new(&head[head_at..]),
                IoSlice::new(&body[body_at..]),
            ];
            io.write_vectored(&slices).await
        };
        let written = match written {
            Ok(0) => return Err(fail(accepted, io::ErrorKind::WriteZero.into())),
            Ok(written) => written,
            Err(err) => return Err(fail(accepted, err)),
        };
        accepted = true;
        let to_head = written.min(head.len() - head_at);
        head_at += to_head;
        body_at += written - to_head;
    }
    io.flush().await.map_err(Unwritten::Partly)
}
