//! keygate: a self-hosted API-key gateway for LLM inference.
//!
//! Dependencies point one way: `http → {keys, limits, proxy, usage} → store → domain`.
//! Only `http` and `error` know about axum or status codes.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod key_changes;
pub mod keys;
pub mod limits;
pub mod money;
pub mod proxy;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod web3;
pub mod workspaces;

pub use app::App;
pub use config::Config;
