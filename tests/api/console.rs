//! The web console at `/console` (issue 15 §4) over plain HTTP: the session cookie's
//! attributes, idle expiry and sign-out, CSRF, sign-in throttling, the CSP, and the role
//! rules through the console's own routes. The same flows in a real browser (Debian's
//! chromium driven by Playwright) are `browser_drives_the_console` below, running
//! tests/python/test_console.py.

use std::{collections::HashMap, time::Duration};

use keygate::{http::console::CSP, keys::Caller, store::Role, workspaces::NewMember};
use reqwest::{header, redirect, Response, StatusCode};
use serde_json::json;

use crate::{
    helpers::{both_backends, spawn_app, spawn_app_with, Backend, TestApp},
    support::{
        app::{price, spawn_proxy_with},
        backends::{FrontDoor, Setup},
        pytest,
    },
};

both_backends!(
    the_session_cookie_is_http_only_strict_and_secure_when_asked,
    sessions_end_when_idle_and_at_sign_out,
    a_post_without_the_csrf_token_is_refused,
    sign_in_is_limited_per_address_and_per_username,
    a_member_cannot_delete_another_members_key,
    admin_key_sign_in_is_audited_and_inference_keys_are_refused,
);

const PASSWORD: &str = "correct horse battery";

/// A browser without script: keeps the cookies it is given, follows no redirect.
struct Visitor {
    base: String,
    client: reqwest::Client,
    cookies: HashMap<String, String>,
    /// `X-Forwarded-For`, for apps that trust it.
    from: Option<String>,
}

impl Visitor {
    fn new(app: &TestApp) -> Self {
        Visitor {
            base: app.address.clone(),
            client: reqwest::Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            from: None,
        }
    }

    fn keep_cookies(&mut self, response: &Response) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, v) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), v.into());
            }
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if !cookie.is_empty() {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(from) = &self.from {
            request = request.header("x-forwarded-for", from);
        }
        request
    }

    async fn get(&mut self, path: &str) -> Response {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Response {
        let response = self
            .request(reqwest::Method::POST, path)
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    /// The page at `path` and the CSRF token of its first form.
    async fn page(&mut self, path: &str) -> (String, String) {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        let html = response.text().await.unwrap();
        let token = csrf_in(&html);
        (html, token)
    }

    async fn sign_in_as(&mut self, username: &str, password: &str) -> Response {
        let (_, token) = self.page("/console/sign-in").await;
        self.post(
            "/console/sign-in",
            &[
                ("csrf_token", &token),
                ("method", "password"),
                ("workspace", "default"),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }

    async fn sign_in_with_key(&mut self, key: &str) -> Response {
        let (_, token) = self.page("/console/sign-in").await;
        self.post(
            "/console/sign-in",
            &[
                ("csrf_token", &token),
                ("method", "key"),
                ("admin_key", key),
            ],
        )
        .await
    }
}

fn csrf_in(html: &str) -> String {
    let at = html
        .find(r#"name="csrf_token" value=""#)
        .unwrap_or_else(|| panic!("no csrf_token field in {html}"));
    let rest = &html[at + r#"name="csrf_token" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn location(response: &Response) -> &str {
    response.headers()[header::LOCATION].to_str().unwrap()
}

fn set_cookie<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set: {:?}", response.headers()))
}

async fn add_member(app: &TestApp, username: &str, role: Role) {
    app.state
        .members
        .add(
            &Caller::operator("test:console"),
            app.workspace_id,
            NewMember {
                username: username.into(),
                role,
                password: PASSWORD.into(),
            },
        )
        .await
        .unwrap();
}

async fn the_session_cookie_is_http_only_strict_and_secure_when_asked(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    add_member(&app, "alice", Role::Member).await;
    let mut visitor = Visitor::new(&app);

    // Act
    let form = visitor.get("/console/sign-in").await;
    let csp = form.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    let pre = set_cookie(&form, "keygate_sign_in").to_string();
    drop(form);
    let signed_in = visitor.sign_in_as("alice", PASSWORD).await;

    // Assert
    assert_eq!(csp, CSP);
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
        "{pre}"
    );
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_in), "/console/keys");
    let cookie = set_cookie(&signed_in, "keygate_session");
    for attribute in ["; Path=/console", "; HttpOnly", "; SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP, not asked for: {cookie}"
    );
    let keys = visitor.get("/console/keys").await;
    assert_eq!(keys.status(), StatusCode::OK);
    assert_eq!(keys.headers()[header::CONTENT_SECURITY_POLICY], CSP);
    assert_eq!(keys.headers()[header::CACHE_CONTROL], "no-store");
    let html = keys.text().await.unwrap();
    assert!(
        html.contains("<h1>Keys</h1>") && html.contains("alice"),
        "{html}"
    );
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "inline script or style: {html}"
    );
    // The store holds a digest of the id, never the id itself.
    let raw = visitor.cookies["keygate_session"].clone();
    assert!(app
        .store()
        .use_console_session(
            &raw,
            chrono::Utc::now() - chrono::Duration::hours(1),
            chrono::Utc::now()
        )
        .await
        .is_err());

    // With `console.secure_cookies`, the cookie is Secure even over plain HTTP.
    let secure = spawn_app_with(backend, |c| c.console.secure_cookies = true).await;
    add_member(&secure, "alice", Role::Member).await;
    let mut visitor = Visitor::new(&secure);
    let signed_in = visitor.sign_in_as("alice", PASSWORD).await;
    assert!(set_cookie(&signed_in, "keygate_session").ends_with("; Secure"));
}

async fn sessions_end_when_idle_and_at_sign_out(backend: Backend) {
    // Arrange
    let app = spawn_app_with(backend, |c| c.console.session_idle_secs = 1).await;
    add_member(&app, "alice", Role::Member).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in_as("alice", PASSWORD).await;
    assert_eq!(visitor.get("/console/keys").await.status(), StatusCode::OK);

    // Act: idle past the limit.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let idle = visitor.get("/console/keys").await;

    // Assert
    assert_eq!(idle.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&idle), "/console/sign-in");

    // Sign-out needs the CSRF token, then ends the session for good.
    let app = spawn_app(backend).await;
    add_member(&app, "alice", Role::Member).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in_as("alice", PASSWORD).await;
    let stolen = visitor.cookies["keygate_session"].clone();
    let (_, token) = visitor.page("/console/keys").await;
    assert_eq!(
        visitor.post("/console/sign-out", &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let out = visitor
        .post("/console/sign-out", &[("csrf_token", &token)])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(&out, "keygate_session").contains("Max-Age=0"));
    visitor.cookies.insert("keygate_session".into(), stolen);
    let after = visitor.get("/console/keys").await;
    assert_eq!(
        after.status(),
        StatusCode::SEE_OTHER,
        "the old cookie is dead"
    );
    assert_eq!(location(&after), "/console/sign-in");
}

async fn a_post_without_the_csrf_token_is_refused(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let mut visitor = Visitor::new(&app);
    // The sign-in form's own token (a double-submit cookie) is required too.
    let (_, _) = visitor.page("/console/sign-in").await;
    let no_token = visitor
        .post(
            "/console/sign-in",
            &[("method", "key"), ("admin_key", &app.admin_key)],
        )
        .await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        visitor.sign_in_with_key(&app.admin_key).await.status(),
        StatusCode::SEE_OTHER
    );

    // Act
    let missing = visitor
        .post("/console/keys", &[("name", "csrf-less")])
        .await;
    let status = missing.status();
    let body = missing.text().await.unwrap();
    let wrong = visitor
        .post(
            "/console/keys",
            &[("name", "csrf-less"), ("csrf_token", "guess")],
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("CSRF token (csrf_token)"), "{body}");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let (_, keys) = app.admin_get("/admin/v1/keys?limit=500").await;
    assert!(
        !keys.to_string().contains("csrf-less"),
        "no key was made: {keys}"
    );
    // The header htmx sends counts as the token.
    let (_, token) = visitor.page("/console/keys").await;
    let with_header = visitor
        .request(reqwest::Method::POST, "/console/keys")
        .header("x-csrf-token", token)
        .form(&[("name", "by header")])
        .send()
        .await
        .unwrap();
    assert_eq!(with_header.status(), StatusCode::CREATED);
}

async fn sign_in_is_limited_per_address_and_per_username(backend: Backend) {
    // Arrange: two failures a minute allowed; addresses told by X-Forwarded-For.
    let app = spawn_app_with(backend, |c| {
        c.keys.failed_auth_per_minute = 2;
        c.http.trust_forwarded_for = true;
    })
    .await;
    add_member(&app, "alice", Role::Member).await;
    let mut visitor = Visitor::new(&app);

    // Act: one username from three addresses.
    let mut statuses = Vec::new();
    for from in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        visitor.from = Some(from.into());
        statuses.push(
            visitor
                .sign_in_as("alice", "wrong password!")
                .await
                .status(),
        );
    }
    // ... and one address trying three usernames.
    visitor.from = Some("10.0.0.9".into());
    for username in ["u1", "u2", "u3"] {
        statuses.push(
            visitor
                .sign_in_as(username, "wrong password!")
                .await
                .status(),
        );
    }
    visitor.from = Some("10.0.0.4".into());
    let blocked_username = visitor.sign_in_as("alice", PASSWORD).await;

    // Assert
    use StatusCode as S;
    assert_eq!(
        statuses,
        [
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::TOO_MANY_REQUESTS,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        blocked_username.status(),
        S::TOO_MANY_REQUESTS,
        "even with the right password"
    );
    assert!(blocked_username.headers().contains_key(header::RETRY_AFTER));
    let text = blocked_username.text().await.unwrap();
    assert!(text.contains("too many failed sign-ins"), "{text}");
    // Another username from a fresh address is not held back.
    add_member(&app, "bob", Role::Member).await;
    visitor.from = Some("10.0.0.5".into());
    assert_eq!(
        visitor.sign_in_as("bob", PASSWORD).await.status(),
        S::SEE_OTHER
    );
    let (_, events) = app
        .admin_get("/admin/v1/audit-events?action=member.sign_in_failed")
        .await;
    // The attempt past the allowance still ran (and is audited); the blocked one did not.
    assert_eq!(events["total"], 6, "{events}");
    let (_, signed_in) = app
        .admin_get("/admin/v1/audit-events?action=member.sign_in")
        .await;
    assert_eq!(signed_in["data"][0]["source_ip"], "10.0.0.5", "{signed_in}");
    assert_eq!(signed_in["total"], 1, "{signed_in}");
}

async fn a_member_cannot_delete_another_members_key(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    add_member(&app, "alice", Role::Member).await;
    add_member(&app, "bob", Role::Member).await;
    let mut alice = Visitor::new(&app);
    alice.sign_in_as("alice", PASSWORD).await;
    let (page, token) = alice.page("/console/keys").await;
    assert!(
        !page.contains(r#"value="admin""#),
        "a member is not offered admin keys"
    );
    let created = alice
        .post(
            "/console/keys",
            &[("csrf_token", &token), ("name", "alice's key")],
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let html = created.text().await.unwrap();
    assert!(html.contains("shown only once"), "{html}");
    let (_, keys) = app.admin_get("/admin/v1/keys").await;
    let key = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "alice's key")
        .unwrap()
        .clone();
    let id = key["id"].as_str().unwrap();
    assert_eq!(key["created_by"], "member:alice");

    // Act
    let mut bob = Visitor::new(&app);
    bob.sign_in_as("bob", PASSWORD).await;
    let (bobs_page, bobs_token) = bob.page("/console/keys").await;
    let refused = bob
        .post(
            &format!("/console/keys/{id}/delete"),
            &[("csrf_token", &bobs_token)],
        )
        .await;
    let refused_status = refused.status();
    let refused_body = refused.text().await.unwrap();
    let confirm = bob.get(&format!("/console/keys/{id}/delete")).await;

    // Assert
    assert!(
        bobs_page.contains("alice&#39;s key") || bobs_page.contains("alice's key"),
        "{bobs_page}"
    );
    assert!(
        !bobs_page.contains(&format!("/console/keys/{id}/delete")),
        "no delete button for bob"
    );
    assert_eq!(refused_status, StatusCode::FORBIDDEN);
    assert!(
        refused_body.contains("workspace admins and owners"),
        "{refused_body}"
    );
    assert_eq!(confirm.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.admin_get_key(id).await["status"], "active");
    // Members and the audit log are for admins.
    assert_eq!(
        bob.get("/console/members").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bob.get("/console/audit").await.status(),
        StatusCode::FORBIDDEN
    );
    // Alice deletes her own, after the confirmation page.
    let (confirm_page, token) = alice.page(&format!("/console/keys/{id}/delete")).await;
    assert!(confirm_page.contains("stops working at once"));
    let deleted = alice
        .post(
            &format!("/console/keys/{id}/delete"),
            &[("csrf_token", &token)],
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    let (status, _) = app.admin_get(&format!("/admin/v1/keys/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked keys leave the list");
}

async fn admin_key_sign_in_is_audited_and_inference_keys_are_refused(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let inference = app.create_key(&json!({ "name": "plain" })).await;
    let mut visitor = Visitor::new(&app);

    // Act
    let refused = visitor
        .sign_in_with_key(inference["secret"].as_str().unwrap())
        .await;
    let unknown = visitor.sign_in_with_key("kg_not_a_key").await;
    let signed_in = visitor.sign_in_with_key(&app.admin_key).await;

    // Assert
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let (page, _) = visitor.page("/console/audit").await;
    assert!(page.contains("console.sign_in"), "{page}");
    assert!(page.contains("console.sign_in_failed"), "{page}");
    assert!(
        !page.contains(&app.admin_key),
        "never a secret in the audit log"
    );
    let (members, _) = visitor.page("/console/members").await;
    assert!(members.contains("<h1>Members</h1>"));
    // The console can be switched off.
    let off = spawn_app_with(backend, |c| c.console.enabled = false).await;
    let response = Visitor::new(&off).get("/console/sign-in").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// tests/python/test_console.py in Debian's chromium (Playwright for Python; no browser
/// download): both sign-ins, create a key and read its secret once, the list, the usage
/// chart after proxied requests, delete with confirmation, the audit log, what a member
/// is not offered, and screenshots of each page under target/console-shots/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_drives_the_console() {
    let chromium =
        std::env::var("KEYGATE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium` (.ci/run does it)"
    );
    let python = pytest::ensure_venv().await;
    let setup = Setup {
        backend: Backend::Sqlite,
        door: FrontDoor::Router,
    };
    let app = spawn_proxy_with(setup, |config| {
        config.models = vec![price("mock-model", "1", "2")];
        config.keys.default_workspace_key_cap = None;
    })
    .await;
    add_member(&app, "ada", Role::Admin).await;
    add_member(&app, "max", Role::Member).await;
    add_member(&app, "mia", Role::Member).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-shots");
    let env = [
        ("KEYGATE_URL", app.address.clone()),
        ("KEYGATE_ADMIN_KEY", app.admin_key.clone()),
        ("KEYGATE_MEMBER_PASSWORD", PASSWORD.to_string()),
        ("KEYGATE_CHROMIUM", chromium),
        ("KEYGATE_SHOTS", shots.to_string_lossy().into_owned()),
    ];
    let run = pytest::run_pytest(&python, "tests/python/test_console.py", |_| false, &env).await;
    assert!(
        run.status.success(),
        "the console's browser tests failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.status,
        run.out,
        run.err
    );
    drop(app);
}
