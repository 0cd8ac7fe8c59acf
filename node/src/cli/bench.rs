//! `shoal bench`: pp128 / tg64 of one shard, median of several runs, plus memory.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// GGUF model file.
    #[arg(long, env = "SHOAL_MODEL")]
    model: PathBuf,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Only these layers (`a..b`); the embedding comes with layer 0, the head with the last.
    #[arg(long, value_parser = super::parse_range)]
    layers: Option<Range<usize>>,
    /// Prompt length of the prompt-processing test.
    #[arg(long, default_value_t = 128)]
    pp: usize,
    /// Tokens of the generation test.
    #[arg(long, default_value_t = 64)]
    tg: usize,
    /// Runs of each test; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.model)?;
    let cfg = ModelConfig::from_metadata(file.metadata())?;
    let layers = args.layers.clone().unwrap_or(0..cfg.n_layers);
    let spec = ShardSpec {
        embed: layers.start == 0,
        head: layers.end == cfg.n_layers,
        layers,
    };
    let opts = ShardOptions {
        threads: args.threads,
        max_context: args.pp.max(args.tg) + 1,
        ..ShardOptions::default()
    };
    let mut shard = Shard::load(&file, spec.clone(), opts).context("loading shard")?;
    let runs = args.runs.max(1);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_token = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % cfg.vocab_size as u64) as u32
    };
    let e = cfg.n_embd;
    let mut out = Vec::new();
    let mut step = |shard: &mut Shard, session: u64, pos: usize, n: usize| -> anyhow::Result<()> {
        if spec.embed {
            let tokens: Vec<u32> = (0..n).map(|_| next_token()).collect();
            shard.forward(session, pos, Input::Tokens(&tokens), &mut out)?;
        } else {
            let hidden: Vec<f32> = (0..n * e)
                .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
                .collect();
            shard.forward(session, pos, Input::Hidden(&hidden), &mut out)?;
        }
        Ok(())
    };

    // Warm-up: touch the weights once.
    shard.open_session(u64::MAX, 0)?;
    step(&mut shard, u64::MAX, 0, 1)?;
    shard.close_session(u64::MAX);

    let mut pp = Vec::with_capacity(runs);
    let mut tg = Vec::with_capacity(runs);
    for run in 0..runs as u64 {
        shard.open_session(run, 0)?;
        let t = Instant::now();
        step(&mut shard, run, 0, args.pp)?;
        pp.push(args.pp as f64 / t.elapsed().as_secs_f64());
        shard.close_session(run);

        shard.open_session(run, 0)?;
        let t = Instant::now();
        for pos in 0..args.tg {
            step(&mut shard, run, pos, 1)?;
        }
        tg.push(args.tg as f64 / t.elapsed().as_secs_f64());
        shard.close_session(run);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let spec = shard.spec();
    println!(
        "model {} | layers {}..{} of {} | threads {} | weights {:.1} MiB",
        args.model.display(),
        spec.layers.start,
        spec.layers.end,
        cfg.n_layers,
        args.threads,
        shard.weight_bytes() as f64 / 1048576.0
    );
    println!(
        "pp{:<4} {:>9.1} tok/s  (median of {runs})",
        args.pp,
        median(&mut pp)
    );
    println!(
        "tg{:<4} {:>9.1} tok/s  (median of {runs})",
        args.tg,
        median(&mut tg)
    );
    if let Some((rss, peak)) = super::rss() {
        println!(
            "rss {:.1} MiB, peak {:.1} MiB",
            rss as f64 / 1048576.0,
            peak as f64 / 1048576.0
        );
    }
    Ok(())
}
