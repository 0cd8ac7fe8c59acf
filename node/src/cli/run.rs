//! `shoal run`: a cluster node. Finds its peers (mDNS and/or static peers), measures itself,
//! takes whatever layers the coordinator assigns, and serves the HTTP API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shoal::cluster::{ModelSource, Node, NodeConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use transport::discovery::{Config as DiscoveryConfig, Keypair, Multiaddr};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// GGUF model file. A node without one gives --model-sha256 instead.
    #[arg(
        long,
        env = "SHOAL_MODEL",
        required_unless_present = "model_sha256",
        conflicts_with = "model_sha256"
    )]
    model: Option<PathBuf>,
    /// Join without a copy of the model: its sha256. The node fetches from peers holding
    /// it only what it runs (its head and assigned layers), checking every chunk.
    #[arg(long, env = "SHOAL_MODEL_SHA256", value_parser = parse_sha256)]
    model_sha256: Option<[u8; 32]>,
    /// Where fetched models are kept between runs (default: $XDG_CACHE_HOME/shoal, else
    /// ~/.cache/shoal).
    #[arg(long, env = "SHOAL_MODEL_CACHE")]
    model_cache: Option<PathBuf>,
    /// Most bytes per second spent fetching weights, e.g. 32MiB, so a fetch does not starve
    /// live traffic; 0 for no limit.
    #[arg(long, env = "SHOAL_FETCH_RATE", value_parser = parse_size, default_value = "32MiB")]
    fetch_rate: u64,
    /// Seconds to wait at start for a peer that holds the model.
    #[arg(long, env = "SHOAL_FETCH_WAIT", default_value_t = 300.0)]
    fetch_wait: f64,
    /// Address for peer-to-peer control traffic (discovery, adverts, plans).
    #[arg(
        long,
        env = "SHOAL_P2P_LISTEN",
        default_value = "/ip4/0.0.0.0/tcp/7600"
    )]
    p2p_listen: Multiaddr,
    /// Address of the data plane (QUIC activations). Stages bind further ports on its IP.
    #[arg(long, env = "SHOAL_DATA_LISTEN", default_value = "0.0.0.0:7601")]
    data_listen: SocketAddr,
    /// IP other nodes reach this one at (default: the data-listen IP, or the first
    /// non-loopback IPv4 address).
    #[arg(long, env = "SHOAL_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// HTTP API address (OpenAI-compatible). Localhost unless told otherwise.
    #[arg(long, env = "SHOAL_API", default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// File with a bearer token the API requires on /v1/* and /metrics (the token may also
    /// come in SHOAL_API_TOKEN). Without one the API is open to whoever reaches it.
    #[arg(long, env = "SHOAL_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Generation requests running or streaming at once through this node's API; more wait
    /// in the queue (default: the sessions a stage admits from one head, 3/4 of
    /// --max-sessions).
    #[arg(long, env = "SHOAL_MAX_REQUESTS")]
    max_requests: Option<usize>,
    /// Generation requests waiting for a slot, first come first served; more get 429 with
    /// Retry-After.
    #[arg(long, env = "SHOAL_MAX_QUEUE", default_value_t = 256)]
    max_queue: usize,
    /// New generation requests per second this node's API accepts (bursts up to a second's
    /// worth); more get 429 with Retry-After. 0: no rate bound.
    #[arg(long, env = "SHOAL_MAX_REQUEST_RATE", default_value_t = 0.0)]
    max_request_rate: f64,
    /// The model's id in /v1/models and in responses (default: the model file's stem).
    #[arg(long, env = "SHOAL_MODEL_ID")]
    model_id: Option<String>,
    /// Serve no HTTP API on this node.
    #[arg(long, env = "SHOAL_NO_API")]
    no_api: bool,
    /// A peer to dial at start and keep dialing, e.g. /ip4/10.0.0.2/tcp/7600 (repeatable;
    /// for networks multicast does not cross).
    #[arg(long = "peer", env = "SHOAL_PEERS", value_delimiter = ',')]
    peers: Vec<Multiaddr>,
    /// Do not discover peers by mDNS (single-host runs: mDNS ignores loopback).
    #[arg(long, env = "SHOAL_NO_MDNS")]
    no_mdns: bool,
    /// Worker threads for layers (default: all cores).
    #[arg(long, env = "SHOAL_THREADS")]
    threads: Option<usize>,
    /// Memory this node offers for weights and KV cache, e.g. 512MiB (default: the cgroup
    /// limit, else available memory).
    #[arg(long, env = "SHOAL_MEMORY", value_parser = parse_size)]
    memory: Option<u64>,
    /// Positions one request may use (prompt and generated tokens).
    #[arg(long, env = "SHOAL_MAX_CONTEXT", default_value_t = 2048)]
    max_context: usize,
    /// Requests open at once per stage.
    #[arg(long, env = "SHOAL_MAX_SESSIONS", default_value_t = 16)]
    max_sessions: usize,
    /// Requests one head may hold open at once on this node's stage (default: three quarters of
    /// --max-sessions). The plan's previous stage is exempt: it carries every head's requests.
    #[arg(long, env = "SHOAL_MAX_SESSIONS_PER_PEER")]
    max_sessions_per_peer: Option<usize>,
    /// Keypair file: the node keeps its peer id across restarts (created if missing).
    #[arg(long, env = "SHOAL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Seconds a member may stay silent before it leaves the view.
    #[arg(long, env = "SHOAL_LIVENESS_TIMEOUT", default_value_t = 3.0)]
    liveness_timeout: f64,
    /// Test feature: emulate a slow link on this node's outgoing data-plane packets, e.g.
    /// `delay=10ms,jitter=2ms,loss=1%,rate=10mbit`, or only those to one address with
    /// `to=10.0.0.12` (see testbed/README.md).
    #[arg(long, env = "SHOAL_LINK_EMULATION")]
    link_emulation: Option<transport::quic::LinkEmulation>,
    /// How layers are split when this node coordinates: the planner's choice, or a baseline
    /// for comparison.
    #[arg(long, env = "SHOAL_PLACEMENT", value_enum, default_value_t)]
    placement: shoal::cluster::coordinator::Placement,
    /// What hidden states are sent to the next node as: f32 (lossless), or f16 / q8 to save
    /// bandwidth on slow links at a small cost in exactness.
    #[arg(long, env = "SHOAL_WIRE_DTYPE", value_enum, default_value_t)]
    wire_dtype: shoal::pipeline::WireDtype,
    #[command(flatten)]
    key: super::cluster_key::KeyArgs,
    /// How this node's API requests draft tokens that the whole pipeline verifies in one
    /// pass (speculative decoding): `ngram` looks the text's own n-grams up (no model; wins
    /// on code, rewrites, quotes), `draft` runs --draft-model, `off` decodes one token a pass.
    /// Greedy output is the same whichever is chosen.
    #[arg(long, env = "SHOAL_SPECULATE", value_enum, default_value_t)]
    speculate: shoal::speculate::Mode,
    /// Whether a finished request's KV cache stays on the stages so that a later request
    /// starting with the same tokens (a chat's earlier turns, a shared system prompt) skips
    /// their prefill: on or off. The text is the same either way.
    #[arg(
        long,
        env = "SHOAL_PREFIX_CACHE",
        default_value = "on",
        value_parser = parse_switch,
        action = clap::ArgAction::Set
    )]
    prefix_cache: bool,
    /// The draft model of `--speculate draft`: a small GGUF with the served model's
    /// vocabulary, run whole on this node.
    #[arg(long, env = "SHOAL_DRAFT_MODEL")]
    draft_model: Option<PathBuf>,
    /// Seconds of quiet after a join or leave before replanning.
    #[arg(long, env = "SHOAL_REPLAN_DELAY", default_value_t = 1.0)]
    replan_delay: f64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    shoal::cluster::profile::parse_size(s)
}

fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    transport::blob::parse_hex(s).ok_or_else(|| format!("{s:?} is not a sha256 (64 hex digits)"))
}

/// Where the model comes from, from the flags.
fn model_source(args: &Args) -> anyhow::Result<ModelSource> {
    match (&args.model, args.model_sha256) {
        (Some(path), _) => Ok(ModelSource::File(path.clone())),
        (None, Some(sha256)) => {
            let cache = match &args.model_cache {
                Some(dir) => dir.clone(),
                None => std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("no --model-cache given and neither XDG_CACHE_HOME nor HOME is set")?
                    .join("shoal"),
            };
            anyhow::ensure!(args.fetch_wait >= 0.0, "--fetch-wait must not be negative");
            Ok(ModelSource::Peers {
                sha256,
                cache,
                rate: (args.fetch_rate > 0).then_some(args.fetch_rate),
                wait: Duration::from_secs_f64(args.fetch_wait),
            })
        }
        (None, None) => anyhow::bail!("give --model FILE or --model-sha256 HEX"),
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    anyhow::ensure!(
        args.max_sessions_per_peer != Some(0),
        "--max-sessions-per-peer must be at least 1"
    );
    let cluster_key = args.key.load()?;
    let api_options = api_options(&args)?;
    runtime.block_on(async move {
        let keypair = match &args.key_file {
            Some(path) => load_or_create_key(path)?,
            None => Keypair::generate_ed25519(),
        };
        let discovery = DiscoveryConfig {
            listen: vec![args.p2p_listen.clone()],
            bootstrap: args.peers.clone(),
            mdns: !args.no_mdns,
            liveness_timeout: Duration::from_secs_f64(args.liveness_timeout),
            cluster_key,
            ..DiscoveryConfig::default()
        };
        let metrics = std::sync::Arc::new(shoal::metrics::Metrics::new());
        let cfg = NodeConfig {
            model: model_source(&args)?,
            discovery,
            data_listen: args.data_listen,
            advertise_ip: args.advertise_ip,
            threads,
            memory_budget: args
                .memory
                .unwrap_or_else(shoal::cluster::profile::memory_budget),
            max_context: args.max_context,
            max_sessions: args.max_sessions,
            max_sessions_per_peer: args
                .max_sessions_per_peer
                .unwrap_or_else(|| shoal::pipeline::default_sessions_per_peer(args.max_sessions)),
            session_timeout: Duration::from_secs(120),
            replan_delay: Duration::from_secs_f64(args.replan_delay),
            reply_timeout: Duration::from_secs(30),
            link_emulation: args.link_emulation,
            wire: args.wire_dtype,
            placement: args.placement,
            speculate: args.speculate,
            prefix_cache: args.prefix_cache,
            draft_model: args.draft_model.clone(),
            metrics: metrics.clone(),
            serves_api: !args.no_api,
            overhead_bytes: None,
        };
        let node = Node::start(cfg, keypair).await?;
        for addr in node.listen_addrs().await {
            info!("peers can join with --peer {addr}");
        }
        let stop = CancellationToken::new();
        let api = if args.no_api {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(args.api)
                .await
                .with_context(|| format!("binding the API on {}", args.api))?;
            info!("API on http://{}", listener.local_addr()?);
            if api_options.token.is_none() && !args.api.ip().is_loopback() {
                warn!(
                    "the API on {} is reachable from the network WITHOUT a token: anyone who \
                     reaches it can generate; set --api-token-file",
                    args.api
                );
            }
            let (backend, stop) = (node.backend(), stop.clone());
            Some(tokio::spawn(async move {
                shoal::api::serve_with(listener, backend, metrics, &api_options, stop).await
            }))
        };
        shutdown_signal().await;
        info!("shutting down");
        stop.cancel();
        if let Some(api) = api {
            let _ = api.await;
        }
        node.shutdown().await;
        anyhow::Ok(())
    })
}

/// The API's token and limits from the flags.
fn api_options(args: &Args) -> anyhow::Result<shoal::api::ApiOptions> {
    let token = super::http::api_token(args.api_token_file.as_deref())?
        .map(|text| shoal::api::ApiToken::new(&text))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let max_requests = args
        .max_requests
        .unwrap_or_else(|| shoal::pipeline::default_sessions_per_peer(args.max_sessions));
    anyhow::ensure!(max_requests > 0, "--max-requests must be at least 1");
    anyhow::ensure!(
        args.max_request_rate >= 0.0 && args.max_request_rate.is_finite(),
        "--max-request-rate must be a non-negative number"
    );
    Ok(shoal::api::ApiOptions {
        token,
        max_requests,
        max_queue: args.max_queue,
        max_request_rate: (args.max_request_rate > 0.0).then_some(args.max_request_rate),
        model_id: args.model_id.clone().filter(|id| !id.trim().is_empty()),
        ..Default::default()
    })
}

/// Ctrl-C or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Reads the node's keypair (protobuf encoding), or makes one and saves it.
fn load_or_create_key(path: &std::path::Path) -> anyhow::Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a shoal key file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().context("encoding the key")?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
