#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_keys;
mod auth_guard;
mod bad_input;
mod bootstrap;
mod cli;
mod compat_aixplain;
mod compat_venice;
mod early_refusals;
mod front_door;
mod harness;
mod helpers;
mod last_admin_key;
mod openapi;
mod ops;
mod proxy_accounting;
mod proxy_auth;
mod proxy_budgets;
mod proxy_hardening;
mod proxy_helpers;
mod proxy_limits;
mod proxy_routes;
mod proxy_streaming;
mod secrets;
#[path = "../support/mod.rs"]
mod support;
mod text_input;
