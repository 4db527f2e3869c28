//! The HTTP edge's error type. Domain errors convert into `ApiError` with `From`, so
//! handlers use `?`. Internal causes are logged once here and never sent to the client.
//!
//! One shape per surface (STYLE §3 rule 3): the native admin API answers
//! `{"error": {"code", "message", "field"?}}`; `/v1` answers OpenAI's
//! `{"error": {"message", "type", "code", "param"}}`. The surface is chosen by the route
//! family that produced the error.

use axum::{
    body::Body,
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde_json::json;

use crate::keys::{AuthError, KeyError};

/// Which wire format an error is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `{"error": {"code", "message", "field"?}}` (native admin API).
    Admin,
    /// `{"error": {"message", "type", "code", "param"}}` (`/v1`).
    OpenAi,
    /// `{"error": "<message>", "code": "<CODE>"}` (Venice-compatible `/api/v1`; the SDK maps
    /// statuses to exception classes and reads `error` and `code`).
    Venice,
    /// `{"statusCode", "message", "error"}` (aiXplain-compatible `/sdk`, `/v2`).
    Aixplain,
    /// `{"type": "error", "error": {"type", "message"}}` (Anthropic's Messages API,
    /// `/v1/messages`; its SDK maps statuses to exception classes).
    Anthropic,
}

impl Surface {
    pub fn for_path(path: &str) -> Surface {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Surface::Anthropic
        } else if path.starts_with("/v1/") || path == "/v1" {
            Surface::OpenAi
        } else if path.starts_with("/api/v1/") || path == "/api/v1" {
            Surface::Venice
        } else if path.starts_with("/sdk/") || path == "/sdk" || path.starts_with("/v2/") {
            Surface::Aixplain
        } else {
            Surface::Admin
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `invalid_api_key`.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
    pub retry_after_secs: Option<u64>,
    pub surface: Surface,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            surface: Surface::Admin,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn on(mut self, surface: Surface) -> Self {
        self.surface = surface;
        self
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        let message = if message.contains(&format!("`{field}`")) || message.starts_with(&field) {
            message
        } else {
            format!("`{field}`: {message}")
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }

    /// 503 `store_unavailable`: the store cannot serve the request now; retry shortly.
    pub fn store_unavailable() -> Self {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the key store is unavailable; retry shortly",
        );
        error.retry_after_secs = Some(1);
        error
    }

    /// A store failure: 503 when it may pass ([`StoreError::is_unavailable`]), else 500.
    /// The cause is logged here, never sent.
    pub fn from_store(err: &crate::store::StoreError, during: &'static str) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, during, "store unavailable");
            ApiError::store_unavailable()
        } else {
            tracing::error!(error = %err, during, "store error");
            ApiError::internal()
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 | 429 => "insufficient_quota",
            403 => "permission_error",
            404 => "not_found_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// Anthropic's error types, by status as its API uses them.
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }
}

/// An [`ApiError`] as it goes over the wire: status, headers and body bytes. The router
/// wraps it in an axum `Response`; the inference fast path writes it straight into the
/// answer, with no `Response` to build and take apart again.
pub struct RenderedError {
    pub status: StatusCode,
    /// `content-type`, then `retry-after` and `www-authenticate` where they apply.
    headers: [Option<(HeaderName, HeaderValue)>; 3],
    pub body: Bytes,
}

impl RenderedError {
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.headers
            .iter()
            .flatten()
            .map(|(name, value)| (name, value))
    }
}

impl ApiError {
    /// The error in its surface's JSON shape, with its headers.
    pub fn render(&self) -> RenderedError {
        let body = match self.surface {
            Surface::Admin => {
                let mut error = json!({ "code": self.code, "message": self.message });
                if let Some(field) = &self.field {
                    error["field"] = json!(field);
                }
                json!({ "error": error })
            }
            Surface::OpenAi => json!({ "error": {
                "message": self.message,
                "type": self.openai_type(),
                "code": self.code,
                "param": self.field,
            }}),
            Surface::Venice => json!({
                "error": self.message,
                "code": self.code.to_ascii_uppercase(),
            }),
            Surface::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type(), "message": self.message },
            }),
            Surface::Aixplain => json!({
                "statusCode": self.status.as_u16(),
                "message": self.message,
                "error": format!("err.{}", self.code),
            }),
        };
        RenderedError {
            status: self.status,
            headers: [
                Some((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )),
                self.retry_after_secs
                    .map(|secs| (header::RETRY_AFTER, HeaderValue::from(secs))),
                (self.status == StatusCode::UNAUTHORIZED)
                    .then(|| (header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            ],
            // A `Value` always serializes (its keys are strings).
            body: serde_json::to_vec(&body)
                .map(Bytes::from)
                .unwrap_or_default(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rendered = self.render();
        let mut response = Response::new(Body::from(rendered.body));
        *response.status_mut() = rendered.status;
        for (name, value) in rendered.headers.into_iter().flatten() {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(err: KeyError) -> Self {
        match err {
            KeyError::Invalid { field, message } => ApiError::invalid_field(field, message),
            KeyError::NotFound => ApiError::not_found("no such key in this workspace"),
            KeyError::WorkspaceNotFound => ApiError::not_found("no such workspace"),
            KeyError::MemberNotFound => ApiError::not_found("no such member in this workspace"),
            KeyError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            KeyError::CapReached { cap } => ApiError::new(
                StatusCode::CONFLICT,
                "key_cap_reached",
                format!(
                    "this workspace allows at most {cap} live keys; delete one or raise the cap"
                ),
            ),
            KeyError::LastAdminKey => {
                ApiError::new(StatusCode::CONFLICT, "last_admin_key", err.to_string())
            }
            KeyError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            KeyError::Store(err) => ApiError::from_store(&err, "key management"),
            KeyError::Hash(err) => {
                tracing::error!(error = %err, "hashing error");
                ApiError::internal()
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            // Whatever the cause, a key that cannot be checked is refused with 503 (never
            // 500, never let through): the client may retry.
            AuthError::Store(err) => {
                if err.is_unavailable() {
                    tracing::warn!(error = %err, "store unavailable during authentication");
                } else {
                    tracing::error!(error = %err, "store error during authentication");
                }
                ApiError::store_unavailable()
            }
            AuthError::Hash(err) => {
                tracing::error!(error = %err, "hashing error during authentication");
                ApiError::internal()
            }
            AuthError::TooManyAttempts { retry_after } => {
                let mut error = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_auth_attempts",
                    err.to_string(),
                );
                error.retry_after_secs = Some(retry_after.as_secs_f64().ceil() as u64);
                error
            }
            other => {
                let message = match other {
                    AuthError::Missing => {
                        "no API key: send `Authorization: Bearer kg_…` or `x-api-key: kg_…`"
                            .to_string()
                    }
                    other => other.to_string(),
                };
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
            }
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        KeyError::from(err).into()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_router_answers_exactly_what_render_gives() {
        let mut limited = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", "wait");
        limited.retry_after_secs = Some(3);
        for error in [
            ApiError::from(AuthError::Missing).on(Surface::OpenAi),
            ApiError::invalid_field("name", "too long").on(Surface::Admin),
            limited.on(Surface::Venice),
            ApiError::not_found("no such key").on(Surface::Aixplain),
        ] {
            let rendered = error.render();
            let response = error.into_response();
            assert_eq!(response.status(), rendered.status);
            let headers: Vec<_> = rendered
                .headers()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            let answered: Vec<_> = response
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            assert_eq!(answered, headers);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, rendered.body);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
    }

    #[test]
    fn a_401_asks_for_a_bearer_key_and_a_wait_is_a_retry_after() {
        let rendered = ApiError::from(AuthError::Missing).render();
        let names: Vec<_> = rendered.headers().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["content-type", "www-authenticate"]);
        let mut limited = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", "wait");
        limited.retry_after_secs = Some(3);
        let rendered = limited.render();
        let retry = rendered
            .headers()
            .find(|(name, _)| *name == header::RETRY_AFTER)
            .map(|(_, value)| value.clone());
        assert_eq!(retry, Some(HeaderValue::from(3u64)));
    }
}
