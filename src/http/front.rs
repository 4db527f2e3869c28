//! The front door: every request of a connection comes here first. The three inference
//! routes that carry nearly all traffic (`POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`) go straight to their handler; everything else goes to the axum
//! router and its middleware stack (`super::router`).
//!
//! Why: the router's stack (request id, trace, sensitive headers, panic catcher, two body
//! limits, auth, extractors) is built for the admin surfaces; run per inference request it
//! was the largest single cost of the proxy in profiles (docs/performance.md). The fast
//! path does the same things once, in one function, in the same order:
//! request id → span → panic catcher → auth → inference key → body limit → proxy.
//! Other methods on those paths fall through to the router, so 405s, the OpenAPI document
//! and the tests of the router see the routes unchanged.

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    serve::{IncomingStream, Listener},
    Router,
};
use futures::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::Service;
use tracing::Instrument;

use super::{auth, inference, KEY_HEADERS, REQUEST_ID};
use crate::{
    error::{ApiError, Surface},
    proxy::Endpoint,
    state::AppState,
};

/// Makes one [`Front`] per accepted connection (the `axum::serve` make-service).
#[derive(Clone)]
pub struct MakeFront {
    state: AppState,
    router: Router,
}

impl MakeFront {
    pub fn new(state: AppState, router: Router) -> Self {
        MakeFront { state, router }
    }
}

impl<L> Service<IncomingStream<'_, L>> for MakeFront
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = Front;
    type Error = Infallible;
    type Future = Ready<Result<Front, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        ready(Ok(Front {
            state: self.state.clone(),
            router: self.router.clone(),
            peer: *stream.remote_addr(),
        }))
    }
}

/// The per-connection service.
#[derive(Clone)]
pub struct Front {
    state: AppState,
    router: Router,
    peer: SocketAddr,
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if let Some(endpoint) = hot_endpoint(request.method(), request.uri().path()) {
            let state = self.state.clone();
            let peer = self.peer;
            return Box::pin(
                async move { Ok(serve_inference(state, peer, endpoint, request).await) },
            );
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move { router.call(request).await })
    }
}

fn hot_endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    }
}

/// One inference request, start to end. Mirrors the router's stack for these routes.
async fn serve_inference(
    state: AppState,
    peer: SocketAddr,
    endpoint: Endpoint,
    mut request: Request,
) -> Response {
    let request_id = request_id(&mut request);
    // DEBUG, not INFO like the router's: a span per request cost more than the limiter;
    // the proxy's own log events name the request id and key instead.
    let span = tracing::debug_span!(
        "request",
        method = %request.method(),
        route = request.uri().path(),
        request_id = request_id.to_str().unwrap_or_default(),
        key_id = tracing::field::Empty,
    );
    let started = Instant::now();
    let answer = AssertUnwindSafe(admit_and_proxy(state, peer, endpoint, request))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let mut response = answer.unwrap_or_else(|_| {
        tracing::error!(parent: &span, "a request handler panicked");
        ApiError::internal().on(Surface::OpenAi).into_response()
    });
    tracing::debug!(
        parent: &span,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "finished processing request"
    );
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// The client's `x-request-id`, or a new one; kept on the request so the upstream sees it.
fn request_id(request: &mut Request) -> HeaderValue {
    if let Some(id) = request.headers().get(REQUEST_ID) {
        return id.clone();
    }
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    // A hyphenated UUID is always a valid header value.
    let id = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"));
    request.headers_mut().insert(REQUEST_ID, id.clone());
    id
}

async fn admit_and_proxy(
    state: AppState,
    peer: SocketAddr,
    endpoint: Endpoint,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    for name in KEY_HEADERS {
        if let Some(value) = parts.headers.get_mut(&name) {
            value.set_sensitive(true);
        }
    }
    let ip = auth::client_ip(
        &parts.headers,
        Some(peer),
        state.config.http.trust_forwarded_for,
    );
    let key = match auth::verify(&state, &parts.headers, ip, Surface::OpenAi).await {
        Ok(key) => key,
        Err(refusal) => return refusal,
    };
    let key = match inference::inference_key(&state, key) {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match read_body(body, state.config.http.max_body_bytes).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    inference::proxy(
        state,
        key,
        endpoint,
        parts.method,
        &parts.uri,
        parts.headers,
        body,
    )
    .await
}

async fn read_body(body: Body, max_bytes: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body is larger than the server accepts (http.max_body_bytes)",
        )
        .with_field("body")
        .on(Surface::OpenAi)),
        Err(err) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("cannot read the request body: {err}"),
        )
        .with_field("body")
        .on(Surface::OpenAi)),
    }
}
