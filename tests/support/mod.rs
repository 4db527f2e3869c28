//! What every integration-test binary shares. Mount it at the crate root, once per binary:
//! `mod support;` (in `tests/foo.rs`) or `#[path = "../support/mod.rs"] mod support;` (in
//! `tests/foo/main.rs`); [`backends::backend_tests!`] refers to it as `crate::support`.
//!
//! - **Both backends** — [`backends::backend_tests!`] makes the tests from plain
//!   `async fn name(X)` bodies, `X` being [`backends::Backend`], [`backends::Setup`]
//!   (backend + [`backends::FrontDoor`]) or any other [`backends::Fixture`]:
//!   `backend_tests! { doors: both, flavor: by_backend, both: [a, b], sqlite: [c] }`
//!   (options optional; `doors: both` adds `fast_path::`/`router::`; `flavor` is
//!   `current_thread` (default), `multi_thread` or `by_backend`). Test names:
//!   `[fast_path|router::]sqlite|postgres::name`.
//! - **Databases** — [`db::TestDb::new`] gives a fresh SQLite file or PostgreSQL database,
//!   dropped with the last `Arc` holding it.
//! - **keygate in process** — [`app::TestApp`], always with a running [`upstream::MockUpstream`]
//!   (`app.mock`). `spawn_app(backend)` / `spawn_app_with(backend, |config| …)`: the
//!   admin configuration, no upstream. `spawn_proxy(setup)` / `spawn_proxy_with(setup, …)`:
//!   the mock as the upstream, `gpt-4o-mini` priced, short timeouts, `http.fast_path`
//!   from the setup's door. Several apps on ONE database and mock:
//!   `spawn_replicas(n, setup, |i, config| …)`, or `app.spawn_peer(|config| …)` (also a
//!   restart after `app.shut_down()`). Request helpers on `TestApp`: admin side
//!   (`req`, `req_as`, `get`, `get_as`, `post_json`, `create_key(&json) -> Value`,
//!   `admin_get`, `create_workspace_with_admin`, …) and inference side (`key_with(json)
//!   -> TestKey`, `plain_key`, `chat`, `chat_ok`, `post`, `key_info`, `remaining`,
//!   `usage`, `settled_usage`, `rate_limit_events`, …).
//! - **Answers** — [`http`] (JSON bodies, error shapes, headers, amounts, request bodies),
//!   [`sse`] (events as they arrive), [`raw`] (HTTP as bytes over TCP).
//! - **The real binary** — [`serve`]: `run_cli(&db, args)`, `spawn_serve(&db, envs)` /
//!   `spawn_serve_with(&db, toml, envs)` on the same `TestDb` (its config file);
//!   `proxy_toml(&mock)` is the proxy tests' configuration as TOML.
//! - **Real SDKs** — [`sdk`]: keygate for a pytest suite, keys made through the keys
//!   service, the run judged after a draining shutdown ([`pytest`] runs the child).
//! - **Upstreams** — [`upstream::MockUpstream`] (an OpenAI-compatible mock with behaviour
//!   switches) and [`slow_upstream::SlowUpstream`] (one that hangs or drips).
//! - **Webhooks** — [`webhook::WebhookReceiver`] (records budget-alert POSTs, can fail the
//!   first ones) and [`webhook::verify`] (the signature check as docs/webhooks.md states it).

// Fixtures are plain functions (not `#[test]`s), which `allow-unwrap-in-tests` does not cover;
// and each binary uses only some of them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unused_imports,
    unused_macros
)]

pub mod app;
pub mod backends;
pub mod db;
pub mod http;
pub mod pytest;
pub mod raw;
pub mod sdk;
pub mod serve;
pub mod slow_upstream;
pub mod sse;
pub mod upstream;
pub mod webhook;
