//! A stage: accepts hidden states from upstream, runs its layers, forwards downstream.

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
use tracing::{debug, info, info_span, trace, warn, Instrument};
use transport::discovery::PeerId;
use transport::quic::{payload, Dtype, Endpoint, ErrorCode, FrameHeader, FrameKind, LinkError};

use super::links::Links;
use super::protocol::WireDtype;
use super::route::{self, Route};
use compute::{compute, BatchCounts, Reports, Settings};

mod compute;

/// A frame on its way downstream, with the head address of its session (for
/// [`Route::ReplyToHead`]).
type Outgoing = (FrameHeader, Vec<u8>, Option<SocketAddr>);
use crate::metrics::Metrics;

/// The tracing target of the per-frame events (`received`, `computing`, `computed`, `sent`)
/// that `scripts/hop-latency` turns into the time each hop and each stage adds; enable it with
/// `RUST_LOG=info,shoal::hop=trace`.
pub(crate) const HOP: &str = "shoal::hop";

/// Frames queued between the network tasks and the compute task, each way. Bounded, so a
/// flood from upstream slows the sender down instead of growing memory.
const QUEUE: usize = 64;

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
    sessions: Arc<AtomicUsize>,
    steps: Arc<StepTimes>,
    batched: Arc<BatchCounts>,
    route: watch::Sender<Route>,
}

/// Recent decode step times of a stage's compute task.
#[derive(Default)]
struct StepTimes {
    count: AtomicU64,
    /// Per position: the wall time and the CPU time of its step.
    recent: std::sync::Mutex<std::collections::VecDeque<(Duration, Duration)>>,
}

/// Decode steps the median is taken over.
const RECENT_STEPS: usize = 32;

impl StepTimes {
    /// One step of the compute task, which decoded `count` sessions' positions in `wall`
    /// and `cpu` of CPU time. The median is over the time per position: the plan
    /// predicts one position's cost, and a batch of four taking twice one step's time is a
    /// stage working faster, not a straggler (counting the whole batch made busy stages look
    /// slow under concurrency).
    fn record(&self, wall: Duration, cpu: Duration, count: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        let n = count.max(1) as u32;
        let mut recent = self.recent.lock().expect("steps lock");
        if recent.len() == RECENT_STEPS {
            recent.pop_front();
        }
        recent.push_back((wall / n, cpu / n));
    }

    /// Steps so far, and the median time per position. Under a CPU quota of `cores`, a
    /// position costs at least its CPU time over those cores: a step that fits in one
    /// period's quota looks fast on the wall clock while the process then waits out the
    /// rest of the period.
    fn summary(&self, cores: Option<f64>) -> (u64, Option<Duration>) {
        let mut v: Vec<Duration> = self
            .recent
            .lock()
            .expect("steps lock")
            .iter()
            .map(|&(wall, cpu)| match cores {
                // A quota read as absurdly small saturates instead of overflowing.
                Some(c) if c > 0.0 => wall.max(
                    Duration::try_from_secs_f64(cpu.as_secs_f64() / c).unwrap_or(Duration::MAX),
                ),
                _ => wall,
            })
            .collect();
        v.sort();
        (
            self.count.load(Ordering::Relaxed),
            v.get(v.len() / 2).copied(),
        )
    }
}

enum Job {
    /// A frame from upstream, with the upstream peer that sent it.
    Frame(FrameHeader, Vec<u8>, Upstream),
    Sweep,
}

/// Who sent a frame: the upstream node's libp2p identity (stable across its reconnects),
/// hashed. A session belongs to the upstream that opened it; frames for it from anyone else
/// are refused without touching it, so one peer cannot corrupt or close another's session.
type Upstream = u64;

fn upstream_of(link: &transport::quic::Link) -> Upstream {
    match link.peer_id() {
        Some(peer) => upstream_key(&peer),
        None => hash_of(&link.remote_address()),
    }
}

/// A stage's runtime until its thread runs it. Dropping it shuts it down without blocking,
/// so a stage that cannot start (its address taken, no thread to be had) returns an error
/// inside the caller's runtime instead of panicking there.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

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
        let endpoint = {
            // The endpoint's driver runs where it is bound.
            let _stage_runtime = runtime.get().enter();
            Arc::new(Endpoint::bind(cfg.listen, identity).context("binding the stage endpoint")?)
        };
        let local = endpoint.local_addr()?;
        info!(layers = ?cfg.spec.layers, %local, route = ?cfg.route, "stage ready");

        let cancel = CancellationToken::new();
        let (job_tx, job_rx) = mpsc::channel::<Job>(QUEUE);
        let (out_tx, out_rx) = mpsc::channel::<Outgoing>(QUEUE);
        let forwarded = Arc::new(AtomicU64::new(0));
        let sessions = Arc::new(AtomicUsize::new(0));
        let steps = Arc::new(StepTimes::default());
        let (route_tx, route_rx) = watch::channel(cfg.route);
        let mut tasks = tokio::task::JoinSet::new();
        let on = runtime.get().handle();

        let settings = Settings {
            timeout: cfg.session_timeout,
            wire: cfg.wire,
            per_peer: cfg.max_sessions_per_peer.max(1),
            previous_stage: cfg.previous_stage.as_ref().map(upstream_key),
        };
        let batched = Arc::new(BatchCounts::default());
        let reports = Reports {
            open: sessions.clone(),
            metrics: cfg.metrics.clone().map(|m| (m, layers_label(&cfg.spec))),
            steps: steps.clone(),
            batched: batched.clone(),
        };
        tasks.spawn_on(
            compute(shard, job_rx, out_tx.clone(), settings, reports),
            on,
        );
        tasks.spawn_on(
            downstream(
                endpoint.clone(),
                route_rx,
                out_rx,
                forwarded.clone(),
                cancel.clone(),
                cfg.metrics.clone(),
            ),
            on,
        );
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
            accept_loop(endpoint.clone(), job_tx, out_tx, cancel.clone()),
            on,
        );
        let (stopped_tx, stopped) = oneshot::channel();
        let (thread_endpoint, thread_cancel) = (endpoint.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("shoal-stage".into())
            .spawn(move || {
                runtime.get().block_on(async move {
                    thread_cancel.cancelled().await;
                    thread_endpoint.close();
                    while tasks.join_next().await.is_some() {}
                    thread_endpoint.wait_idle().await;
                });
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
            sessions,
            steps,
            batched,
            route: route_tx,
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

    /// The address the stage accepts its upstream link on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
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

    /// Stops accepting, closes the links and waits until the stage's thread has finished.
    pub async fn shutdown(mut self) {
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

async fn accept_loop(
    endpoint: Arc<Endpoint>,
    jobs: mpsc::Sender<Job>,
    out: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = endpoint.accept() => i,
        };
        let Some(result) = incoming else { return };
        let mut link = match result {
            Ok(link) => link,
            Err(e) => {
                warn!(error = %e, "upstream handshake failed");
                continue;
            }
        };
        let peer = link.remote_address();
        let upstream = upstream_of(&link);
        let (jobs, out, cancel) = (jobs.clone(), out.clone(), cancel.clone());
        tokio::spawn(
            async move {
                loop {
                    let frame = tokio::select! {
                        _ = cancel.cancelled() => return,
                        f = link.recv() => f,
                    };
                    match frame {
                        Ok(Some(f)) => {
                            let h = &f.header;
                            trace!(target: HOP, session = h.session, pos = h.pos, rows = h.rows, "received");
                            let job = Job::Frame(f.header, f.payload.to_vec(), upstream);
                            if jobs.send(job).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(LinkError::Rejected { error, header }) => {
                            // The stream is still usable; tell the head which session failed.
                            warn!(%error, "rejected a frame from upstream");
                            let session = header.map_or(0, |h| h.session);
                            let (h, p) =
                                error_frame(ErrorCode::Malformed, session, &error.to_string());
                            let _ = out.send((h, p, None)).await;
                        }
                        Err(e) => {
                            debug!(error = %e, "upstream link ended");
                            return;
                        }
                    }
                }
            }
            .instrument(info_span!("upstream", %peer)),
        );
    }
}

/// Sends frames to the next hop, connecting (and reconnecting) as needed. Keeps one link per
/// destination: a last stage answering several heads holds one link to each.
async fn downstream(
    endpoint: Arc<Endpoint>,
    mut route: watch::Receiver<Route>,
    mut frames: mpsc::Receiver<Outgoing>,
    forwarded: Arc<AtomicU64>,
    cancel: CancellationToken,
    metrics: Option<Arc<Metrics>>,
) {
    let mut links = Links::new(endpoint, metrics, 3, Duration::from_millis(100));
    loop {
        let (header, payload, reply) = tokio::select! {
            _ = cancel.cancelled() => return,
            f = frames.recv() => match f { Some(f) => f, None => return },
        };
        let current = tokio::select! {
            _ = cancel.cancelled() => return,
            r = route::resolved(&mut route) => r,
        };
        // Whether the next hop is the session's head, which needs only a chunk's last row.
        // A static pipeline's last stage knows it when its `--next` is the address the head
        // gave in its `Open`.
        let (next, to_head) = match (current, reply) {
            (Some(Route::To(next)), head) => (next, head == Some(next)),
            (Some(Route::ReplyToHead), Some(next)) => (next, true),
            (Some(Route::ReplyToHead), None) => {
                warn!(
                    session = header.session,
                    "no head address for this session; frame dropped"
                );
                continue;
            }
            _ => {
                warn!(
                    session = header.session,
                    "next hop still unknown; frame dropped"
                );
                continue;
            }
        };
        let (header, payload) = if to_head {
            last_row_only(header, payload)
        } else {
            (header, payload)
        };
        match links.send(next, &header, &payload).await {
            Ok(()) => {
                let h = &header;
                trace!(target: HOP, session = h.session, pos = h.pos, rows = h.rows, "sent");
                forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // The frame is lost; the head's failover notices the broken plan or times out.
                warn!(%next, error = %e, session = header.session, "cannot send to the next hop");
            }
        }
    }
}

/// A prefill chunk's answer as the head gets it: only its last row, all the head uses (the
/// next token's logits); the other rows would be most of a slow link's prefill traffic.
/// Rows are contiguous in every wire dtype, q8's too when a row is whole blocks.
fn last_row_only(header: FrameHeader, payload: Vec<u8>) -> (FrameHeader, Vec<u8>) {
    let rows = header.rows as usize;
    let whole_blocks = header.dtype != Dtype::Q8Block
        || (header.cols as usize).is_multiple_of(payload::Q8_BLOCK_VALUES);
    if header.kind != FrameKind::Prefill
        || rows <= 1
        || !payload.len().is_multiple_of(rows)
        || !whole_blocks
    {
        return (header, payload);
    }
    let row = payload.len() / rows;
    let last = payload[payload.len() - row..].to_vec();
    let header = FrameHeader {
        pos: header.pos + header.rows - 1,
        n_pos: 1,
        rows: 1,
        ..header
    };
    (header, last)
}

/// A stage's layers as the metrics label them, `a..b`.
fn layers_label(spec: &ShardSpec) -> String {
    format!("{}..{}", spec.layers.start, spec.layers.end)
}

/// An `Error` frame for `session` carrying `message`.
pub(crate) fn error_frame(code: ErrorCode, session: u64, message: &str) -> (FrameHeader, Vec<u8>) {
    let bytes = message.as_bytes().to_vec();
    let header = FrameHeader::bytes(FrameKind::Error(code), session, 0, bytes.len())
        .unwrap_or_else(|_| FrameHeader::empty(FrameKind::Error(code), session, 0));
    let bytes = if header.cols == 0 { Vec::new() } else { bytes };
    (header, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_gets_a_prefill_chunks_last_row_only() {
        let values: Vec<f32> = (0..3 * 64).map(|v| v as f32).collect();
        let frame = |kind, wire: WireDtype| {
            let mut bytes = Vec::new();
            super::super::protocol::encode_hidden(&values, wire, &mut bytes);
            let header = super::super::protocol::hidden(kind, 7, 0, 10, 3, 64, wire);
            (header, bytes)
        };
        for wire in [WireDtype::F32, WireDtype::F16, WireDtype::Q8] {
            let (header, bytes) = frame(FrameKind::Prefill, wire);
            let (h, p) = last_row_only(header, bytes.clone());
            assert_eq!((h.pos, h.n_pos, h.rows, h.cols), (12, 1, 1, 64), "{wire:?}");
            assert_eq!(p, bytes[bytes.len() / 3 * 2..], "{wire:?}");
            let mut last = Vec::new();
            super::super::protocol::decode_hidden(h.dtype, &p, 64, &mut last).unwrap();
            assert_eq!(last.len(), 64);
            // A decode frame goes on whole.
            let (header, bytes) = frame(FrameKind::Decode, wire);
            assert_eq!(last_row_only(header, bytes.clone()), (header, bytes));
        }
        // q8 rows that are not whole blocks cannot be cut apart.
        let odd = FrameHeader {
            cols: 48,
            ..frame(FrameKind::Prefill, WireDtype::Q8).0
        };
        assert_eq!(last_row_only(odd, vec![0; 6]), (odd, vec![0; 6]));
    }

    #[test]
    fn step_times_under_a_quota_cost_their_cpu_over_the_allowed_cores() {
        let steps = StepTimes::default();
        let ms = Duration::from_millis;
        for _ in 0..3 {
            steps.record(ms(5), ms(5), 1);
        }
        // A batch of four positions in 8 ms is 2 ms a position.
        steps.record(ms(8), ms(8), 4);
        assert_eq!(steps.summary(None), (7, Some(ms(5))));
        // 5 % of a core: 5 ms of CPU is 100 ms of the node's time.
        assert_eq!(steps.summary(Some(0.05)), (7, Some(ms(100))));
        // A quota above what the step uses changes nothing: the wall clock counts.
        assert_eq!(steps.summary(Some(2.0)), (7, Some(ms(5))));
        // A nonsensical quota (a cgroup file with a tiny ratio) saturates, never panics.
        assert_eq!(steps.summary(Some(1e-300)), (7, Some(Duration::MAX)));
    }
}
