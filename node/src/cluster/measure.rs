//! A short microbenchmark of one real layer of the model on this node, so the planner
//! weighs nodes by what they measurably do (threads, CPU quota and heat included).

use std::time::Instant;

use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};
use transport::discovery::LayerCost;

const DECODE_STEPS: usize = 16;
const PREFILL_TOKENS: usize = 32;

/// Milliseconds per layer for one decoded token and per prompt token, measured on a middle
/// layer of `file` with `threads` threads.
pub fn measure_layer_cost(file: &GgufFile, threads: usize) -> anyhow::Result<LayerCost> {
    let config = ModelConfig::from_metadata(file.metadata())?;
    let layer = config.n_layers / 2;
    let spec = ShardSpec {
        layers: layer..layer + 1,
        embed: false,
        head: false,
    };
    let options = ShardOptions {
        threads,
        max_sessions: 1,
        max_context: PREFILL_TOKENS + DECODE_STEPS + 4,
    };
    let mut shard = Shard::load(file, spec, options)?;
    let n = config.n_embd;
    let hidden: Vec<f32> = (0..PREFILL_TOKENS * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let mut out = Vec::new();
    shard.open_session(0, PREFILL_TOKENS + DECODE_STEPS + 4)?;
    // Warm up caches and pages, then time.
    shard.forward(0, 0, Input::Hidden(&hidden[..n]), &mut out)?;
    let t = Instant::now();
    shard.forward(
        0,
        1,
        Input::Hidden(&hidden[..(PREFILL_TOKENS - 1) * n]),
        &mut out,
    )?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3 / (PREFILL_TOKENS - 1) as f64;
    let mut steps = Vec::with_capacity(DECODE_STEPS);
    for i in 0..DECODE_STEPS {
        let t = Instant::now();
        shard.forward(0, PREFILL_TOKENS + i, Input::Hidden(&hidden[..n]), &mut out)?;
        steps.push(t.elapsed().as_secs_f64() * 1e3);
    }
    steps.sort_by(f64::total_cmp);
    Ok(LayerCost {
        decode_ms: steps[steps.len() / 2].max(1e-4),
        prefill_ms_per_token: prefill_ms.max(1e-5),
    })
}
