//! Dynamic programme over split points for a fixed device order.
//!
//! `f[l]` is the best compute cost of giving the first `l` layers to the devices placed so
//! far (each taking at least one layer, within the memory it has left), combined by sum
//! (latency) or max (throughput), with the tie-breaker alongside. Adding a device is
//! `O(n_layers * layers it can hold)`. Hop costs do not depend on the split, so they are
//! added once per order.

use crate::planner::problem::{Cost, Problem};

/// Best layer counts for one order and the objective value they reach.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Split {
    /// Objective value (compute + network) in milliseconds, with its tie-breaker.
    pub(crate) cost: Cost,
    /// Layers per position of the order.
    pub(crate) counts: Vec<u32>,
}

/// The table before any device: zero layers cost nothing, anything else is impossible.
pub(crate) fn empty_table(n_layers: u32) -> Vec<Cost> {
    let mut f = vec![Cost::IMPOSSIBLE; n_layers as usize + 1];
    f[0] = Cost::ZERO;
    f
}

/// Extends table `f` with candidate `c`, leaving at least `min_after` layers for later
/// devices. Returns the new table and, per entry, how many layers `c` took.
pub(crate) fn extend(
    p: &Problem<'_>,
    f: &[Cost],
    c: usize,
    min_after: u32,
) -> (Vec<Cost>, Vec<u32>) {
    let total = p.n_layers as usize;
    let mut g = vec![Cost::IMPOSSIBLE; total + 1];
    let mut choice = vec![0u32; total + 1];
    let top = total.saturating_sub(min_after as usize);
    for l in 1..=top {
        let mut best = Cost::IMPOSSIBLE;
        let mut best_n = 0;
        for n in 1..=l {
            // Memory grows with n: once a range does not fit, no longer one will.
            if !p.fits(c, l - n, l) {
                break;
            }
            let prev = f[l - n];
            if !prev.is_possible() {
                continue;
            }
            // n <= n_layers, which is a u32.
            let n32 = n as u32;
            let v = p.add(prev, p.stage(c, n32));
            if v.better_than(best) {
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
    if !network.is_finite() {
        return None;
    }
    let mut f = empty_table(p.n_layers);
    let mut choices = Vec::with_capacity(k);
    for (j, &c) in order.iter().enumerate() {
        // k <= n_layers, so the remainder fits a u32.
        let after = (k - 1 - j) as u32;
        let (g, choice) = extend(p, &f, c, after);
        f = g;
        choices.push(choice);
    }
    let compute = f[p.n_layers as usize];
    if !compute.is_possible() {
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
        cost: p.with_network(compute, network),
        counts,
    })
}
