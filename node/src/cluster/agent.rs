//! A node's agent: one task that reacts to membership changes, plan messages and finished
//! shard loads. It loads the stages the coordinator assigns, reports readiness in the
//! node's advert, activates a plan once every stage of it is ready, retires stages of old
//! plans once their last request is done, and — on the coordinator — replans after joins
//! and leaves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scheduler::straggler::{Config as StragglerConfig, Monitor};
use scheduler::{ModelProfile, Plan};
use sharding::model::{ShardOptions, ShardSpec};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use transport::discovery::{Advert, AdvertState, Discovery, Inbox, MembershipEvent, PeerId};
use transport::quic::EndpointConfig;

use super::control::{Assignment, Control};
use super::coordinator;
use super::node::Shared;
use super::state::Active;
use super::weights::Weights;
use crate::cpu_quota;
use crate::events::{moved_layers, short_id};
use crate::pipeline::{Route, Stage, StageConfig};

/// What the agent needs besides the shared state.
pub(crate) struct AgentConfig {
    pub(crate) weights: Arc<Weights>,
    pub(crate) profile: ModelProfile,
    pub(crate) head_reserve: u64,
    pub(crate) bind_ip: IpAddr,
    pub(crate) advertise_ip: IpAddr,
    pub(crate) threads: usize,
    pub(crate) max_sessions: usize,
    pub(crate) max_sessions_per_peer: usize,
    pub(crate) max_context: usize,
    pub(crate) session_timeout: Duration,
    pub(crate) replan_delay: Duration,
    pub(crate) placement: coordinator::Placement,
    pub(crate) endpoint: EndpointConfig,
    pub(crate) wire: crate::pipeline::WireDtype,
}

/// A stage this node runs for one plan epoch.
struct Running {
    epoch: u64,
    stage: Stage,
    /// Consecutive ticks it has been superseded and had no session open.
    idle_ticks: u32,
}

/// Ticks a superseded stage must be idle before it is stopped.
const RETIRE_AFTER_IDLE_TICKS: u32 = 2;

pub(crate) struct Agent {
    shared: Arc<Shared>,
    cfg: AgentConfig,
    inbox: Inbox,
    loaded_tx: mpsc::Sender<(u64, anyhow::Result<Stage>)>,
    loaded_rx: mpsc::Receiver<(u64, anyhow::Result<Stage>)>,
    stages: Vec<Running>,
    /// Newest epoch seen in any plan message or advert.
    highest_epoch: u64,
    /// When the coordinator should (re)plan next.
    replan_at: Option<tokio::time::Instant>,
    /// The last reason for being unplaceable that was broadcast.
    told_unplaceable: Option<String>,
    /// Plans this node made as coordinator, by epoch (the straggler policy's predictions).
    made: HashMap<u64, Plan>,
    /// The straggler policy, while this node coordinates an active plan it made.
    monitor: Option<Monitor>,
    /// Per member, the decode step count last fed to the monitor.
    seen_steps: HashMap<String, u64>,
    /// Decode step count of this node's stage last published.
    published_steps: u64,
    /// The process's CPU quota, in cores, as last read (each tick).
    cpu_quota: Option<f64>,
    /// Zero of the monitor's clock.
    started: Instant,
    /// When each recent plan was received, to report how long it took to become active.
    assigned_at: HashMap<u64, Instant>,
    /// This node's newest advert, for the one task that publishes adverts in order (a task
    /// per publish could deliver an older advert after a newer one, and peers would keep
    /// the older: a stage reported loading after it had reported ready).
    advert_tx: watch::Sender<Option<Advert>>,
    advert_rx: Option<watch::Receiver<Option<Advert>>>,
}

impl Agent {
    pub(crate) fn new(shared: Arc<Shared>, cfg: AgentConfig, inbox: Inbox) -> Agent {
        let (loaded_tx, loaded_rx) = mpsc::channel(8);
        let (advert_tx, advert_rx) = watch::channel(None);
        Agent {
            shared,
            cfg,
            inbox,
            loaded_tx,
            loaded_rx,
            stages: Vec::new(),
            highest_epoch: 0,
            replan_at: None,
            told_unplaceable: None,
            made: HashMap::new(),
            monitor: None,
            seen_steps: HashMap::new(),
            published_steps: 0,
            cpu_quota: cpu_quota::cores_allowed(),
            started: Instant::now(),
            assigned_at: HashMap::new(),
            advert_tx,
            advert_rx: Some(advert_rx),
        }
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let mut events = self.shared.discovery.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        if let Some(adverts) = self.advert_rx.take() {
            tokio::spawn(publish_adverts(self.shared.discovery.clone(), adverts));
        }
        // A node alone still plans for itself.
        self.arm_replan();
        loop {
            let replan_at = self.replan_at;
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = events.recv() => match event {
                    Ok(event) => self.on_membership(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.arm_replan();
                        self.check_activation();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                message = self.inbox.recv() => match message {
                    Some(m) => self.on_message(m.from, &m.payload),
                    None => break,
                },
                Some((epoch, result)) = self.loaded_rx.recv() => self.on_loaded(epoch, result),
                _ = sleep_until(replan_at) => {
                    self.replan_at = None;
                    self.replan();
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        for running in self.stages.drain(..) {
            running.stage.shutdown().await;
        }
    }

    fn event(&self, what: String) {
        self.shared.metrics.events().record(what);
    }

    /// Every advert, this node's included.
    fn adverts(&self) -> Vec<Advert> {
        let mut all: Vec<Advert> = self.shared.discovery.members().as_ref().clone();
        all.push(self.shared.state.lock().expect("state lock").advert.clone());
        all
    }

    fn is_coordinator(&self, adverts: &[Advert]) -> bool {
        let s = &self.shared.summary;
        coordinator::coordinator(adverts, &s.sha256, env!("CARGO_PKG_VERSION"))
            == Some(self.shared.local.to_string())
    }

    fn arm_replan(&mut self) {
        let at = tokio::time::Instant::now() + self.cfg.replan_delay;
        // Debounce: a burst of joins moves the deadline, but never past twice the delay.
        self.replan_at = Some(match self.replan_at {
            Some(prev) => at.min(prev + self.cfg.replan_delay),
            None => at,
        });
    }

    fn on_membership(&mut self, event: MembershipEvent) {
        debug!(?event, "membership");
        match &event {
            MembershipEvent::Joined(a) => {
                self.event(format!(
                    "{} joined ({} threads, {} MiB{})",
                    short_id(&a.peer_id.to_string()),
                    a.threads,
                    a.memory_budget_bytes >> 20,
                    if a.seed_addr.is_some() {
                        ", holds the model file"
                    } else {
                        ""
                    }
                ));
                self.arm_replan()
            }
            MembershipEvent::Left(peer) => {
                let id = peer.to_string();
                let ran = self
                    .shared
                    .state
                    .lock()
                    .expect("state lock")
                    .active
                    .as_ref()
                    .and_then(|a| {
                        a.assignment
                            .stages
                            .iter()
                            .find(|s| s.peer == id)
                            .map(|s| (a.assignment.epoch, s.layers))
                    });
                self.event(match ran {
                    Some((epoch, l)) => format!(
                        "{} left; it ran layers {}..{} of plan {epoch}",
                        short_id(&id),
                        l[0],
                        l[1]
                    ),
                    None => format!("{} left", short_id(&id)),
                });
                self.mark_broken(*peer);
                self.arm_replan();
            }
            MembershipEvent::Updated(advert) => {
                self.highest_epoch = self.highest_epoch.max(advert.state.epoch);
                // A member lagging behind the current plan missed a message: resend. One
                // ahead of it follows a plan made while this node was away (paused, cut
                // off): the coordinator must plan again, over everyone.
                let current = self.current_epoch();
                if advert.state.epoch != current && self.is_coordinator(&self.adverts()) {
                    self.arm_replan();
                }
            }
        }
        self.check_activation();
    }

    /// A node of the active plan left: requests on it (and older plans) must move on.
    fn mark_broken(&self, peer: PeerId) {
        let peer = peer.to_string();
        let state = self.shared.state.lock().expect("state lock");
        if let Some(active) = &state.active {
            if active.assignment.stage_of(&peer).is_some() {
                let epoch = active.assignment.epoch;
                warn!(epoch, %peer, "a node of the active plan left; its requests move to the next plan");
                self.shared
                    .plans
                    .send_modify(|r| r.broken = r.broken.max(epoch));
            }
        }
    }

    fn current_epoch(&self) -> u64 {
        let state = self.shared.state.lock().expect("state lock");
        state
            .pending
            .as_ref()
            .map(|a| a.epoch)
            .or(state.active.as_ref().map(|a| a.assignment.epoch))
            .unwrap_or(0)
    }

    /// The coordinator's job: plan, and tell everyone if anything changed.
    fn replan(&mut self) {
        let adverts = self.adverts();
        if !self.is_coordinator(&adverts) {
            return;
        }
        let sha = self.shared.summary.sha256.clone();
        let graph = coordinator::device_graph(
            &adverts,
            &sha,
            env!("CARGO_PKG_VERSION"),
            self.cfg.head_reserve,
        );
        let epoch = adverts
            .iter()
            .map(|a| a.state.epoch)
            .chain([self.highest_epoch, self.current_epoch()])
            .max()
            .unwrap_or(0)
            + 1;
        let local = self.shared.local.to_string();
        let monitor = self.monitor.as_ref();
        let adjust = |request: &mut scheduler::PlanRequest| {
            if let Some(m) = monitor {
                m.apply(request);
            }
        };
        let planned = coordinator::assign(
            &graph,
            &self.cfg.profile,
            &local,
            epoch,
            self.cfg.placement,
            adjust,
        );
        let assignment = match planned {
            Ok((a, plan)) => {
                self.made.retain(|&e, _| e + 4 > epoch);
                self.made.insert(epoch, plan);
                a
            }
            Err(e) => {
                let reason = e.to_string();
                warn!(%reason, devices = graph.len(), "the model cannot be placed");
                self.shared.state.lock().expect("state lock").unplaceable = Some(reason.clone());
                self.shared.plans.send_modify(|r| r.unplaceable = true);
                if self.told_unplaceable.as_ref() != Some(&reason) {
                    self.told_unplaceable = Some(reason.clone());
                    self.broadcast(Control::Unplaceable {
                        model_sha256: sha,
                        reason,
                    });
                }
                return;
            }
        };
        self.told_unplaceable = None;
        let current = {
            let state = self.shared.state.lock().expect("state lock");
            state
                .pending
                .clone()
                .or(state.active.as_ref().map(|a| a.assignment.clone()))
        };
        // The same layout as this node's plan changes nothing, unless members already follow
        // a newer plan made without this node (it was paused or cut off and its plan's
        // stages elsewhere are gone): then the layout goes out again under the new epoch.
        let ahead = |c: &Assignment| adverts.iter().any(|a| a.state.epoch > c.epoch);
        if let Some(current) = current.filter(|c| c.same_layout(&assignment) && !ahead(c)) {
            // Nothing to change; make sure nobody missed the current plan.
            for advert in adverts.iter().filter(|a| a.state.epoch < current.epoch) {
                if advert.peer_id != self.shared.local {
                    self.send(advert.peer_id, Control::Assign(current.clone()));
                }
            }
            return;
        }
        info!(
            epoch,
            stages = ?assignment.stages.iter().map(|s| (&s.peer[s.peer.len().saturating_sub(6)..], s.layers)).collect::<Vec<_>>(),
            predicted_ms_per_token = assignment.predicted_ms_per_token,
            "new plan"
        );
        self.broadcast(Control::Assign(assignment.clone()));
        self.on_assign(assignment);
    }

    fn broadcast(&self, message: Control) {
        let discovery = self.shared.discovery.clone();
        let bytes = message.encode();
        tokio::spawn(async move {
            let report = discovery.broadcast(bytes).await;
            for (peer, e) in report.failed {
                warn!(%peer, error = %e, "a peer did not take the plan message");
            }
        });
    }

    fn send(&self, peer: PeerId, message: Control) {
        let discovery = self.shared.discovery.clone();
        let bytes = message.encode();
        tokio::spawn(async move {
            if let Err(e) = discovery.send_to(peer, bytes).await {
                warn!(%peer, error = %e, "a peer did not take the plan message");
            }
        });
    }

    fn on_message(&mut self, from: PeerId, payload: &[u8]) {
        let message = match Control::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(%from, error = %e, "ignored a malformed control message");
                return;
            }
        };
        match message {
            Control::Assign(a) if a.model_sha256 != self.shared.summary.sha256 => {
                warn!(%from, "ignored a plan for another model");
            }
            Control::Assign(a) if a.coordinator != from.to_string() => {
                warn!(%from, "ignored a plan relayed by a node that did not make it");
            }
            Control::Assign(a) if a.epoch <= self.current_epoch() => {
                debug!(%from, epoch = a.epoch, "ignored a stale plan");
            }
            Control::Assign(a) => self.on_assign(a),
            Control::Unplaceable {
                model_sha256,
                reason,
            } => {
                if model_sha256 == self.shared.summary.sha256 {
                    self.shared.state.lock().expect("state lock").unplaceable = Some(reason);
                    self.shared.plans.send_modify(|r| r.unplaceable = true);
                }
            }
        }
    }

    /// A new plan: load this node's part and say so.
    fn on_assign(&mut self, a: Assignment) {
        self.highest_epoch = self.highest_epoch.max(a.epoch);
        self.assigned_at
            .retain(|&e, _| e >= a.epoch.saturating_sub(4));
        self.assigned_at.insert(a.epoch, Instant::now());
        let local = self.shared.local.to_string();
        let mine = a.stage_of(&local);
        {
            let mut state = self.shared.state.lock().expect("state lock");
            state.pending = Some(a.clone());
            state.unplaceable = None;
            self.shared.plans.send_modify(|r| r.unplaceable = false);
            state.load_error = None;
        }
        // Stages loaded for a plan that never became active are of no use now.
        let active = self.active_epoch();
        self.retire_where(|r| r.epoch > active && r.epoch < a.epoch);
        match mine {
            Some(i) => {
                let s = &a.stages[i];
                let last = i + 1 == a.stages.len();
                let cfg = StageConfig {
                    model: self.cfg.weights.path().to_owned(),
                    spec: ShardSpec {
                        layers: s.layers[0] as usize..s.layers[1] as usize,
                        embed: false,
                        head: false,
                    },
                    options: ShardOptions {
                        threads: self.cfg.threads,
                        max_sessions: self.cfg.max_sessions,
                        max_context: self.cfg.max_context,
                    },
                    listen: SocketAddr::new(self.cfg.bind_ip, 0),
                    route: if last {
                        Route::ReplyToHead
                    } else {
                        Route::Pending
                    },
                    session_timeout: self.cfg.session_timeout,
                    metrics: Some(self.shared.metrics.clone()),
                    wire: self.cfg.wire,
                    max_sessions_per_peer: self.cfg.max_sessions_per_peer,
                    previous_stage: i.checked_sub(1).and_then(|p| a.stages[p].peer.parse().ok()),
                };
                info!(epoch = a.epoch, layers = ?cfg.spec.layers, "loading my stage");
                self.publish(a.epoch, false, None);
                let (endpoint, done, epoch) =
                    (self.cfg.endpoint.clone(), self.loaded_tx.clone(), a.epoch);
                let weights = self.cfg.weights.clone();
                tokio::spawn(async move {
                    let what = format!("layers {}..{}", cfg.spec.layers.start, cfg.spec.layers.end);
                    let result = match weights.ensure(&cfg.spec, &what).await {
                        Ok(()) => Stage::start(cfg, endpoint).await,
                        Err(e) => Err(e),
                    };
                    let _ = done.send((epoch, result)).await;
                });
            }
            None => self.publish(a.epoch, true, None),
        }
        self.check_activation();
    }

    fn on_loaded(&mut self, epoch: u64, result: anyhow::Result<Stage>) {
        let pending = self
            .shared
            .state
            .lock()
            .expect("state lock")
            .pending
            .as_ref()
            .map(|a| a.epoch);
        match result {
            Ok(stage) if pending == Some(epoch) => {
                let addr = SocketAddr::new(self.cfg.advertise_ip, stage.local_addr().port());
                info!(epoch, %addr, "my stage is ready");
                self.stages.push(Running {
                    epoch,
                    stage,
                    idle_ticks: 0,
                });
                self.publish(epoch, true, Some(addr));
                self.check_activation();
            }
            Ok(stage) => {
                debug!(epoch, "a stage loaded for a superseded plan; stopping it");
                tokio::spawn(stage.shutdown());
            }
            Err(e) => {
                error!(epoch, error = %format!("{e:#}"), "cannot load my stage");
                self.event(format!("cannot load my layers for plan {epoch}: {e:#}"));
                self.shared.state.lock().expect("state lock").load_error =
                    Some(format!("loading layers for plan {epoch}: {e:#}"));
            }
        }
    }

    fn publish(&self, epoch: u64, ready: bool, stage_addr: Option<SocketAddr>) {
        let advert = {
            let mut state = self.shared.state.lock().expect("state lock");
            state.advert.state = AdvertState {
                epoch,
                ready,
                stage_addr,
                steps: 0,
                step_us: None,
                cpu_quota_milli: cpu_quota::as_milli(self.cpu_quota),
            };
            state.advert.clone()
        };
        self.advert_tx.send_replace(Some(advert));
    }

    fn active_epoch(&self) -> u64 {
        let state = self.shared.state.lock().expect("state lock");
        state.active.as_ref().map_or(0, |a| a.assignment.epoch)
    }

    /// Activates the pending plan once every stage of it has reported ready.
    fn check_activation(&mut self) {
        let Some(pending) = self
            .shared
            .state
            .lock()
            .expect("state lock")
            .pending
            .clone()
        else {
            return;
        };
        let adverts: HashMap<String, Advert> = self
            .adverts()
            .into_iter()
            .map(|a| (a.peer_id.to_string(), a))
            .collect();
        let mut addrs = Vec::with_capacity(pending.stages.len());
        for s in &pending.stages {
            match adverts.get(&s.peer).map(|a| &a.state) {
                Some(st) if st.epoch == pending.epoch && st.ready && st.stage_addr.is_some() => {
                    addrs.push(st.stage_addr.expect("checked"));
                }
                _ => return,
            }
        }
        if let Some(i) = pending.stage_of(&self.shared.local.to_string()) {
            if let Some(next) = addrs.get(i + 1) {
                for r in self.stages.iter().filter(|r| r.epoch == pending.epoch) {
                    r.stage.set_route(Route::To(*next));
                }
            }
        }
        if let Some(plan) = self.made.get(&pending.epoch) {
            let now = self.now_ms();
            match self.monitor.as_mut() {
                Some(m) => m.set_plan(plan, now),
                None => self.monitor = Some(Monitor::new(StragglerConfig::default(), plan, now)),
            }
            self.seen_steps.clear();
        }
        let mut state = self.shared.state.lock().expect("state lock");
        if state.active.is_some() {
            state.replans += 1;
            self.shared.metrics.replanned();
        }
        let owners = |a: &Assignment| -> Vec<Option<String>> {
            let n = a.stages.iter().map(|s| s.layers[1]).max().unwrap_or(0) as usize;
            let mut v = vec![None; n];
            for s in &a.stages {
                for slot in &mut v[s.layers[0] as usize..s.layers[1] as usize] {
                    *slot = Some(s.peer.clone());
                }
            }
            v
        };
        let old = state
            .active
            .as_ref()
            .map(|a| owners(&a.assignment))
            .unwrap_or_default();
        let moved = moved_layers(&old, &owners(&pending));
        let stages: Vec<String> = pending
            .stages
            .iter()
            .map(|s| format!("{} {}..{}", short_id(&s.peer), s.layers[0], s.layers[1]))
            .collect();
        let took = self
            .assigned_at
            .remove(&pending.epoch)
            .map(|t| format!(" {:.2} s after it was assigned", t.elapsed().as_secs_f64()))
            .unwrap_or_default();
        self.event(format!(
            "plan {} active{took}: {}{}",
            pending.epoch,
            stages.join(", "),
            if old.is_empty() || moved.is_empty() {
                String::new()
            } else {
                format!("; moved {}", moved.join(", "))
            }
        ));
        info!(epoch = pending.epoch, first = %addrs[0], "plan active");
        let (epoch, first) = (pending.epoch, addrs[0]);
        self.shared.plans.send_modify(|r| {
            r.epoch = epoch;
            r.first = Some(first);
        });
        state.active = Some(Active {
            assignment: pending,
            first: addrs[0],
        });
        state.pending = None;
    }

    fn on_tick(&mut self) {
        {
            let mut state = self.shared.state.lock().expect("state lock");
            let now = Instant::now();
            let total = self.shared.head.generated();
            state.token_samples.push_back((now, total));
            while state
                .token_samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(5))
            {
                state.token_samples.pop_front();
            }
        }
        let active = self.active_epoch();
        self.report_steps(active);
        self.watch_stragglers(active);
        // Stop stages of older plans once their last request has finished.
        for r in &mut self.stages {
            if r.epoch < active && r.stage.open_sessions() == 0 {
                r.idle_ticks += 1;
            } else {
                r.idle_ticks = 0;
            }
        }
        self.retire_where(|r| r.idle_ticks >= RETIRE_AFTER_IDLE_TICKS);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Publishes how fast this node's stage of the active plan runs when it ran more steps,
    /// and the process's CPU quota when it changed.
    fn report_steps(&mut self, active: u64) {
        let quota = cpu_quota::cores_allowed();
        let quota_changed = quota != self.cpu_quota;
        self.cpu_quota = quota;
        let steps = self
            .stages
            .iter()
            .find(|r| r.epoch == active)
            .map(|r| r.stage.decode_steps(quota))
            .filter(|&(count, _)| count != self.published_steps);
        if steps.is_none() && !quota_changed {
            return;
        }
        let advert = {
            let mut state = self.shared.state.lock().expect("state lock");
            if let Some((count, median)) = steps {
                self.published_steps = count;
                state.advert.state.steps = count;
                state.advert.state.step_us = median.map(|d| d.as_micros() as u64);
            }
            state.advert.state.cpu_quota_milli = cpu_quota::as_milli(quota);
            state.advert.clone()
        };
        self.advert_tx.send_replace(Some(advert));
    }

    /// The coordinator's straggler policy: feeds the members' step times to the monitor and
    /// replans on its decisions (a slow stage gets fewer layers, a recovered one its share back).
    fn watch_stragglers(&mut self, active: u64) {
        let adverts = self.adverts();
        if !self.is_coordinator(&adverts) {
            self.monitor = None;
            return;
        }
        let now = self.now_ms();
        let Some(monitor) = self.monitor.as_mut() else {
            return;
        };
        for a in &adverts {
            let id = a.peer_id.to_string();
            // Unknown devices (not in any plan this monitor saw) are simply not tracked.
            let _ = monitor.record_heartbeat(&id, now);
            let (steps, Some(us)) = (a.state.steps, a.state.step_us) else {
                continue;
            };
            let seen = self.seen_steps.entry(id.clone()).or_insert(0);
            if a.state.epoch == active && steps > *seen {
                *seen = steps;
                let _ = monitor.record_step(&id, now, us as f64 / 1e3);
            }
        }
        let decisions = monitor.evaluate(now);
        for d in &decisions {
            info!(decision = ?d, "straggler policy");
            self.shared
                .metrics
                .events()
                .record(format!("straggler policy: {d:?}"));
        }
        if !decisions.is_empty() {
            self.replan_at = Some(tokio::time::Instant::now());
        }
    }

    fn retire_where(&mut self, done: impl Fn(&Running) -> bool) {
        let (gone, keep): (Vec<Running>, Vec<Running>) =
            self.stages.drain(..).partition(|r| done(r));
        self.stages = keep;
        for r in gone {
            info!(epoch = r.epoch, "retiring a stage of an older plan");
            tokio::spawn(r.stage.shutdown());
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes this node's adverts one at a time, newest last; one skipped while another was
/// being published is superseded by the newest anyway.
async fn publish_adverts(
    discovery: transport::discovery::swarm::Handle,
    mut adverts: watch::Receiver<Option<Advert>>,
) {
    while adverts.changed().await.is_ok() {
        let advert = adverts.borrow_and_update().clone();
        if let Some(advert) = advert {
            if let Err(e) = discovery.publish(advert).await {
                warn!(error = %e, "cannot publish the advert");
            }
        }
    }
}
