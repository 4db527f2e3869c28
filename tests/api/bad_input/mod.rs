//! Every kind of bad input gets a 4xx in the admin error shape whose `error.field` names
//! what is wrong, never a 500; bad keys get 401, inference keys 403 on the admin API. This
//! file holds the table of cases and its runner.

mod auth;
mod bodies;
mod requests;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    body: String,
    status: StatusCode,
    code: &'static str,
    field: &'static str,
}

fn raw(
    what: &'static str,
    body: &str,
    status: StatusCode,
    code: &'static str,
    field: &'static str,
) -> Case {
    Case {
        what,
        body: body.to_string(),
        status,
        code,
        field,
    }
}

/// A body that is valid JSON but has one invalid field: 422 `invalid_field`.
fn field(what: &'static str, body: Value, field: &'static str) -> Case {
    Case {
        what,
        body: body.to_string(),
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        field,
    }
}

async fn check_cases(app: &TestApp, method: Method, path: &str, cases: &[Case]) {
    for case in cases {
        let response = app.send_raw(method.clone(), path, &case.body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {status} answer is not JSON ({e}): {text}", case.what));
        assert_eq!(
            status, case.status,
            "{} ({method} {path}): {body}",
            case.what
        );
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.what);
        assert_eq!(body["error"]["field"], case.field, "{}: {body}", case.what);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.what
        );
    }
}
