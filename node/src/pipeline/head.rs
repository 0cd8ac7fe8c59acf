//! The head of a pipeline: embeds tokens, sends them around the ring, turns the returning
//! hidden state into logits and the next token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Shard, ShardOptions, ShardSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use transport::quic::{Endpoint, EndpointConfig, FrameHeader, FrameKind, LinkSender};

use super::protocol;
use crate::metrics::Metrics;

/// Where the head sits and how long it waits.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// GGUF model file (the head loads only the embedding and the output head).
    pub model: PathBuf,
    /// Threads for the embedding and output head.
    pub threads: usize,
    /// Address the last stage connects back to.
    pub listen: SocketAddr,
    /// The first stage.
    pub first: SocketAddr,
    /// How long to wait for any reply before failing a request.
    pub reply_timeout: Duration,
    /// Where to record the hop to the first stage, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
}

/// Why a request through the pipeline failed. The head keeps serving other requests.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A stage refused the request (unknown session, context full, malformed frame...).
    #[error("a stage refused the request: {0}")]
    Stage(String),
    /// No reply within the timeout: a stage is down or unreachable.
    #[error("no reply from the pipeline within {0:?} (is every stage up?)")]
    Timeout(Duration),
    /// The first stage cannot be reached.
    #[error("cannot send to the first stage: {0}")]
    Unreachable(String),
    /// The head's own model step failed.
    #[error("head: {0}")]
    Head(String),
}

enum Event {
    Opened,
    Hidden(Vec<f32>),
    Failed(String),
}

struct Inner {
    shard: Mutex<Shard>,
    n_embd: usize,
    to_first: mpsc::Sender<(FrameHeader, Vec<u8>, mpsc::Sender<Event>)>,
    sessions: Mutex<HashMap<u64, mpsc::Sender<Event>>>,
    next_session: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    timeout: Duration,
}

/// A running head. Cheap to clone; requests may run concurrently.
#[derive(Clone)]
pub struct Head {
    inner: Arc<Inner>,
    endpoint: Arc<Endpoint>,
    cancel: CancellationToken,
}

impl Head {
    /// Loads the embedding and output head and starts the link tasks.
    pub async fn start(cfg: HeadConfig, endpoint_config: EndpointConfig) -> anyhow::Result<Head> {
        let (model, threads) = (cfg.model.clone(), cfg.threads);
        let shard = tokio::task::spawn_blocking(move || -> anyhow::Result<Shard> {
            let file = GgufFile::open(&model)?;
            let spec = ShardSpec {
                layers: 0..0,
                embed: true,
                head: true,
            };
            let options = ShardOptions {
                threads,
                ..ShardOptions::default()
            };
            Ok(Shard::load(&file, spec, options)?)
        })
        .await??;
        let n_embd = shard.config().n_embd;
        let endpoint = Arc::new(
            Endpoint::bind(cfg.listen, endpoint_config).context("binding the head endpoint")?,
        );
        let cancel = CancellationToken::new();
        let (to_first, rx) = mpsc::channel(64);
        let inner = Arc::new(Inner {
            shard: Mutex::new(shard),
            n_embd,
            to_first,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(u64::from(std::process::id()) << 32),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            timeout: cfg.reply_timeout,
        });
        tokio::spawn(send_loop(
            endpoint.clone(),
            cfg.first,
            rx,
            inner.clone(),
            cancel.clone(),
            cfg.metrics.clone(),
        ));
        tokio::spawn(receive_loop(
            endpoint.clone(),
            inner.clone(),
            cancel.clone(),
        ));
        Ok(Head {
            inner,
            endpoint,
            cancel,
        })
    }

    /// The address the last stage must send to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Frames sent to the first stage and received from the last, since start.
    pub fn message_counts(&self) -> (u64, u64) {
        (
            self.inner.sent.load(Ordering::Relaxed),
            self.inner.received.load(Ordering::Relaxed),
        )
    }

    /// Runs `prompt` through the pipeline and generates up to `max_tokens` tokens, picking
    /// each with `pick` (given the logits) and reporting it to `on_token`, which returns
    /// `false` to stop early. Returns the generated ids.
    pub async fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        mut pick: impl FnMut(&[f32]) -> u32,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, PipelineError> {
        if prompt.is_empty() || max_tokens == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let session = inner.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(4);
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(session, tx.clone());
        let result = self
            .run(
                session,
                prompt,
                max_tokens,
                &tx,
                &mut rx,
                &mut pick,
                &mut on_token,
            )
            .await;
        // Free the session on every stage whatever happened.
        let _ = inner
            .to_first
            .send((
                FrameHeader::empty(FrameKind::Close, session, 0),
                Vec::new(),
                tx,
            ))
            .await;
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&session);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        session: u64,
        prompt: &[u32],
        max_tokens: usize,
        tx: &mpsc::Sender<Event>,
        rx: &mut mpsc::Receiver<Event>,
        pick: &mut impl FnMut(&[f32]) -> u32,
        on_token: &mut impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, PipelineError> {
        let inner = &self.inner;
        let positions = prompt.len() + max_tokens;
        self.send(protocol::open(session, positions), Vec::new(), tx)
            .await?;
        match self.wait(rx).await? {
            Event::Opened => {}
            Event::Hidden(_) => {
                return Err(PipelineError::Stage("hidden state before open".into()))
            }
            Event::Failed(e) => return Err(PipelineError::Stage(e)),
        }
        // Prefill in chunks; only the last chunk's last row matters for the first token.
        let mut hidden = Vec::new();
        for (i, chunk) in prompt.chunks(protocol::PREFILL_CHUNK).enumerate() {
            let pos = i * protocol::PREFILL_CHUNK;
            let bytes = self.embed(chunk).await?;
            let header = protocol::hidden(
                FrameKind::Prefill,
                session,
                i as u64,
                pos,
                chunk.len(),
                inner.n_embd,
            );
            self.send(header, bytes, tx).await?;
            hidden = self.expect_hidden(rx).await?;
        }
        let mut tokens = Vec::with_capacity(max_tokens);
        let mut pos = prompt.len();
        loop {
            let logits = self.logits(std::mem::take(&mut hidden)).await?;
            let next = pick(&logits);
            tokens.push(next);
            if !on_token(next) || tokens.len() == max_tokens {
                return Ok(tokens);
            }
            let bytes = self.embed(&[next]).await?;
            let header =
                protocol::hidden(FrameKind::Decode, session, pos as u64, pos, 1, inner.n_embd);
            self.send(header, bytes, tx).await?;
            hidden = self.expect_hidden(rx).await?;
            pos += 1;
        }
    }

    async fn send(
        &self,
        header: FrameHeader,
        payload: Vec<u8>,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(), PipelineError> {
        self.inner
            .to_first
            .send((header, payload, tx.clone()))
            .await
            .map_err(|_| PipelineError::Unreachable("head is shutting down".into()))
    }

    async fn wait(&self, rx: &mut mpsc::Receiver<Event>) -> Result<Event, PipelineError> {
        let t = self.inner.timeout;
        match tokio::time::timeout(t, rx.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(PipelineError::Unreachable("session channel closed".into())),
            Err(_) => Err(PipelineError::Timeout(t)),
        }
    }

    async fn expect_hidden(
        &self,
        rx: &mut mpsc::Receiver<Event>,
    ) -> Result<Vec<f32>, PipelineError> {
        match self.wait(rx).await? {
            Event::Hidden(h) => Ok(h),
            Event::Failed(e) => Err(PipelineError::Stage(e)),
            Event::Opened => Err(PipelineError::Stage("unexpected open".into())),
        }
    }

    async fn embed(&self, tokens: &[u32]) -> Result<Vec<u8>, PipelineError> {
        let inner = self.inner.clone();
        let tokens = tokens.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut rows = Vec::new();
            inner
                .shard
                .lock()
                .expect("shard lock")
                .embed(&tokens, &mut rows)
                .map_err(|e| PipelineError::Head(e.to_string()))?;
            let mut bytes = Vec::new();
            protocol::f32_bytes(&rows, &mut bytes);
            Ok(bytes)
        })
        .await
        .map_err(|e| PipelineError::Head(e.to_string()))?
    }

    async fn logits(&self, hidden: Vec<f32>) -> Result<Vec<f32>, PipelineError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut logits = Vec::new();
            inner
                .shard
                .lock()
                .expect("shard lock")
                .logits(&hidden, &mut logits)
                .map_err(|e| PipelineError::Head(e.to_string()))?;
            Ok(logits)
        })
        .await
        .map_err(|e| PipelineError::Head(e.to_string()))?
    }

    /// Stops the link tasks and closes the endpoint, telling the stages (bounded wait), so
    /// the last stage drops its link at once instead of sending into it until it times out.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Sends frames to the first stage; a frame that cannot be delivered fails its request.
async fn send_loop(
    endpoint: Arc<Endpoint>,
    first: SocketAddr,
    mut frames: mpsc::Receiver<(FrameHeader, Vec<u8>, mpsc::Sender<Event>)>,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    metrics: Option<Arc<Metrics>>,
) {
    let hop = first.to_string();
    let mut link: Option<LinkSender> = None;
    loop {
        let (header, payload, reply) = tokio::select! {
            _ = cancel.cancelled() => return,
            f = frames.recv() => match f { Some(f) => f, None => return },
        };
        let mut delivered = false;
        let mut last_error = String::new();
        for attempt in 0..2u64 {
            if link.is_none() {
                match endpoint.connect(first).await {
                    Ok(l) => link = Some(l.split().0),
                    Err(e) => {
                        last_error = e.to_string();
                        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                        continue;
                    }
                }
            }
            let started = std::time::Instant::now();
            match link
                .as_mut()
                .expect("connected")
                .send(&header, &payload)
                .await
            {
                Ok(()) => {
                    delivered = true;
                    inner.sent.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = &metrics {
                        m.hop_sent(&hop, payload.len(), started.elapsed().as_secs_f64());
                    }
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    link = None;
                }
            }
        }
        if !delivered && header.kind != FrameKind::Close {
            warn!(%first, error = %last_error, "first stage unreachable");
            let _ = reply.try_send(Event::Failed(format!(
                "first stage {first} unreachable: {last_error}"
            )));
        }
    }
}

/// Accepts the last stage's link(s) and routes frames to their sessions.
async fn receive_loop(endpoint: Arc<Endpoint>, inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = endpoint.accept() => i,
        };
        let Some(result) = incoming else { return };
        let mut link = match result {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "a stage failed to connect back");
                continue;
            }
        };
        let (inner, cancel) = (inner.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut values = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = cancel.cancelled() => return,
                    f = link.recv() => f,
                };
                let (header, payload) = match frame {
                    Ok(Some(f)) => (f.header, f.payload),
                    Ok(None) => return,
                    Err(e) if e.is_recoverable() => {
                        warn!(error = %e, "rejected a frame from the last stage");
                        continue;
                    }
                    Err(e) => {
                        debug!(error = %e, "link from the last stage ended");
                        return;
                    }
                };
                inner.received.fetch_add(1, Ordering::Relaxed);
                let event = match header.kind {
                    FrameKind::Open => Event::Opened,
                    FrameKind::Prefill | FrameKind::Decode | FrameKind::Activations => {
                        if protocol::f32_values(payload, &mut values).is_none()
                            || values.len() % inner.n_embd != 0
                        {
                            Event::Failed("malformed hidden state from the last stage".into())
                        } else {
                            Event::Hidden(std::mem::take(&mut values))
                        }
                    }
                    FrameKind::Error(code) => {
                        Event::Failed(format!("{code:?}: {}", String::from_utf8_lossy(payload)))
                    }
                    _ => continue,
                };
                let target = inner
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .get(&header.session)
                    .cloned();
                match target {
                    Some(tx) => {
                        let _ = tx.send(event).await;
                    }
                    None => debug!(session = header.session, "frame for a finished session"),
                }
            }
        });
    }
}
