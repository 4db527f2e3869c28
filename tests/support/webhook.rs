//! A webhook receiver for the budget-alert tests: a small axum server on 127.0.0.1 that
//! records every POST to `/hook` and answers 204, or 500 to the first `fail_first` ones;
//! and [`verify`], a signature check written from the documented scheme (docs/webhooks.md),
//! not from keygate's code.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::task::JoinHandle;

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: String,
    /// What the receiver answered.
    pub answered: StatusCode,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

#[derive(Default)]
struct Inner {
    deliveries: Mutex<Vec<Delivery>>,
    fail_first: AtomicUsize,
}

pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hook`
    pub url: String,
    pub port: u16,
    inner: Arc<Inner>,
    server: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Answers every POST with 204.
    pub async fn start() -> Self {
        Self::failing_first(0).await
    }

    /// Answers the first `n` POSTs with 500, then 204.
    pub async fn failing_first(n: usize) -> Self {
        let inner = Arc::new(Inner {
            fail_first: AtomicUsize::new(n),
            ..Inner::default()
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            inner,
            server,
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.deliveries.lock().unwrap().clone()
    }

    /// Polls until at least `n` POSTs have arrived (panics after 20 s), and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.deliveries();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhook deliveries expected, {} arrived: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: String) -> StatusCode {
    let fail = inner
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answered = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    inner.deliveries.lock().unwrap().push(Delivery {
        headers,
        body,
        answered,
    });
    answered
}

/// Checks `keygate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256("{t}.{body}")>` with the
/// workspace's secret, and that `t` is within five minutes of now (a receiver's replay
/// guard). Returns `t`.
pub fn verify(secret: &str, delivery: &Delivery) -> Result<i64, String> {
    let header = delivery.header("keygate-signature");
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v1)) => signatures.push(v1.to_string()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| format!("no t= in {header}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", delivery.body).as_bytes());
    let expected = mac.finalize().into_bytes();
    let valid = signatures
        .iter()
        .filter_map(|s| hex::decode(s).ok())
        .any(|s| s.as_slice() == expected.as_slice());
    if !valid {
        return Err(format!("no valid v1 signature in {header}"));
    }
    let age = (chrono::Utc::now().timestamp() - timestamp).abs();
    if age > 300 {
        return Err(format!("timestamp {timestamp} is {age} s away from now"));
    }
    Ok(timestamp)
}
