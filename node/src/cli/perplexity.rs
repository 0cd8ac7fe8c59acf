//! `shoal perplexity`: perplexity of a model over a text, and KL divergence against a base,
//! in llama-perplexity's way and layout — on this node, or through a pipeline of stages
//! (`--pipeline`, or the active plan of a running cluster with `--node`; this process being
//! the head), so a cluster is measured as a model.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sharding::eval::{self, report, BaseReader, BaseWriter, LocalSource, LogitSource};
use sharding::gguf::GgufFile;
use sharding::model::ModelConfig;
use sharding::tokenizer::Tokenizer;

use shoal::eval::PipelineSource;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// GGUF model file.
    #[arg(long, env = "SHOAL_MODEL")]
    model: PathBuf,
    /// Text to evaluate (not needed with --kl-divergence: the base holds its tokens).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Tokens per chunk; each chunk is scored on its second half.
    #[arg(long, short = 'c', default_value_t = 512)]
    ctx: usize,
    /// Positions per forward step on this node (default: the whole chunk at once).
    #[arg(long, short = 'b')]
    batch: Option<usize>,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Base log-probabilities in llama.cpp's format: written by a perplexity run, read by
    /// a --kl-divergence run.
    #[arg(long)]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the base in --kl-divergence-base instead of writing it.
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1, env = "SHOAL_THREADS")]
    threads: usize,
    /// Evaluate through a pipeline whose first stage listens here (this process is the
    /// head), instead of on this node.
    #[arg(long, conflicts_with = "node")]
    pipeline: Option<SocketAddr>,
    /// Evaluate through the active plan of the running cluster whose node serves this API
    /// (URL or host:port): its first stage is read from `GET /v1/cluster`; the stages need
    /// the cluster's key (--cluster-key-file) and must reach --listen.
    #[arg(long)]
    node: Option<String>,
    /// With --node: file holding the node API's bearer token (else SHOAL_API_TOKEN).
    #[arg(long, requires = "node")]
    api_token_file: Option<PathBuf>,
    /// With --pipeline or --node: the address the last stage sends back to.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// With --pipeline: what the head sends embeddings as.
    #[arg(long, env = "SHOAL_WIRE_DTYPE", value_enum, default_value_t)]
    wire_dtype: shoal::pipeline::WireDtype,
    #[command(flatten)]
    key: super::cluster_key::KeyArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    // llama.cpp puts BOS in front of each chunk for models whose tokenizer adds one.
    let bos = if tokenizer.adds_bos() {
        tokenizer.bos()
    } else {
        None
    };
    let ctx = match (&args.kl_divergence_base, args.kl_divergence) {
        (Some(path), true) => {
            BaseReader::open(path)
                .with_context(|| format!("reading {}", path.display()))?
                .header()
                .n_ctx
        }
        _ => args.ctx,
    };
    let first = match (&args.pipeline, &args.node) {
        (Some(first), _) => Some(*first),
        (None, Some(node)) => Some(first_stage_of(node, args.api_token_file.as_deref())?),
        (None, None) => None,
    };
    match first {
        None => {
            let batch = args.batch.unwrap_or(ctx).clamp(1, ctx);
            let mut source =
                LocalSource::load(&file, args.threads, ctx, batch).context("loading the model")?;
            eprintln!("perplexity: {ctx} positions per chunk, {batch} per step, on this node");
            evaluate(&args, &tokenizer, bos, &mut source)
        }
        Some(first) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let cfg = shoal::pipeline::HeadConfig {
                model: args.model.clone(),
                threads: args.threads,
                listen: args.listen,
                first: Some(first),
                reply_addr: Some(args.listen),
                reply_timeout: Duration::from_secs(60),
                metrics: None,
                wire: args.wire_dtype,
            };
            let endpoint = args.key.endpoint()?;
            let head = runtime.block_on(shoal::pipeline::Head::start(cfg, endpoint))?;
            let n_vocab = ModelConfig::from_metadata(file.metadata())?.vocab_size;
            let mut source = PipelineSource::new(head.clone(), runtime.handle().clone(), n_vocab);
            eprintln!("perplexity: {ctx} positions per chunk, through the pipeline at {first}");
            let result = evaluate(&args, &tokenizer, bos, &mut source);
            runtime.block_on(head.shutdown());
            result
        }
    }
}

/// The data address of the first stage of the active plan of the cluster `node` serves.
fn first_stage_of(node: &str, token_file: Option<&std::path::Path>) -> anyhow::Result<SocketAddr> {
    let token = super::http::api_token(token_file)?;
    let view = super::http::fetch_cluster(node, token.as_deref()).map_err(anyhow::Error::msg)?;
    let Some(plan) = &view.plan else {
        bail!(
            "{node} has no active plan ({}): nothing to evaluate through",
            view.problem.as_deref().unwrap_or("the cluster is forming")
        );
    };
    let first = plan
        .stages
        .first()
        .context("the active plan has no stages")?;
    let member = view
        .members
        .iter()
        .find(|m| m.peer_id == first.peer_id && m.epoch == plan.epoch)
        .with_context(|| {
            format!(
                "the node running plan {}'s first stage is not listed",
                plan.epoch
            )
        })?;
    let addr = member
        .stage_addr
        .as_deref()
        .with_context(|| format!("the first stage of plan {} has no address yet", plan.epoch))?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("the first stage's address {addr:?}"))?;
    eprintln!(
        "perplexity: plan {} of {node}: first stage {addr} (layers {}..{} of {} stages)",
        plan.epoch,
        first.layers[0],
        first.layers[1],
        plan.stages.len()
    );
    Ok(addr)
}

fn evaluate<S: LogitSource>(
    args: &Args,
    tokenizer: &Tokenizer,
    bos: Option<u32>,
    source: &mut S,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    if args.kl_divergence {
        let Some(path) = &args.kl_divergence_base else {
            bail!("--kl-divergence needs --kl-divergence-base FILE");
        };
        let mut base = BaseReader::open(path)?;
        let h = base.header();
        eprintln!(
            "kl_divergence: computing over {} chunks, n_ctx={}, base {}",
            h.n_chunk,
            h.n_ctx,
            path.display()
        );
        writeln!(out, "{}", report::kld_table_heading())?;
        let kl = eval::kl_divergence(source, &mut base, bos, |chunk, kl| {
            let _ = writeln!(out, "{}", report::kld_table_row(chunk, kl));
        })?;
        writeln!(out)?;
        write!(out, "{}", report::kld_summary(&kl))?;
    } else {
        let Some(path) = &args.file else {
            bail!("--file is needed (the text to evaluate)");
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let tokens = eval::tokenize_text(tokenizer, &text);
        let n_chunk = eval::chunk_count(tokens.len(), args.ctx, args.chunks)?;
        let tokens = &tokens[..n_chunk * args.ctx];
        eprintln!(
            "perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={}",
            args.ctx
        );
        let mut writer = match &args.kl_divergence_base {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let file = std::io::BufWriter::with_capacity(1 << 20, file);
                Some(BaseWriter::new(file, args.ctx, source.n_vocab(), tokens)?)
            }
            None => None,
        };
        let nll = eval::perplexity(
            source,
            tokens,
            args.ctx,
            n_chunk,
            bos,
            writer.as_mut(),
            |chunk, nll| {
                let _ = write!(out, "{}", report::ppl_progress(chunk, nll));
                let _ = out.flush();
            },
        )?;
        if let Some(w) = writer {
            w.finish()?;
        }
        writeln!(out)?;
        writeln!(out, "{}", report::ppl_final(&nll))?;
    }
    eprintln!("evaluated in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
