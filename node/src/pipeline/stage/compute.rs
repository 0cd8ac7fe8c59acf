//! The stage's compute task: owns the shard and runs the frames the network tasks queue, in
//! arrival order. It runs on the stage's own thread, next to the tasks that receive and send
//! the frames, so a decode frame goes from socket to shard to socket without waking another
//! thread. A frame of several positions (a prefill chunk) runs on a blocking thread instead,
//! so the links keep answering while it computes.
//!
//! Decode frames of different sessions that are waiting together run as one batch
//! ([`Shard::forward_batch`]), which costs little more than one of them alone; each result
//! still leaves as its own frame, so the wire protocol does not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sharding::model::{BatchError, Input, Shard, StepError};
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};
use transport::quic::{ErrorCode, FrameHeader, FrameKind};

use super::{error_frame, Job, Outgoing, StepTimes, Upstream, HOP};
use crate::cpu_quota;
use crate::metrics::{Metrics, StepKind};
use crate::pipeline::protocol::{self, WireDtype};
use crate::pipeline::route;

/// Most decode frames computed as one batch. A batch takes only frames already waiting: a
/// lone stream never waits for company.
pub(super) const MAX_STAGE_BATCH: usize = 8;
const _: () = assert!(MAX_STAGE_BATCH <= sharding::model::MAX_BATCH);

/// Fewest decode frames computed as one batch; two waiting frames run one after the other.
///
/// The multi-row kernels start paying at three rows: a batch of two costs as much as two
/// steps (`sharding/examples/batch_cost.rs`: 4.05 ms against 2 × 2.0 ms for 15 SmolLM2
/// layers), while a batch of three costs 0.69 of three steps and four 0.54 of four. And a
/// batch is worse than its cost: sessions computed together leave together, reach the next
/// stage together and are batched there again, so two streams through a two-stage ring move
/// in lockstep with one stage idle. Run one after the other, the first result leaves a step
/// earlier, and the two sessions spread over the stages.
pub(super) const MIN_STAGE_BATCH: usize = 3;

/// The compute task's settings.
pub(super) struct Settings {
    /// Sessions idle this long are closed.
    pub(super) timeout: Duration,
    /// What hidden states go downstream as.
    pub(super) wire: WireDtype,
    /// Sessions one upstream may hold, unless it is `previous_stage`.
    pub(super) per_peer: usize,
    /// The upstream exempt from `per_peer`.
    pub(super) previous_stage: Option<Upstream>,
}

/// Decode steps that ran batched with other sessions' steps.
#[derive(Default)]
pub(super) struct BatchCounts {
    /// Batches of two or more steps.
    pub(super) batches: AtomicU64,
    /// Steps in those batches.
    pub(super) steps: AtomicU64,
}

/// What the compute task shares with the [`super::Stage`] handle and the metrics.
pub(super) struct Reports {
    pub(super) open: Arc<AtomicUsize>,
    pub(super) metrics: Option<(Arc<Metrics>, String)>,
    pub(super) steps: Arc<StepTimes>,
    pub(super) batched: Arc<BatchCounts>,
}

/// A frame from upstream and the upstream that sent it.
type Frame = (FrameHeader, Vec<u8>, Upstream);

/// Runs jobs until the queue closes or the downstream queue does (the stage is stopping).
pub(super) async fn compute(
    shard: Shard,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Outgoing>,
    settings: Settings,
    reports: Reports,
) {
    let mut worker = Box::new(Worker {
        n_embd: shard.config().n_embd,
        shard,
        outbox: Vec::new(),
        settings,
        reports,
        last_seen: HashMap::new(),
        hidden: Vec::new(),
        result: Vec::new(),
        batch: Batch::default(),
    });
    let mut waiting: Vec<Frame> = Vec::with_capacity(MAX_STAGE_BATCH);
    // Jobs taken from the queue but not run yet, in queue order: the second of a pair of
    // decode frames, then the frame that ended a batch.
    let mut held: Option<Frame> = None;
    let mut next = None;
    loop {
        let job = match (held.take(), next.take()) {
            (Some((h, p, f)), later) => {
                next = later;
                Job::Frame(h, p, f)
            }
            (None, Some(job)) => job,
            (None, None) => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let open = worker.last_seen.len();
        worker.reports.open.store(open, Ordering::Relaxed);
        match job {
            Job::Sweep => worker.sweep(),
            Job::Frame(header, payload, from) if batchable(&header) => {
                waiting.clear();
                waiting.push((header, payload, from));
                // Take the decode frames already queued behind it, up to the first frame of
                // another kind or a second one of a session (those must run after it). Not
                // past a frame already taken out of order.
                while next.is_none() && waiting.len() < MAX_STAGE_BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Frame(h, p, f))
                            if batchable(&h)
                                && waiting.iter().all(|w| w.0.session != h.session) =>
                        {
                            waiting.push((h, p, f));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if waiting.len() < MIN_STAGE_BATCH {
                    // Run the first alone and send it on before the second.
                    held = waiting.drain(1..).next();
                }
                worker.decode(&mut waiting);
            }
            Job::Frame(header, payload, from) if header.rows > 1 => {
                let run = tokio::task::spawn_blocking(move || {
                    worker.frame(header, payload, from);
                    worker
                });
                worker = match run.await {
                    Ok(worker) => worker,
                    Err(e) => {
                        warn!(error = %e, "the stage's compute stopped");
                        return;
                    }
                };
            }
            Job::Frame(header, payload, from) => worker.frame(header, payload, from),
        }
        for frame in worker.outbox.drain(..) {
            if out.send(frame).await.is_err() {
                return;
            }
        }
    }
}

/// Whether a frame may join a decode batch: one generated position.
fn batchable(header: &FrameHeader) -> bool {
    header.kind == FrameKind::Decode && header.rows == 1
}

/// The rows of the batch being assembled; kept between batches so decoding allocates
/// nothing per token once warm.
#[derive(Default)]
struct Batch {
    /// Per row: the frame's header and the head its result goes back to.
    rows: Vec<(FrameHeader, Option<SocketAddr>)>,
    /// Per row: session and position.
    steps: Vec<(u64, usize)>,
    /// The rows' hidden states, `rows × n_embd`.
    inputs: Vec<f32>,
}

struct Worker {
    shard: Shard,
    n_embd: usize,
    /// Frames computed, for the compute task to send on.
    outbox: Vec<Outgoing>,
    settings: Settings,
    reports: Reports,
    /// Per open session: when it was last used, the head that opened it, and the upstream
    /// peer that owns it.
    last_seen: HashMap<u64, (Instant, Option<SocketAddr>, Upstream)>,
    hidden: Vec<f32>,
    result: Vec<f32>,
    batch: Batch,
}

impl Worker {
    fn send(&mut self, frame: Outgoing) {
        self.outbox.push(frame);
    }

    /// Closes the sessions idle past the timeout.
    fn sweep(&mut self) {
        let now = Instant::now();
        let (timeout, shard) = (self.settings.timeout, &mut self.shard);
        self.last_seen.retain(|&session, &mut (seen, _, _)| {
            let alive = now.duration_since(seen) < timeout;
            if !alive && shard.close_session(session) {
                info!(session, "closed an abandoned session");
            }
            alive
        });
    }

    /// Whether `session` belongs to another upstream than `from`. Such a frame is dropped
    /// without an error frame: one would carry the owner's session id downstream and end
    /// the session there.
    fn foreign(&self, header: &FrameHeader, from: Upstream) -> bool {
        let session = header.session;
        match self.last_seen.get(&session) {
            Some(&(_, _, owner)) if owner != from => {
                warn!(session, kind = ?header.kind, "dropped a frame for a session another upstream owns");
                true
            }
            _ => false,
        }
    }

    /// The session cannot continue here: frees it and tells the head why.
    fn refuse(&mut self, session: u64, head: Option<SocketAddr>, error: &dyn std::fmt::Display) {
        warn!(session, %error, "step refused");
        self.last_seen.remove(&session);
        self.shard.close_session(session);
        let (h, p) = error_frame(ErrorCode::Protocol, session, &error.to_string());
        self.send((h, p, head));
    }

    /// Runs one frame that is not part of a decode batch.
    fn frame(&mut self, header: FrameHeader, payload: Vec<u8>, from: Upstream) {
        let session = header.session;
        if self.foreign(&header, from) {
            return;
        }
        if header.kind == FrameKind::Open
            && !self.last_seen.contains_key(&session)
            && self.settings.previous_stage != Some(from)
        {
            let held = self.last_seen.values().filter(|s| s.2 == from).count();
            if held >= self.settings.per_peer {
                // Refused before the shard sees it: the table keeps room for other peers.
                warn!(
                    session,
                    held, "refused an open: this upstream holds its share of sessions"
                );
                let message =
                    format!("this upstream already holds {held} sessions, its limit on this stage");
                let (h, p) = error_frame(ErrorCode::Protocol, session, &message);
                self.send((h, p, route::parse_reply(&payload)));
                return;
            }
        }
        let head = self.last_seen.get(&session).and_then(|s| s.1);
        let reply = match header.kind {
            FrameKind::Open => {
                let head = route::parse_reply(&payload);
                self.last_seen.insert(session, (Instant::now(), head, from));
                self.shard
                    .open_session(session, header.n_pos as usize)
                    .map(|()| (header, payload))
            }
            FrameKind::Prefill | FrameKind::Decode | FrameKind::Activations => {
                let started = Instant::now();
                // Only decode steps are reported; a prefill chunk's CPU time is not read.
                let cpu = (header.kind == FrameKind::Decode).then(|| self.cpu_time());
                if let Some(seen) = self.last_seen.get_mut(&session) {
                    seen.0 = started;
                }
                let reply = self.step(header, &payload);
                if let (Some(cpu), Ok(_)) = (cpu, &reply) {
                    let used = self.cpu_time().saturating_sub(cpu);
                    self.reports.steps.record(started.elapsed(), used, 1);
                }
                let kind = if header.kind == FrameKind::Decode {
                    StepKind::Decode
                } else {
                    StepKind::Prefill
                };
                self.observe(kind, started);
                reply
            }
            FrameKind::Close => {
                self.last_seen.remove(&session);
                self.shard.close_session(session);
                Ok((header, Vec::new()))
            }
            FrameKind::Error(_) => {
                self.last_seen.remove(&session);
                self.shard.close_session(session);
                Ok((header, payload))
            }
            // Not part of a pipeline (model chunks, probes): never forwarded, so junk sent to
            // one stage does not travel the ring.
            other => {
                debug!(session, kind = ?other, "dropped a frame a stage does not route");
                return;
            }
        };
        let head = head.or_else(|| self.last_seen.get(&session).and_then(|s| s.1));
        match reply {
            Ok((h, p)) => self.send((h, p, head)),
            Err(e) => self.refuse(session, head, &e),
        }
    }

    /// Runs the decode frames in `frames` (one position each, distinct sessions) as one
    /// batch and sends each result on as its own frame. A frame that cannot run is answered
    /// with an error frame for its session alone; the others run.
    fn decode(&mut self, frames: &mut Vec<Frame>) {
        let started = (Instant::now(), self.cpu_time());
        let mut batch = std::mem::take(&mut self.batch);
        self.decode_batch(frames, &mut batch, started);
        self.batch = batch;
    }

    /// `started` is when the batch began, on the wall clock and in CPU time.
    fn decode_batch(
        &mut self,
        frames: &mut Vec<Frame>,
        b: &mut Batch,
        (started, cpu): (Instant, Duration),
    ) {
        for (h, _, _) in frames.iter() {
            trace!(target: HOP, session = h.session, pos = h.pos, rows = h.rows, "computing");
        }
        let e = self.n_embd;
        b.rows.clear();
        b.steps.clear();
        b.inputs.clear();
        for (header, payload, from) in frames.drain(..) {
            let session = header.session;
            if self.foreign(&header, from) {
                continue;
            }
            let head = self.last_seen.get(&session).and_then(|s| s.1);
            if let Some(seen) = self.last_seen.get_mut(&session) {
                seen.0 = started;
            }
            match self.read_hidden(header, &payload) {
                Ok(()) => {
                    b.inputs.extend_from_slice(&self.hidden);
                    b.rows.push((header, head));
                    b.steps.push((session, header.pos as usize));
                }
                Err(error) => self.refuse(session, head, &error),
            }
        }
        let run = loop {
            if b.rows.is_empty() {
                return;
            }
            match self
                .shard
                .forward_batch(&b.steps, Input::Hidden(&b.inputs), &mut self.result)
            {
                Ok(_) => break Ok(()),
                Err(error) => match error.step() {
                    Some(i) => {
                        // Leave that step out; the rest may run.
                        let (header, head) = b.rows.remove(i);
                        b.steps.remove(i);
                        b.inputs.drain(i * e..(i + 1) * e);
                        match error {
                            // Say what `forward` would have said for this step alone.
                            BatchError::Step { error, .. } => {
                                self.refuse(header.session, head, &error)
                            }
                            other => self.refuse(header.session, head, &other),
                        }
                    }
                    None => break Err(error),
                },
            }
        };
        if let Err(error) = run {
            // Only a batch the loop above never builds gets here (empty, too large, or rows
            // that disagree with the steps): every session in it is told, none is dropped.
            warn!(%error, "batch refused as a whole");
            for (header, head) in std::mem::take(&mut b.rows) {
                self.refuse(header.session, head, &error);
            }
            return;
        }
        let k = b.rows.len();
        let used = self.cpu_time().saturating_sub(cpu);
        self.reports.steps.record(started.elapsed(), used, k as u64);
        self.observe(StepKind::Decode, started);
        if k > 1 {
            let batched = &self.reports.batched;
            batched.batches.fetch_add(1, Ordering::Relaxed);
            batched.steps.fetch_add(k as u64, Ordering::Relaxed);
            if let Some((m, layers)) = &self.reports.metrics {
                m.stage_batched(layers, k);
            }
        }
        for (i, &(header, head)) in b.rows.iter().enumerate() {
            let h = &header;
            trace!(target: HOP, session = h.session, pos = h.pos, rows = h.rows, "computed");
            let frame = self.hidden_frame(header, i * e..(i + 1) * e);
            self.send((frame.0, frame.1, head));
        }
    }

    /// Decodes a frame's hidden states into `self.hidden`.
    fn read_hidden(&mut self, header: FrameHeader, payload: &[u8]) -> Result<(), StepError> {
        let n_embd = self.n_embd;
        if header.cols as usize != n_embd {
            return Err(StepError::WrongInput {
                expected: "hidden states of the model's width",
            });
        }
        let count = header.rows as usize * n_embd;
        protocol::decode_hidden(header.dtype, payload, count, &mut self.hidden).ok_or(
            StepError::WrongInput {
                expected: "f32, f16 or q8 hidden states of the announced shape",
            },
        )
    }

    /// Runs one frame of hidden states through the shard.
    fn step(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
    ) -> Result<(FrameHeader, Vec<u8>), StepError> {
        self.read_hidden(header, payload)?;
        self.shard.forward(
            header.session,
            header.pos as usize,
            Input::Hidden(&self.hidden),
            &mut self.result,
        )?;
        Ok(self.hidden_frame(header, 0..self.result.len()))
    }

    /// The frame answering `header` with `self.result[values]`.
    fn hidden_frame(
        &self,
        header: FrameHeader,
        values: std::ops::Range<usize>,
    ) -> (FrameHeader, Vec<u8>) {
        let values = &self.result[values];
        let rows = values.len() / self.n_embd;
        let wire = self.settings.wire;
        let mut bytes = Vec::new();
        protocol::encode_hidden(values, wire, &mut bytes);
        let out = protocol::hidden(
            header.kind,
            header.session,
            header.seq,
            header.pos as usize,
            rows,
            self.n_embd,
            wire,
        );
        (out, bytes)
    }

    /// The CPU time behind this stage's steps: its own thread's when the shard computes on
    /// it (one thread), else the whole process's (the shard's pool works on other threads).
    fn cpu_time(&self) -> Duration {
        if self.shard.options().threads <= 1 {
            cpu_quota::thread_time()
        } else {
            cpu_quota::process_time()
        }
    }

    fn observe(&self, kind: StepKind, started: Instant) {
        if let Some((m, layers)) = &self.reports.metrics {
            m.stage_step(layers, kind, started.elapsed().as_secs_f64());
        }
    }
}
