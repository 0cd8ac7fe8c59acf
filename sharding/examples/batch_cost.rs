//! Cost of one decode step of k sessions as one `forward_batch` against k `forward` calls,
//! on a middle shard (hidden states in and out, as a pipeline stage runs), one thread.
//!
//! `cargo run --release -p sharding --example batch_cost -- MODEL [LAYERS] [STEPS]`
//! e.g. `... models/SmolLM2-135M-Instruct.Q4_1.gguf 15 64`.

use std::time::Instant;

use sharding::gguf::GgufFile;
use sharding::model::{Input, Shard, ShardOptions, ShardSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let file = GgufFile::open(
        args.get(1)
            .ok_or("usage: batch_cost MODEL [LAYERS] [STEPS]")?,
    )?;
    let layers: usize = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let spec = ShardSpec {
        layers: 0..layers,
        embed: false,
        head: false,
    };
    let mut shard = Shard::load(&file, spec, ShardOptions::default())?;
    let e = shard.config().n_embd;
    let row: Vec<f32> = (0..e).map(|j| ((j % 97) as f32 - 48.0) / 40.0).collect();
    let mut out = Vec::new();
    let mut id = 0u64;
    for round in 0..3 {
        for k in [1usize, 2, 3, 4, 8] {
            let ids: Vec<u64> = (0..k as u64).map(|i| id + i).collect();
            id += k as u64;
            for &s in &ids {
                shard.open_session(s, steps + 1)?;
                shard.forward(s, 0, Input::Hidden(&row), &mut out)?;
            }
            let input: Vec<f32> = row.repeat(k);
            let start = Instant::now();
            for p in 1..=steps / 2 {
                let batch: Vec<(u64, usize)> = ids.iter().map(|&s| (s, p)).collect();
                shard.forward_batch(&batch, Input::Hidden(&input), &mut out)?;
            }
            let batched = start.elapsed().as_secs_f64() / (steps / 2) as f64;
            let start = Instant::now();
            for p in steps / 2 + 1..=steps {
                for &s in &ids {
                    shard.forward(s, p, Input::Hidden(&row), &mut out)?;
                }
            }
            let alone = start.elapsed().as_secs_f64() / (steps - steps / 2) as f64;
            println!(
                "round {round} k={k}: batch {:.2} ms, {k} x forward {:.2} ms, ratio {:.2}",
                batched * 1e3,
                alone * 1e3,
                batched / alone
            );
            for &s in &ids {
                shard.close_session(s);
            }
        }
    }
    Ok(())
}
