//! Holes found by probing keygate as an attacker would (issue 13 §1), each shut and kept
//! shut by a test that failed before its fix: pass-through paths that escaped their
//! declared prefix, `stream` values of another type, the fallback count that missed
//! reasoning and tool calls, one giant SSE event, framing on answers without a body,
//! hop-by-hop headers, and bodies nested without limit. Requests go through both front
//! doors (the fast path, and hyper with the router) where both serve them, as raw bytes
//! where a client library would normalise what the test sends.

use keygate::proxy::tokens::BodyKind;
use serde_json::{json, Value};

use crate::helpers::{spawn_serve_with, ServeProcess, TestDb};
use crate::proxy_helpers::{
    keygate_prompt_tokens, keygate_text_tokens, raw_exchange, raw_request, read_sse, spawn_proxy,
    spawn_proxy_with, stream_body, stream_text, support::upstream as mock, Backend, Setup, DOORS,
};
use crate::support::backends::backend_tests;
use crate::support::serve::upstream_toml;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [],
    sqlite: [
        passthrough_paths_cannot_leave_their_declared_prefix,
        stream_and_stream_options_of_another_type_are_refused,
        the_fallback_count_includes_every_generated_text,
        a_giant_event_ends_the_stream_with_an_error_and_is_charged,
        answers_without_a_body_get_no_framing,
        headers_named_in_connection_or_with_underscores_stay_behind,
        deeply_nested_bodies_are_refused_before_the_upstream,
    ],
}

const PROMPT: &str = "what is the weather like";

async fn passthrough_paths_cannot_leave_their_declared_prefix(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].passthrough = vec!["/moderations".into()];
    })
    .await;
    let key = app.plain_key().await;
    let moderation = br#"{"input":"a kind word"}"#;

    // Act
    let mut refused = Vec::new();
    for (target, status) in [
        ("/v1/moderations/../files", 404),
        ("/v1/moderations/%2e%2e/files", 404),
        ("/v1/moderations/%2E%2e/fine_tuning/jobs", 404),
        ("/v1/moderations/./../../admin/v1/keys", 404),
        ("/v1/moderationsX", 404),
        ("/v1/moderations%2f..%2ffiles", 400),
        ("/v1/moderations/%5c..%5cfiles", 400),
    ] {
        let answer = raw_exchange(&app, &raw_request("GET", target, &key.secret, &[], b"")).await;
        refused.push((target, status, answer));
    }
    let mut accepted = Vec::new();
    for target in ["/v1/x/../moderations", "/v1/moder%61tions"] {
        let request = raw_request("POST", target, &key.secret, &[], moderation);
        accepted.push((target, raw_exchange(&app, &request).await));
    }

    // Assert: nothing outside `/v1/moderations` reached the upstream …
    for (target, status, answer) in &refused {
        assert_eq!(answer.status(), *status, "{target}: {answer:?}");
        let error = answer.json();
        assert!(error["error"]["message"].is_string(), "{target}: {error}");
    }
    // … and what normalises into it went there, in its normal form.
    for (target, answer) in &accepted {
        assert_eq!(answer.status(), 200, "{target}: {answer:?}");
        assert!(answer.json()["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("modr-")));
    }
    let paths: Vec<String> = app.mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/moderations", "/v1/moderations"]);
}

async fn stream_and_stream_options_of_another_type_are_refused(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let with = |member: &str, value: Value| {
        let mut body = stream_body(mock::DEFAULT_MODEL, PROMPT, None);
        body[member] = value;
        body.to_string()
    };
    let cases = [
        (with("stream", json!(1)), "stream"),
        (with("stream", json!("true")), "stream"),
        (
            with("stream_options", json!("include_usage")),
            "stream_options",
        ),
        (with("stream_options", json!([true])), "stream_options"),
    ];

    // Act
    let mut answers = Vec::new();
    for door in DOORS {
        for (body, param) in &cases {
            let request = raw_request(
                "POST",
                "/v1/chat/completions",
                &key.secret,
                door,
                body.as_bytes(),
            );
            answers.push((*param, raw_exchange(&app, &request).await));
        }
    }

    // Assert: OpenAI's answer, and nothing reached a lenient upstream that would stream.
    for (param, answer) in &answers {
        assert_eq!(answer.status(), 400, "{answer:?}");
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        assert_eq!(error["param"], *param, "{error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(param)),
            "{error}"
        );
    }
    assert_eq!(app.mock.request_count(), 0);
}

async fn the_fallback_count_includes_every_generated_text(setup: Setup) {
    // Arrange: an upstream that reasons, calls a tool and refuses, and reports no usage.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let streamed = stream_body(mock::MODEL_RICH_DELTAS, PROMPT, None);
    let whole = crate::proxy_helpers::chat_body(mock::MODEL_RICH_DELTAS, PROMPT, None);

    // Act
    let events = read_sse(app.chat(&key.secret, &streamed).await).await;
    let answer = app.chat_ok(&key.secret, &whole).await;

    // Assert: everything generated is counted, not only `content`.
    assert_eq!(stream_text(&events), "Done");
    assert_eq!(answer["choices"][0]["message"]["content"], "Done");
    let stream_text: String = mock::RICH_TEXTS.iter().map(|(_, text)| *text).collect();
    let arguments: String = mock::RICH_TEXTS
        .iter()
        .filter(|(member, _)| *member == "arguments")
        .map(|(_, text)| *text)
        .collect();
    let whole_output: i64 = mock::RICH_TEXTS
        .iter()
        .filter(|(member, _)| *member != "arguments")
        .map(|(_, text)| keygate_text_tokens(text))
        .sum::<i64>()
        + keygate_text_tokens(&arguments);
    let prompt = keygate_prompt_tokens(BodyKind::Chat, &whole);
    let usage = app.settled_usage(&key.id, 2).await;
    assert_eq!(usage.requests, 2);
    assert_eq!(usage.input_tokens, 2 * prompt);
    assert_eq!(
        usage.output_tokens,
        keygate_text_tokens(&stream_text) + whole_output,
        "streamed {stream_text:?}"
    );
    assert!(whole_output > keygate_text_tokens("Done") + 10);
}

async fn a_giant_event_ends_the_stream_with_an_error_and_is_charged(setup: Setup) {
    // Arrange: one event of 2 MiB, twice the default cap.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = stream_body(mock::MODEL_GIANT_EVENT, PROMPT, None);

    // Act
    let started = std::time::Instant::now();
    let events = read_sse(app.chat(&key.secret, &body).await).await;
    let small = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key.secret)
        .header(mock::EVENT_BYTES_HEADER, "500000")
        .json(&body)
        .send()
        .await
        .unwrap();
    let small_events = read_sse(small).await;

    // Assert: what came before passed, the giant event did not, the stream ended with
    // OpenAI's error event; it was settled, charged for what streamed.
    assert_eq!(
        stream_text(&events),
        "Hello",
        "{:?}",
        events.iter().map(|e| e.data.len()).collect::<Vec<_>>()
    );
    assert!(events.iter().all(|event| event.data.len() < 1 << 20));
    let error = events
        .iter()
        .filter_map(|event| event.json())
        .find(|chunk| chunk.get("error").is_some());
    assert_eq!(
        error.as_ref().map(|e| e["error"]["code"].clone()),
        Some(json!("upstream_error")),
        "{events:?}"
    );
    assert!(events.iter().all(|event| event.data != "[DONE]"));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // An event under the cap passes whole.
    assert_eq!(stream_text(&small_events).len(), "Hello".len() + 500_000);
    let usage = app.settled_usage(&key.id, 2).await;
    assert_eq!(usage.requests, 2);
    assert_eq!(
        usage.input_tokens,
        2 * keygate_prompt_tokens(BodyKind::Chat, &body)
    );
    let small_text = stream_text(&small_events);
    assert_eq!(
        usage.output_tokens,
        keygate_text_tokens("Hello") + keygate_text_tokens(&small_text)
    );
}

async fn answers_without_a_body_get_no_framing(setup: Setup) {
    // Arrange
    let app = spawn_proxy_with(setup, |config| {
        config.upstreams[0].passthrough = vec!["/files".into()];
    })
    .await;
    let key = app.plain_key().await;

    // Act
    let mut answers = Vec::new();
    for door in DOORS {
        for (model, status) in [
            (mock::MODEL_NO_CONTENT, 204),
            (mock::MODEL_NOT_MODIFIED, 304),
        ] {
            let body = stream_body(model, PROMPT, None).to_string();
            let request = raw_request(
                "POST",
                "/v1/chat/completions",
                &key.secret,
                door,
                body.as_bytes(),
            );
            answers.push((
                format!("{model} {door:?}"),
                status,
                raw_exchange(&app, &request).await,
            ));
        }
    }
    let head = raw_request("HEAD", "/v1/files", &key.secret, &[], b"");
    answers.push(("HEAD".into(), 200, raw_exchange(&app, &head).await));

    // Assert: no body, and nothing that announces one (curl: "Excess found").
    for (what, status, answer) in &answers {
        assert_eq!(answer.status(), *status, "{what}: {answer:?}");
        assert_eq!(
            answer.header("transfer-encoding"),
            None,
            "{what}: {answer:?}"
        );
        assert_eq!(answer.header("content-length"), None, "{what}: {answer:?}");
        assert!(answer.rest.is_empty(), "{what}: {answer:?}");
    }
}

async fn headers_named_in_connection_or_with_underscores_stay_behind(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let body = crate::proxy_helpers::chat_body(mock::MODEL_HOP_HEADERS, PROMPT, None).to_string();
    let hop: &[(&str, &str)] = &[
        ("Connection", "X-Hop-Secret"),
        ("X-Hop-Secret", "1"),
        ("X_Underscore", "1"),
        ("X-Kept", "1"),
    ];
    let doors = [
        hop.to_vec(),
        [
            hop,
            &[("Transfer-Encoding", "chunked"), ("Expect", "100-continue")],
        ]
        .concat(),
    ];

    // Act
    let mut answers = Vec::new();
    for door in &doors {
        let request = raw_request(
            "POST",
            "/v1/chat/completions",
            &key.secret,
            door,
            body.as_bytes(),
        );
        answers.push(raw_exchange(&app, &request).await);
    }

    // Assert: both ways, in both directions.
    let received = app.mock.requests();
    assert_eq!(received.len(), 2);
    for request in &received {
        assert_eq!(
            request.header("x-hop-secret"),
            None,
            "{:?}",
            request.headers
        );
        assert_eq!(
            request.header("x_underscore"),
            None,
            "{:?}",
            request.headers
        );
        assert_eq!(request.header("expect"), None, "{:?}", request.headers);
        assert_eq!(request.header("x-kept"), Some("1"), "{:?}", request.headers);
    }
    for answer in &answers {
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert_eq!(answer.header(mock::HOP_HEADER), None, "{answer:?}");
        assert!(answer.header("openai-version").is_some(), "{answer:?}");
    }
}

async fn deeply_nested_bodies_are_refused_before_the_upstream(setup: Setup) {
    // Arrange: nesting in a member keygate does not read, and 4 MiB of `[`.
    let app = spawn_proxy(setup).await;
    let key = app.plain_key().await;
    let deep = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#,
        mock::DEFAULT_MODEL,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let brackets = "[".repeat(4 << 20);
    let limit = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"hi"}}],"metadata":{}{}}}"#,
        mock::DEFAULT_MODEL,
        "[".repeat(keygate::proxy::request::MAX_DEPTH - 1),
        "]".repeat(keygate::proxy::request::MAX_DEPTH - 1)
    );

    // Act
    let mut answers = Vec::new();
    for door in DOORS {
        for body in [&deep, &brackets] {
            let request = raw_request(
                "POST",
                "/v1/chat/completions",
                &key.secret,
                door,
                body.as_bytes(),
            );
            answers.push(raw_exchange(&app, &request).await);
        }
    }
    let at_the_limit = raw_request(
        "POST",
        "/v1/chat/completions",
        &key.secret,
        &[],
        limit.as_bytes(),
    );
    let at_the_limit = raw_exchange(&app, &at_the_limit).await;

    // Assert
    for answer in &answers {
        assert_eq!(answer.status(), 400, "{:?}", answer.heads);
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("nesting limit")),
            "{error}"
        );
    }
    assert_eq!(at_the_limit.status(), 200, "{:?}", at_the_limit.heads);
    assert_eq!(
        app.mock.request_count(),
        1,
        "only the body within the limit went upstream"
    );
}

/// The real binary (its allocator, its front door), 16 hostile 4 MiB bodies at once,
/// each read and estimated before the key's token limit refuses it: peak memory stays
/// bounded (it was ~360 MB per request, 1.1 GB for four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_hostile_bodies_at_once_keep_the_peak_memory_bounded() {
    // Arrange
    let mock = mock::MockUpstream::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let admin = keygate::keys::Token::generate().expose().to_string();
    let server = spawn_serve_with(
        &db,
        &upstream_toml(&mock),
        &[("KEYGATE_BOOTSTRAP_ADMIN_KEY", &admin)],
    )
    .await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(server.url("/admin/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "hostile", "limits": {"tpm": 10}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["secret"].as_str().expect("a secret").to_string();
    let max_body = keygate::Config::default().http.max_body_bytes;
    let bodies: Vec<bytes::Bytes> = ["0", "{}", "[]", "\"aaaa\""]
        .iter()
        .map(|item| {
            let mut body = format!(r#"{{"model":"{}","messages":["#, mock::DEFAULT_MODEL);
            while body.len() + item.len() + 3 < max_body {
                body.push_str(item);
                body.push(',');
            }
            body.pop();
            body.push_str("]}");
            bytes::Bytes::from(body)
        })
        .collect();
    let rss_before = peak_rss_kib(&server);

    // Act
    let requests = (0..16).map(|i| {
        client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(bodies[i % bodies.len()].clone())
            .send()
    });
    let answers = futures::future::join_all(requests).await;
    let rss_after = peak_rss_kib(&server);

    // Assert
    for answer in answers {
        assert_eq!(
            answer.unwrap().status(),
            reqwest::StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(mock.request_count(), 0);
    assert!(
        rss_after < 200 * 1024,
        "peak RSS {rss_after} KiB (before the requests: {rss_before} KiB)"
    );
    server.stop().await;
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(server: &ServeProcess) -> u64 {
    let pid = server.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}
