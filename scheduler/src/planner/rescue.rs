//! The last resort for a split output head: when every layout failed because the layers
//! took the memory its vocabulary rows need, keep that memory free where the layers took it
//! and search again.
//!
//! The reserves `head::reserves` tries spread the rows over the seats by memory or by speed,
//! or keep nothing free; a fleet can need them elsewhere. For example: two seats that each
//! hold the whole product, but not it and a layer, while every pipeline must end on one of
//! them (the only devices with a link back to the head node). Spreading the rows leaves
//! neither a layer; keeping nothing lets the layers fill both. Here each failed search says
//! how many rows lacked room and which seats ran layers; each of those seats in turn keeps
//! room for more rows (the missing ones, or what one layer fewer frees), breadth-first,
//! within [`LAYOUTS`] searches ([`LARGE_FLEET_LAYOUTS`] beyond the exact search's reach).
//! Only a request that would otherwise fail pays for them.

use std::collections::{HashMap, VecDeque};

use crate::graph::Device;
use crate::plan::Plan;
use crate::planner::head::{self, Layout};
use crate::planner::problem::resolve_link;
use crate::planner::{complete, PlanRequest};
use crate::DeviceGraph;

/// Most layouts the rescue searches on a fleet within the exact search's reach: a failing
/// request costs at most this many more searches.
pub(super) const LAYOUTS: usize = 16;

/// Most layouts the rescue searches on a larger fleet, where each is a heuristic search of
/// the whole fleet (tens to hundreds of ms on 1,000 devices).
pub(super) const LARGE_FLEET_LAYOUTS: usize = 3;

/// A split-head plan found by keeping room for the rows where the layers took it, starting
/// from `first` (the layers of the layout that keeps nothing free, whose rows found no
/// room), within `budget` searches; `None` if none is found. `search` returns the stages
/// of the best layers under a layout, if any fit.
pub(super) fn rescue<'g>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
    first: Vec<(&'g Device, u32)>,
    budget: usize,
    mut search: impl FnMut(&Layout) -> Option<Vec<(&'g Device, u32)>>,
) -> Option<Plan> {
    if request.head_node.is_none() || !request.config.allow_slices {
        return None;
    }
    // Rows that do not fit the seats even without layers fit no reserve; nor do rows and
    // layers together more than the devices a pipeline can use hold.
    let model = &request.model;
    let seats = head::seats(graph, request, &HashMap::new());
    let needed = model
        .range_bytes(0..model.n_layers)
        .saturating_add(model.slice_bytes(model.vocab_size));
    if seats.iter().fold(0u64, |a, s| a + u64::from(s.cap)) < u64::from(model.vocab_size)
        || pipeline_room(graph, request) < needed
    {
        return None;
    }
    let none = HashMap::new();
    let mut queue: VecDeque<_> = wider(graph, request, &first, &none).into();
    let mut seen: Vec<_> = queue.iter().cloned().collect();
    let mut found: Option<Plan> = None;
    for _ in 0..budget {
        let Some(reserve) = queue.pop_front() else {
            break;
        };
        let layout = Layout::sliced(reserve);
        let Some(stages) = search(&layout) else {
            continue;
        };
        let Some(p) = complete(graph, request, &stages, &layout) else {
            // Once a plan is found, the layouts already queued are still tried (they are
            // as deep), none deeper.
            if found.is_none() {
                for wider in wider(graph, request, &stages, &layout.reserve) {
                    if !seen.contains(&wider) {
                        seen.push(wider.clone());
                        queue.push_back(wider);
                    }
                }
            }
            continue;
        };
        if found
            .as_ref()
            .is_none_or(|f| p.objective_ms() < f.objective_ms())
        {
            found = Some(p);
        }
    }
    found
}

/// Free bytes on the eligible devices a pipeline can use: those the head node reaches and
/// that reach it back, over usable links between eligible devices (every stage is one).
fn pipeline_room(graph: &DeviceGraph, request: &PlanRequest) -> u64 {
    let Some(head) = request.head_node.as_deref() else {
        return 0;
    };
    let eligible: Vec<&Device> = graph.devices().filter(|d| request.eligible(d)).collect();
    // Breadth-first over the devices not reached yet: each is tested once per device
    // taken, and a well-linked fleet is reached in one or two rounds.
    let reached = |forward: bool| {
        let mut reached = vec![false; eligible.len()];
        let mut left: Vec<usize> = (0..eligible.len()).collect();
        let mut queue = VecDeque::from([head]);
        while let Some(from) = queue.pop_front() {
            left.retain(|&i| {
                let id = eligible[i].id.as_str();
                let (a, b) = if forward { (from, id) } else { (id, from) };
                let linked = a == b || resolve_link(graph, request, a, b).is_some();
                if linked {
                    reached[i] = true;
                    queue.push_back(id);
                }
                !linked
            });
        }
        reached
    };
    let (there, back) = (reached(true), reached(false));
    eligible
        .iter()
        .zip(there.iter().zip(&back))
        .filter(|(_, (t, b))| **t && **b)
        .fold(0u64, |a, (d, _)| a.saturating_add(head::free_bytes(d)))
}

/// Reserves that give the rows `stages` left without room: for each seat that runs layers
/// there and could hold more rows, `reserve` with that seat keeping room for the rows it
/// holds now plus the missing ones, or only those one layer fewer would free. One layer at
/// a time lets the missing rows come from several seats that must each keep a layer (when
/// the order is fixed, or each is the only way to some device).
fn wider(
    graph: &DeviceGraph,
    request: &PlanRequest,
    stages: &[(&Device, u32)],
    reserve: &HashMap<String, u64>,
) -> Vec<HashMap<String, u64>> {
    let used = head::layer_use(request, stages);
    let now = head::seats(graph, request, &used);
    let rows_now = |id: &str| {
        now.iter()
            .find(|s| s.device.id == id)
            .map_or(0, |s| u64::from(s.cap))
    };
    let room = now.iter().fold(0u64, |a, s| a + u64::from(s.cap));
    let missing = u64::from(request.model.vocab_size).saturating_sub(room);
    if missing == 0 {
        // The rows had room: the plan failed for another reason, which memory cannot fix.
        return Vec::new();
    }
    let row_bytes = request.model.row_bytes().max(1);
    // With no layers, each seat's cap is all the rows its free memory holds.
    head::seats(graph, request, &HashMap::new())
        .into_iter()
        .filter_map(|s| {
            let id = &s.device.id;
            let &(_, n) = stages.iter().find(|(d, _)| d.id == *id)?;
            let (taken, _) = used.get(id.as_str()).copied()?;
            let have = rows_now(id);
            // What the stage's average layer would free, in rows.
            let left = head::free_bytes(s.device).saturating_sub(taken);
            let one_fewer = (left + taken / u64::from(n.max(1))) / row_bytes;
            let step = missing.min(one_fewer.saturating_sub(have)).max(1);
            let rows = (have + step).min(u64::from(s.cap));
            // rows <= cap, so the bytes fit in the seat's free memory.
            let bytes = rows * row_bytes;
            if rows <= have || reserve.get(id).is_some_and(|&r| r >= bytes) {
                return None;
            }
            let mut wider = reserve.clone();
            wider.insert(id.clone(), bytes);
            Some(wider)
        })
        .collect()
}
