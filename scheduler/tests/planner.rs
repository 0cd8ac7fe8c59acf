//! Planner behaviour on hand-built graphs with hand-checked numbers.

use scheduler::planner::{self, evaluate, even_split, memory_proportional_split, plan_in_order};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Objective, Plan, PlanError, PlanRequest};

/// SmolLM2-135M at Q4_1: 30 layers of ~2.9 MB, tied 49152x576 Q8_0 embedding (~30 MB),
/// 768 B of KV per token per layer, 576 f32 hidden state on the wire.
fn smollm2() -> ModelProfile {
    let mut m = ModelProfile {
        sha256: "smollm2-135m".into(),
        n_layers: 30,
        bytes_per_layer: 2_900_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 30_000_000,
        head_bytes: None,
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: 768,
        context_tokens: 2048,
        hidden_bytes_per_token: 576 * 4,
        vocab_size: 49_152,
    };
    m.head_cost_layers = m.head_cost_from_bytes();
    m
}

fn device(id: &str, threads: u32, ms: f64, mib: u64, sha: &str) -> Device {
    Device {
        threads,
        ..Device::new(id, mib << 20, ms, ms / 10.0, Some(sha.into()))
    }
}

const LAN: Link = Link {
    rtt_ms: 1.0,
    bandwidth_bytes_per_s: 1e8,
};

/// One fast node (2 threads, 0.15 ms/layer) and two slow ones (1 thread, 0.3 ms/layer; one
/// throttled to half a CPU, 0.6 ms/layer), 512 MiB each, on a LAN; the fast node is the
/// head node.
fn heterogeneous() -> DeviceGraph {
    let mut g = DeviceGraph::new();
    let sha = "smollm2-135m";
    g.upsert_device(device("fast", 2, 0.15, 512, sha)).unwrap();
    g.upsert_device(device("slow", 1, 0.30, 512, sha)).unwrap();
    g.upsert_device(device("throttled", 1, 0.60, 512, sha))
        .unwrap();
    for (a, b) in [
        ("fast", "slow"),
        ("fast", "throttled"),
        ("slow", "throttled"),
    ] {
        g.set_link(a, b, LAN).unwrap();
    }
    g
}

fn request(objective: Objective) -> PlanRequest {
    let mut r = PlanRequest::new(smollm2());
    r.objective = objective;
    r.head_node = Some("fast".into());
    r
}

/// The best even split over every order of the three devices (a fair baseline).
fn best_even(g: &DeviceGraph, r: &PlanRequest) -> Plan {
    let ids = ["fast", "slow", "throttled"];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    orders
        .iter()
        .map(|o| evaluate(g, r, &[(ids[o[0]], 10), (ids[o[1]], 10), (ids[o[2]], 10)]).unwrap())
        .min_by(|a, b| a.objective_ms().total_cmp(&b.objective_ms()))
        .unwrap()
}

fn assert_covers(plan: &Plan, n_layers: u32) {
    let mut next = 0;
    for s in &plan.stages {
        assert_eq!(s.layers.start, next);
        assert!(s.layers.end > s.layers.start);
        assert!(s.memory_bytes <= s.memory_budget);
        next = s.layers.end;
    }
    assert_eq!(next, n_layers);
    for m in &plan.memory {
        assert!(m.total_bytes <= m.budget_bytes, "{plan}");
    }
}

#[test]
fn capacity_aware_beats_even_split_by_1_3x_on_heterogeneous_fleet() {
    let g = heterogeneous();
    for objective in [Objective::Latency, Objective::Throughput] {
        let r = request(objective);
        let planned = planner::plan(&g, &r).unwrap();
        assert_covers(&planned, 30);
        let even = best_even(&g, &r);
        let (p, e) = match objective {
            Objective::Latency => (
                planned.single_stream_tokens_per_s(),
                even.single_stream_tokens_per_s(),
            ),
            Objective::Throughput => (
                planned.pipelined_tokens_per_s(),
                even.pipelined_tokens_per_s(),
            ),
        };
        assert!(
            p >= 1.3 * e,
            "{objective:?}: planned {p:.1} tok/s vs even {e:.1}\n{}\n{}",
            planned.explain(),
            even.explain()
        );
    }
}

#[test]
fn throughput_plan_is_near_the_work_conserving_bound() {
    let g = heterogeneous();
    let plan = planner::plan(&g, &request(Objective::Throughput)).unwrap();
    let layers = |id: &str| {
        plan.stages
            .iter()
            .find(|s| s.device == id)
            .map_or(0, |s| s.layers.len())
    };
    assert!(layers("fast") >= layers("slow"), "{plan}");
    assert!(layers("fast") > layers("throttled"), "{plan}");
    // No split can beat spreading all work (30 layers + the head) by speed perfectly.
    let work = 30.0 + smollm2().head_cost_layers;
    let bound = work / (1.0 / 0.15 + 1.0 / 0.30 + 1.0 / 0.60);
    assert!(plan.bottleneck_ms >= bound - 1e-9);
    assert!(plan.bottleneck_ms <= 1.1 * bound, "{plan}");
}

#[test]
fn predicted_costs_match_hand_computation() {
    let g = heterogeneous();
    let mut r = request(Objective::Latency);
    r.head_node = Some("slow".into());
    r.config.allow_slices = false;
    let plan = evaluate(&g, &r, &[("fast", 20), ("throttled", 10)]).unwrap();
    // The head node runs the output product; stages run layers only.
    let head = smollm2().head_cost_layers * 0.30;
    let compute = 20.0 * 0.15 + 10.0 * 0.60;
    // slow -> fast, fast -> throttled, throttled -> slow: one hidden state each.
    let hops = 3.0 * (0.5 + 2304.0 * 1000.0 / 1e8);
    assert!((plan.predicted_ms_per_token - (compute + hops + head)).abs() < 1e-9);
    assert!((plan.head_ms - head).abs() < 1e-9);
    assert!((plan.bottleneck_ms - (10.0 * 0.60_f64).max(head)).abs() < 1e-9);
    assert_eq!(plan.hops.len(), 3);
    assert_eq!(plan.heads, ["slow"]);
    let per_layer = 2_900_000 + 768 * 2048;
    let overhead = scheduler::DEFAULT_OVERHEAD_BYTES;
    assert_eq!(plan.stages[0].memory_bytes, 20 * per_layer + overhead);
    assert_eq!(plan.stages[1].memory_bytes, 10 * per_layer + overhead);
    // The head node holds the tied table once, as its output product; nothing else does.
    let slow = plan.memory.iter().find(|m| m.device == "slow").unwrap();
    assert_eq!(slow.total_bytes, 30_000_000 + overhead);
    assert_eq!(slow.layer_bytes + slow.kv_bytes, 0);
}

#[test]
fn device_with_other_model_gets_no_layers() {
    let mut g = heterogeneous();
    g.upsert_device(device("other", 8, 0.01, 4096, "a-different-model"))
        .unwrap();
    for peer in ["fast", "slow", "throttled"] {
        g.set_link("other", peer, LAN).unwrap();
    }
    for objective in [Objective::Latency, Objective::Throughput] {
        let plan = planner::plan(&g, &request(objective)).unwrap();
        assert!(plan.stages.iter().all(|s| s.device != "other"));
    }
    let r = request(Objective::Latency);
    assert!(matches!(
        evaluate(&g, &r, &[("other", 30)]),
        Err(PlanError::NotEligible { .. })
    ));
}

#[test]
fn reports_insufficient_memory() {
    let mut g = DeviceGraph::new();
    g.upsert_device(device("a", 1, 0.3, 100, "smollm2-135m"))
        .unwrap();
    let err = planner::plan(&g, &PlanRequest::new(smollm2())).unwrap_err();
    let PlanError::InsufficientMemory {
        needed,
        available,
        head,
        ..
    } = err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(available, (100 << 20) - scheduler::DEFAULT_OVERHEAD_BYTES);
    // Nobody serves the API and there is no head node: no output head to hold.
    assert_eq!(head, 0);
    assert!(needed > available);
}

#[test]
fn reports_no_eligible_devices_and_unknown_head() {
    let mut g = DeviceGraph::new();
    g.upsert_device(device("a", 1, 0.3, 512, "x")).unwrap();
    let mut r = PlanRequest::new(smollm2());
    assert!(matches!(
        planner::plan(&g, &r),
        Err(PlanError::NoEligibleDevices { .. })
    ));
    r.head_node = Some("nobody".into());
    assert_eq!(
        planner::plan(&g, &r),
        Err(PlanError::UnknownDevice("nobody".into()))
    );
}

#[test]
fn missing_links_are_unreachable_unless_defaulted() {
    // Two 100 MiB devices: the model only fits split across both, but they share no link.
    let mut g = DeviceGraph::new();
    g.upsert_device(device("a", 1, 0.3, 100, "smollm2-135m"))
        .unwrap();
    g.upsert_device(device("b", 1, 0.3, 100, "smollm2-135m"))
        .unwrap();
    let mut r = PlanRequest::new(smollm2());
    assert!(matches!(
        planner::plan(&g, &r),
        Err(PlanError::NoFeasiblePlan(_))
    ));
    assert!(matches!(
        plan_in_order(&g, &r, &["a", "b"]),
        Err(PlanError::Unreachable { .. })
    ));
    r.config.default_link = Some(LAN);
    let plan = planner::plan(&g, &r).unwrap();
    assert_eq!(plan.stages.len(), 2);
    // A link reported down is never priced with the default.
    g.set_link_down("a", "b").unwrap();
    assert!(matches!(
        planner::plan(&g, &r),
        Err(PlanError::NoFeasiblePlan(_))
    ));
    g.set_one_way_link("a", "b", LAN).unwrap();
    let plan = planner::plan(&g, &r).unwrap();
    assert_eq!(plan.stages[0].device, "a", "only a -> b is usable: {plan}");
}

#[test]
fn slowdown_moves_only_a_few_layers_to_neighbours() {
    let mut g = DeviceGraph::new();
    for id in ["a", "b", "c", "d"] {
        g.upsert_device(device(id, 1, 0.3, 512, "smollm2-135m"))
            .unwrap();
    }
    for (x, y) in [("a", "b"), ("b", "c"), ("c", "d")] {
        g.set_link(x, y, LAN).unwrap();
    }
    let mut r = PlanRequest::new(smollm2());
    r.objective = Objective::Throughput;
    let order = ["a", "b", "c", "d"];
    let before = plan_in_order(&g, &r, &order).unwrap();
    r.slowdown.insert("b".into(), 2.0);
    let after = plan_in_order(&g, &r, &order).unwrap();
    let count = |p: &Plan, i: usize| p.stages[i].layers.len();
    assert!(count(&after, 1) < count(&before, 1));
    let moved: usize = (0..4)
        .map(|i| count(&after, i).abs_diff(count(&before, i)))
        .sum();
    assert!(
        moved / 2 <= 5,
        "moved {moved} layer-slots\n{before}\n{after}"
    );
    assert!(after.stages[1].slowdown == 2.0);
}

#[test]
fn baselines_produce_valid_plans() {
    let g = heterogeneous();
    let r = request(Objective::Throughput);
    let even = even_split(&g, &r).unwrap();
    assert_covers(&even, 30);
    assert_eq!(
        even.stages
            .iter()
            .map(|s| s.layers.len())
            .collect::<Vec<_>>(),
        [10, 10, 10]
    );
    let mem = memory_proportional_split(&g, &r).unwrap();
    assert_covers(&mem, 30);
    let planned = planner::plan(&g, &r).unwrap();
    assert!(planned.bottleneck_ms <= even.bottleneck_ms);
    assert!(planned.bottleneck_ms <= mem.bottleneck_ms);
}

#[test]
fn explain_names_stages_hops_and_bottleneck() {
    let g = heterogeneous();
    let mut r = request(Objective::Throughput);
    r.head_node = Some("slow".into());
    let text = planner::plan(&g, &r).unwrap().explain();
    assert!(text.contains("stage 0:"), "{text}");
    assert!(
        text.contains("output head whole on slow") || text.contains("vocabulary slices"),
        "{text}"
    );
    assert!(text.contains("MiB"), "{text}");
    assert!(text.contains("bottleneck"), "{text}");
    assert!(text.contains("tok/s"), "{text}");
}

#[test]
fn plan_round_trips_through_json() {
    let g = heterogeneous();
    let plan = planner::plan(&g, &request(Objective::Latency)).unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
    let advert = g.device("fast").unwrap();
    let json = serde_json::to_string(advert).unwrap();
    assert_eq!(&serde_json::from_str::<Device>(&json).unwrap(), advert);
}

#[test]
fn exact_search_handles_eight_devices_and_eighty_layers() {
    let mut g = DeviceGraph::new();
    let ids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let ms = 0.1 + 0.05 * i as f64;
        g.upsert_device(device(id, 1, ms, 200 + 20 * i as u64, "smollm2-135m"))
            .unwrap();
    }
    for a in 0..8 {
        for b in a + 1..8 {
            let rtt = 0.5 + ((a * 7 + b * 3) % 5) as f64;
            let link = Link {
                rtt_ms: rtt,
                bandwidth_bytes_per_s: 5e7,
            };
            g.set_link(&ids[a], &ids[b], link).unwrap();
        }
    }
    let mut model = smollm2();
    model.n_layers = 80;
    model.context_tokens = 256;
    for objective in [Objective::Latency, Objective::Throughput] {
        let mut r = PlanRequest::new(model.clone());
        r.objective = objective;
        r.head_node = Some("p3".into());
        let plan = planner::plan(&g, &r).unwrap();
        assert_covers(&plan, 80);
        let even = even_split(&g, &r).unwrap();
        assert!(plan.objective_ms() <= even.objective_ms());
    }
}
