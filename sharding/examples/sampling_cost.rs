//! What picking a token costs on a real model's logits, per sampler setting, and how many
//! candidates top-p keeps (the nucleus, which decides how much top-p must sort).
//!
//! `cargo run --release -p sharding --example sampling_cost -- MODEL [TOKENS]`: generates
//! TOKENS (default 64) greedily from a fixed prompt, keeping each step's logits, then times
//! every setting over all of them.

use std::time::Instant;

use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};
use sharding::sampling::{Sampler, SamplerConfig};
use sharding::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let file = GgufFile::open(args.get(1).ok_or("usage: sampling_cost MODEL [TOKENS]")?)?;
    let tokens: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let n_layers = ModelConfig::from_metadata(file.metadata())?.n_layers;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    let prompt = tokenizer.encode("The history of the Roman empire", true, false);
    let options = ShardOptions {
        max_context: prompt.len() + tokens,
        ..ShardOptions::default()
    };
    let mut shard = Shard::load(&file, ShardSpec::full(n_layers), options)?;
    shard.open_session(0, 0)?;
    let mut logits = Vec::new();
    shard.forward(0, 0, Input::Tokens(&prompt), &mut logits)?;
    let mut steps = Vec::with_capacity(tokens);
    let mut greedy = Sampler::new(SamplerConfig::greedy())?;
    for pos in prompt.len()..prompt.len() + tokens {
        steps.push(logits.clone());
        let next = greedy.sample(&logits)?;
        shard.forward(0, pos, Input::Tokens(&[next]), &mut logits)?;
    }
    let vocab = steps[0].len();
    for top_p in [0.9f32, 0.95] {
        let mut sizes: Vec<usize> = steps.iter().map(|l| nucleus(l, top_p)).collect();
        sizes.sort_unstable();
        println!(
            "top-p {top_p} at temperature 1 keeps {} (median), {} (max) of {vocab} candidates",
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        );
    }
    let openai = |top_p| SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p,
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    let settings = [
        ("greedy", SamplerConfig::greedy()),
        (
            "llama.cpp defaults (top-k 40, top-p 0.95, min-p 0.05, T 0.8)",
            SamplerConfig::default(),
        ),
        ("OpenAI API default (T 1, nothing filtered)", openai(1.0)),
        ("T 1, top-p 0.9", openai(0.9)),
    ];
    for (name, config) in settings {
        let mut sampler = Sampler::new(config)?;
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            for l in &steps {
                std::hint::black_box(sampler.sample(l)?);
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / (rounds * steps.len()) as f64;
        println!("{name}: {us:.1} us per token");
    }
    Ok(())
}

/// Candidates top-p keeps at temperature 1: the shortest most-likely-first run whose
/// probability reaches `top_p`.
fn nucleus(logits: &[f32], top_p: f32) -> usize {
    let mut sorted = logits.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let max = sorted[0];
    let total: f64 = sorted.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut cum = 0.0;
    for (i, &l) in sorted.iter().enumerate() {
        cum += f64::from(l - max).exp() / total;
        if cum >= f64::from(top_p) {
            return i + 1;
        }
    }
    sorted.len()
}
