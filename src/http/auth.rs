//! Authentication for every route but those in `UNAUTHENTICATED`: a new route is
//! protected unless someone exempts it here on purpose (STYLE §3 rule 6). The middleware
//! puts the verified key into request extensions; the `AdminKey` / `InferenceKey`
//! extractors then check the key's kind per route group.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{header, request::Parts, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    error::{ApiError, Surface},
    keys::{ApiKey, AuthError, Caller, KeyKind},
    state::AppState,
};

/// Routes that need no key. Everything else requires one. The Venice Web3 key flow
/// (GET and POST `generate_web3_key`) proves a wallet instead of a key; it is off unless
/// `web3.enabled` (see `http::compat::venice::web3`).
const UNAUTHENTICATED: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/api/v1/api_keys/generate_web3_key",
];
/// Path prefixes that need no key (the reference pages).
const UNAUTHENTICATED_PREFIXES: &[&str] = &["/docs"];

fn is_public(path: &str) -> bool {
    UNAUTHENTICATED.contains(&path)
        || UNAUTHENTICATED_PREFIXES
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// The verified key of this request, put into extensions by `authenticate`.
#[derive(Clone)]
pub struct Authenticated(pub Arc<ApiKey>);

/// The client's address: the peer, or the left-most `X-Forwarded-For` entry when the
/// operator trusts a proxy in front (`http.trust_forwarded_for`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

pub fn client_ip(
    parts_headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    client_ip_from(
        parts_headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        peer,
        trust_forwarded_for,
    )
}

/// [`client_ip`] from the `X-Forwarded-For` value, however the headers are held.
pub fn client_ip_from(
    forwarded_for: Option<&str>,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = forwarded_for
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|addr| addr.ip())
}

/// The presented key: `Authorization: Bearer …` (OpenAI, Venice, ours),
/// `Authorization: Token …` (aiXplain v1), `x-api-key` or `x-aixplain-key` (aiXplain v2).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    presented_key_in(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// [`presented_key`] through `text`, which gives a header's value as text, however the
/// headers are held.
pub fn presented_key_in<'a>(text: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = text(header::AUTHORIZATION.as_str()) {
        let value = value.trim();
        for scheme in ["Bearer ", "bearer ", "Token ", "token "] {
            if let Some(rest) = value.strip_prefix(scheme) {
                return Some(rest.trim());
            }
        }
        return Some(value);
    }
    ["x-api-key", "x-aixplain-key"]
        .iter()
        .find_map(|name| text(name))
        .map(str::trim)
}

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(
        request.headers(),
        peer,
        state.config.http.trust_forwarded_for,
    );
    request.extensions_mut().insert(ClientIp(ip));
    let path = request.uri().path();
    if is_public(path) {
        return next.run(request).await;
    }
    let surface = Surface::for_path(path);
    match verify(&state, request.headers(), ip, surface).await {
        Ok(key) => {
            tracing::Span::current().record("key_id", tracing::field::display(key.id));
            request.extensions_mut().insert(Authenticated(key));
            next.run(request).await
        }
        Err(refusal) => refusal,
    }
}

/// The key a request presents, verified: known, usable, allowed from `ip`. A refusal is
/// the finished answer on `surface` (401, 403 or 429). Shared by the middleware and the
/// inference fast path (`super::front`), so both refuse alike.
pub async fn verify(
    state: &AppState,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    surface: Surface,
) -> Result<Arc<ApiKey>, Response> {
    verify_presented(state, presented_key(headers), ip, surface).await
}

/// [`verify`] of the key already taken from the request's headers.
pub async fn verify_presented(
    state: &AppState,
    presented: Option<&str>,
    ip: Option<IpAddr>,
    surface: Surface,
) -> Result<Arc<ApiKey>, Response> {
    let Some(presented) = presented else {
        return Err(ApiError::from(AuthError::Missing)
            .on(surface)
            .into_response());
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
                .on(surface)
                .into_response());
            }
            Ok(key)
        }
        Err(err) => {
            tracing::info!(reason = %err, ip = ?ip, "authentication refused");
            Err(ApiError::from(err).on(surface).into_response())
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
