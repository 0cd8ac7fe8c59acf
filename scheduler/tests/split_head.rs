//! Split output heads where layers and vocabulary rows compete for the same memory: the
//! planner finds room for the rows when its usual reserves all leave too little.

use scheduler::planner::{self, plan_in_order};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Objective, Plan, PlanRequest};

const LAN: Link = Link {
    rtt_ms: 1.0,
    bandwidth_bytes_per_s: 1e8,
};

/// Every layer once, in order, and every device within its memory.
fn assert_covers(plan: &Plan, n_layers: u32) {
    let mut next = 0;
    for s in &plan.stages {
        assert_eq!(s.layers.start, next);
        assert!(s.layers.end > s.layers.start);
        next = s.layers.end;
    }
    assert_eq!(next, n_layers);
    for m in &plan.memory {
        assert!(m.total_bytes <= m.budget_bytes, "{plan}");
    }
    let mut next = 0;
    for s in &plan.slices {
        assert_eq!(s.rows.start, next, "{plan}");
        next = s.rows.end;
    }
}

#[test]
fn split_head_keeps_one_seat_free_for_the_last_stage() {
    // The head node and an API server each have room for the whole output product (9 rows
    // of 100 B) or for one layer, not both. A big device holds every layer but has no link
    // back to the head node, so one of the two must run the last layer and the other hold
    // every row. Spreading the rows over both, or letting the layers take both, fails.
    let model = ModelProfile {
        sha256: "m".into(),
        n_layers: 4,
        bytes_per_layer: 1_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 900,
        head_bytes: None,
        head_cost_layers: 1.0,
        kv_bytes_per_token_per_layer: 0,
        context_tokens: 8,
        hidden_bytes_per_token: 10,
        vocab_size: 9,
    };
    let small = |id: &str| Device {
        overhead_bytes: 0,
        ..Device::new(id, 1_000, 1.0, 0.1, Some("m".into()))
    };
    let mut g = DeviceGraph::new();
    g.upsert_device(small("head")).unwrap();
    g.upsert_device(Device {
        serves_api: true,
        ..small("server")
    })
    .unwrap();
    g.upsert_device(Device {
        overhead_bytes: 0,
        ..Device::new("big", 10_000, 2.0, 0.2, Some("m".into()))
    })
    .unwrap();
    g.set_link("head", "server", LAN).unwrap();
    // Down both ways, then head -> big measured again.
    g.set_link_down("big", "head").unwrap();
    g.set_one_way_link("head", "big", LAN).unwrap();
    g.set_one_way_link("big", "server", LAN).unwrap();
    let mut r = PlanRequest::new(model);
    r.objective = Objective::Throughput;
    r.head_node = Some("head".into());
    let plan = planner::plan(&g, &r).unwrap();
    assert_covers(&plan, 4);
    let stages: Vec<(&str, u32)> = plan
        .stages
        .iter()
        .map(|s| (s.device.as_str(), s.layers.len() as u32))
        .collect();
    assert_eq!(stages, [("big", 3), ("server", 1)], "{plan}");
    assert_eq!(plan.slices.len(), 1, "{plan}");
    assert_eq!(
        (plan.slices[0].device.as_str(), plan.slices[0].rows.clone()),
        ("head", 0..9)
    );
    // Big's three layers are the busiest device: 3 x 2 ms.
    assert!((plan.objective_ms() - 6.0).abs() < 1e-9, "{plan}");
}

#[test]
fn split_head_in_a_fixed_order_takes_room_from_two_stages() {
    // Order a -> mid -> head. a and the head node each have room for two layers, or one
    // layer and 3 of the 5 rows (300 B each): the rows fit only when both run one layer,
    // and mid (slow, no link from the head node) runs the other four.
    let model = ModelProfile {
        sha256: "m".into(),
        n_layers: 6,
        bytes_per_layer: 1_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 1_500,
        head_bytes: None,
        head_cost_layers: 1.0,
        kv_bytes_per_token_per_layer: 0,
        context_tokens: 8,
        hidden_bytes_per_token: 10,
        vocab_size: 5,
    };
    let device = |id: &str, bytes: u64, ms: f64, head_ms: f64| Device {
        overhead_bytes: 0,
        head_ms: Some(head_ms),
        ..Device::new(id, bytes, ms, ms / 10.0, Some("m".into()))
    };
    let mut g = DeviceGraph::new();
    // a's rows are slow, so the fastest rows would all go to the head node.
    g.upsert_device(device("a", 2_000, 1.0, 10.0)).unwrap();
    g.upsert_device(device("mid", 10_000, 5.0, 1.0)).unwrap();
    g.upsert_device(device("head", 2_000, 1.0, 1.0)).unwrap();
    g.set_link("head", "a", LAN).unwrap();
    g.set_one_way_link("a", "mid", LAN).unwrap();
    g.set_link_down("head", "mid").unwrap();
    g.set_one_way_link("mid", "head", LAN).unwrap();
    let mut r = PlanRequest::new(model);
    r.objective = Objective::Throughput;
    r.head_node = Some("head".into());
    let plan = plan_in_order(&g, &r, &["a", "mid", "head"]).unwrap();
    assert_covers(&plan, 6);
    let counts: Vec<usize> = plan.stages.iter().map(|s| s.layers.len()).collect();
    assert_eq!(counts, [1, 4, 1], "{plan}");
    let rows: Vec<(&str, usize)> = plan
        .slices
        .iter()
        .map(|s| (s.device.as_str(), s.rows.len()))
        .collect();
    assert_eq!(rows, [("head", 3), ("a", 2)], "{plan}");
    // mid's four layers are the busiest: a's layer and two rows take 1 + 2 x 2 ms.
    assert!((plan.objective_ms() - 20.0).abs() < 1e-9, "{plan}");
}
