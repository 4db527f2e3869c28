//! `keygate health`: the container health check. One GET to the local listener, no
//! configuration, no store (a HEALTHCHECK needs no shell tools and must answer the same
//! whatever the process's config file and environment).

use std::time::Duration;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The URL to GET (http:// only: it checks the local listener).
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    pub url: url::Url,
    /// Give up after this many seconds (connecting and answering together).
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub timeout_secs: f64,
}

/// One GET to `args.url`; Ok when it answers 2xx within the timeout. hyper's client
/// connection is enough here: one request on a fresh connection, no pool, no TLS.
pub async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let url = &args.url;
    anyhow::ensure!(
        url.scheme() == "http",
        "--url: only http:// is supported (it checks the local listener), got {}",
        url.scheme()
    );
    let host = url.host_str().context("--url has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout-secs must be a positive number")?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let status = tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let status = sender.send_request(request).await?.status();
        connection.abort();
        anyhow::Ok(status)
    })
    .await
    .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))?
    .with_context(|| format!("{url}"))?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}
