//! Shared helpers for integration tests.
//!
//! Include from a test binary with `mod support;` (for `tests/foo.rs`) or
//! `#[path = "../support/mod.rs"] mod support;` (for `tests/foo/main.rs`).

pub mod slow_upstream;
pub mod upstream;
