//! Authentication of presented keys: shape and checksum first (no I/O), then the digest
//! cache, then the store and argon2 once per key per instance (DESIGN §8). Part of
//! `KeysService`; the management operations live in `service.rs`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use chrono::{DateTime, Utc};

use super::{
    cache::{CachedKey, Lookup},
    guard::FailedAuthGuard,
    model::ApiKey,
    service::KeysService,
    token::{self, Token},
    AuthError,
};
use crate::store::SecretVersion;

/// One verification (or re-read) per presented secret at a time. Without it, a client
/// opening 32 connections with a key this instance has not seen yet runs 32 argon2
/// hashes at once (seconds of CPU, ~7 MiB each) where one suffices: the others wait for
/// it and then find the key in the cache. Keyed by the secret's digest, like the cache.
#[derive(Default)]
pub(super) struct InFlight {
    turns: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl InFlight {
    fn turn_for(&self, digest: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(digest).or_default().clone()
    }

    /// Forgets the digest's turn once nobody holds or waits for it.
    fn release(&self, digest: &[u8; 32]) {
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        // One reference is the map's own, one the caller's.
        if turns
            .get(digest)
            .is_some_and(|turn| Arc::strong_count(turn) <= 2)
        {
            turns.remove(digest);
        }
    }
}

/// Releases a digest's turn however the verification ends (a cancelled request too).
struct TurnGuard<'a> {
    in_flight: &'a InFlight,
    digest: [u8; 32],
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.release(&self.digest);
    }
}
impl KeysService {
    /// Authenticates a presented key string: shape and checksum first (no I/O), then the
    /// digest cache, then the store and argon2 once. Returns keys of either kind; the
    /// caller decides whether the kind fits the route. No failed-attempt guard: see
    /// [`Self::authenticate_from`] for keys presented by a client.
    pub async fn authenticate(&self, presented: &str) -> Result<Arc<ApiKey>, AuthError> {
        self.authenticate_from(presented, None).await
    }

    /// [`Self::authenticate`] for a key presented from `client`'s address, under its
    /// failed-attempt guard. The guard sees only what would cost a store read or an argon2
    /// run: a key this instance has verified before (a digest-cache hit, fresh or due for a
    /// re-read) is never refused or counted, nor is a malformed one (see `super::guard`).
    pub async fn authenticate_from(
        &self,
        presented: &str,
        client: Option<(IpAddr, &FailedAuthGuard)>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        let checked = Token::check(presented)?;
        let digest = token::digest(checked);
        let (key, secret_valid_until) = match self.cache.lookup(&digest) {
            Lookup::Fresh {
                key,
                secret_valid_until,
            } => (key, secret_valid_until),
            Lookup::Stale(_) => {
                let token = Token::parse(checked)?;
                self.verify_once(&token, digest).await?
            }
            Lookup::Miss => return self.authenticate_unseen(checked, digest, client).await,
        };
        check_usable(&key, secret_valid_until, Utc::now())?;
        Ok(key)
    }

    /// A key this instance has not verified: refused unread while `client`'s address is
    /// blocked, and a failure counts against the address.
    async fn authenticate_unseen(
        &self,
        checked: &str,
        digest: [u8; 32],
        client: Option<(IpAddr, &FailedAuthGuard)>,
    ) -> Result<Arc<ApiKey>, AuthError> {
        if let Some(retry_after) = client.and_then(|(ip, guard)| guard.blocked_for(ip)) {
            return Err(AuthError::TooManyAttempts { retry_after });
        }
        let outcome = async {
            let token = Token::parse(checked)?;
            let (key, secret_valid_until) = self.verify_once(&token, digest).await?;
            check_usable(&key, secret_valid_until, Utc::now())?;
            Ok(key)
        }
        .await;
        match outcome {
            // A store or hashing failure says nothing about the key.
            Err(err) if !matches!(err, AuthError::Store(_) | AuthError::Hash(_)) => {
                match client.and_then(|(ip, guard)| guard.record_failure(ip)) {
                    Some(retry_after) => Err(AuthError::TooManyAttempts { retry_after }),
                    None => Err(err),
                }
            }
            outcome => outcome,
        }
    }

    /// The slow path, one caller per digest at a time (see [`InFlight`]); whoever waited
    /// finds the cache filled by the caller before it.
    async fn verify_once(
        &self,
        token: &Token,
        digest: [u8; 32],
    ) -> Result<(Arc<ApiKey>, Option<DateTime<Utc>>), AuthError> {
        let turn = self.in_flight.turn_for(digest);
        // Dropped before `turn` (reverse order), so `release` sees the map's reference
        // and this caller's, plus one per waiter.
        let _release = TurnGuard {
            in_flight: &self.in_flight,
            digest,
        };
        let _my_turn = turn.lock().await;
        let entry = match self.cache.get(&digest) {
            Lookup::Fresh {
                key,
                secret_valid_until,
            } => return Ok((key, secret_valid_until)),
            Lookup::Stale(entry) => match self.refresh(digest, entry.clone()).await {
                Ok(Some(entry)) => entry,
                Ok(None) => self.verify(token, digest).await?,
                // The store cannot say whether the key changed: keep trusting what it said
                // last, for another TTL (docs/decisions.md, "Store outages").
                Err(AuthError::Store(err)) if err.is_unavailable() => {
                    tracing::debug!(error = %err, key_id = %entry.key.id, "store unavailable; serving the cached key");
                    let entry = CachedKey {
                        refreshed_at: Instant::now(),
                        ..entry
                    };
                    self.cache.insert(digest, entry.clone());
                    entry
                }
                Err(err) => return Err(err),
            },
            Lookup::Miss => self.verify(token, digest).await?,
        };
        Ok((entry.key, entry.secret_valid_until))
    }

    /// Re-reads a cached key's row. `None` when the stored hash changed and the secret must
    /// be verified again.
    async fn refresh(
        &self,
        digest: [u8; 32],
        entry: CachedKey,
    ) -> Result<Option<CachedKey>, AuthError> {
        match self.store.find_secret(&entry.lookup_id).await? {
            Some((secret, key)) if secret.hash == entry.hash => {
                let fresh = CachedKey {
                    key: Arc::new(key),
                    lookup_id: entry.lookup_id,
                    hash: entry.hash,
                    secret_valid_until: secret.valid_until,
                    refreshed_at: Instant::now(),
                };
                self.cache.insert(digest, fresh.clone());
                Ok(Some(fresh))
            }
            Some(_) => Ok(None),
            None => {
                self.cache.remove(&digest);
                Err(AuthError::Unknown)
            }
        }
    }

    /// Checks, in one store read, the cached keys in use that are at least half a TTL old
    /// (see `super::cache`): those whose secret and key are unchanged in the store are
    /// renewed for another TTL, so keys in steady use never wait on a store read on their
    /// requests' path. A key that changed, or whose row is gone, is left to expire: its
    /// next use goes the request path's way (re-read, refused, or verified again). Returns
    /// how many entries were renewed.
    pub async fn refresh_ahead(&self) -> Result<usize, crate::store::StoreError> {
        let due = self.cache.due_for_refresh();
        if due.is_empty() {
            return Ok(0);
        }
        // Taken before the read: what it returns is at least this recent.
        let read_at = Instant::now();
        let lookup_ids: Vec<&str> = due.iter().map(|d| d.lookup_id.as_str()).collect();
        let versions: foldhash::HashMap<String, SecretVersion> = self
            .store
            .secret_versions(&lookup_ids)
            .await?
            .into_iter()
            .map(|version| (version.lookup_id.clone(), version))
            .collect();
        Ok(self.cache.renew_unchanged(&due, &versions, read_at))
    }

    async fn verify(&self, token: &Token, digest: [u8; 32]) -> Result<CachedKey, AuthError> {
        let Some((secret, key)) = self.store.find_secret(token.lookup_id()).await? else {
            return Err(AuthError::Unknown);
        };
        if !self
            .hasher
            .verify(token.expose().to_string(), secret.hash.clone())
            .await?
        {
            return Err(AuthError::Unknown);
        }
        let entry = CachedKey {
            key: Arc::new(key),
            lookup_id: secret.lookup_id,
            hash: secret.hash,
            secret_valid_until: secret.valid_until,
            refreshed_at: Instant::now(),
        };
        self.cache.insert(digest, entry.clone());
        Ok(entry)
    }
}

fn check_usable(
    key: &ApiKey,
    secret_valid_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    if key.revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(AuthError::Expired);
    }
    if secret_valid_until.is_some_and(|at| at <= now) {
        return Err(AuthError::Rotated);
    }
    Ok(())
}
