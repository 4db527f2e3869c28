//! Signing in and out, the session cookie, and CSRF.
//!
//! A session is an opaque random id in an `HttpOnly; SameSite=Strict` cookie (`Secure`
//! over TLS or with `console.secure_cookies`); the store keeps only its SHA-256, with the
//! principal and the session's CSRF token, and forgets it after `console.session_idle_secs`
//! unused. Who the principal is (member role, admin key still live) is read anew on every
//! request, so a demotion, removal or revocation takes effect at once.
//!
//! The sign-in form has no session yet: its CSRF token is a double-submit cookie (a random
//! value in a `SameSite=Strict` cookie that the form must repeat). Failed sign-ins are
//! limited per address and per username (`keys::SignInGuard`) before any argon2 runs.

use std::time::Duration;

use axum::{
    extract::{FromRequestParts, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use base64::Engine as _;
use rand::{rngs::OsRng, RngCore};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{pages, PageError};
use crate::{
    http::auth::ClientIp,
    keys::{ApiKey, Caller, KeyKind, KeyStatus},
    state::AppState,
    store::{AuditEvent, ConsoleSession, StoreError, DEFAULT_WORKSPACE_ID},
};

pub const SESSION_COOKIE: &str = "keygate_session";
/// The sign-in form's double-submit CSRF token (no session exists yet).
pub const SIGN_IN_COOKIE: &str = "keygate_sign_in";
/// The header htmx requests carry the CSRF token in (`hx-headers` in the markup).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// 32 random bytes, URL-safe base64: session ids and CSRF tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a session id.
fn digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Equality that takes as long wherever the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Secure` when asked for, or when the request came over TLS (as a trusted proxy in
/// front says with `X-Forwarded-Proto`).
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.console.secure_cookies
        || (state.config.http.trust_forwarded_for
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https")))
}

fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
    secure: bool,
) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static(""))
}

fn idle(state: &AppState) -> chrono::Duration {
    chrono::Duration::seconds(
        i64::try_from(state.config.console.session_idle_secs).unwrap_or(i64::MAX / 1_000_000),
    )
}

fn source(parts_ip: Option<&ClientIp>) -> Option<String> {
    parts_ip.and_then(|c| c.0).map(|ip| ip.to_string())
}

/// A signed-in request: the session and the `Caller` it acts as.
pub struct Console {
    pub caller: Caller,
    pub session: ConsoleSession,
    /// How the page names who is signed in.
    pub who: String,
    csrf_header: Option<String>,
}

impl Console {
    /// Refuses a change that does not carry this session's CSRF token (a form field, or
    /// the `x-csrf-token` header htmx sends).
    pub fn check_csrf(&self, field: Option<&str>) -> Result<(), PageError> {
        let presented = field.or(self.csrf_header.as_deref()).unwrap_or_default();
        if same(presented, &self.session.csrf_token) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }
}

fn csrf_refused() -> PageError {
    PageError::new(
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token (csrf_token): reload the page and try again",
    )
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/console/sign-in").into_response();
        let Some(raw) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_sign_in());
        };
        let id = digest(raw);
        let now = crate::clock::now();
        let session = match state
            .store
            .use_console_session(&id, now - idle(state), now)
            .await
        {
            Ok(session) => session,
            Err(StoreError::NotFound) => return Err(to_sign_in()),
            Err(err) => return Err(PageError::from(err).into_response()),
        };
        let source = source(parts.extensions.get::<ClientIp>());
        let resolved = match session.principal.split_once(':') {
            Some(("member", username)) => match state
                .store
                .find_member(session.workspace_id, username)
                .await
            {
                Ok(member) => Some((Caller::for_member(&member, source), member.username)),
                Err(StoreError::NotFound) => None,
                Err(err) => return Err(PageError::from(err).into_response()),
            },
            Some(("key", id)) => match Uuid::parse_str(id) {
                Ok(id) => match state.store.find_key(id).await {
                    Ok(key) if console_key(&key, session.workspace_id) => Some((
                        Caller::for_admin_key(&key, source),
                        format!("admin key {}", key.name),
                    )),
                    Ok(_) | Err(StoreError::NotFound) => None,
                    Err(err) => return Err(PageError::from(err).into_response()),
                },
                Err(_) => None,
            },
            _ => None,
        };
        let Some((caller, who)) = resolved else {
            // The member was removed or the key revoked: the session ends with them.
            state.store.delete_console_session(&id).await.ok();
            return Err(to_sign_in());
        };
        Ok(Console {
            caller,
            session,
            who,
            csrf_header: parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

/// An admin key may hold a console session while it is live.
fn console_key(key: &ApiKey, workspace_id: Uuid) -> bool {
    key.kind == KeyKind::Admin
        && key.workspace_id == workspace_id
        && key.status_at(crate::clock::now()) == KeyStatus::Active
}

/// GET `/console/sign-in`: the form, with a fresh double-submit token.
pub async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    sign_in_form(&state, &headers, StatusCode::OK, None)
}

fn sign_in_form(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    // Keep a token the browser already holds, so two open sign-in tabs do not void
    // each other's forms.
    let token = cookie(headers, SIGN_IN_COOKIE)
        .filter(|t| {
            t.len() == 43
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(random_token);
    let cookie = set_cookie(
        SIGN_IN_COOKIE,
        &token,
        "/console/sign-in",
        Some(3600),
        secure(state, headers),
    );
    (
        status,
        [(header::SET_COOKIE, cookie)],
        pages::sign_in(&token, error),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignInForm {
    csrf_token: Option<String>,
    /// `password` (a member) or `key` (an admin key).
    method: String,
    workspace: String,
    username: String,
    password: String,
    admin_key: String,
}

/// POST `/console/sign-in`.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ip: Option<axum::Extension<ClientIp>>,
    Form(form): Form<SignInForm>,
) -> Response {
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    let presented = form.csrf_token.as_deref().unwrap_or_default();
    if expected.is_empty() || !same(expected, presented) {
        return csrf_refused().into_response();
    }
    let ip = ip.and_then(|axum::Extension(ClientIp(ip))| ip);
    let guards = &state.sign_in_attempts;
    let username_key = (form.method == "password").then(|| {
        let workspace = if form.workspace.trim().is_empty() {
            "default"
        } else {
            form.workspace.trim()
        };
        format!(
            "{}/{}",
            workspace.to_lowercase(),
            form.username.trim().to_lowercase()
        )
    });
    let blocked = ip
        .and_then(|ip| guards.by_address.blocked_for(ip))
        .or_else(|| {
            username_key
                .clone()
                .and_then(|k| guards.by_username.blocked_for(k))
        });
    if let Some(wait) = blocked {
        return too_many(wait);
    }
    let source = ip.map(|ip| ip.to_string());
    let outcome = match form.method.as_str() {
        "password" => member_sign_in(&state, &form, source).await,
        "key" => key_sign_in(&state, &form, source).await,
        _ => Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "method: choose `password` or `key`",
        )),
    };
    match outcome {
        Ok(Some((session_id, session, audit))) => {
            let now = crate::clock::now();
            if let Err(err) = state
                .store
                .create_console_session(&session, &audit, now - idle(&state))
                .await
            {
                return PageError::from(err).into_response();
            }
            let secure = secure(&state, &headers);
            let mut response = Redirect::to("/console/keys").into_response();
            let cookies = response.headers_mut();
            cookies.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &session_id, "/console", None, secure),
            );
            cookies.append(
                header::SET_COOKIE,
                set_cookie(SIGN_IN_COOKIE, "", "/console/sign-in", Some(0), secure),
            );
            response
        }
        Ok(None) => {
            let mut wait = ip.and_then(|ip| guards.by_address.record_failure(ip));
            if let Some(k) = username_key {
                wait = wait.or(guards.by_username.record_failure(k));
            }
            if let Some(wait) = wait {
                return too_many(wait);
            }
            let message = if form.method == "key" {
                "that is not a live admin key"
            } else {
                "wrong workspace, username or password"
            };
            sign_in_form(&state, &headers, StatusCode::UNAUTHORIZED, Some(message))
        }
        Err(err) => err.into_response(),
    }
}

type NewSession = (String, ConsoleSession, AuditEvent);

fn new_session(workspace_id: Uuid, principal: String) -> (String, ConsoleSession) {
    let raw = random_token();
    let now = crate::clock::now();
    let session = ConsoleSession {
        id: digest(&raw),
        workspace_id,
        principal,
        csrf_token: random_token(),
        created_at: now,
        last_seen_at: now,
    };
    (raw, session)
}

async fn member_sign_in(
    state: &AppState,
    form: &SignInForm,
    source: Option<String>,
) -> Result<Option<NewSession>, PageError> {
    let name = form.workspace.trim();
    let name = if name.is_empty() { "default" } else { name };
    let workspace = match state.store.find_workspace(name).await {
        Ok(workspace) => workspace,
        Err(StoreError::NotFound) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let Some(signed) = state
        .members
        .sign_in(workspace.id, &form.username, &form.password, source)
        .await?
    else {
        return Ok(None);
    };
    let (raw, session) = new_session(workspace.id, format!("member:{}", signed.member.username));
    Ok(Some((raw, session, signed.audit)))
}

async fn key_sign_in(
    state: &AppState,
    form: &SignInForm,
    source: Option<String>,
) -> Result<Option<NewSession>, PageError> {
    let key = match state.keys.authenticate(form.admin_key.trim()).await {
        Ok(key) if key.kind == KeyKind::Admin => key,
        Ok(_) => {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "an inference key cannot sign in to the console; use an admin key or a member's password",
            ))
        }
        Err(crate::keys::AuthError::Store(err)) => return Err(err.into()),
        Err(_) => {
            let failed = AuditEvent {
                id: Uuid::now_v7(),
                workspace_id: DEFAULT_WORKSPACE_ID,
                actor: "anonymous".into(),
                action: "console.sign_in_failed".into(),
                target: "console".into(),
                at: crate::clock::now(),
                source,
                details: json!({ "method": "admin_key" }),
            };
            state.store.add_audit_event(&failed).await?;
            return Ok(None);
        }
    };
    let caller = Caller::for_admin_key(&key, source);
    let audit = caller.audit(
        key.workspace_id,
        "console.sign_in",
        format!("key:{}", key.id),
        json!({ "method": "admin_key" }),
    );
    let (raw, session) = new_session(key.workspace_id, format!("key:{}", key.id));
    Ok(Some((raw, session, audit)))
}

fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    let mut response = PageError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed sign-ins from this address or for this username; wait {secs} s and try again"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfOnly {
    pub csrf_token: Option<String>,
}

/// POST `/console/sign-out`: the session is deleted and its cookie cleared.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    console: Console,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PageError> {
    console.check_csrf(form.csrf_token.as_deref())?;
    state
        .store
        .delete_console_session(&console.session.id)
        .await?;
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            "",
            "/console",
            Some(0),
            secure(&state, &headers),
        ),
    );
    Ok(response)
}
