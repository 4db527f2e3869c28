//! The usage writer: requests add their [`UsageEvent`]s, refusals and key uses to a
//! shared batch through a cloneable [`Recorder`] (a short lock, never a store call or a
//! task wake-up), and one owned task takes the batch and writes it to the store at least
//! every `flush_every` (≤ 1 s, DESIGN §7) and once more when told to stop (STYLE rule 15).
//! The batch aggregates per key·model·minute as events arrive.
//!
//! After each flush it tells what it wrote to whoever asked ([`AfterFlush`]): the budget
//! ledger reloads the stored spend (so replicas on one database see each other's spend
//! within a flush interval, issue 12 §1), and the budget-alert checker (`src/alerts`) learns
//! which keys it wrote usage for, so alerts cost nothing per request.
//!
//! Why no channel: a message per request woke the writer task once per request, which
//! cost more on the proxy's hot path than the aggregation itself.
//!
//! Losses are bounded and counted, never silent:
//! - anything recorded after the writer stopped is dropped: [`Recorder::dropped`], warned
//!   at most every 10 s;
//! - a failed flush keeps what it could not write and retries at the next tick. Usage is
//!   written in chunks, each one transaction under its own batch id
//!   ([`Store::add_usage_batch`](crate::store::Store::add_usage_batch)); a chunk whose
//!   call failed may still have been committed (the connection broke after the commit
//!   was sent), so it is kept aside as it is and retried first, under the same id, which
//!   the store skips if it took it before: nothing is counted twice. Chunks never sent
//!   go back into the batch. Refusals (stored by id) and key uses (a maximum) are
//!   idempotent, so they simply go back into the batch.
//!   The batch holds at most [`MAX_BUCKETS`] usage buckets (the chunk kept aside
//!   included), [`MAX_REFUSALS`] refusals and [`MAX_TOUCHES`] keys (reached only while the
//!   store refuses writes); what arrives beyond that is discarded and counted in
//!   [`Recorder::discarded`].

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{mpsc, oneshot, watch, Notify},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use uuid::Uuid;

use super::{
    batch::{Batch, BucketKey},
    budget::BudgetLedger,
    UsageEvent,
};
use crate::store::{DynStore, RateLimitEvent, UsageDelta};

/// DESIGN §7: usage reaches the store at least every second.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Usage buckets (key·model·minute) the batch holds.
pub const MAX_BUCKETS: usize = 100_000;
/// Refusals the batch holds.
pub const MAX_REFUSALS: usize = 100_000;
/// Keys whose `last_used_at` the batch holds.
pub const MAX_TOUCHES: usize = 100_000;
/// Rows per store call, so one flush never becomes one huge transaction.
const CHUNK: usize = 1_000;
/// Batch size that triggers a flush before the tick (a burst of refusals, many keys).
const EARLY_FLUSH: usize = 10_000;
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Attempts of the final flush on shutdown before the batch is given up (and logged).
const FINAL_ATTEMPTS: u32 = 3;

/// Told, after a flush, which keys it wrote usage for (deduplicated). Called on the writer
/// task, so it must only hand the ids over (the budget-alert checker, `alerts::KeysToCheck`).
pub type FlushHook = Arc<dyn Fn(Vec<Uuid>) + Send + Sync>;

/// Who is told after each flush.
#[derive(Default)]
pub struct AfterFlush {
    /// Reloads its budgets' stored spend ([`BudgetLedger::after_flush`]).
    pub ledger: Option<BudgetLedger>,
    /// Learns which keys the flush wrote usage for.
    pub alerts: Option<FlushHook>,
}

impl AfterFlush {
    fn wants_deltas(&self) -> bool {
        self.ledger.is_some() || self.alerts.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The writer task has ended (stop signal or every recorder gone).
    #[error("the usage writer has stopped")]
    Stopped,
    /// The store refused the batch; it is kept and retried at the next tick.
    #[error("usage flush failed: {0}")]
    Failed(String),
}

/// What every recorder clone and the writer share.
struct Shared {
    batch: Mutex<Batch>,
    /// Set (under the batch's lock) when the writer takes its last batch.
    stopped: AtomicBool,
    /// Wakes the writer for an early flush when the batch grows past `EARLY_FLUSH`.
    early: Notify,
    dropped: AtomicU64,
    discarded: AtomicU64,
    /// Flushes the store refused (`/metrics`).
    flush_failures: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` + 1 of the last warning; 0 = never warned.
    last_warning: AtomicU64,
}

impl Shared {
    /// The batch; its critical sections only add numbers, so a poisoned lock is consistent.
    fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True at most once per `WARN_EVERY` across all threads.
    fn should_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last_warning.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        due && self
            .last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn count_discarded(&self, lost: u64) {
        if lost == 0 {
            return;
        }
        let total = self.discarded.fetch_add(lost, Ordering::Relaxed) + lost;
        if self.should_warn() {
            tracing::error!(
                discarded_total = total,
                "usage batch is full (the store is refusing writes); discarding"
            );
        }
    }
}

/// Hands usage to the writer. Cheap to clone; every method but `flush_now` returns at once
/// and never waits for the store.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// Flush requests; the writer also ends when every recorder is gone.
    flushes: mpsc::Sender<oneshot::Sender<Result<(), FlushError>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dropped", &self.dropped())
            .field("discarded", &self.discarded())
            .finish()
    }
}

impl Recorder {
    /// Adds one request's usage.
    pub fn record(&self, event: UsageEvent) {
        self.add("usage", |batch| batch.add_usage(event));
    }

    /// Adds one refused request (DESIGN §3 rate-limit event).
    pub fn refusal(&self, event: RateLimitEvent) {
        self.add("refusal", |batch| batch.add_refusal(event));
    }

    /// Notes that the key was used at `at`; the batch keeps the latest per key and the
    /// writer raises `last_used_at` once per flush.
    pub fn touch(&self, key_id: Uuid, at: DateTime<Utc>) {
        self.add("touch", |batch| batch.add_touch(key_id, at));
    }

    /// Records that arrived after the writer stopped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Buckets, refusals and touches thrown away because the batch was at its cap (the
    /// store refused writes for long), or because the store refused the final flush.
    pub fn discarded(&self) -> u64 {
        self.shared.discarded.load(Ordering::Relaxed)
    }

    /// Flushes the store refused so far (each one retried later).
    pub fn flush_failures(&self) -> u64 {
        self.shared.flush_failures.load(Ordering::Relaxed)
    }

    /// How long the oldest record not yet written has waited; zero when none waits.
    pub fn oldest_pending(&self) -> Duration {
        self.shared
            .batch()
            .pending_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Asks the writer to flush now and resolves when the flush is done. Everything
    /// recorded earlier (by any clone, in happens-before order) is included.
    pub fn flush_now(&self) -> impl Future<Output = Result<(), FlushError>> + Send + 'static {
        let flushes = self.flushes.clone();
        async move {
            let (done_tx, done_rx) = oneshot::channel();
            flushes
                .send(done_tx)
                .await
                .map_err(|_| FlushError::Stopped)?;
            done_rx.await.map_err(|_| FlushError::Stopped)?
        }
    }

    /// `add` returns whether the batch kept the record.
    fn add(&self, what: &'static str, add: impl FnOnce(&mut Batch) -> bool) {
        let (kept, len) = {
            let mut batch = self.shared.batch();
            if self.shared.stopped.load(Ordering::Relaxed) {
                drop(batch);
                let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if self.shared.should_warn() {
                    tracing::warn!(
                        what,
                        dropped_total = total,
                        "usage recorded after the writer stopped; dropping"
                    );
                }
                return;
            }
            let kept = add(&mut batch);
            if kept && batch.pending_since.is_none() {
                batch.pending_since = Some(Instant::now());
            }
            (kept, batch.len())
        };
        if !kept {
            self.shared.count_discarded(1);
        } else if len == EARLY_FLUSH {
            self.shared.early.notify_one();
        }
    }
}

/// Starts the writer task. It flushes every `flush_every` (clamped to 1 ms ..= 1 s), and
/// when `stop` becomes true (or its sender is dropped, or every [`Recorder`] is dropped) it
/// stops accepting messages, drains what the channel holds, flushes a last time and ends.
/// Await the handle on shutdown, after in-flight requests have drained.
pub fn spawn_writer(
    store: DynStore,
    flush_every: Duration,
    stop: watch::Receiver<bool>,
) -> (Recorder, JoinHandle<()>) {
    spawn_writer_with(
        store,
        flush_every,
        stop,
        Caps::default(),
        AfterFlush::default(),
    )
}

/// [`spawn_writer`], telling `after` what each flush wrote.
pub fn spawn_writer_after(
    store: DynStore,
    flush_every: Duration,
    stop: watch::Receiver<bool>,
    after: AfterFlush,
) -> (Recorder, JoinHandle<()>) {
    spawn_writer_with(store, flush_every, stop, Caps::default(), after)
}

/// Size limits of the retained batch (smaller in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub buckets: usize,
    pub refusals: usize,
    pub touches: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            buckets: MAX_BUCKETS,
            refusals: MAX_REFUSALS,
            touches: MAX_TOUCHES,
        }
    }
}

pub(crate) fn spawn_writer_with(
    store: DynStore,
    flush_every: Duration,
    stop: watch::Receiver<bool>,
    caps: Caps,
    after: AfterFlush,
) -> (Recorder, JoinHandle<()>) {
    let (flushes, flush_requests) = mpsc::channel(64);
    let shared = Arc::new(Shared {
        batch: Mutex::new(Batch::new(caps)),
        stopped: AtomicBool::new(false),
        early: Notify::new(),
        dropped: AtomicU64::new(0),
        discarded: AtomicU64::new(0),
        flush_failures: AtomicU64::new(0),
        started: Instant::now(),
        last_warning: AtomicU64::new(0),
    });
    let writer = Writer {
        store,
        shared: shared.clone(),
        flush_every: flush_every.clamp(Duration::from_millis(1), DEFAULT_FLUSH_EVERY),
        retry_not_before: None,
        last_failure_logged: None,
        unsettled: None,
        after,
        flushed: Vec::new(),
    };
    let flush_every = writer.flush_every;
    let handle = tokio::spawn(run(writer, flush_requests, stop, flush_every));
    (Recorder { shared, flushes }, handle)
}

async fn run(
    mut writer: Writer,
    mut flush_requests: mpsc::Receiver<oneshot::Sender<Result<(), FlushError>>>,
    mut stop: watch::Receiver<bool>,
    flush_every: Duration,
) {
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let shared = writer.shared.clone();
    if !*stop.borrow_and_update() {
        loop {
            tokio::select! {
                // Stop and the tick first, so flush requests cannot starve them.
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow_and_update() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let started = Instant::now();
                    let _ = writer.flush().await;
                    // A flush that outlasted the interval (slow or failing store) restarts
                    // the interval from its end, so flushes never run back to back.
                    if started.elapsed() >= flush_every {
                        tick.reset();
                    }
                }
                () = shared.early.notified() => {
                    let backing_off = writer.retry_not_before.is_some_and(|at| Instant::now() < at);
                    if !backing_off {
                        let _ = writer.flush().await;
                    }
                }
                request = flush_requests.recv() => match request {
                    Some(done) => {
                        let result = writer.flush().await;
                        let _ = done.send(result);
                    }
                    None => break,
                },
            }
        }
    }

    // Shutdown: take no more records, answer the flush requests already made with the
    // final flush.
    shared.stopped.store(true, Ordering::Relaxed);
    flush_requests.close();
    let mut waiting = Vec::new();
    while let Some(done) = flush_requests.recv().await {
        waiting.push(done);
    }
    let mut result = writer.flush().await;
    for attempt in 1..FINAL_ATTEMPTS {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        result = writer.flush().await;
    }
    if result.is_err() {
        let unsettled = writer
            .unsettled
            .take()
            .map_or(0, |chunk| chunk.deltas.len());
        let lost = shared.batch().take().len() + unsettled;
        shared.discarded.fetch_add(lost as u64, Ordering::Relaxed);
        tracing::error!(
            lost,
            "final usage flush failed; usage, refusals and key uses not written"
        );
    }
    for done in waiting {
        let _ = done.send(result.clone());
    }
}

struct Writer {
    store: DynStore,
    shared: Arc<Shared>,
    flush_every: Duration,
    /// After a failed flush, early flushes wait for this (the tick still retries).
    retry_not_before: Option<Instant>,
    last_failure_logged: Option<Instant>,
    /// The usage chunk whose store call failed: the store may have committed it anyway.
    /// Retried as it is, under its id, before any newer usage.
    unsettled: Option<Chunk>,
    after: AfterFlush,
    /// The usage this flush wrote, for `after` (kept only when it wants it).
    flushed: Vec<UsageDelta>,
}

/// Usage buckets written in one store call under one batch id.
struct Chunk {
    id: Uuid,
    deltas: Vec<UsageDelta>,
}

impl Writer {
    /// Writes the unsettled chunk, then takes the batch and writes it. Parts the store
    /// accepted are done; the rest is kept (see the module docs) for the next attempt.
    async fn flush(&mut self) -> Result<(), FlushError> {
        let mut first_error = None;
        if let Some(chunk) = &self.unsettled {
            match self.store.add_usage_batch(chunk.id, &chunk.deltas).await {
                Ok(_) => {
                    if let Some(chunk) = self.unsettled.take() {
                        if self.after.wants_deltas() {
                            self.flushed.extend(chunk.deltas);
                        }
                    }
                    self.set_unsettled(None);
                }
                Err(e) => {
                    first_error = Some(e);
                }
            }
        }
        let mut batch = self.shared.batch().take();
        if first_error.is_none() {
            if let Err(e) = self.flush_usage(&mut batch).await {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.flush_refusals(&mut batch).await {
            first_error.get_or_insert(e);
        }
        if let Err(e) = self.flush_touches(&mut batch).await {
            first_error.get_or_insert(e);
        }
        self.tell_after().await;
        let Some(error) = first_error else {
            self.retry_not_before = None;
            return Ok(());
        };
        let (retained, lost) = {
            let mut current = self.shared.batch();
            let lost = current.merge_older(batch);
            (current.len() + current.unsettled, lost)
        };
        self.shared.count_discarded(lost);
        self.shared.flush_failures.fetch_add(1, Ordering::Relaxed);
        self.retry_not_before = Some(Instant::now() + self.flush_every);
        let quiet = self
            .last_failure_logged
            .is_some_and(|at| at.elapsed() < WARN_EVERY);
        if !quiet {
            self.last_failure_logged = Some(Instant::now());
            tracing::error!(
                %error,
                retained,
                "usage flush failed; keeping the batch and retrying"
            );
        }
        Err(FlushError::Failed(error.to_string()))
    }

    /// Writes the batch's usage chunk by chunk; the chunk that fails becomes the
    /// unsettled one, the chunks after it stay in `batch`.
    async fn flush_usage(&mut self, batch: &mut Batch) -> Result<(), crate::store::StoreError> {
        // One order for every writer (key, model, minute), so that instances writing the
        // same buckets at once lock their rows in the same order and cannot deadlock.
        let mut keys: Vec<BucketKey> = batch.usage.keys().cloned().collect();
        keys.sort_unstable();
        for keys in keys.chunks(CHUNK) {
            let deltas: Vec<UsageDelta> =
                keys.iter().filter_map(|k| batch.usage.remove(k)).collect();
            let id = Uuid::now_v7();
            if let Err(e) = self.store.add_usage_batch(id, &deltas).await {
                self.set_unsettled(Some(Chunk { id, deltas }));
                return Err(e);
            }
            if self.after.wants_deltas() {
                self.flushed.extend(deltas);
            }
        }
        Ok(())
    }

    /// Tells `after` what this flush wrote: the ledger after every flush (it also re-reads
    /// the spend other instances wrote), the alert checker when usage was written.
    async fn tell_after(&mut self) {
        let flushed = std::mem::take(&mut self.flushed);
        if let Some(ledger) = &self.after.ledger {
            ledger.after_flush(&flushed).await;
        }
        if let (Some(hook), false) = (&self.after.alerts, flushed.is_empty()) {
            let mut keys: Vec<Uuid> = flushed.iter().map(|d| d.key_id).collect();
            keys.sort_unstable();
            keys.dedup();
            hook(keys);
        }
    }

    /// Sets the unsettled chunk and tells the batch how many buckets it holds (they count
    /// against the cap).
    fn set_unsettled(&mut self, chunk: Option<Chunk>) {
        self.shared.batch().unsettled = chunk.as_ref().map_or(0, |c| c.deltas.len());
        self.unsettled = chunk;
    }

    async fn flush_refusals(&self, batch: &mut Batch) -> Result<(), crate::store::StoreError> {
        while !batch.refusals.is_empty() {
            let n = batch.refusals.len().min(CHUNK);
            self.store
                .add_rate_limit_events(&batch.refusals[..n])
                .await?;
            batch.refusals.drain(..n);
        }
        Ok(())
    }

    async fn flush_touches(&self, batch: &mut Batch) -> Result<(), crate::store::StoreError> {
        let uses: Vec<(Uuid, DateTime<Utc>)> =
            batch.touches.iter().map(|(id, at)| (*id, *at)).collect();
        for chunk in uses.chunks(CHUNK) {
            self.store.touch_keys(chunk).await?;
            for (id, _) in chunk {
                batch.touches.remove(id);
            }
        }
        Ok(())
    }
}
