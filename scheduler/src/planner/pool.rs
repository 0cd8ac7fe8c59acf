//! The candidates the large-fleet heuristic searches.

use crate::graph::{Device, DeviceGraph};
use crate::planner::head::Layout;
use crate::planner::PlanRequest;

/// Picks the devices the large-fleet heuristic considers: the best-ranked by effective
/// per-layer cost (then more memory, then id for determinism), enough to hold the model
/// with room to spare and to give one layer per stage; then the head node and its nearest
/// neighbours, since hops to and from the head node are paid on every token.
pub(super) fn candidate_pool<'g>(
    graph: &DeviceGraph,
    request: &PlanRequest,
    layout: &Layout,
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
    let per_layer = request.model.layer_memory_bytes().max(1);
    let n_layers = request.model.n_layers as usize;
    let mut held = 0usize;
    let mut to_fit = devices.len();
    for (i, d) in devices.iter().enumerate() {
        let fit = layout.free_for_layers(request, d) / per_layer;
        held += usize::try_from(fit).unwrap_or(usize::MAX).min(n_layers);
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
