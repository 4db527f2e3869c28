//! The web console at `/console` (DESIGN §6, issue 15 §4): server-rendered HTML (maud)
//! over the same services as the admin API, acting as the signed-in `Caller`, so the role
//! rules of `keys::service` hold here too.
//!
//! - `session`: sign-in (member password or admin key), the session cookie, CSRF.
//! - `pages`: the HTML of every page; `keys`, `views`: the handlers.
//! - Assets (htmx, uPlot and our own JS/CSS) are compiled into the binary, so the console
//!   works offline, and every answer carries a strict Content-Security-Policy: no inline
//!   script or style anywhere (chart data comes from a JSON endpoint read by `console.js`).

mod assets;
mod keys;
mod pages;
mod session;
mod views;

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};

use crate::{error::ApiError, keys::KeyError, state::AppState};

/// The policy of every console answer (docs/decisions.md, "Web console").
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub fn router(state: AppState) -> Router<AppState> {
    if !state.config.console.enabled {
        return Router::new();
    }
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/keys") }))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/keys", get(keys::list).post(keys::create))
        .route("/console/keys/new", get(keys::new_form))
        .route("/console/keys/{id}", get(keys::detail))
        .route("/console/keys/{id}/usage.json", get(keys::usage_json))
        .route(
            "/console/keys/{id}/delete",
            get(keys::confirm_delete).post(keys::delete),
        )
        .route("/console/members", get(views::members))
        .route("/console/audit", get(views::audit))
        .route("/console/assets/{file}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
}

/// CSP and friends on every console answer; pages are never cached (they show secrets
/// once and per-session CSRF tokens), assets say otherwise themselves.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A console failure, shown as a page: the status and a message for a person.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }
}

impl From<KeyError> for PageError {
    fn from(err: KeyError) -> Self {
        ApiError::from(err).into()
    }
}

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        let message = match &err.field {
            Some(field) => format!("{}: {}", field, err.message),
            None => err.message,
        };
        PageError::new(err.status, message)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(err: crate::store::StoreError) -> Self {
        ApiError::from(err).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        (self.status, pages::error_page(self.status, &self.message)).into_response()
    }
}
