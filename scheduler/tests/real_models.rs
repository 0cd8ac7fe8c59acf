//! The fleets issue #22 names, with the real models' sizes: the planner must place each.
//!
//! The sizes are the GGUF files' tensor index as node's `cluster::profile::model_profile`
//! reads it (tensor bytes as stored; `node/src/cluster/coordinator/tests.rs` plans the
//! same fleets from the files themselves). Layer speeds are this VM's one-thread figures
//! from `cargo run --release -p sharding --example head_cost -- MODEL 1`; the output
//! product is left to the estimate from bytes, as for a node that does not measure it.

use scheduler::planner;
use scheduler::{Device, DeviceGraph, ModelProfile, Plan, PlanError, PlanRequest};

const MIB: u64 = 1 << 20;

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M: 24 layers (Q5_0/Q8_0/Q4_K/Q6_K mixes of two sizes),
/// untied Q8_0 output 151936 x 896 (+ the f32 final norm), Q5_0 embedding read from the
/// file, 2 KV heads x 64 dims x K,V x f16.
fn qwen() -> ModelProfile {
    let (big, small) = (10_883_840, 9_717_248);
    let layer_bytes = [
        big, big, small, big, small, small, big, big, big, big, big, small, small, big, small,
        small, big, small, small, big, small, big, small, small,
    ];
    profile(
        "qwen2.5-coder-0.5b",
        layer_bytes.to_vec(),
        93_592_576,
        Some(144_643_072 + 3_584),
        2 * 64 * 2 * 2,
        896,
        151_936,
    )
}

/// Gemma-3-270M Q4_K_M: 18 layers of two sizes, the 262144 x 640 Q8_0 embedding tied to the
/// output head (170 MiB), 1 KV head x (256 + 256) dims x f16.
fn gemma() -> ModelProfile {
    let (big, small) = (3_995_648, 3_596_288);
    let layer_bytes = [
        big, big, small, small, big, small, small, big, small, small, big, small, small, big,
        small, big, big, big,
    ];
    profile(
        "gemma-3-270m",
        layer_bytes.to_vec(),
        178_257_920,
        None,
        (256 + 256) * 2,
        640,
        262_144,
    )
}

/// SmolLM2-135M-Instruct Q4_1: 30 equal layers, tied 49152 x 576 Q8_0 embedding, 3 KV
/// heads x 64 dims x K,V x f16.
fn smollm2() -> ModelProfile {
    profile(
        "smollm2-135m",
        vec![2_216_448; 30],
        30_081_024,
        None,
        3 * 64 * 2 * 2,
        576,
        49_152,
    )
}

fn profile(
    sha: &str,
    layer_bytes: Vec<u64>,
    embedding_bytes: u64,
    head_bytes: Option<u64>,
    kv: u64,
    n_embd: u64,
    vocab_size: u32,
) -> ModelProfile {
    let mut m = ModelProfile {
        sha256: sha.into(),
        n_layers: layer_bytes.len() as u32,
        bytes_per_layer: *layer_bytes.iter().max().unwrap(),
        layer_bytes,
        embedding_bytes,
        head_bytes,
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: kv,
        context_tokens: 2048,
        hidden_bytes_per_token: n_embd * 4,
        vocab_size,
    };
    m.head_cost_layers = m.head_cost_from_bytes();
    m
}

/// `n` nodes of `mib` MiB at `decode_ms` per layer on a LAN; node 0 serves the API and is
/// the head, the others are `--no-api`.
fn fleet(model: &ModelProfile, n: usize, mib: u64, decode_ms: f64) -> (DeviceGraph, PlanRequest) {
    let mut g = DeviceGraph::new();
    for i in 0..n {
        g.upsert_device(Device {
            serves_api: i == 0,
            ..Device::new(
                format!("n{i}"),
                mib * MIB,
                decode_ms,
                decode_ms / 4.0,
                Some(model.sha256.clone()),
            )
        })
        .unwrap();
    }
    let mut r = PlanRequest::new(model.clone());
    r.head_node = Some("n0".into());
    r.config.default_link = Some(planner::ASSUMED_LAN);
    (g, r)
}

fn checked(plan: Result<Plan, PlanError>) -> Plan {
    let plan = plan.unwrap_or_else(|e| panic!("{e}"));
    let mut next = 0;
    for s in &plan.stages {
        assert_eq!(s.layers.start, next, "{plan}");
        next = s.layers.end;
    }
    for m in &plan.memory {
        assert!(m.total_bytes <= m.budget_bytes, "{plan}");
        // Nobody but a serving node holds a whole output head.
        if m.head_bytes > 0 {
            assert_eq!(m.device, "n0", "{plan}");
        }
    }
    plan
}

#[test]
fn qwen_coder_on_three_256_mib_nodes_one_serving() {
    let m = qwen();
    let (g, r) = fleet(&m, 3, 256, 1.2);
    let plan = checked(planner::plan(&g, &r));
    assert_eq!(
        plan.stages.iter().map(|s| s.layers.len()).sum::<usize>(),
        24
    );
    assert!(plan.heads == ["n0"] || !plan.slices.is_empty(), "{plan}");
}

#[test]
fn gemma_on_three_200_mib_nodes() {
    let m = gemma();
    let (g, r) = fleet(&m, 3, 200, 0.45);
    checked(planner::plan(&g, &r));
}

#[test]
fn gemma_on_four_128_mib_nodes_splits_its_head() {
    let m = gemma();
    let (g, r) = fleet(&m, 4, 128, 0.45);
    let plan = checked(planner::plan(&g, &r));
    assert!(plan.slices.len() >= 2, "{plan}");
    assert!(plan.heads.is_empty());
    let mut next = 0;
    for s in &plan.slices {
        assert_eq!(s.rows.start, next);
        next = s.rows.end;
    }
    assert_eq!(next, 262_144);
    // No single node could hold the 170 MiB product.
    let mut whole_only = r.clone();
    whole_only.config.allow_slices = false;
    assert!(planner::plan(&g, &whole_only).is_err());
}

#[test]
fn smollm2_demo_cluster_is_split_evenly() {
    let mut m = smollm2();
    // scripts/demo: --memory 100MiB --max-context 1024.
    m.context_tokens = 1024;
    let (g, r) = fleet(&m, 3, 100, 0.2);
    let plan = checked(planner::plan(&g, &r));
    let counts: Vec<usize> = plan.stages.iter().map(|s| s.layers.len()).collect();
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(hi - lo <= 1, "{plan}");
}

#[test]
fn equal_devices_get_equal_shares_when_costs_tie() {
    let mut m = smollm2();
    m.context_tokens = 1024;
    // No head: any split of 30 layers over three equal nodes (11 fit on each) costs the
    // same sum; the tie goes to the split whose busiest stage is least busy.
    let (g, mut r) = fleet(&m, 3, 50, 0.2);
    r.head_node = None;
    let mut g2 = DeviceGraph::new();
    for d in g.devices() {
        g2.upsert_device(Device {
            serves_api: false,
            ..d.clone()
        })
        .unwrap();
    }
    let plan = checked(planner::plan(&g2, &r));
    let counts: Vec<usize> = plan.stages.iter().map(|s| s.layers.len()).collect();
    assert_eq!(counts, [10, 10, 10], "{plan}");
}

#[test]
fn unplaceable_fleets_say_why_with_numbers() {
    let m = qwen();
    let (g, r) = fleet(&m, 3, 64, 1.2);
    match planner::plan(&g, &r) {
        Err(PlanError::InsufficientMemory {
            needed,
            available,
            layers,
            kv,
            head,
            budget,
        }) => {
            assert_eq!(needed, layers + kv + head);
            assert_eq!(head, 144_646_656);
            assert_eq!(kv, 24 * 512 * 2048);
            assert_eq!(budget, 3 * 64 * MIB);
            assert_eq!(available, budget - 3 * scheduler::DEFAULT_OVERHEAD_BYTES);
        }
        other => panic!("{other:?}"),
    }
    // Enough memory in all, but every node is smaller than one layer with its KV.
    let (g, r) = fleet(&m, 40, 27, 1.2);
    match planner::plan(&g, &r) {
        Err(e @ PlanError::PieceTooLarge { .. }) => {
            let text = e.to_string();
            assert!(text.contains("layer 0 with its KV cache"), "{text}");
            assert!(text.contains(&format!("{}", 11 * MIB)), "{text}");
        }
        other => panic!("{other:?}"),
    }
}
