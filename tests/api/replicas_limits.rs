//! Limits across replicas (issue 12 §1, §3): three keygate instances on one fresh
//! PostgreSQL database share their rate limits, budgets and `max_parallel` slots through
//! Redis (127.0.0.1:6379, a key prefix per test; a private `redis-server` where the test
//! stops it). Without Redis, budgets are reloaded from the store with every usage flush.

use std::{
    net::TcpListener,
    process::Stdio,
    str::FromStr,
    time::{Duration, Instant},
};

use futures::future::join_all;
use keygate::{keys::Token, proxy::tokens::BodyKind, Config};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{
    proxy_helpers::{cost, keygate_prompt_tokens, PRICED_INPUT, PRICED_OUTPUT},
    support::{
        app::{spawn_replicas, TestApp, PRICED_MODEL},
        backends::{Backend, Setup},
        http::{chat_body, json_body},
        serve::{proxy_toml, spawn_serve_with},
        upstream::MODEL_SLOW_FIRST_BYTE,
    },
};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn postgres() -> Setup {
    Setup::from(Backend::Postgres)
}

/// Points `config` at `url` under a key prefix of the test's own.
fn use_redis(config: &mut Config, url: &str, prefix: &str) {
    config.redis.url = Some(url.to_string());
    config.redis.key_prefix = prefix.to_string();
}

fn unique_prefix() -> String {
    format!("keygate-test:{}:", Uuid::new_v4().simple())
}

/// Redis calls get this long in tests that need every request decided by Redis (the
/// default is 250 ms): on a loaded CI machine one slow call would put a replica on its
/// unshared local fallback, which is right in production and not what these tests measure.
const PATIENT_REDIS_MS: u64 = 2000;

/// Three replicas sharing the shared Redis under one fresh prefix.
async fn three_replicas(configure: impl Fn(&mut Config)) -> Vec<TestApp> {
    let prefix = unique_prefix();
    spawn_replicas(3, postgres(), |_, config| {
        use_redis(config, SHARED_REDIS, &prefix);
        config.redis.timeout_ms = PATIENT_REDIS_MS;
        configure(config);
    })
    .await
}

/// `count` chat requests at once, request `i` sent to replica `i % replicas.len()`.
async fn spread(replicas: &[TestApp], secret: &str, body: &Value, count: usize) -> Vec<Response> {
    join_all((0..count).map(|i| replicas[i % replicas.len()].chat(secret, body))).await
}

fn statuses(responses: &[Response]) -> (usize, Vec<StatusCode>) {
    let ok = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let others = responses
        .iter()
        .map(Response::status)
        .filter(|s| *s != StatusCode::OK)
        .collect();
    (ok, others)
}

async fn readyz_limiter(app: &TestApp) -> String {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    let (_, body) = json_body(response).await;
    body["limiter"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_60_is_exact_across_three_replicas() {
    // Arrange
    let replicas = three_replicas(|_| {}).await;
    let key = replicas[0].key_with(json!({"limits": {"rpm": 60}})).await;
    let body = chat_body(PRICED_MODEL, "hi", None);

    // Act: 3 × 40 requests at once, spread over the replicas.
    let started = Instant::now();
    let responses = spread(&replicas, &key.secret, &body, 120).await;
    let took = started.elapsed();

    // Assert: exactly the limit, plus what refilled (1 per second: rpm is a rate, not a
    // window) if the burst took longer than a second on a loaded machine.
    let (ok, _) = statuses(&responses);
    let refilled = took.as_secs() as usize;
    assert!(
        (60..=60 + refilled).contains(&ok),
        "{ok} answered 200 in {took:?} (limit 60)"
    );
    for response in responses.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .expect("Retry-After on 429")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        replicas[0].mock.requests_to("/v1/chat/completions").len(),
        ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_and_a_budget_hold_across_replicas_under_64_parallel_requests() {
    // Arrange: "hi" with max_tokens 7 is estimated exactly (the mock answers 7 tokens).
    let replicas = three_replicas(|_| {}).await;
    let body = chat_body(PRICED_MODEL, "hi", Some(7));
    let prompt = keygate_prompt_tokens(BodyKind::Chat, &body);
    let estimate_tokens = prompt as u64 + 7;
    let tpm = estimate_tokens * 20;
    let tokens_key = replicas[0].key_with(json!({"limits": {"tpm": tpm}})).await;
    let limit = Decimal::from_str("0.0001").unwrap();
    let budget_key = replicas[0]
        .key_with(json!({"budget": {"limit_usd": 0.0001, "period": "day"}}))
        .await;
    let estimate_usd = cost(prompt, 7, PRICED_INPUT, PRICED_OUTPUT);

    // Act
    let by_tokens = spread(&replicas, &tokens_key.secret, &body, 64).await;
    let by_budget = spread(&replicas, &budget_key.secret, &body, 64).await;

    // Assert: within the single-instance bound, limit + one estimate.
    let (tokens_ok, refused) = statuses(&by_tokens);
    assert!(
        refused.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{refused:?}"
    );
    let usage = replicas[1]
        .settled_usage(&tokens_key.id, tokens_ok as i64)
        .await;
    let used = (usage.input_tokens + usage.output_tokens) as u64;
    assert!(tokens_ok > 0 && tokens_ok < 64, "{tokens_ok}");
    assert!(
        used <= tpm + estimate_tokens,
        "{used} tokens > {tpm} + {estimate_tokens}"
    );

    let (budget_ok, refused) = statuses(&by_budget);
    assert!(
        refused.iter().all(|s| *s == StatusCode::PAYMENT_REQUIRED),
        "{refused:?}"
    );
    assert!(budget_ok > 0 && budget_ok < 64, "{budget_ok}");
    let usage = replicas[2]
        .settled_usage(&budget_key.id, budget_ok as i64)
        .await;
    assert!(
        usage.cost_usd <= limit + estimate_usd,
        "spent {} > limit {limit} + one estimate {estimate_usd}",
        usage.cost_usd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_4_holds_across_replicas() {
    // Arrange: requests that wait 2 s at the upstream.
    let replicas = three_replicas(|_| {}).await;
    let key = replicas[0].key_with(json!({"max_parallel": 4})).await;
    let slow = chat_body(&format!("{MODEL_SLOW_FIRST_BYTE}:2000"), "hi", None);

    // Act: 24 at once, 8 per replica (each replica alone would admit 4).
    let responses = spread(&replicas, &key.secret, &slow, 24).await;

    // Assert
    let (ok, refused) = statuses(&responses);
    assert_eq!(ok, 4, "{refused:?}");
    assert!(refused.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
    // The slots came back with the settlements: a new request is admitted.
    let fast = chat_body(PRICED_MODEL, "hi", None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = replicas[2].chat(&key.secret, &fast).await.status();
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "slots not given back: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_releases_its_slot_within_the_lease() {
    // Arrange: a 2 s lease; the replica that will die is the real binary (SIGKILL).
    const LEASE: Duration = Duration::from_secs(2);
    const REDIS_TIMEOUT_MS: u64 = PATIENT_REDIS_MS;
    let prefix = unique_prefix();
    let replicas = spawn_replicas(1, postgres(), |_, config| {
        use_redis(config, SHARED_REDIS, &prefix);
        config.redis.slot_lease_secs = LEASE.as_secs();
        config.redis.timeout_ms = REDIS_TIMEOUT_MS;
    })
    .await;
    let survivor = &replicas[0];
    let admin_key = Token::generate().expose().to_string();
    let lease = LEASE.as_secs().to_string();
    let redis_timeout = REDIS_TIMEOUT_MS.to_string();
    let mut doomed = spawn_serve_with(
        &survivor.db,
        &proxy_toml(&survivor.mock),
        &[
            ("KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_key.as_str()),
            ("KEYGATE_REDIS__URL", SHARED_REDIS),
            ("KEYGATE_REDIS__KEY_PREFIX", prefix.as_str()),
            ("KEYGATE_REDIS__SLOT_LEASE_SECS", lease.as_str()),
            ("KEYGATE_REDIS__TIMEOUT_MS", redis_timeout.as_str()),
        ],
    )
    .await;
    let key = survivor.key_with(json!({"max_parallel": 1})).await;
    let fast = chat_body(PRICED_MODEL, "hi", None);
    let hanging = chat_body(&format!("{MODEL_SLOW_FIRST_BYTE}:60000"), "hi", None);
    // Both replicas answer once through Redis first: a cold replica's first call (connect,
    // script load) is the slowest, and one that timed out would put that replica on its
    // unshared fallback, where this test would measure nothing.
    let client = survivor.client.clone();
    let doomed_readyz = doomed.url("/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let through_doomed = client
            .post(doomed.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .json(&fast)
            .send()
            .await
            .map(|r| r.status());
        let through_survivor = survivor.chat(&key.secret, &fast).await.status();
        let doomed_limiter = match client.get(&doomed_readyz).send().await {
            Ok(response) => json_body(response).await.1["limiter"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            Err(err) => err.to_string(),
        };
        let survivor_limiter = readyz_limiter(survivor).await;
        if matches!(through_doomed, Ok(StatusCode::OK))
            && through_survivor == StatusCode::OK
            && doomed_limiter == "redis"
            && survivor_limiter == "redis"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not on Redis: doomed {through_doomed:?} ({doomed_limiter}), survivor \
             {through_survivor} ({survivor_limiter}); doomed's log:\n{}",
            doomed.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = doomed.url("/v1/chat/completions");
    let secret = key.secret.clone();
    let in_flight = tokio::spawn(async move {
        let _ = client
            .post(url)
            .bearer_auth(secret)
            .json(&hanging)
            .send()
            .await;
    });
    // The doomed replica holds the only slot once its request reached the upstream
    // (admission comes before forwarding).
    let reached = survivor
        .mock
        .wait_until(Duration::from_secs(30), |mock| {
            mock.requests().iter().any(|r| {
                r.model()
                    .is_some_and(|m| m.starts_with(MODEL_SLOW_FIRST_BYTE))
            })
        })
        .await;
    assert!(
        reached,
        "the hanging request never reached the upstream; doomed's log:\n{}",
        doomed.stderr_so_far()
    );
    let status = survivor.chat(&key.secret, &fast).await.status();
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the survivor did not see the doomed replica's slot; doomed's log:\n{}",
        doomed.stderr_so_far()
    );

    // Act: kill it mid-request.
    doomed.signal("KILL");
    let killed = Instant::now();
    let _ = doomed.exit().await;

    // Assert: the slot is free again within the lease (plus scheduling slack).
    loop {
        let status = survivor.chat(&key.secret, &fast).await.status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            killed.elapsed() < LEASE + Duration::from_secs(2),
            "slot still held {:?} after the kill",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    in_flight.abort();
}

/// A `redis-server` of the test's own on `port`, without persistence.
fn start_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts (is it installed?)")
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/metrics`' limiter gauges on `app`: `keygate_limiter_fallback` and
/// `keygate_limiter_backend{backend="redis"}`.
async fn limiter_gauges(app: &TestApp) -> (f64, f64) {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let scrape = crate::support::metrics::Exposition::parse(&text)
        .unwrap_or_else(|why| panic!("{why}\n{text}"));
    (
        scrape.value("keygate_limiter_fallback", &[]),
        scrape.value("keygate_limiter_backend", &[("backend", "redis")]),
    )
}

async fn wait_for_limiter(replicas: &[TestApp], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for app in replicas {
        loop {
            let state = readyz_limiter(app).await;
            if state == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readyz says {state:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_falls_back_and_redis_back_is_exact_again() {
    // Arrange: a private Redis; rpm 6, so 2 per replica while each decides alone.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = start_redis(port);
    wait_for_port(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix();
    let replicas = spawn_replicas(3, postgres(), |_, config| {
        use_redis(config, &url, &prefix);
        config.redis.fallback_replicas = 3;
    })
    .await;
    let body = chat_body(PRICED_MODEL, "hi", None);
    let before = replicas[0].key_with(json!({"limits": {"rpm": 6}})).await;
    let (ok, _) = statuses(&spread(&replicas, &before.secret, &body, 9).await);
    assert_eq!(ok, 6, "exact while Redis answers");
    wait_for_limiter(&replicas, "redis").await;

    // Act 1: Redis goes away.
    redis.kill().await.unwrap();
    let _ = redis.wait().await;
    let key = replicas[0].key_with(json!({"limits": {"rpm": 6}})).await;
    let mut served = Vec::new();
    for app in &replicas {
        for _ in 0..3 {
            served.push(app.chat(&key.secret, &body).await.status());
        }
    }

    // Assert 1: served in process, each replica with a third of the limit; never a 500.
    let per_replica: Vec<_> = served.chunks(3).map(<[StatusCode]>::to_vec).collect();
    for statuses in &per_replica {
        assert_eq!(
            statuses,
            &[
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ],
            "{served:?}"
        );
    }
    wait_for_limiter(&replicas, "fallback").await;
    for app in &replicas {
        assert_eq!(
            limiter_gauges(app).await,
            (1.0, 1.0),
            "/metrics in fallback"
        );
    }

    // Act 2: Redis back on the same port (empty: no persistence).
    let _redis = start_redis(port);
    wait_for_port(port).await;
    wait_for_limiter(&replicas, "redis").await;
    for app in &replicas {
        assert_eq!(
            limiter_gauges(app).await,
            (0.0, 1.0),
            "/metrics with redis back"
        );
    }
    let after = replicas[0].key_with(json!({"limits": {"rpm": 6}})).await;
    let responses = spread(&replicas, &after.secret, &body, 9).await;

    // Assert 2: exact across replicas again.
    let (ok, refused) = statuses(&responses);
    assert_eq!(ok, 6, "{refused:?}");
    assert!(refused.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_budget_spent_on_one_replica_stops_the_other_within_a_flush() {
    // Arrange: two replicas, no Redis; a budget of about 20 calls; replica B has loaded
    // the (empty) spend already.
    let replicas = spawn_replicas(2, postgres(), |_, _| {}).await;
    let (a, b) = (&replicas[0], &replicas[1]);
    let key = a
        .key_with(json!({"budget": {"limit_usd": 0.0001, "period": "lifetime"}}))
        .await;
    let body = chat_body(PRICED_MODEL, "hi", Some(7));
    assert_eq!(b.chat(&key.secret, &body).await.status(), StatusCode::OK);

    // Act: spend the rest on A.
    let mut spent_on_a = 0;
    while a.chat(&key.secret, &body).await.status() == StatusCode::OK {
        spent_on_a += 1;
        assert!(spent_on_a < 100, "A never refused");
    }
    let refused_on_a = Instant::now();

    // Assert: B sees A's spend after A's next flush and its own reload (1 s each), long
    // before it could have spent the budget a second time (~20 calls, 5 s at this pace).
    let mut admitted_on_b = 0;
    loop {
        let status = b.chat(&key.secret, &body).await.status();
        if status == StatusCode::PAYMENT_REQUIRED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        admitted_on_b += 1;
        assert!(
            refused_on_a.elapsed() < Duration::from_millis(2500),
            "B still admits {:?} after A refused ({admitted_on_b} admitted)",
            refused_on_a.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(spent_on_a >= 10, "{spent_on_a}");
}
