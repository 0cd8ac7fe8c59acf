//! The machine's behaviour, deterministically: several machines in memory, simulated time.

use transport::discovery::{Keypair, PeerId};

use super::super::control::{Assignment, Control, StageAssignment};
use super::super::coordinator::Placement;
use super::sim::{Sim, LOAD_MS, REPLAN_MS, SHA};
use super::{Input, StageReport, Tick};

/// Enough for the whole model on one node; 100 MiB is not (three share it).
const BIG: u64 = 1024;
const SMALL: u64 = 120;

fn layers_of(plan: &Assignment, peer: &str) -> u32 {
    plan.stages
        .iter()
        .filter(|s| s.peer == peer)
        .map(|s| s.layers[1] - s.layers[0])
        .sum()
}

fn covers_every_layer_once(plan: &Assignment) -> bool {
    let mut next = 0;
    for s in &plan.stages {
        if s.layers[0] != next {
            return false;
        }
        next = s.layers[1];
    }
    next == 30
}

fn three(placement: Placement) -> Sim {
    three_of(SMALL, placement)
}

fn three_of(memory_mib: u64, placement: Placement) -> Sim {
    let mut sim = Sim::new(placement);
    for _ in 0..3 {
        sim.add(memory_mib, 0.2);
    }
    sim.run(2000);
    sim
}

#[test]
fn a_lone_node_plans_for_itself_and_serves() {
    let mut sim = Sim::new(Placement::Planned);
    let a = sim.add(BIG, 0.2);
    assert!(sim.active(a).is_none(), "not before the replan delay");
    sim.run(REPLAN_MS + LOAD_MS + 100);
    let plan = sim.agreed().expect("a plan");
    assert_eq!(plan.stages.len(), 1);
    assert!(covers_every_layer_once(&plan));
    let route = sim.nodes[&a].machine.route();
    assert_eq!(route.epoch, plan.epoch);
    assert!(route.first.is_some());
}

#[test]
fn three_nodes_agree_on_one_plan_over_all_of_them() {
    let sim = three(Placement::Even);
    let plan = sim.agreed().expect("one plan everywhere");
    assert_eq!(plan.stages.len(), 3);
    assert!(covers_every_layer_once(&plan));
    // Every stage but the last points at the next one's address.
    for (i, s) in plan.stages.iter().enumerate() {
        let node = &sim.nodes[&s.peer.parse().unwrap()];
        let stage = &node.stages[&plan.epoch];
        match plan.stages.get(i + 1) {
            Some(next) => {
                let next_node = &sim.nodes[&next.peer.parse().unwrap()];
                assert_eq!(stage.next, next_node.stages[&plan.epoch].addr);
            }
            None => assert_eq!(stage.next, None),
        }
    }
}

#[test]
fn only_the_lowest_peer_coordinates() {
    let sim = three(Placement::Even);
    let plan = sim.agreed().unwrap();
    assert_eq!(plan.coordinator, sim.by_id()[0].to_string());
}

#[test]
fn a_burst_of_joins_makes_one_plan() {
    let mut sim = Sim::new(Placement::Even);
    for _ in 0..4 {
        sim.add(BIG, 0.2);
        sim.run(100);
    }
    sim.run(3000);
    let plan = sim.agreed().unwrap();
    assert_eq!(plan.stages.len(), 4);
    // The debounce held the plan until the joins stopped: one plan, no replans.
    assert!(sim.nodes.values().all(|n| n.replanned == 0));
}

#[test]
fn a_join_moves_layers_to_the_new_node_without_a_restart() {
    let mut sim = three(Placement::Even);
    let before = sim.agreed().unwrap();
    let d = sim.add(SMALL, 0.2);
    sim.run(2000);
    let after = sim.agreed().unwrap();
    assert!(after.epoch > before.epoch);
    assert!(layers_of(&after, &d.to_string()) > 0);
    for (peer, node) in &sim.nodes {
        // A replan for the nodes that had a plan; the first plan for the newcomer.
        assert_eq!(node.replanned, u64::from(*peer != d), "{peer}");
    }
    let old = &sim.nodes[&sim.by_id().into_iter().find(|p| *p != d).unwrap()];
    let event = old.events.iter().any(|e| e.contains("moved"));
    assert!(event, "{:?}", old.events);
}

#[test]
fn a_leave_breaks_the_plan_for_heads_and_the_rest_replan() {
    let mut sim = three_of(BIG, Placement::Even);
    let before = sim.agreed().unwrap();
    let gone = sim.by_id()[2];
    sim.kill(gone);
    for node in sim.nodes.values() {
        assert_eq!(
            node.machine.route().broken,
            before.epoch,
            "heads stop using it"
        );
    }
    sim.run(2000);
    let after = sim.agreed().unwrap();
    assert!(after.epoch > before.epoch);
    assert_eq!(layers_of(&after, &gone.to_string()), 0);
    assert!(covers_every_layer_once(&after));
}

#[test]
fn the_next_lowest_peer_takes_over_when_the_coordinator_leaves() {
    let mut sim = three_of(BIG, Placement::Even);
    let ids = sim.by_id();
    sim.kill(ids[0]);
    sim.run(2000);
    let plan = sim.agreed().unwrap();
    assert_eq!(plan.coordinator, ids[1].to_string());
}

#[test]
fn stale_and_foreign_plans_are_ignored() {
    let mut sim = three(Placement::Even);
    let plan = sim.agreed().unwrap();
    let ids = sim.by_id();
    let (coordinator, other) = (ids[0], ids[1]);
    let forged = |coordinator: String, epoch: u64, sha: &str| Assignment {
        epoch,
        model_sha256: sha.into(),
        coordinator,
        stages: vec![StageAssignment {
            peer: other.to_string(),
            layers: [0, 30],
            predicted_ms: 1.0,
        }],
        predicted_ms_per_token: 1.0,
    };
    let target = ids[2];
    let cases = [
        // Stale: not newer than the current plan.
        (
            coordinator,
            forged(coordinator.to_string(), plan.epoch, SHA),
        ),
        // Relayed: the sender did not make it.
        (other, forged(coordinator.to_string(), plan.epoch + 5, SHA)),
        // Another model.
        (
            coordinator,
            forged(coordinator.to_string(), plan.epoch + 5, &"00".repeat(32)),
        ),
    ];
    for (from, a) in cases {
        sim.input(
            target,
            Input::Control {
                from,
                message: Control::Assign(a),
            },
        );
        sim.run(500);
        assert_eq!(sim.active(target), Some(plan.clone()));
        assert!(sim.nodes[&target].machine.pending.is_none());
    }
}

#[test]
fn a_member_that_missed_the_plan_gets_it_again() {
    let mut sim = three(Placement::Even);
    let plan = sim.agreed().unwrap();
    let lagging = sim.by_id()[2];
    // It restarts its plan state: its advert says epoch 0.
    let mut advert = sim.nodes[&lagging].machine.advert.clone();
    advert.state = Default::default();
    let coordinator = sim.by_id()[0];
    sim.input(coordinator, Input::Updated(advert));
    sim.run(REPLAN_MS + 100);
    // The coordinator resent the same plan rather than making a new one.
    assert_eq!(sim.agreed().map(|p| p.epoch), Some(plan.epoch));
}

#[test]
fn a_failed_load_is_reported_and_the_plan_never_activates() {
    let mut sim = Sim::new(Placement::Even);
    let a = sim.add(SMALL, 0.2);
    let b = sim.add(SMALL, 0.2);
    sim.add(SMALL, 0.2);
    sim.nodes.get_mut(&b).unwrap().failing = true;
    sim.run(2000);
    assert!(sim.active(a).is_none() && sim.active(b).is_none());
    let snapshot = sim.nodes[&b].machine.snapshot();
    assert!(snapshot.load_error.unwrap().contains("no weights"));
    assert!(sim.nodes[&b]
        .events
        .iter()
        .any(|e| e.contains("cannot load")));
}

#[test]
fn a_stage_that_loads_after_its_plan_was_superseded_is_stopped() {
    let mut sim = three(Placement::Even);
    let before = sim.agreed().unwrap();
    let a = sim.by_id()[1];
    // A load for an old epoch finishing late.
    sim.input(
        a,
        Input::StageLoaded {
            epoch: before.epoch - 1,
            addr: "10.9.9.9:1".parse().unwrap(),
        },
    );
    assert!(!sim.nodes[&a].stages.contains_key(&(before.epoch - 1)));
    assert_eq!(sim.active(a), Some(before));
}

#[test]
fn an_old_plans_stage_retires_once_its_sessions_finish() {
    let mut sim = three(Placement::Even);
    let old = sim.agreed().unwrap();
    let d = sim.add(SMALL, 0.2);
    // A request still runs on the old plan's stages.
    for node in sim.nodes.values_mut() {
        if let Some(s) = node.stages.get_mut(&old.epoch) {
            s.open = 1;
        }
    }
    sim.run(4000);
    let new = sim.agreed().unwrap();
    assert!(new.epoch > old.epoch && layers_of(&new, &d.to_string()) > 0);
    let still = sim
        .nodes
        .values()
        .filter(|n| n.stages.contains_key(&old.epoch))
        .count();
    assert!(still > 0, "busy old stages keep running");
    for node in sim.nodes.values_mut() {
        if let Some(s) = node.stages.get_mut(&old.epoch) {
            s.open = 0;
        }
    }
    sim.run(3000);
    assert!(sim
        .nodes
        .values()
        .all(|n| !n.stages.contains_key(&old.epoch)));
}

#[test]
fn a_straggler_sheds_a_few_layers_and_is_trusted_again_when_it_recovers() {
    let mut sim = Sim::new(Placement::Planned);
    // Each node holds at most 14 of the 30 layers: the plan needs all three.
    for _ in 0..3 {
        sim.add(100, 0.2);
    }
    sim.run(2000);
    let plan = sim.agreed().unwrap();
    assert_eq!(plan.stages.len(), 3, "{plan:?}");
    let slow = plan.stages[1].peer.parse().unwrap();
    let share = layers_of(&plan, &plan.stages[1].peer);
    let reports = |sim: &mut Sim, slow_factor: f64, ms: u64| {
        for _ in 0..ms / 500 {
            for (peer, node) in sim.nodes.iter_mut() {
                let epoch = node
                    .machine
                    .active
                    .as_ref()
                    .map_or(0, |a| a.assignment.epoch);
                if let Some(s) = node.stages.get_mut(&epoch) {
                    let layers = node
                        .machine
                        .active
                        .as_ref()
                        .map_or(0, |a| layers_of(&a.assignment, &peer.to_string()));
                    let factor = if *peer == slow { slow_factor } else { 1.0 };
                    s.steps += 10;
                    s.step_us = Some((f64::from(layers) * 200.0 * factor) as u64);
                }
            }
            sim.run(500);
        }
    };
    reports(&mut sim, 8.0, 20_000);
    let slowed = sim.agreed().unwrap();
    assert!(slowed.epoch > plan.epoch, "the policy replanned");
    assert!(layers_of(&slowed, &slow.to_string()) < share, "{slowed:?}");
    assert!(
        layers_of(&slowed, &slow.to_string()) > 0,
        "a slow node keeps a share: {slowed:?}"
    );
    let events = &sim.nodes[&sim.by_id()[0]].events;
    assert!(
        events.iter().any(|e| e.contains("straggler policy")),
        "{events:?}"
    );
    // 100 MiB holds one node's part, not its old part and a larger new one together: a node
    // that takes on layers stops its old stage before loading the new (its requests replay).
    let gained: Vec<String> = plan
        .stages
        .iter()
        .map(|s| s.peer.clone())
        .filter(|p| layers_of(&slowed, p) > layers_of(&plan, p))
        .collect();
    assert!(!gained.is_empty(), "{slowed:?}");
    for peer in &gained {
        let events = &sim.nodes[&peer.parse().unwrap()].events;
        assert!(
            events.iter().any(|e| e.contains("to make room for plan")),
            "{peer}: {events:?}"
        );
    }
    reports(&mut sim, 1.0, 40_000);
    // Recovered and trusted again; every split costs the same: layers stay where they are.
    let events = &sim.nodes[&sim.by_id()[0]].events;
    assert!(events.iter().any(|e| e.contains("Restore")), "{events:?}");
    let restored = sim.agreed().unwrap();
    assert!(layers_of(&restored, &slow.to_string()) >= layers_of(&slowed, &slow.to_string()));
}

#[test]
fn a_partition_heals_into_one_plan_over_everyone() {
    let mut sim = Sim::new(Placement::Even);
    let ids: Vec<_> = (0..4).map(|_| sim.add(BIG, 0.2)).collect();
    sim.run(2000);
    let whole = sim.agreed().unwrap();
    // {0, 1} | {2, 3}
    for a in &ids[..2] {
        for b in &ids[2..] {
            sim.cut(*a, *b);
        }
    }
    sim.run(3000);
    let left = sim.active(ids[0]).unwrap();
    let right = sim.active(ids[2]).unwrap();
    assert_eq!(left.stages.len(), 2);
    assert_eq!(right.stages.len(), 2);
    sim.heal();
    sim.run(4000);
    let healed = sim.agreed().expect("one plan after healing");
    assert_eq!(healed.stages.len(), 4);
    assert!(healed.epoch > whole.epoch.max(left.epoch).max(right.epoch));
}

#[test]
fn an_unplaceable_cluster_says_so_on_every_member_and_recovers_when_memory_joins() {
    let mut sim = Sim::new(Placement::Planned);
    let first = [sim.add(40, 0.2), sim.add(40, 0.2)];
    sim.run(2000);
    // A node that joins later was never sent a message about it: it reads the verdict from
    // the coordinator's advert.
    let late = sim.add(40, 0.2);
    sim.run(2000);
    for peer in first.iter().chain([&late]) {
        let snap = sim.nodes[peer].machine.snapshot();
        assert!(
            snap.unplaceable.is_some() && snap.route.unplaceable,
            "{peer}"
        );
        assert!(sim.active(*peer).is_none());
    }
    sim.add(BIG, 0.2);
    sim.run(2000);
    assert!(sim.agreed().is_some());
    for peer in first.iter().chain([&late]) {
        let snap = sim.nodes[peer].machine.snapshot();
        assert!(
            snap.unplaceable.is_none() && !snap.route.unplaceable,
            "{peer}"
        );
    }
}

#[test]
fn a_lost_data_link_breaks_the_plan_and_the_next_keeps_the_pair_apart() {
    let mut sim = Sim::new(Placement::Planned);
    for _ in 0..3 {
        sim.add(SMALL, 0.2);
    }
    sim.run(2000);
    let plan = sim.agreed().unwrap();
    let ids: Vec<_> = plan
        .stages
        .iter()
        .map(|s| s.peer.parse().unwrap())
        .collect();
    // Stage 0's node cannot reach stage 1's any more; control traffic still flows.
    let next = sim.nodes[&ids[1]].stages[&plan.epoch].addr.unwrap();
    sim.input(
        ids[0],
        Input::NextHopLost {
            epoch: plan.epoch,
            next,
        },
    );
    assert_eq!(sim.nodes[&ids[0]].machine.route().broken, plan.epoch);
    sim.run(2000);
    let after = sim.agreed().unwrap();
    assert!(after.epoch > plan.epoch);
    let order: Vec<String> = after.stages.iter().map(|s| s.peer.clone()).collect();
    let (a, b) = (ids[0].to_string(), ids[1].to_string());
    for pair in order.windows(2) {
        assert!(
            !(pair[0] == a && pair[1] == b || pair[0] == b && pair[1] == a),
            "{order:?} keeps {a} next to {b}"
        );
    }
}

#[test]
fn step_reports_reach_the_advert_only_when_they_change() {
    let mut sim = three(Placement::Even);
    let plan = sim.agreed().unwrap();
    let peer = plan.stages[0].peer.parse().unwrap();
    let report = |steps| Tick {
        stages: vec![StageReport {
            epoch: plan.epoch,
            open_sessions: 0,
            steps,
            step_us: Some(1500),
        }],
        ..Tick::default()
    };
    let node = sim.nodes.get_mut(&peer).unwrap();
    let now = sim.now;
    let first = node.machine.handle(Input::Tick(report(5)), now);
    assert!(first
        .iter()
        .any(|a| matches!(a, super::Action::Publish(ad) if ad.state.steps == 5)));
    let again = node.machine.handle(Input::Tick(report(5)), now);
    assert!(!again.iter().any(|a| matches!(a, super::Action::Publish(_))));
}

#[test]
fn the_same_inputs_give_the_same_plans_and_events() {
    let peers: Vec<_> = (0..3)
        .map(|_| Keypair::generate_ed25519().public().to_peer_id())
        .collect();
    let run = || {
        let mut sim = Sim::new(Placement::Planned);
        for p in &peers {
            sim.add_peer(*p, SMALL, 0.2);
        }
        sim.run(2500);
        sim.kill(peers[1]);
        sim.run(2500);
        let plans: Vec<_> = peers.iter().map(|p| sim.active(*p)).collect();
        let events: Vec<_> = sim.nodes.values().map(|n| n.events.clone()).collect();
        (plans, events)
    };
    let first = run();
    assert!(first.0[0].is_some());
    assert_eq!(first, run());
}

#[test]
fn when_the_coordinator_leaves_and_the_rest_cannot_hold_the_model_every_member_says_so() {
    // Each node holds at most 14 of the 30 layers: the plan needs all three.
    let mut sim = three_of(100, Placement::Planned);
    let plan = sim.agreed().unwrap();
    assert_eq!(plan.stages.len(), 3, "{plan:?}");
    let ids = sim.by_id();
    sim.kill(ids[0]);
    sim.run(5000);
    for peer in &ids[1..] {
        let snap = sim.nodes[peer].machine.snapshot();
        assert!(
            snap.unplaceable.is_some() && snap.route.unplaceable,
            "{peer}: {:?}",
            snap.unplaceable
        );
        assert!(snap.route.broken >= plan.epoch);
    }
}

#[test]
fn a_replan_keeps_the_stages_whose_part_did_not_change() {
    let mut sim = three(Placement::Even);
    let plan = sim.agreed().unwrap();
    let coordinator = sim.by_id()[0];
    // The same stages, except that the first two move one layer across their boundary:
    // the last stage runs as before, behind the same node, and is kept.
    let mut next = plan.clone();
    next.epoch = plan.epoch + 1;
    next.stages[0].layers[1] -= 1;
    next.stages[1].layers[0] -= 1;
    let ids: Vec<PeerId> = sim.nodes.keys().copied().collect();
    for id in &ids {
        sim.input(
            *id,
            Input::Control {
                from: coordinator,
                message: Control::Assign(next.clone()),
            },
        );
    }
    sim.run(LOAD_MS + 500);
    assert_eq!(sim.agreed(), Some(next.clone()));
    let kept = &next.stages[2].peer;
    for id in &ids {
        let node = &sim.nodes[id];
        let events = &node.events;
        if id.to_string() == *kept {
            assert_eq!(node.adopted, 1, "{events:?}");
            assert!(
                events.iter().any(|e| e.contains("kept my stage of plan")),
                "{events:?}"
            );
            // One stage, the old one, now under the new plan: no second copy.
            assert_eq!(
                node.stages.keys().copied().collect::<Vec<_>>(),
                [next.epoch]
            );
        } else {
            assert_eq!(node.adopted, 0, "{id}: {events:?}");
        }
    }
}
