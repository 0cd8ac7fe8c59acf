//! One request's session on one plan: opens it, sends its rows, waits for its replies. A
//! failure ends the attempt; the [`super::Generation`] decides whether to try another plan.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::super::error::PipelineError;
use super::super::failover::Plans;
use super::super::protocol::{self, Open, Phase, Reply, RowsHead};
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
}

impl Attempt {
    /// Opens a session on the plan entering at `first` and runs `context` through it as a
    /// prompt; returns the attempt and the hidden state of the context's last position.
    pub(super) async fn start(
        inner: Arc<Inner>,
        (epoch, first): (u64, SocketAddr),
        plans: Option<Plans>,
        context: &[u32],
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
        };
        let hidden = attempt.prefill(context, reserve).await?;
        Ok((attempt, hidden))
    }

    /// Sends the open and the prompt, in chunks, several in flight: while one chunk runs on
    /// the second stage the next runs on the first, so a long prompt keeps every stage busy.
    /// Only the last chunk's last row matters for the next token.
    async fn prefill(
        &mut self,
        context: &[u32],
        reserve: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        let open = Open {
            positions: reserve.max(context.len()) as u32,
            reply: self.inner.reply_addr,
        };
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
                let pos = sent * protocol::PREFILL_CHUNK;
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
        self.send(payload)
    }

    fn send(&mut self, payload: Vec<u8>) -> Result<(), PipelineError> {
        let header = protocol::frame(self.id, self.seq);
        self.seq += 1;
        self.inner
            .to_first
            .send((self.first, header, payload, self.tx.clone()))
            .map_err(|Stopping| PipelineError::Stopping)
    }

    /// The next rows the last stage sends back (after the open's acknowledgement).
    pub(super) async fn rows(&mut self) -> Result<(RowsHead, Vec<f32>), PipelineError> {
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
        let mut payload = Vec::new();
        protocol::encode_close(&mut payload);
        let header = protocol::frame(self.id, self.seq);
        let _ = self
            .inner
            .to_first
            .send((self.first, header, payload, self.tx.clone()));
        self.inner.sessions.remove(self.id);
    }
}
