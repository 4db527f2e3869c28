//! The pooled upstream HTTP client: hyper-util's connection pool over rustls (for `https`
//! upstreams) or plain TCP, HTTP/1.1 with keep-alive and `TCP_NODELAY`.
//!
//! Why not reqwest: a proxy already holds an `http::Request` and wants the body as hyper's
//! `Incoming`; reqwest would re-parse every URL into a `url::Url`, copy the headers into
//! its own builder and wrap the body twice, which showed up in profiles of the hot path.
//! hyper-util's client is the same pool reqwest uses underneath, minus those layers.

use std::{error::Error as _, io, time::Duration};

use bytes::Bytes;
use http::{uri::PathAndQuery, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config::ProxyConfig;

/// A request body sent upstream: always whole (keygate reads and checks it first).
pub type UpstreamBody = Full<Bytes>;
pub type UpstreamResponse = http::Response<hyper::body::Incoming>;

/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot set up TLS for upstreams: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why an upstream call failed before its answer's head arrived.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

impl UpstreamClient {
    pub fn new(config: &ProxyConfig) -> Result<Self, ClientBuildError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs_f64(config.connect_timeout_secs)));
        http.set_nodelay(true);
        // The TLS wrapper below handles `https`; the TCP connector must accept it.
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(UpstreamClient { inner })
    }

    /// Sends one request and resolves when the answer's head has arrived. Redirects are
    /// never followed: they would re-send the upstream credential to wherever they point.
    pub async fn send(
        &self,
        request: http::Request<UpstreamBody>,
    ) -> Result<UpstreamResponse, SendError> {
        self.inner.request(request).await.map_err(|err| {
            if is_timeout(&err) {
                SendError::ConnectTimeout
            } else {
                SendError::Failed(error_chain(&err))
            }
        })
    }
}

/// An upstream URI from its pre-parsed base (`scheme://authority/prefix`) and a request
/// path (and query) after `/v1`.
pub fn upstream_uri(base: &Uri, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    let mut path_and_query =
        String::with_capacity(prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    path_and_query.push_str(prefix);
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query)?);
    Ok(Uri::from_parts(parts)?)
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// `a: b: c` for logs: hyper-util's top-level message alone says only "client error".
fn error_chain(err: &hyper_util::client::legacy::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uris_join_the_base_prefix_path_and_query() {
        let base: Uri = "http://127.0.0.1:9/v1".parse().unwrap_or_default();
        let uri = upstream_uri(&base, "/chat/completions", None).map(|u| u.to_string());
        assert_eq!(
            uri.ok().as_deref(),
            Some("http://127.0.0.1:9/v1/chat/completions")
        );
        let uri = upstream_uri(&base, "/models", Some("a=1&b=2")).map(|u| u.to_string());
        assert_eq!(
            uri.ok().as_deref(),
            Some("http://127.0.0.1:9/v1/models?a=1&b=2")
        );
        let root: Uri = "https://api.example.com".parse().unwrap_or_default();
        let uri = upstream_uri(&root, "/embeddings", None).map(|u| u.to_string());
        assert_eq!(
            uri.ok().as_deref(),
            Some("https://api.example.com/embeddings")
        );
    }

    #[test]
    fn a_path_that_is_not_a_valid_uri_is_an_error_not_a_panic() {
        let base: Uri = "http://127.0.0.1:9/v1".parse().unwrap_or_default();
        assert!(upstream_uri(&base, "/a b", None).is_err());
    }
}
