//! How many drafts a pass should carry: the number that maximizes expected tokens per
//! millisecond, from the measured acceptance and what passes of each size cost. With
//! acceptance `a` per draft (each accepted only after the previous one), `k` drafts yield
//! `(1 - a^(k+1)) / (1 - a)` tokens per pass; a pass of `k + 1` rows costs what the head
//! measured. `k = 0` (plain decoding) whenever speculation would not pay.

/// How quickly old passes are forgotten (weight kept per pass).
const DECAY: f64 = 0.95;
/// Every this many passes the controller tries the choice its costs advise against.
pub const EXPLORE_EVERY: u64 = 16;
/// The prior the counts age toward: one draft accepted of two judged.
const PRIOR: (f64, f64) = (1.0, 2.0);

/// The per-session controller.
#[derive(Debug, Clone)]
pub struct AdaptiveK {
    max: usize,
    /// Decayed counts of drafts accepted and judged (with a prior of one of each).
    accepted: f64,
    judged: f64,
    k: usize,
    passes: u64,
    /// Always this many drafts (tests, benchmarks of a given `k`).
    fixed: Option<usize>,
}

impl AdaptiveK {
    /// A controller that never proposes more than `max` drafts a pass.
    pub fn new(max: usize) -> AdaptiveK {
        AdaptiveK {
            max,
            accepted: PRIOR.0,
            judged: PRIOR.1,
            k: 0,
            passes: 0,
            fixed: None,
        }
    }

    /// A controller that always drafts `k` (as far as the request has room).
    pub fn fixed(k: usize) -> AdaptiveK {
        AdaptiveK {
            fixed: Some(k),
            ..AdaptiveK::new(k)
        }
    }

    /// The estimated chance that a draft is accepted (given the previous one was).
    pub fn acceptance(&self) -> f64 {
        (self.accepted / self.judged).clamp(0.0, 0.99)
    }

    /// The drafts chosen last.
    pub fn current(&self) -> usize {
        self.k
    }

    /// Chooses the drafts for the next pass from what passes cost (milliseconds): `one` for a
    /// single row, `per_row` for each further row, `None` while unmeasured. At most `room`
    /// drafts fit what is left of the request. An unmeasured cost is measured first (a plain
    /// pass, then a pass of two drafts), and every [`EXPLORE_EVERY`] passes the other choice
    /// is tried once, so one odd measurement cannot settle the choice for good.
    pub fn choose(&mut self, room: usize, one: Option<f64>, per_row: Option<f64>) -> usize {
        let max = self.max.min(room);
        self.passes += 1;
        if let Some(k) = self.fixed {
            self.k = k.min(room);
            return self.k;
        }
        self.k = match (one, per_row) {
            (None, _) => 0,
            (Some(_), None) => 2.min(max),
            (Some(one), Some(per_row)) => {
                let best = best_k(self.acceptance(), max, |rows| {
                    one + per_row * (rows - 1) as f64
                });
                if self.passes.is_multiple_of(EXPLORE_EVERY) {
                    if best == 0 {
                        1.min(max)
                    } else {
                        0
                    }
                } else {
                    best
                }
            }
        };
        self.k
    }

    /// A pass judged `drafted` drafts and kept the first `kept` of them. Passes without
    /// drafts still age the counts toward the prior, so a session that stopped drafting
    /// tries again later.
    pub fn record(&mut self, drafted: usize, kept: usize) {
        self.accepted = self.accepted * DECAY + (1.0 - DECAY) * PRIOR.0;
        self.judged = self.judged * DECAY + (1.0 - DECAY) * PRIOR.1;
        // Judged drafts: the kept ones, plus the first rejected one (later ones were never
        // judged on their own).
        let judged = kept + usize::from(kept < drafted);
        self.accepted += kept as f64;
        self.judged += judged as f64;
    }
}

/// The number of drafts (0..=max) with the most expected tokens per unit of cost, given
/// the acceptance `a` and what a pass of `rows` rows costs.
fn best_k(a: f64, max: usize, cost: impl Fn(usize) -> f64) -> usize {
    let tokens = |k: usize| (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
    (0..=max)
        .map(|k| (k, tokens(k) / cost(k + 1)))
        .fold((0, f64::MIN), |best, (k, rate)| {
            if rate > best.1 * 1.0001 {
                (k, rate)
            } else {
                best
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slow link: 30 ms of hops and 6 ms of compute a pass, 1 ms a further row.
    const SLOW_LINK: (Option<f64>, Option<f64>) = (Some(36.0), Some(1.0));
    /// Loopback: compute dominates, a further row costs a third of a pass.
    const LOOPBACK: (Option<f64>, Option<f64>) = (Some(6.0), Some(2.0));

    fn choose(k: &mut AdaptiveK, room: usize, (one, per_row): (Option<f64>, Option<f64>)) -> usize {
        // Skip the exploring passes: the tests look at the advised choice.
        if (k.passes + 1).is_multiple_of(EXPLORE_EVERY) {
            k.choose(room, one, per_row);
        }
        k.choose(room, one, per_row)
    }

    #[test]
    fn high_acceptance_on_a_slow_link_drafts_many() {
        let mut k = AdaptiveK::new(8);
        for _ in 0..50 {
            k.record(4, 4);
        }
        assert!(k.acceptance() > 0.9);
        assert_eq!(choose(&mut k, 100, SLOW_LINK), 8);
        // Never past what the request has left.
        assert_eq!(choose(&mut k, 3, SLOW_LINK), 3);
    }

    #[test]
    fn low_acceptance_turns_speculation_off_then_tries_again() {
        let mut k = AdaptiveK::new(8);
        for _ in 0..50 {
            k.record(4, 0);
        }
        assert!(k.acceptance() < 0.1, "{}", k.acceptance());
        assert_eq!(choose(&mut k, 100, LOOPBACK), 0);
        // Every so often it tries a draft anyway.
        let tries = (0..EXPLORE_EVERY).filter(|_| k.choose(100, Some(6.0), Some(2.0)) > 0);
        assert_eq!(tries.count(), 1);
        // Without drafts the counts age toward the prior; on a slow link that pays.
        for _ in 0..200 {
            k.record(0, 0);
        }
        assert!(choose(&mut k, 100, SLOW_LINK) > 0);
    }

    #[test]
    fn unmeasured_costs_are_measured_first() {
        let mut k = AdaptiveK::new(8);
        // No pass seen: a plain one.
        assert_eq!(k.choose(100, None, None), 0);
        // Plain passes seen, longer ones not: two drafts.
        assert_eq!(k.choose(100, Some(6.0), None), 2);
        assert_eq!(k.choose(1, Some(6.0), None), 1);
    }
}
