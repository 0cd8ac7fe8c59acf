//! Rebalancing in place: the plan that moves the fewest layers of the current one while
//! coming within a tolerance of the best plan the fleet allows.
//!
//! A straggler's replan should cost a few layers' reload, not a new pipeline: a stage at
//! half speed keeps the share of layers it can still run without slowing the token by more
//! than the tolerance, rather than being planned out (an eviction is for dead devices).

use std::ops::Range;

use crate::error::PlanError;
use crate::graph::{Device, DeviceGraph};
use crate::plan::Plan;
use crate::planner::head::{Layout, Placement};
use crate::planner::price::price;
use crate::planner::problem::{Cost, Problem};
use crate::planner::{plan, PlanRequest};

/// Most idle devices tried as an extra stage when the current stages alone cannot come
/// within the tolerance (the fastest first).
const EXTRA_CANDIDATES: usize = 4;

/// The plan that moves the fewest of `current`'s layers among those whose objective is
/// within `tolerance` (a fraction, e.g. 0.15) of the best plan ([`plan`]) for `request`.
///
/// A layer moves when the device running it changes. The current stages are tried first
/// (devices gone or excluded are dropped), then with one idle device inserted anywhere;
/// when neither comes within the tolerance with fewer moves than the best plan itself, the
/// best plan. The output head stays where `current` has it while its stages are kept.
pub fn rebalance(
    graph: &DeviceGraph,
    request: &PlanRequest,
    current: &Plan,
    tolerance: f64,
) -> Result<Plan, PlanError> {
    if !(tolerance.is_finite() && tolerance >= 0.0) {
        return Err(PlanError::InvalidRequest(
            "tolerance must be finite and >= 0",
        ));
    }
    let best = plan(graph, request)?;
    let allowed = best.objective_ms() * (1.0 + tolerance) + 1e-9 * best.objective_ms().max(1.0);
    let Some((layout, placement)) = keep_head(graph, request, current) else {
        return Ok(best);
    };
    // The current stages that can still run, with the layers they have.
    let kept: Vec<(&Device, Range<u32>)> = current
        .stages
        .iter()
        .filter_map(|s| {
            let d = graph.device(&s.device).filter(|d| request.eligible(d))?;
            Some((d, s.layers.clone()))
        })
        .collect();
    let fits = |p: &Plan| p.objective_ms() <= allowed;
    let fresh = moved_layers(current, &best);
    if let Some(p) = fewest(graph, request, &layout, &placement, &kept, &fits) {
        return Ok(if p.0 <= fresh { p.1 } else { best });
    }
    let mut idle: Vec<&Device> = graph
        .devices()
        .filter(|d| request.eligible(d) && !kept.iter().any(|k| k.0.id == d.id))
        .collect();
    idle.sort_by(|a, b| a.decode_ms_per_layer.total_cmp(&b.decode_ms_per_layer));
    let mut found: Option<(usize, Plan)> = None;
    for extra in idle.into_iter().take(EXTRA_CANDIDATES) {
        for at in 0..=kept.len() {
            let mut order = kept.clone();
            order.insert(at, (extra, 0..0));
            if let Some(p) = fewest(graph, request, &layout, &placement, &order, &fits) {
                let better = found.as_ref().is_none_or(|f| {
                    p.0 < f.0 || (p.0 == f.0 && p.1.objective_ms() < f.1.objective_ms())
                });
                if better {
                    found = Some(p);
                }
            }
        }
    }
    Ok(match found {
        Some((moved, p)) if moved <= fresh => p,
        _ => best,
    })
}

/// Layers whose device differs between two plans (a layer only one of them has counts).
fn moved_layers(a: &Plan, b: &Plan) -> usize {
    let n = a
        .stages
        .iter()
        .chain(&b.stages)
        .map(|s| s.layers.end)
        .max()
        .unwrap_or(0);
    (0..n)
        .filter(|&l| {
            let owner = |p: &Plan| p.stage_of_layer(l).map(|s| s.device.clone());
            owner(a) != owner(b)
        })
        .count()
}

/// The current plan's output head placement and the layout that keeps its memory and work
/// where they are; `None` when its slices' devices are gone.
fn keep_head<'g>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
    current: &Plan,
) -> Option<(Layout, Placement<'g>)> {
    if current.slices.is_empty() {
        return Some((Layout::whole(), Placement::Whole));
    }
    let mut rows = Vec::with_capacity(current.slices.len());
    for s in &current.slices {
        let device = graph.device(&s.device).filter(|d| request.eligible(d))?;
        rows.push((device, s.rows.end.saturating_sub(s.rows.start)));
    }
    Some((Layout::around(current, request), Placement::Sliced(rows)))
}

/// Over these devices in this order (each with the layers it runs now), the split that
/// moves the fewest layers and passes `fits`, with the number it moves.
fn fewest<'g>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
    layout: &Layout,
    placement: &Placement<'_>,
    order: &[(&'g Device, Range<u32>)],
    fits: &dyn Fn(&Plan) -> bool,
) -> Option<(usize, Plan)> {
    if order.is_empty() || order.len() > request.model.n_layers as usize {
        return None;
    }
    let devices: Vec<&Device> = order.iter().map(|o| o.0).collect();
    let old: Vec<Range<u32>> = order.iter().map(|o| o.1.clone()).collect();
    let problem = Problem::new(graph, request, devices.clone(), layout);
    if !problem
        .network_cost(&(0..devices.len()).collect::<Vec<_>>())
        .is_finite()
    {
        return None;
    }
    fewest_moves(&problem, &old)
        .into_iter()
        .enumerate()
        .filter_map(|(moved, split)| Some((moved, split?.1)))
        .find_map(|(moved, counts)| {
            let stages: Vec<(&Device, u32)> = devices.iter().copied().zip(counts).collect();
            let p = price(graph, request, &stages, placement).ok()?;
            fits(&p).then_some((moved, p))
        })
}

/// Per number of moved layers `m`: the best compute cost of a split that moves exactly `m`
/// and its layer counts (`None` when no split does).
type ByMoves = Vec<Option<(Cost, Vec<u32>)>>;

/// The [`ByMoves`] table of `p`'s candidates (in order) starting from ranges `old`.
fn fewest_moves(p: &Problem<'_>, old: &[Range<u32>]) -> ByMoves {
    let total = p.n_layers as usize;
    let k = old.len();
    // f[m][l]: best cost of the first l layers on the devices so far, moving m of them.
    let mut f = vec![vec![Cost::IMPOSSIBLE; total + 1]; total + 1];
    f[0][0] = Cost::ZERO;
    // choice[j][m][l] = (layers device j took, moves before it).
    let mut choice = vec![vec![vec![(0u32, 0usize); total + 1]; total + 1]; k];
    for (j, range) in old.iter().enumerate() {
        let mut g = vec![vec![Cost::IMPOSSIBLE; total + 1]; total + 1];
        let top = total - (k - 1 - j);
        for l in 1..=top {
            for n in 1..=l {
                if !p.fits(j, l - n, l) {
                    break;
                }
                let start = (l - n) as u32;
                let kept = range
                    .end
                    .min(l as u32)
                    .saturating_sub(range.start.max(start));
                let moved = n - kept as usize;
                let stage = p.stage(j, n as u32);
                for m in 0..=total - moved {
                    let prev = f[m][l - n];
                    if !prev.is_possible() {
                        continue;
                    }
                    let v = p.add(prev, stage);
                    if v.better_than(g[m + moved][l]) {
                        g[m + moved][l] = v;
                        choice[j][m + moved][l] = (n as u32, m);
                    }
                }
            }
        }
        f = g;
    }
    (0..=total)
        .map(|m| {
            let cost = f[m][total];
            cost.is_possible().then(|| {
                let mut counts = vec![0u32; k];
                let (mut l, mut moves) = (total, m);
                for j in (0..k).rev() {
                    let (n, before) = choice[j][moves][l];
                    counts[j] = n;
                    l -= n as usize;
                    moves = before;
                }
                (cost, counts)
            })
        })
        .collect()
}
