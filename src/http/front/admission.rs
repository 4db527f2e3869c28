//! The admission steps every request passes before its handler, on either front door:
//! the router's middleware (`crate::http::router`, `auth::authenticate`) and the inference
//! fast path (`super::fast`) both call these functions, so that a step added here cannot
//! hold for one door and silently not for the other. In order:
//!
//! 1. [`request_id`]: the client's `x-request-id`, or a new UUID v4. Each door calls it
//!    first, before its span opens (the router through [`MakeId`] in `SetRequestIdLayer`).
//! 2. [`guarded`]: from here on a panic is the surface's JSON 500, never a dropped
//!    connection (the router's `panic_guard` layer, the fast path around its work).
//! 3. [`admit`]: the client's address ([`client_ip`]); the body limit on the declared
//!    length; nothing more for the public routes; else the presented key
//!    ([`KEY_HEADERS`]) through the failed-attempt guard, verification and the key's IP
//!    allowlist (`auth::verify_presented`); on inference routes ([`Needs::of`]), admin
//!    keys refused and the key's use noted.
//!
//! The router also caps a body as it streams in (`RequestBodyLimitLayer`): only it reads
//! chunked bodies; the fast path reads only bodies of a declared length.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    sync::Arc,
};

use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use futures::FutureExt;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::{
    error::{ApiError, Surface},
    http::auth,
    keys::{presented::presented_key, ApiKey, KeyKind},
    proxy::headers::RequestHeaders,
    state::AppState,
};

pub use crate::keys::presented::KEY_HEADERS;

/// Step 1: the request's id, kept if the client sent one, else a new UUID v4 (the gateway
/// forwards it upstream and the answer carries it).
pub fn request_id(sent: Option<HeaderValue>) -> HeaderValue {
    sent.unwrap_or_else(|| {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        // A hyphenated UUID is always a valid header value.
        HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
    })
}

/// [`request_id`] for the router's `SetRequestIdLayer` (which keeps a client's own id).
#[derive(Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(request_id(None)))
    }
}

/// Step 2: `work` (the rest of the request's handling), with a panic turned into the
/// 500 of `surface`.
pub async fn guarded<F: Future>(surface: Surface, work: F) -> Result<F::Output, ApiError> {
    AssertUnwindSafe(work).catch_unwind().await.map_err(|_| {
        tracing::error!("a request handler panicked");
        ApiError::internal().on(surface)
    })
}

/// The key a route needs once past the public allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Any valid key; the route's extractor checks its kind (`AdminKey`, …).
    AnyKey,
    /// An inference key: admin keys are refused here.
    InferenceKey,
}

impl Needs {
    /// Every `/v1` route but the key's own self-service (`/v1/key`) is inference: the
    /// fast path's three, the model list and the pass-through paths.
    pub fn of(path: &str) -> Needs {
        if path.starts_with("/v1/") && path != "/v1/key" {
            Needs::InferenceKey
        } else {
            Needs::AnyKey
        }
    }
}

/// What a door knows of a request when it admits it: the head, not the body.
pub struct Arrival<'a, H> {
    pub path: &'a str,
    pub headers: &'a H,
    pub peer: Option<SocketAddr>,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<u64>,
}

/// An admitted request: the client's address, and its verified key (none on a public route).
pub struct Admitted {
    pub ip: Option<IpAddr>,
    pub key: Option<Arc<ApiKey>>,
}

/// Step 3: the checks on a request's head, in order; a refusal is the error to answer
/// with, on the path's surface.
pub async fn admit<H: HeaderText>(
    state: &AppState,
    arrival: Arrival<'_, H>,
) -> Result<Admitted, ApiError> {
    let surface = Surface::for_path(arrival.path);
    let http = &state.config.http;
    let ip = client_ip(arrival.headers, arrival.peer, http.trust_forwarded_for);
    if arrival
        .content_length
        .is_some_and(|length| length > http.max_body_bytes as u64)
    {
        return Err(body_too_large(surface));
    }
    if auth::is_public(arrival.path) {
        return Ok(Admitted { ip, key: None });
    }
    let presented = presented_key(|name| arrival.headers.text(name));
    let key = auth::verify_presented(state, presented, ip, surface).await?;
    let key = match Needs::of(arrival.path) {
        Needs::AnyKey => key,
        Needs::InferenceKey => inference_key(state, key).map_err(|err| err.on(surface))?,
    };
    Ok(Admitted { ip, key: Some(key) })
}

/// The client's address: the peer, or the left-most `X-Forwarded-For` entry when the
/// operator trusts a proxy in front (`http.trust_forwarded_for`).
pub fn client_ip(
    headers: &impl HeaderText,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .text("x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|addr| addr.ip())
}

/// Refuses admin keys on inference routes; notes the key's use (`last_used_at`).
fn inference_key(state: &AppState, key: Arc<ApiKey>) -> Result<Arc<ApiKey>, ApiError> {
    if key.kind == KeyKind::Admin {
        return Err(admin_key_refused());
    }
    state.recorder.touch(key.id, crate::clock::now());
    Ok(key)
}

/// The 403 for an admin key on an inference route.
pub fn admin_key_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "admin_key_not_for_inference",
        "admin keys cannot call inference; use an inference key",
    )
    .on(Surface::OpenAi)
}

/// The 413 for a body over `http.max_body_bytes`, declared or found while reading it.
pub fn body_too_large(surface: Surface) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is larger than the server accepts (http.max_body_bytes)",
    )
    .with_field("body")
    .on(surface)
}

/// A header's value as text, however a door holds the headers (a `HeaderMap` on the
/// router, the raw head on the fast path).
pub trait HeaderText {
    fn text(&self, name: &str) -> Option<&str>;
}

impl HeaderText for HeaderMap {
    fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HeaderText for RequestHeaders {
    fn text(&self, name: &str) -> Option<&str> {
        RequestHeaders::text(self, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_and_a_missing_one_made() {
        let sent = HeaderValue::from_static("client-chosen");
        assert_eq!(request_id(Some(sent.clone())), sent);
        let made = request_id(None);
        let made = made.to_str().unwrap_or_default();
        assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
    }

    #[test]
    fn every_v1_route_but_self_service_needs_an_inference_key() {
        for path in ["/v1/chat/completions", "/v1/models", "/v1/moderations"] {
            assert_eq!(Needs::of(path), Needs::InferenceKey, "{path}");
        }
        for path in ["/v1/key", "/v1", "/admin/v1/keys", "/api/v1/api_keys"] {
            assert_eq!(Needs::of(path), Needs::AnyKey, "{path}");
        }
    }

    #[test]
    fn the_forwarded_address_counts_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.1"),
        );
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or(([0; 4], 0).into());
        assert_eq!(
            client_ip(&headers, Some(peer), true),
            "203.0.113.9".parse().ok()
        );
        assert_eq!(client_ip(&headers, Some(peer), false), Some(peer.ip()));
        assert_eq!(client_ip(&HeaderMap::new(), None, true), None);
    }

    #[tokio::test]
    async fn a_panic_is_a_500_on_the_surface() {
        let refused = guarded(Surface::OpenAi, async { panic!("boom") })
            .await
            .err()
            .map(|error| (error.status, error.surface));
        assert_eq!(
            refused,
            Some((StatusCode::INTERNAL_SERVER_ERROR, Surface::OpenAi))
        );
        assert_eq!(guarded(Surface::Admin, async { 7 }).await.ok(), Some(7));
    }
}
