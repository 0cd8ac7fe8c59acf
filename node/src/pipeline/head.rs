//! The head of a pipeline: embeds tokens, sends them around the ring, turns the returning
//! hidden state into logits. Requests pull from it through a [`Generation`]; the head never
//! calls back into whoever uses it.
//!
//! - `attempt`: one request's session on one plan;
//! - [`generation`]: the pull API, and failover across plans;
//! - `first_stages`: the way out, one sender task per first stage;
//! - `receive`: the way back in, from the last stages;
//! - `logits`: the output product, batched across requests;
//! - `prefixes`: which kept caches the stages hold, for prefix reuse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sharding::gguf::GgufFile;
use sharding::model::{Embedding, Shard, ShardOptions, ShardSpec};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use transport::quic::{Endpoint, EndpointConfig, FrameHeader, LinkError};

use super::error::PipelineError;
use super::failover::Plans;
use super::protocol::{DecodeError, Failure, RowsHead, WireDtype};
use crate::metrics::Metrics;
use first_stages::FirstStages;
pub use generation::Generation;
use logits::Logits;
use receive::Sessions;

mod attempt;
mod first_stages;
pub mod generation;
mod logits;
mod passes;
mod prefixes;
mod receive;

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
    /// only a prompt chunk's last row). `None` sends no address. Port 0 is the bound port.
    pub reply_addr: Option<SocketAddr>,
    /// How long to wait for any reply before failing a request.
    pub reply_timeout: Duration,
    /// Where to record the hop to the first stage, if anywhere.
    pub metrics: Option<Arc<Metrics>>,
    /// What this head sends embeddings as (it reads any hidden-state dtype back).
    pub wire: WireDtype,
}

/// A frame for the first stage at an address, and where its session's events go.
type Outgoing = (SocketAddr, FrameHeader, Vec<u8>, mpsc::Sender<Event>);

/// What reaches a session from the links.
enum Event {
    /// Its open came back around the ring.
    Opened,
    /// Hidden-state rows came back.
    Rows(RowsHead, Vec<f32>),
    /// A stage failed it.
    Failed(Failure),
    /// The last stage sent something this head cannot read.
    BadReply(DecodeError),
    /// Its first stage cannot be reached.
    Unreachable(LinkError),
    /// The link its replies came on ended.
    LinkLost(String),
}

/// Prompt chunks a request keeps in flight: enough to keep a few stages busy at once, few
/// enough that a long prompt does not fill a first stage's queue, which other requests share.
const PREFILL_IN_FLIGHT: usize = 4;

struct Inner {
    shard: Arc<Mutex<Shard>>,
    embedding: Embedding,
    logits: Logits,
    n_embd: usize,
    wire: WireDtype,
    to_first: FirstStages,
    first: Option<SocketAddr>,
    reply_addr: Option<SocketAddr>,
    sessions: Arc<Sessions>,
    next_session: AtomicU64,
    received: Arc<AtomicU64>,
    generated: AtomicU64,
    recoveries: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// Recent passes through the stages and the head's output product, by rows.
    passes: Mutex<passes::Passes>,
    /// The caches the stages kept for this head's requests to resume.
    prefixes: Mutex<prefixes::Prefixes>,
    timeout: Duration,
}

impl Inner {
    fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    fn count_token(&self) {
        self.generated.fetch_add(1, Ordering::Relaxed);
    }

    fn count_recovery(&self) {
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.reassigned();
        }
    }

    /// A pass of `rows` rows through the stages took `took`.
    fn record_pass(&self, rows: usize, took: Duration) {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.record(rows, took.as_secs_f32() * 1e3);
    }
}

/// A running head. Cheap to clone; requests may run concurrently.
#[derive(Clone)]
pub struct Head {
    inner: Arc<Inner>,
    /// First stage of this handle's requests (overrides the configured one).
    route: Option<SocketAddr>,
    /// The cluster's plans, when requests should follow them (and survive broken ones).
    plans: Option<Plans>,
    /// Whether this handle's requests keep their caches on the stages and resume from
    /// kept ones (prefix reuse).
    prefix_cache: bool,
    endpoint: Arc<Endpoint>,
    cancel: CancellationToken,
    receiving: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Head {
    /// Loads the embedding and output head and starts the link tasks.
    pub async fn start(cfg: HeadConfig, endpoint_config: EndpointConfig) -> anyhow::Result<Head> {
        Head::start_under(cfg, endpoint_config, CancellationToken::new()).await
    }

    /// [`Head::start`] with the tasks stopping when `cancel` (a node's child token) is.
    pub async fn start_under(
        cfg: HeadConfig,
        endpoint_config: EndpointConfig,
        cancel: CancellationToken,
    ) -> anyhow::Result<Head> {
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
            sessions: Arc::new(Sessions::default()),
            next_session: AtomicU64::new(random_session_base()),
            received: Arc::new(AtomicU64::new(0)),
            generated: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            metrics: cfg.metrics.clone(),
            passes: Mutex::new(Default::default()),
            prefixes: Mutex::new(Default::default()),
            timeout: cfg.reply_timeout,
        });
        let receiving = tokio::spawn(receive::receive_loop(
            endpoint.clone(),
            inner.sessions.clone(),
            inner.received.clone(),
            cancel.clone(),
        ));
        Ok(Head {
            inner,
            route: None,
            plans: None,
            prefix_cache: true,
            endpoint,
            cancel,
            receiving: Arc::new(Mutex::new(Some(receiving))),
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

    /// A handle whose requests follow the cluster's plans and survive a broken one.
    pub fn with_plans(&self, plans: Plans) -> Head {
        Head {
            plans: Some(plans),
            ..self.clone()
        }
    }

    /// A handle whose requests use prefix reuse (the default) or not: with it, a finished
    /// request's cache stays on the stages, and a request whose prompt starts with the
    /// tokens of a kept one (a chat's earlier turns, a shared system prompt) prefills only
    /// the rest. The tokens are the same either way.
    pub fn with_prefix_cache(&self, enabled: bool) -> Head {
        Head {
            prefix_cache: enabled,
            ..self.clone()
        }
    }

    /// Starts a request on `prompt` (not empty) whose session may reach `reserve` positions
    /// (prompt plus the tokens it may generate). Nothing is sent until the first
    /// [`Generation::logits`].
    pub fn open(&self, prompt: &[u32], reserve: usize) -> Generation {
        Generation::new(self.clone(), prompt, reserve)
    }

    /// Runs `prompt` and generates up to `max_tokens` tokens, picking each with `pick` and
    /// showing it to `on_token`, which returns `false` to stop early. A convenience loop over
    /// [`Head::open`] for command lines, benches and tests. Returns the generated ids.
    pub async fn generate(
        &self,
        prompt: &[u32],
        max_tokens: usize,
        mut pick: impl FnMut(&[f32]) -> u32,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, PipelineError> {
        let mut tokens = Vec::with_capacity(max_tokens);
        if prompt.is_empty() || max_tokens == 0 {
            return Ok(tokens);
        }
        let mut generation = self.open(prompt, prompt.len() + max_tokens);
        loop {
            let next = pick(generation.logits().await?);
            tokens.push(next);
            if !on_token(next) || tokens.len() == max_tokens {
                return Ok(tokens);
            }
            generation.push(next);
        }
    }

    /// The first stage of this handle's requests in a static pipeline.
    fn first(&self) -> Option<SocketAddr> {
        self.route.or(self.inner.first)
    }

    /// Tokens generated since start.
    pub fn generated(&self) -> u64 {
        self.inner.generated.load(Ordering::Relaxed)
    }

    /// Median time of recent decode steps (through the stages, then the output product),
    /// in milliseconds.
    pub fn recent_token_ms(&self) -> Option<f64> {
        let passes = self.inner.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.single_ms()
    }

    /// What a pass of `1..=out.len()` rows costs now, in milliseconds, into
    /// `out[rows - 1]`: from sending its rows to having their logits, from recent passes of
    /// each size (sizes not seen lately are interpolated; `None` before any pass of several
    /// rows). Speculation reads it to choose how many drafts a pass carries.
    pub fn pass_costs(&self, out: &mut [Option<f64>]) {
        let passes = self.inner.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.costs(out);
    }

    /// The address stages answer this head at, when it was given one.
    pub fn reply_addr(&self) -> Option<SocketAddr> {
        self.inner.reply_addr
    }

    /// Requests running through this head now.
    pub fn in_flight(&self) -> usize {
        self.inner.sessions.len()
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

    /// Requests replayed on a new plan after theirs broke, since start.
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries.load(Ordering::Relaxed)
    }

    /// Output-head batches of two or more sessions computed so far, and the sessions they
    /// held.
    pub fn batched_logits(&self) -> (u64, u64) {
        self.inner.logits.batched()
    }

    /// The logits of the last row of `hidden`.
    async fn logits(&self, hidden: Vec<f32>) -> Result<Vec<f32>, PipelineError> {
        // With fewer requests in flight than a batch needs, computing the output product
        // here saves the hand-off to the logits thread and back on every token, which is
        // most of what the head adds to a token's time. A request that finds the shard busy
        // queues for the thread instead of waiting here.
        if self.in_flight() < logits::MIN_HEAD_BATCH {
            if let Ok(mut shard) = self.inner.shard.try_lock() {
                let mut logits = Vec::new();
                let product = || shard.logits(&hidden, &mut logits);
                let result = crate::blocking::run_blocking(product);
                return result.map(|()| logits).map_err(PipelineError::Head);
            }
        }
        self.inner.logits.of(hidden).await
    }

    /// The logits of every row of `hidden`, `vocab_size` per row: the verification of
    /// speculative drafts. Each row gets the bits [`Head::logits`] gives it alone.
    async fn logits_rows(&self, hidden: Vec<f32>) -> Result<Vec<f32>, PipelineError> {
        let product = || {
            let mut shard = self.inner.shard.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            shard.logits_each(&hidden, &mut out).map(|()| out)
        };
        crate::blocking::run_blocking(product).map_err(PipelineError::Head)
    }

    /// Stops the link tasks and closes the endpoint, telling the stages (bounded wait), so
    /// the last stage drops its link at once instead of sending into it until it times out.
    /// Waits for every task the head started.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.endpoint.close();
        let receiving = self
            .receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = receiving {
            let _ = task.await;
        }
        self.inner.to_first.stopped().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
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
