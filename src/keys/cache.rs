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
//!
//! Keys in use (looked up within the last [`IN_USE_TTLS`] TTLs) are checked ahead of their
//! expiry, all together in one store read of their versions ([`KeyCache::due_for_refresh`],
//! `KeysService::refresh_ahead`), so their requests never wait on one: with a re-read on
//! the request path, 10 000 keys in use and a TTL of a second cost 10 000 store reads a
//! second, each taking the map's write lock (docs/performance.md, "100 000 keys").

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
use crate::store::SecretVersion;

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

/// A key looked up within this many TTLs is in use: it is checked ahead of its expiry.
/// Four, so that a key used less often than once a TTL (10 000 keys shared by a few
/// thousand requests a second, at a TTL of one second) stays fresh too, while one used
/// once and not again is checked for only a few TTLs.
pub const IN_USE_TTLS: u32 = 4;

/// How long checks may renew an entry without its whole row being read again. A change
/// made past keygate (SQL that moves neither `updated_at` nor `revoked_at`) is invisible
/// to the checks; this bounds how long a key in steady use can miss one, at the cost of a
/// store read on a request's path per key in use every five minutes.
const READ_AGAIN_AFTER: Duration = Duration::from_secs(300);

/// A cached key, when it was last looked up (milliseconds since the cache's epoch), and
/// when its row was last read whole.
struct Slot {
    entry: CachedKey,
    last_used_ms: AtomicU64,
    read_at: Instant,
}

/// An entry to check ahead of its expiry ([`KeyCache::due_for_refresh`]).
#[derive(Debug, Clone)]
pub struct Due {
    pub digest: [u8; 32],
    pub lookup_id: String,
    /// The entry's refresh time when it was taken: a renewal applies only if it is unchanged.
    pub refreshed_at: Instant,
}

impl CachedKey {
    /// Whether `version` (the store's) says this entry is still what the store holds: same
    /// secret hash and end of validity, and the key neither updated nor revoked since.
    pub fn matches(&self, version: &SecretVersion) -> bool {
        version.hash == self.hash
            && version.valid_until == self.secret_valid_until
            && version.key_updated_at == self.key.updated_at
            && version.key_revoked_at == self.key.revoked_at
    }
}

/// Cache size bound: beyond it, the stalest entries are dropped (they re-verify on next use).
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone)]
pub struct KeyCache {
    entries: Arc<RwLock<HashMap<[u8; 32], Slot>>>,
    ttl: Duration,
    /// The origin of [`Slot::last_used_ms`].
    epoch: Instant,
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
            epoch: Instant::now(),
            counts: Arc::default(),
        }
    }

    /// How long a verified key is trusted before its row is read again.
    pub fn ttl(&self) -> Duration {
        self.ttl
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
        let Some(slot) = entries.get(digest) else {
            return Lookup::Miss;
        };
        let now = Instant::now();
        let now_ms = self.millis(now);
        // Read before written: a key used many times a millisecond writes once.
        if slot.last_used_ms.load(Ordering::Relaxed) != now_ms {
            slot.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
        let entry = &slot.entry;
        if now.saturating_duration_since(entry.refreshed_at) < self.ttl {
            Lookup::Fresh {
                key: entry.key.clone(),
                secret_valid_until: entry.secret_valid_until,
            }
        } else {
            Lookup::Stale(entry.clone())
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
            entries.retain(|_, slot| slot.entry.refreshed_at.elapsed() < ttl);
        }
        let now = Instant::now();
        entries.insert(
            digest,
            Slot {
                entry,
                last_used_ms: AtomicU64::new(self.millis(now)),
                read_at: now,
            },
        );
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The entries in use (looked up within the last [`IN_USE_TTLS`] TTLs) that are at
    /// least half a TTL old: to be checked together before they expire. A key no longer in
    /// use is left to expire, and its next use, if any, reads the store.
    pub fn due_for_refresh(&self) -> Vec<Due> {
        let now = Instant::now();
        let half_ttl = self.ttl / 2;
        let in_use = self.ttl.checked_mul(IN_USE_TTLS).unwrap_or(Duration::MAX);
        let in_use_ms = u64::try_from(in_use.as_millis()).unwrap_or(u64::MAX);
        let now_ms = self.millis(now);
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .iter()
            .filter(|(_, slot)| {
                now.saturating_duration_since(slot.entry.refreshed_at) >= half_ttl
                    && now_ms.saturating_sub(slot.last_used_ms.load(Ordering::Relaxed)) <= in_use_ms
            })
            .map(|(digest, slot)| Due {
                digest: *digest,
                lookup_id: slot.entry.lookup_id.clone(),
                refreshed_at: slot.entry.refreshed_at,
            })
            .collect()
    }

    /// Renews for another TTL, from `read_at`, the entries of `due` that `versions` (the
    /// store's word, read at `read_at` or later) shows unchanged, except where the entry
    /// changed since `due` was taken (marked stale by a change notice, re-read on a
    /// request's path, or removed): the read may predate that change, and the newer word
    /// wins. Returns how many were renewed.
    pub fn renew_unchanged(
        &self,
        due: &[Due],
        versions: &HashMap<String, SecretVersion>,
        read_at: Instant,
    ) -> usize {
        let mut renewed = 0;
        // A few hundred at a time, so that lookups wait on the write lock only briefly.
        for chunk in due.chunks(256) {
            let mut entries = self
                .entries
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for due in chunk {
                let Some(slot) = entries.get_mut(&due.digest) else {
                    continue;
                };
                let current = versions
                    .get(&slot.entry.lookup_id)
                    .is_some_and(|version| slot.entry.matches(version));
                let read_lately = slot.read_at.elapsed() < READ_AGAIN_AFTER;
                if slot.entry.refreshed_at == due.refreshed_at && current && read_lately {
                    slot.entry.refreshed_at = read_at;
                    renewed += 1;
                }
            }
        }
        renewed
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
        let matches = |slot: &Slot| matches(&slot.entry);
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.long_ago() {
            Some(long_ago) => {
                for slot in entries.values_mut().filter(|slot| matches(slot)) {
                    slot.entry.refreshed_at = long_ago;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(name: &str, refreshed_at: Instant) -> CachedKey {
        let key = ApiKey::for_tests(Uuid::now_v7(), name);
        CachedKey {
            key: Arc::new(key),
            lookup_id: format!("lookup-{name}"),
            hash: format!("hash-{name}"),
            secret_valid_until: None,
            refreshed_at,
        }
    }

    /// The store's word on `entry`, with `change` applied.
    fn version_of(entry: &CachedKey, change: impl FnOnce(&mut SecretVersion)) -> SecretVersion {
        let mut version = SecretVersion {
            lookup_id: entry.lookup_id.clone(),
            hash: entry.hash.clone(),
            valid_until: entry.secret_valid_until,
            key_updated_at: entry.key.updated_at,
            key_revoked_at: entry.key.revoked_at,
        };
        change(&mut version);
        version
    }

    fn age_of(cache: &KeyCache, digest: &[u8; 32]) -> Option<Duration> {
        let entries = cache.entries.read().unwrap();
        entries
            .get(digest)
            .map(|slot| slot.entry.refreshed_at.elapsed())
    }

    fn names(cache: &KeyCache, due: &[Due]) -> Vec<String> {
        let entries = cache.entries.read().unwrap();
        let mut names: Vec<_> = due
            .iter()
            .map(|d| entries[&d.digest].entry.key.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_keys_in_use_and_half_a_ttl_old_are_due() {
        // Arrange: a TTL of 10 s (in use: looked up within 40 s), on a cache 100 s old.
        // "old" and "idle" were read 6 s ago, "young" just now; "idle" was last looked up
        // 50 s ago.
        let mut cache = KeyCache::new(Duration::from_secs(10));
        cache.epoch = Instant::now() - Duration::from_secs(100);
        let six_s_ago = Instant::now() - Duration::from_secs(6);
        let (old, idle, young) = ([1; 32], [2; 32], [3; 32]);
        cache.insert(old, cached("old", six_s_ago));
        cache.insert(idle, cached("idle", six_s_ago));
        cache.insert(young, cached("young", Instant::now()));
        let fifty_s_ago = cache.millis(Instant::now()) - 50_000;
        cache.entries.read().unwrap()[&idle]
            .last_used_ms
            .store(fifty_s_ago, Ordering::Relaxed);

        // Act
        let due = cache.due_for_refresh();

        // Assert: only "old"; it stays due until it is renewed, and "idle" becomes due
        // again once it is looked up.
        assert_eq!(names(&cache, &due), ["old"]);
        assert_eq!(names(&cache, &cache.due_for_refresh()), ["old"]);
        cache.lookup(&idle);
        assert_eq!(names(&cache, &cache.due_for_refresh()), ["idle", "old"]);
    }

    #[test]
    fn only_keys_the_store_shows_unchanged_are_renewed() {
        // Arrange: five keys due; the store's word on each.
        let cache = KeyCache::new(Duration::from_secs(10));
        let six_s_ago = Instant::now() - Duration::from_secs(6);
        let names = ["same", "updated", "revoked", "rotated", "gone"];
        let digests: Vec<[u8; 32]> = (0..names.len() as u8).map(|n| [n; 32]).collect();
        let mut versions = HashMap::default();
        for (digest, name) in digests.iter().zip(names) {
            let entry = cached(name, six_s_ago);
            let later = entry.key.updated_at + chrono::TimeDelta::seconds(1);
            let version = version_of(&entry, |v| match name {
                "updated" => v.key_updated_at = later,
                "revoked" => v.key_revoked_at = Some(later),
                "rotated" => v.valid_until = Some(later),
                _ => {}
            });
            if name != "gone" {
                versions.insert(version.lookup_id.clone(), version);
            }
            cache.insert(*digest, entry);
        }
        let due = cache.due_for_refresh();
        assert_eq!(due.len(), 5);

        // Act
        let renewed = cache.renew_unchanged(&due, &versions, Instant::now());

        // Assert: only "same" is fresh again; the others expire and their next use reads
        // the store.
        assert_eq!(renewed, 1);
        assert!(age_of(&cache, &digests[0]).unwrap() < Duration::from_secs(1));
        for digest in &digests[1..] {
            assert!(age_of(&cache, digest).unwrap() >= Duration::from_secs(6));
        }
    }

    #[test]
    fn an_entry_is_read_whole_again_after_five_minutes_of_checks() {
        // Arrange: an entry due for a check, unchanged in the store, whose row was read
        // whole more than five minutes ago.
        let cache = KeyCache::new(Duration::from_secs(10));
        let digest = [9; 32];
        let entry = cached("long renewed", Instant::now() - Duration::from_secs(6));
        let version = version_of(&entry, |_| {});
        let versions = HashMap::from_iter([(version.lookup_id.clone(), version)]);
        cache.insert(digest, entry);
        cache
            .entries
            .write()
            .unwrap()
            .get_mut(&digest)
            .unwrap()
            .read_at = Instant::now() - READ_AGAIN_AFTER;

        // Act
        let due = cache.due_for_refresh();
        let renewed = cache.renew_unchanged(&due, &versions, Instant::now());

        // Assert: not renewed; it expires and its next use reads the row.
        assert_eq!((due.len(), renewed), (1, 0));
    }

    #[test]
    fn a_check_never_overwrites_a_newer_change() {
        // Arrange: two keys due for a check, both unchanged in the store.
        let cache = KeyCache::new(Duration::from_secs(10));
        let six_s_ago = Instant::now() - Duration::from_secs(6);
        let (kept, changed, gone) = ([1; 32], [2; 32], [3; 32]);
        let mut versions = HashMap::default();
        let mut changed_id = None;
        for (digest, name) in [(kept, "kept"), (changed, "changed"), (gone, "gone")] {
            let entry = cached(name, six_s_ago);
            if name == "changed" {
                changed_id = Some(entry.key.id);
            }
            let version = version_of(&entry, |_| {});
            versions.insert(version.lookup_id.clone(), version);
            cache.insert(digest, entry);
        }
        let due = cache.due_for_refresh();
        assert_eq!(due.len(), 3);

        // Act: while the check's read is out, a change notice marks "changed" stale and
        // "gone" is removed; then the read (which may predate the change) comes back.
        cache.mark_stale(changed_id.unwrap());
        cache.remove(&gone);
        let renewed = cache.renew_unchanged(&due, &versions, Instant::now());

        // Assert: the untouched entry is renewed; the changed one stays stale, so its next
        // use reads the store; the removed one is not brought back.
        assert_eq!(renewed, 1);
        assert!(matches!(cache.get(&kept), Lookup::Fresh { .. }));
        assert!(matches!(cache.get(&changed), Lookup::Stale(_)));
        assert!(matches!(cache.get(&gone), Lookup::Miss));
    }
}
