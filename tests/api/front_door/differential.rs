//! The same requests (served, refused for every reason, malformed) through both front
//! doors, answers compared: status, headers and keygate's own bodies must agree.

use serde_json::json;

use super::{Answer, Wire, PROMPT};
use crate::proxy_helpers::{
    chat_body, spawn_proxy_with, stream_body, support::upstream as mock, Backend, FrontDoor, Setup,
};

/// The keys of one app that the differential requests use.
struct DoorKeys {
    plain: String,
    rpm_one: String,
    allowed: String,
    elsewhere: String,
    admin: String,
}

/// One request of the differential test, and whether its answer's body is keygate's
/// own (compared byte for byte) or the upstream's (ids and times differ per call).
struct Case {
    name: &'static str,
    request: fn(&DoorKeys) -> Vec<u8>,
    own_body: bool,
}

/// An answer reduced to what both doors must agree on: status, header names and the
/// values keygate sets (not `date` or a generated request id), and keygate's own bodies.
fn comparable(answer: &Answer, own_body: bool) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| name != "date" && name != "x-request-id")
        .map(|(name, value)| {
            let keep_value = !name.starts_with("x-ratelimit-reset")
                && name != "ratelimit"
                && name != "x-upstream-request-id";
            (
                name.clone(),
                if keep_value {
                    value.clone()
                } else {
                    String::new()
                },
            )
        })
        .collect();
    headers.sort();
    // Keygate's own bodies, less the time a refusal says to wait (it moves on).
    let body = if own_body {
        answer
            .text()
            .split("; retry in")
            .next()
            .unwrap_or_default()
            .to_owned()
    } else {
        String::new()
    };
    (answer.status, headers, body)
}

#[tokio::test(flavor = "current_thread")]
async fn both_front_doors_answer_every_request_alike() {
    // Arrange: the same app behind each door, with the same kinds of keys.
    let configure = |config: &mut keygate::Config| config.http.max_body_bytes = 2048;
    let mut doors = Vec::new();
    for door in [FrontDoor::Fast, FrontDoor::Router] {
        let setup = Setup {
            backend: Backend::Sqlite,
            door,
        };
        let app = spawn_proxy_with(setup, configure).await;
        let keys = DoorKeys {
            plain: app.plain_key().await.secret,
            rpm_one: app.key_with(json!({ "limits": { "rpm": 1 } })).await.secret,
            allowed: app
                .key_with(json!({ "allowed_models": [mock::DEFAULT_MODEL] }))
                .await
                .secret,
            elsewhere: app
                .key_with(json!({ "ip_allowlist": ["203.0.113.0/24"] }))
                .await
                .secret,
            admin: app.admin_key.clone(),
        };
        doors.push((app, keys));
    }
    fn chat_with(key: &str, body: &str, extra: &str) -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
    fn ok() -> String {
        chat_body(mock::DEFAULT_MODEL, PROMPT, Some(2)).to_string()
    }
    let cases = [
        Case {
            name: "answered",
            request: |k| chat_with(&k.plain, &ok(), ""),
            own_body: false,
        },
        Case {
            name: "no key",
            request: |_| {
                let body = ok();
                format!("POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
            },
            own_body: true,
        },
        Case {
            name: "unknown key",
            request: |_| chat_with("kg_nope", &ok(), ""),
            own_body: true,
        },
        Case {
            name: "admin key",
            request: |k| chat_with(&k.admin, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "aiXplain token scheme",
            request: |k| {
                let body = ok();
                format!("POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Token {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "x-api-key",
            request: |k| {
                let body = ok();
                format!("POST /v1/embeddings HTTP/1.1\r\nHost: keygate\r\nX-Api-Key: {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "not JSON",
            request: |k| chat_with(&k.plain, "{\"model\": ", ""),
            own_body: true,
        },
        Case {
            name: "not an object",
            request: |k| chat_with(&k.plain, "[1]", ""),
            own_body: true,
        },
        Case {
            name: "empty body",
            request: |k| chat_with(&k.plain, "", ""),
            own_body: true,
        },
        Case {
            name: "no model",
            request: |k| chat_with(&k.plain, r#"{"messages":[]}"#, ""),
            own_body: true,
        },
        Case {
            name: "model not allowed",
            request: |k| {
                chat_with(
                    &k.allowed,
                    &chat_body("gpt-4o-mini", PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "address not allowed",
            request: |k| chat_with(&k.elsewhere, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "rpm: first",
            request: |k| chat_with(&k.rpm_one, &ok(), ""),
            own_body: false,
        },
        Case {
            name: "rpm: refused",
            request: |k| chat_with(&k.rpm_one, &ok(), ""),
            own_body: true,
        },
        Case {
            name: "too large",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::DEFAULT_MODEL, &"word ".repeat(500), None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "upstream 400",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::MODEL_ERROR_400, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "upstream 429",
            request: |k| {
                chat_with(
                    &k.plain,
                    &chat_body(mock::MODEL_ERROR_429, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: true,
        },
        Case {
            name: "streamed",
            request: |k| {
                chat_with(
                    &k.plain,
                    &stream_body(mock::DEFAULT_MODEL, PROMPT, None).to_string(),
                    "",
                )
            },
            own_body: false,
        },
        Case {
            name: "client request id",
            request: |k| chat_with(&k.plain, &ok(), "X-Request-Id: mine-123\r\n"),
            own_body: false,
        },
        Case {
            name: "query string",
            request: |k| {
                let body = ok();
                format!("POST /v1/chat/completions?trace=1 HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}", k.plain, body.len()).into_bytes()
            },
            own_body: false,
        },
        Case {
            name: "unknown key, body not all sent",
            request: |_| {
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer kg_nope\r\nContent-Length: 100\r\n\r\n{\"model\":".to_vec()
            },
            own_body: true,
        },
        Case {
            name: "two keys",
            request: |k| {
                chat_with(
                    &k.plain,
                    &ok(),
                    &format!("Authorization: Bearer {}\r\n", k.admin),
                )
            },
            own_body: false,
        },
    ];

    // Act: every case on one connection per door (a closed one is reopened).
    let mut answers: Vec<Vec<Answer>> = Vec::new();
    for (app, keys) in &doors {
        let mut wire = Wire::connect(app).await;
        let mut door_answers = Vec::new();
        for case in &cases {
            wire.send(&(case.request)(keys)).await;
            let answer = wire.answer().await;
            if answer.header("connection") == Some("close") {
                wire = Wire::connect(app).await;
            }
            door_answers.push(answer);
        }
        answers.push(door_answers);
    }

    // Assert
    let mut differences = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let fast = comparable(&answers[0][i], case.own_body);
        let router = comparable(&answers[1][i], case.own_body);
        if fast != router {
            differences.push(format!(
                "{}:\n  fast:   {fast:?}\n  router: {router:?}",
                case.name
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let at = |name: &str| cases.iter().position(|case| case.name == name).unwrap();
    for door in &answers {
        assert_eq!(
            door[at("client request id")].header("x-request-id"),
            Some("mine-123"),
            "the client's id is kept"
        );
        assert_eq!(
            door[at("unknown key, body not all sent")].header("connection"),
            Some("close")
        );
    }
}
