//! The front doors: how a connection's requests reach keygate. `serve` accepts
//! connections; `fast` reads and answers the three hot inference routes on the
//! connection's own task (`wire` writes its answers); anything else, or every request when
//! `http.fast_path = false`, is served by hyper and the axum router (`super::router`).

pub mod admission;
mod deadline;
mod fast;
pub mod serve;
pub(crate) mod wire;
