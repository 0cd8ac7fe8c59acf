//! A cluster node: joins discovery, advertises what it can do, keeps a head for its own API
//! requests, and runs whatever stages the coordinator assigns it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use transport::blob::{self, BlobServer, Fetcher, RateLimit};
use transport::discovery::{
    swarm, Advert, AdvertState, Config as DiscoveryConfig, Discovery, Inbox, Keypair, Multiaddr,
    PeerId,
};
use transport::quic::{Endpoint, Identity, Libp2pIdentity};

use super::driver::{self, Driver, Outputs};
use super::machine::{self, Cluster, Snapshot};
use super::serving::{NodeBackend, Shared};
use super::stages::{StageSettings, Stages};
use super::startup::{load_model, outward_ip};
use super::weights::{ModelSource, Weights};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::pipeline::{self, Head, HeadConfig, PlanRoute};

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The model: a GGUF file on this node, or one fetched from peers.
    pub model: ModelSource,
    /// Discovery settings (listen addresses, static peers, mDNS).
    pub discovery: DiscoveryConfig,
    /// Address of this node's data plane (its head listens here; stages bind fresh ports on
    /// the same IP, one per plan epoch).
    pub data_listen: SocketAddr,
    /// IP other nodes reach this node's data plane at; found from the listen addresses when
    /// `None`.
    pub advertise_ip: Option<IpAddr>,
    /// Worker threads for layers.
    pub threads: usize,
    /// Bytes this node offers for weights and KV cache.
    pub memory_budget: u64,
    /// Positions one session may hold.
    pub max_context: usize,
    /// Sessions open at once per stage.
    pub max_sessions: usize,
    /// Sessions one head may hold open at once on this node's stage (the plan's previous
    /// stage is exempt; see [`pipeline::StageConfig::previous_stage`]).
    pub max_sessions_per_peer: usize,
    /// Idle sessions are closed after this long.
    pub session_timeout: Duration,
    /// Quiet time after a join or leave before the coordinator replans.
    pub replan_delay: Duration,
    /// How long a request waits for the pipeline's next reply.
    pub reply_timeout: Duration,
    /// How the coordinator splits layers (when this node coordinates).
    pub placement: super::coordinator::Placement,
    /// Emulated delay, jitter, loss and bandwidth on this node's outgoing data-plane packets
    /// (a test feature for fleets on one machine; `None` in production).
    pub link_emulation: Option<transport::quic::LinkEmulation>,
    /// What this node's head and stages send hidden states as.
    pub wire: pipeline::WireDtype,
    /// How this node's head drafts tokens for speculative decoding.
    pub speculate: crate::speculate::Mode,
    /// Whether this node's head keeps finished requests' caches on the stages and resumes
    /// later requests from them (see [`Head::with_prefix_cache`]).
    pub prefix_cache: bool,
    /// The draft model of `speculate = draft`: a small GGUF with the served model's
    /// vocabulary.
    pub draft_model: Option<std::path::PathBuf>,
    /// Where the node's head and stages record what they do (shared with the API).
    pub metrics: Arc<Metrics>,
    /// Whether this node serves the API: only then does it hold a head (embedding and
    /// output product) and count it in its memory; a `--no-api` node holds layers only.
    pub serves_api: bool,
    /// Bytes this process costs besides weights and KV; `None` measures it at start (the
    /// anonymous memory before any weights). Nodes sharing one process (tests) cannot
    /// measure their own and give it here.
    pub overhead_bytes: Option<u64>,
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    /// The libp2p service, unless the node runs on another discovery.
    swarm: Option<(swarm::Handle, swarm::Service)>,
    cancel: CancellationToken,
    driver: JoinHandle<()>,
    /// Serves the model's chunks when this node holds the whole file.
    seed: Option<BlobServer>,
}

impl Node {
    /// Measures this node, joins the cluster (libp2p: mDNS and/or static peers) and starts
    /// serving.
    pub async fn start(cfg: NodeConfig, keypair: Keypair) -> anyhow::Result<Node> {
        let cancel = CancellationToken::new();
        let (handle, inbox, service) =
            swarm::spawn(cfg.discovery.clone(), keypair.clone(), cancel.child_token())
                .await
                .context("starting discovery")?;
        let ip = match cfg.advertise_ip {
            Some(ip) => ip,
            None if !cfg.data_listen.ip().is_unspecified() => cfg.data_listen.ip(),
            None => {
                // Interfaces report their addresses one by one; give them a moment.
                let mut ip = None;
                for _ in 0..20 {
                    ip = outward_ip(&handle.listen_addrs().await.unwrap_or_default());
                    if ip.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
        };
        let swarm = Some((handle.clone(), service));
        Node::start_inner(cfg, keypair, ip, handle, inbox, swarm, cancel).await
    }

    /// Measures this node, joins the cluster through `discovery` (e.g. an in-memory network
    /// in tests) and starts serving; the data plane listens where `cfg` says.
    pub async fn start_on<D: Discovery>(
        cfg: NodeConfig,
        keypair: Keypair,
        discovery: D,
        inbox: Inbox,
    ) -> anyhow::Result<Node> {
        let ip = cfg.advertise_ip.unwrap_or(cfg.data_listen.ip());
        let cancel = CancellationToken::new();
        Node::start_inner(cfg, keypair, ip, discovery, inbox, None, cancel).await
    }

    async fn start_inner<D: Discovery>(
        cfg: NodeConfig,
        keypair: Keypair,
        ip: IpAddr,
        handle: D,
        inbox: Inbox,
        swarm: Option<(swarm::Handle, swarm::Service)>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Node> {
        let mut endpoint =
            pipeline::endpoint_config(Identity::from_keypair(&keypair)?, Arc::new(Libp2pIdentity));
        endpoint.link_emulation = cfg.link_emulation;
        endpoint.cluster_key = cfg.discovery.cluster_key.clone();
        let any_port = SocketAddr::new(cfg.data_listen.ip(), 0);
        let (weights, known_sha) = match &cfg.model {
            ModelSource::File(path) => (Weights::local(path.clone()), None),
            ModelSource::Peers {
                sha256,
                cache,
                rate,
                wait,
            } => {
                let client = Endpoint::bind(any_port, endpoint.clone())
                    .context("binding the endpoint that fetches weights")?;
                let fetcher = Fetcher::new(client, rate.map(RateLimit::new));
                let weights = Weights::from_peers(
                    *sha256,
                    cache,
                    fetcher,
                    super::weights::members_of(handle.clone()),
                    *wait,
                    cfg.metrics.clone(),
                )
                .await?;
                (weights, Some(blob::hex(sha256)))
            }
        };
        let weights = Arc::new(weights);
        let path = weights.path().to_owned();
        let (threads, context) = (cfg.threads, cfg.max_context);
        let loaded =
            tokio::task::spawn_blocking(move || load_model(&path, threads, context, known_sha))
                .await
                .context("model loading task")??;
        let quota = crate::cpu_quota::cores_allowed();
        info!(
            model = %loaded.summary.name,
            sha256 = %loaded.summary.sha256,
            decode_ms_per_layer = loaded.cost.decode_ms,
            prefill_ms_per_layer = loaded.cost.prefill_ms_per_token,
            cpu_quota_cores = quota,
            "measured this node"
        );
        // A node holding the whole file serves its chunks to nodes that lack it.
        let manifest = match loaded.manifest {
            Some(m) => Some(m),
            None => weights.complete_manifest().await,
        };
        let seed = match manifest {
            Some(manifest) => {
                let served = Endpoint::bind(any_port, endpoint.clone())
                    .context("binding the endpoint that serves weights")?;
                Some(BlobServer::start(
                    served,
                    vec![(weights.path(), manifest)],
                    None,
                )?)
            }
            None => None,
        };
        // Anonymous memory now (runtime, discovery, the measured layer's scratch; no
        // weights: they are mapped from the file) is what this process costs besides its
        // weights and KV.
        let overhead = cfg
            .overhead_bytes
            .or_else(|| crate::memory::resident().map(|r| r.anon));
        cfg.metrics.memory(cfg.memory_budget, overhead);
        let head = if cfg.serves_api {
            weights.ensure_head().await?;
            let head = Head::start_under(
                HeadConfig {
                    model: weights.path().to_owned(),
                    threads: cfg.threads,
                    listen: cfg.data_listen,
                    first: None,
                    reply_addr: Some(SocketAddr::new(ip, 0)),
                    reply_timeout: cfg.reply_timeout,
                    metrics: Some(cfg.metrics.clone()),
                    wire: cfg.wire,
                },
                endpoint.clone(),
                cancel.child_token(),
            )
            .await
            .context("starting this node's head")?;
            Some(head.with_prefix_cache(cfg.prefix_cache))
        } else {
            None
        };
        // Without a head, the data address is where this node's stages bind.
        let data_addr = head
            .as_ref()
            .and_then(Head::reply_addr)
            .unwrap_or(SocketAddr::new(ip, cfg.data_listen.port()));
        let local = handle.local_peer_id();
        let advert = Advert {
            peer_id: local,
            data_addr,
            threads: cfg.threads as u32,
            memory_budget_bytes: cfg.memory_budget,
            models: vec![loaded.summary.sha256.clone()],
            layer_cost: Some(loaded.cost),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            seed_addr: seed
                .as_ref()
                .map(|s| SocketAddr::new(ip, s.local_addr().port())),
            platform: transport::discovery::Platform {
                arch: std::env::consts::ARCH.to_owned(),
                kernels: sharding::quant::kernel_set(),
            },
            state: AdvertState {
                cpu_quota_milli: crate::cpu_quota::as_milli(quota),
                serves_api: cfg.serves_api,
                overhead_bytes: overhead,
                ..AdvertState::default()
            },
        };
        handle
            .publish(advert.clone())
            .await
            .context("publishing the advert")?;
        info!(peer = %local, %data_addr, "joined");
        let (snapshot_tx, snapshot) = watch::channel(Snapshot {
            advert: advert.clone(),
            members: Vec::new(),
            active: None,
            pending: None,
            unplaceable: None,
            load_error: None,
            replans: 0,
            route: PlanRoute::default(),
        });
        let (route_tx, route) = watch::channel(PlanRoute::default());
        let machine = Cluster::new(
            machine::Config {
                local,
                sha256: loaded.summary.sha256.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                profile: loaded.profile,
                placement: cfg.placement,
                replan_delay: cfg.replan_delay.as_millis() as u64,
                straggler: Default::default(),
            },
            advert,
            0,
        );
        let (events_tx, stage_events) = mpsc::channel(64);
        let stages = Stages::new(
            StageSettings {
                weights,
                endpoint,
                bind_ip: cfg.data_listen.ip(),
                advertise_ip: ip,
                threads: cfg.threads,
                max_sessions: cfg.max_sessions,
                max_sessions_per_peer: cfg.max_sessions_per_peer,
                max_context: cfg.max_context,
                session_timeout: cfg.session_timeout,
                wire: cfg.wire,
                metrics: cfg.metrics.clone(),
            },
            events_tx,
        );
        let driver = tokio::spawn(driver::run(
            Driver {
                machine,
                discovery: handle.clone(),
                inbox,
                stages,
                stage_events,
                outputs: Outputs {
                    snapshot: snapshot_tx,
                    route: route_tx,
                },
                metrics: cfg.metrics.clone(),
            },
            cancel.child_token(),
        ));
        let draft = match (cfg.speculate, &cfg.draft_model) {
            (crate::speculate::Mode::Draft, None) => {
                anyhow::bail!("--speculate draft needs a --draft-model")
            }
            (crate::speculate::Mode::Draft, Some(path)) => {
                let tokenizer = &loaded.info.tokenizer;
                let (threads, context) = (cfg.threads, cfg.max_context);
                let load = || crate::speculate::DraftModel::load(path, tokenizer, threads, context);
                Some(crate::blocking::run_blocking(load)?)
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            local,
            speculate: cfg.speculate,
            draft,
            model: loaded.info,
            summary: loaded.summary,
            tokens: super::rate::TokenRate::start(head.clone(), cancel.child_token()),
            head,
            metrics: cfg.metrics.clone(),
            snapshot,
            route,
        });
        Ok(Node {
            shared,
            swarm,
            cancel,
            driver,
            seed,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.shared.local
    }

    /// The addresses discovery listens on (for other nodes' `--peer`).
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        match &self.swarm {
            Some((handle, _)) => handle.listen_addrs().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The API's view of this node.
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(NodeBackend(self.shared.clone()))
    }

    /// Leaves the cluster: stops the stages, the head and discovery, in that order, and
    /// waits for every task the node started.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.driver.await;
        if let Some(seed) = self.seed {
            seed.shutdown().await;
        }
        self.shared.tokens.stopped().await;
        if let Some(head) = &self.shared.head {
            head.shutdown().await;
        }
        if let Some((_, service)) = self.swarm {
            service.shutdown().await;
        }
    }
}
