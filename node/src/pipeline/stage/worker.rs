//! What a stage does with each message: the session table, its owners and the shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sharding::model::{BatchError, Input, Shard, StepError};
use tracing::{debug, info, trace, warn};
use transport::quic::{FrameHeader, FrameKind};

use super::{Dest, Outgoing, Reports, Settings, Upstream, HOP};
use crate::cpu_quota;
use crate::metrics::StepKind;
use crate::pipeline::protocol::{self, FailureCode, Message, Phase, Rows, RowsHead};

mod lifecycle;

/// One session on this stage.
struct Session {
    /// When a message of it was last run.
    seen: Instant,
    /// The head its results and failures go to.
    head: Option<SocketAddr>,
    /// The upstream peer that opened it, the only one whose messages it takes.
    owner: Upstream,
}

/// A decode row waiting for its batch: the frame's header, its decoded shape, and its
/// upstream.
pub(super) type DecodeRow = (FrameHeader, RowsHead, Vec<u8>, Upstream);

/// The rows of the batch being assembled; kept between batches so decoding allocates
/// nothing per token once warm.
#[derive(Default)]
struct Batch {
    /// Per row: the frame's header, its shape, and the head its result goes back to.
    rows: Vec<(FrameHeader, RowsHead, Option<SocketAddr>)>,
    /// Per row: session and position.
    steps: Vec<(u64, usize)>,
    /// The rows' hidden states, `rows × n_embd`.
    inputs: Vec<f32>,
}

pub(super) struct Worker {
    shard: Shard,
    n_embd: usize,
    /// Frames computed, for the compute task to send on.
    pub(super) outbox: Vec<Outgoing>,
    settings: Settings,
    pub(super) reports: Reports,
    sessions: HashMap<u64, Session>,
    hidden: Vec<f32>,
    result: Vec<f32>,
    batch: Batch,
}

impl Worker {
    pub(super) fn new(shard: Shard, settings: Settings, reports: Reports) -> Worker {
        Worker {
            n_embd: shard.config().n_embd,
            shard,
            outbox: Vec::new(),
            settings,
            reports,
            sessions: HashMap::new(),
            hidden: Vec::new(),
            result: Vec::new(),
            batch: Batch::default(),
        }
    }

    /// Sessions open now.
    pub(super) fn open(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes of KV cache the open sessions hold.
    pub(super) fn kv_bytes(&self) -> usize {
        self.shard.kv_bytes()
    }

    fn send(&mut self, header: FrameHeader, payload: Vec<u8>, head: Option<SocketAddr>) {
        self.outbox.push(Outgoing {
            header,
            payload,
            head,
            dest: Dest::Next,
        });
    }

    /// Fails `session` back to its head with `code`.
    fn fail(&mut self, session: u64, head: Option<SocketAddr>, code: FailureCode, why: &str) {
        let mut payload = Vec::new();
        protocol::encode_error(code, why, &mut payload);
        self.outbox.push(Outgoing {
            header: protocol::frame(session, 0),
            payload,
            head,
            // Without a head address (a static pipeline's head gave none), down the ring:
            // its last stage knows the head.
            dest: if head.is_some() {
                Dest::Head
            } else {
                Dest::Next
            },
        });
    }

    /// The session cannot continue here: frees it and tells the head why.
    fn refuse(&mut self, session: u64, head: Option<SocketAddr>, error: &dyn std::fmt::Display) {
        warn!(session, %error, "step refused");
        self.sessions.remove(&session);
        self.shard.close_session(session);
        self.fail(session, head, FailureCode::Refused, &error.to_string());
    }

    /// Closes the sessions idle past the timeout.
    pub(super) fn sweep(&mut self) {
        let now = Instant::now();
        let (timeout, shard) = (self.settings.timeout, &mut self.shard);
        self.sessions.retain(|&id, s| {
            let alive = now.duration_since(s.seen) < timeout;
            if !alive && shard.close_session(id) {
                info!(session = id, "closed an abandoned session");
            }
            alive
        });
    }

    /// The transport refused a frame of `session` from `from`: its owner's head hears it.
    pub(super) fn rejected(&mut self, session: u64, from: Upstream, error: &str) {
        if let Some(s) = self.sessions.get(&session).filter(|s| s.owner == from) {
            let head = s.head;
            self.refuse(session, head, &format!("a frame was rejected: {error}"));
        }
    }

    /// The next hop is gone: every session fails back to its head, which replays it on
    /// another plan.
    pub(super) fn next_hop_lost(&mut self, next: SocketAddr, error: &str) {
        let why = format!("the next stage ({next}) was lost: {error}");
        self.fail_all(FailureCode::Unroutable, &why);
    }

    /// Fails every open session back to its head with `code` and frees it.
    pub(super) fn fail_all(&mut self, code: FailureCode, why: &str) {
        let ids: Vec<(u64, Option<SocketAddr>)> =
            self.sessions.iter().map(|(&id, s)| (id, s.head)).collect();
        for (id, head) in ids {
            self.sessions.remove(&id);
            self.shard.close_session(id);
            self.fail(id, head, code, why);
        }
    }

    /// Whether `session` belongs to another upstream than `from`. Such a frame is dropped
    /// without an error: one would end the owner's session.
    fn foreign(&self, session: u64, from: Upstream) -> bool {
        match self.sessions.get(&session) {
            Some(s) if s.owner != from => {
                warn!(
                    session,
                    "dropped a frame for a session another upstream owns"
                );
                true
            }
            _ => false,
        }
    }

    /// Runs one frame that is not part of a decode batch.
    pub(super) fn frame(&mut self, header: FrameHeader, payload: Vec<u8>, from: Upstream) {
        let session = header.session;
        if header.kind != FrameKind::Message {
            // Not part of a pipeline (model chunks, probes): never forwarded, so junk sent to
            // one stage does not travel the ring.
            debug!(session, kind = ?header.kind, "dropped a frame a stage does not route");
            return;
        }
        if self.foreign(session, from) {
            return;
        }
        let head = self.sessions.get(&session).and_then(|s| s.head);
        let message = match Message::decode(&payload) {
            Ok(m) => m,
            Err(e) => return self.refuse(session, head, &e),
        };
        match message {
            Message::Open(open) => self.open_session(header, payload, open, from),
            Message::Rows(rows) => {
                let started = Instant::now();
                let decode = rows.head.phase == Phase::Decode;
                // Only decode steps are reported; a prefill chunk's CPU time is not read.
                let cpu = decode.then(|| self.cpu_time());
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.seen = started;
                }
                match self.step(session, &rows) {
                    Ok(payload) => {
                        if let Some(cpu) = cpu {
                            let used = self.cpu_time().saturating_sub(cpu);
                            self.reports.steps.record(started.elapsed(), used, 1);
                        }
                        let kind = if decode {
                            StepKind::Decode
                        } else {
                            StepKind::Prefill
                        };
                        self.observe(kind, started);
                        self.send(header, payload, head);
                    }
                    Err(e) => self.refuse(session, head, &e),
                }
            }
            Message::Close(close) => {
                self.close_session(session, close, from);
                self.send(header, payload, head);
            }
            Message::Error(failure) => {
                // An earlier stage failed it; the head hears from that stage already when
                // it knew the head, else through here.
                self.sessions.remove(&session);
                self.shard.close_session(session);
                let msg = &failure.message;
                self.fail(session, head, failure.code, msg);
            }
        }
    }

    /// Runs one message of rows through the shard; the answer's payload.
    fn step(&mut self, session: u64, rows: &Rows<'_>) -> Result<Vec<u8>, StepError> {
        self.read_hidden(rows)?;
        let pos = rows.head.pos as usize;
        self.roll_back(session, &rows.head)?;
        self.shard
            .forward(session, pos, Input::Hidden(&self.hidden), &mut self.result)?;
        let mut payload = Vec::new();
        let head = RowsHead {
            width: self.n_embd as u32,
            dtype: self.settings.wire,
            ..rows.head
        };
        protocol::encode_rows(head, &self.result, &mut payload);
        Ok(payload)
    }

    /// Runs the decode rows in `frames` (one position each, distinct sessions) as one
    /// batch and sends each result on as its own message. A row that cannot run is answered
    /// with an error for its session alone; the others run.
    pub(super) fn decode(&mut self, frames: &mut Vec<DecodeRow>) {
        let started = (Instant::now(), self.cpu_time());
        let mut batch = std::mem::take(&mut self.batch);
        self.decode_batch(frames, &mut batch, started);
        self.batch = batch;
    }

    /// `started` is when the batch began, on the wall clock and in CPU time.
    fn decode_batch(
        &mut self,
        frames: &mut Vec<DecodeRow>,
        b: &mut Batch,
        (started, cpu): (Instant, Duration),
    ) {
        let e = self.n_embd;
        b.rows.clear();
        b.steps.clear();
        b.inputs.clear();
        for (header, rows_head, payload, from) in frames.drain(..) {
            let session = header.session;
            trace!(target: HOP, session, pos = rows_head.pos, "computing");
            if self.foreign(session, from) {
                continue;
            }
            let head = self.sessions.get(&session).and_then(|s| s.head);
            if let Some(s) = self.sessions.get_mut(&session) {
                s.seen = started;
            }
            let decoded = Message::decode(&payload).map_err(|e| e.to_string());
            let read = match decoded {
                Ok(Message::Rows(rows)) => self.read_hidden(&rows).map_err(|e| e.to_string()),
                Ok(_) => Err("not rows".to_owned()),
                Err(e) => Err(e),
            };
            let read = read.and_then(|()| {
                self.roll_back(session, &rows_head)
                    .map_err(|e| e.to_string())
            });
            match read {
                Ok(()) => {
                    b.inputs.extend_from_slice(&self.hidden);
                    b.rows.push((header, rows_head, head));
                    b.steps.push((session, rows_head.pos as usize));
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
                        let (header, _, head) = b.rows.remove(i);
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
            for (header, _, head) in std::mem::take(&mut b.rows) {
                self.refuse(header.session, head, &error);
            }
            return;
        }
        let k = b.rows.len();
        let used = self.cpu_time().saturating_sub(cpu);
        self.reports.steps.record(started.elapsed(), used, k as u64);
        self.observe(StepKind::Decode, started);
        if k > 1 {
            self.reports.batched(k);
        }
        for (i, &(header, rows_head, head)) in b.rows.iter().enumerate() {
            trace!(target: HOP, session = header.session, pos = rows_head.pos, "computed");
            let mut payload = Vec::new();
            let out = RowsHead {
                width: e as u32,
                dtype: self.settings.wire,
                ..rows_head
            };
            protocol::encode_rows(out, &self.result[i * e..(i + 1) * e], &mut payload);
            self.send(header, payload, head);
        }
    }

    /// Generated rows a little below the session's length roll it back first: the head
    /// rejected the positions after theirs (speculative drafts). A prompt chunk must come in
    /// order: a replayed one is refused by the step.
    fn roll_back(&mut self, session: u64, rows: &RowsHead) -> Result<(), StepError> {
        let pos = rows.pos as usize;
        if let Some(len) = self.shard.session(session).map(|c| c.len()) {
            if rows.phase == Phase::Decode && pos < len && len - pos <= protocol::MAX_ROLLBACK {
                self.shard.truncate_session(session, pos)?;
            }
        }
        Ok(())
    }

    /// Decodes rows' hidden states into `self.hidden`.
    fn read_hidden(&mut self, rows: &Rows<'_>) -> Result<(), StepError> {
        if rows.head.width as usize != self.n_embd {
            return Err(StepError::WrongInput {
                expected: "hidden states of the model's width",
            });
        }
        rows.values(&mut self.hidden)
            .map_err(|_| StepError::WrongInput {
                expected: "f32, f16 or q8 hidden states of the announced shape",
            })
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
        if let Some((m, stage)) = &self.reports.metrics {
            m.stage_step(*stage, kind, started.elapsed().as_secs_f64());
        }
    }
}
