//! Why a fleet cannot hold a model, in numbers a user can act on.

use crate::error::PlanError;
use crate::graph::{Device, DeviceGraph};
use crate::planner::head::{free_bytes, holders};
use crate::planner::PlanRequest;

/// Refuses at once, with the numbers, a fleet that cannot hold the model whatever the
/// plan: too little memory in all, or a layer larger than any device's free memory.
pub(super) fn check_totals(
    graph: &DeviceGraph,
    request: &PlanRequest,
    eligible: &[&Device],
) -> Result<(), PlanError> {
    let model = &request.model;
    let kv = model
        .kv_bytes_per_layer()
        .saturating_mul(u64::from(model.n_layers));
    let layers = model.range_bytes(0..model.n_layers).saturating_sub(kv);
    let holders = holders(graph, request);
    let head = if holders.is_empty() {
        0
    } else {
        model.output_bytes()
    };
    let mut devices: Vec<&Device> = eligible.to_vec();
    devices.extend(holders.iter().filter(|h| !request.eligible(h)));
    let available = devices
        .iter()
        .map(|d| free_bytes(d))
        .fold(0u64, u64::saturating_add);
    let budget = devices
        .iter()
        .map(|d| d.memory_bytes)
        .fold(0u64, u64::saturating_add);
    let needed = layers.saturating_add(kv).saturating_add(head);
    if needed > available {
        return Err(PlanError::InsufficientMemory {
            needed,
            available,
            layers,
            kv,
            head,
            budget,
        });
    }
    let (layer, piece) = (0..model.n_layers)
        .map(|l| (l, model.range_bytes(l..l + 1)))
        .fold((0, 0), |best, p| if p.1 > best.1 { p } else { best });
    let roomiest = eligible.iter().max_by_key(|d| free_bytes(d));
    if let Some(d) = roomiest.filter(|d| free_bytes(d) < piece) {
        return Err(PlanError::PieceTooLarge {
            piece: format!("layer {layer} with its KV cache"),
            bytes: piece,
            largest_free: free_bytes(d),
            device: d.id.clone(),
        });
    }
    Ok(())
}

/// Why no plan was found although the totals fit, in numbers.
pub(super) fn diagnose(
    graph: &DeviceGraph,
    request: &PlanRequest,
    eligible: &[&Device],
) -> PlanError {
    let model = &request.model;
    let can_split = request.head_node.is_some() && request.config.allow_slices;
    if !can_split {
        if let Some(h) = holders(graph, request)
            .into_iter()
            .find(|h| free_bytes(h) < model.output_bytes())
        {
            return PlanError::NoFeasiblePlan(format!(
                "{} serves the API but has {} free for the whole output head of {}, and the \
                 head cannot be split without a head node",
                h.id,
                size(free_bytes(h)),
                size(model.output_bytes())
            ));
        }
    }
    let free: Vec<String> = eligible
        .iter()
        .map(|d| format!("{} {}", d.id, size(free_bytes(d))))
        .collect();
    PlanError::NoFeasiblePlan(format!(
        "the devices have room in total, but no order of them fits every stage (up to {} \
         per layer with its KV cache, the output head {}) over usable links; free memory \
         after overheads: {}",
        size(model.layer_memory_bytes()),
        size(model.output_bytes()),
        free.join(", ")
    ))
}

/// Bytes in MiB when there are that many, else in bytes.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{bytes} B")
    }
}
