//! Verified keys, indexed by the SHA-256 digest of the presented secret and held in memory
//! only (DESIGN §8). argon2 runs once per key per instance; after `ttl` an entry is
//! re-read from the store by lookup id (one indexed read, no argon2). Changes made on this
//! instance mark the key's entries stale at once; on PostgreSQL, changes made on any
//! instance do too, as soon as its notice arrives (`crate::key_changes`), and `ttl` is the
//! safety net for a notice that never came.
//!
//! A changed key is marked stale rather than removed: its next use re-reads the row, which
//! refuses a revoked key, applies new limits and refuses a rotated-away secret (its row is
//! gone or past its grace period) just as a removal would, without a new argon2 run for a
//! key whose secret did not change. That matters most for [`KeyCache::mark_all_stale`]
//! after a lost notice: removing 10 000 keys would cost 10 000 argon2 runs.
//!
//! The index is the digest of the whole secret, never the lookup id alone: a hit must
//! prove possession of the secret, or anyone knowing a public lookup id would get in.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use foldhash::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::ApiKey;

#[derive(Debug, Clone)]
pub struct CachedKey {
    pub key: Arc<ApiKey>,
    pub lookup_id: String,
    /// The PHC hash that was verified; a refresh that finds another hash re-verifies.
    pub hash: String,
    /// End of a rotation's grace period for this secret, if any.
    pub secret_valid_until: Option<DateTime<Utc>>,
    pub refreshed_at: Instant,
}

/// Cache size bound: beyond it, the stalest entries are dropped (they re-verify on next use).
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone)]
pub struct KeyCache {
    entries: Arc<RwLock<HashMap<[u8; 32], CachedKey>>>,
    ttl: Duration,
    counts: Arc<Counts>,
}

/// Lookups answered from memory (`Fresh`) and not (`Stale` or `Miss`), for `/metrics`.
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the cache has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered without a store read.
    pub hits: u64,
    /// Lookups that read the store: not cached, or older than the TTL.
    pub misses: u64,
    pub entries: u64,
}

pub enum Lookup {
    /// Verified within the TTL: trust it without I/O. Only what the hot path needs is
    /// copied out of the map.
    Fresh {
        key: Arc<ApiKey>,
        secret_valid_until: Option<DateTime<Utc>>,
    },
    /// Known but older than the TTL: re-read the row before trusting it.
    Stale(CachedKey),
    Miss,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            entries: Arc::default(),
            ttl,
            counts: Arc::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
            entries: self.len() as u64,
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Lookup {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match entries.get(digest) {
            Some(entry) if entry.refreshed_at.elapsed() < self.ttl => Lookup::Fresh {
                key: entry.key.clone(),
                secret_valid_until: entry.secret_valid_until,
            },
            Some(entry) => Lookup::Stale(entry.clone()),
            None => Lookup::Miss,
        }
    }

    /// [`KeyCache::get`] for a presented key, counted as a hit or a miss ([`CacheStats`]);
    /// the re-checks of the slow path use `get`, so each presentation counts once.
    pub fn lookup(&self, digest: &[u8; 32]) -> Lookup {
        let lookup = self.get(digest);
        let count = match lookup {
            Lookup::Fresh { .. } => &self.counts.hits,
            Lookup::Stale(_) | Lookup::Miss => &self.counts.misses,
        };
        count.fetch_add(1, Ordering::Relaxed);
        lookup
    }

    pub fn insert(&self, digest: [u8; 32], entry: CachedKey) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, e| e.refreshed_at.elapsed() < ttl);
        }
        entries.insert(digest, entry);
    }

    pub fn remove(&self, digest: &[u8; 32]) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.remove(digest);
    }

    /// Makes every entry of `key_id` re-read the store on its next use.
    pub fn mark_stale(&self, key_id: Uuid) {
        self.mark_stale_where(|cached| cached.key.id == key_id);
    }

    /// Makes every entry re-read the store on its next use (changes may have been missed).
    pub fn mark_all_stale(&self) {
        self.mark_stale_where(|_| true);
    }

    /// Backdates the entries `matches` picks so their next use re-reads the store (without
    /// a new argon2 run); drops them where [`KeyCache::long_ago`] cannot backdate.
    fn mark_stale_where(&self, matches: impl Fn(&CachedKey) -> bool) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.long_ago() {
            Some(long_ago) => {
                for entry in entries.values_mut().filter(|e| matches(e)) {
                    entry.refreshed_at = long_ago;
                }
            }
            None => entries.retain(|_, e| !matches(e)),
        }
    }

    /// A refresh time that reads as stale: one TTL ago. `None` when the monotonic clock
    /// does not reach that far back (a TTL longer than the uptime); the caller removes the
    /// entries instead, so they are never trusted unread.
    fn long_ago(&self) -> Option<Instant> {
        Instant::now().checked_sub(self.ttl)
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
