//! Builds the [`ClusterView`] a node reports from its machine's snapshot.

use std::collections::BTreeMap;

use transport::discovery::Advert;

use transport::discovery::PeerId;

use super::machine::Snapshot;
use super::view::{
    ClusterState, ClusterView, MemberState, MemberView, ModelSummary, PlanView, StageView,
};
use super::Assignment;
use crate::pipeline::Head;

/// Why requests cannot run now (no active plan), in words.
pub(crate) fn why_not_serving(state: &Snapshot) -> String {
    if let Some(reason) = &state.unplaceable {
        return format!("the model cannot be placed on this cluster: {reason}");
    }
    if let Some(e) = &state.load_error {
        return e.clone();
    }
    match &state.pending {
        Some(p) => format!(
            "plan {} is loading on {} stage(s); retry shortly",
            p.epoch,
            p.stages.len()
        ),
        None => "no plan yet: the cluster is forming".to_owned(),
    }
}

/// The view of node `local`, from its machine's `state`, its head and what it recorded.
pub(crate) fn view(
    state: &Snapshot,
    local: PeerId,
    model: &ModelSummary,
    head: Option<&Head>,
    events: Vec<crate::events::Event>,
    tokens_per_s: f64,
) -> ClusterView {
    let mut adverts: BTreeMap<String, &Advert> = state
        .members
        .iter()
        .map(|a| (a.peer_id.to_string(), a))
        .collect();
    adverts.insert(local.to_string(), &state.advert);
    let active = state.active.as_ref().map(|a| &a.assignment);
    let sha = &model.sha256;
    let layers_in = |plan: Option<&Assignment>, peer: &str| {
        plan.and_then(|p| p.stages.iter().find(|s| s.peer == peer))
            .map(|s| s.layers)
    };
    let mut rows: Vec<MemberView> = adverts
        .iter()
        .map(|(id, a)| {
            let layers = layers_in(active, id);
            let loading = layers_in(state.pending.as_ref(), id).is_some() && !a.state.ready;
            MemberView {
                peer_id: id.clone(),
                data_addr: a.data_addr.to_string(),
                api_addr: None,
                stage_addr: a.state.stage_addr.map(|s| s.to_string()),
                threads: a.threads,
                cpu_quota: a.state.cpu_quota_milli.map(|m| f64::from(m) / 1000.0),
                memory_budget_bytes: a.memory_budget_bytes,
                serves_api: a.state.serves_api,
                overhead_bytes: a.state.overhead_bytes,
                holds_model: a.models.iter().any(|m| m == sha),
                decode_ms_per_layer: a.layer_cost.map(|c| c.decode_ms),
                epoch: a.state.epoch,
                ready: a.state.ready,
                layers,
                state: if loading {
                    MemberState::Loading
                } else if layers.is_some() {
                    MemberState::Serving
                } else {
                    MemberState::Idle
                },
                version: a.version.clone(),
                arch: a.platform.arch.clone(),
                kernels: a.platform.kernels.clone(),
            }
        })
        .collect();
    // Stages of the active plan whose node is no longer a member.
    let mut gone = Vec::new();
    for s in active.map(|a| a.stages.as_slice()).unwrap_or_default() {
        if !adverts.contains_key(&s.peer) {
            gone.push(format!(
                "the node running layers {}..{} ({}) is gone",
                s.layers[0], s.layers[1], s.peer
            ));
            rows.push(MemberView {
                peer_id: s.peer.clone(),
                data_addr: String::new(),
                api_addr: None,
                stage_addr: None,
                threads: 0,
                cpu_quota: None,
                memory_budget_bytes: 0,
                serves_api: false,
                overhead_bytes: None,
                holds_model: true,
                decode_ms_per_layer: None,
                epoch: 0,
                ready: false,
                layers: Some(s.layers),
                state: MemberState::Gone,
                version: String::new(),
                arch: String::new(),
                kernels: String::new(),
            });
        }
    }
    let (cluster_state, problem) = match (&state.active, gone.is_empty()) {
        (None, _) if state.unplaceable.is_some() => {
            (ClusterState::Unplaceable, Some(why_not_serving(state)))
        }
        (None, _) => (ClusterState::Forming, Some(why_not_serving(state))),
        (Some(_), false) => (ClusterState::Degraded, Some(gone.join("; "))),
        (Some(_), true) => (ClusterState::Ready, None),
    };
    let all: Vec<Advert> = adverts.values().map(|a| (*a).clone()).collect();
    ClusterView {
        node: local.to_string(),
        model: model.clone(),
        coordinator: super::coordinator::coordinator(&all, sha, env!("CARGO_PKG_VERSION")),
        state: cluster_state,
        problem,
        members: rows,
        plan: active.map(|a| PlanView {
            epoch: a.epoch,
            head: local.to_string(),
            stages: a
                .stages
                .iter()
                .map(|s| StageView {
                    peer_id: s.peer.clone(),
                    layers: s.layers,
                    predicted_ms: s.predicted_ms,
                })
                .collect(),
            predicted_ms_per_token: a.predicted_ms_per_token,
            measured_ms_per_token: head.and_then(Head::recent_token_ms),
        }),
        tokens_per_s,
        replans: state.replans,
        events,
        links: all
            .iter()
            .flat_map(|a| {
                a.state.links.iter().map(|l| super::view::LinkView {
                    a: a.peer_id.to_string(),
                    b: l.peer.to_string(),
                    rtt_ms: l.rtt_us as f64 / 1000.0,
                    bandwidth_mbps: l.bytes_per_sec.map(|b| b as f64 * 8.0 / 1e6),
                    measured_at: l.measured_at_ms,
                })
            })
            .collect(),
        admission: None,
    }
}
