//! Failed authentications per client address (DESIGN §8). governor counts failures; an
//! address past its allowance is refused (429) anything that would reach the store or
//! argon2 until the allowance refills.
//!
//! Only guessing is throttled. `KeysService::authenticate_from` consults the guard for a
//! presented key that this instance has not verified before (a digest-cache miss) and
//! counts only the failures of such keys: a malformed key costs nothing (refused on its
//! shape and checksum), and a key verified before (a cache hit, fresh or due for a re-read,
//! even if it has since been revoked) proves possession of a real secret. So one script
//! with a revoked or mangled key cannot lock out everyone behind its address, and a busy
//! client with a valid key never locks itself out.
//!
//! The console's sign-in uses the same guard twice: per address and per username.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{clock::DefaultClock, DefaultKeyedRateLimiter, Quota};

/// Failures counted per `K`: a client address by default.
pub struct FailedAuthGuard<K: Hash + Eq + Clone = IpAddr> {
    failures: DefaultKeyedRateLimiter<K>,
    blocked_until: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> FailedAuthGuard<K> {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        FailedAuthGuard {
            failures: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked_until: Mutex::default(),
        }
    }

    /// How long the address stays blocked, if it is.
    pub fn blocked_for(&self, ip: K) -> Option<Duration> {
        let blocked = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.is_empty() {
            return None; // the usual case: no address is blocked, nothing to hash
        }
        blocked
            .get(&ip)
            .and_then(|until| until.checked_duration_since(Instant::now()))
    }

    /// Counts one failure; returns how long the address is now blocked if this failure was
    /// past its allowance.
    pub fn record_failure(&self, ip: K) -> Option<Duration> {
        let not_until = self.failures.check_key(&ip).err()?;
        let wait = not_until
            .wait_time_from(governor::clock::Clock::now(&DefaultClock::default()))
            .max(Duration::from_secs(1));
        let mut blocked = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        blocked.insert(ip, Instant::now() + wait);
        Some(wait)
    }

    /// Forgets addresses that are idle again (governor's keyed store grows with every
    /// address it sees).
    pub fn retain_recent(&self) {
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        let mut blocked = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        blocked.retain(|_, until| *until > now);
    }
}

/// Failed console sign-ins, counted per client address and per username (an attacker
/// spreading guesses over many addresses still meets the username's allowance). Both use
/// `keys.failed_auth_per_minute`.
pub struct SignInGuard {
    pub by_address: FailedAuthGuard<IpAddr>,
    /// Keyed by `<workspace name>/<username>` as typed, lower-cased.
    pub by_username: FailedAuthGuard<String>,
}

impl SignInGuard {
    pub fn new(per_minute: u32) -> Self {
        SignInGuard {
            by_address: FailedAuthGuard::new(per_minute),
            by_username: FailedAuthGuard::new(per_minute),
        }
    }

    pub fn retain_recent(&self) {
        self.by_address.retain_recent();
        self.by_username.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_past_its_allowance_and_others_are_not() {
        let guard = FailedAuthGuard::new(2);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(guard.record_failure(ip), None);
        assert_eq!(guard.record_failure(ip), None);
        assert_eq!(guard.blocked_for(ip), None);
        let wait = guard.record_failure(ip).unwrap();
        assert!(wait >= Duration::from_secs(1), "{wait:?}");
        assert!(guard.blocked_for(ip).is_some());
        assert_eq!(guard.blocked_for(other), None);
    }
}
