//! Prices a complete assignment (stages, where the output product lives) from the graph:
//! the one place that turns the cost model into a [`Plan`], so every plan the crate returns
//! (planned, rebalanced, evaluated, baseline) carries numbers computed the same way.

use std::ops::Range;

use crate::error::PlanError;
use crate::graph::{Device, Link};
use crate::plan::{DeviceMemory, Hop, Plan, Slice, Stage};
use crate::planner::head::{holders, Placement};
use crate::planner::problem::resolve_link;
use crate::planner::PlanRequest;
use crate::DeviceGraph;

/// Turns devices in pipeline order with their layer counts, and a head placement, into a
/// checked [`Plan`].
pub(crate) fn price(
    graph: &DeviceGraph,
    req: &PlanRequest,
    stages: &[(&Device, u32)],
    placement: &Placement<'_>,
) -> Result<Plan, PlanError> {
    let model = &req.model;
    let counts: Vec<u32> = stages.iter().map(|s| s.1).collect();
    let covered = counts.iter().fold(0u32, |a, &n| a.saturating_add(n));
    if stages.is_empty() || counts.contains(&0) || covered != model.n_layers {
        return Err(PlanError::InvalidAssignment(format!(
            "stages must each take >= 1 layer and cover 0..{}, got {counts:?}",
            model.n_layers
        )));
    }
    let slow = |d: &Device| req.slowdown.get(&d.id).copied().unwrap_or(1.0);
    let mut memory = Memory::default();
    let mut out_stages = Vec::with_capacity(stages.len());
    let mut start = 0u32;
    for &(device, n) in stages {
        let layers = start..start + n;
        let s = slow(device);
        memory.add_layers(req, device, layers.clone());
        let work = f64::from(n) * device.decode_ms_per_layer * s;
        out_stages.push(Stage {
            device: device.id.clone(),
            layers: layers.clone(),
            compute_ms: device.one_stream_ms(work),
            busy_ms: device.sustained_ms(work),
            prefill_ms: f64::from(n) * device.prefill_ms_per_layer * s,
            memory_bytes: 0,
            memory_budget: device.memory_bytes,
            slowdown: s,
        });
        start = layers.end;
    }
    let head = match &req.head_node {
        Some(id) => Some(
            graph
                .device(id)
                .ok_or_else(|| PlanError::UnknownDevice(id.clone()))?,
        ),
        None => None,
    };
    let (heads, slices, head_ms, head_busy_ms) = match placement {
        Placement::Whole => {
            let holders = holders(graph, req);
            for d in &holders {
                memory.add_head(req, d);
            }
            let work = |h: &Device| h.head_decode_ms(model.head_cost_layers) * slow(h);
            let busy = head.map_or(0.0, |h| h.sustained_ms(work(h)));
            let ms = head.map_or(0.0, |h| h.one_stream_ms(work(h)));
            let ids = holders.iter().map(|d| d.id.clone()).collect();
            (ids, Vec::new(), ms, busy)
        }
        Placement::Sliced(rows) => {
            let head = head.ok_or_else(|| {
                PlanError::InvalidAssignment("vocabulary slices need a head node".into())
            })?;
            let slices = slices(graph, req, head, rows, &mut memory)?;
            let ms = slices.iter().map(|s| s.latency_ms).fold(0.0, f64::max);
            (Vec::new(), slices, ms, 0.0)
        }
    };
    let memory = memory.check()?;
    for s in &mut out_stages {
        if let Some(m) = memory.iter().find(|m| m.device == s.device) {
            s.memory_bytes = m.total_bytes;
        }
    }
    let hops = chain_hops(graph, req, stages)?;
    let compute: f64 = out_stages.iter().map(|s| s.compute_ms).sum();
    let network = hops.iter().map(|h| h.latency_ms).fold(0.0, |a, b| a + b);
    let mut plan = Plan {
        model_sha256: model.sha256.clone(),
        objective: req.objective,
        head_node: req.head_node.clone(),
        predicted_ms_per_token: compute + network + head_ms,
        bottleneck_ms: 0.0,
        predicted_prefill_ms_per_token: out_stages.iter().map(|s| s.prefill_ms).sum(),
        stages: out_stages,
        hops,
        heads,
        slices,
        head_ms,
        head_busy_ms,
        memory,
    };
    let busiest = plan
        .device_busy_ms()
        .iter()
        .map(|b| b.1)
        .fold(0.0, f64::max);
    let link = plan.hops.iter().map(|h| h.transfer_ms).fold(0.0, f64::max);
    let slice_links = slice_transfer_ms(graph, req, &plan);
    plan.bottleneck_ms = busiest.max(link).max(slice_links);
    Ok(plan)
}

/// Lays `rows` (device, row count) out as contiguous vocabulary ranges and prices each.
fn slices(
    graph: &DeviceGraph,
    req: &PlanRequest,
    head: &Device,
    rows: &[(&Device, u32)],
    memory: &mut Memory,
) -> Result<Vec<Slice>, PlanError> {
    let model = &req.model;
    let total = rows.iter().fold(0u32, |a, r| a.saturating_add(r.1));
    if total != model.vocab_size || rows.iter().any(|r| r.1 == 0) {
        return Err(PlanError::InvalidAssignment(format!(
            "vocabulary slices must each take >= 1 row and cover 0..{}, got {total} rows",
            model.vocab_size
        )));
    }
    let hidden = model.hidden_bytes_per_token;
    let result = req.config.slice_result_bytes;
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0u32;
    for &(device, n) in rows {
        if !req.eligible(device) {
            return Err(PlanError::NotEligible {
                device: device.id.clone(),
                model_sha256: model.sha256.clone(),
            });
        }
        let slowdown = req.slowdown.get(&device.id).copied().unwrap_or(1.0);
        let share = f64::from(n) / f64::from(model.vocab_size);
        let work = share * device.head_decode_ms(model.head_cost_layers) * slowdown;
        let (compute_ms, busy_ms) = (device.one_stream_ms(work), device.sustained_ms(work));
        let hops = if device.id == head.id {
            0.0
        } else {
            let link = |from: &Device, to: &Device| {
                resolve_link(graph, req, &from.id, &to.id).ok_or_else(|| PlanError::Unreachable {
                    from: from.id.clone(),
                    to: to.id.clone(),
                })
            };
            link(head, device)?.hop_ms(hidden) + link(device, head)?.hop_ms(result)
        };
        memory.add_slice(req, device, n);
        out.push(Slice {
            device: device.id.clone(),
            rows: start..start + n,
            compute_ms,
            busy_ms,
            latency_ms: hops + compute_ms,
        });
        start += n;
    }
    Ok(out)
}

/// The busiest link a slice uses per token (they are all priced already; this only
/// recovers their busy time for the bottleneck).
fn slice_transfer_ms(graph: &DeviceGraph, req: &PlanRequest, plan: &Plan) -> f64 {
    let Some(head) = plan.head_node.as_deref() else {
        return 0.0;
    };
    let busy = |from: &str, to: &str, bytes: u64| {
        resolve_link(graph, req, from, to).map_or(0.0, |l: Link| l.transfer_ms(bytes))
    };
    plan.slices
        .iter()
        .filter(|s| s.device != head)
        .map(|s| {
            busy(head, &s.device, req.model.hidden_bytes_per_token).max(busy(
                &s.device,
                head,
                req.config.slice_result_bytes,
            ))
        })
        .fold(0.0, f64::max)
}

/// Head node -> first stage, stage -> stage, last stage -> head node; each one hidden row.
fn chain_hops(
    graph: &DeviceGraph,
    req: &PlanRequest,
    stages: &[(&Device, u32)],
) -> Result<Vec<Hop>, PlanError> {
    let bytes = req.model.hidden_bytes_per_token;
    let mut path: Vec<&str> = Vec::with_capacity(stages.len() + 2);
    let head = req.head_node.as_deref();
    if let Some(h) = head.filter(|h| *h != stages[0].0.id) {
        path.push(h);
    }
    path.extend(stages.iter().map(|s| s.0.id.as_str()));
    if let Some(h) = head.filter(|h| *h != stages[stages.len() - 1].0.id) {
        path.push(h);
    }
    path.windows(2)
        .map(|w| {
            let link =
                resolve_link(graph, req, w[0], w[1]).ok_or_else(|| PlanError::Unreachable {
                    from: w[0].to_owned(),
                    to: w[1].to_owned(),
                })?;
            Ok(Hop {
                from: w[0].to_owned(),
                to: w[1].to_owned(),
                bytes,
                latency_ms: link.hop_ms(bytes),
                transfer_ms: link.transfer_ms(bytes),
            })
        })
        .collect()
}

/// Per-device memory as pieces are placed, in the order devices first appear.
#[derive(Default)]
struct Memory {
    devices: Vec<DeviceMemory>,
}

impl Memory {
    fn entry(&mut self, req: &PlanRequest, device: &Device) -> &mut DeviceMemory {
        let at = match self.devices.iter().position(|d| d.device == device.id) {
            Some(at) => at,
            None => {
                self.devices.push(DeviceMemory {
                    device: device.id.clone(),
                    overhead_bytes: device.overhead_bytes,
                    layer_bytes: 0,
                    kv_bytes: 0,
                    kv_tokens: req.model.context_tokens,
                    head_bytes: 0,
                    slice_bytes: 0,
                    total_bytes: 0,
                    budget_bytes: device.memory_bytes,
                });
                self.devices.len() - 1
            }
        };
        &mut self.devices[at]
    }

    fn add_layers(&mut self, req: &PlanRequest, device: &Device, layers: Range<u32>) {
        let model = &req.model;
        let n = u64::from(layers.end - layers.start);
        let kv = model.kv_bytes_per_layer().saturating_mul(n);
        let weights = model.range_bytes(layers).saturating_sub(kv);
        let m = self.entry(req, device);
        m.layer_bytes = m.layer_bytes.saturating_add(weights);
        m.kv_bytes = m.kv_bytes.saturating_add(kv);
    }

    fn add_head(&mut self, req: &PlanRequest, device: &Device) {
        let bytes = req.model.output_bytes();
        self.entry(req, device).head_bytes = bytes;
    }

    fn add_slice(&mut self, req: &PlanRequest, device: &Device, rows: u32) {
        let bytes = req.model.slice_bytes(rows);
        let m = self.entry(req, device);
        m.slice_bytes = m.slice_bytes.saturating_add(bytes);
    }

    /// Totals, each checked against its budget.
    fn check(self) -> Result<Vec<DeviceMemory>, PlanError> {
        self.devices
            .into_iter()
            .map(|mut m| {
                m.total_bytes = [m.overhead_bytes, m.layer_bytes, m.kv_bytes, m.head_bytes]
                    .into_iter()
                    .fold(m.slice_bytes, u64::saturating_add);
                if m.total_bytes > m.budget_bytes {
                    return Err(PlanError::StageOverBudget {
                        device: m.device,
                        needed: m.total_bytes,
                        budget: m.budget_bytes,
                    });
                }
                Ok(m)
            })
            .collect()
    }
}
