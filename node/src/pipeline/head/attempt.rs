//! One request's session on one plan: opens it, sends its rows, waits for its replies. A
//! failure ends the attempt; the [`super::Generation`] decides whether to try another plan.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::super::error::PipelineError;
use super::super::failover::Plans;
use super::super::protocol::{self, Open, Phase, Reply, Resume, RowsHead};
use super::first_stages::Stopping;
use super::{Event, Inner, PREFILL_IN_FLIGHT};

/// Replies a session may have outstanding (its open's and its chunks'), plus room for errors.
const EVENTS: usize = PREFILL_IN_FLIGHT + 4;

pub(super) struct Attempt {
    inner: Arc<Inner>,
    first: SocketAddr,
    id: u64,
    /// The plan it runs on (0 for a static pipeline), and the plans to watch for it breaking.
    epoch: u64,
    plans: Option<Plans>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    seq: u64,
    opened: bool,
    /// Positions sent so far: every stage computes them before it sees the close.
    sent: usize,
    /// Whether a send or a reply failed: the stages' caches may not hold what was sent.
    failed: bool,
    /// Whether its close was sent.
    closed: bool,
}

impl Attempt {
    /// Opens a session on the plan entering at `first` and runs `context` through it as a
    /// prompt; returns the attempt and the hidden state of the context's last position.
    /// With `resume`, the session starts from the first `len` positions of the cache the
    /// stages kept under `key`, and only the rest of the context is sent.
    pub(super) async fn start(
        inner: Arc<Inner>,
        (epoch, first): (u64, SocketAddr),
        plans: Option<Plans>,
        (context, resume): (&[u32], Option<Resume>),
        reserve: usize,
    ) -> Result<(Attempt, Vec<f32>), PipelineError> {
        let id = inner.new_session_id();
        let (tx, rx) = mpsc::channel(EVENTS);
        inner.sessions.insert(id, tx.clone());
        let mut attempt = Attempt {
            inner,
            first,
            id,
            epoch,
            plans,
            tx,
            rx,
            seq: 0,
            opened: false,
            sent: 0,
            failed: false,
            closed: false,
        };
        let hidden = attempt.prefill(context, resume, reserve).await?;
        Ok((attempt, hidden))
    }

    /// Sends the open and the prompt, in chunks, several in flight: while one chunk runs on
    /// the second stage the next runs on the first, so a long prompt keeps every stage busy.
    /// Only the last chunk's last row matters for the next token.
    async fn prefill(
        &mut self,
        context: &[u32],
        resume: Option<Resume>,
        reserve: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        // The last position is always computed: its row gives the next token's logits.
        let resume = resume.filter(|r| (r.len as usize) < context.len());
        let open = Open {
            positions: reserve.max(context.len()) as u32,
            reply: self.inner.reply_addr,
            resume,
        };
        let start = resume.map_or(0, |r| r.len as usize);
        let context = &context[start..];
        let mut payload = Vec::new();
        protocol::encode_open(&open, &mut payload);
        // The prompt follows the open without waiting for its acknowledgement: every stage
        // takes a session's messages in order, so the chunks find the session open, and a
        // stage that refuses the open answers it before any chunk's error. A request saves a
        // round trip of the ring before its first token.
        self.send(payload)?;
        let chunks: Vec<&[u32]> = context.chunks(protocol::PREFILL_CHUNK).collect();
        let mut hidden = Vec::new();
        let mut sent = 0;
        for answered in 0..chunks.len() {
            while sent < chunks.len() && sent - answered < PREFILL_IN_FLIGHT {
                let pos = start + sent * protocol::PREFILL_CHUNK;
                self.push(pos, chunks[sent], Phase::Prefill, Reply::LastRow)?;
                sent += 1;
            }
            hidden = self.rows().await?.1;
        }
        Ok(hidden)
    }

    /// Sends the embeddings of `tokens` at positions `pos..`.
    pub(super) fn push(
        &mut self,
        pos: usize,
        tokens: &[u32],
        phase: Phase,
        reply: Reply,
    ) -> Result<(), PipelineError> {
        let inner = &self.inner;
        let mut rows = Vec::new();
        inner
            .embedding
            .rows(tokens, &mut rows)
            .map_err(PipelineError::Head)?;
        let head = RowsHead {
            pos: pos as u32,
            rows: tokens.len() as u32,
            width: inner.n_embd as u32,
            dtype: inner.wire,
            phase,
            reply,
        };
        let mut payload = Vec::new();
        protocol::encode_rows(head, &rows, &mut payload);
        self.send(payload)?;
        self.sent = self.sent.max(pos + tokens.len());
        Ok(())
    }

    fn send(&mut self, payload: Vec<u8>) -> Result<(), PipelineError> {
        let header = protocol::frame(self.id, self.seq);
        self.seq += 1;
        let sent = self
            .inner
            .to_first
            .send((self.first, header, payload, self.tx.clone()));
        self.failed |= sent.is_err();
        sent.map_err(|Stopping| PipelineError::Stopping)
    }

    /// Ends the session keeping its cache on every stage, if it went well: `context` is
    /// what it ran (the tokens of its positions), and the head records the part every
    /// stage computes for a later request to resume.
    pub(super) fn close_keeping(mut self, context: &[u32]) {
        let held = &context[..self.sent.min(context.len())];
        if self.failed || held.len() < super::prefixes::MIN_REUSE {
            return;
        }
        // The close goes first: a request that finds the record sends its open after it,
        // and every stage takes the two in that order.
        self.close(true);
        let mut prefixes = self
            .inner
            .prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        prefixes.record((self.epoch, self.first), self.id, held);
    }

    /// Sends the session's close (once), keeping its cache on the stages or not, and stops
    /// routing its replies.
    fn close(&mut self, keep: bool) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let mut payload = Vec::new();
        if keep {
            protocol::encode_close_keeping(self.id, &mut payload);
        } else {
            protocol::encode_close(&mut payload);
        }
        let header = protocol::frame(self.id, self.seq);
        let _ = self
            .inner
            .to_first
            .send((self.first, header, payload, self.tx.clone()));
        self.inner.sessions.remove(self.id);
    }

    /// The next rows the last stage sends back (after the open's acknowledgement).
    pub(super) async fn rows(&mut self) -> Result<(RowsHead, Vec<f32>), PipelineError> {
        let rows = self.next_rows().await;
        self.failed |= rows.is_err();
        rows
    }

    async fn next_rows(&mut self) -> Result<(RowsHead, Vec<f32>), PipelineError> {
        loop {
            match self.wait().await? {
                Event::Opened if !self.opened => self.opened = true,
                Event::Opened => return Err(PipelineError::OutOfTurn("a second open")),
                Event::Rows(..) if !self.opened => {
                    return Err(PipelineError::OutOfTurn("rows before the open"))
                }
                Event::Rows(head, values) => return Ok((head, values)),
                Event::Failed(f) => return Err(PipelineError::Stage(f)),
                Event::BadReply(e) => return Err(PipelineError::BadReply(e)),
                Event::Unreachable(e) => return Err(PipelineError::Unreachable(e)),
                Event::LinkLost(why) => return Err(PipelineError::ReplyLinkLost(why)),
            }
        }
    }

    /// The session's next event; fails on timeout, or as soon as its plan is marked broken.
    async fn wait(&mut self) -> Result<Event, PipelineError> {
        let t = self.inner.timeout;
        let reply = tokio::time::timeout(t, self.rx.recv());
        let epoch = self.epoch;
        let broken = async {
            match self.plans.as_mut() {
                Some(plans) => {
                    plans.broken(epoch).await;
                    epoch
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = reply => match r {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(PipelineError::Stopping),
                Err(_) => Err(PipelineError::Timeout(t)),
            },
            epoch = broken => Err(PipelineError::PlanBroken(epoch)),
        }
    }
}

impl Drop for Attempt {
    /// Frees the session on every stage whatever happened, and stops routing its replies.
    fn drop(&mut self) {
        self.close(false);
    }
}
