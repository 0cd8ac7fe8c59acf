//! The partition planner: which devices, in which order, run which layers, and where the
//! output product lives.
//!
//! Cost model (per decode token; `profile.rs` holds the memory side):
//! - stage compute = layers × measured ms per layer × slowdown;
//! - the output product: whole on the head node (its measured `head_ms`, else
//!   `head_cost_layers` × its ms per layer), or split in vocabulary slices computed in
//!   parallel, each paying the hidden state's hop there and its small result's hop back;
//! - hop = rtt/2 + bytes/bandwidth over the measured link of that ordered pair, or
//!   [`PlannerConfig::default_link`] for an unmeasured pair, never over a pair reported
//!   down: one hidden state head -> first stage, stage -> stage, last stage -> head; hops
//!   from or to the head node itself cost nothing;
//! - latency objective = Σ stage compute + Σ hops + output product; throughput objective =
//!   the busiest device (layers + slices + a whole head) or link. Ties go to the split whose
//!   busiest stage is least busy (latency) or whose sum is least (throughput), so equal
//!   devices get equal shares.
//!
//! Search: for each head layout (whole, or split with some memory kept free for slices),
//! DP over split points for each order (`dp.rs`); exact branch-and-bound over all ordered
//! subsets up to [`PlannerConfig::exact_limit`] eligible devices, a ranked scan with local
//! improvement above (`search.rs`); slices are then water-filled into what the layers left
//! (`head.rs`) and every candidate is priced by one function (`price.rs`). When every
//! layout fails, memory is kept free for the rows where the layers took it and the layers
//! searched again (`rescue.rs`).

mod baseline;
mod dp;
mod head;
mod moves;
mod pool;
mod price;
mod problem;
mod rescue;
mod search;
mod why;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use baseline::{even_split, memory_proportional_split};
pub use moves::rebalance;

use crate::error::PlanError;
use crate::graph::{Device, DeviceGraph, Link};
use crate::plan::{Objective, Plan};
use crate::profile::ModelProfile;
use head::{Layout, Placement};
use pool::candidate_pool;
use price::price;
use problem::Problem;
use rescue::rescue;
use why::{check_totals, diagnose};

/// Bytes a vocabulary slice sends back to the head per token by default: its maximum and
/// log-sum-exp (f32 each) and 64 candidates (token id and logit, 4 + 4 bytes).
pub const SLICE_RESULT_BYTES: u64 = 8 + 64 * 8;

/// The link assumed between devices whose link has not been measured: a switched 100 Mbit/s
/// LAN hop. `shoal plan` and the coordinator both default to it.
pub const ASSUMED_LAN: Link = Link {
    rtt_ms: 0.5,
    bandwidth_bytes_per_s: 12.5e6,
};

/// A split output product must beat the whole one by this fraction to be chosen: each
/// slice is one more thing to load, to lose and to wait for, and the measured costs it is
/// judged by are noisier than that.
const SLICE_GAIN: f64 = 0.02;

/// Planner knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Up to this many eligible devices, search all ordered subsets exactly.
    pub exact_limit: usize,
    /// Cost of a hop between devices with no measured link; `None` makes them unreachable.
    /// A link reported down is never priced with it.
    pub default_link: Option<Link>,
    /// Bytes a vocabulary slice returns to the head per token.
    pub slice_result_bytes: u64,
    /// Whether the output product may be split into vocabulary slices.
    pub allow_slices: bool,
    /// DP evaluations the large-fleet local search may spend.
    pub search_budget: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            exact_limit: 8,
            default_link: None,
            slice_result_bytes: SLICE_RESULT_BYTES,
            allow_slices: true,
            search_budget: 2000,
        }
    }
}

/// Everything a planning call needs besides the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The model to place.
    pub model: ModelProfile,
    /// What to minimize.
    pub objective: Objective,
    /// The head the prediction is for: it embeds, runs or gathers the output product and
    /// samples (it may or may not run layers itself). It holds a head whether or not its
    /// advert says it serves the API.
    pub head_node: Option<String>,
    /// Per-device factor on measured cost (from the straggler monitor), default 1.0.
    pub slowdown: BTreeMap<String, f64>,
    /// Devices that must get nothing (evicted).
    pub exclude: BTreeSet<String>,
    /// Knobs.
    pub config: PlannerConfig,
}

impl PlanRequest {
    /// A latency-objective request with default knobs and no head node.
    pub fn new(model: ModelProfile) -> Self {
        Self {
            model,
            objective: Objective::Latency,
            head_node: None,
            slowdown: BTreeMap::new(),
            exclude: BTreeSet::new(),
            config: PlannerConfig::default(),
        }
    }

    fn validate(&self, graph: &DeviceGraph) -> Result<(), PlanError> {
        self.model.validate()?;
        if self.slowdown.values().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(PlanError::InvalidRequest(
                "slowdown factors must be positive and finite",
            ));
        }
        if let Some(h) = &self.head_node {
            if graph.device(h).is_none() {
                return Err(PlanError::UnknownDevice(h.clone()));
            }
        }
        Ok(())
    }

    pub(crate) fn eligible(&self, device: &Device) -> bool {
        device.holds(&self.model.sha256) && !self.exclude.contains(&device.id)
    }
}

/// Finds the plan minimizing the request's objective.
pub fn plan(graph: &DeviceGraph, request: &PlanRequest) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let eligible: Vec<&Device> = graph.devices().filter(|d| request.eligible(d)).collect();
    if eligible.is_empty() {
        return Err(PlanError::NoEligibleDevices {
            model_sha256: request.model.sha256.clone(),
        });
    }
    check_totals(graph, request, &eligible)?;
    // Beyond the exact search's reach, split heads get one layout, no refinement and a
    // short rescue: each is a whole heuristic search of a large fleet.
    let large = eligible.len() > request.config.exact_limit;
    let (rounds, budget) = if large {
        (0, rescue::LARGE_FLEET_LAYOUTS)
    } else {
        (REFINE_ROUNDS, rescue::LAYOUTS)
    };
    let mut first = None;
    let candidates = layouts(graph, request, !large)
        .into_iter()
        .filter_map(|layout| {
            let stages = search_layout(graph, request, &eligible, &layout)?;
            let Some(best) = complete(graph, request, &stages, &layout) else {
                if layout.is_layers_first() {
                    first = Some(stages);
                }
                return None;
            };
            Some(refine(graph, request, &eligible, best, rounds))
        });
    choose(candidates)
        .or_else(|| {
            let rescued = rescue(graph, request, first?, budget, |layout| {
                search_layout(graph, request, &eligible, layout)
            })?;
            Some(refine(graph, request, &eligible, rescued, rounds))
        })
        .ok_or_else(|| diagnose(graph, request, &eligible))
}

/// Layers and slices compete for memory and (for throughput) for the same device's time:
/// searches the layers again around the slices of `best`, while that helps.
fn refine<'g>(
    graph: &'g DeviceGraph,
    request: &'g PlanRequest,
    eligible: &[&'g Device],
    mut best: Plan,
    rounds: usize,
) -> Plan {
    for _ in 0..rounds {
        if best.slices.is_empty() {
            break;
        }
        let around = Layout::around(&best, request);
        let Some(next) = search_layout(graph, request, eligible, &around)
            .and_then(|stages| complete(graph, request, &stages, &around))
            .filter(|p| p.objective_ms() < best.objective_ms())
        else {
            break;
        };
        best = next;
    }
    best
}

/// Rounds of searching layers around the slices of the best split-head plan so far.
const REFINE_ROUNDS: usize = 3;

/// Most devices whose orders a split-head layout searches exactly.
const SLICED_EXACT_LIMIT: usize = 5;

/// Best split of the model over exactly these devices in this order. Used to rebalance in
/// place: layers move between the current stages only, so little has to be reloaded.
pub fn plan_in_order(
    graph: &DeviceGraph,
    request: &PlanRequest,
    order: &[&str],
) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let devices = resolve(graph, request, order.iter().copied())?;
    let idx: Vec<usize> = (0..devices.len()).collect();
    let split = |layout: &Layout| {
        let problem = Problem::new(graph, request, devices.clone(), layout);
        let split = dp::best_split(&problem, &idx)?;
        Some(problem.stages(&idx, &split.counts))
    };
    let mut first = None;
    let candidates = layouts(graph, request, true)
        .into_iter()
        .filter_map(|layout| {
            let stages = split(&layout)?;
            let plan = complete(graph, request, &stages, &layout);
            if plan.is_none() && layout.is_layers_first() {
                first = Some(stages);
            }
            plan
        });
    let best =
        choose(candidates).or_else(|| rescue(graph, request, first?, rescue::LAYOUTS, split));
    if let Some(plan) = best {
        return Ok(plan);
    }
    // Surface the concrete reason (missing link, memory) by pricing an even split.
    let even = baseline::even_counts(request.model.n_layers, devices.len());
    let stages: Vec<(&Device, u32)> = devices.iter().copied().zip(even).collect();
    evaluate_stages(graph, request, &stages).and(Err(PlanError::NoFeasiblePlan(
        "these devices cannot hold the model in this order".into(),
    )))
}

/// Prices an explicit assignment: devices in pipeline order with the number of layers each
/// runs. The output product goes where the planner would put it for these stages. Fails if
/// the stages do not cover all layers, overflow a memory budget or cross an unusable link.
pub fn evaluate(
    graph: &DeviceGraph,
    request: &PlanRequest,
    stages: &[(&str, u32)],
) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let devices = resolve(graph, request, stages.iter().map(|s| s.0))?;
    let stages: Vec<(&Device, u32)> = devices
        .into_iter()
        .zip(stages.iter().map(|s| s.1))
        .collect();
    evaluate_stages(graph, request, &stages)
}

pub(crate) fn evaluate_stages(
    graph: &DeviceGraph,
    request: &PlanRequest,
    stages: &[(&Device, u32)],
) -> Result<Plan, PlanError> {
    let whole = price(graph, request, stages, &Placement::Whole);
    let sliced = (request.head_node.is_some() && request.config.allow_slices)
        .then(|| {
            let placement = place_slices(graph, request, stages)?;
            price(graph, request, stages, &placement).ok()
        })
        .flatten();
    match (whole, sliced) {
        (Ok(w), Some(s)) => Ok(prefer(w, s)),
        (Ok(w), None) => Ok(w),
        (Err(_), Some(s)) => Ok(s),
        (Err(e), None) => Err(e),
    }
}

/// The head layouts worth searching: whole when every holder can hold the product; split
/// when there is a head node to gather the slices, with every way of keeping memory for
/// them (`all_reserves`) or only the first (layers first, slices in what is left).
fn layouts(graph: &DeviceGraph, request: &PlanRequest, all_reserves: bool) -> Vec<Layout> {
    let mut out = Vec::new();
    if Layout::holders_fit(graph, request) {
        out.push(Layout::whole());
    }
    if request.head_node.is_some() && request.config.allow_slices {
        let reserves = head::reserves(graph, request);
        let keep = if all_reserves { reserves.len() } else { 1 };
        out.extend(reserves.into_iter().take(keep).map(Layout::sliced));
    }
    out
}

/// Layer counts for the best order under `layout`.
fn search_layout<'g>(
    graph: &'g DeviceGraph,
    request: &'g PlanRequest,
    eligible: &[&'g Device],
    layout: &Layout,
) -> Option<Vec<(&'g Device, u32)>> {
    let smallest = (0..request.model.n_layers)
        .map(|l| request.model.range_bytes(l..l + 1))
        .min()
        .unwrap_or(0);
    let usable: Vec<&Device> = eligible
        .iter()
        .copied()
        .filter(|d| layout.free_for_layers(request, d) >= smallest)
        .collect();
    if usable.is_empty() {
        return None;
    }
    // A split head is placed heuristically anyway, and is searched under several layouts:
    // the exact search over orders is kept for small fleets there.
    let exact_limit = if layout.whole {
        request.config.exact_limit
    } else {
        request.config.exact_limit.min(SLICED_EXACT_LIMIT)
    };
    let (problem, solution) = if usable.len() <= exact_limit {
        let problem = Problem::new(graph, request, usable, layout);
        let solution = search::exact(&problem);
        (problem, solution)
    } else {
        let pool = candidate_pool(graph, request, layout, usable);
        let problem = Problem::new(graph, request, pool, layout);
        let solution = search::heuristic(&problem, request.config.search_budget);
        (problem, solution)
    };
    let s = solution?;
    Some(problem.stages(&s.order, &s.split.counts))
}

/// The plan for these stages under `layout`: the holders' whole heads, or slices
/// water-filled into what the layers left.
fn complete(
    graph: &DeviceGraph,
    request: &PlanRequest,
    stages: &[(&Device, u32)],
    layout: &Layout,
) -> Option<Plan> {
    let placement = if layout.whole {
        Placement::Whole
    } else {
        place_slices(graph, request, stages)?
    };
    price(graph, request, stages, &placement).ok()
}

/// Vocabulary rows over the devices that can take them after `stages`' layers.
fn place_slices<'g>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
    stages: &[(&Device, u32)],
) -> Option<Placement<'g>> {
    let seats = head::seats(graph, request, &head::layer_use(request, stages));
    let rows = head::water_fill(&seats, request.model.vocab_size)?;
    let mut placed: Vec<(&Device, u32)> = seats
        .iter()
        .zip(rows)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.device, n))
        .collect();
    // The head's own rows first: they need no hop.
    placed.sort_by_key(|(d, _)| request.head_node.as_deref() != Some(d.id.as_str()));
    Some(Placement::Sliced(placed))
}

/// The cheapest plan, a split head only when it beats the best whole one by
/// [`SLICE_GAIN`].
fn choose(plans: impl IntoIterator<Item = Plan>) -> Option<Plan> {
    let mut whole: Option<Plan> = None;
    let mut sliced: Option<Plan> = None;
    for p in plans {
        let slot = if p.slices.is_empty() {
            &mut whole
        } else {
            &mut sliced
        };
        if slot
            .as_ref()
            .is_none_or(|b| p.objective_ms() < b.objective_ms())
        {
            *slot = Some(p);
        }
    }
    match (whole, sliced) {
        (Some(w), Some(s)) => Some(prefer(w, s)),
        (w, s) => w.or(s),
    }
}

/// The split-head plan if it beats the whole-head one by [`SLICE_GAIN`], else the whole one.
fn prefer(whole: Plan, sliced: Plan) -> Plan {
    if sliced.objective_ms() < whole.objective_ms() * (1.0 - SLICE_GAIN) {
        sliced
    } else {
        whole
    }
}

pub(crate) fn resolve<'g, 's>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
    ids: impl Iterator<Item = &'s str>,
) -> Result<Vec<&'g Device>, PlanError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in ids {
        let device = graph
            .device(id)
            .ok_or_else(|| PlanError::UnknownDevice(id.to_owned()))?;
        if !request.eligible(device) {
            return Err(PlanError::NotEligible {
                device: id.to_owned(),
                model_sha256: request.model.sha256.clone(),
            });
        }
        if !seen.insert(id) {
            return Err(PlanError::InvalidAssignment(format!("{id} used twice")));
        }
        out.push(device);
    }
    if out.is_empty() {
        return Err(PlanError::InvalidAssignment("no stages".into()));
    }
    Ok(out)
}
