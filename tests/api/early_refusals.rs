//! Refusals that need no body come before the body is read: a request whose feature is off
//! or whose caller may not make it is answered at once, however slowly (or never) its body
//! arrives. Raw sockets, so the body can be announced and not sent.

// Test bodies are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keygate::keys::Token;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};
use crate::support::backends::backend_tests;

backend_tests! {
    both: [
        refusals_that_need_no_body_come_before_it,
        a_blocked_address_is_refused_web3_keys_before_its_body,
    ],
}

/// Far less than any server-side read deadline: an answer this fast did not wait for the
/// body.
const AT_ONCE: Duration = Duration::from_secs(3);

/// Sends a request head announcing a 100-byte JSON body and one byte of it, then returns
/// the answer's status line and body, or `None` if none came within [`AT_ONCE`].
async fn with_body_never_sent(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> Option<String> {
    let address = app.address.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address).await.unwrap();
    let auth = key
        .map(|key| format!("authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         {auth}content-length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(AT_ONCE, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if complete(&answer) {
                break;
            }
        }
    })
    .await;
    read.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// Whether `answer` holds a whole head and the `content-length` bytes after it.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

async fn refusals_that_need_no_body_come_before_it(backend: Backend) {
    // Arrange: Web3 key creation is off (the default).
    let app = spawn_app(backend).await;
    let (_, inference) = app.create_inference_key("app").await;

    // Act and assert: each request announces a body it never sends.
    for (what, method, path, key, status, code) in [
        (
            "web3 key creation while web3 is off",
            "POST",
            "/api/v1/api_keys/generate_web3_key",
            None,
            StatusCode::FORBIDDEN,
            "WEB3_DISABLED",
        ),
        (
            "key creation without a key",
            "POST",
            "/admin/v1/keys",
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "key creation with an inference key",
            "POST",
            "/admin/v1/keys",
            Some(inference.as_str()),
            StatusCode::FORBIDDEN,
            "inference_key_not_for_admin",
        ),
        (
            "a Venice key creation with an inference key",
            "POST",
            "/api/v1/api_keys",
            Some(inference.as_str()),
            StatusCode::FORBIDDEN,
            "INFERENCE_KEY_NOT_FOR_ADMIN",
        ),
        (
            "an aiXplain key update with an inference key",
            "PUT",
            "/sdk/api-keys/00000000-0000-0000-0000-000000000000",
            Some(inference.as_str()),
            StatusCode::FORBIDDEN,
            "inference_key_not_for_admin",
        ),
    ] {
        let answer = with_body_never_sent(&app, method, path, key)
            .await
            .unwrap_or_else(|| panic!("{what}: no answer within {AT_ONCE:?}"));
        assert_eq!(status_of(&answer), status.as_u16(), "{what}: {answer}");
        assert!(answer.contains(code), "{what}: {answer}");
    }
}

async fn a_blocked_address_is_refused_web3_keys_before_its_body(backend: Backend) {
    // Arrange: Web3 on; this address is past its allowance of failed authentications.
    let app = spawn_app_with(backend, |config| {
        config.web3.enabled = true;
        config.keys.failed_auth_per_minute = 1;
    })
    .await;
    for _ in 0..2 {
        let guess = Token::generate().expose().to_string();
        app.admin_status_of(&guess).await;
    }

    // Act
    let answer = with_body_never_sent(&app, "POST", "/api/v1/api_keys/generate_web3_key", None)
        .await
        .expect("an answer before the body");

    // Assert
    assert_eq!(status_of(&answer), 429, "{answer}");
    assert!(answer.contains("TOO_MANY_AUTH_ATTEMPTS"), "{answer}");
}
