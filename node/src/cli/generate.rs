//! `shoal generate`: text from a prompt, on this node alone or through a pipeline of stages.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sharding::chat::{ChatTemplate, Message};
use sharding::gguf::GgufFile;
use sharding::model::{Input, ModelConfig, Shard, ShardOptions, ShardSpec};
use sharding::sampling::{Sampler, SamplerConfig};
use sharding::tokenizer::Tokenizer;
use shoal::pipeline::{Head, HeadConfig};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// GGUF model file.
    #[arg(long, env = "SHOAL_MODEL")]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Random seed (same seed, same text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repetition penalty (1: none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1, env = "SHOAL_THREADS")]
    threads: usize,
    /// Run through a pipeline whose first stage listens here (this process is the head).
    #[arg(long)]
    pipeline: Option<SocketAddr>,
    /// With --pipeline: the address the last stage sends back to.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// With --pipeline: the cluster key the stages hold (or --insecure).
    /// What hidden states are sent to the next node as: f32 (lossless), or f16 / q8 to save
    /// bandwidth on slow links at a small cost in exactness.
    #[arg(long, env = "SHOAL_WIRE_DTYPE", value_enum, default_value_t)]
    wire_dtype: shoal::pipeline::WireDtype,
    #[command(flatten)]
    key: super::cluster_key::KeyArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    let text = if args.chat {
        let Some(template) = ChatTemplate::from_gguf(file.metadata())? else {
            bail!("this model has no chat template; drop --chat")
        };
        template.render(&[Message::new("user", args.prompt.clone())], true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text, true, true);
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let config = SamplerConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config)?;
    for &t in &prompt {
        sampler.accept(t);
    }
    let mut decoder = tokenizer.decoder();
    let mut stdout = std::io::stdout().lock();
    // Time of the first and the latest token: decode speed excludes loading and the prompt.
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut emit = |id: u32| -> bool {
        last = Instant::now();
        first.get_or_insert(last);
        if !args.ignore_eos && tokenizer.is_eog(id) {
            return false;
        }
        let _ = stdout.write_all(decoder.push(id).as_bytes());
        let _ = stdout.flush();
        true
    };
    // When the prompt started going through the model (after loading).
    let mut started = Instant::now();
    let generated = match args.pipeline {
        None => local(&file, &args, &prompt, &mut sampler, &mut emit, &mut started)?,
        Some(first) => {
            // One request: the head's links, its logits and the sampler share one thread, so
            // a token's hand-offs inside the head wake nothing (the head's own part of a
            // token, from the frame in to the next frame out less the output product, went
            // from ~140 to ~75 us; BENCHMARKS.md).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let cfg = HeadConfig {
                    model: args.model.clone(),
                    threads: args.threads,
                    listen: args.listen,
                    first: Some(first),
                    // Tells the last stage its `--next` is this head.
                    reply_addr: Some(args.listen),
                    reply_timeout: Duration::from_secs(30),
                    metrics: None,
                    wire: args.wire_dtype,
                };
                let endpoint = args.key.endpoint()?;
                let head = Head::start(cfg, endpoint).await?;
                let pick = |logits: &[f32]| sampler.sample(logits).unwrap_or(0);
                started = Instant::now();
                let ids = head
                    .generate(&prompt, args.max_tokens, pick, &mut emit)
                    .await;
                head.shutdown().await;
                anyhow::Ok(ids?.len())
            })?
        }
    };
    print!("{}", decoder.finish());
    println!();
    let decode = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    // The prompt's time runs to the first token, whose pick it includes.
    let prefill = first.map_or(0.0, |f| f.duration_since(started).as_secs_f64());
    eprintln!(
        "\n{} prompt tokens, {generated} generated; prompt {:.1} tok/s, decode {:.1} tok/s",
        prompt.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        generated.saturating_sub(1) as f64 / decode.max(1e-9)
    );
    Ok(())
}

/// Generates on this node with the whole model.
fn local(
    file: &GgufFile,
    args: &Args,
    prompt: &[u32],
    sampler: &mut Sampler,
    emit: &mut impl FnMut(u32) -> bool,
    started: &mut Instant,
) -> anyhow::Result<usize> {
    let n_layers = ModelConfig::from_metadata(file.metadata())?.n_layers;
    let options = ShardOptions {
        threads: args.threads,
        max_context: prompt.len() + args.max_tokens,
        ..ShardOptions::default()
    };
    let mut shard =
        Shard::load(file, ShardSpec::full(n_layers), options).context("loading the model")?;
    shard.open_session(0, 0)?;
    let mut logits = Vec::new();
    *started = Instant::now();
    shard.forward(0, 0, Input::Tokens(prompt), &mut logits)?;
    let mut generated = 0;
    let mut pos = prompt.len();
    while generated < args.max_tokens {
        let next = sampler.sample(&logits)?;
        generated += 1;
        if !emit(next) || generated == args.max_tokens {
            break;
        }
        shard.forward(0, pos, Input::Tokens(&[next]), &mut logits)?;
        pos += 1;
    }
    Ok(generated)
}
