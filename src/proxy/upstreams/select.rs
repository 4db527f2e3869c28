//! Which upstream a request goes to, and where it goes next when that one fails.
//!
//! A model's candidates are grouped in tiers, best first: by `priority`, and at the same
//! priority the upstreams naming the model exactly before those serving it by `*` (so a
//! file with one exact listing and a `*` upstream behaves as before, with the `*`
//! upstream now a fallback). Within a tier requests are spread by `weight` with smooth
//! weighted round-robin (nginx's): deterministic, so the spread is exact over any window
//! of the weights' sum, and no two picks in a row go to the same upstream unless its
//! weight says so. Only the tier members that are available (breaker closed, or
//! half-open with its probe free) and not yet tried by this request take part.

use std::{sync::Mutex, time::Instant};

use super::{health::Pass, Upstream};

/// The candidates for one model, in tiers, best first.
#[derive(Debug)]
pub(super) struct Route {
    tiers: Vec<Tier>,
}

#[derive(Debug)]
struct Tier {
    /// Indices into the upstream list, with their weights.
    members: Vec<(usize, i64)>,
    /// Smooth weighted round-robin's running weights, one per member.
    current: Mutex<Vec<i64>>,
}

impl Route {
    /// `candidates`: (upstream index, tier key) in configuration order; the tier key sorts
    /// best first.
    pub(super) fn new(mut candidates: Vec<(usize, (u32, bool), u32)>) -> Route {
        candidates.sort_by_key(|(index, key, _)| (*key, *index));
        let mut tiers: Vec<Tier> = Vec::new();
        let mut last_key = None;
        for (index, key, weight) in candidates {
            if last_key != Some(key) {
                tiers.push(Tier {
                    members: Vec::new(),
                    current: Mutex::default(),
                });
                last_key = Some(key);
            }
            if let Some(tier) = tiers.last_mut() {
                tier.members.push((index, i64::from(weight.max(1))));
            }
        }
        for tier in &mut tiers {
            tier.current = Mutex::new(vec![0; tier.members.len()]);
        }
        Route { tiers }
    }

    /// Every candidate, best tier first (for the pass-through and the model list).
    pub(super) fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.tiers
            .iter()
            .flat_map(|tier| tier.members.iter().map(|(index, _)| *index))
    }
}

/// One request's walk over its candidates: [`Candidates::next_upstream`] gives the next upstream
/// to try, with the breaker's leave.
pub struct Candidates<'a> {
    upstreams: &'a [Upstream],
    route: &'a Route,
    /// Candidates already tried by this request, by position in the route's order
    /// (config::MAX_UPSTREAMS keeps a route within 64).
    tried: u64,
    attempts: u32,
}

impl<'a> Candidates<'a> {
    pub(super) fn new(upstreams: &'a [Upstream], route: &'a Route) -> Self {
        Candidates {
            upstreams,
            route,
            tried: 0,
            attempts: 0,
        }
    }

    /// Attempts handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next upstream to try: from the best tier with an available candidate not tried
    /// yet, by weight. When nothing was tried yet and every candidate is cooling down, the
    /// one whose cool-down ends first (a request is always tried at least once: the
    /// upstream may be back, and the client gets its real answer). `None`: no candidate
    /// left.
    pub fn next_upstream(&mut self) -> Option<(&'a Upstream, Pass<'a>)> {
        let now = Instant::now();
        let mut offset = 0;
        for tier in &self.route.tiers {
            // Members that say no to a pass between `available` and `pass` (another
            // request took the probe) are skipped on the next round.
            let mut refused = 0u64;
            loop {
                let eligible = |position: usize, index: usize| {
                    let bit = 1u64 << (offset + position);
                    self.tried & bit == 0
                        && refused & bit == 0
                        && self.upstreams[index].breaker.available(now)
                };
                let Some(position) = tier.pick(eligible) else {
                    break;
                };
                let bit = 1u64 << (offset + position);
                let upstream = &self.upstreams[tier.members[position].0];
                match upstream.breaker.pass(now) {
                    Some(pass) => {
                        self.tried |= bit;
                        self.attempts += 1;
                        return Some((upstream, pass));
                    }
                    None => refused |= bit,
                }
            }
            offset += tier.members.len();
        }
        if self.attempts > 0 {
            return None;
        }
        let upstream = self
            .route
            .members()
            .map(|index| &self.upstreams[index])
            .min_by_key(|upstream| upstream.breaker.open_until())?;
        self.attempts += 1;
        self.tried = u64::MAX;
        Some((upstream, upstream.breaker.force()))
    }
}

impl Tier {
    /// Smooth weighted round-robin over the members `eligible(position, index)` accepts:
    /// each gains its weight, the highest is picked and loses the sum of the weights.
    fn pick(&self, eligible: impl Fn(usize, usize) -> bool) -> Option<usize> {
        if let [(index, _)] = self.members.as_slice() {
            return eligible(0, *index).then_some(0);
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (position, (index, weight)) in self.members.iter().enumerate() {
            if !eligible(position, *index) {
                continue;
            }
            current[position] += weight;
            total += weight;
            if best.is_none_or(|best| current[position] > current[best]) {
                best = Some(position);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(weights: &[i64]) -> Tier {
        Tier {
            members: weights.iter().copied().enumerate().collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }

    #[test]
    fn smooth_weighted_round_robin_spreads_exactly_and_interleaves() {
        let tier = tier(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7)
            .map(|_| tier.pick(|_, _| true).unwrap_or(99))
            .collect();
        // nginx's example: a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[tier.pick(|_, _| true).unwrap_or(99)] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn members_left_out_take_no_share() {
        let tier = tier(&[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..100 {
            counts[tier.pick(|position, _| position == 1).unwrap_or(0)] += 1;
        }
        assert_eq!(counts, [0, 100]);
        assert_eq!(tier.pick(|_, _| false), None);
    }

    #[test]
    fn tiers_sort_by_priority_then_exact_before_wildcard() {
        let route = Route::new(vec![
            (0, (1, false), 1),
            (1, (0, true), 1),
            (2, (0, false), 1),
            (3, (0, false), 2),
        ]);
        let tiers: Vec<Vec<usize>> = route
            .tiers
            .iter()
            .map(|t| t.members.iter().map(|(i, _)| *i).collect())
            .collect();
        assert_eq!(tiers, [vec![2, 3], vec![1], vec![0]]);
    }
}
