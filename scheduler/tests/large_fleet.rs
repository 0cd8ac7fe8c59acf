//! The large-fleet heuristic completes on 1,000 devices and 80 layers (timed in the bench).

use scheduler::Objective;

#[allow(dead_code, unreachable_pub)]
#[path = "../benches/fleet.rs"]
mod fleet;

#[test]
fn plans_a_thousand_devices() {
    let graph = fleet::fleet();
    assert_eq!(graph.len(), fleet::DEVICES);
    for objective in [Objective::Latency, Objective::Throughput] {
        let request = fleet::request(objective);
        let plan = scheduler::planner::plan(&graph, &request).unwrap();
        let mut next = 0;
        for s in &plan.stages {
            assert_eq!(s.layers.start, next);
            assert!(s.memory_bytes <= s.memory_budget);
            assert!(graph.device(&s.device).unwrap().holds("llama-80"));
            next = s.layers.end;
        }
        assert_eq!(next, 80);
        let even = scheduler::planner::even_split(&graph, &request);
        if let Ok(even) = even {
            assert!(plan.objective_ms() <= even.objective_ms());
        }
    }
}
