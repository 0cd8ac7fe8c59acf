//! One token's pick from SmolLM2-sized logits (49152 ids): greedy, greedy with a repetition
//! penalty, and the default top-k/top-p/min-p draw. The head pays this on every token.
//!
//! Run briefly: `cargo bench -p sharding --bench sampling -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sharding::sampling::{Sampler, SamplerConfig};

const VOCAB: usize = 49152;

/// Logits shaped like a model's: a bell of small values and a few dozen far above it, from
/// a fixed pseudo-random source. (Real ones: `examples/sampling_cost.rs`.)
fn logits() -> Vec<f32> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..VOCAB)
        .map(|i| {
            let bell = 4.0 * (uniform() + uniform() + uniform() - 1.5);
            let lead = if i % 1500 == 7 {
                10.0 + 4.0 * uniform()
            } else {
                0.0
            };
            bell + lead
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let logits = logits();
    let cases = [
        ("greedy", SamplerConfig::greedy()),
        (
            "greedy, repetition penalty 1.1",
            SamplerConfig {
                repetition_penalty: 1.1,
                ..SamplerConfig::greedy()
            },
        ),
        ("default top-k/top-p/min-p draw", SamplerConfig::default()),
        (
            "OpenAI API default: temperature 1, nothing filtered",
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..SamplerConfig::default()
            },
        ),
        (
            "temperature 1, top-p 0.9",
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..SamplerConfig::default()
            },
        ),
    ];
    for (name, config) in cases {
        let mut sampler = Sampler::new(config).expect("valid config");
        // A full penalty window, as in the middle of a generation.
        for id in 0..64 {
            sampler.accept(id * 7);
        }
        c.bench_function(name, |b| {
            b.iter(|| black_box(sampler.sample(black_box(&logits)).expect("sampled")))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
