//! The real `keygate serve` binary stopped under load. SIGTERM: requests in flight finish
//! and every request answered 200 is in the usage rows after the process exits. SIGKILL:
//! at most the usage of the last flush interval (1 s, DESIGN §7) is lost, and nothing is
//! counted that was not answered. Both stores.

use std::time::{Duration, Instant};

use keygate::keys::Token;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    load::{Request, Sample, Traffic},
    store_outage::stored_usage,
    support::{
        app::PRICED_MODEL,
        backends::{backend_tests, Backend},
        db::TestDb,
        http::{chat_body, json_body},
        serve::{proxy_toml, spawn_serve_with, strip_ansi, ServeProcess},
        upstream::{self, MockUpstream},
    },
};

backend_tests! {
    flavor: multi_thread,
    both: [
        sigterm_under_load_loses_no_usage,
        sigkill_under_load_loses_at_most_the_last_flush_interval,
    ],
}

/// The usage writer's flush interval (`app::USAGE_FLUSH_EVERY`, DESIGN §7).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded test machine: a flush's own duration, the moment the
/// meter records before the client reads its answer.
const SLACK: Duration = Duration::from_millis(500);
/// How long the slow requests wait at the mock before their answer.
const SLOW_MS: u64 = 300;

/// `keygate serve` on `db`, in front of `mock` (the proxy tests' configuration), and its
/// bootstrap admin key.
struct Server {
    process: ServeProcess,
    admin_key: String,
}

impl Server {
    async fn start(db: &TestDb, mock: &MockUpstream) -> Server {
        let admin_key = Token::generate().expose().to_string();
        let process = spawn_serve_with(
            db,
            &proxy_toml(mock),
            &[("KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_key.as_str())],
        )
        .await;
        Server { process, admin_key }
    }

    fn url(&self, path: &str) -> String {
        self.process.url(path)
    }

    async fn create_key(&self) -> (String, String) {
        let response = reqwest::Client::new()
            .post(self.url("/admin/v1/keys"))
            .bearer_auth(&self.admin_key)
            .json(&json!({ "name": "under load" }))
            .send()
            .await
            .unwrap();
        let (status, key) = json_body(response).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["id"].as_str().unwrap().to_string(),
            key["secret"].as_str().unwrap().to_string(),
        )
    }

    fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits for the process to end; returns its exit code (`None`: killed by a signal).
    async fn exit(&mut self) -> Option<i32> {
        self.process.exit().await
    }

    fn stderr(&self) -> String {
        strip_ansi(&self.process.stderr_so_far())
    }
}

/// Fast requests from four workers and slow ones (held `SLOW_MS` at the upstream) from
/// two, so that some are always in flight.
fn load(server: &Server, key: &str) -> (Traffic, Traffic) {
    let fast = Traffic::start(
        Request {
            url: server.url("/v1/chat/completions"),
            key: key.to_string(),
            body: chat_body(PRICED_MODEL, "hello there", None),
            headers: Vec::new(),
        },
        4,
        Duration::from_millis(5),
        true,
    );
    let slow = Traffic::start(
        Request {
            url: server.url("/v1/chat/completions"),
            key: key.to_string(),
            body: chat_body(upstream::MODEL_SLOW_FIRST_BYTE, "hello there", None),
            headers: vec![("x-mock-delay-ms", SLOW_MS.to_string())],
        },
        2,
        Duration::from_millis(5),
        true,
    );
    (fast, slow)
}

/// The load's samples, once the server is gone (the workers stop at their first request
/// without an answer; the rest are stopped here).
async fn collect(load: (Traffic, Traffic)) -> Vec<Sample> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fast, slow) = load;
    let mut samples = fast.stop().await;
    samples.extend(slow.stop().await);
    samples.sort_by_key(|s| s.started);
    samples
}

async fn sigterm_under_load_loses_no_usage(backend: Backend) {
    let mock = MockUpstream::start().await;
    let db = TestDb::new(backend).await;
    let mut server = Server::start(&db, &mock).await;
    let (key_id, key) = server.create_key().await;

    let traffic = load(&server, &key);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // One request certainly in flight at the signal: held 1.5 s at the upstream.
    let held = tokio::spawn({
        let request = reqwest::Client::new()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-mock-delay-ms", "1500")
            .json(&chat_body(
                upstream::MODEL_SLOW_FIRST_BYTE,
                "hello there",
                None,
            ));
        async move {
            let started = Instant::now();
            let status = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            };
            Sample {
                started,
                ended: Instant::now(),
                status,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let term = Instant::now();
    let code = server.exit().await;
    let mut samples = collect(traffic).await;
    let held = held.await.unwrap();
    assert!(
        held.ok() && held.ended > term,
        "the request in flight at the signal: {held:?}"
    );
    samples.push(held);
    let stderr = server.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("keygate stopped"), "{stderr}");

    // Requests the server had received (sent 100 ms or more before the signal) all
    // finished, those in flight at the upstream included.
    let received: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started + Duration::from_millis(100) <= term)
        .collect();
    let unanswered: Vec<&&Sample> = received.iter().filter(|s| !s.ok()).collect();
    assert!(unanswered.is_empty(), "{unanswered:?}");
    let in_flight = received.iter().filter(|s| s.ended > term).count();

    let answered = samples.iter().filter(|s| s.ok()).count() as i64;
    let (requests, ..) = stored_usage(&db.url, &key_id).await;
    eprintln!(
        "{backend:?} SIGTERM under load: {answered} requests answered 200 ({in_flight} in flight at the signal); usage rows: {requests} requests"
    );
    assert_eq!(requests, answered, "every 200 is in the usage rows, once");
}

async fn sigkill_under_load_loses_at_most_the_last_flush_interval(backend: Backend) {
    let mock = MockUpstream::start().await;
    let db = TestDb::new(backend).await;
    let mut server = Server::start(&db, &mock).await;
    let (key_id, key) = server.create_key().await;

    let traffic = load(&server, &key);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.signal("KILL");
    let kill = Instant::now();
    assert_eq!(server.exit().await, None, "killed by the signal");
    let samples = collect(traffic).await;

    let answered = samples.iter().filter(|s| s.ok()).count() as i64;
    let flushed_by_then = kill - FLUSH_EVERY - SLACK;
    let must_be_stored = samples
        .iter()
        .filter(|s| s.ok() && s.ended <= flushed_by_then)
        .count() as i64;
    let (requests, ..) = stored_usage(&db.url, &key_id).await;
    eprintln!(
        "{backend:?} SIGKILL under load: {answered} requests answered 200, {must_be_stored} of them more than {:?} before the kill; usage rows: {requests} requests ({} lost)",
        FLUSH_EVERY + SLACK,
        answered - requests
    );
    assert!(
        requests >= must_be_stored,
        "lost more than the last flush interval: {requests} stored, {must_be_stored} answered before {:?}",
        FLUSH_EVERY + SLACK
    );
    assert!(requests <= answered, "counted what was never answered");
}
