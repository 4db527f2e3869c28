#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_keys;
mod bad_input;
mod bootstrap;
mod cli;
mod compat_aixplain;
mod compat_venice;
mod helpers;
mod ops;
mod proxy_accounting;
mod proxy_auth;
mod proxy_budgets;
mod proxy_helpers;
mod proxy_limits;
mod proxy_routes;
mod proxy_streaming;
mod secrets;
