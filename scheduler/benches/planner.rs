//! Planning time on a simulated 1,000-device fleet with an 80-layer model (target < 1 s).

use criterion::{criterion_group, criterion_main, Criterion};
use scheduler::Objective;

#[allow(dead_code, unreachable_pub)]
mod fleet;

fn bench(c: &mut Criterion) {
    let graph = fleet::fleet();
    let mut group = c.benchmark_group("plan_1000_devices_80_layers");
    group.sample_size(10);
    for objective in [Objective::Latency, Objective::Throughput] {
        let request = fleet::request(objective);
        group.bench_function(format!("{objective:?}"), |b| {
            b.iter(|| scheduler::planner::plan(&graph, &request).expect("plan"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
