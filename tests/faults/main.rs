//! Faults keygate must survive without losing or doubling usage (issue 13 §3): the store
//! going away under traffic, a commit whose answer is lost, the process killed or stopped
//! under load, upstreams that never answer or answer a byte a second.
//!
//! A test binary of its own, apart from `tests/api`: these tests run for tens of seconds
//! and measure time, so they should not share the machine with the whole API suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod load;
mod lost_commit;
mod pg_proxy;
mod process;
mod store_outage;
#[path = "../support/mod.rs"]
mod support;
mod upstream_timeouts;
