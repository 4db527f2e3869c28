//! Authentication for every route but those in `UNAUTHENTICATED`: a new route is
//! protected unless someone exempts it here on purpose (STYLE §3 rule 6). The key checks
//! themselves (`verify_presented`) are a step of the admission both front doors run
//! (`super::front::admission`); the router's middleware here puts the verified key into
//! request extensions, and the `AdminKey` / `InferenceKey` extractors then check the
//! key's kind per route group.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::{Body, HttpBody as _},
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{header, request::Parts, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::FutureExt;
use http_body_util::BodyExt;

use super::front::admission::{self, Admitted, Arrival};
use crate::{
    error::{ApiError, Surface},
    keys::{ApiKey, AuthError, Caller, KeyKind},
    state::AppState,
};

/// Routes that need no key. Everything else requires one (`/metrics` an admin key; the
/// separate `metrics.listen` address serves it without one). The Venice Web3 key flow
/// (GET and POST `generate_web3_key`) proves a wallet instead of a key; it is off unless
/// `web3.enabled` (see `http::compat::venice::web3`).
const UNAUTHENTICATED: &[&str] = &[
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/api/v1/api_keys/generate_web3_key",
];
/// Path prefixes that need no key: the reference pages, and the console (it signs in with
/// its own session cookie, `http::console::session`).
const UNAUTHENTICATED_PREFIXES: &[&str] = &["/docs", "/console"];

/// Whether `path` needs no key. Runs for every request (the fast path's too): no allocation.
pub fn is_public(path: &str) -> bool {
    UNAUTHENTICATED.contains(&path)
        || UNAUTHENTICATED_PREFIXES.iter().any(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// The verified key of this request, put into extensions by `authenticate`.
#[derive(Clone)]
pub struct Authenticated(pub Arc<ApiKey>);

/// The client's address: the peer, or the left-most `X-Forwarded-For` entry when the
/// operator trusts a proxy in front (`http.trust_forwarded_for`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// The router's admission middleware: the shared steps (`front::admission::admit`), then
/// the client's address and verified key in the request's extensions for the handlers.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let arrival = Arrival {
        path: request.uri().path(),
        headers: request.headers(),
        peer,
        content_length,
    };
    match admission::admit(&state, arrival).await {
        Ok(Admitted { ip, key }) => {
            request.extensions_mut().insert(ClientIp(ip));
            if let Some(key) = key {
                tracing::Span::current().record("key_id", tracing::field::display(key.id));
                request.extensions_mut().insert(Authenticated(key));
            }
            next.run(request).await
        }
        Err(refusal) => {
            let mut response = refusal.into_response();
            if !skip_body_if_here(request.into_body()).await {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// Reads and drops a refused request's body if it has all arrived, as the fast path does
/// (`true`); if more is due, nobody will wait for it: the answer then says
/// `connection: close` (hyper closes the connection rather than wait for it too). The
/// body comes from hyper a frame at a time as the connection task reads the socket, so
/// each wait yields to that task once; twice in a row without a frame means the rest is
/// not here. `RequestBodyLimitLayer` bounds what is read.
async fn skip_body_if_here(mut body: Body) -> bool {
    let mut waits = 0;
    while !body.is_end_stream() {
        match body.frame().now_or_never() {
            Some(Some(Ok(_))) => waits = 0,
            Some(None) => return true,
            Some(Some(Err(_))) => return false,
            None if waits < 2 => {
                waits += 1;
                tokio::task::yield_now().await;
            }
            None => return false,
        }
    }
    true
}

/// The key a request presents, verified: known, usable, allowed from `ip`. A refusal is
/// the error to answer with on `surface` (401, 403 or 429). A step of
/// `front::admission::admit`, so both front doors refuse alike.
pub async fn verify_presented(
    state: &AppState,
    presented: Option<&str>,
    ip: Option<IpAddr>,
    surface: Surface,
) -> Result<Arc<ApiKey>, ApiError> {
    let Some(presented) = presented else {
        return Err(ApiError::from(AuthError::Missing).on(surface));
    };
    let client = ip.map(|ip| (ip, &*state.auth_attempts));
    match state.keys.authenticate_from(presented, client).await {
        Ok(key) => {
            if !ip_allowed(&key, ip) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "ip_not_allowed",
                    format!(
                        "{IP_RESTRICTED_MESSAGE}; this request came from {}",
                        ip.map(|ip| ip.to_string())
                            .unwrap_or_else(|| "an unknown address".into())
                    ),
                )
                .on(surface));
            }
            Ok(key)
        }
        Err(err) => {
            tracing::info!(reason = %err, ip = ?ip, "authentication refused");
            Err(ApiError::from(err).on(surface))
        }
    }
}

/// Venice's SDK raises `ApiKeyIpRestrictedError` on a 403 whose message starts with this.
pub const IP_RESTRICTED_MESSAGE: &str = "This API key is restricted to configured IP addresses";

/// A key's `ip_allowlist` holds on every request made with it: inference, self-service and
/// key management alike. No allowlist means any address.
fn ip_allowed(key: &ApiKey, ip: Option<IpAddr>) -> bool {
    match &key.ip_allowlist {
        None => true,
        Some(nets) => ip.is_some_and(|ip| nets.iter().any(|net| net.contains(&ip))),
    }
}

fn authenticated(parts: &Parts) -> Result<Arc<ApiKey>, ApiError> {
    parts
        .extensions
        .get::<Authenticated>()
        .map(|a| a.0.clone())
        .ok_or_else(|| ApiError::from(AuthError::Missing))
}

/// An admin key, turned into the `Caller` the keys service expects.
pub struct AdminKey {
    pub key: Arc<ApiKey>,
    pub caller: Caller,
}

impl<S: Send + Sync> FromRequestParts<S> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = authenticated(parts)?;
        if key.kind != KeyKind::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "inference_key_not_for_admin",
                "this is an inference key; the admin API needs an admin key",
            ));
        }
        let ip = parts.extensions.get::<ClientIp>().and_then(|c| c.0);
        let caller = Caller::for_admin_key(&key, ip.map(|ip| ip.to_string()));
        Ok(AdminKey { key, caller })
    }
}
