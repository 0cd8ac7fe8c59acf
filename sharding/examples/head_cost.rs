//! What the planner's inputs look like on this machine, timed two ways:
//!
//! - one transformer layer, and the output head (final norm + output product), against the
//!   ratio of their weight bytes (the planner's estimate of the head's cost in layers when a
//!   node does not time it);
//! - whether a stage of ten layers costs ten measured layers (the planner's assumption);
//! - back to back for 300 ms (what a node does at start today), against single decode steps
//!   with idle gaps between them, the way a stage runs in a pipeline. On a shared host a
//!   thread that computes without pause gets a fair share of a core while one that wakes to
//!   compute a few milliseconds gets the core at once, so the first overstates a step.
//!
//! `cargo run --release -p sharding --example head_cost -- MODEL [THREADS] [ROUNDS]`

use std::time::{Duration, Instant};

use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};

/// Decode positions of one burst (the node times 16).
const POSITIONS: usize = 16;
/// The node's start-up timing: back to back for this long, mean.
const CONTINUOUS: Duration = Duration::from_millis(300);
/// Idle time between gapped steps.
const GAP: Duration = Duration::from_millis(5);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: head_cost MODEL [THREADS] [ROUNDS]";
    let file = GgufFile::open(args.get(1).ok_or(usage)?)?;
    let threads: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(101), |s| s.parse())?;
    let config = ModelConfig::from_metadata(file.metadata())?;
    let e = config.n_embd;
    let row = |p: usize| -> Vec<f32> {
        (0..e)
            .map(|i| (((i * 31 + p * 7) % 97) as f32 - 48.0) / 48.0)
            .collect()
    };
    let opts = ShardOptions {
        threads,
        max_sessions: 2,
        max_context: POSITIONS,
    };
    let spec = |layers, head| ShardSpec {
        layers,
        embed: false,
        head,
    };
    let mid = config.n_layers / 2;
    let ten = mid.saturating_sub(5)..(mid + 5).min(config.n_layers);
    let mut layer = Shard::load(&file, spec(mid..mid + 1, false), opts.clone())?;
    let mut stage = Shard::load(&file, spec(ten.clone(), false), opts.clone())?;
    let mut head = Shard::load(&file, spec(0..0, true), opts)?;
    let rows: Vec<Vec<f32>> = (0..POSITIONS).map(row).collect();
    let mut buffers = (Vec::new(), Vec::new());
    let shards = [&mut layer, &mut stage, &mut head];
    let mut back_to_back = [0.0f64; 3];
    let mut gapped: [Vec<f64>; 3] = Default::default();
    for (i, shard) in shards.into_iter().enumerate() {
        burst(shard, &rows, &mut buffers)?;
        back_to_back[i] = continuous(shard, &rows, &mut buffers)?;
        for r in 0..rounds {
            std::thread::sleep(GAP);
            gapped[i].push(burst(shard, &rows[r % POSITIONS..][..1], &mut buffers)?);
        }
        gapped[i].sort_by(f64::total_cmp);
    }
    let median = |v: &[f64]| v[v.len() / 2];
    let [layer_ms, stage_ms, head_ms] = [0, 1, 2].map(|i| median(&gapped[i]));
    println!(
        "layer {mid}: {layer_ms:.4} ms/token in gapped steps (median), {:.4} back to back",
        back_to_back[0]
    );
    println!(
        "layers {}..{}: {stage_ms:.4} ms/token gapped = {:.2} x {} layers",
        ten.start,
        ten.end,
        stage_ms / (ten.len() as f64 * layer_ms),
        ten.len()
    );
    let bytes = head.weight_bytes() as f64 / layer.weight_bytes() as f64;
    println!(
        "head: {head_ms:.4} ms/token gapped, {:.4} back to back; head/layer: time {:.2}, \
         bytes {bytes:.2}; time per byte relative to a layer {:.2}",
        back_to_back[2],
        head_ms / layer_ms,
        head_ms / layer_ms / bytes
    );
    Ok(())
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Milliseconds per token of a burst: one decode position per row (from position 0 of a new
/// session), or one output product per row.
fn burst(
    shard: &mut Shard,
    rows: &[Vec<f32>],
    (out, logits): &mut (Vec<f32>, Vec<f32>),
) -> Result<f64> {
    let started = Instant::now();
    if shard.spec().head {
        for input in rows {
            shard.logits(input, logits)?;
        }
    } else {
        shard.open_session(0, 0)?;
        for (pos, input) in rows.iter().enumerate() {
            shard.forward(0, pos, Input::Hidden(input), out)?;
        }
        shard.close_session(0);
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / rows.len() as f64)
}

/// Bursts back to back for [`CONTINUOUS`], mean: the node's start-up timing.
fn continuous(
    shard: &mut Shard,
    rows: &[Vec<f32>],
    buffers: &mut (Vec<f32>, Vec<f32>),
) -> Result<f64> {
    let (mut sum, mut n, started) = (0.0, 0u32, Instant::now());
    while started.elapsed() < CONTINUOUS {
        sum += burst(shard, rows, buffers)?;
        n += 1;
    }
    Ok(sum / f64::from(n))
}
