//! GCRA ("generic cell rate algorithm") bucket math: pure, clock-free, integer-only.
//!
//! Hand-written on purpose. governor admits or refuses `n` cells up front (`check_key_n`)
//! but has no operation to charge or refund a difference afterwards, and DESIGN §4 needs
//! reserve-then-settle on token buckets that may go negative. The Redis limiter will run
//! the same math in one Lua script; the tests below and in `limits::tests` are its spec.
//!
//! A bucket of `limit` units per `window` is full at `limit` and refills continuously.
//! GCRA keeps one number, the theoretical arrival time (TAT): the instant at which the
//! bucket would be full again. With emission interval `T = window / limit`, charging `n`
//! sets `tat = max(tat, now) + n·T` and is admitted iff `tat − now ≤ window`. Settlement
//! moves the TAT by `(actual − estimate)·T` without a check, so it may run past `now +
//! window`: that is a negative balance, and later requests wait until it has refilled.
//!
//! Exactness: `T` is rarely a whole number of nanoseconds (60 s / 7), and rounding each
//! charge would let a burst of `limit` requests miss the window by a few nanoseconds. So
//! time is counted in *ticks* of `1/limit` ns: a bucket's clock reads `now_ns · limit`,
//! one unit costs exactly `window_ns` ticks and the capacity is `limit · window_ns` ticks.
//! All products are `i128` and saturate instead of overflowing. (Lua numbers are doubles,
//! exact only below 2^53, so the script will have to keep the TAT as whole microseconds
//! plus a remainder in `1/limit` µs to stay exact; the shared tests are what must agree.)

use std::time::Duration;

/// `limit` units per `window`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u64,
    window_ns: u64,
}

impl Rate {
    /// A zero window is treated as one nanosecond so the math never divides by zero.
    pub fn new(limit: u64, window: Duration) -> Self {
        Self {
            limit,
            window_ns: duration_ns(window).max(1),
        }
    }

    pub fn limit(self) -> u64 {
        self.limit
    }

    pub fn window(self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// The bucket's clock: `now_ns · limit` ticks.
    fn ticks(self, now_ns: u64) -> i128 {
        i128::from(now_ns).saturating_mul(i128::from(self.limit))
    }

    /// Ticks that `n` units cost (`n · T`).
    pub(crate) fn cost(self, n: u64) -> i128 {
        i128::from(n).saturating_mul(i128::from(self.window_ns))
    }

    /// Ticks of a full bucket (`window`).
    fn capacity(self) -> i128 {
        self.cost(self.limit)
    }

    /// Ticks → wall time, rounded up so that waiting that long is always enough.
    fn ticks_to_duration(self, ticks: i128) -> Duration {
        if ticks <= 0 || self.limit == 0 {
            return Duration::ZERO;
        }
        // The usual case in 64 bits: one machine division instead of two 128-bit ones.
        if let Ok(ticks) = u64::try_from(ticks) {
            return Duration::from_nanos(ticks.div_ceil(self.limit));
        }
        let limit = i128::from(self.limit);
        let ns = ticks / limit + i128::from(ticks % limit != 0);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// How long until the same charge would be admitted; `None` when no wait helps
    /// (the limit is 0, or the charge alone is larger than the limit).
    pub retry_after: Option<Duration>,
}

/// One bucket's state. A fresh bucket is full; a bucket whose TAT is behind `now` is
/// full too, so such a bucket can be dropped and recreated without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    rate: Rate,
    /// Theoretical arrival time, in ticks (`ns · limit`).
    tat: i128,
}

impl Bucket {
    pub fn new(rate: Rate) -> Self {
        Self { rate, tat: 0 }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// A bucket whose TAT (in ticks, `ns · limit`) was kept elsewhere: the Redis limiter
    /// runs [`Bucket::charge`]'s check in its script and rebuilds the bucket from the TAT
    /// it returns, so states and waits come from this same code.
    pub(crate) fn from_tat(rate: Rate, tat: i128) -> Self {
        Self { rate, tat }
    }

    /// Ticks in use at `now`: 0 when full, above the capacity when in debt.
    fn used(&self, now_ns: u64) -> i128 {
        self.tat.saturating_sub(self.rate.ticks(now_ns)).max(0)
    }

    /// Charges `n` units if the bucket has room for them, returning the new state.
    ///
    /// A charge of 0 is checked as if it were 1: it is admitted iff `remaining ≥ 1`, so a
    /// bucket that is empty or in debt refuses even a request estimated at 0 tokens
    /// ("later requests wait"), and limit 0 blocks everything.
    pub fn charge(&self, n: u64, now_ns: u64) -> Result<Bucket, Denied> {
        let need = n.max(1);
        if need > self.rate.limit {
            return Err(Denied { retry_after: None });
        }
        let now = self.rate.ticks(now_ns);
        let base = self.tat.max(now);
        if base
            .saturating_add(self.rate.cost(need))
            .saturating_sub(now)
            > self.rate.capacity()
        {
            return Err(Denied {
                retry_after: self.retry_after(need, now_ns),
            });
        }
        Ok(Bucket {
            rate: self.rate,
            tat: base.saturating_add(self.rate.cost(n)),
        })
    }

    /// Applies the difference between what was reserved and what was used, without any
    /// check: more than reserved may take the bucket negative; a refund never lifts it
    /// above full (the TAT never goes below `now`).
    pub fn settle(&mut self, reserved: u64, actual: u64, now_ns: u64) {
        let now = self.rate.ticks(now_ns);
        if actual > reserved {
            self.tat = self
                .tat
                .max(now)
                .saturating_add(self.rate.cost(actual - reserved));
        } else {
            self.tat = self
                .tat
                .saturating_sub(self.rate.cost(reserved - actual))
                .max(now);
        }
    }

    /// Whole units left at `now`, rounded down: `limit` when full, negative in debt.
    pub fn remaining(&self, now_ns: u64) -> i64 {
        let left = self.rate.capacity().saturating_sub(self.used(now_ns));
        // The usual case in 64 bits (a whole bucket, not in debt).
        if let Ok(left) = u64::try_from(left) {
            return i64::try_from(left / self.rate.window_ns).unwrap_or(i64::MAX);
        }
        let units = left.div_euclid(i128::from(self.rate.window_ns));
        i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX })
    }

    /// Time until a charge of `n` (at least 1) would be admitted; zero if it would be now,
    /// `None` if never (limit 0, or `n` above the limit).
    pub fn retry_after(&self, n: u64, now_ns: u64) -> Option<Duration> {
        let need = n.max(1);
        if need > self.rate.limit {
            return None;
        }
        let over = self
            .used(now_ns)
            .saturating_add(self.rate.cost(need))
            .saturating_sub(self.rate.capacity());
        Some(self.rate.ticks_to_duration(over))
    }

    /// Time until the bucket is full again (for reset headers).
    pub fn reset_after(&self, now_ns: u64) -> Duration {
        self.rate.ticks_to_duration(self.used(now_ns))
    }

    /// True when the bucket is full, i.e. indistinguishable from a fresh one.
    pub fn is_idle(&self, now_ns: u64) -> bool {
        self.used(now_ns) == 0
    }

    /// Changes the limit (an admin edited the key), keeping the units already used: a
    /// higher limit gives the difference at once, a lower one may leave the bucket in
    /// debt. From or to limit 0 the bucket starts full.
    pub fn set_limit(&mut self, limit: u64, now_ns: u64) {
        if limit == self.rate.limit {
            return;
        }
        let used = if self.rate.limit == 0 || limit == 0 {
            0
        } else {
            self.used(now_ns)
        };
        self.rate.limit = limit;
        self.tat = self.rate.ticks(now_ns).saturating_add(used);
    }
}

/// Nanoseconds in a `Duration`, saturating at `u64::MAX` (584 years).
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const MINUTE: Duration = Duration::from_secs(60);

    fn bucket(limit: u64) -> Bucket {
        Bucket::new(Rate::new(limit, MINUTE))
    }

    #[test]
    fn burst_of_exactly_limit_even_when_t_is_not_whole_nanoseconds() {
        for limit in [1, 3, 7, 13, 1000, 999_983] {
            let mut b = bucket(limit);
            for i in 0..limit {
                b = b
                    .charge(1, 0)
                    .unwrap_or_else(|_| panic!("{limit}: charge {i}"));
            }
            assert_eq!(b.remaining(0), 0, "limit {limit}");
            assert!(b.charge(1, 0).is_err(), "limit {limit}");
            assert_eq!(b.reset_after(0), MINUTE, "limit {limit}");
        }
    }

    #[test]
    fn refused_charge_reports_the_exact_wait() {
        let mut b = bucket(3);
        for _ in 0..3 {
            b = b.charge(1, 0).unwrap();
        }
        let denied = b.charge(1, 0).unwrap_err();
        assert_eq!(denied.retry_after, Some(Duration::from_secs(20)));
        assert!(b.charge(1, 20 * SEC - 1).is_err());
        let b = b.charge(1, 20 * SEC).unwrap();
        assert_eq!(b.remaining(20 * SEC), 0);
        // Waits round up: 7 per minute is 8.571428571428… s per unit.
        let mut b = bucket(7);
        for _ in 0..7 {
            b = b.charge(1, 0).unwrap();
        }
        let wait = b.charge(1, 0).unwrap_err().retry_after.unwrap();
        assert_eq!(wait, Duration::from_nanos(8_571_428_572));
        assert!(b.charge(1, 8_571_428_571).is_err());
        assert!(b.charge(1, 8_571_428_572).is_ok());
    }

    #[test]
    fn refill_is_continuous() {
        let b = bucket(60).charge(60, 0).unwrap();
        assert_eq!(b.remaining(0), 0);
        assert_eq!(b.remaining(SEC / 2), 0);
        assert_eq!(b.remaining(SEC), 1);
        assert_eq!(b.remaining(30 * SEC + SEC / 2), 30);
        assert_eq!(b.reset_after(30 * SEC), Duration::from_secs(30));
        assert_eq!(b.remaining(60 * SEC), 60);
        assert_eq!(b.remaining(3600 * SEC), 60, "never above the limit");
        assert!(b.is_idle(60 * SEC));
        assert!(!b.is_idle(60 * SEC - 1));
    }

    #[test]
    fn charge_larger_than_limit_or_limit_zero_never_admits() {
        assert_eq!(
            bucket(100).charge(101, 0),
            Err(Denied { retry_after: None })
        );
        assert_eq!(bucket(100).retry_after(101, 0), None);
        assert_eq!(bucket(0).charge(0, 0), Err(Denied { retry_after: None }));
        assert_eq!(bucket(0).charge(1, 0), Err(Denied { retry_after: None }));
        assert_eq!(bucket(0).remaining(0), 0);
        assert!(bucket(100).charge(100, 0).is_ok());
    }

    #[test]
    fn zero_cost_charge_needs_one_unit_left() {
        let b = bucket(10).charge(10, 0).unwrap();
        assert_eq!(
            b.charge(0, 0).unwrap_err().retry_after,
            Some(Duration::from_secs(6))
        );
        let b = bucket(10).charge(9, 0).unwrap();
        let after = b.charge(0, 0).unwrap();
        assert_eq!(after.remaining(0), 1, "a zero charge takes nothing");
    }

    #[test]
    fn settle_up_goes_negative_and_settle_down_refunds_to_at_most_full() {
        let reserved = bucket(1000).charge(100, 0).unwrap();
        let mut up = reserved;
        up.settle(100, 1600, 0);
        assert_eq!(up.remaining(0), -600);
        // 601 units to refill before one is free, 60 ms each.
        assert_eq!(up.retry_after(1, 0), Some(Duration::from_millis(36_060)));
        assert_eq!(up.reset_after(0), Duration::from_secs(96));

        let mut down = reserved;
        down.settle(100, 10, 0);
        assert_eq!(down.remaining(0), 990);
        let mut again = down;
        again.settle(1000, 0, 0);
        assert_eq!(again.remaining(0), 1000);
        assert!(again.is_idle(0));
        assert_eq!(again.charge(1000, 0).map(|b| b.remaining(0)), Ok(0));
    }

    #[test]
    fn settle_after_refill_starts_from_now() {
        let mut b = bucket(60).charge(10, 0).unwrap();
        b.settle(10, 20, 3600 * SEC);
        assert_eq!(b.remaining(3600 * SEC), 50);
    }

    #[test]
    fn set_limit_keeps_units_used() {
        let mut b = bucket(10).charge(10, 0).unwrap();
        b.set_limit(100, 0);
        assert_eq!(b.remaining(0), 90);
        b.set_limit(5, 0);
        assert_eq!(b.remaining(0), -5);
        b.set_limit(0, 0);
        assert_eq!(b.remaining(0), 0);
        b.set_limit(5, 0);
        assert_eq!(b.remaining(0), 5);
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let rate = Rate::new(u64::MAX, Duration::from_secs(86_400));
        let mut b = Bucket::new(rate).charge(u64::MAX, u64::MAX).unwrap();
        b.settle(0, u64::MAX, u64::MAX);
        let _ = b.remaining(u64::MAX);
        let _ = b.reset_after(0);
        let mut tiny = Bucket::new(Rate::new(1, Duration::ZERO));
        tiny.settle(0, u64::MAX, 0);
        assert!(tiny.remaining(0) < 0);
        assert!(tiny.charge(1, 0).is_err());
    }
}
