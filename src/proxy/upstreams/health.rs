//! Passive health: a circuit breaker per upstream, fed by the outcome of the requests sent
//! to it. Closed: requests pass. `failures` failures in a row open it for `cooldown`, and
//! an upstream's own `Retry-After` on a 429 opens it for that long (capped). Once the
//! cool-down is over it is half-open: one request (the probe) is let through; its success
//! closes the breaker, its failure opens it again. No background task and no active
//! probing: the state moves only when a request asks.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// The longest an upstream's `Retry-After` takes it out of rotation: a provider asking
/// for an hour would otherwise leave a healthy region unused that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What the breaker says of an upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// The cool-down is over: the next request is a probe.
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The value of the `keygate_upstream_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Why an attempt failed, as the fallback log and the metric label say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The connection could not be made or broke before the answer's head.
    Connect,
    /// No answer head within the first-byte timeout.
    Timeout,
    /// 429 from the upstream.
    RateLimited,
    /// 5xx from the upstream.
    ServerError,
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Connect => "connect",
            FailureCause::Timeout => "timeout",
            FailureCause::RateLimited => "rate_limited",
            FailureCause::ServerError => "server_error",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row since the last success.
    failures: u32,
    /// Set while open: when the cool-down ends (then half-open).
    open_until: Option<Instant>,
    /// A half-open probe is in flight: other requests keep away until it reports.
    probing: bool,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    upstream: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
    /// Whether `state` is anything but closed with no failure. While it is not (nearly
    /// always), a request passes and succeeds without taking the lock: every request of
    /// every upstream goes through here.
    troubled: AtomicBool,
}

/// Leave to send one request to an upstream. Report its outcome with
/// [`Pass::succeeded`] or [`Pass::failed`]; dropped without either (the request went away,
/// or never left), a half-open probe is given back for another request.
#[must_use]
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    pub fn new(upstream: &str, threshold: u32, cooldown: Duration) -> Self {
        let breaker = Breaker {
            upstream: upstream.to_owned(),
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::default(),
            troubled: AtomicBool::new(false),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self) -> bool {
        !self.troubled.load(Ordering::Acquire)
    }

    /// Keeps `troubled` in step with `state` (called with the lock held).
    fn mark(&self, state: &State) {
        let troubled = state.failures > 0 || state.open_until.is_some() || state.probing;
        self.troubled.store(troubled, Ordering::Release);
    }

    /// The state at `now`, the failures in a row, and the cool-down left when open.
    pub fn state(&self, now: Instant) -> (BreakerState, u32, Option<Duration>) {
        let state = self.lock();
        (
            state_at(&state, now),
            state.failures,
            state
                .open_until
                .map(|until| until.saturating_duration_since(now))
                .filter(|left| !left.is_zero()),
        )
    }

    /// When the cool-down ends, if the breaker is not closed.
    pub fn open_until(&self) -> Option<Instant> {
        self.lock().open_until
    }

    /// Whether a request may go now without forcing: closed, or half-open with no probe
    /// in flight.
    pub fn available(&self, now: Instant) -> bool {
        if self.healthy() {
            return true;
        }
        let state = self.lock();
        match state_at(&state, now) {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => !state.probing,
            BreakerState::Open => false,
        }
    }

    /// Leave to send a request now: `None` when open, or half-open with its probe taken.
    pub fn pass(&self, now: Instant) -> Option<Pass<'_>> {
        if self.healthy() {
            return Some(Pass {
                breaker: self,
                probe: false,
            });
        }
        let mut state = self.lock();
        match state_at(&state, now) {
            BreakerState::Closed => Some(Pass {
                breaker: self,
                probe: false,
            }),
            BreakerState::HalfOpen if !state.probing => {
                state.probing = true;
                self.mark(&state);
                drop(state);
                self.publish(BreakerState::HalfOpen);
                Some(Pass {
                    breaker: self,
                    probe: true,
                })
            }
            _ => None,
        }
    }

    /// Leave to send a request whatever the state: every candidate is cooling down and this
    /// one's cool-down ends first, so it is tried rather than nothing. Its outcome counts
    /// as a probe's would.
    pub fn force(&self) -> Pass<'_> {
        Pass {
            breaker: self,
            probe: false,
        }
    }

    fn succeeded(&self, probe: bool) {
        if self.healthy() {
            return;
        }
        let mut state = self.lock();
        let was_open = state.open_until.is_some();
        *state = State::default();
        self.mark(&state);
        drop(state);
        if was_open || probe {
            tracing::info!(upstream = %self.upstream, "upstream answered again; breaker closed");
            self.publish(BreakerState::Closed);
        }
    }

    fn failed(&self, probe: bool, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        if probe {
            state.probing = false;
        }
        let cool_for = match retry_after {
            Some(wait) => Some(wait.min(MAX_RETRY_AFTER)),
            None if probe || state.open_until.is_some() || state.failures >= self.threshold => {
                Some(self.cooldown)
            }
            None => None,
        };
        let Some(cool_for) = cool_for else {
            self.mark(&state);
            return;
        };
        let was = state_at(&state, now);
        let until = now + cool_for;
        // A longer cool-down already running (a Retry-After) is not shortened.
        if state.open_until.is_none_or(|current| current < until) {
            state.open_until = Some(until);
        }
        self.mark(&state);
        let failures = state.failures;
        drop(state);
        if was != BreakerState::Open {
            tracing::warn!(upstream = %self.upstream, failures, cool_down_secs = cool_for.as_secs_f64(), "upstream breaker open: skipped while it cools down");
        }
        self.publish(BreakerState::Open);
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("keygate_upstream_state", "upstream" => self.upstream.clone())
            .set(state.gauge());
    }
}

fn state_at(state: &State, now: Instant) -> BreakerState {
    match state.open_until {
        None => BreakerState::Closed,
        Some(until) if now < until => BreakerState::Open,
        Some(_) => BreakerState::HalfOpen,
    }
}

impl Pass<'_> {
    /// The upstream answered (anything but a 429 or a 5xx).
    pub fn succeeded(mut self) {
        let probe = std::mem::take(&mut self.probe);
        self.breaker.succeeded(probe);
    }

    /// The upstream failed; `retry_after` is its own `Retry-After` on a 429.
    pub fn failed(mut self, retry_after: Option<Duration>) {
        let probe = std::mem::take(&mut self.probe);
        self.breaker.failed(probe, retry_after);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            let mut state = self.breaker.lock();
            state.probing = false;
            self.breaker.mark(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_millis(50);

    fn state(breaker: &Breaker) -> BreakerState {
        breaker.state(Instant::now()).0
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let breaker = Breaker::new("u", 3, COOL);
        for _ in 0..2 {
            breaker.pass(Instant::now()).unwrap().failed(None);
        }
        breaker.pass(Instant::now()).unwrap().succeeded();
        for _ in 0..2 {
            breaker.pass(Instant::now()).unwrap().failed(None);
        }
        assert_eq!(state(&breaker), BreakerState::Closed);
        breaker.pass(Instant::now()).unwrap().failed(None);
        assert_eq!(state(&breaker), BreakerState::Open);
        assert!(breaker.pass(Instant::now()).is_none());
    }

    #[test]
    fn after_the_cool_down_one_probe_passes_and_its_outcome_decides() {
        let breaker = Breaker::new("u", 1, COOL);
        breaker.pass(Instant::now()).unwrap().failed(None);
        let later = Instant::now() + COOL * 2;
        assert_eq!(breaker.state(later).0, BreakerState::HalfOpen);
        let probe = breaker.pass(later).expect("the probe");
        assert!(breaker.pass(later).is_none(), "one probe at a time");
        probe.failed(None);
        assert_eq!(
            state(&breaker),
            BreakerState::Open,
            "a failed probe re-opens"
        );

        std::thread::sleep(COOL * 2);
        let probe = breaker.pass(Instant::now()).expect("the next probe");
        // A probe that never reports (its request went away) is given back.
        drop(probe);
        let probe = breaker.pass(Instant::now()).expect("the probe again");
        probe.succeeded();
        assert_eq!(state(&breaker), BreakerState::Closed);
        assert_eq!(breaker.state(Instant::now()).1, 0);
    }

    #[test]
    fn retry_after_opens_it_at_once_for_that_long_capped() {
        let breaker = Breaker::new("u", 5, COOL);
        breaker
            .pass(Instant::now())
            .unwrap()
            .failed(Some(Duration::from_secs(2)));
        let (now, _, left) = breaker.state(Instant::now());
        assert_eq!(now, BreakerState::Open);
        assert!(left.is_some_and(|left| left > Duration::from_secs(1)));
        assert_eq!(
            breaker.state(Instant::now() + Duration::from_secs(3)).0,
            BreakerState::HalfOpen
        );
        breaker.force().failed(Some(Duration::from_secs(100_000)));
        let left = breaker.state(Instant::now()).2.unwrap();
        assert!(left <= MAX_RETRY_AFTER, "{left:?}");
    }
}
