//! The real `keygate serve` binary stopped under load. SIGTERM: requests in flight finish
//! and every request answered 200 is in the usage rows after the process exits. SIGKILL:
//! at most the usage of the last flush interval (1 s, DESIGN §7) is lost, and nothing is
//! counted that was not answered. Both stores.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keygate::keys::Token;
use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};

use crate::{
    helpers::{keygate, strip_ansi, Backend, TestDb},
    load::{Request, Sample, Traffic},
    proxy_helpers::{chat_body, json_body, support::upstream, MockUpstream, PRICED_MODEL},
    store_outage::stored_usage,
};

/// The usage writer's flush interval (`app::USAGE_FLUSH_EVERY`, DESIGN §7).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded test machine: a flush's own duration, the moment the
/// meter records before the client reads its answer.
const SLACK: Duration = Duration::from_millis(500);
/// How long the slow requests wait at the mock before their answer.
const SLOW_MS: u64 = 300;

/// `keygate serve` on `db`, in front of `mock`, with stderr captured.
struct Server {
    child: Child,
    address: String,
    admin_key: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    async fn start(db: &TestDb, mock: &MockUpstream) -> Server {
        let config = db.dir.path().join("faults.toml");
        std::fs::write(&config, config_text(&db.url, &mock.base_url)).unwrap();
        let admin_key = Token::generate().expose().to_string();
        let mut command = keygate(db.dir.path());
        command
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("KEYGATE_BOOTSTRAP_ADMIN_KEY", &admin_key)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("keygate serve starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let lines = stderr.clone();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let mut text = lines.lock().unwrap();
                text.push_str(&strip_ansi(&line));
                text.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            let found = stderr
                .lock()
                .unwrap()
                .lines()
                .filter(|l| l.contains("keygate listening"))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .map(|addr| format!("http://{addr}"));
            if let Some(address) = found {
                break address;
            }
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "keygate serve did not start:\n{}",
                stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Server {
            child,
            address,
            admin_key,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
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
        let pid = self.child.id().expect("keygate is running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the process to end; returns its exit code (`None`: killed by a signal).
    async fn exit(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("keygate exited within 30 s")
            .unwrap();
        status.code()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn config_text(db_url: &str, upstream: &str) -> String {
    format!(
        r#"database_url = "{db_url}"

[keys]
failed_auth_per_minute = 100000

[[upstreams]]
name = "mock"
base_url = "{upstream}"
models = ["*"]

[[models]]
name = "gpt-4o-mini"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
"#
    )
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

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_under_load_loses_no_usage() {
        super::sigterm_under_load_loses_no_usage(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_under_load_loses_at_most_the_last_flush_interval() {
        super::sigkill_under_load_loses_at_most_the_last_flush_interval(Backend::Sqlite).await
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_under_load_loses_no_usage() {
        super::sigterm_under_load_loses_no_usage(Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_under_load_loses_at_most_the_last_flush_interval() {
        super::sigkill_under_load_loses_at_most_the_last_flush_interval(Backend::Postgres).await
    }
}
