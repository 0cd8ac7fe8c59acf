//! Naive partitions to compare the planner against; both use every eligible device in graph
//! order (at most one per layer).

use crate::error::PlanError;
use crate::graph::{Device, DeviceGraph};
use crate::plan::Plan;
use crate::planner::head::Layout;
use crate::planner::{evaluate_stages, PlanRequest};

/// `n_layers` split into `k` near-equal contiguous parts, larger parts first.
pub(crate) fn even_counts(n_layers: u32, k: usize) -> Vec<u32> {
    let k32 = u32::try_from(k).unwrap_or(u32::MAX).max(1);
    (0..k32)
        .map(|i| n_layers / k32 + u32::from(i < n_layers % k32))
        .collect()
}

/// Every eligible device gets the same number of layers (±1), in graph order.
pub fn even_split(graph: &DeviceGraph, request: &PlanRequest) -> Result<Plan, PlanError> {
    let devices = baseline_devices(graph, request)?;
    let counts = even_counts(request.model.n_layers, devices.len());
    let stages: Vec<(&Device, u32)> = devices.into_iter().zip(counts).collect();
    evaluate_stages(graph, request, &stages)
}

/// Every eligible device gets layers in proportion to the memory it has for them (its
/// budget beyond its overhead and any whole output head it holds; largest remainder
/// rounding, at least one layer each), in graph order.
pub fn memory_proportional_split(
    graph: &DeviceGraph,
    request: &PlanRequest,
) -> Result<Plan, PlanError> {
    let devices = baseline_devices(graph, request)?;
    let layout = if Layout::holders_fit(graph, request) {
        Layout::whole()
    } else {
        Layout::sliced(Default::default())
    };
    let free: Vec<u64> = devices
        .iter()
        .map(|d| layout.free_for_layers(request, d))
        .collect();
    let counts = proportional_counts(request.model.n_layers, &free);
    let stages: Vec<(&Device, u32)> = devices.into_iter().zip(counts).collect();
    evaluate_stages(graph, request, &stages)
}

fn baseline_devices<'g>(
    graph: &'g DeviceGraph,
    request: &PlanRequest,
) -> Result<Vec<&'g Device>, PlanError> {
    request.validate(graph)?;
    let devices: Vec<&Device> = graph
        .devices()
        .filter(|d| request.eligible(d))
        .take(request.model.n_layers as usize)
        .collect();
    if devices.is_empty() {
        return Err(PlanError::NoEligibleDevices {
            model_sha256: request.model.sha256.clone(),
        });
    }
    Ok(devices)
}

/// Largest-remainder apportionment of `n` over `weights`, each part >= 1 (needs
/// `weights.len() <= n`). All-zero weights fall back to an even split.
fn proportional_counts(n: u32, weights: &[u64]) -> Vec<u32> {
    let k = weights.len();
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 || k == 0 {
        return even_counts(n, k);
    }
    // One layer each up front, the rest by weight.
    let spare = u128::from(n.saturating_sub(u32::try_from(k).unwrap_or(u32::MAX)));
    let mut counts: Vec<u32> = Vec::with_capacity(k);
    let mut rems: Vec<(u128, usize)> = Vec::with_capacity(k);
    for (i, &w) in weights.iter().enumerate() {
        let share = spare * u128::from(w);
        // share / total <= spare <= u32::MAX.
        counts.push(1 + u32::try_from(share / total).unwrap_or(0));
        rems.push((share % total, i));
    }
    let assigned: u32 = counts.iter().sum();
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(n.saturating_sub(assigned) as usize) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_counts_cover_all_layers() {
        assert_eq!(even_counts(30, 4), vec![8, 8, 7, 7]);
        assert_eq!(even_counts(3, 3), vec![1, 1, 1]);
    }

    #[test]
    fn proportional_counts_follow_weights() {
        assert_eq!(proportional_counts(30, &[200, 100, 100]), vec![14, 8, 8]);
        assert_eq!(proportional_counts(3, &[1000, 0, 0]), vec![1, 1, 1]);
        assert_eq!(proportional_counts(4, &[0, 0]), vec![2, 2]);
        let c = proportional_counts(80, &[7, 13, 29, 1, 1]);
        assert_eq!(c.iter().sum::<u32>(), 80);
        assert!(c.iter().all(|&x| x >= 1));
    }
}
