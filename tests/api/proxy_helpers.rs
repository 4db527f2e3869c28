//! The names the proxy tests import (`crate::proxy_helpers::…`), re-exported from the
//! shared support (tests/support/mod.rs says what is there), plus the old names kept for
//! branches written against them: `ProxyApp` (now [`TestApp`]) and `proxy_tests!`.

#![allow(dead_code, unused_imports, unused_macros)]

pub(crate) use crate::support;
pub use crate::support::{
    app::{
        price, proxy_config, spawn_proxy, spawn_proxy_with, spawn_replicas, TestApp, TestKey,
        UsageSum, PRICED_INPUT, PRICED_MODEL, PRICED_OUTPUT, UNPRICED_MODEL,
    },
    backends::{Backend, FrontDoor, Setup},
    http::{
        assert_openai_error, chat_body, closed_port_url, cost, eventually, go_duration_secs,
        header, is_go_duration, json_body, keygate_prompt_tokens, keygate_text_tokens, limit_view,
        stream_body, unique_env_var, usd,
    },
    raw::{raw_exchange, raw_request, RawAnswer, DOORS},
    sse::{read_sse, stream_text, Event, SseReader},
    upstream::MockUpstream,
};

/// The harness was `ProxyApp` before it served every test.
pub type ProxyApp = TestApp;

/// `proxy_tests! { both: [a], sqlite: [b] }` = `backend_tests! { doors: both, flavor:
/// by_backend, both: [a], sqlite: [b] }`: each test through both front doors, the SQLite
/// ones on tokio's single-threaded scheduler (as keygate runs on one CPU), the
/// PostgreSQL ones on the multi-threaded one.
macro_rules! proxy_tests {
    (both: [$($both:ident),* $(,)?], sqlite: [$($lite:ident),* $(,)?] $(,)?) => {
        $crate::support::backends::backend_tests! {
            doors: both,
            flavor: by_backend,
            both: [$($both),*],
            sqlite: [$($lite),*],
        }
    };
}
pub(crate) use proxy_tests;
