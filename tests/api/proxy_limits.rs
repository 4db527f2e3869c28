//! Rate limits on the proxy (DESIGN §4): exact rpm, per-model limits, tpm with
//! estimate-then-settle, token types, the rate-limit headers, and no overshoot under
//! concurrency.

use std::time::{Duration, Instant};

use keygate::proxy::tokens::BodyKind;
use reqwest::StatusCode;
use serde_json::json;

use crate::proxy_helpers::{
    assert_openai_error, chat_body, eventually, go_duration_secs, header, is_go_duration,
    json_body, keygate_prompt_tokens, spawn_proxy, support::upstream as mock, Setup, PRICED_MODEL,
};
use crate::support::backends::backend_tests;

backend_tests! {
    doors: both,
    flavor: by_backend,
    both: [
        rpm_is_exact,
        concurrent_requests_cannot_overshoot_tpm,
    ],
    sqlite: [
        a_model_limit_refuses_while_the_global_limit_has_room,
        tpm_reserves_the_estimate_and_settles_the_real_count,
        token_type_input_and_output_count_different_tokens,
        rate_limit_headers_on_success_and_refusal,
    ],
}

async fn rpm_is_exact(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"limits": {"rpm": 3}})).await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", None);

    // Act
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(app.chat(&key.secret, &body).await.status());
    }
    let refused = app.chat(&key.secret, &body).await;

    // Assert
    assert_eq!(statuses, vec![StatusCode::OK; 3]);
    let retry_after: u64 = header(&refused, "retry-after")
        .expect("Retry-After on 429")
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one request refills in 20 s: {retry_after}"
    );
    let error = assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("rpm") && message.contains('3'),
        "{message}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 3);
    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(events["total"], 1, "{events}");
    assert_eq!(events["data"][0]["limit"], "rpm");
    assert_eq!(events["data"][0]["limit_value"], "3");
}

async fn a_model_limit_refuses_while_the_global_limit_has_room(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({
            "limits": {"rpm": 5},
            "model_limits": [{"model": PRICED_MODEL, "rpm": 1}],
        }))
        .await;
    let limited = chat_body(PRICED_MODEL, "hi", None);
    let other = chat_body(mock::DEFAULT_MODEL, "hi", None);

    // Act
    let first = app.chat(&key.secret, &limited).await.status();
    let refused = app.chat(&key.secret, &limited).await;
    let other_model = app.chat(&key.secret, &other).await.status();

    // Assert
    assert_eq!(first, StatusCode::OK);
    let error = assert_openai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains(PRICED_MODEL),
        "{error}"
    );
    assert_eq!(other_model, StatusCode::OK);
    // Two requests were admitted globally; the refused one took nothing.
    let global_left = app.remaining(&key.secret, "rpm", None).await;
    assert!((3..=4).contains(&global_left), "{global_left}");
    let events = app.rate_limit_events(&format!("key_id={}", key.id)).await;
    assert_eq!(events["total"], 1, "{events}");
    assert_eq!(events["data"][0]["model"], PRICED_MODEL);
    assert_eq!(events["data"][0]["limit"], "rpm");
    assert_eq!(events["data"][0]["limit_value"], "1");
}

async fn tpm_reserves_the_estimate_and_settles_the_real_count(setup: Setup) {
    // Arrange: tpm 100; "hi" is 4 tokens for the mock, and it answers 7.
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"limits": {"tpm": 100}})).await;
    let with_max = |max_tokens: i64| chat_body(mock::DEFAULT_MODEL, "hi", Some(max_tokens as u64));
    let prompt_estimate = keygate_prompt_tokens(BodyKind::Chat, &with_max(1));
    let actual = 4 + 7;

    // Act 1: reserve prompt + 80, use 11.
    let first = app.chat(&key.secret, &with_max(80)).await;

    // Assert 1: the header shows the reservation, /v1/key then shows the settled count.
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens"),
        Some((100 - prompt_estimate - 80).to_string().as_str())
    );
    let settled = eventually(Duration::from_secs(5), || async {
        app.remaining(&key.secret, "tpm", None).await >= 100 - actual
    })
    .await;
    assert!(settled, "{}", app.key_info(&key.secret).await);

    // Act 2: an estimate that fits only because the first request was settled.
    let left = app.remaining(&key.secret, "tpm", None).await;
    assert!(left <= 100 - actual + 6, "{left}");
    let second = app
        .chat(&key.secret, &with_max(left - prompt_estimate - 2))
        .await;
    assert_eq!(second.status(), StatusCode::OK);
    let settled = eventually(Duration::from_secs(5), || async {
        app.remaining(&key.secret, "tpm", None).await >= left - actual
    })
    .await;
    assert!(settled, "{}", app.key_info(&key.secret).await);

    // Act 3: an estimate over what is left (but under the limit) waits; one over the
    // limit can never fit.
    let left = app.remaining(&key.secret, "tpm", None).await;
    let too_much = app
        .chat(&key.secret, &with_max(left - prompt_estimate + 10))
        .await;
    let never = app.chat(&key.secret, &with_max(100)).await;

    // Assert 3
    assert!(header(&too_much, "retry-after").is_some());
    let error = assert_openai_error(
        too_much,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("tpm"),
        "{error}"
    );
    let error =
        assert_openai_error(never, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded").await;
    assert!(
        error["message"].as_str().unwrap().contains("tpm"),
        "{error}"
    );
    assert_eq!(app.mock.requests_to("/v1/chat/completions").len(), 2);
    let usage = app.usage(&key.id).await;
    assert_eq!(
        (usage.requests, usage.input_tokens, usage.output_tokens),
        (2, 8, 14)
    );
}

async fn token_type_input_and_output_count_different_tokens(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let input_key = app
        .key_with(json!({"limits": {"tpm": 20, "token_type": "input"}}))
        .await;
    let output_key = app
        .key_with(json!({"limits": {"tpm": 20, "token_type": "output"}}))
        .await;
    let long_answer = chat_body(mock::DEFAULT_MODEL, "hi", Some(1000));
    let short_answer = chat_body(mock::DEFAULT_MODEL, "hi", Some(5));
    let prompt_estimate = keygate_prompt_tokens(BodyKind::Chat, &long_answer);

    // Act
    let input_counted = app.chat(&input_key.secret, &long_answer).await;
    let output_refused = app.chat(&output_key.secret, &long_answer).await;
    let output_counted = app.chat(&output_key.secret, &short_answer).await;

    // Assert: an input bucket ignores max_tokens; an output bucket ignores the prompt.
    assert_eq!(input_counted.status(), StatusCode::OK);
    assert_eq!(
        header(&input_counted, "x-ratelimit-remaining-tokens"),
        Some((20 - prompt_estimate).to_string().as_str())
    );
    assert_openai_error(
        output_refused,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    )
    .await;
    assert_eq!(output_counted.status(), StatusCode::OK);
    assert_eq!(
        header(&output_counted, "x-ratelimit-remaining-tokens"),
        Some("15")
    );
    // Settled with the upstream's counts: 4 prompt tokens, 5 completion tokens.
    for (key, expected) in [(&input_key, 20 - 4), (&output_key, 20 - 5)] {
        let settled = eventually(Duration::from_secs(5), || async {
            app.remaining(&key.secret, "tpm", None).await >= expected
        })
        .await;
        let left = app.remaining(&key.secret, "tpm", None).await;
        assert!(settled && left <= expected + 2, "{expected}: {left}");
    }
}

async fn rate_limit_headers_on_success_and_refusal(setup: Setup) {
    // Arrange
    let app = spawn_proxy(setup).await;
    let key = app
        .key_with(json!({"limits": {"rpm": 2, "tpm": 1000}}))
        .await;
    let body = chat_body(mock::DEFAULT_MODEL, "hi", Some(10));
    let estimate = keygate_prompt_tokens(BodyKind::Chat, &body) + 10;

    // Act
    let ok = app.chat(&key.secret, &body).await;
    let _ = app.chat(&key.secret, &body).await;
    let refused = app.chat(&key.secret, &body).await;

    // Assert: the 200.
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&ok, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(header(&ok, "x-ratelimit-limit-tokens"), Some("1000"));
    assert_eq!(
        header(&ok, "x-ratelimit-remaining-tokens"),
        Some((1000 - estimate).to_string().as_str())
    );
    let reset_requests = header(&ok, "x-ratelimit-reset-requests").unwrap();
    let secs = go_duration_secs(reset_requests);
    assert!(
        secs > 25.0 && secs <= 30.0,
        "one of 2 rpm refills in 30 s: {reset_requests}"
    );
    let reset_tokens = header(&ok, "x-ratelimit-reset-tokens").unwrap();
    assert!(is_go_duration(reset_tokens), "{reset_tokens}");
    assert!(go_duration_secs(reset_tokens) <= 60.0, "{reset_tokens}");
    let policy = header(&ok, "ratelimit-policy").expect("RateLimit-Policy");
    assert!(policy.contains("\"rpm\";q=2;w=60"), "{policy}");
    assert!(policy.contains("\"tpm\";q=1000;w=60"), "{policy}");
    let current = header(&ok, "ratelimit").expect("RateLimit");
    assert!(current.contains("\"rpm\";r=1;t="), "{current}");
    assert!(current.contains("\"tpm\";r="), "{current}");

    // Assert: the 429 carries the same headers, with nothing left.
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    let reset_requests = header(&refused, "x-ratelimit-reset-requests").unwrap();
    let secs = go_duration_secs(reset_requests);
    assert!(secs > 50.0 && secs <= 60.0, "{reset_requests}");
    assert_eq!(header(&refused, "x-ratelimit-limit-tokens"), Some("1000"));
    assert!(header(&refused, "x-ratelimit-remaining-tokens").is_some());
    assert!(is_go_duration(
        header(&refused, "x-ratelimit-reset-tokens").unwrap()
    ));
    assert!(header(&refused, "retry-after").is_some());
    assert!(header(&refused, "ratelimit-policy").is_some_and(|p| p.contains("\"rpm\";q=2")));
    assert!(header(&refused, "ratelimit").is_some_and(|r| r.contains("\"rpm\";r=0")));
}

async fn concurrent_requests_cannot_overshoot_tpm(setup: Setup) {
    // Arrange: tpm 1000; each request is estimated at about 100 tokens and uses a little less.
    const REQUESTS: usize = 48;
    let app = spawn_proxy(setup).await;
    let key = app.key_with(json!({"limits": {"tpm": 1000}})).await;
    let content = vec!["word"; 86].join(" ");
    let body = chat_body(mock::DEFAULT_MODEL, &content, Some(7));
    let estimate = keygate_prompt_tokens(BodyKind::Chat, &body) + 7;
    let actual = (mock::expected_usage(&body).total_tokens) as i64;
    assert!(
        (90..=110).contains(&estimate) && actual <= estimate,
        "estimate {estimate}, actual {actual}"
    );

    // Act
    let started = Instant::now();
    let responses = futures::future::join_all(
        (0..REQUESTS).map(|_| async { json_body(app.chat(&key.secret, &body).await).await }),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();

    // Assert
    let admitted = responses
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count() as i64;
    for (status, body) in &responses {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        }
    }
    // The bucket refills 1000 tokens a minute while the burst runs.
    let refill = (1000.0 * elapsed / 60.0).ceil() as i64;
    assert!(admitted >= 1);
    assert!(
        admitted * actual <= 1000 + refill,
        "{admitted} admitted × {actual} tokens > 1000 + {refill}"
    );
    assert!(admitted < REQUESTS as i64, "nothing was refused");
    let usage = app.settled_usage(&key.id, admitted).await;
    assert_eq!(usage.requests, admitted);
    assert_eq!(usage.input_tokens + usage.output_tokens, admitted * actual);
    assert!(usage.input_tokens + usage.output_tokens <= 1000 + refill);
    let events = app
        .rate_limit_events(&format!("key_id={}&limit=500", key.id))
        .await;
    assert_eq!(events["total"], REQUESTS as i64 - admitted, "{events}");
    assert!(events["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["limit"] == "tpm" && e["limit_value"] == "1000"));
}
