//! A stage: accepts hidden states from upstream, runs its layers, forwards downstream.
//!
//! - [`network`]: the upstream links (frames in) and the downstream link (frames out);
//! - [`compute`]: the task that owns the shard and runs each message;
//! - `steps`: recent decode step times, for the straggler policy.
//!
//! A session's failures travel upstream: whatever this stage cannot run or pass on becomes
//! an `Error` message sent straight to the session's head (the address in its `Open`), so
//! the head learns at once and replays the request on another plan when it can.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Shard, ShardOptions, ShardSpec};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;
use transport::discovery::PeerId;
use transport::quic::{Endpoint, FrameHeader};

use super::protocol::WireDtype;
use super::route::Route;
use crate::metrics::Metrics;
use compute::compute;
use runtime::OwnRuntime;
use steps::StepTimes;

mod compute;
mod network;
mod runtime;
mod steps;
mod worker;

/// The tracing target of the per-frame events (`received`, `computing`, `computed`, `sent`)
/// that `scripts/hop-latency` turns into the time each hop and each stage adds; enable it with
/// `RUST_LOG=info,shoal::hop=trace`.
pub(crate) const HOP: &str = "shoal::hop";

/// Frames queued between the network tasks and the compute task, each way. Bounded, so a
/// flood from upstream slows the sender down instead of growing memory.
const QUEUE: usize = 64;

/// Longest a stopping stage waits for its sessions' failures to leave.
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// What a stage runs and where it sits in the ring.
#[derive(Clone, Debug)]
pub struct StageConfig {
    /// GGUF model file.
    pub model: PathBuf,
    /// Layers (and embedding/head, normally neither) this stage runs.
    pub spec: ShardSpec,
    /// Threads and limits of the shard.
    pub options: ShardOptions,
    /// Address to accept the upstream link on.
    pub listen: SocketAddr,
    /// Where computed frames go: the next stage, or the head.
    pub route: Route,
    /// Sessions idle this long are closed and their cache freed.
    pub session_timeout: Duration,
    /// Where to record step and hop timings, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// This stage's index in its plan: its label in the metrics.
    pub index: u32,
    /// What this stage sends hidden states downstream as (it reads any).
    pub wire: WireDtype,
    /// Sessions one upstream peer may hold open here at once (see
    /// [`default_sessions_per_peer`]), so that a member flooding `Open` frames gets its share
    /// of the table, not all of it, and other peers' requests still open.
    pub max_sessions_per_peer: usize,
    /// The one upstream exempt from `max_sessions_per_peer`: the plan's previous stage.
    /// `None` at a first stage.
    ///
    /// Why: a first stage's upstreams are the heads (every node has one), so the bound is per
    /// head there, which is what a flooding member is. An inner stage's only legitimate
    /// upstream is the previous stage, which carries the sessions of every head (each already
    /// bounded per head at the first stage); bounding it would throttle a normal cluster to a
    /// fraction of its sessions. Any other peer that connects to an inner stage directly is
    /// still bounded.
    pub previous_stage: Option<PeerId>,
    /// Where the stage reports what its node should know (a next hop it lost).
    pub events: Option<mpsc::Sender<StageEvent>>,
}

/// What a stage tells its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageEvent {
    /// The link to the next stage failed (timed out, or could not be set up again); every
    /// session through it was failed back to its head.
    NextHopLost {
        /// The next stage's address.
        next: SocketAddr,
        /// What happened.
        error: String,
    },
}

/// The compute task's settings.
struct Settings {
    /// Sessions idle this long are closed.
    timeout: Duration,
    /// What hidden states go downstream as.
    wire: WireDtype,
    /// Sessions one upstream may hold, unless it is `previous_stage`.
    per_peer: usize,
    /// The upstream exempt from `per_peer`.
    previous_stage: Option<Upstream>,
}

/// Decode steps that ran batched with other sessions' steps.
#[derive(Default)]
struct BatchCounts {
    /// Batches of two or more steps.
    batches: AtomicU64,
    /// Steps in those batches.
    steps: AtomicU64,
}

/// What the compute task shares with the [`super::Stage`] handle and the metrics.
struct Reports {
    open: Arc<AtomicUsize>,
    /// Bytes of KV cache the open sessions hold.
    kv: Arc<AtomicUsize>,
    /// The metrics, with this stage's index in its plan.
    metrics: Option<(Arc<Metrics>, u32)>,
    steps: Arc<StepTimes>,
    batched: Arc<BatchCounts>,
}

impl Reports {
    /// A batch of `k` (two or more) decode rows ran.
    fn batched(&self, k: usize) {
        self.batched.batches.fetch_add(1, Ordering::Relaxed);
        self.batched.steps.fetch_add(k as u64, Ordering::Relaxed);
        if let Some((m, stage)) = &self.metrics {
            m.stage_batched(*stage, k);
        }
    }
}

/// The default of [`StageConfig::max_sessions_per_peer`]: three quarters of the stage's
/// sessions, at least one. A flooding member leaves a quarter to the others, and one head
/// serving all of a cluster's API traffic keeps most of a stage (raise it up to
/// `max_sessions` for such a node).
pub fn default_sessions_per_peer(max_sessions: usize) -> usize {
    (max_sessions * 3 / 4).max(1)
}

/// A running stage. Dropping it stops it; [`Stage::shutdown`] also waits until it has.
pub struct Stage {
    local: SocketAddr,
    cancel: CancellationToken,
    /// Fires once the stage's thread has finished.
    stopped: Option<oneshot::Receiver<()>>,
    forwarded: Arc<AtomicU64>,
    rtts: super::links::LinkRtts,
    sessions: Arc<AtomicUsize>,
    kv_bytes: Arc<AtomicUsize>,
    steps: Arc<StepTimes>,
    batched: Arc<BatchCounts>,
    route: watch::Sender<Route>,
    /// To the compute task: [`Job::Stop`] on shutdown.
    jobs: mpsc::Sender<Job>,
    /// Closed once the downstream task has sent its last frame.
    drained: Option<oneshot::Receiver<()>>,
}

/// What the network tasks hand the compute task.
enum Job {
    /// A frame from upstream, with the upstream peer that sent it.
    Frame(FrameHeader, Vec<u8>, Upstream),
    /// The transport refused a frame of `session` from upstream `from` (too large,
    /// malformed).
    Rejected {
        session: u64,
        from: Upstream,
        error: String,
    },
    /// The next hop is gone: every session through it has failed.
    NextHopLost { next: SocketAddr, error: String },
    /// Time to close the sessions idle past the timeout.
    Sweep,
    /// The stage is stopping: every open session fails back to its head (which replays it
    /// on a newer plan), then the compute task ends.
    Stop,
}

/// Where a computed frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    /// Down the ring, as the route says (the session's head for a last stage).
    Next,
    /// Straight back to the session's head: its failures.
    Head,
}

/// A frame on its way out, with the head of its session.
struct Outgoing {
    header: FrameHeader,
    payload: Vec<u8>,
    head: Option<SocketAddr>,
    dest: Dest,
}

/// Who sent a frame: the upstream node's libp2p identity (stable across its reconnects),
/// hashed. A session belongs to the upstream that opened it; frames for it from anyone else
/// are refused without touching it, so one peer cannot corrupt or close another's session.
type Upstream = u64;

/// The [`Upstream`] of a link from `peer`.
fn upstream_key(peer: &PeerId) -> Upstream {
    hash_of(peer)
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Stage {
    /// Loads the shard and starts serving on a thread of its own.
    ///
    /// Everything the stage does per frame (QUIC, the compute, the send downstream) runs on
    /// that one thread, in a current-thread runtime: a hop then costs one wakeup, the
    /// datagram's, instead of one for each hand-off between the network tasks and a compute
    /// thread, which on a small machine is what a hop's time is mostly made of.
    pub async fn start(
        cfg: StageConfig,
        identity: transport::quic::EndpointConfig,
    ) -> anyhow::Result<Stage> {
        let spec = cfg.spec.clone();
        let (model, options) = (cfg.model.clone(), cfg.options.clone());
        let shard = tokio::task::spawn_blocking(move || -> anyhow::Result<Shard> {
            let file = GgufFile::open(&model)?;
            Ok(Shard::load(&file, spec, options)?)
        })
        .await??;
        let runtime = OwnRuntime(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the stage's runtime")?,
        ));
        let rt = runtime.get().context("the stage's runtime")?;
        let endpoint = {
            // The endpoint's driver runs where it is bound.
            let _stage_runtime = rt.enter();
            Arc::new(Endpoint::bind(cfg.listen, identity).context("binding the stage endpoint")?)
        };
        let local = endpoint.local_addr()?;
        info!(layers = ?cfg.spec.layers, %local, route = ?cfg.route, "stage ready");

        let cancel = CancellationToken::new();
        let (job_tx, job_rx) = mpsc::channel::<Job>(QUEUE);
        let (out_tx, out_rx) = mpsc::channel::<Outgoing>(QUEUE);
        let forwarded = Arc::new(AtomicU64::new(0));
        let rtts = super::links::LinkRtts::default();
        let sessions = Arc::new(AtomicUsize::new(0));
        let kv_bytes = Arc::new(AtomicUsize::new(0));
        let steps = Arc::new(StepTimes::default());
        let (route_tx, route_rx) = watch::channel(cfg.route);
        let mut tasks = tokio::task::JoinSet::new();
        let on = rt.handle();

        let settings = Settings {
            timeout: cfg.session_timeout,
            wire: cfg.wire,
            per_peer: cfg.max_sessions_per_peer.max(1),
            previous_stage: cfg.previous_stage.as_ref().map(upstream_key),
        };
        let batched = Arc::new(BatchCounts::default());
        let reports = Reports {
            open: sessions.clone(),
            kv: kv_bytes.clone(),
            metrics: cfg.metrics.clone().map(|m| (m, cfg.index)),
            steps: steps.clone(),
            batched: batched.clone(),
        };
        tasks.spawn_on(compute(shard, job_rx, out_tx, settings, reports), on);
        let (drained_tx, drained) = oneshot::channel();
        tasks.spawn_on(
            network::downstream(network::Downstream {
                endpoint: endpoint.clone(),
                route: route_rx,
                frames: out_rx,
                jobs: job_tx.clone(),
                forwarded: forwarded.clone(),
                cancel: cancel.clone(),
                metrics: cfg.metrics.clone().map(|m| (m, cfg.index + 1)),
                events: cfg.events.clone(),
                rtts: rtts.clone(),
                drained: drained_tx,
            }),
            on,
        );
        let stop_tx = job_tx.clone();
        let sweep_tx = job_tx.clone();
        let sweep_cancel = cancel.clone();
        tasks.spawn_on(
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = sweep_cancel.cancelled() => break,
                        _ = tick.tick() => if sweep_tx.send(Job::Sweep).await.is_err() { break },
                    }
                }
            },
            on,
        );
        tasks.spawn_on(
            network::accept_loop(endpoint.clone(), job_tx, cancel.clone()),
            on,
        );
        let (stopped_tx, stopped) = oneshot::channel();
        let (thread_endpoint, thread_cancel) = (endpoint.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("shoal-stage".into())
            .spawn(move || {
                if let Some(rt) = runtime.get() {
                    rt.block_on(async move {
                        thread_cancel.cancelled().await;
                        thread_endpoint.close();
                        while tasks.join_next().await.is_some() {}
                        thread_endpoint.wait_idle().await;
                    });
                }
                // Links still open end with the runtime.
                drop(runtime);
                let _ = stopped_tx.send(());
            })
            .context("starting the stage's thread")?;
        Ok(Stage {
            local,
            cancel,
            stopped: Some(stopped),
            forwarded,
            rtts,
            sessions,
            kv_bytes,
            steps,
            batched,
            route: route_tx,
            jobs: stop_tx,
            drained: Some(drained),
        })
    }

    /// Decode batches of two or more sessions computed so far, and the decode steps they
    /// held.
    pub fn batched_decode(&self) -> (u64, u64) {
        (
            self.batched.batches.load(Ordering::Relaxed),
            self.batched.steps.load(Ordering::Relaxed),
        )
    }

    /// Decode positions computed so far, and the median time per position of the recent
    /// steps (a batch's time divided by its rows): what the straggler policy compares with
    /// the plan's prediction. `cores` is the process's CPU quota, if it has one
    /// ([`crate::cpu_quota::cores_allowed`]).
    pub fn decode_steps(&self, cores: Option<f64>) -> (u64, Option<Duration>) {
        self.steps.summary(cores)
    }

    /// Changes where computed frames go (a pending route is set once the plan is ready).
    pub fn set_route(&self, route: Route) {
        self.route.send_replace(route);
    }

    /// Sessions open on this stage now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Bytes of KV cache its open sessions hold now.
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes.load(Ordering::Relaxed)
    }

    /// The address the stage accepts its upstream link on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The round-trip time of each link this stage sends on now (its next stage, or the
    /// heads it answers), as QUIC estimates it.
    pub fn link_rtts(&self) -> Vec<(SocketAddr, Duration)> {
        self.rtts.now()
    }

    /// Frames this stage has sent downstream.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Waits until the stage is told to stop (a signal, or [`Stage::shutdown`] elsewhere).
    pub async fn stopped(&self) {
        self.cancel.cancelled().await;
    }

    /// A token that stops the stage when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Fails its open sessions back to their heads (they replay elsewhere at once instead of
    /// waiting for a reply that will not come), stops accepting, closes the links and waits
    /// until the stage's thread has finished.
    pub async fn shutdown(mut self) {
        if let Some(drained) = self.drained.take() {
            // Bounded, queueing the stop included: a prompt chunk being computed finishes
            // first, a full queue or a dead link does not hold the stop up.
            let jobs = self.jobs.clone();
            let drain = async move {
                if jobs.send(Job::Stop).await.is_ok() {
                    let _ = drained.await;
                }
            };
            let _ = tokio::time::timeout(STOP_DRAIN, drain).await;
        }
        self.cancel.cancel();
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
