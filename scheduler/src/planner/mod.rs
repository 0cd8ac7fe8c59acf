//! The partition planner: which devices, in which order, run which layers.
//!
//! Cost model (per decode token):
//! - stage compute = (layers + head_cost_layers if it runs the head) × measured ms per layer
//!   × slowdown; the embedding lookup is free;
//! - hop = rtt/2 + bytes/bandwidth: a token id (4 B) from the head node to the first stage,
//!   the hidden state between stages, and the return payload (logits or a token id) from the
//!   last stage back to the head node; hops from/to the head node itself cost nothing;
//! - latency objective = Σ compute + Σ hops; throughput objective = max over stage compute
//!   and link busy time (bytes/bandwidth).
//!
//! Memory per stage = layers × (weights + KV for the reserved context) + embedding (first
//! stage) + head weights (last stage; the embedding table again when tied and the last
//! stage is not the first) + a fixed overhead.
//!
//! Search: DP over split points for each order (`dp.rs`); exact branch-and-bound over all
//! ordered subsets up to [`PlannerConfig::exact_limit`] eligible devices, a ranked scan with
//! local improvement above (`search.rs`).

mod baseline;
mod dp;
mod problem;
mod search;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use baseline::{even_split, memory_proportional_split};

use crate::error::PlanError;
use crate::graph::{Device, DeviceGraph, Link};
use crate::plan::{Objective, Plan};
use crate::profile::{ModelProfile, Role};
use problem::{layer_capacity, Problem};

/// What the last stage sends back to the head node per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReturnPayload {
    /// f32 logits over the vocabulary; the head node samples.
    #[default]
    Logits,
    /// A sampled token id; the last stage samples with the request's parameters.
    TokenId,
    /// The last layer's hidden state (one row of `hidden_bytes_per_token`); the head node
    /// runs the final norm and output head itself. What Shoal's pipeline sends.
    Hidden,
}

/// Planner knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Bytes reserved on every stage for scratch buffers and runtime.
    pub overhead_bytes: u64,
    /// Up to this many eligible devices, search all ordered subsets exactly.
    pub exact_limit: usize,
    /// Cost of a hop between devices with no measured link; `None` makes them unreachable.
    pub default_link: Option<Link>,
    /// What the last stage returns to the head node.
    pub return_payload: ReturnPayload,
    /// DP evaluations the large-fleet local search may spend.
    pub search_budget: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            overhead_bytes: 64 << 20,
            exact_limit: 8,
            default_link: None,
            return_payload: ReturnPayload::Logits,
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
    /// The node that feeds tokens and samples (may or may not run layers itself).
    pub head_node: Option<String>,
    /// Per-device factor on measured cost (from the straggler monitor), default 1.0.
    pub slowdown: BTreeMap<String, f64>,
    /// Devices that must get no layers (evicted).
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

    fn eligible(&self, device: &Device) -> bool {
        device.holds(&self.model.sha256) && !self.exclude.contains(&device.id)
    }
}

/// Finds the plan minimizing the request's objective.
pub fn plan(graph: &DeviceGraph, request: &PlanRequest) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let holders: Vec<&Device> = graph.devices().filter(|d| request.eligible(d)).collect();
    if holders.is_empty() {
        return Err(PlanError::NoEligibleDevices {
            model_sha256: request.model.sha256.clone(),
        });
    }
    let needed = request
        .model
        .total_bytes()
        .saturating_add(request.config.overhead_bytes);
    let available = holders
        .iter()
        .fold(0u64, |a, d| a.saturating_add(d.memory_bytes));
    let plain = Role {
        embed: false,
        head: false,
    };
    let mut usable: Vec<&Device> = holders
        .into_iter()
        .filter(|d| layer_capacity(d, request, plain) > 0)
        .collect();
    if available < needed || usable.is_empty() {
        return Err(PlanError::InsufficientMemory { needed, available });
    }
    let solution = if usable.len() <= request.config.exact_limit {
        let problem = Problem::new(graph, request, usable);
        search::exact(&problem).map(|s| problem.build_plan(&s.order, &s.split.counts))
    } else {
        usable = candidate_pool(graph, request, usable);
        let problem = Problem::new(graph, request, usable);
        search::heuristic(&problem, request.config.search_budget)
            .map(|s| problem.build_plan(&s.order, &s.split.counts))
    };
    solution.unwrap_or(Err(PlanError::NoFeasiblePlan(
        "no order of devices fits every stage in memory over reachable links",
    )))
}

/// Best split of the model over exactly these devices in this order. Used to rebalance in
/// place: layers move between the current stages only (typically a few to a straggler's
/// neighbours), so little has to be reloaded.
pub fn plan_in_order(
    graph: &DeviceGraph,
    request: &PlanRequest,
    order: &[&str],
) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let devices = resolve(graph, request, order.iter().copied())?;
    let problem = Problem::new(graph, request, devices);
    let idx: Vec<usize> = (0..order.len()).collect();
    match dp::best_split(&problem, &idx) {
        Some(split) => problem.build_plan(&idx, &split.counts),
        // Surface the concrete reason (missing link, memory) by building the plan of an
        // even split, falling back to a generic error if that happens to be valid.
        None => {
            let even = baseline::even_counts(request.model.n_layers, order.len());
            problem
                .build_plan(&idx, &even)
                .and(Err(PlanError::NoFeasiblePlan(
                    "these devices cannot hold the model in this order",
                )))
        }
    }
}

/// Prices an explicit assignment: devices in pipeline order with the number of layers each
/// runs. Fails if it does not cover all layers, overflows a memory budget or crosses a
/// missing link.
pub fn evaluate(
    graph: &DeviceGraph,
    request: &PlanRequest,
    stages: &[(&str, u32)],
) -> Result<Plan, PlanError> {
    request.validate(graph)?;
    let devices = resolve(graph, request, stages.iter().map(|s| s.0))?;
    let problem = Problem::new(graph, request, devices);
    let idx: Vec<usize> = (0..stages.len()).collect();
    let counts: Vec<u32> = stages.iter().map(|s| s.1).collect();
    problem.build_plan(&idx, &counts)
}

fn resolve<'g, 's>(
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

/// Picks the devices the large-fleet heuristic considers: the best-ranked by effective
/// per-layer cost (then more memory, then id for determinism), enough to hold the model
/// with room to spare and to give one layer per stage; then the head node and its nearest
/// neighbours, since hops to and from the head node are paid on every token.
fn candidate_pool<'g>(
    graph: &DeviceGraph,
    request: &PlanRequest,
    mut devices: Vec<&'g Device>,
) -> Vec<&'g Device> {
    const SPARE: usize = 16;
    const NEAR_HEAD: usize = 32;
    let slow = |d: &Device| request.slowdown.get(&d.id).copied().unwrap_or(1.0);
    devices.sort_by(|a, b| {
        (a.decode_ms_per_layer * slow(a))
            .total_cmp(&(b.decode_ms_per_layer * slow(b)))
            .then(b.memory_bytes.cmp(&a.memory_bytes))
            .then(a.id.cmp(&b.id))
    });
    let plain = Role {
        embed: false,
        head: false,
    };
    let n_layers = request.model.n_layers as usize;
    let mut held = 0usize;
    let mut to_fit = devices.len();
    for (i, d) in devices.iter().enumerate() {
        held += layer_capacity(d, request, plain) as usize;
        if held >= n_layers {
            to_fit = i + 1;
            break;
        }
    }
    let size = to_fit.max(n_layers).saturating_add(SPARE);
    let (mut pool, rest) = if devices.len() > size {
        let rest = devices.split_off(size);
        (devices, rest)
    } else {
        (devices, Vec::new())
    };
    if let Some(head) = request.head_node.as_deref() {
        let mut near: Vec<(f64, &'g Device)> = rest
            .iter()
            .filter_map(|d| {
                if d.id == head {
                    return Some((-1.0, *d));
                }
                graph.link(head, &d.id).map(|l| (l.rtt_ms, *d))
            })
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        pool.extend(near.into_iter().take(NEAR_HEAD + 1).map(|(_, d)| d));
    }
    pool
}
