//! Property tests: the planner's output is a valid partition priced by the cost model, and on
//! small graphs its objective equals an independent brute force over every ordered subset,
//! every split and, for a split output head, every way to place its vocabulary rows.

use proptest::prelude::*;
use scheduler::planner::{self, even_split, plan_in_order};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Objective, Plan, PlanRequest};

const LAYER_MEM: u64 = 1_000 + 10 * 8;
const EMBED: u64 = 500;
const RESULT: u64 = 40;

#[derive(Debug, Clone)]
struct Dev {
    ms: f64,
    /// Memory in layer units beyond overhead; 9 = excluded.
    units: u64,
    holds: bool,
    slowdown: f64,
    serves: bool,
    overhead: u64,
    head_ms: Option<f64>,
    /// (quota in cores, period ms)
    quota: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pair {
    None,
    Up(f64, f64),
    Down,
}

#[derive(Debug, Clone)]
struct Case {
    n_layers: u32,
    head_bytes: Option<u64>,
    head_cost: f64,
    hidden: u64,
    vocab: u32,
    devices: Vec<Dev>,
    /// Per ordered pair (i != j), row-major.
    links: Vec<Pair>,
    default_link: Option<(f64, f64)>,
    head: Option<usize>,
    objective: Objective,
    slices: bool,
}

fn dev() -> impl Strategy<Value = Dev> {
    (
        (0.1f64..5.0, 0u64..=9, prop::bool::weighted(0.85)),
        prop_oneof![3 => Just(1.0), 1 => 1.0f64..4.0],
        (prop::bool::weighted(0.3), 50u64..300),
        prop::option::weighted(0.3, 0.0f64..20.0),
        prop::option::weighted(0.25, (0.2f64..0.9, prop_oneof![Just(1.0), Just(100.0)])),
    )
        .prop_map(
            |((ms, units, holds), slowdown, (serves, overhead), head_ms, quota)| Dev {
                ms,
                units,
                holds,
                slowdown,
                serves,
                overhead,
                head_ms,
                quota,
            },
        )
}

fn case(
    max_k: usize,
    max_layers: u32,
    max_vocab: u32,
    slices: bool,
) -> impl Strategy<Value = Case> {
    (1usize..=max_k, 1u32..=max_layers).prop_flat_map(move |(k, n_layers)| {
        let pair = prop_oneof![
            2 => Just(Pair::None),
            6 => (0.0f64..10.0, 1e4f64..1e8).prop_map(|(r, b)| Pair::Up(r, b)),
            1 => Just(Pair::Down),
        ];
        (
            (
                Just(n_layers),
                // Split heads: outputs up to a few layers' worth, which a device may not hold.
                prop::option::of(0u64..if slices { 4_000 } else { 1_000 }),
                0.0f64..3.0,
                1u64..5_000,
            ),
            1u32..=max_vocab,
            prop::collection::vec(dev(), k),
            prop::collection::vec(pair, k * (k - 1)),
            prop::option::of((0.0f64..10.0, 1e4f64..1e8)),
            prop::option::weighted(if slices { 0.9 } else { 0.5 }, 0..k),
            prop_oneof![Just(Objective::Latency), Just(Objective::Throughput)],
        )
            .prop_map(
                move |(
                    (n_layers, head_bytes, head_cost, hidden),
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
                    slices,
                },
            )
    })
}

fn id(i: usize) -> String {
    format!("d{i}")
}

fn pair_index(k: usize, from: usize, to: usize) -> usize {
    from * (k - 1) + if to > from { to - 1 } else { to }
}

fn link((rtt_ms, bandwidth_bytes_per_s): (f64, f64)) -> Link {
    Link {
        rtt_ms,
        bandwidth_bytes_per_s,
    }
}

fn output(c: &Case) -> u64 {
    c.head_bytes.unwrap_or(EMBED)
}

fn budget(c: &Case, i: usize) -> u64 {
    let d = &c.devices[i];
    // Room for a whole head on some devices (even units), none on others.
    let extra = if d.units.is_multiple_of(2) {
        output(c) + 100
    } else {
        0
    };
    d.overhead + extra + d.units * LAYER_MEM * 3 / 2
}

fn build(c: &Case) -> (DeviceGraph, PlanRequest) {
    let k = c.devices.len();
    let mut g = DeviceGraph::new();
    for (i, d) in c.devices.iter().enumerate() {
        let holds = if d.holds { "m" } else { "other" };
        g.upsert_device(Device {
            serves_api: d.serves,
            overhead_bytes: d.overhead,
            head_ms: d.head_ms,
            cpu_quota: d.quota.map(|q| q.0),
            cpu_period_ms: d.quota.map(|q| q.1),
            ..Device::new(id(i), budget(c, i), d.ms, d.ms / 4.0, Some(holds.into()))
        })
        .unwrap();
    }
    for a in 0..k {
        for b in (0..k).filter(|&b| b != a) {
            match c.links[pair_index(k, a, b)] {
                Pair::None => {}
                Pair::Up(r, bw) => g.set_one_way_link(&id(a), &id(b), link((r, bw))).unwrap(),
                Pair::Down => {
                    // Down both ways, then the other direction re-measured if it was up.
                    g.set_link_down(&id(a), &id(b)).unwrap();
                    if let Pair::Up(r, bw) = c.links[pair_index(k, b, a)] {
                        g.set_one_way_link(&id(b), &id(a), link((r, bw))).unwrap();
                    }
                }
            }
        }
    }
    let mut r = PlanRequest::new(ModelProfile {
        sha256: "m".into(),
        n_layers: c.n_layers,
        bytes_per_layer: 1_000,
        layer_bytes: Vec::new(),
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
    r.config.default_link = c.default_link.map(link);
    r.config.slice_result_bytes = RESULT;
    r.config.allow_slices = c.slices;
    for (i, d) in c.devices.iter().enumerate() {
        if d.slowdown != 1.0 {
            r.slowdown.insert(id(i), d.slowdown);
        }
    }
    r.exclude
        .extend((0..k).filter(|&i| c.devices[i].units == 9).map(id));
    (g, r)
}

fn eligible(c: &Case, i: usize) -> bool {
    c.devices[i].holds && c.devices[i].units != 9
}

fn holder(c: &Case, i: usize) -> bool {
    (c.devices[i].serves && eligible(c, i)) || c.head == Some(i)
}

/// The link a hop from `a` to `b` uses, straight from the case (not the graph).
fn hop_link(c: &Case, a: usize, b: usize) -> Option<Link> {
    let k = c.devices.len();
    let down = |x: usize, y: usize| c.links[pair_index(k, x, y)] == Pair::Down;
    match c.links[pair_index(k, a, b)] {
        Pair::Up(r, bw) => Some(link((r, bw))),
        // A pair marked down from the other side is down both ways unless re-measured.
        _ if down(a, b) || down(b, a) => None,
        _ => c.default_link.map(link),
    }
}

/// Work of `full` ms at full speed under load: one thread over a quota below one core.
fn sustained(c: &Case, i: usize, full: f64) -> f64 {
    match c.devices[i].quota {
        Some((q, _)) if q < 1.0 => full / q,
        _ => full,
    }
}

/// The same work in one stream: full speed when its CPU time fits one period's quota.
fn one_stream(c: &Case, i: usize, full: f64) -> f64 {
    let period = c.devices[i].quota.map_or(100.0, |q| q.1);
    let s = sustained(c, i, full);
    if s <= period {
        full
    } else {
        s
    }
}

/// Independent cost model: objective of `counts` over `order` with `rows` vocabulary rows
/// per device (`None`: whole heads), `None` if infeasible.
fn oracle(c: &Case, order: &[usize], counts: &[u32], rows: Option<&[u32]>) -> Option<f64> {
    let k = c.devices.len();
    let slow = |i: usize| c.devices[i].slowdown;
    let row_bytes = output(c).div_ceil(u64::from(c.vocab));
    let head_ms = |i: usize| {
        c.devices[i]
            .head_ms
            .unwrap_or(c.head_cost * c.devices[i].ms)
            * slow(i)
    };
    let mut mem = vec![0u64; k];
    let mut used = vec![false; k];
    let mut busy = vec![0.0f64; k];
    let mut latency = 0.0;
    for (&d, &n) in order.iter().zip(counts) {
        mem[d] += u64::from(n) * LAYER_MEM;
        used[d] = true;
        let full = f64::from(n) * c.devices[d].ms * slow(d);
        busy[d] += sustained(c, d, full);
        latency += one_stream(c, d, full);
    }
    let mut links = Vec::new();
    let mut head_latency = 0.0;
    match rows {
        None => {
            for i in (0..k).filter(|&i| holder(c, i)) {
                mem[i] += output(c);
                used[i] = true;
            }
            if let Some(h) = c.head {
                busy[h] += sustained(c, h, head_ms(h));
                head_latency = one_stream(c, h, head_ms(h));
            }
        }
        Some(rows) => {
            let h = c.head?;
            for (i, &n) in rows.iter().enumerate().filter(|(_, n)| **n > 0) {
                if !eligible(c, i) {
                    return None;
                }
                mem[i] += u64::from(n) * row_bytes;
                used[i] = true;
                let full = f64::from(n) / f64::from(c.vocab) * head_ms(i);
                busy[i] += sustained(c, i, full);
                let mut t = one_stream(c, i, full);
                if i != h {
                    let there = hop_link(c, h, i)?;
                    let back = hop_link(c, i, h)?;
                    t += there.hop_ms(c.hidden) + back.hop_ms(RESULT);
                    links.push(there.transfer_ms(c.hidden));
                    links.push(back.transfer_ms(RESULT));
                }
                head_latency = f64::max(head_latency, t);
            }
        }
    }
    for i in (0..k).filter(|&i| used[i]) {
        if mem[i] + c.devices[i].overhead > budget(c, i) {
            return None;
        }
    }
    let mut path: Vec<usize> = Vec::new();
    if let Some(h) = c.head.filter(|h| *h != order[0]) {
        path.push(h);
    }
    path.extend(order);
    if let Some(h) = c.head.filter(|h| *h != order[order.len() - 1]) {
        path.push(h);
    }
    let mut network = 0.0;
    for w in path.windows(2) {
        let l = hop_link(c, w[0], w[1])?;
        network += l.hop_ms(c.hidden);
        links.push(l.transfer_ms(c.hidden));
    }
    Some(match c.objective {
        Objective::Latency => latency + network + head_latency,
        Objective::Throughput => busy.iter().chain(&links).copied().fold(0.0, f64::max),
    })
}

/// Calls `f` with every composition of `n` into `k` parts of at least `min` each.
fn compositions(n: u32, k: usize, min: u32, prefix: &mut Vec<u32>, f: &mut dyn FnMut(&[u32])) {
    if k == 0 {
        if n == 0 {
            f(prefix);
        }
        return;
    }
    let rest_min = min * (k as u32 - 1);
    for first in min..=n.saturating_sub(rest_min) {
        prefix.push(first);
        compositions(n - first, k - 1, min, prefix, f);
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

/// Best whole-head and best split-head objective values.
fn brute_force(c: &Case) -> (Option<f64>, Option<f64>) {
    let k = c.devices.len();
    let usable: Vec<usize> = (0..k).filter(|&i| eligible(c, i)).collect();
    let (mut whole, mut sliced): (Option<f64>, Option<f64>) = (None, None);
    let keep = |best: &mut Option<f64>, v: f64| *best = Some(best.map_or(v, |b| b.min(v)));
    ordered_subsets(&usable, &mut Vec::new(), &mut |order| {
        if order.len() > c.n_layers as usize {
            return;
        }
        compositions(c.n_layers, order.len(), 1, &mut Vec::new(), &mut |counts| {
            if let Some(v) = oracle(c, order, counts, None) {
                keep(&mut whole, v);
            }
            if c.slices && c.head.is_some() {
                compositions(c.vocab, k, 0, &mut Vec::new(), &mut |rows| {
                    if let Some(v) = oracle(c, order, counts, Some(rows)) {
                        keep(&mut sliced, v);
                    }
                });
            }
        });
    });
    (whole, sliced)
}

/// A plan as the oracle takes it: device order, layer counts, rows per device if split.
type Assignment = (Vec<usize>, Vec<u32>, Option<Vec<u32>>);

/// The plan's devices, layer counts and rows per device, checked for shape.
fn shape(c: &Case, plan: &Plan) -> Result<Assignment, TestCaseError> {
    let mut next = 0;
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    let mut counts = Vec::new();
    for s in &plan.stages {
        prop_assert_eq!(s.layers.start, next, "contiguous and ordered");
        prop_assert!(s.layers.end > s.layers.start, "each stage has a layer");
        prop_assert!(seen.insert(s.device.clone()), "device used once");
        let i = s.device[1..].parse::<usize>().unwrap();
        prop_assert!(eligible(c, i), "eligible");
        next = s.layers.end;
        order.push(i);
        counts.push(s.layers.len() as u32);
    }
    prop_assert_eq!(next, c.n_layers, "every layer assigned");
    for m in &plan.memory {
        prop_assert!(m.total_bytes <= m.budget_bytes, "memory respected");
    }
    if plan.slices.is_empty() {
        return Ok((order, counts, None));
    }
    let mut rows = vec![0u32; c.devices.len()];
    let mut next = 0;
    for s in &plan.slices {
        prop_assert_eq!(s.rows.start, next, "slices tile the vocabulary");
        prop_assert!(s.rows.end > s.rows.start);
        rows[s.device[1..].parse::<usize>().unwrap()] += s.rows.len() as u32;
        next = s.rows.end;
    }
    prop_assert_eq!(next, c.vocab);
    Ok((order, counts, Some(rows)))
}

/// The plan is well formed and priced as the independent model prices it.
fn assert_priced(c: &Case, plan: &Plan) -> Result<(), TestCaseError> {
    let (order, counts, rows) = shape(c, plan)?;
    let expected = oracle(c, &order, &counts, rows.as_deref());
    prop_assert!(expected.is_some(), "oracle accepts the plan\n{}", plan);
    let expected = expected.unwrap();
    prop_assert!(
        (plan.objective_ms() - expected).abs() <= 1e-9 * expected.max(1.0),
        "plan says {} ms, oracle {} ms\n{}",
        plan.objective_ms(),
        expected,
        plan
    );
    Ok(())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn planner_matches_brute_force(c in case(5, 12, 2_000, false)) {
        let (g, r) = build(&c);
        let (best, _) = brute_force(&c);
        match (planner::plan(&g, &r), best) {
            (Ok(plan), Some(best)) => {
                assert_priced(&c, &plan)?;
                prop_assert!(
                    close(plan.objective_ms(), best),
                    "planner {} vs brute force {}\n{}", plan.objective_ms(), best, plan
                );
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "planner {:?} vs brute force {:?}", got, want),
        }
    }

    #[test]
    fn split_heads_are_valid_and_found_when_needed(c in case(4, 6, 5, true)) {
        let (g, r) = build(&c);
        let (whole, sliced) = brute_force(&c);
        match planner::plan(&g, &r) {
            Ok(plan) => {
                assert_priced(&c, &plan)?;
                let best = whole.into_iter().chain(sliced).fold(f64::INFINITY, f64::min);
                prop_assert!(plan.objective_ms() >= best - 1e-9 * best.max(1.0));
                // A whole-head plan is exactly the best whole-head plan.
                if plan.slices.is_empty() {
                    prop_assert!(close(plan.objective_ms(), whole.unwrap()), "{}", plan);
                }
            }
            Err(e) => prop_assert!(
                whole.is_none() && sliced.is_none(),
                "planner failed ({e}) but brute force found whole {whole:?} / split {sliced:?}"
            ),
        }
    }

    #[test]
    fn dp_is_never_worse_than_even_split(c in case(5, 12, 2_000, false)) {
        let (g, r) = build(&c);
        if let Ok(even) = even_split(&g, &r) {
            assert_priced(&c, &even)?;
            let order: Vec<&str> = even.stages.iter().map(|s| s.device.as_str()).collect();
            let dp = plan_in_order(&g, &r, &order).unwrap();
            assert_priced(&c, &dp)?;
            prop_assert!(dp.objective_ms() <= even.objective_ms() + 1e-9);
            let best = planner::plan(&g, &r).unwrap();
            prop_assert!(best.objective_ms() <= dp.objective_ms() + 1e-9);
        }
    }
}

/// The heuristic (forced by `exact_limit = 0`) still yields valid plans, priced right.
#[test]
fn heuristic_plans_are_valid() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&case(5, 12, 2_000, false), |c| {
            let (g, mut r) = build(&c);
            r.config.exact_limit = 0;
            if let Ok(plan) = planner::plan(&g, &r) {
                assert_priced(&c, &plan)?;
                if let (Some(best), _) = brute_force(&c) {
                    prop_assert!(plan.objective_ms() >= best - 1e-9 * best.max(1.0));
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Layers whose device differs between two plans of `n` layers.
fn moved(a: &Plan, b: &Plan, n: u32) -> usize {
    let owner = |p: &Plan, l: u32| p.stage_of_layer(l).map(|s| s.device.clone());
    (0..n).filter(|&l| owner(a, l) != owner(b, l)).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// From the plan made before the slowdowns, a rebalance comes within the tolerance of
    /// the best plan made after them, and moves no more layers than that best plan would.
    #[test]
    fn rebalancing_moves_few_layers_and_stays_within_tolerance(c in case(4, 10, 2_000, true)) {
        let (g, r) = build(&c);
        let mut healthy = r.clone();
        healthy.slowdown.clear();
        let Ok(before) = planner::plan(&g, &healthy) else { return Ok(()) };
        let best = planner::plan(&g, &r).unwrap();
        let after = planner::rebalance(&g, &r, &before, 0.15).unwrap();
        assert_priced(&c, &after)?;
        prop_assert!(
            after.objective_ms() <= best.objective_ms() * 1.15 + 1e-9 * best.objective_ms().max(1.0),
            "best {}\nafter {}", best, after
        );
        prop_assert!(moved(&before, &after, c.n_layers) <= moved(&before, &best, c.n_layers));
    }
}
