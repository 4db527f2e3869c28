//! The names the admin-side tests import (`crate::helpers::…`), re-exported from the
//! shared support (tests/support/mod.rs says what is there), plus `both_backends!`, the
//! old name of `backend_tests! { both: [...] }` kept for branches written against it.

#![allow(dead_code, unused_imports, unused_macros)]

pub use crate::support::{
    app::{spawn_app, spawn_app_with, test_config, TestApp},
    backends::{Backend, FrontDoor, Setup},
    db::{pg_admin_url, TestDb},
    http::{assert_error, future_rfc3339, id_of, json_of, keys_in, secret_of, secret_part},
    serve::{
        keygate, run, run_cli, spawn_serve, spawn_serve_with, strip_ansi, CliOutput, ServeProcess,
    },
};

/// `both_backends!(a, b)` = `backend_tests! { both: [a, b] }`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::support::backends::backend_tests! { both: [$($name),*] }
    };
}
pub(crate) use both_backends;
