//! The head of a pipeline: embeds tokens, sends them around the ring, turns the returning
//! hidden state into logits and the next token.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Embedding, Shard, ShardOptions, ShardSpec};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};
use transport::quic::{Endpoint, EndpointConfig, FrameHeader, FrameKind};

use super::failover::Plans;
use super::protocol::{self, WireDtype};
use crate::metrics::Metrics;
use first_stages::{FirstStages, Stopping};
use logits::Logits;

mod first_stages;
mod logits;

/// Where the head sits and how long it waits.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    /// GGUF model file (the head loads only the embedding and the output head).
    pub model: PathBuf,
    /// Threads for the embedding and output head.
    pub threads: usize,
    /// Address the last stage connects back to.
    pub listen: SocketAddr,
    /// The first stage, for a static pipeline; in a cluster each request names its first
    /// stage (see [`Head::via`]).
    pub first: Option<SocketAddr>,
    /// The address the last stage should answer this head at, sent in every `Open`: a
    /// cluster's last stage answers many heads by it, and a static pipeline's last stage,
    /// whose `--next` is this address, knows from it that its next hop is the head (and sends
    /// only a prefill chunk's last row). `None` sends no address. Port 0 is the bound port.
    pub reply_addr: Option<SocketAddr>,
    /// How long to wait for any reply before failing a request.
    pub reply_timeout: Duration,
    /// Where to record the hop to the first stage, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// What this head sends embeddings as (it reads any hidden-state dtype back).
    pub wire: WireDtype,
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
    /// A node of the request's plan left the cluster.
    #[error("plan {0} lost a stage")]
    PlanBroken(u64),
}

impl PipelineError {
    /// Whether replaying the request on another plan may succeed: the pipeline failed, not
    /// the request.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            PipelineError::Timeout(_)
                | PipelineError::Unreachable(_)
                | PipelineError::PlanBroken(_)
        )
    }
}

/// One request's session on one plan.
struct Session {
    first: SocketAddr,
    id: u64,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    /// The plans to watch, and the epoch this session runs on.
    watch: Option<(Plans, u64)>,
}

/// Prefill chunks a request keeps in flight: enough to keep a few stages busy at once, few
/// enough that a long prompt does not fill a first stage's queue, which other requests share.
const PREFILL_IN_FLIGHT: usize = 4;

/// How long a broken request waits for a healthy plan before it fails.
const RECOVERY_WAIT: Duration = Duration::from_secs(20);
/// Replays one request may need before it gives up.
const MAX_RECOVERIES: usize = 3;

/// A frame for the first stage at an address, and where its session's events go.
type Outgoing = (SocketAddr, FrameHeader, Vec<u8>, mpsc::Sender<Event>);

enum Event {
    Opened,
    Hidden(Vec<f32>),
    Failed(String),
}

struct Inner {
    shard: Arc<Mutex<Shard>>,
    embedding: Embedding,
    logits: Logits,
    n_embd: usize,
    wire: WireDtype,
    to_first: FirstStages,
    first: Option<SocketAddr>,
    reply_addr: Option<SocketAddr>,
    sessions: Mutex<HashMap<u64, mpsc::Sender<Event>>>,
    next_session: AtomicU64,
    received: AtomicU64,
    generated: AtomicU64,
    recoveries: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// Round trips of recent decode steps through the stages, milliseconds.
    recent_ms: Mutex<VecDeque<f32>>,
    timeout: Duration,
}

/// How many recent decode round trips [`Head::recent_token_ms`] takes the median of.
const RECENT: usize = 64;

/// A running head. Cheap to clone; requests may run concurrently.
#[derive(Clone)]
pub struct Head {
    inner: Arc<Inner>,
    /// First stage of this handle's requests (overrides the configured one).
    route: Option<SocketAddr>,
    /// The cluster's plans, when requests should follow them (and survive broken ones).
    plans: Option<Plans>,
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
        let embedding = shard
            .embedding()
            .context("the head's shard has no embedding")?;
        let endpoint = Arc::new(
            Endpoint::bind(cfg.listen, endpoint_config).context("binding the head endpoint")?,
        );
        // A reply address with port 0 means "the port this head bound".
        let reply_addr = match cfg.reply_addr {
            Some(mut a) if a.port() == 0 => {
                a.set_port(endpoint.local_addr()?.port());
                Some(a)
            }
            other => other,
        };
        let cancel = CancellationToken::new();
        let shard = Arc::new(Mutex::new(shard));
        let inner = Arc::new(Inner {
            logits: Logits::start(shard.clone())?,
            shard,
            embedding,
            n_embd,
            wire: cfg.wire,
            to_first: FirstStages::new(endpoint.clone(), cfg.metrics.clone(), cancel.clone()),
            first: cfg.first,
            reply_addr,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(random_session_base()),
            received: AtomicU64::new(0),
            generated: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            metrics: cfg.metrics.clone(),
            recent_ms: Mutex::new(VecDeque::with_capacity(RECENT)),
            timeout: cfg.reply_timeout,
        });
        tokio::spawn(receive_loop(
            endpoint.clone(),
            inner.clone(),
            cancel.clone(),
        ));
        Ok(Head {
            inner,
            route: None,
            plans: None,
            endpoint,
            cancel,
        })
    }

    /// A handle whose requests enter the pipeline at `first` (requests already running keep
    /// their own route).
    pub fn via(&self, first: SocketAddr) -> Head {
        Head {
            route: Some(first),
            ..self.clone()
        }
    }

    /// Tokens generated since start.
    pub fn generated(&self) -> u64 {
        self.inner.generated.load(Ordering::Relaxed)
    }

    /// Median round trip of recent decode steps through the stages, in milliseconds.
    pub fn recent_token_ms(&self) -> Option<f64> {
        let recent = self.inner.recent_ms.lock().expect("recent lock");
        let mut v: Vec<f32> = recent.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        Some(f64::from(v[v.len() / 2]))
    }

    /// The address stages answer this head at, when it was given one.
    pub fn reply_addr(&self) -> Option<SocketAddr> {
        self.inner.reply_addr
    }

    /// Requests running through this head now.
    pub fn in_flight(&self) -> usize {
        self.inner.sessions.lock().expect("sessions lock").len()
    }

    /// The address the last stage must send to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Frames sent to the first stage and received from the last, since start.
    pub fn message_counts(&self) -> (u64, u64) {
        (
            self.inner.to_first.sent(),
            self.inner.received.load(Ordering::Relaxed),
        )
    }

    /// Runs `prompt` through the pipeline and generates up to `max_tokens` tokens, picking
    /// each with `pick` (given the logits) and reporting it to `on_token`, which returns
    /// `false` to stop early. Returns the generated ids.
    ///
    /// With [`Head::with_plans`], a request whose plan loses a stage is replayed on the next
    /// healthy plan and continues where it was (see [`super::failover`]).
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
        let mut tokens = Vec::with_capacity(max_tokens);
        let mut plans = self.plans.clone();
        let mut failed: Option<u64> = None;
        let mut recoveries = 0;
        // Set when a plan broke; the next token reports how long the recovery took.
        let broke_at = Mutex::new(None::<Instant>);
        let mut on_token = |t: u32| {
            if let Some(at) = broke_at.lock().expect("broke_at lock").take() {
                info!(
                    ms = at.elapsed().as_millis() as u64,
                    "request recovered: next token after the plan broke"
                );
                if let Some(m) = &self.inner.metrics {
                    m.recovered(at.elapsed().as_secs_f64());
                }
            }
            on_token(t)
        };
        loop {
            let (epoch, first) = match plans.as_mut() {
                Some(p) => p.healthy(failed, RECOVERY_WAIT).await?,
                None => match self.route.or(self.inner.first) {
                    Some(first) => (0, first),
                    None => {
                        return Err(PipelineError::Unreachable("no pipeline to send to".into()))
                    }
                },
            };
            let context: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
            let result = self
                .attempt(
                    first,
                    plans.clone().map(|p| (p, epoch)),
                    &context,
                    max_tokens,
                    &mut tokens,
                    &mut pick,
                    &mut on_token,
                )
                .await;
            match result {
                Ok(()) => return Ok(tokens),
                Err(e) if plans.is_some() && e.is_recoverable() && recoveries < MAX_RECOVERIES => {
                    warn!(
                        epoch,
                        generated = tokens.len(),
                        error = %e,
                        "the pipeline broke mid-request; replaying on the next plan"
                    );
                    recoveries += 1;
                    failed = Some(epoch);
                    self.inner.recoveries.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = &self.inner.metrics {
                        m.reassigned();
                    }
                    *broke_at.lock().expect("broke_at lock") = Some(Instant::now());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A handle whose requests follow the cluster's plans and survive a broken one.
    pub fn with_plans(&self, plans: Plans) -> Head {
        Head {
            plans: Some(plans),
            ..self.clone()
        }
    }

    /// Requests replayed on a new plan after theirs broke, since start.
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Relaxed)
    }

    /// One try on one plan: runs `context` and decodes until `tokens` holds `max_tokens`.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        first: SocketAddr,
        watch: Option<(Plans, u64)>,
        context: &[u32],
        max_tokens: usize,
        tokens: &mut Vec<u32>,
        pick: &mut impl FnMut(&[f32]) -> u32,
        on_token: &mut impl FnMut(u32) -> bool,
    ) -> Result<(), PipelineError> {
        let inner = &self.inner;
        let session = inner.next_session.fetch_add(1, Ordering::Relaxed);
        // Each frame in flight (the `Open` and the prefill chunks) comes back as one event
        // (its acknowledgement, hidden state or an error), so the link task never waits on
        // this session's queue.
        let (tx, rx) = mpsc::channel(PREFILL_IN_FLIGHT + 1);
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(session, tx.clone());
        let mut s = Session {
            first,
            id: session,
            tx,
            rx,
            watch,
        };
        let result = self
            .run(&mut s, context, max_tokens, tokens, pick, on_token)
            .await;
        // Free the session on every stage whatever happened.
        let close = FrameHeader::empty(FrameKind::Close, session, 0);
        let _ = inner
            .to_first
            .send((first, close, Vec::new(), s.tx.clone()));
        inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&session);
        result
    }

    async fn run(
        &self,
        s: &mut Session,
        context: &[u32],
        max_tokens: usize,
        tokens: &mut Vec<u32>,
        pick: &mut impl FnMut(&[f32]) -> u32,
        on_token: &mut impl FnMut(u32) -> bool,
    ) -> Result<(), PipelineError> {
        let inner = &self.inner;
        let remaining = max_tokens - tokens.len();
        let positions = context.len() + remaining;
        let reply = inner
            .reply_addr
            .map(|a| a.to_string().into_bytes())
            .unwrap_or_default();
        // The prompt follows the `Open` without waiting for its acknowledgement: every stage
        // takes a session's frames in order, so the chunks find the session open, and a
        // stage that refuses the `Open` answers it before any chunk's error. A request
        // saves a round trip of the ring before its first token.
        self.send(s, protocol::open(s.id, positions, reply.len()), reply)?;
        let mut opened = false;
        // Prefill in chunks, several in flight: while one chunk runs on the second stage the
        // next runs on the first, so a long prompt keeps every stage busy instead of one at
        // a time. Only the last chunk's last row matters for the next token.
        let chunks: Vec<&[u32]> = context.chunks(protocol::PREFILL_CHUNK).collect();
        let mut hidden = Vec::new();
        let mut sent = 0;
        for answered in 0..chunks.len() {
            while sent < chunks.len() && sent - answered < PREFILL_IN_FLIGHT {
                let bytes = self.embed(chunks[sent])?;
                let header = protocol::hidden(
                    FrameKind::Prefill,
                    s.id,
                    sent as u64,
                    sent * protocol::PREFILL_CHUNK,
                    chunks[sent].len(),
                    inner.n_embd,
                    inner.wire,
                );
                self.send(s, header, bytes)?;
                sent += 1;
            }
            if !opened {
                match self.wait(s).await? {
                    Event::Opened => opened = true,
                    Event::Hidden(_) => {
                        return Err(PipelineError::Stage("hidden state before open".into()))
                    }
                    Event::Failed(e) => return Err(PipelineError::Stage(e)),
                }
            }
            hidden = self.expect_hidden(s).await?;
        }
        let mut pos = context.len();
        loop {
            // The hidden state is position `pos - 1`'s (the context is never empty); the
            // events carry that position.
            let at = pos.saturating_sub(1) as u32;
            trace!(target: super::stage::HOP, session = s.id, pos = at, rows = 1u32, "computing");
            let logits = self.logits(std::mem::take(&mut hidden)).await?;
            trace!(target: super::stage::HOP, session = s.id, pos = at, rows = 1u32, "computed");
            let next = pick(&logits);
            tokens.push(next);
            inner.generated.fetch_add(1, Ordering::Relaxed);
            if !on_token(next) || tokens.len() == max_tokens {
                return Ok(());
            }
            let bytes = self.embed(&[next])?;
            let header = protocol::hidden(
                FrameKind::Decode,
                s.id,
                pos as u64,
                pos,
                1,
                inner.n_embd,
                inner.wire,
            );
            let sent = Instant::now();
            self.send(s, header, bytes)?;
            hidden = self.expect_hidden(s).await?;
            let mut recent = inner.recent_ms.lock().expect("recent lock");
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(sent.elapsed().as_secs_f32() * 1e3);
            drop(recent);
            pos += 1;
        }
    }

    fn send(
        &self,
        s: &Session,
        header: FrameHeader,
        payload: Vec<u8>,
    ) -> Result<(), PipelineError> {
        self.inner
            .to_first
            .send((s.first, header, payload, s.tx.clone()))
            .map_err(|Stopping| PipelineError::Unreachable("head is shutting down".into()))
    }

    /// The session's next event; fails on timeout, or as soon as its plan is marked broken.
    async fn wait(&self, s: &mut Session) -> Result<Event, PipelineError> {
        let t = self.inner.timeout;
        let reply = tokio::time::timeout(t, s.rx.recv());
        let broken = async {
            match s.watch.as_mut() {
                Some((plans, epoch)) => {
                    let epoch = *epoch;
                    plans.broken(epoch).await;
                    epoch
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = reply => match r {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(PipelineError::Unreachable("session channel closed".into())),
                Err(_) => Err(PipelineError::Timeout(t)),
            },
            epoch = broken => Err(PipelineError::PlanBroken(epoch)),
        }
    }

    async fn expect_hidden(&self, s: &mut Session) -> Result<Vec<f32>, PipelineError> {
        match self.wait(s).await? {
            Event::Hidden(h) => Ok(h),
            Event::Failed(e) => Err(PipelineError::Stage(e)),
            Event::Opened => Err(PipelineError::Stage("unexpected open".into())),
        }
    }

    /// The wire bytes of `tokens`' embeddings. The table is read without the shard's lock,
    /// so embedding never waits for another request's output product.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<u8>, PipelineError> {
        let mut rows = Vec::new();
        self.inner
            .embedding
            .rows(tokens, &mut rows)
            .map_err(|e| PipelineError::Head(e.to_string()))?;
        let mut bytes = Vec::new();
        protocol::encode_hidden(&rows, self.inner.wire, &mut bytes);
        Ok(bytes)
    }

    async fn logits(&self, hidden: Vec<f32>) -> Result<Vec<f32>, PipelineError> {
        // With fewer requests in flight than a batch needs, computing the output product
        // here saves the hand-off to the logits thread and back on every token, which is
        // most of what the head adds to a token's time. A request that finds the shard busy
        // queues for the thread instead of waiting here.
        if self.in_flight() < logits::MIN_HEAD_BATCH {
            if let Ok(mut shard) = self.inner.shard.try_lock() {
                let mut logits = Vec::new();
                let mut product = || shard.logits(&hidden, &mut logits);
                // A node's head serves the HTTP API on a multi-thread runtime: the worker
                // hands its other tasks over before the product blocks it for a few ms. A
                // current-thread runtime (`shoal generate`) has nothing else to run.
                let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
                let result = match flavor {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(product)
                    }
                    _ => product(),
                };
                return match result {
                    Ok(()) => Ok(logits),
                    Err(e) => Err(PipelineError::Head(e.to_string())),
                };
            }
        }
        self.inner
            .logits
            .of(hidden)
            .await
            .map_err(PipelineError::Head)
    }

    /// Output-head batches of two or more sessions computed so far, and the sessions they
    /// held.
    pub fn batched_logits(&self) -> (u64, u64) {
        self.inner.logits.batched()
    }

    /// Stops the link tasks and closes the endpoint, telling the stages (bounded wait), so
    /// the last stage drops its link at once instead of sending into it until it times out.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
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
                let h = &header;
                trace!(target: super::stage::HOP, session = h.session, pos = h.pos, rows = h.rows, "received");
                let event = match header.kind {
                    FrameKind::Open => Event::Opened,
                    FrameKind::Prefill | FrameKind::Decode | FrameKind::Activations => {
                        let count = header.rows as usize * inner.n_embd;
                        if header.cols as usize != inner.n_embd
                            || protocol::decode_hidden(header.dtype, payload, count, &mut values)
                                .is_none()
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

/// A random start for session ids: heads in one process, or in containers that all run as
/// pid 1, must not hand the same id to a shared stage.
fn random_session_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Leave room below for the counter.
    h.finish() & !0xffff_ffff
}
