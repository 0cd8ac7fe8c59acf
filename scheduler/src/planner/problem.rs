//! A planning problem reduced to numbers: candidate devices with the memory they have left
//! for layers and their per-layer costs, dense hop-cost tables between them and the head
//! node, and what every plan of the layout pays regardless of the split.
//!
//! Searches work on candidate indices only; graph lookups happen once, here. The final
//! plan is priced again from the graph by `price.rs`, with the same cost model.

use std::collections::HashMap;

use crate::graph::{Device, Link, LinkState};
use crate::plan::Objective;
use crate::planner::head::Layout;
use crate::planner::PlanRequest;
use crate::DeviceGraph;

/// Stand-in for "impossible" in cost tables; arithmetic on it stays infinite.
pub(crate) const INF: f64 = f64::INFINITY;

/// An objective value and the tie-breaker among equal values: the busiest stage under the
/// latency objective (so equal sums prefer balanced splits), the sum under throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cost {
    pub(crate) value: f64,
    pub(crate) tie: f64,
}

impl Cost {
    pub(crate) const ZERO: Cost = Cost {
        value: 0.0,
        tie: 0.0,
    };
    pub(crate) const IMPOSSIBLE: Cost = Cost {
        value: INF,
        tie: INF,
    };

    /// Lower value, or an equal value (to rounding) with a lower tie-breaker. Costs are
    /// non-negative; this runs in the DP's innermost loop, so it stays branch-light.
    #[inline]
    pub(crate) fn better_than(self, other: Cost) -> bool {
        if other.value == INF {
            return self.value < INF;
        }
        let eps = 1e-9 * other.value.max(1.0);
        if self.value + eps < other.value {
            return true;
        }
        if self.value > other.value + eps {
            return false;
        }
        self.tie + 1e-9 * other.tie.max(1.0) < other.tie
    }

    pub(crate) fn is_possible(self) -> bool {
        self.value < INF
    }
}

/// One device the planner may give layers.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<'a> {
    pub(crate) device: &'a Device,
    /// Decode ms of one layer after slowdown, under load (the throughput rate).
    pub(crate) unit_ms: f64,
    /// Decode ms of one layer after slowdown at full speed: the least a layer can cost one
    /// stream (a lower bound for searches).
    pub(crate) floor_ms: f64,
    /// Bytes left for layers and their KV: budget - overhead - whole head - slice reserve.
    pub(crate) free: u64,
    /// Busy ms per token besides layers (the whole output product on the head node).
    pub(crate) extra_ms: f64,
    /// Whether a CPU quota makes one stream's cost other than `layers × floor_ms`.
    quota: bool,
}

/// Dense costs for a list of candidates under one layout.
#[derive(Debug)]
pub(crate) struct Problem<'a> {
    pub(crate) req: &'a PlanRequest,
    pub(crate) n_layers: u32,
    pub(crate) cands: Vec<Candidate<'a>>,
    /// `prefix[l]`: weight bytes of layers `0..l`.
    prefix: Vec<u64>,
    kv_per_layer: u64,
    /// `k * k` one-way latency of a hidden state between candidates (INF: unreachable).
    hop_lat: Vec<f64>,
    /// `k * k` link busy time of a hidden state.
    hop_xfer: Vec<f64>,
    entry_lat: Vec<f64>,
    entry_xfer: Vec<f64>,
    exit_lat: Vec<f64>,
    exit_xfer: Vec<f64>,
    /// Latency every plan of the layout pays besides layers and chain hops.
    fixed_latency: f64,
    /// Busy time every plan of the layout has on some device regardless of its layers.
    fixed_busy: f64,
}

/// Combines two costs under an objective: sum for latency, max for throughput.
pub(crate) fn combine(objective: Objective, a: f64, b: f64) -> f64 {
    match objective {
        Objective::Latency => a + b,
        Objective::Throughput => a.max(b),
    }
}

/// The link a hop from `from` to `to` uses: the measured one, the request's default when
/// the pair was never measured, none when it is down.
pub(crate) fn resolve_link(
    graph: &DeviceGraph,
    req: &PlanRequest,
    from: &str,
    to: &str,
) -> Option<Link> {
    match graph.link_state(from, to) {
        Some(LinkState::Up(link)) => Some(link),
        Some(LinkState::Down) => None,
        None => req.config.default_link,
    }
}

impl<'a> Problem<'a> {
    /// Builds tables for `devices` (in the given order) against `graph` under `layout`.
    pub(crate) fn new(
        graph: &'a DeviceGraph,
        req: &'a PlanRequest,
        devices: Vec<&'a Device>,
        layout: &Layout,
    ) -> Self {
        let model = &req.model;
        let head = req.head_node.as_deref();
        let (head_ms, head_busy_ms) = layout.whole_head_ms(graph, req);
        let cands: Vec<Candidate<'a>> = devices
            .into_iter()
            .map(|device| {
                let slowdown = req.slowdown.get(&device.id).copied().unwrap_or(1.0);
                Candidate {
                    device,
                    unit_ms: device.sustained_ms(device.decode_ms_per_layer * slowdown),
                    floor_ms: device.decode_ms_per_layer * slowdown,
                    quota: device.sustained_ms(1.0) != 1.0,
                    free: layout.free_for_layers(req, device),
                    extra_ms: layout.busy.get(&device.id).copied().unwrap_or(0.0)
                        + if Some(device.id.as_str()) == head {
                            head_busy_ms
                        } else {
                            0.0
                        },
                }
            })
            .collect();
        let k = cands.len();
        let mut prefix = Vec::with_capacity(model.n_layers as usize + 1);
        prefix.push(0u64);
        for l in 0..model.n_layers {
            let last = prefix[prefix.len() - 1];
            prefix.push(last.saturating_add(model.layer_weight_bytes(l)));
        }
        let edge = if head.is_some() { INF } else { 0.0 };
        let mut p = Problem {
            req,
            n_layers: model.n_layers,
            prefix,
            kv_per_layer: model.kv_bytes_per_layer(),
            hop_lat: vec![INF; k * k],
            hop_xfer: vec![INF; k * k],
            entry_lat: vec![edge; k],
            entry_xfer: vec![edge; k],
            exit_lat: vec![edge; k],
            exit_xfer: vec![edge; k],
            fixed_latency: head_ms,
            fixed_busy: head_busy_ms,
            cands,
        };
        p.fill_links(graph, head);
        p
    }

    fn fill_links(&mut self, graph: &DeviceGraph, head: Option<&str>) {
        let k = self.cands.len();
        let bytes = self.req.model.hidden_bytes_per_token;
        let pos: HashMap<&str, usize> = self
            .cands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.device.id.as_str(), i))
            .collect();
        let default = self.req.config.default_link;
        let mut known = vec![false; k * k];
        for i in 0..k {
            for (other, state) in graph.links_from(&self.cands[i].device.id) {
                let Some(&j) = pos.get(other) else { continue };
                known[i * k + j] = true;
                if let LinkState::Up(link) = state {
                    self.hop_lat[i * k + j] = link.hop_ms(bytes);
                    self.hop_xfer[i * k + j] = link.transfer_ms(bytes);
                }
            }
            for j in (0..k).filter(|&j| j != i && !known[i * k + j]) {
                if let Some(link) = default {
                    self.hop_lat[i * k + j] = link.hop_ms(bytes);
                    self.hop_xfer[i * k + j] = link.transfer_ms(bytes);
                }
            }
        }
        let Some(head) = head else { return };
        for i in 0..k {
            let id = self.cands[i].device.id.as_str();
            if id == head {
                self.entry_lat[i] = 0.0;
                self.entry_xfer[i] = 0.0;
                self.exit_lat[i] = 0.0;
                self.exit_xfer[i] = 0.0;
                continue;
            }
            if let Some(link) = resolve_link(graph, self.req, head, id) {
                self.entry_lat[i] = link.hop_ms(bytes);
                self.entry_xfer[i] = link.transfer_ms(bytes);
            }
            if let Some(link) = resolve_link(graph, self.req, id, head) {
                self.exit_lat[i] = link.hop_ms(bytes);
                self.exit_xfer[i] = link.transfer_ms(bytes);
            }
        }
    }

    pub(crate) fn objective(&self) -> Objective {
        self.req.objective
    }

    /// Whether layers `start..end` fit in what candidate `c` has left.
    #[inline]
    pub(crate) fn fits(&self, c: usize, start: usize, end: usize) -> bool {
        let weights = self.prefix[end] - self.prefix[start];
        let kv = self.kv_per_layer.saturating_mul((end - start) as u64);
        weights.saturating_add(kv) <= self.cands[c].free
    }

    /// The cost of candidate `c` running `n` layers, as a term of the objective.
    #[inline]
    pub(crate) fn stage(&self, c: usize, n: u32) -> Cost {
        let cand = &self.cands[c];
        let full = f64::from(n) * cand.floor_ms;
        let one_stream = if cand.quota {
            cand.device.one_stream_ms(full)
        } else {
            full
        };
        let busy = f64::from(n) * cand.unit_ms + cand.extra_ms;
        match self.objective() {
            Objective::Latency => Cost {
                value: one_stream,
                tie: busy,
            },
            Objective::Throughput => Cost {
                value: busy,
                tie: one_stream,
            },
        }
    }

    /// Adds a stage's cost to a prefix's (the tie-breaker combines the other way round).
    #[inline]
    pub(crate) fn add(&self, a: Cost, b: Cost) -> Cost {
        match self.objective() {
            Objective::Latency => Cost {
                value: a.value + b.value,
                tie: a.tie.max(b.tie),
            },
            Objective::Throughput => Cost {
                value: a.value.max(b.value),
                tie: a.tie + b.tie,
            },
        }
    }

    /// Adds split-independent network (and fixed) costs to a compute cost.
    pub(crate) fn with_network(&self, compute: Cost, network: f64) -> Cost {
        Cost {
            value: combine(self.objective(), compute.value, network),
            tie: compute.tie,
        }
    }

    /// Cost of the hop from `a` to `b` under the objective.
    pub(crate) fn hop(&self, a: usize, b: usize) -> f64 {
        let k = self.cands.len();
        match self.objective() {
            Objective::Latency => self.hop_lat[a * k + b],
            Objective::Throughput => self.hop_xfer[a * k + b],
        }
    }

    /// One-way latency from `a` to `b` (for ordering heuristics).
    pub(crate) fn hop_latency(&self, a: usize, b: usize) -> f64 {
        self.hop_lat[a * self.cands.len() + b]
    }

    /// Cost of feeding candidate `c` from the head node.
    pub(crate) fn entry(&self, c: usize) -> f64 {
        match self.objective() {
            Objective::Latency => self.entry_lat[c],
            Objective::Throughput => self.entry_xfer[c],
        }
    }

    /// Cost of returning from candidate `c` to the head node.
    pub(crate) fn exit(&self, c: usize) -> f64 {
        match self.objective() {
            Objective::Latency => self.exit_lat[c],
            Objective::Throughput => self.exit_xfer[c],
        }
    }

    /// Entry latency (for ordering heuristics).
    pub(crate) fn entry_latency(&self, c: usize) -> f64 {
        self.entry_lat[c]
    }

    /// Exit latency (for ordering heuristics).
    pub(crate) fn exit_latency(&self, c: usize) -> f64 {
        self.exit_lat[c]
    }

    /// What every plan pays besides its stages and hops, under the objective.
    pub(crate) fn fixed(&self) -> f64 {
        match self.objective() {
            Objective::Latency => self.fixed_latency,
            Objective::Throughput => self.fixed_busy,
        }
    }

    /// The split-independent part of an order's objective: all hops and the fixed cost
    /// (INF if unreachable).
    pub(crate) fn network_cost(&self, order: &[usize]) -> f64 {
        let (Some(&first), Some(&last)) = (order.first(), order.last()) else {
            return INF;
        };
        let obj = self.objective();
        let mut cost = combine(obj, self.entry(first), self.exit(last));
        for w in order.windows(2) {
            cost = combine(obj, cost, self.hop(w[0], w[1]));
        }
        combine(obj, cost, self.fixed())
    }

    /// The devices and layer counts of an order, for pricing.
    pub(crate) fn stages(&self, order: &[usize], counts: &[u32]) -> Vec<(&'a Device, u32)> {
        order
            .iter()
            .zip(counts)
            .map(|(&c, &n)| (self.cands[c].device, n))
            .collect()
    }
}
