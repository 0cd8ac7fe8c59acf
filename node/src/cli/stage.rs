//! `shoal stage`: serve a layer range as one stage of a static pipeline.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use sharding::model::{ShardOptions, ShardSpec};
use shoal::pipeline::{Route, Stage, StageConfig};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// GGUF model file.
    #[arg(long, env = "SHOAL_MODEL")]
    model: PathBuf,
    /// Layers this stage runs, `a..b`.
    #[arg(long, value_parser = super::parse_range)]
    layers: Range<usize>,
    /// Address to accept the upstream link on.
    #[arg(long, env = "SHOAL_LISTEN")]
    listen: SocketAddr,
    /// The next stage, or the head for the last stage.
    #[arg(long, env = "SHOAL_NEXT")]
    next: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, env = "SHOAL_THREADS")]
    threads: usize,
    /// Sessions open at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// Sessions one upstream peer may hold open at once (default: three quarters of --max-sessions on
    /// a first stage, whose upstreams are heads; no bound beyond --max-sessions on a later
    /// stage, whose only upstream is the previous stage).
    #[arg(long)]
    max_sessions_per_peer: Option<usize>,
    /// Positions one session may hold.
    #[arg(long, default_value_t = 4096)]
    max_context: usize,
    /// Seconds after which an idle session is closed.
    #[arg(long, default_value_t = 120)]
    session_timeout: u64,
    /// What hidden states are sent to the next node as: f32 (lossless), or f16 / q8 to save
    /// bandwidth on slow links at a small cost in exactness.
    #[arg(long, env = "SHOAL_WIRE_DTYPE", value_enum, default_value_t)]
    wire_dtype: shoal::pipeline::WireDtype,
    #[command(flatten)]
    key: super::cluster_key::KeyArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    anyhow::ensure!(
        args.max_sessions_per_peer != Some(0),
        "--max-sessions-per-peer must be at least 1"
    );
    // A static stage's upstream has a fresh identity at every start, so it cannot be named
    // as `previous_stage`: a later stage is left unbounded per peer by default instead.
    let per_peer = args
        .max_sessions_per_peer
        .unwrap_or(if args.layers.start == 0 {
            shoal::pipeline::default_sessions_per_peer(args.max_sessions)
        } else {
            args.max_sessions
        });
    runtime.block_on(async move {
        let cfg = StageConfig {
            model: args.model,
            spec: ShardSpec {
                layers: args.layers,
                embed: false,
                head: false,
            },
            options: ShardOptions {
                threads: args.threads,
                max_sessions: args.max_sessions,
                max_context: args.max_context,
            },
            listen: args.listen,
            route: Route::To(args.next),
            session_timeout: Duration::from_secs(args.session_timeout),
            metrics: None,
            wire: args.wire_dtype,
            max_sessions_per_peer: per_peer,
            previous_stage: None,
            index: 0,
            events: None,
        };
        let endpoint = args.key.endpoint()?;
        let stage = Stage::start(cfg, endpoint).await?;
        println!("stage listening on {}", stage.local_addr());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = stage.stopped() => {}
        }
        stage.shutdown().await;
        Ok(())
    })
}
