//! Dynamic programme over split points for a fixed device order.
//!
//! `f[l]` is the best compute cost of giving the first `l` layers to the devices placed so
//! far (each taking at least one layer, within its memory cap), combined by sum (latency) or
//! max (throughput). Adding a device is `O(n_layers * cap)`. Hop costs do not depend on the
//! split, so they are added once per order.

use crate::planner::problem::{combine, role_at, Problem, INF};
use crate::profile::Role;

/// Best layer counts for one order and the objective value they reach.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Split {
    /// Objective value (compute + network) in milliseconds.
    pub(crate) value: f64,
    /// Layers per position of the order.
    pub(crate) counts: Vec<u32>,
}

/// The table before any device: zero layers cost nothing, anything else is impossible.
/// Zero is the identity for both sum and max of non-negative costs.
pub(crate) fn empty_table(n_layers: u32) -> Vec<f64> {
    let mut f = vec![INF; n_layers as usize + 1];
    f[0] = 0.0;
    f
}

/// Extends table `f` with candidate `c` in `role`, leaving at least `min_after` layers for
/// later devices. Returns the new table and, per entry, how many layers `c` took.
pub(crate) fn extend(
    p: &Problem<'_>,
    f: &[f64],
    c: usize,
    role: Role,
    min_after: u32,
) -> (Vec<f64>, Vec<u32>) {
    let total = p.n_layers as usize;
    let obj = p.objective();
    let cap = p.cap(c, role) as usize;
    let mut g = vec![INF; total + 1];
    let mut choice = vec![0u32; total + 1];
    let top = total.saturating_sub(min_after as usize);
    for l in 1..=top {
        let mut best = INF;
        let mut best_n = 0;
        for n in 1..=cap.min(l) {
            let prev = f[l - n];
            if prev == INF {
                continue;
            }
            // n <= n_layers, which is a u32.
            let n32 = n as u32;
            let v = combine(obj, prev, p.compute(c, role, n32));
            if v < best {
                best = v;
                best_n = n32;
            }
        }
        g[l] = best;
        choice[l] = best_n;
    }
    (g, choice)
}

/// Best split of all layers over `order` (every device takes >= 1 layer), or `None` when
/// no split fits in memory or two consecutive devices cannot reach each other.
pub(crate) fn best_split(p: &Problem<'_>, order: &[usize]) -> Option<Split> {
    let k = order.len();
    if k == 0 || k > p.n_layers as usize {
        return None;
    }
    let network = p.network_cost(order);
    if network == INF {
        return None;
    }
    let mut f = empty_table(p.n_layers);
    let mut choices = Vec::with_capacity(k);
    for (j, &c) in order.iter().enumerate() {
        // k <= n_layers, so the remainder fits a u32.
        let after = (k - 1 - j) as u32;
        let (g, choice) = extend(p, &f, c, role_at(j, k), after);
        f = g;
        choices.push(choice);
    }
    let compute = f[p.n_layers as usize];
    if compute == INF {
        return None;
    }
    let mut counts = vec![0; k];
    let mut l = p.n_layers as usize;
    for j in (0..k).rev() {
        let n = choices[j][l];
        counts[j] = n;
        l -= n as usize;
    }
    Some(Split {
        value: combine(p.objective(), compute, network),
        counts,
    })
}
