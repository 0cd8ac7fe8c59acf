//! Cost of a step of `r` consecutive rows of one session (a speculative verification) against
//! one row, on a middle shard, one thread.
//!
//! `cargo run --release -p sharding --example verify_cost -- MODEL [LAYERS] [CONTEXT]`

use std::time::Instant;

use sharding::gguf::GgufFile;
use sharding::model::{Input, Shard, ShardOptions, ShardSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let file = GgufFile::open(
        args.get(1)
            .ok_or("usage: verify_cost MODEL [LAYERS] [CONTEXT]")?,
    )?;
    let layers: usize = args.get(2).map_or(Ok(15), |s| s.parse())?;
    let context: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let spec = ShardSpec {
        layers: 0..layers,
        embed: false,
        head: false,
    };
    let mut shard = Shard::load(&file, spec, ShardOptions::default())?;
    let e = shard.config().n_embd;
    let rows = |n: usize| -> Vec<f32> {
        (0..n * e)
            .map(|j| ((j % 97) as f32 - 48.0) / 40.0)
            .collect()
    };
    let mut out = Vec::new();
    shard.open_session(1, context + 64)?;
    shard.forward(1, 0, Input::Hidden(&rows(context)), &mut out)?;
    for r in [1usize, 2, 3, 5, 9] {
        let input = rows(r);
        let reps = 50;
        let start = Instant::now();
        for _ in 0..reps {
            shard.forward(1, context, Input::Hidden(&input), &mut out)?;
            shard.truncate_session(1, context)?;
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("{r} rows: {ms:.3} ms");
    }
    Ok(())
}
