//! Accounting (DESIGN §3–4, §7): what a request costs ([`pricing`]), whether a key's budget
//! and its workspace's credits admit it ([`budget`]), recording what it used ([`writer`])
//! without a store write on the request path, and reading it back ([`reader`]).
//!
//! Flow per inference request: `BudgetLedger::admit` with the estimated cost → upstream
//! call → `BudgetLedger::settle` with the real cost → `Recorder::record` with the real
//! tokens and cost. The writer task batches records per key·model·minute and flushes at
//! least every second and once more on shutdown.

mod batch;
pub mod budget;
pub mod pricing;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod budget_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod writer_tests;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use self::{
    budget::{BudgetHold, BudgetLedger, BudgetRefusal, BudgetState, CreditsState},
    pricing::Pricing,
    reader::{KeySpend, RangeRequest, ReadError, UsageReader},
    writer::{
        spawn_writer, spawn_writer_after, AfterFlush, FlushError, Recorder, DEFAULT_FLUSH_EVERY,
    },
};

/// What one finished (or cancelled) request used. `at` picks the usage minute; use the
/// admission time so the stored minute falls in the same budget period the ledger charged
/// (a stream that crosses midnight counts toward the day it started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub key_id: Uuid,
    pub workspace_id: Uuid,
    pub model: String,
    pub at: DateTime<Utc>,
    /// Usually 1.
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// pico-USD, from `Pricing::cost_pico`.
    pub cost_pico: i64,
}
