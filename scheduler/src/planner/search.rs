//! Searches over device orders: exact branch-and-bound for few candidates, a ranked scan plus
//! local improvement for many.

use crate::plan::Objective;
use crate::planner::dp::{best_split, empty_table, extend, Split};
use crate::planner::problem::{combine, Cost, Problem, INF};

/// A device order with its best split.
#[derive(Debug, Clone)]
pub(crate) struct Solution {
    pub(crate) order: Vec<usize>,
    pub(crate) split: Split,
}

/// Exact search over every ordered subset of the candidates.
///
/// Depth-first over prefixes, sharing the split DP of a prefix among all its extensions.
/// The heuristic's answer seeds the bound. A prefix is pruned when its cost so far plus a
/// lower bound on the layers still unplaced reaches the best complete plan: adding stages
/// never lowers a sum or a max of non-negative costs, the remaining layers cost at least the
/// fastest unused device's rate (latency), and no stage can beat an even spread of the
/// remaining work over the unused devices' combined speed (throughput).
pub(crate) fn exact(p: &Problem<'_>) -> Option<Solution> {
    let seed = heuristic(p, p.cands.len() * 16);
    let mut state = Exact {
        p,
        used: vec![false; p.cands.len()],
        prefix: Vec::new(),
        best: seed.as_ref().map_or(Cost::IMPOSSIBLE, |s| s.split.cost),
        best_order: seed.map(|s| s.order),
    };
    state.dfs(&empty_table(p.n_layers), 0.0);
    let order = state.best_order?;
    let split = best_split(p, &order)?;
    Some(Solution { order, split })
}

struct Exact<'p, 'a> {
    p: &'p Problem<'a>,
    used: Vec<bool>,
    prefix: Vec<usize>,
    best: Cost,
    best_order: Option<Vec<usize>>,
}

impl Exact<'_, '_> {
    /// `table`: compute DP of the prefix; `network`: its hop costs so far.
    fn dfs(&mut self, table: &[Cost], network: f64) {
        let p = self.p;
        let obj = p.objective();
        let depth = self.prefix.len();
        let n_layers = p.n_layers as usize;
        for c in 0..p.cands.len() {
            if self.used[c] {
                continue;
            }
            let hop = match self.prefix.last() {
                None => p.entry(c),
                Some(&prev) => p.hop(prev, c),
            };
            if hop == INF {
                continue;
            }
            let network = combine(obj, network, hop);
            let prefix_network = network;
            // Close the pipeline with `c` as the last stage.
            let (closed, _) = extend(p, table, c, 0);
            let closing = combine(obj, combine(obj, network, p.exit(c)), p.fixed());
            let cost = p.with_network(closed[n_layers], closing);
            if cost.better_than(self.best) {
                self.best = cost;
                let mut order = self.prefix.clone();
                order.push(c);
                self.best_order = Some(order);
            }
            // Or continue with `c` in the middle, if a later stage could still get a layer.
            let free_left = self.used.iter().filter(|u| !**u).count() > 1;
            if !free_left || depth + 2 > n_layers {
                continue;
            }
            let (open, _) = extend(p, table, c, 1);
            // Some unused device follows `c` (one hop) and some unused device is last (exit).
            let (mut fastest, mut speed, mut next_hop, mut exit) = (INF, 0.0, INF, INF);
            for u in (0..p.cands.len()).filter(|&u| u != c && !self.used[u]) {
                fastest = fastest.min(p.cands[u].floor_ms);
                speed += 1.0 / p.cands[u].unit_ms;
                next_hop = next_hop.min(p.hop(c, u));
                exit = exit.min(p.exit(u));
            }
            let network = combine(
                obj,
                combine(obj, network, combine(obj, next_hop, exit)),
                p.fixed(),
            );
            let lower = open[..n_layers]
                .iter()
                .enumerate()
                .map(|(l, f)| {
                    let left = (n_layers - l) as f64;
                    match obj {
                        Objective::Latency => f.value + left * fastest,
                        // speed is infinite when an unused device costs nothing.
                        Objective::Throughput => f.value.max(left / speed),
                    }
                })
                .fold(INF, f64::min);
            // Equal bounds may still win on the tie-breaker: prune only what is worse.
            let bound = Cost {
                value: combine(obj, lower, network),
                tie: f64::NEG_INFINITY,
            };
            if !bound.better_than(self.best) {
                continue;
            }
            self.used[c] = true;
            self.prefix.push(c);
            self.dfs(&open, prefix_network);
            self.prefix.pop();
            self.used[c] = false;
        }
    }
}

/// Heuristic for many candidates, which arrive ranked best-first.
///
/// 1. Two seed rankings: as given (speed), and by closeness to the head node (then speed).
///    For each stage count `k`, take the first `k` of a ranking, chain them by nearest
///    neighbour from the head node (and try the reverse chain), split them with the DP; keep
///    the best. A scan stops after `PATIENCE` counts without improvement.
/// 2. Improve the best order with first-improvement local search (adjacent swap, relocation,
///    removal, replacement or insertion of an unused candidate), within `budget` DP
///    evaluations.
pub(crate) fn heuristic(p: &Problem<'_>, budget: usize) -> Option<Solution> {
    const PATIENCE: usize = 8;
    let max_k = p.cands.len().min(p.n_layers as usize);
    let by_speed: Vec<usize> = (0..p.cands.len()).collect();
    let mut by_head = by_speed.clone();
    by_head.sort_by(|&a, &b| {
        (p.entry_latency(a) + p.exit_latency(a))
            .total_cmp(&(p.entry_latency(b) + p.exit_latency(b)))
    });
    let mut best: Option<Solution> = None;
    for ranking in [&by_speed, &by_head] {
        let mut since_best = 0;
        for k in 1..=max_k {
            let chain = nearest_neighbour_chain(p, &ranking[..k]);
            let reversed: Vec<usize> = chain.iter().rev().copied().collect();
            let mut improved = false;
            for order in [chain, reversed] {
                if let Some(split) = best_split(p, &order) {
                    if best
                        .as_ref()
                        .is_none_or(|b| split.cost.better_than(b.split.cost))
                    {
                        best = Some(Solution { order, split });
                        improved = true;
                    }
                }
            }
            if improved {
                since_best = 0;
            } else if best.is_some() {
                since_best += 1;
                if since_best >= PATIENCE {
                    break;
                }
            }
        }
    }
    let best = best?;
    Some(improve(p, best, budget))
}

/// Orders `members` starting at the one cheapest to reach from the head node (the head
/// node itself when it is a member), then repeatedly the nearest unvisited member.
fn nearest_neighbour_chain(p: &Problem<'_>, members: &[usize]) -> Vec<usize> {
    let mut left: Vec<usize> = members.to_vec();
    let mut order: Vec<usize> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let cost = |c: usize| match order.last() {
            None => p.entry_latency(c),
            Some(&prev) => p.hop_latency(prev, c),
        };
        let mut at = 0;
        for (i, &c) in left.iter().enumerate() {
            if cost(c) < cost(left[at]) {
                at = i;
            }
        }
        order.push(left.remove(at));
    }
    order
}

fn improve(p: &Problem<'_>, mut best: Solution, budget: usize) -> Solution {
    const REPLACEMENTS: usize = 8;
    let mut evals = 0;
    'outer: loop {
        for order in neighbourhood(p, &best.order, REPLACEMENTS) {
            if evals >= budget {
                break 'outer;
            }
            evals += 1;
            // Only a lower value moves the search: walking plateaus of equal value for a
            // better tie-breaker would spend the whole budget on large fleets.
            if let Some(split) = best_split(p, &order) {
                let value = Cost {
                    value: split.cost.value,
                    tie: f64::INFINITY,
                };
                if value.better_than(best.split.cost) {
                    best = Solution { order, split };
                    continue 'outer;
                }
            }
        }
        break;
    }
    best
}

/// Orders one local move away from `order`: adjacent swaps, relocations (short orders
/// only), removals; for each position, replacement by the first `replacements` unused
/// candidates by rank and by the unused ones nearest its predecessor; cheapest insertion of
/// those unused candidates.
fn neighbourhood(p: &Problem<'_>, order: &[usize], replacements: usize) -> Vec<Vec<usize>> {
    const RELOCATE_UP_TO: usize = 24;
    let k = order.len();
    let unused: Vec<usize> = (0..p.cands.len()).filter(|c| !order.contains(c)).collect();
    let mut moves: Vec<Vec<usize>> = Vec::new();
    for i in 0..k.saturating_sub(1) {
        let mut o = order.to_vec();
        o.swap(i, i + 1);
        moves.push(o);
    }
    if k <= RELOCATE_UP_TO {
        for i in 0..k {
            for j in 0..k {
                if j != i && j != i + 1 {
                    let mut o = order.to_vec();
                    let x = o.remove(i);
                    o.insert(if j > i { j - 1 } else { j }, x);
                    moves.push(o);
                }
            }
        }
    }
    if k > 1 {
        for i in 0..k {
            let mut o = order.to_vec();
            o.remove(i);
            moves.push(o);
        }
    }
    let mut inserted = Vec::new();
    for i in 0..k {
        let from = |c: usize| match i {
            0 => p.entry_latency(c),
            _ => p.hop_latency(order[i - 1], c),
        };
        let mut near = unused.clone();
        near.sort_by(|&a, &b| from(a).total_cmp(&from(b)));
        let ranked = unused.iter().take(replacements);
        let mut options: Vec<usize> = ranked
            .chain(near.iter().take(replacements / 2))
            .copied()
            .collect();
        options.dedup();
        for u in options {
            let mut o = order.to_vec();
            o[i] = u;
            moves.push(o);
            if k < p.n_layers as usize && !inserted.contains(&u) {
                inserted.push(u);
                moves.push(cheapest_insertion(p, order, u));
            }
        }
    }
    moves
}

/// Inserts `u` where it adds the least hop latency.
fn cheapest_insertion(p: &Problem<'_>, order: &[usize], u: usize) -> Vec<usize> {
    let added = |i: usize| -> f64 {
        let before = if i == 0 {
            p.entry_latency(u)
        } else {
            p.hop_latency(order[i - 1], u)
        };
        let after = order.get(i).map_or(0.0, |&n| p.hop_latency(u, n));
        let removed = match (i.checked_sub(1).map(|j| order[j]), order.get(i)) {
            (Some(a), Some(&b)) => p.hop_latency(a, b),
            (None, Some(&b)) => p.entry_latency(b),
            _ => 0.0,
        };
        before + after - removed
    };
    let mut at = 0;
    for i in 1..=order.len() {
        if added(i) < added(at) {
            at = i;
        }
    }
    let mut o = order.to_vec();
    o.insert(at, u);
    o
}
