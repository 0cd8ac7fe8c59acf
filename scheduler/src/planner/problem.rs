//! A planning problem reduced to numbers: candidate devices with per-role layer capacities
//! and per-layer costs, and dense hop-cost tables between them and the head node.
//!
//! Searches work on candidate indices only; graph lookups happen once, here.

use std::collections::HashMap;

use crate::error::PlanError;
use crate::graph::{Device, Link};
use crate::plan::{Hop, Objective, Plan, Stage};
use crate::planner::{PlanRequest, ReturnPayload};
use crate::profile::{stage_cost, Role};
use crate::DeviceGraph;

/// Bytes of a token id sent from the head node to the first stage.
const TOKEN_BYTES: u64 = 4;

/// Stand-in for "impossible" in cost tables; arithmetic on it stays infinite.
pub(crate) const INF: f64 = f64::INFINITY;

/// One device the planner may use.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<'a> {
    pub(crate) device: &'a Device,
    pub(crate) slowdown: f64,
    /// Decode ms of one layer after slowdown.
    pub(crate) unit_ms: f64,
    /// Max layers per role, indexed by [`role_index`].
    caps: [u32; 4],
}

/// Dense costs for a list of candidates.
#[derive(Debug)]
pub(crate) struct Problem<'a> {
    pub(crate) req: &'a PlanRequest,
    pub(crate) n_layers: u32,
    pub(crate) cands: Vec<Candidate<'a>>,
    head_cost_layers: f64,
    /// `k * k` one-way latency of a hidden state between candidates (INF: unreachable).
    hop_lat: Vec<f64>,
    /// `k * k` link busy time of a hidden state.
    hop_xfer: Vec<f64>,
    entry_lat: Vec<f64>,
    entry_xfer: Vec<f64>,
    exit_lat: Vec<f64>,
    exit_xfer: Vec<f64>,
    /// Links used for hops, kept to describe hops in the final plan.
    links: HashMap<(usize, usize), Link>,
    head_links: HashMap<usize, Link>,
    head_index: Option<usize>,
}

fn role_index(role: Role) -> usize {
    usize::from(role.embed) | (usize::from(role.head) << 1)
}

/// The role of position `j` in an order of length `k`.
pub(crate) fn role_at(j: usize, k: usize) -> Role {
    Role {
        embed: j == 0,
        head: j + 1 == k,
    }
}

/// Combines two costs under an objective: sum for latency, max for throughput.
pub(crate) fn combine(objective: Objective, a: f64, b: f64) -> f64 {
    match objective {
        Objective::Latency => a + b,
        Objective::Throughput => a.max(b),
    }
}

/// Max layers a device can hold in `role` (0 when even the fixed parts do not fit).
pub(crate) fn layer_capacity(device: &Device, req: &PlanRequest, role: Role) -> u32 {
    let fixed = req
        .model
        .role_bytes(role)
        .saturating_add(req.config.overhead_bytes);
    let Some(free) = device.memory_bytes.checked_sub(fixed) else {
        return 0;
    };
    let per_layer = req.model.layer_memory_bytes();
    let fit = free
        .checked_div(per_layer)
        .unwrap_or(u64::from(req.model.n_layers));
    u32::try_from(fit.min(u64::from(req.model.n_layers))).unwrap_or(req.model.n_layers)
}

impl<'a> Problem<'a> {
    /// Builds tables for `devices` (in the given order) against `graph`.
    pub(crate) fn new(
        graph: &'a DeviceGraph,
        req: &'a PlanRequest,
        devices: Vec<&'a Device>,
    ) -> Self {
        let cands: Vec<Candidate<'a>> = devices
            .into_iter()
            .map(|device| {
                let slowdown = req.slowdown.get(&device.id).copied().unwrap_or(1.0);
                let mut caps = [0; 4];
                for embed in [false, true] {
                    for head in [false, true] {
                        let role = Role { embed, head };
                        caps[role_index(role)] = layer_capacity(device, req, role);
                    }
                }
                Candidate {
                    device,
                    slowdown,
                    unit_ms: device.decode_ms_per_layer * slowdown,
                    caps,
                }
            })
            .collect();
        let k = cands.len();
        let pos: HashMap<&str, usize> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.device.id.as_str(), i))
            .collect();
        let head = req.head_node.as_deref();
        let mut p = Problem {
            req,
            n_layers: req.model.n_layers,
            head_cost_layers: req.model.head_cost_layers,
            hop_lat: vec![INF; k * k],
            hop_xfer: vec![INF; k * k],
            entry_lat: vec![if head.is_some() { INF } else { 0.0 }; k],
            entry_xfer: vec![if head.is_some() { INF } else { 0.0 }; k],
            exit_lat: vec![if head.is_some() { INF } else { 0.0 }; k],
            exit_xfer: vec![if head.is_some() { INF } else { 0.0 }; k],
            links: HashMap::new(),
            head_links: HashMap::new(),
            head_index: head.and_then(|h| pos.get(h).copied()),
            cands,
        };
        for i in 0..k {
            let id = p.cands[i].device.id.as_str();
            for (other, link) in graph.neighbours(id) {
                if let Some(&j) = pos.get(other) {
                    p.set_hop(i, j, link);
                }
                if Some(other) == head {
                    p.set_head_link(i, link);
                }
            }
        }
        if let Some(default) = req.config.default_link {
            for i in 0..k {
                for j in 0..k {
                    if i != j && !p.links.contains_key(&(i, j)) {
                        p.set_hop(i, j, default);
                    }
                }
                if head.is_some() && !p.head_links.contains_key(&i) {
                    p.set_head_link(i, default);
                }
            }
        }
        if let Some(h) = p.head_index {
            p.entry_lat[h] = 0.0;
            p.entry_xfer[h] = 0.0;
            p.exit_lat[h] = 0.0;
            p.exit_xfer[h] = 0.0;
        }
        p
    }

    fn set_hop(&mut self, i: usize, j: usize, link: Link) {
        let k = self.cands.len();
        let bytes = self.req.model.hidden_bytes_per_token;
        self.hop_lat[i * k + j] = link.hop_ms(bytes);
        self.hop_xfer[i * k + j] = link.transfer_ms(bytes);
        self.links.insert((i, j), link);
    }

    fn set_head_link(&mut self, i: usize, link: Link) {
        self.entry_lat[i] = link.hop_ms(TOKEN_BYTES);
        self.entry_xfer[i] = link.transfer_ms(TOKEN_BYTES);
        self.exit_lat[i] = link.hop_ms(self.return_bytes());
        self.exit_xfer[i] = link.transfer_ms(self.return_bytes());
        self.head_links.insert(i, link);
    }

    fn return_bytes(&self) -> u64 {
        match self.req.config.return_payload {
            ReturnPayload::Logits => u64::from(self.req.model.vocab_size) * 4,
            ReturnPayload::TokenId => TOKEN_BYTES,
            ReturnPayload::Hidden => self.req.model.hidden_bytes_per_token,
        }
    }

    pub(crate) fn objective(&self) -> Objective {
        self.req.objective
    }

    /// Max layers candidate `c` can take in `role`.
    pub(crate) fn cap(&self, c: usize, role: Role) -> u32 {
        self.cands[c].caps[role_index(role)]
    }

    /// Decode compute of `n` layers on candidate `c` in `role`.
    pub(crate) fn compute(&self, c: usize, role: Role, n: u32) -> f64 {
        let head = if role.head {
            self.head_cost_layers
        } else {
            0.0
        };
        (f64::from(n) + head) * self.cands[c].unit_ms
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

    /// The split-independent part of an order's objective: all hops (INF if unreachable).
    pub(crate) fn network_cost(&self, order: &[usize]) -> f64 {
        let (Some(&first), Some(&last)) = (order.first(), order.last()) else {
            return INF;
        };
        let obj = self.objective();
        let mut cost = combine(obj, self.entry(first), self.exit(last));
        for w in order.windows(2) {
            cost = combine(obj, cost, self.hop(w[0], w[1]));
        }
        cost
    }

    /// Turns an order and per-stage layer counts into a checked [`Plan`].
    pub(crate) fn build_plan(&self, order: &[usize], counts: &[u32]) -> Result<Plan, PlanError> {
        let model = &self.req.model;
        let k = order.len();
        if k == 0 || counts.len() != k {
            return Err(PlanError::InvalidAssignment("empty plan".into()));
        }
        let mut stages = Vec::with_capacity(k);
        let mut start = 0u32;
        for (j, (&c, &n)) in order.iter().zip(counts).enumerate() {
            let cand = &self.cands[c];
            let role = role_at(j, k);
            let memory_bytes = model.stage_bytes(n, role, self.req.config.overhead_bytes);
            if memory_bytes > cand.device.memory_bytes {
                return Err(PlanError::StageOverBudget {
                    device: cand.device.id.clone(),
                    needed: memory_bytes,
                    budget: cand.device.memory_bytes,
                });
            }
            let cost = stage_cost(cand.device, model, n, role, cand.slowdown);
            let end = start.saturating_add(n);
            stages.push(Stage {
                device: cand.device.id.clone(),
                layers: start..end,
                embed: role.embed,
                head: role.head,
                compute_ms: cost.decode_ms,
                prefill_ms: cost.prefill_ms,
                memory_bytes,
                memory_budget: cand.device.memory_bytes,
                slowdown: cand.slowdown,
            });
            start = end;
        }
        if start != self.n_layers || counts.contains(&0) {
            return Err(PlanError::InvalidAssignment(format!(
                "stages must each take >= 1 layer and cover 0..{}, got {counts:?}",
                self.n_layers
            )));
        }
        let hops = self.hops(order)?;
        let compute: f64 = stages.iter().map(|s| s.compute_ms).sum();
        let network: f64 = hops.iter().map(|h| h.latency_ms).sum();
        let slowest_stage = stages.iter().map(|s| s.compute_ms).fold(0.0, f64::max);
        let slowest_link = hops.iter().map(|h| h.transfer_ms).fold(0.0, f64::max);
        Ok(Plan {
            model_sha256: model.sha256.clone(),
            objective: self.objective(),
            head_node: self.req.head_node.clone(),
            predicted_ms_per_token: compute + network,
            bottleneck_ms: slowest_stage.max(slowest_link),
            predicted_prefill_ms_per_token: stages.iter().map(|s| s.prefill_ms).sum(),
            stages,
            hops,
        })
    }

    fn hops(&self, order: &[usize]) -> Result<Vec<Hop>, PlanError> {
        let id = |c: usize| self.cands[c].device.id.clone();
        let mut hops = Vec::new();
        let mut push = |from: String, to: String, link: Option<&Link>, bytes: u64| match link {
            Some(l) => {
                hops.push(Hop {
                    latency_ms: l.hop_ms(bytes),
                    transfer_ms: l.transfer_ms(bytes),
                    from,
                    to,
                    bytes,
                });
                Ok(())
            }
            None => Err(PlanError::Unreachable { from, to }),
        };
        let head = self.req.head_node.as_ref();
        let (first, last) = (order[0], order[order.len() - 1]);
        if let Some(h) = head.filter(|_| self.head_index != Some(first)) {
            push(
                h.clone(),
                id(first),
                self.head_links.get(&first),
                TOKEN_BYTES,
            )?;
        }
        for w in order.windows(2) {
            let bytes = self.req.model.hidden_bytes_per_token;
            push(id(w[0]), id(w[1]), self.links.get(&(w[0], w[1])), bytes)?;
        }
        if let Some(h) = head.filter(|_| self.head_index != Some(last)) {
            push(
                id(last),
                h.clone(),
                self.head_links.get(&last),
                self.return_bytes(),
            )?;
        }
        Ok(hops)
    }
}
