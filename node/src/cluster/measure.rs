//! Measures what one transformer layer costs on this node, as it runs right now.
//!
//! The planner needs per-layer milliseconds that already include everything particular to
//! this machine: its cores and caches, the thread count it will use, a cgroup CPU quota, a
//! thermal throttle. Running a real layer of the real model through the real executor folds
//! all of that in; a synthetic benchmark or a table of device speeds would not.

use std::time::{Duration, Instant};

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};
use transport::discovery::LayerCost;

/// Untimed steps first: they fault the layer's pages in and warm caches and the thread pool.
const WARMUP_STEPS: usize = 4;
/// Single-position decode steps per timed round.
const DECODE_STEPS: usize = 16;
/// Decode rounds repeat until this much wall time has passed, and the mean is reported: a
/// cgroup CPU quota (100 ms periods) or a throttled core only shows over several periods —
/// a handful of sub-millisecond steps would fit inside one period's quota and look fast.
const DECODE_WALL: Duration = Duration::from_millis(300);
/// Positions of the timed prefill batch.
const PREFILL_POSITIONS: usize = 32;
/// Prefill batches timed; the fastest is reported (noise only ever adds time).
const PREFILL_RUNS: usize = 2;

/// The one layer [`measure_layer_cost`] runs: a middle one.
pub fn measured_spec(n_layers: usize) -> ShardSpec {
    let mid = n_layers / 2;
    ShardSpec {
        layers: mid..mid + 1,
        embed: false,
        head: false,
    }
}

/// Milliseconds per decoded token and per prompt token of one layer of `file`'s model on
/// this node with `threads` worker threads.
///
/// Loads only a middle layer (a few MB for small models), so it takes a fraction of a second
/// and little memory. The decode figure is measured at short context; attention over a long
/// context costs more, which the planner's margin has to absorb.
pub fn measure_layer_cost(file: &GgufFile, threads: usize) -> anyhow::Result<LayerCost> {
    let config = ModelConfig::from_metadata(file.metadata()).context("reading model config")?;
    if config.n_layers == 0 {
        anyhow::bail!("model has no layers");
    }
    let spec = measured_spec(config.n_layers);
    let positions = WARMUP_STEPS.max(DECODE_STEPS).max(PREFILL_POSITIONS);
    let opts = ShardOptions {
        threads: threads.max(1),
        max_sessions: 2,
        max_context: positions,
    };
    let mut shard = Shard::load(file, spec, opts).context("loading one layer")?;
    let e = config.n_embd;
    // A deterministic, non-degenerate hidden state (zeros would make norms divide by ~0).
    let row = |p: usize| -> Vec<f32> {
        (0..e)
            .map(|i| (((i * 31 + p * 7) % 97) as f32 - 48.0) / 48.0)
            .collect()
    };
    let mut out = Vec::new();

    shard.open_session(0, 0)?;
    for pos in 0..WARMUP_STEPS {
        shard.forward(0, pos, Input::Hidden(&row(pos)), &mut out)?;
    }
    shard.close_session(0);
    let rows: Vec<Vec<f32>> = (0..DECODE_STEPS).map(row).collect();
    let (mut steps, started) = (0usize, Instant::now());
    while steps < DECODE_STEPS || started.elapsed() < DECODE_WALL {
        shard.open_session(0, 0)?;
        for (pos, input) in rows.iter().enumerate() {
            shard.forward(0, pos, Input::Hidden(input), &mut out)?;
        }
        shard.close_session(0);
        steps += DECODE_STEPS;
    }
    let decode = started.elapsed() / steps as u32;

    let batch: Vec<f32> = (0..PREFILL_POSITIONS).flat_map(row).collect();
    let mut prefill = Duration::MAX;
    for run in 0..PREFILL_RUNS as u64 {
        shard.open_session(run + 1, 0)?;
        let t = Instant::now();
        shard.forward(run + 1, 0, Input::Hidden(&batch), &mut out)?;
        prefill = prefill.min(t.elapsed());
        shard.close_session(run + 1);
    }

    let decode_ms = ms(decode);
    let prefill_ms_per_token = ms(prefill) / PREFILL_POSITIONS as f64;
    Ok(LayerCost {
        // A step can finish below the timer's resolution; the planner needs positive costs.
        decode_ms: decode_ms.max(1e-6),
        prefill_ms_per_token: prefill_ms_per_token.max(1e-6),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_layer_cost_is_positive_and_quick() {
        let file = GgufFile::open(shoal_tests::model_path("smollm2")).expect("open smollm2");
        for threads in [1, 2] {
            let t = Instant::now();
            let cost = measure_layer_cost(&file, threads).expect("measure");
            let took = t.elapsed();
            for v in [cost.decode_ms, cost.prefill_ms_per_token] {
                assert!(v.is_finite() && v > 0.0, "{cost:?}");
            }
            // Sanity, not a benchmark: well under a second even on a loaded test machine
            // (the unoptimized test profile of the node crate does not apply to sharding).
            assert!(took < Duration::from_secs(5), "{took:?}");
            eprintln!("threads {threads}: {cost:?} in {took:?}");
        }
    }
}
