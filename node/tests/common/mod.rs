//! A real two-stage SmolLM2 pipeline on loopback with the HTTP API in front of it, for the
//! API tests (Rust client and the Python OpenAI client).

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use sharding::gguf::GgufFile;
use sharding::model::{ShardOptions, ShardSpec};
use shoal::api::ApiOptions;
use shoal::backend::{Backend, ModelInfo};
use shoal::cluster::{ClusterState, ClusterView, ModelSummary};
use shoal::metrics::Metrics;
use shoal::pipeline::{Head, HeadConfig, Stage, StageConfig, WireDtype};
use shoal_tests::model_path;
use tokio_util::sync::CancellationToken;
use transport::cluster_key::ClusterKey;
use transport::discovery::Keypair;
use transport::quic::{EndpointConfig, Identity, Libp2pIdentity};

/// Positions one request may use in these tests: small, so over-long requests are cheap.
pub const CONTEXT: usize = 512;

/// A backend over a fixed head (or none) and a fixed view.
pub struct TestBackend {
    pub model: ModelInfo,
    pub head: Option<Head>,
    pub view: ClusterView,
}

impl Backend for TestBackend {
    fn model(&self) -> &ModelInfo {
        &self.model
    }

    fn head(&self) -> Result<Head, String> {
        self.head
            .clone()
            .ok_or_else(|| "no plan is ready: the cluster is forming".to_owned())
    }

    fn view(&self) -> ClusterView {
        self.view.clone()
    }
}

/// A view in `state`.
pub fn view(state: ClusterState, name: &str) -> ClusterView {
    ClusterView {
        node: "test-node".into(),
        model: ModelSummary {
            name: name.into(),
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
            n_layers: 30,
        },
        coordinator: Some("test-node".into()),
        state,
        problem: (state != ClusterState::Ready).then(|| "waiting for members".to_owned()),
        members: Vec::new(),
        plan: None,
        tokens_per_s: 0.0,
        replans: 0,
        events: Vec::new(),
        links: Vec::new(),
        admission: None,
    }
}

pub fn model_info() -> ModelInfo {
    let file = GgufFile::open(model_path("smollm2")).expect("open SmolLM2");
    ModelInfo::from_gguf(&file, CONTEXT).expect("model info")
}

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Data-plane settings holding the key the test pipelines use.
pub fn endpoint() -> EndpointConfig {
    endpoint_of(&Keypair::generate_ed25519())
}

/// [`endpoint`] with the identity `keypair` (its peer id is known in advance).
pub fn endpoint_of(keypair: &Keypair) -> EndpointConfig {
    let identity = Identity::from_keypair(keypair).unwrap();
    let mut config = shoal::pipeline::endpoint_config(identity, Arc::new(Libp2pIdentity));
    config.cluster_key = Some(ClusterKey::from_secret(b"api test cluster key"));
    config
}

/// The API in front of a pipeline.
pub struct Server {
    /// `http://127.0.0.1:port`.
    pub base: String,
    pub metrics: Arc<Metrics>,
    /// Hop addresses: head -> stage 1, stage 1 -> stage 2, stage 2 -> head.
    pub hops: Vec<SocketAddr>,
    head: Option<Head>,
    stages: Vec<Stage>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Two stages (layers 0..15 and 15..30) and a head, all recording into one Metrics.
    pub async fn pipeline() -> Server {
        Self::pipeline_with(ApiOptions::default()).await
    }

    /// [`Server::pipeline`] behind an API with this token and these limits.
    pub async fn pipeline_with(options: ApiOptions) -> Server {
        let metrics = Arc::new(Metrics::new());
        let (head, stages, addrs) = start_pipeline(metrics.clone(), WireDtype::F32).await;
        let model = model_info();
        let backend = TestBackend {
            view: view(ClusterState::Ready, &model.name),
            model,
            head: Some(head.clone()),
        };
        Server::serve(backend, metrics, Some(head), stages, addrs, options).await
    }

    /// The API over a backend that has no head (no plan ready).
    pub async fn headless() -> Server {
        let model = model_info();
        let backend = TestBackend {
            view: view(ClusterState::Forming, &model.name),
            model,
            head: None,
        };
        Server::serve(
            backend,
            Arc::new(Metrics::new()),
            None,
            Vec::new(),
            Vec::new(),
            ApiOptions::default(),
        )
        .await
    }

    async fn serve(
        backend: TestBackend,
        metrics: Arc<Metrics>,
        head: Option<Head>,
        stages: Vec<Stage>,
        hops: Vec<SocketAddr>,
        options: ApiOptions,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let (api_metrics, stop) = (metrics.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            shoal::api::serve_with(listener, Arc::new(backend), api_metrics, &options, stop).await
        });
        Server {
            base,
            metrics,
            hops,
            head,
            stages,
            shutdown,
            task,
        }
    }

    /// Stops the server, then the head and stages.
    /// The i-th stage.
    pub fn stage(&self, i: usize) -> &Stage {
        &self.stages[i]
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        if let Some(head) = self.head {
            head.shutdown().await;
        }
        for s in self.stages {
            s.shutdown().await;
        }
    }
}

/// A head and two stages (layers 0..15 and 15..30) on loopback, every sender using `wire`,
/// all recording into `metrics`; also the hop addresses (stage 1, stage 2, head).
pub async fn start_pipeline(
    metrics: Arc<Metrics>,
    wire: WireDtype,
) -> (Head, Vec<Stage>, Vec<SocketAddr>) {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let keys: Vec<Keypair> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let mut stages = Vec::new();
    for (i, layers) in [0..15, 15..30].into_iter().enumerate() {
        let options = ShardOptions::default();
        let cfg = StageConfig {
            model: model_path("smollm2"),
            spec: ShardSpec {
                layers,
                embed: false,
                head: false,
            },
            max_sessions_per_peer: shoal::pipeline::default_sessions_per_peer(options.max_sessions),
            options,
            listen: addrs[i],
            route: shoal::pipeline::Route::To(addrs[i + 1]),
            session_timeout: Duration::from_secs(60),
            metrics: Some(metrics.clone()),
            wire,
            // Stage 2 carries every head's sessions: only stage 1 bounds them per peer.
            previous_stage: i.checked_sub(1).map(|p| keys[p].public().to_peer_id()),
            index: i as u32,
            events: None,
        };
        let stage = Stage::start(cfg, endpoint_of(&keys[i])).await;
        stages.push(stage.expect("stage"));
    }
    let cfg = HeadConfig {
        model: model_path("smollm2"),
        threads: 1,
        listen: addrs[2],
        first: Some(addrs[0]),
        reply_addr: None,
        reply_timeout: Duration::from_secs(30),
        metrics: Some(metrics.clone()),
        wire,
    };
    let head = Head::start(cfg, endpoint()).await.expect("head");
    (head, stages, addrs)
}

/// The value of the series whose line starts with `series` (name and labels), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
