//! How many drafts a pass should carry: the number that maximizes expected tokens per
//! millisecond, from the measured acceptance of this kind of proposal and what a pass of
//! each size costs. With acceptance `a` per draft (each accepted only after the previous
//! one), `k` drafts yield `(1 - a^(k+1)) / (1 - a)` tokens per pass; a pass of `k + 1` rows
//! costs what the head measured for that size. `k = 0` (plain decoding) whenever
//! speculation would not pay.
//!
//! Acceptance is tracked per kind of proposal ([`super::Drafter::outlook`]), not for the
//! session as a whole: prompt lookup's drafts are kept about 86 % of the time after a match
//! of four tokens and 27 % after a match of one (SmolLM2 on `examples/prompts`, 10 ms
//! links). One average of the two drafted too little in copied text and too much in free
//! text, where every rejected draft still costs its row.

/// How quickly old passes are forgotten (weight kept per pass of the same kind).
const DECAY: f64 = 0.9;
/// Every this many passes the controller tries a choice its costs advise against.
pub const EXPLORE_EVERY: u64 = 16;
/// A choice is tried only when its expected tokens per millisecond are at least this share
/// of the advised choice's.
const EXPLORE_WITHIN: f64 = 0.8;
/// The prior each kind's counts age toward: one draft accepted of two judged.
const PRIOR: (f64, f64) = (1.0, 2.0);
/// Kinds of proposal tracked apart (a draft model's, and prompt lookup's by match length);
/// larger kinds share the last.
const KINDS: usize = super::ngram::MAX_N + 1;

/// The per-session controller.
#[derive(Debug, Clone)]
pub struct AdaptiveK {
    max: usize,
    /// Per kind of proposal: decayed counts of drafts accepted and judged.
    kinds: [(f64, f64); KINDS],
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
            kinds: [PRIOR; KINDS],
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

    /// The estimated chance that a draft of proposals of `kind` is accepted (given the
    /// previous one was).
    pub fn acceptance(&self, kind: usize) -> f64 {
        let (accepted, judged) = self.kinds[kind.min(KINDS - 1)];
        (accepted / judged).clamp(0.0, 0.99)
    }

    /// The drafts chosen last.
    pub fn current(&self) -> usize {
        self.k
    }

    /// A pass without a proposal (the drafter had none): no drafts.
    pub fn none(&mut self) {
        self.passes += 1;
        self.k = 0;
    }

    /// Chooses the drafts for the next pass, whose proposal is of `kind`, from what passes
    /// cost: `costs[rows - 1]` milliseconds for a pass of `rows` rows, `None` while
    /// unpriced. At most `room` drafts fit what is left of the request. Passes are priced
    /// first (a plain one, then one of two drafts), and every [`EXPLORE_EVERY`] passes a
    /// choice next to the advised one is tried when it could nearly pay, so one odd
    /// measurement or a few unlucky drafts cannot settle the choice for good.
    pub fn choose(&mut self, kind: usize, room: usize, costs: &[Option<f64>]) -> usize {
        self.passes += 1;
        if let Some(k) = self.fixed {
            self.k = k.min(room);
            return self.k;
        }
        let max = self.max.min(room).min(costs.len().saturating_sub(1));
        let one = costs.first().copied().flatten();
        let priced = costs.iter().skip(1).take(max).any(Option::is_some);
        self.k = match (one, priced) {
            (None, _) => 0,
            (Some(_), false) => 2.min(max),
            (Some(_), true) => {
                let a = self.acceptance(kind);
                let best = best_k(a, 0..=max, costs);
                let other = if best == 0 {
                    best_k(a, 1..=max, costs)
                } else if best < max {
                    best + 1
                } else {
                    best - 1
                };
                // Only a choice that could pay is worth a try: on loopback, where a further
                // row costs most of a pass, drafts after a short match never come close,
                // and trying them cost 1-2 % of the decode time.
                let close = match (rate(a, other, costs), rate(a, best, costs)) {
                    (Some(o), Some(b)) => o >= b * EXPLORE_WITHIN,
                    _ => false,
                };
                if self.passes.is_multiple_of(EXPLORE_EVERY) && close {
                    other
                } else {
                    best
                }
            }
        };
        self.k
    }

    /// A pass judged `drafted` drafts of a proposal of `kind` and kept the first `kept`
    /// of them.
    pub fn record(&mut self, kind: usize, drafted: usize, kept: usize) {
        let (accepted, judged) = &mut self.kinds[kind.min(KINDS - 1)];
        *accepted = *accepted * DECAY + (1.0 - DECAY) * PRIOR.0;
        *judged = *judged * DECAY + (1.0 - DECAY) * PRIOR.1;
        // Judged drafts: the kept ones, plus the first rejected one (later ones were never
        // judged on their own).
        *accepted += kept as f64;
        *judged += (kept + usize::from(kept < drafted)) as f64;
    }
}

/// The number of drafts in `ks` with the most expected tokens per millisecond, given the
/// acceptance `a` and the pass costs (`costs[rows - 1]`; unpriced sizes are skipped). The
/// smallest wins unless a larger one is better by more than a hundredth: with the same
/// yield, fewer rows are less to lose. 0 when nothing in `ks` is priced.
fn best_k(a: f64, ks: std::ops::RangeInclusive<usize>, costs: &[Option<f64>]) -> usize {
    ks.filter_map(|k| Some((k, rate(a, k, costs)?)))
        .fold((0, f64::MIN), |best, (k, rate)| {
            if rate > best.1 * 1.01 {
                (k, rate)
            } else {
                best
            }
        })
        .0
}

/// Expected tokens per millisecond of passes with `k` drafts, each accepted with chance `a`
/// once the previous one was; `None` when that size is unpriced.
fn rate(a: f64, k: usize, costs: &[Option<f64>]) -> Option<f64> {
    let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
    Some(tokens / costs.get(k).copied().flatten()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three nodes, 10 ms a hop (measured, ms by rows).
    const SLOW_LINK: [Option<f64>; 9] = [
        Some(51.0),
        Some(59.0),
        Some(63.0),
        Some(65.0),
        Some(73.0),
        Some(81.0),
        Some(95.0),
        Some(98.0),
        Some(112.0),
    ];
    /// Loopback: compute dominates, a further row costs most of a pass.
    const LOOPBACK: [Option<f64>; 9] = [
        Some(10.0),
        Some(18.0),
        Some(23.0),
        Some(26.0),
        Some(34.0),
        Some(40.0),
        Some(45.0),
        Some(48.0),
        Some(56.0),
    ];

    fn choose(k: &mut AdaptiveK, kind: usize, room: usize, costs: &[Option<f64>]) -> usize {
        // Skip the exploring passes: the tests look at the advised choice.
        if (k.passes + 1).is_multiple_of(EXPLORE_EVERY) {
            k.choose(kind, room, costs);
        }
        k.choose(kind, room, costs)
    }

    #[test]
    fn kinds_are_judged_apart() {
        let mut k = AdaptiveK::new(8);
        for _ in 0..50 {
            k.record(4, 4, 4);
            k.record(1, 3, 0);
        }
        assert!(k.acceptance(4) > 0.9, "{}", k.acceptance(4));
        assert!(k.acceptance(1) < 0.1, "{}", k.acceptance(1));
        // Unseen kinds keep the prior; kinds past the table share its last entry.
        assert_eq!(k.acceptance(2), 0.5);
        k.record(KINDS + 3, 1, 1);
        assert!(k.acceptance(KINDS - 1) > 0.5);
        // Long matches draft as far as pays on a slow link, short ones not at all.
        assert_eq!(choose(&mut k, 4, 100, &SLOW_LINK), 7);
        assert_eq!(choose(&mut k, 1, 100, &SLOW_LINK), 0);
        // Never past what the request has left.
        assert_eq!(choose(&mut k, 4, 3, &SLOW_LINK), 3);
    }

    #[test]
    fn the_cheap_sizes_win_and_loopback_drafts_only_what_is_nearly_sure() {
        let mut k = AdaptiveK::new(8);
        for _ in 0..50 {
            k.record(4, 4, 4);
            k.record(2, 4, 2);
        }
        // Four rows cost little more than three and two: three drafts, not one or two.
        assert_eq!(choose(&mut k, 2, 100, &SLOW_LINK), 3);
        // On loopback a further row costs most of a pass: only sure drafts pay.
        assert_eq!(choose(&mut k, 2, 100, &LOOPBACK), 0);
        assert_eq!(choose(&mut k, 4, 100, &LOOPBACK), 7);
    }

    #[test]
    fn a_kind_advised_off_is_tried_again_now_and_then() {
        let mut k = AdaptiveK::new(8);
        for _ in 0..50 {
            k.record(1, 4, 0);
        }
        assert_eq!(choose(&mut k, 1, 100, &SLOW_LINK), 0);
        // Once every EXPLORE_EVERY passes, the best number of drafts above none, when it
        // comes close to paying (a 2-row pass on the slow link costs 16 % more).
        let tries: Vec<usize> = (0..EXPLORE_EVERY)
            .map(|_| k.choose(1, 100, &SLOW_LINK))
            .filter(|&k| k > 0)
            .collect();
        assert_eq!(tries, [1]);
        // On loopback a further row costs 80 % of a pass: not worth a try.
        let tries = (0..EXPLORE_EVERY).filter(|_| k.choose(1, 100, &LOOPBACK) > 0);
        assert_eq!(tries.count(), 0);
        // A kind that drafts is tried with one draft more now and then.
        for _ in 0..50 {
            k.record(3, 4, 2);
        }
        let advised = choose(&mut k, 3, 100, &SLOW_LINK);
        let tried: Vec<usize> = (0..EXPLORE_EVERY)
            .map(|_| k.choose(3, 100, &SLOW_LINK))
            .filter(|&k| k != advised)
            .collect();
        assert_eq!(tried, [advised + 1]);
        // A pass without a proposal has no drafts.
        k.none();
        assert_eq!(k.current(), 0);
    }

    #[test]
    fn unpriced_passes_are_priced_first() {
        let mut k = AdaptiveK::new(8);
        // No pass seen: a plain one.
        assert_eq!(k.choose(4, 100, &[None; 9]), 0);
        // Plain passes seen, longer ones not: two drafts.
        let mut costs = [None; 9];
        costs[0] = Some(6.0);
        assert_eq!(k.choose(4, 100, &costs), 2);
        assert_eq!(k.choose(4, 1, &costs), 1);
        // A fixed controller drafts its number whatever the costs.
        assert_eq!(AdaptiveK::fixed(4).choose(1, 100, &[None; 9]), 4);
    }
}
