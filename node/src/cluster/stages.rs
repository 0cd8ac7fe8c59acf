//! The stages a node runs for the cluster's plans, one per plan epoch: loading them (weights
//! fetched first when the node lacks them), routing, stopping, and reporting what they did.
//! Every task it starts lives in one of its `JoinSet`s, so shutdown waits for all of them.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sharding::model::{ShardOptions, ShardSpec};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use transport::quic::EndpointConfig;

use super::machine::{StageOrder, StageReport};
use super::weights::Weights;
use crate::metrics::Metrics;
use crate::pipeline::{Route, Stage, StageConfig, StageEvent, WireDtype};

/// What every stage of this node is started with.
pub(crate) struct StageSettings {
    pub(crate) weights: Arc<Weights>,
    pub(crate) endpoint: EndpointConfig,
    pub(crate) bind_ip: IpAddr,
    pub(crate) advertise_ip: IpAddr,
    pub(crate) threads: usize,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_peer: usize,
    pub(crate) max_context: usize,
    pub(crate) session_timeout: Duration,
    pub(crate) wire: WireDtype,
    pub(crate) metrics: Arc<Metrics>,
}

/// A load that finished: its epoch, and the stage or why not.
pub(crate) type Loaded = (u64, anyhow::Result<Stage>);

/// The running stages, by plan epoch.
pub(crate) struct Stages {
    settings: StageSettings,
    running: BTreeMap<u64, Stage>,
    /// Per running or loading stage, the epoch its events are reported under (a stage
    /// moved to a newer plan reports under that plan's).
    tags: BTreeMap<u64, Arc<AtomicU64>>,
    /// Stages moved to a newer plan, to report as loaded.
    adopted: VecDeque<(u64, SocketAddr)>,
    loads: JoinSet<Loaded>,
    stopping: JoinSet<()>,
    /// Where stages report what the node should know; the driver reads the other end.
    events: mpsc::Sender<(u64, StageEvent)>,
    forward: JoinSet<()>,
}

impl Stages {
    /// No stages yet; `events` receives what they report, tagged with their epoch.
    pub(crate) fn new(settings: StageSettings, events: mpsc::Sender<(u64, StageEvent)>) -> Stages {
        Stages {
            settings,
            running: BTreeMap::new(),
            tags: BTreeMap::new(),
            adopted: VecDeque::new(),
            loads: JoinSet::new(),
            stopping: JoinSet::new(),
            events,
            forward: JoinSet::new(),
        }
    }

    /// Starts loading the stage `order` asks for.
    pub(crate) fn load(&mut self, order: StageOrder) {
        while self.forward.try_join_next().is_some() {}
        while self.stopping.try_join_next().is_some() {}
        let s = &self.settings;
        let (tx, mut rx) = mpsc::channel(8);
        let (epoch, up) = (order.epoch, self.events.clone());
        let tag = Arc::new(AtomicU64::new(epoch));
        self.tags.insert(epoch, tag.clone());
        self.forward.spawn(async move {
            while let Some(event) = rx.recv().await {
                if up.send((tag.load(Ordering::Relaxed), event)).await.is_err() {
                    return;
                }
            }
        });
        let cfg = StageConfig {
            model: s.weights.path().to_owned(),
            spec: ShardSpec {
                layers: order.layers[0] as usize..order.layers[1] as usize,
                embed: false,
                head: false,
            },
            options: ShardOptions {
                threads: s.threads,
                max_sessions: s.max_sessions,
                max_context: s.max_context,
            },
            listen: SocketAddr::new(s.bind_ip, 0),
            route: if order.last {
                Route::ReplyToHead
            } else {
                Route::Pending
            },
            session_timeout: s.session_timeout,
            metrics: Some(s.metrics.clone()),
            index: order.index as u32,
            wire: s.wire,
            max_sessions_per_peer: s.max_sessions_per_peer,
            previous_stage: order.previous.and_then(|p| p.parse().ok()),
            events: Some(tx),
        };
        let (weights, endpoint) = (s.weights.clone(), s.endpoint.clone());
        self.loads.spawn(async move {
            let what = format!("layers {}..{}", order.layers[0], order.layers[1]);
            let result = match weights.ensure(&cfg.spec, &what).await {
                Ok(()) => Stage::start(cfg, endpoint).await,
                Err(e) => Err(e),
            };
            (epoch, result)
        });
    }

    /// The next load that finished (pending forever when none is running). A stage that
    /// loaded is kept; the caller learns its address.
    pub(crate) async fn next_loaded(&mut self) -> (u64, anyhow::Result<SocketAddr>) {
        if let Some((epoch, addr)) = self.adopted.pop_front() {
            return (epoch, Ok(addr));
        }
        loop {
            match self.loads.join_next().await {
                Some(Ok((epoch, Ok(stage)))) => {
                    let addr =
                        SocketAddr::new(self.settings.advertise_ip, stage.local_addr().port());
                    if let Some(old) = self.running.insert(epoch, stage) {
                        self.stopping.spawn(old.shutdown());
                    }
                    return (epoch, Ok(addr));
                }
                Some(Ok((epoch, Err(e)))) => return (epoch, Err(e)),
                // A load task that panicked has no epoch to report; the plan stays pending
                // until the next one.
                Some(Err(e)) => tracing::error!(error = %e, "a stage load task failed"),
                None => std::future::pending().await,
            }
        }
    }

    /// Moves the running stage of plan `from` to `order`'s plan, which it serves as it is;
    /// loads `order` when that stage is gone. [`Stages::next_loaded`] reports it.
    pub(crate) fn adopt(&mut self, from: u64, order: StageOrder) {
        let epoch = order.epoch;
        let Some(stage) = self.running.remove(&from) else {
            return self.load(order);
        };
        if let Some(tag) = self.tags.remove(&from) {
            tag.store(epoch, Ordering::Relaxed);
            self.tags.insert(epoch, tag);
        }
        let addr = SocketAddr::new(self.settings.advertise_ip, stage.local_addr().port());
        if let Some(old) = self.running.insert(epoch, stage) {
            self.stopping.spawn(old.shutdown());
        }
        self.adopted.push_back((epoch, addr));
    }

    /// Points the stage of `epoch` at `next`.
    pub(crate) fn route(&self, epoch: u64, next: SocketAddr) {
        if let Some(stage) = self.running.get(&epoch) {
            stage.set_route(Route::To(next));
        }
    }

    /// Stops the stage of `epoch` (in the background; [`Stages::shutdown`] waits for it).
    pub(crate) fn stop(&mut self, epoch: u64) {
        self.tags.remove(&epoch);
        if let Some(stage) = self.running.remove(&epoch) {
            self.stopping.spawn(stage.shutdown());
        }
    }

    /// What each running stage did, for the machine's tick.
    pub(crate) fn report(&self, cpu_quota: Option<f64>) -> Vec<StageReport> {
        self.running
            .iter()
            .map(|(&epoch, stage)| {
                let (steps, median) = stage.decode_steps(cpu_quota);
                StageReport {
                    epoch,
                    open_sessions: stage.open_sessions(),
                    steps,
                    step_us: median.map(|d| d.as_micros() as u64),
                }
            })
            .collect()
    }

    /// Bytes of KV cache the running stages hold.
    pub(crate) fn kv_bytes(&self) -> usize {
        self.running.values().map(Stage::kv_bytes).sum()
    }

    /// Round-trip times (microseconds) of the links the running stages send on; the
    /// newest stage's figure wins for a destination several share.
    pub(crate) fn link_rtts(&self) -> Vec<(SocketAddr, u64)> {
        let mut rtts = BTreeMap::new();
        for stage in self.running.values() {
            for (to, rtt) in stage.link_rtts() {
                rtts.insert(to, rtt.as_micros() as u64);
            }
        }
        rtts.into_iter().collect()
    }

    /// Stops every stage and waits for every task this set started: loads in flight are
    /// abandoned, stages stopped.
    pub(crate) async fn shutdown(mut self) {
        self.loads.shutdown().await;
        for (_, stage) in std::mem::take(&mut self.running) {
            self.stopping.spawn(stage.shutdown());
        }
        while self.stopping.join_next().await.is_some() {}
        self.forward.shutdown().await;
    }
}
