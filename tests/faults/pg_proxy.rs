//! A TCP proxy the test owns between keygate and the shared PostgreSQL, to take the
//! database away without touching the shared server (which other tests use):
//!
//! - [`PgProxy::cut`] closes every proxied connection and stops listening, so new
//!   connections are refused, as they are by a stopped server;
//! - [`PgProxy::restore`] listens again on the same port;
//! - [`PgProxy::lose_next_commit_reply`] lets the next transaction that wrote a given table
//!   commit on the server, then cuts its connection before the client hears the answer:
//!   what a network failure at the worst moment does.
//!
//! For the last one the proxy follows the client's side of the wire protocol (message
//! framing, `Parse`/`Bind` to know which statements a transaction ran, simple-query
//! `BEGIN`/`COMMIT`, as sqlx sends them), which is why URLs through it disable TLS.
//!
//! The port is taken below the kernel's ephemeral range, so that no outgoing connection
//! can be given it while the proxy is cut and `restore` can always bind it again.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::{AbortHandle, JoinHandle},
};

pub struct PgProxy {
    addr: SocketAddr,
    server: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    connections: Mutex<Vec<AbortHandle>>,
    /// Armed by `lose_next_commit_reply`: the table whose next committing transaction
    /// loses its answer.
    lose_commit_of: Mutex<Option<String>>,
    lost_commits: AtomicUsize,
}

impl PgProxy {
    /// Starts listening on a free port in front of `server`.
    pub async fn start(server: SocketAddr) -> PgProxy {
        let seed = uuid::Uuid::new_v4().as_u128();
        let (listener, addr) = (0..200u128)
            .find_map(|i| {
                // 20000..32000: below Linux's default ephemeral range (32768..60999).
                let port = 20_000 + ((seed >> 8).wrapping_add(i * 7919) % 12_000) as u16;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                listen(addr).ok().map(|l| (l, addr))
            })
            .expect("a free port for the PostgreSQL proxy");
        let proxy = PgProxy {
            addr,
            server,
            shared: Arc::default(),
            accept: Mutex::new(None),
        };
        proxy.spawn_accept(listener);
        proxy
    }

    /// `url` (a PostgreSQL URL) pointed at the proxy instead, without TLS.
    pub fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("a PostgreSQL URL");
        url.set_host(Some("127.0.0.1")).expect("set host");
        url.set_port(Some(self.addr.port())).expect("set port");
        url.query_pairs_mut().append_pair("sslmode", "disable");
        url.to_string()
    }

    /// Closes every proxied connection and stops listening.
    pub fn cut(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Listens again on the same port.
    pub fn restore(&self) {
        let listener = listen(self.addr).expect("the proxy's port is free again");
        self.spawn_accept(listener);
    }

    /// The next transaction that runs a statement naming `table` commits, but its
    /// connection is cut before the answer to `COMMIT` reaches the client.
    pub fn lose_next_commit_reply(&self, table: &str) {
        *self.shared.lose_commit_of.lock().unwrap() = Some(table.to_string());
    }

    /// Commit answers lost so far.
    pub fn lost_commits(&self) -> usize {
        self.shared.lost_commits.load(Ordering::SeqCst)
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let (server, shared) = (self.server, self.shared.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let connection = tokio::spawn(relay(client, server, shared.clone()));
                let mut connections = shared.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(connection.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Copies bytes both ways until either side closes, watching the client's messages for
/// the commit whose answer is to be lost.
async fn relay(client: TcpStream, server: SocketAddr, shared: Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(server).await else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = upstream.into_split();
    // Set before the doomed COMMIT is passed on: whatever the server says next is its
    // answer, and it never reaches the client.
    let swallow = AtomicBool::new(false);

    let to_server = async {
        let mut sniffer = Sniffer::default();
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = client_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            for statements in sniffer.feed(&buffer[..n]) {
                let mut armed = shared.lose_commit_of.lock().unwrap();
                if armed
                    .as_deref()
                    .is_some_and(|table| statements.iter().any(|sql| sql.contains(table)))
                {
                    *armed = None;
                    swallow.store(true, Ordering::SeqCst);
                }
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
        // The other direction decides when the connection ends.
        std::future::pending::<()>().await;
    };
    let to_client = async {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = server_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            if swallow.load(Ordering::SeqCst) {
                shared.lost_commits.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
}

/// Follows the client's messages of the PostgreSQL wire protocol (v3): which statement
/// each `Parse` names, which statements a transaction binds, and where it commits.
#[derive(Default)]
struct Sniffer {
    buffer: Vec<u8>,
    /// The startup message has passed (before it, messages have no type byte).
    started: bool,
    statements: HashMap<String, String>,
    /// SQL of the statements bound since the last `BEGIN`, `COMMIT` or `ROLLBACK`.
    transaction: Vec<String>,
}

impl Sniffer {
    /// Takes the next bytes from the client; returns the statements of every
    /// transaction that commits in them.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<String>> {
        self.buffer.extend_from_slice(bytes);
        let mut committed = Vec::new();
        loop {
            if !self.started {
                // Length-prefixed, untyped: SSLRequest, GSSENCRequest, then the startup
                // message (protocol 3.x in its first field).
                let Some(length) = self.length_at(0) else {
                    break;
                };
                if self.buffer.len() < length || length < 8 {
                    break;
                }
                let code = u32::from_be_bytes(self.buffer[4..8].try_into().unwrap());
                self.started = code >> 16 == 3;
                self.buffer.drain(..length);
                continue;
            }
            let Some(length) = self.length_at(1) else {
                break;
            };
            if self.buffer.len() < 1 + length || length < 4 {
                break;
            }
            let kind = self.buffer[0];
            let body: Vec<u8> = self.buffer[5..1 + length].to_vec();
            self.buffer.drain(..1 + length);
            let mut fields = body.split(|b| *b == 0).map(String::from_utf8_lossy);
            match kind {
                b'P' => {
                    let name = fields.next().unwrap_or_default().into_owned();
                    let sql = fields.next().unwrap_or_default().into_owned();
                    self.statements.insert(name, sql);
                }
                b'B' => {
                    let _portal = fields.next();
                    let name = fields.next().unwrap_or_default();
                    if let Some(sql) = self.statements.get(name.as_ref()) {
                        self.transaction.push(sql.clone());
                    }
                }
                b'Q' => {
                    let sql = fields
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_uppercase();
                    if sql.starts_with("COMMIT") {
                        committed.push(std::mem::take(&mut self.transaction));
                    } else if sql.starts_with("BEGIN") || sql.starts_with("ROLLBACK") {
                        self.transaction.clear();
                    }
                }
                _ => {}
            }
        }
        committed
    }

    fn length_at(&self, at: usize) -> Option<usize> {
        let bytes = self.buffer.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().unwrap()) as usize)
    }
}
