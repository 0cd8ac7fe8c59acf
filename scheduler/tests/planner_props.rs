//! Property tests: the planner's output is a valid partition, and on small graphs its
//! objective equals an independent brute force over every ordered subset and every split.

use proptest::prelude::*;
use scheduler::planner::{self, even_split, plan_in_order};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Objective, Plan, PlanRequest};

const OVERHEAD: u64 = 100;

#[derive(Debug, Clone)]
struct Case {
    n_layers: u32,
    head_bytes: Option<u64>,
    head_cost: f64,
    hidden: u64,
    vocab: u32,
    /// (decode ms, memory in layer units, holds model, slowdown)
    devices: Vec<(f64, u64, bool, f64)>,
    /// Per unordered pair (i < j), row-major: a link or none.
    links: Vec<Option<(f64, f64)>>,
    default_link: Option<(f64, f64)>,
    head: Option<usize>,
    objective: Objective,
}

const LAYER_MEM: u64 = 1_000 + 10 * 8;
const EMBED: u64 = 500;

fn case() -> impl Strategy<Value = Case> {
    (1usize..=5, 1u32..=12).prop_flat_map(|(k, n_layers)| {
        let device = (
            0.1f64..5.0,
            0u64..=9,
            prop::bool::weighted(0.85),
            prop_oneof![Just(1.0), 1.0f64..4.0],
        );
        let link = prop::option::weighted(0.75, (0.0f64..10.0, 1e4f64..1e8));
        (
            Just(n_layers),
            prop::option::of(0u64..1_000),
            0.0f64..3.0,
            1u64..5_000,
            1u32..2_000,
            prop::collection::vec(device, k),
            prop::collection::vec(link, k * (k - 1) / 2),
            prop::option::of((0.0f64..10.0, 1e4f64..1e8)),
            prop::option::of(0..k),
            prop_oneof![Just(Objective::Latency), Just(Objective::Throughput)],
        )
            .prop_map(
                |(
                    n_layers,
                    head_bytes,
                    head_cost,
                    hidden,
                    vocab,
                    devices,
                    links,
                    default_link,
                    head,
                    objective,
                )| Case {
                    n_layers,
                    head_bytes,
                    head_cost,
                    hidden,
                    vocab,
                    devices,
                    links,
                    default_link,
                    head,
                    objective,
                },
            )
    })
}

fn id(i: usize) -> String {
    format!("d{i}")
}

fn link((rtt_ms, bandwidth_bytes_per_s): (f64, f64)) -> Link {
    Link {
        rtt_ms,
        bandwidth_bytes_per_s,
    }
}

fn pair_index(k: usize, a: usize, b: usize) -> usize {
    let (i, j) = if a < b { (a, b) } else { (b, a) };
    // Row-major over i < j.
    i * k - i * (i + 1) / 2 + (j - i - 1)
}

fn build(c: &Case) -> (DeviceGraph, PlanRequest) {
    let k = c.devices.len();
    let mut g = DeviceGraph::new();
    for (i, &(ms, units, holds, _)) in c.devices.iter().enumerate() {
        // Memory: overhead + embedding/head room (sometimes) + `units` layers.
        let extra = if units % 2 == 0 { EMBED + 1_000 } else { 0 };
        g.upsert_device(Device {
            id: id(i),
            memory_bytes: OVERHEAD + extra + units * LAYER_MEM * 3 / 2,
            threads: 1,
            decode_ms_per_layer: ms,
            prefill_ms_per_layer: ms / 4.0,
            model_sha256: Some(if holds { "m" } else { "other" }.into()),
        })
        .unwrap();
    }
    for a in 0..k {
        for b in a + 1..k {
            if let Some(l) = c.links[pair_index(k, a, b)] {
                g.set_link(&id(a), &id(b), link(l)).unwrap();
            }
        }
    }
    let mut r = PlanRequest::new(ModelProfile {
        sha256: "m".into(),
        n_layers: c.n_layers,
        bytes_per_layer: 1_000,
        embedding_bytes: EMBED,
        head_bytes: c.head_bytes,
        head_cost_layers: c.head_cost,
        kv_bytes_per_token_per_layer: 10,
        context_tokens: 8,
        hidden_bytes_per_token: c.hidden,
        vocab_size: c.vocab,
    });
    r.objective = c.objective;
    r.head_node = c.head.map(id);
    r.config.overhead_bytes = OVERHEAD;
    r.config.default_link = c.default_link.map(link);
    for (i, d) in c.devices.iter().enumerate() {
        if d.3 != 1.0 {
            r.slowdown.insert(id(i), d.3);
        }
    }
    r.exclude
        .extend((0..k).filter(|&i| c.devices[i].1 == 9).map(id));
    (g, r)
}

/// Independent cost model: objective of `counts` over `order`, `None` if infeasible.
fn oracle(
    c: &Case,
    g: &DeviceGraph,
    r: &PlanRequest,
    order: &[usize],
    counts: &[u32],
) -> Option<f64> {
    let k = order.len();
    let slow = |i: usize| c.devices[i].3;
    let mut compute = Vec::new();
    for (j, (&d, &n)) in order.iter().zip(counts).enumerate() {
        let (embed, head) = (j == 0, j + 1 == k);
        let mut mem = OVERHEAD + u64::from(n) * LAYER_MEM;
        if embed {
            mem += EMBED;
        }
        if head {
            mem += match c.head_bytes {
                Some(b) => b,
                None if embed => 0,
                None => EMBED,
            };
        }
        if mem > g.device(&id(d)).unwrap().memory_bytes {
            return None;
        }
        let units = f64::from(n) + if head { c.head_cost } else { 0.0 };
        compute.push(units * c.devices[d].0 * slow(d));
    }
    let find = |a: &str, b: &str| g.link(a, b).or(r.config.default_link);
    // (latency, transfer) of every hop.
    let mut hops = Vec::new();
    let head = c.head.map(id);
    let first = id(order[0]);
    let last = id(order[k - 1]);
    if let Some(h) = head.as_ref().filter(|h| **h != first) {
        hops.push((find(h, &first)?, 4u64));
    }
    for w in order.windows(2) {
        hops.push((find(&id(w[0]), &id(w[1]))?, c.hidden));
    }
    if let Some(h) = head.as_ref().filter(|h| **h != last) {
        hops.push((find(&last, h)?, u64::from(c.vocab) * 4));
    }
    let xfer = |l: &Link, b: u64| b as f64 * 1000.0 / l.bandwidth_bytes_per_s;
    Some(match c.objective {
        Objective::Latency => {
            compute.iter().sum::<f64>()
                + hops
                    .iter()
                    .map(|(l, b)| l.rtt_ms / 2.0 + xfer(l, *b))
                    .sum::<f64>()
        }
        Objective::Throughput => compute
            .iter()
            .copied()
            .chain(hops.iter().map(|(l, b)| xfer(l, *b)))
            .fold(0.0, f64::max),
    })
}

/// Calls `f` with every composition of `n` into `k` positive parts.
fn compositions(n: u32, k: usize, prefix: &mut Vec<u32>, f: &mut dyn FnMut(&[u32])) {
    if k == 1 {
        prefix.push(n);
        f(prefix);
        prefix.pop();
        return;
    }
    for first in 1..=n.saturating_sub(k as u32 - 1) {
        prefix.push(first);
        compositions(n - first, k - 1, prefix, f);
        prefix.pop();
    }
}

/// Calls `f` with every ordered subset (non-empty) of `items`.
fn ordered_subsets(items: &[usize], prefix: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
    for &x in items {
        if prefix.contains(&x) {
            continue;
        }
        prefix.push(x);
        f(prefix);
        ordered_subsets(items, prefix, f);
        prefix.pop();
    }
}

fn brute_force(c: &Case, g: &DeviceGraph, r: &PlanRequest) -> Option<f64> {
    let eligible: Vec<usize> = (0..c.devices.len())
        .filter(|&i| c.devices[i].2 && c.devices[i].1 != 9)
        .collect();
    let mut best: Option<f64> = None;
    ordered_subsets(&eligible, &mut Vec::new(), &mut |order| {
        if order.len() > c.n_layers as usize {
            return;
        }
        compositions(c.n_layers, order.len(), &mut Vec::new(), &mut |counts| {
            if let Some(v) = oracle(c, g, r, order, counts) {
                best = Some(best.map_or(v, |b: f64| b.min(v)));
            }
        });
    });
    best
}

fn assert_valid(
    c: &Case,
    g: &DeviceGraph,
    r: &PlanRequest,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let mut next = 0;
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    let mut counts = Vec::new();
    for (i, s) in plan.stages.iter().enumerate() {
        prop_assert_eq!(s.layers.start, next, "contiguous and ordered");
        prop_assert!(s.layers.end > s.layers.start, "each stage has a layer");
        prop_assert_eq!(s.embed, i == 0);
        prop_assert_eq!(s.head, i + 1 == plan.stages.len());
        prop_assert!(seen.insert(s.device.clone()), "device used once");
        let d = g.device(&s.device).unwrap();
        prop_assert!(d.holds("m") && !r.exclude.contains(&s.device), "eligible");
        prop_assert!(s.memory_bytes <= d.memory_bytes, "memory respected");
        next = s.layers.end;
        order.push(s.device[1..].parse::<usize>().unwrap());
        counts.push(s.layers.len() as u32);
    }
    prop_assert_eq!(next, c.n_layers, "every layer assigned");
    let expected = oracle(c, g, r, &order, &counts);
    prop_assert!(expected.is_some(), "oracle accepts the plan");
    let expected = expected.unwrap();
    prop_assert!((plan.objective_ms() - expected).abs() <= 1e-9 * expected.max(1.0));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn planner_matches_brute_force(c in case()) {
        let (g, r) = build(&c);
        let best = brute_force(&c, &g, &r);
        match (planner::plan(&g, &r), best) {
            (Ok(plan), Some(best)) => {
                assert_valid(&c, &g, &r, &plan)?;
                prop_assert!(
                    (plan.objective_ms() - best).abs() <= 1e-9 * best.max(1.0),
                    "planner {} vs brute force {}\n{}", plan.objective_ms(), best, plan
                );
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "planner {:?} vs brute force {:?}", got, want),
        }
    }

    #[test]
    fn dp_is_never_worse_than_even_split(c in case()) {
        let (g, r) = build(&c);
        if let Ok(even) = even_split(&g, &r) {
            assert_valid(&c, &g, &r, &even)?;
            let order: Vec<&str> = even.stages.iter().map(|s| s.device.as_str()).collect();
            let dp = plan_in_order(&g, &r, &order).unwrap();
            assert_valid(&c, &g, &r, &dp)?;
            prop_assert!(dp.objective_ms() <= even.objective_ms() + 1e-9);
            let best = planner::plan(&g, &r).unwrap();
            prop_assert!(best.objective_ms() <= dp.objective_ms() + 1e-9);
        }
    }
}

/// The heuristic (forced by `exact_limit = 0`) still yields valid plans and never loses to
/// an even split in the same order.
#[test]
fn heuristic_plans_are_valid() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&case(), |c| {
            let (g, mut r) = build(&c);
            r.config.exact_limit = 0;
            if let Ok(plan) = planner::plan(&g, &r) {
                assert_valid(&c, &g, &r, &plan)?;
                if let Some(best) = brute_force(&c, &g, &r) {
                    prop_assert!(plan.objective_ms() >= best - 1e-9 * best.max(1.0));
                }
            }
            Ok(())
        })
        .unwrap();
}
