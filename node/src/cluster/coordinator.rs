//! The coordinator's decisions, as pure functions of the members' adverts: who coordinates,
//! the device graph, and the assignment for a new epoch.
//!
//! `shoal plan` builds its request with [`plan_request`] too, so a fleet file describing the
//! same devices and links gets the same plan as the live cluster.

use scheduler::planner::{self, PlanRequest};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Plan, PlanError};
use transport::discovery::Advert;

use super::control::{Assignment, StageAssignment};

/// The link assumed between nodes whose link has not been measured: a switched LAN.
pub const ASSUMED_LINK: Link = planner::ASSUMED_LAN;

/// What the planner needs to know about a member beyond what [`Advert`] carries today. The
/// node fills it from its own measurements and, once they travel in the advert, from the
/// advert.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeFacts {
    /// The node serves the HTTP API (it holds a head: embedding rows, final norm and, unless
    /// the plan splits it, the output product). `--no-api` nodes hold their layers only.
    pub serves_api: bool,
    /// Bytes the node's process takes besides weights and KV, measured (`None`:
    /// [`scheduler::DEFAULT_OVERHEAD_BYTES`]).
    pub overhead_bytes: Option<u64>,
    /// Milliseconds of the whole output product for one token, timed like the layer cost
    /// (`None`: estimated from the layer cost).
    pub head_ms: Option<f64>,
    /// The period of the node's CPU quota in milliseconds. The quota itself comes from the
    /// advert; without the period it is not used. Give it only once the advert's layer
    /// cost is a full-speed figure (single steps after idling): today's start-up timing
    /// runs 300 ms back to back, so a quota is already in it.
    pub cpu_period_ms: Option<f64>,
}

/// One direction of a measured link, as a member reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkReport {
    /// Sending peer id.
    pub from: String,
    /// Receiving peer id.
    pub to: String,
    /// The measurement, or `None` when the link is down (probes fail).
    pub link: Option<Link>,
}

/// Adverts of the nodes that may run layers of the model `sha256`: they hold it, have
/// measured their layer cost, and run this software version.
pub fn eligible<'a>(
    adverts: &'a [Advert],
    sha256: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a Advert> {
    adverts.iter().filter(move |a| {
        a.models.iter().any(|m| m == sha256) && a.layer_cost.is_some() && a.version == version
    })
}

/// The coordinator: the eligible node with the lowest peer id (string order, the same on
/// every node). Re-chosen automatically when it leaves the view.
pub fn coordinator(adverts: &[Advert], sha256: &str, version: &str) -> Option<String> {
    eligible(adverts, sha256, version)
        .map(|a| a.peer_id.to_string())
        .min()
}

/// The device graph of the eligible nodes, with what `facts` says of each and the links
/// `links` reports (pairs between eligible nodes only; a later measurement replaces an
/// earlier one; a pair either side reports down is down both ways).
/// Each node's budget is its whole budget: the planner takes its overhead, its layers and
/// (if it serves the API) its head off it.
pub fn device_graph(
    adverts: &[Advert],
    sha256: &str,
    version: &str,
    facts: impl Fn(&Advert) -> NodeFacts,
    links: &[LinkReport],
) -> DeviceGraph {
    let mut graph = DeviceGraph::new();
    for a in eligible(adverts, sha256, version) {
        let cost = a.layer_cost.expect("eligible adverts are measured");
        let f = facts(a);
        let quota = a.state.cpu_quota_milli.map(|m| f64::from(m) / 1000.0);
        let device = Device {
            threads: a.threads,
            serves_api: f.serves_api,
            overhead_bytes: f
                .overhead_bytes
                .unwrap_or(scheduler::DEFAULT_OVERHEAD_BYTES),
            head_ms: f.head_ms,
            cpu_quota: quota.filter(|_| f.cpu_period_ms.is_some()),
            cpu_period_ms: f.cpu_period_ms,
            ..Device::new(
                a.peer_id.to_string(),
                a.memory_budget_bytes,
                cost.decode_ms,
                cost.prefill_ms_per_token,
                Some(sha256.to_owned()),
            )
        };
        if let Err(e) = graph.upsert_device(device) {
            tracing::warn!(peer = %a.peer_id, error = %e, "advert left out of the device graph");
        }
    }
    // Measurements first, then losses: a link either side lost is down both ways, whatever
    // the other side measured before (a QUIC link needs both directions, for its acks).
    let (measured, down): (Vec<_>, Vec<_>) = links.iter().partition(|r| r.link.is_some());
    for r in measured.into_iter().chain(down) {
        if graph.device(&r.from).is_none() || graph.device(&r.to).is_none() {
            continue;
        }
        let set = match r.link {
            Some(link) => graph.set_one_way_link(&r.from, &r.to, link),
            None => graph.set_link_down(&r.from, &r.to),
        };
        if let Err(e) = set {
            tracing::warn!(from = %r.from, to = %r.to, error = %e, "link report left out");
        }
    }
    graph
}

/// The links members report in their adverts: measured ones with their RTT and bandwidth,
/// and a link a stage lost as down (which wins over an older measurement of it).
pub fn link_reports(adverts: &[Advert]) -> Vec<LinkReport> {
    let mut reports = Vec::new();
    for a in adverts {
        for m in &a.state.links {
            if a.state.unreachable.contains(&m.peer) {
                continue;
            }
            reports.push(LinkReport {
                from: a.peer_id.to_string(),
                to: m.peer.to_string(),
                link: Some(Link {
                    rtt_ms: m.rtt_us as f64 / 1000.0,
                    bandwidth_bytes_per_s: m
                        .bytes_per_sec
                        .map_or(ASSUMED_LINK.bandwidth_bytes_per_s, |b| b as f64),
                }),
            });
        }
        for to in &a.state.unreachable {
            reports.push(LinkReport {
                from: a.peer_id.to_string(),
                to: to.to_string(),
                link: None,
            });
        }
    }
    reports
}

/// The head a plan's prediction is for: the coordinator if it serves the API, else the
/// serving node with the lowest peer id; `None` when no node serves.
pub fn head_node(graph: &DeviceGraph, coordinator: &str) -> Option<String> {
    if graph.device(coordinator).is_some_and(|d| d.serves_api) {
        return Some(coordinator.to_owned());
    }
    graph
        .devices()
        .filter(|d| d.serves_api)
        .map(|d| d.id.clone())
        .min()
}

/// The planning request every planner caller starts from: this model, latency objective,
/// `head` as the head node, unmeasured links priced as [`ASSUMED_LINK`].
pub fn plan_request(profile: &ModelProfile, head: Option<String>) -> PlanRequest {
    let mut request = PlanRequest::new(profile.clone());
    request.head_node = head;
    request.config.default_link = Some(ASSUMED_LINK);
    request
}

/// How the coordinator splits the layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// The planner's choice: measured speed and memory of every node (the default).
    #[default]
    Planned,
    /// The same number of layers on every node (a baseline, for comparison).
    Even,
    /// Layers in proportion to each node's memory (a baseline, like exo's).
    Memory,
    /// The planner's choice with every working hop priced as the assumed LAN: measured
    /// links ignored, lost ones still avoided (a baseline for link-aware planning).
    LinkBlind,
}

/// A fresh plan must beat the current one, re-priced on today's graph, by this fraction
/// before the cluster moves to it: a move reloads stages and replays their requests, and
/// measured links and step times jitter by more than the plans they would swap between.
pub const REPLAN_GAIN: f64 = 0.10;

/// The plan the cluster runs, and what the next plan may change of it.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    /// The plan (the pending one while it loads).
    pub plan: &'a Plan,
    /// The straggler policy asked to move layers in place, within this tolerance of the
    /// best its stages allow ([`planner::rebalance`]).
    pub rebalance: Option<f64>,
}

/// Plans `profile` over `graph` and numbers it `epoch`. The head is [`head_node`];
/// `adjust` adds what the straggler policy knows (slowdowns, evictions). Given the
/// `current` plan, a planned placement keeps it (re-priced) unless it no longer fits (a
/// stage gone or excluded, a link down, memory) or a fresh plan beats it by
/// [`REPLAN_GAIN`]; asked to rebalance, it moves the fewest layers that bring the
/// prediction within the tolerance, falling back to a fresh plan when its stages cannot be
/// kept. Returns the assignment to send and the planner's plan (for the straggler policy's
/// predictions and the output head's slices).
pub fn assign(
    graph: &DeviceGraph,
    profile: &ModelProfile,
    coordinator: &str,
    epoch: u64,
    placement: Placement,
    adjust: impl FnOnce(&mut PlanRequest),
    current: Option<Current<'_>>,
) -> Result<(Assignment, Plan), PlanError> {
    let mut request = plan_request(profile, head_node(graph, coordinator));
    adjust(&mut request);
    let plan = match (placement, current) {
        (
            Placement::Planned | Placement::LinkBlind,
            Some(Current {
                plan,
                rebalance: Some(tolerance),
            }),
        ) => planner::rebalance(graph, &request, plan, tolerance)
            .or_else(|_| planner::plan(graph, &request))?,
        (
            Placement::Planned | Placement::LinkBlind,
            Some(Current {
                plan,
                rebalance: None,
            }),
        ) => {
            let fresh = planner::plan(graph, &request)?;
            keep_unless_beaten(graph, &request, plan, fresh)
        }
        (Placement::Planned | Placement::LinkBlind, None) => planner::plan(graph, &request)?,
        (Placement::Even, _) => planner::even_split(graph, &request)?,
        (Placement::Memory, _) => planner::memory_proportional_split(graph, &request)?,
    };
    let assignment = Assignment {
        epoch,
        model_sha256: profile.sha256.clone(),
        coordinator: coordinator.to_owned(),
        stages: plan
            .stages
            .iter()
            .map(|s| StageAssignment {
                peer: s.device.clone(),
                layers: [s.layers.start, s.layers.end],
                predicted_ms: s.compute_ms,
            })
            .collect(),
        predicted_ms_per_token: plan.predicted_ms_per_token,
    };
    Ok((assignment, plan))
}

/// `current` re-priced on `graph`, unless it does not fit any more or `fresh` beats it by
/// [`REPLAN_GAIN`].
fn keep_unless_beaten(
    graph: &DeviceGraph,
    request: &PlanRequest,
    current: &Plan,
    fresh: Plan,
) -> Plan {
    let stages: Vec<(&str, u32)> = current
        .stages
        .iter()
        .map(|s| (s.device.as_str(), s.layers.len() as u32))
        .collect();
    match planner::evaluate(graph, request, &stages) {
        Ok(kept)
            if fresh.predicted_ms_per_token
                >= kept.predicted_ms_per_token * (1.0 - REPLAN_GAIN) =>
        {
            kept
        }
        _ => fresh,
    }
}

#[cfg(test)]
mod tests;
