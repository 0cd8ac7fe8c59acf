//! Straggler policy driven step by step with explicit timestamps.

use scheduler::straggler::{Config, Decision, Health, Monitor};
use scheduler::{Device, DeviceGraph, Link, ModelProfile, Objective, PlanRequest};

fn setup() -> (DeviceGraph, PlanRequest) {
    let mut g = DeviceGraph::new();
    for id in ["a", "b", "c"] {
        g.upsert_device(Device::new(id, 1 << 30, 1.0, 0.1, Some("m".into())))
            .unwrap();
    }
    let lan = Link {
        rtt_ms: 0.1,
        bandwidth_bytes_per_s: 1e9,
    };
    g.set_link("a", "b", lan).unwrap();
    g.set_link("b", "c", lan).unwrap();
    let mut r = PlanRequest::new(ModelProfile {
        sha256: "m".into(),
        n_layers: 12,
        bytes_per_layer: 1_000_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 1_000_000,
        head_bytes: Some(0),
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: 0,
        context_tokens: 0,
        hidden_bytes_per_token: 1_000,
        vocab_size: 100,
    });
    r.objective = Objective::Throughput;
    (g, r)
}

const ORDER: [&str; 3] = ["a", "b", "c"];

/// Feeds one step per 100 ms for every stage from `from` to `to` (exclusive), `b` taking
/// `b_factor` times its expected time; evaluates after every step and returns decisions.
fn drive(
    m: &mut Monitor,
    expected: &[(String, f64)],
    from: u64,
    to: u64,
    b_factor: f64,
) -> Vec<(u64, Decision)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        for (id, ms) in expected {
            let f = if id == "b" { b_factor } else { 1.0 };
            m.record_step(id, t, ms * f).unwrap();
        }
        out.extend(m.evaluate(t).into_iter().map(|d| (t, d)));
        t += 100;
    }
    out
}

fn expected(plan: &scheduler::Plan) -> Vec<(String, f64)> {
    plan.stages
        .iter()
        .map(|s| (s.device.clone(), s.busy_ms / s.slowdown))
        .collect()
}

#[test]
fn slow_stage_triggers_one_rebalance_and_layers_move_off_it() {
    let (g, mut r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    assert_eq!(plan.stages[1].layers.len(), 4);
    let mut m = Monitor::new(Config::default(), &plan, 0);
    let exp = expected(&plan);
    // Healthy for 2 s, then b runs 3x slower for 5 s.
    assert!(drive(&mut m, &exp, 0, 2_000, 1.0).is_empty());
    let decisions = drive(&mut m, &exp, 2_000, 7_000, 3.0);
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let (at, Decision::Rebalance { device, slowdown }) = &decisions[0] else {
        panic!("{decisions:?}");
    };
    assert_eq!(device, "b");
    assert!((slowdown - 3.0).abs() < 1e-9);
    // Needs a median over the window: not on the first slow sample.
    assert!(*at > 2_000);
    m.apply(&mut r);
    assert_eq!(r.slowdown.get("b"), Some(&3.0));
    let replanned = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    assert!(replanned.stages[1].layers.len() < 4, "{replanned}");
}

#[test]
fn hysteresis_prevents_flapping_and_restores_after_hold() {
    let (g, mut r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let config = Config::default();
    let mut m = Monitor::new(config.clone(), &plan, 0);
    let exp = expected(&plan);
    let d = drive(&mut m, &exp, 0, 3_000, 2.5);
    assert_eq!(d.len(), 1);
    // Replan with the slowdown; the monitor judges against nominal speed.
    m.apply(&mut r);
    let plan2 = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    m.set_plan(&plan2, 3_000);
    let exp2 = expected(&plan2);
    // Hovering at 1.6x (between 1.3x and 2x) for a long time: no restore, no new rebalance.
    assert!(drive(&mut m, &exp2, 3_000, 30_000, 1.6).is_empty());
    assert!(matches!(m.health("b"), Some(Health::Straggling { .. })));
    // Back to 1.0x: recovering, restored only after the hold period.
    let d = drive(&mut m, &exp2, 30_000, 60_000, 1.0);
    assert_eq!(d.len(), 1, "{d:?}");
    let (at, Decision::Restore { device }) = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(device, "b");
    assert!(*at >= 30_000 + config.recover_hold_ms, "restored at {at}");
    m.apply(&mut r);
    assert!(r.slowdown.is_empty());
}

#[test]
fn short_spike_does_not_trigger() {
    let (g, r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let mut m = Monitor::new(Config::default(), &plan, 0);
    let exp = expected(&plan);
    drive(&mut m, &exp, 0, 5_000, 1.0);
    // Two slow steps among many normal ones leave the median alone.
    m.record_step("b", 5_000, 100.0).unwrap();
    m.record_step("b", 5_050, 100.0).unwrap();
    assert!(drive(&mut m, &exp, 5_100, 8_000, 1.0).is_empty());
    assert_eq!(m.health("b"), Some(Health::Healthy));
}

#[test]
fn silent_stage_is_evicted_then_restored_when_back() {
    let (g, mut r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let config = Config::default();
    let mut m = Monitor::new(config.clone(), &plan, 0);
    for t in (0..=10_000).step_by(500) {
        m.record_heartbeat("a", t).unwrap();
        m.record_heartbeat("b", t).unwrap();
        if t <= 2_000 {
            m.record_heartbeat("c", t).unwrap();
        }
        let d = m.evaluate(t);
        if t <= 2_000 + config.heartbeat_timeout_ms {
            assert!(d.is_empty(), "at {t}: {d:?}");
        } else if t == 5_500 {
            assert_eq!(d, vec![Decision::Evict { device: "c".into() }]);
        } else {
            assert!(d.is_empty(), "at {t}: {d:?}");
        }
    }
    m.apply(&mut r);
    assert!(r.exclude.contains("c"));
    let replanned = scheduler::planner::plan(&g, &r).unwrap();
    assert!(replanned.stages.iter().all(|s| s.device != "c"));
    // c comes back; restored once it has stayed alive for the hold period.
    let mut restored = None;
    for t in (10_500..=30_000).step_by(500) {
        for id in ["a", "b", "c"] {
            m.record_heartbeat(id, t).unwrap();
        }
        if let Some(d) = m.evaluate(t).into_iter().next() {
            restored = Some((t, d));
            break;
        }
    }
    let (t, d) = restored.expect("restored");
    assert_eq!(d, Decision::Restore { device: "c".into() });
    assert_eq!(t, 10_500 + config.recover_hold_ms);
    m.apply(&mut r);
    assert!(r.exclude.is_empty());
}

#[test]
fn a_stalled_caller_does_not_declare_everyone_dead() {
    let (g, r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let config = Config::default();
    let mut m = Monitor::new(config.clone(), &plan, 0);
    for t in (0..=2_000).step_by(500) {
        for id in ORDER {
            m.record_heartbeat(id, t).unwrap();
        }
        assert!(m.evaluate(t).is_empty());
    }
    // The caller was stopped for 10 s: no evaluation, no heartbeats. Waking, it judges
    // nobody; a and b are heard again, c never is and goes a full timeout later.
    assert!(m.evaluate(12_000).is_empty());
    let mut evicted = None;
    for t in (12_500..=20_000).step_by(500) {
        m.record_heartbeat("a", t).unwrap();
        m.record_heartbeat("b", t).unwrap();
        if let Some(d) = m.evaluate(t).into_iter().next() {
            evicted = Some((t, d));
            break;
        }
    }
    assert_eq!(
        evicted,
        Some((
            12_500 + config.heartbeat_timeout_ms,
            Decision::Evict { device: "c".into() }
        ))
    );
    assert_eq!(m.health("a"), Some(Health::Healthy));
}

#[test]
fn rejects_bad_input() {
    let (g, r) = setup();
    let plan = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let mut m = Monitor::new(Config::default(), &plan, 0);
    assert!(m.record_step("zz", 0, 1.0).is_err());
    assert!(m.record_step("a", 0, f64::NAN).is_err());
    assert!(m.record_heartbeat("zz", 0).is_err());
}

/// A device that stays slow and is planned out entirely: each restore without evidence is
/// followed by a longer hold than the last (10 s, 20 s, 40 s), not a flap every 10 s.
#[test]
fn a_device_that_stays_slow_is_retried_after_longer_and_longer_holds() {
    let (g, _) = setup();
    let config = Config::default();
    let hold = config.recover_hold_ms;
    // The plan without b: it runs no stage, so it has no steps to judge.
    let without_b = {
        let mut g = g.clone();
        g.remove_device("b");
        let lan = Link {
            rtt_ms: 0.1,
            bandwidth_bytes_per_s: 1e9,
        };
        g.set_link("a", "c", lan).unwrap();
        let (_, r) = setup();
        scheduler::planner::plan_in_order(&g, &r, &["a", "c"]).unwrap()
    };
    let (_, r) = setup();
    let with_b = scheduler::planner::plan_in_order(&g, &r, &ORDER).unwrap();
    let mut m = Monitor::new(config, &with_b, 0);
    let mut now = 0;
    let mut gaps = Vec::new();
    for _round in 0..3 {
        // b is given layers and runs 4x slow until flagged.
        m.set_plan(&with_b, now);
        let d = drive(&mut m, &expected(&with_b), now, now + 3_000, 4.0);
        assert!(
            matches!(d.as_slice(), [(_, Decision::Rebalance { .. })]),
            "{d:?}"
        );
        now += 3_000;
        // Planned out: only heartbeats until the monitor gives it another chance.
        m.set_plan(&without_b, now);
        let flagged_out = now;
        loop {
            now += 100;
            for id in ORDER {
                m.record_heartbeat(id, now).unwrap();
            }
            if let [Decision::Restore { device }] = m.evaluate(now).as_slice() {
                assert_eq!(device, "b");
                break;
            }
            assert!(now < flagged_out + 100 * hold, "never restored");
        }
        gaps.push(now - flagged_out);
    }
    assert!(gaps[0] >= hold && gaps[0] < 2 * hold, "{gaps:?}");
    assert!(gaps[1] >= 2 * hold && gaps[1] < 3 * hold, "{gaps:?}");
    assert!(gaps[2] >= 4 * hold && gaps[2] < 5 * hold, "{gaps:?}");
}

/// A stage at half speed: the monitor flags it, and the rebalance it calls for keeps the
/// current stages, moves the fewest layers and leaves the slow stage a share, where a fresh
/// plan would drop it; one stream keeps at least 80 % of its predicted speed.
#[test]
fn a_stage_at_half_speed_keeps_a_share_and_most_of_the_speed() {
    let mut g = DeviceGraph::new();
    // Each device holds 8 of the 12 layers: two must share, and either of the other two
    // could take a slow one's layers.
    let layer = 1_000_000 + 1_000 * 64;
    for id in ["a", "b", "c"] {
        g.upsert_device(Device {
            overhead_bytes: 0,
            ..Device::new(id, 8 * layer, 1.0, 0.1, Some("m".into()))
        })
        .unwrap();
    }
    let lan = Link {
        rtt_ms: 0.2,
        bandwidth_bytes_per_s: 1e9,
    };
    for (x, y) in [("a", "b"), ("b", "c"), ("a", "c")] {
        g.set_link(x, y, lan).unwrap();
    }
    let mut r = PlanRequest::new(ModelProfile {
        sha256: "m".into(),
        n_layers: 12,
        bytes_per_layer: 1_000_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 1_000_000,
        head_bytes: Some(0),
        head_cost_layers: 0.0,
        kv_bytes_per_token_per_layer: 1,
        context_tokens: 1_000,
        hidden_bytes_per_token: 1_000,
        vocab_size: 100,
    });
    let before = scheduler::planner::plan(&g, &r).unwrap();
    let counts: Vec<usize> = before.stages.iter().map(|s| s.layers.len()).collect();
    assert_eq!(counts, [6, 6], "equal devices get equal shares: {before}");
    let victim = before.stages[0].device.clone();
    let config = Config::default();
    let mut m = Monitor::new(config.clone(), &before, 0);
    let mut t = 0;
    let mut decisions = Vec::new();
    while decisions.is_empty() && t < 10_000 {
        for s in &before.stages {
            let f = if s.device == victim { 2.0 } else { 1.0 };
            m.record_step(&s.device, t, s.busy_ms * f).unwrap();
        }
        decisions = m.evaluate(t);
        t += 100;
    }
    assert!(
        matches!(&decisions[..], [d @ Decision::Rebalance { device, .. }] if *device == victim && d.moves_in_place()),
        "{decisions:?}"
    );
    m.apply(&mut r);
    let fresh = scheduler::planner::plan(&g, &r).unwrap();
    assert!(
        fresh.stages.iter().all(|s| s.device != victim),
        "a fresh plan drops it: {fresh}"
    );
    let after = scheduler::planner::rebalance(&g, &r, &before, config.rebalance_tolerance).unwrap();
    let share = after
        .stages
        .iter()
        .find(|s| s.device == victim)
        .map_or(0, |s| s.layers.len());
    assert!(share > 0 && share < 6, "{after}");
    assert!(
        after.predicted_ms_per_token <= before.predicted_ms_per_token / 0.8,
        "before {before}\nafter {after}"
    );
    assert!(
        after.predicted_ms_per_token
            <= fresh.predicted_ms_per_token * (1.0 + config.rebalance_tolerance) + 1e-9,
        "fresh {fresh}\nafter {after}"
    );
    assert!(
        moved(&before, &after) < moved(&before, &fresh),
        "{after}\n{fresh}"
    );
}

/// Layers whose device differs between two plans.
fn moved(a: &scheduler::Plan, b: &scheduler::Plan) -> usize {
    let owner = |p: &scheduler::Plan, l: u32| p.stage_of_layer(l).map(|s| s.device.clone());
    (0..12).filter(|&l| owner(a, l) != owner(b, l)).count()
}
