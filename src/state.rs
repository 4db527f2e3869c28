//! Shared application state handed to every handler.

use std::sync::Arc;

use crate::{
    config::Config,
    keys::{FailedAuthGuard, KeysService, SignInGuard},
    proxy::Gateway,
    store::DynStore,
    telemetry::metrics::Metrics,
    usage::{Recorder, UsageReader},
    workspaces::{MembersService, WorkspacesService},
};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub keys: KeysService,
    pub workspaces: WorkspacesService,
    pub members: MembersService,
    pub auth_attempts: Arc<FailedAuthGuard>,
    /// Failed console sign-ins per address and per username.
    pub sign_in_attempts: Arc<SignInGuard>,
    pub gateway: Arc<Gateway>,
    pub recorder: Recorder,
    /// Every read of usage, spend and refusals goes through it (it flushes `recorder` first).
    pub usage: UsageReader,
    /// The Prometheus series (`/metrics`); the gateway holds the same.
    pub metrics: Arc<Metrics>,
}
