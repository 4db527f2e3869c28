//! The usage writer: requests hand their [`UsageEvent`]s, refusals and key uses to a
//! cloneable [`Recorder`] (a bounded channel, never blocking the request), and one owned
//! task aggregates them per key·model·minute and writes them to the store at least every
//! `flush_every` (≤ 1 s, DESIGN §7) and once more when told to stop (STYLE rule 15).
//!
//! Losses are bounded and counted, never silent:
//! - a full (or closed) channel drops the message: [`Recorder::dropped`], warned at most
//!   every 10 s;
//! - a failed flush keeps the batch and retries at the next tick (each store call is one
//!   transaction, so a failed call wrote nothing and retrying cannot double count). While
//!   the store stays down the batch may grow to [`MAX_BUCKETS`] usage buckets,
//!   [`MAX_REFUSALS`] refusals and [`MAX_TOUCHES`] keys; what arrives beyond that is
//!   discarded and counted in [`Recorder::discarded`].

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use uuid::Uuid;

use super::UsageEvent;
use crate::store::{DynStore, RateLimitEvent, UsageDelta};

/// DESIGN §7: usage reaches the store at least every second.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Messages the channel holds before `record` starts dropping (one flush interval of a
/// busy instance, with room to spare while the store is slow).
pub const CHANNEL_CAPACITY: usize = 65_536;
/// Usage buckets (key·model·minute) kept while the store refuses writes.
pub const MAX_BUCKETS: usize = 100_000;
/// Refusals kept while the store refuses writes.
pub const MAX_REFUSALS: usize = 100_000;
/// Keys whose `last_used_at` is kept while the store refuses writes.
pub const MAX_TOUCHES: usize = 100_000;
/// Rows per store call, so one flush never becomes one huge transaction.
const CHUNK: usize = 1_000;
/// Batch size that triggers a flush before the tick (a burst of refusals, many keys).
const EARLY_FLUSH: usize = 10_000;
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Attempts of the final flush on shutdown before the batch is given up (and logged).
const FINAL_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The writer task has ended (stop signal or every recorder gone).
    #[error("the usage writer has stopped")]
    Stopped,
    /// The store refused the batch; it is kept and retried at the next tick.
    #[error("usage flush failed: {0}")]
    Failed(String),
}

enum Message {
    Usage(UsageEvent),
    Refusal(RateLimitEvent),
    Touch(Uuid, DateTime<Utc>),
    Flush(oneshot::Sender<Result<(), FlushError>>),
}

/// Counters shared by every recorder clone and the writer.
struct Shared {
    dropped: AtomicU64,
    discarded: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` + 1 of the last drop warning; 0 = never warned.
    last_drop_warning: AtomicU64,
}

impl Shared {
    /// True at most once per `WARN_EVERY` across all threads.
    fn should_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        due && self
            .last_drop_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Hands usage to the writer task. Cheap to clone; every method but `flush_now` returns
/// at once and never waits for the store.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
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
    /// Queues one request's usage.
    pub fn record(&self, event: UsageEvent) {
        self.send(Message::Usage(event), "usage");
    }

    /// Queues one refused request (DESIGN §3 rate-limit event).
    pub fn refusal(&self, event: RateLimitEvent) {
        self.send(Message::Refusal(event), "refusal");
    }

    /// Notes that the key was used at `at`; the writer keeps the latest per key and
    /// raises `last_used_at` once per flush.
    pub fn touch(&self, key_id: Uuid, at: DateTime<Utc>) {
        self.send(Message::Touch(key_id, at), "touch");
    }

    /// Messages lost because the channel was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Buckets, refusals and touches thrown away because the store stayed down until the
    /// retained batch reached its cap, or refused the final flush.
    pub fn discarded(&self) -> u64 {
        self.shared.discarded.load(Ordering::Relaxed)
    }

    /// Asks the writer to flush now and resolves when the flush is done. Everything this
    /// recorder (or any clone, in happens-before order) queued earlier is included. Waits
    /// for channel capacity rather than dropping the request.
    pub fn flush_now(&self) -> impl Future<Output = Result<(), FlushError>> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            let (done_tx, done_rx) = oneshot::channel();
            tx.send(Message::Flush(done_tx))
                .await
                .map_err(|_| FlushError::Stopped)?;
            done_rx.await.map_err(|_| FlushError::Stopped)?
        }
    }

    fn send(&self, message: Message, what: &'static str) {
        let reason = match self.tx.try_send(message) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "channel full",
            Err(mpsc::error::TrySendError::Closed(_)) => "writer stopped",
        };
        let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.shared.should_warn() {
            tracing::warn!(
                what,
                reason,
                dropped_total = total,
                "usage recorder is dropping messages"
            );
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
    spawn_writer_with(store, flush_every, stop, Caps::default())
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
) -> (Recorder, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let shared = Arc::new(Shared {
        dropped: AtomicU64::new(0),
        discarded: AtomicU64::new(0),
        started: Instant::now(),
        last_drop_warning: AtomicU64::new(0),
    });
    let writer = Writer {
        store,
        batch: Batch::new(caps),
        shared: shared.clone(),
        flush_every: flush_every.clamp(Duration::from_millis(1), DEFAULT_FLUSH_EVERY),
        retry_not_before: None,
        last_failure_logged: None,
    };
    let flush_every = writer.flush_every;
    let handle = tokio::spawn(run(writer, rx, stop, flush_every));
    (Recorder { tx, shared }, handle)
}

async fn run(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Message>,
    mut stop: watch::Receiver<bool>,
    flush_every: Duration,
) {
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    if !*stop.borrow_and_update() {
        loop {
            tokio::select! {
                // Stop and the tick first, so a flood of messages cannot starve them.
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
                    // the interval from its end, so the loop never degenerates into
                    // back-to-back flushes that stop reading the channel.
                    if started.elapsed() >= flush_every {
                        tick.reset();
                    }
                }
                message = rx.recv() => match message {
                    Some(message) => writer.handle(message).await,
                    None => break,
                },
            }
        }
    }

    // Shutdown: refuse new messages, take everything already queued, flush once more.
    rx.close();
    let mut waiting = Vec::new();
    while let Some(message) = rx.recv().await {
        match message {
            Message::Flush(done) => waiting.push(done),
            other => writer.batch.add(other, &writer.shared),
        }
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
        let lost = writer.batch.len();
        writer
            .shared
            .discarded
            .fetch_add(lost as u64, Ordering::Relaxed);
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
    batch: Batch,
    shared: Arc<Shared>,
    flush_every: Duration,
    /// After a failed flush, early flushes wait for this (the tick still retries).
    retry_not_before: Option<Instant>,
    last_failure_logged: Option<Instant>,
}

impl Writer {
    async fn handle(&mut self, message: Message) {
        match message {
            Message::Flush(done) => {
                let result = self.flush().await;
                let _ = done.send(result);
            }
            other => {
                self.batch.add(other, &self.shared);
                let backing_off = self.retry_not_before.is_some_and(|at| Instant::now() < at);
                if self.batch.len() >= EARLY_FLUSH && !backing_off {
                    let _ = self.flush().await;
                }
            }
        }
    }

    /// Writes the batch. Parts the store accepted leave the batch; the rest stays for the
    /// next attempt.
    async fn flush(&mut self) -> Result<(), FlushError> {
        let mut first_error = None;
        if let Err(e) = self.flush_usage().await {
            first_error.get_or_insert(e);
        }
        if let Err(e) = self.flush_refusals().await {
            first_error.get_or_insert(e);
        }
        if let Err(e) = self.flush_touches().await {
            first_error.get_or_insert(e);
        }
        match first_error {
            None => {
                self.retry_not_before = None;
                Ok(())
            }
            Some(error) => {
                self.retry_not_before = Some(Instant::now() + self.flush_every);
                let quiet = self
                    .last_failure_logged
                    .is_some_and(|at| at.elapsed() < WARN_EVERY);
                if !quiet {
                    self.last_failure_logged = Some(Instant::now());
                    tracing::error!(
                        %error,
                        retained = self.batch.len(),
                        "usage flush failed; keeping the batch and retrying"
                    );
                }
                Err(FlushError::Failed(error.to_string()))
            }
        }
    }

    async fn flush_usage(&mut self) -> Result<(), crate::store::StoreError> {
        while !self.batch.usage.is_empty() {
            let keys: Vec<BucketKey> = self.batch.usage.keys().take(CHUNK).cloned().collect();
            let deltas: Vec<UsageDelta> = keys
                .iter()
                .filter_map(|k| self.batch.usage.get(k).cloned())
                .collect();
            self.store.add_usage(&deltas).await?;
            for key in &keys {
                self.batch.usage.remove(key);
            }
        }
        Ok(())
    }

    async fn flush_refusals(&mut self) -> Result<(), crate::store::StoreError> {
        while !self.batch.refusals.is_empty() {
            let n = self.batch.refusals.len().min(CHUNK);
            self.store
                .add_rate_limit_events(&self.batch.refusals[..n])
                .await?;
            self.batch.refusals.drain(..n);
        }
        Ok(())
    }

    async fn flush_touches(&mut self) -> Result<(), crate::store::StoreError> {
        if self.batch.touches.is_empty() {
            return Ok(());
        }
        let uses: Vec<(Uuid, DateTime<Utc>)> = self
            .batch
            .touches
            .iter()
            .map(|(id, at)| (*id, *at))
            .collect();
        for chunk in uses.chunks(CHUNK) {
            self.store.touch_keys(chunk).await?;
            for (id, at) in chunk {
                // A newer use may not have arrived meanwhile (the writer is single-task),
                // but keep the check so a later refactor cannot lose one.
                if self.batch.touches.get(id) == Some(at) {
                    self.batch.touches.remove(id);
                }
            }
        }
        Ok(())
    }
}

type BucketKey = (Uuid, String, DateTime<Utc>);

/// What the next flush writes.
pub(crate) struct Batch {
    caps: Caps,
    usage: HashMap<BucketKey, UsageDelta>,
    refusals: Vec<RateLimitEvent>,
    touches: HashMap<Uuid, DateTime<Utc>>,
}

impl Batch {
    fn new(caps: Caps) -> Self {
        Batch {
            caps,
            usage: HashMap::new(),
            refusals: Vec::new(),
            touches: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.usage.len() + self.refusals.len() + self.touches.len()
    }

    fn add(&mut self, message: Message, shared: &Shared) {
        let kept = match message {
            Message::Usage(event) => self.add_usage(event),
            Message::Refusal(event) => {
                let room = self.refusals.len() < self.caps.refusals;
                if room {
                    self.refusals.push(event);
                }
                room
            }
            Message::Touch(key_id, at) => {
                if let Some(latest) = self.touches.get_mut(&key_id) {
                    *latest = (*latest).max(at);
                    true
                } else if self.touches.len() < self.caps.touches {
                    self.touches.insert(key_id, at);
                    true
                } else {
                    false
                }
            }
            Message::Flush(_) => true,
        };
        if !kept {
            let total = shared.discarded.fetch_add(1, Ordering::Relaxed) + 1;
            if shared.should_warn() {
                tracing::error!(
                    discarded_total = total,
                    "usage batch is full (the store is refusing writes); discarding"
                );
            }
        }
    }

    /// Sums the event into its key·model·minute bucket. False when a new bucket would pass
    /// the cap (existing buckets always take more).
    fn add_usage(&mut self, event: UsageEvent) -> bool {
        let minute = minute_of(event.at);
        let key = (event.key_id, event.model, minute);
        if let Some(delta) = self.usage.get_mut(&key) {
            delta.requests = delta.requests.saturating_add(event.requests);
            delta.input_tokens = delta.input_tokens.saturating_add(event.input_tokens);
            delta.output_tokens = delta.output_tokens.saturating_add(event.output_tokens);
            delta.cost_pico = delta.cost_pico.saturating_add(event.cost_pico);
            return true;
        }
        if self.usage.len() >= self.caps.buckets {
            return false;
        }
        let delta = UsageDelta {
            key_id: event.key_id,
            workspace_id: event.workspace_id,
            model: key.1.clone(),
            minute,
            requests: event.requests,
            input_tokens: event.input_tokens,
            output_tokens: event.output_tokens,
            cost_pico: event.cost_pico,
        };
        self.usage.insert(key, delta);
        true
    }
}

/// `at` truncated to the start of its UTC minute.
pub(crate) fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let seconds = at.timestamp().div_euclid(60) * 60;
    DateTime::from_timestamp(seconds, 0).unwrap_or(at)
}
