//! What the usage writer has not written yet: usage summed per key·model·minute as it is
//! recorded, refused requests, and the latest use of each key, each under a cap (see
//! [`Caps`]). Kept apart from the writer task (`writer.rs`) that fills and flushes it.

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use uuid::Uuid;

use super::{writer::Caps, UsageEvent};
use crate::store::{RateLimitEvent, UsageDelta};

pub(super) type BucketKey = (Uuid, String, DateTime<Utc>);

/// What the next flush writes.
pub(crate) struct Batch {
    caps: Caps,
    pub(super) usage: HashMap<BucketKey, UsageDelta>,
    pub(super) refusals: Vec<RateLimitEvent>,
    pub(super) touches: HashMap<Uuid, DateTime<Utc>>,
    /// Buckets in the writer's unsettled chunk, counted against `caps.buckets`.
    pub(super) unsettled: usize,
    /// When the oldest record in here arrived (`/metrics`' flush lag).
    pub(super) pending_since: Option<std::time::Instant>,
}

impl Batch {
    pub(super) fn new(caps: Caps) -> Self {
        Batch {
            caps,
            usage: HashMap::new(),
            refusals: Vec::new(),
            touches: HashMap::new(),
            unsettled: 0,
            pending_since: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.usage.len() + self.refusals.len() + self.touches.len()
    }

    /// The batch so far, leaving an empty one (with the same caps) in its place.
    pub(super) fn take(&mut self) -> Batch {
        let mut empty = Batch::new(self.caps);
        empty.unsettled = self.unsettled;
        std::mem::replace(self, empty)
    }

    pub(super) fn add_refusal(&mut self, event: RateLimitEvent) -> bool {
        let room = self.refusals.len() < self.caps.refusals;
        if room {
            self.refusals.push(event);
        }
        room
    }

    pub(super) fn add_touch(&mut self, key_id: Uuid, at: DateTime<Utc>) -> bool {
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

    /// Puts back an older batch that failed to flush, under the caps; returns how many
    /// records did not fit.
    pub(super) fn merge_older(&mut self, older: Batch) -> u64 {
        let mut lost = 0;
        self.pending_since = match (older.pending_since, self.pending_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (_, delta) in older.usage {
            let event = UsageEvent {
                key_id: delta.key_id,
                workspace_id: delta.workspace_id,
                model: delta.model,
                at: delta.minute,
                requests: delta.requests,
                input_tokens: delta.input_tokens,
                output_tokens: delta.output_tokens,
                cost_pico: delta.cost_pico,
            };
            lost += u64::from(!self.add_usage(event));
        }
        // Older refusals first, as they happened.
        let newer = std::mem::take(&mut self.refusals);
        for event in older.refusals.into_iter().chain(newer) {
            lost += u64::from(!self.add_refusal(event));
        }
        for (key_id, at) in older.touches {
            lost += u64::from(!self.add_touch(key_id, at));
        }
        lost
    }

    /// Sums the event into its key·model·minute bucket. False when a new bucket would pass
    /// the cap (existing buckets always take more).
    pub(super) fn add_usage(&mut self, event: UsageEvent) -> bool {
        let minute = minute_of(event.at);
        let key = (event.key_id, event.model, minute);
        if let Some(delta) = self.usage.get_mut(&key) {
            delta.requests = delta.requests.saturating_add(event.requests);
            delta.input_tokens = delta.input_tokens.saturating_add(event.input_tokens);
            delta.output_tokens = delta.output_tokens.saturating_add(event.output_tokens);
            delta.cost_pico = delta.cost_pico.saturating_add(event.cost_pico);
            return true;
        }
        if self.usage.len() + self.unsettled >= self.caps.buckets {
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
