//! The coordinator's decisions, as pure functions of the members' adverts: who coordinates,
//! the device graph, and the assignment for a new epoch.

use scheduler::planner::{self, PlanRequest, ReturnPayload};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Plan, PlanError};
use transport::discovery::Advert;

use super::control::{Assignment, StageAssignment};

/// The link assumed between nodes whose link has not been measured: a switched LAN.
pub const ASSUMED_LINK: Link = Link {
    rtt_ms: 0.5,
    bandwidth_bytes_per_s: 12.5e6,
};

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

/// How a link a node reported lost is priced: so dear that the planner puts the two nodes
/// side by side only when no plan without that hop exists.
pub const LOST_LINK: Link = Link {
    rtt_ms: 1e6,
    bandwidth_bytes_per_s: 1.0,
};

/// The device graph of the eligible nodes. Every node keeps its own head (embedding and
/// output head, `head_reserve` bytes) to serve requests, so that is taken off its budget.
/// A data link either end reported lost is priced as [`LOST_LINK`].
pub fn device_graph(
    adverts: &[Advert],
    sha256: &str,
    version: &str,
    head_reserve: u64,
) -> DeviceGraph {
    let mut graph = DeviceGraph::new();
    for a in eligible(adverts, sha256, version) {
        let cost = a.layer_cost.expect("eligible adverts are measured");
        let device = Device {
            id: a.peer_id.to_string(),
            memory_bytes: a.memory_budget_bytes.saturating_sub(head_reserve),
            threads: a.threads,
            decode_ms_per_layer: cost.decode_ms,
            prefill_ms_per_layer: cost.prefill_ms_per_token,
            model_sha256: Some(sha256.to_owned()),
        };
        if let Err(e) = graph.upsert_device(device) {
            tracing::warn!(peer = %a.peer_id, error = %e, "advert left out of the device graph");
        }
    }
    for a in adverts {
        for lost in &a.state.unreachable {
            let (from, to) = (a.peer_id.to_string(), lost.to_string());
            if graph.device(&from).is_some() && graph.device(&to).is_some() {
                let _ = graph.set_link(&from, &to, LOST_LINK);
            }
        }
    }
    graph
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
}

/// Plans `profile` over `graph` with `coordinator` as the head node and numbers it `epoch`;
/// `adjust` adds what the straggler policy knows (slowdowns, evictions). Returns the
/// assignment to send and the planner's plan (for the straggler policy's predictions).
pub fn assign(
    graph: &DeviceGraph,
    profile: &ModelProfile,
    coordinator: &str,
    epoch: u64,
    placement: Placement,
    adjust: impl FnOnce(&mut PlanRequest),
) -> Result<(Assignment, Plan), PlanError> {
    let mut request = PlanRequest::new(profile.clone());
    request.head_node = Some(coordinator.to_owned());
    request.config.return_payload = ReturnPayload::Hidden;
    // Heads live on every node (see `device_graph`); plan layers only.
    request.config.overhead_bytes = 16 << 20;
    // Until links are measured, price every hop as a LAN hop.
    request.config.default_link = Some(ASSUMED_LINK);
    adjust(&mut request);
    let plan = match placement {
        Placement::Planned => planner::plan(graph, &request)?,
        Placement::Even => planner::even_split(graph, &request)?,
        Placement::Memory => planner::memory_proportional_split(graph, &request)?,
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use transport::discovery::{AdvertState, Keypair, LayerCost};

    use super::*;

    fn advert(threads: u32, memory: u64, decode_ms: f64, model: &str) -> Advert {
        Advert {
            peer_id: Keypair::generate_ed25519().public().to_peer_id(),
            data_addr: SocketAddr::from(([127, 0, 0, 1], 7601)),
            threads,
            memory_budget_bytes: memory,
            models: vec![model.to_owned()],
            layer_cost: Some(LayerCost {
                decode_ms,
                prefill_ms_per_token: decode_ms / 4.0,
            }),
            version: "v".into(),
            seed_addr: None,
            platform: Default::default(),
            state: AdvertState::default(),
        }
    }

    fn profile(sha: &str) -> ModelProfile {
        ModelProfile {
            sha256: sha.into(),
            n_layers: 30,
            bytes_per_layer: 3 << 20,
            embedding_bytes: 20 << 20,
            head_bytes: None,
            head_cost_layers: 6.0,
            kv_bytes_per_token_per_layer: 1536,
            context_tokens: 2048,
            hidden_bytes_per_token: 576 * 4,
            vocab_size: 49152,
        }
    }

    #[test]
    fn coordinator_is_the_lowest_eligible_peer_and_others_get_no_layers() {
        let sha = "aa".repeat(32);
        let mut adverts = vec![
            advert(2, 1 << 30, 0.2, &sha),
            advert(1, 1 << 30, 0.4, &sha),
            advert(1, 1 << 30, 0.4, &"bb".repeat(32)),
        ];
        let lowest = adverts[..2].iter().map(|a| a.peer_id.to_string()).min();
        assert_eq!(coordinator(&adverts, &sha, "v"), lowest);
        adverts[1].version = "other".into();
        assert_eq!(
            coordinator(&adverts, &sha, "v"),
            Some(adverts[0].peer_id.to_string())
        );
        let graph = device_graph(&adverts, &sha, "v", 0);
        assert_eq!(
            graph.len(),
            1,
            "other model and other version are not devices"
        );
    }

    #[test]
    fn the_assignment_covers_every_layer_once_and_favours_the_fast_node() {
        let sha = "aa".repeat(32);
        let adverts = vec![
            advert(2, 1 << 30, 0.1, &sha),
            advert(1, 1 << 30, 0.4, &sha),
            advert(1, 1 << 30, 0.4, &sha),
        ];
        let graph = device_graph(&adverts, &sha, "v", 30 << 20);
        let head = coordinator(&adverts, &sha, "v").unwrap();
        let a = assign(&graph, &profile(&sha), &head, 7, Placement::Planned, |_| {})
            .unwrap()
            .0;
        assert_eq!(a.epoch, 7);
        let mut next = 0;
        for s in &a.stages {
            assert_eq!(s.layers[0], next);
            next = s.layers[1];
        }
        assert_eq!(next, 30);
        let fast = adverts[0].peer_id.to_string();
        let fast_layers: u32 = a
            .stages
            .iter()
            .filter(|s| s.peer == fast)
            .map(|s| s.layers[1] - s.layers[0])
            .sum();
        assert!(
            fast_layers >= 10,
            "fast node got {fast_layers} of 30: {a:?}"
        );
    }

    #[test]
    fn too_little_memory_is_a_plan_error() {
        let sha = "aa".repeat(32);
        let adverts = vec![
            advert(1, 40 << 20, 0.1, &sha),
            advert(1, 40 << 20, 0.1, &sha),
        ];
        let graph = device_graph(&adverts, &sha, "v", 30 << 20);
        let head = coordinator(&adverts, &sha, "v").unwrap();
        assert!(assign(&graph, &profile(&sha), &head, 1, Placement::Planned, |_| {}).is_err());
        assert!(assign(&graph, &profile(&sha), &head, 1, Placement::Even, |_| {}).is_err());
    }
}
