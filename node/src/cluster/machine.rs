//! The cluster machine: every decision a node takes about plans, as a pure state machine.
//!
//! [`Cluster::handle`] takes one [`Input`] (a membership change, a plan message, a stage that
//! loaded, a tick, the replan timer) and the time, and returns the [`Action`]s to carry out
//! (publish an advert, send a plan, load or stop a stage, record an event). It owns the
//! membership view, the active and pending plans, the coordinator's decisions and the
//! straggler monitor. It has no locks, reads no clock and does no I/O: the driver feeds it and
//! executes its actions, and tests wire several machines together in memory with simulated
//! time.
//!
//! - `inputs` and `actions`: what it is told and what it asks for;
//! - `plans`: the coordinator's replanning and every node's plan lifecycle (assign, load,
//!   activate, retire);
//! - `ticks`: step reports, the straggler policy, idle stages.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use scheduler::straggler::{Config as StragglerConfig, Monitor};
use scheduler::{ModelProfile, Plan};
use tracing::debug;
use transport::discovery::{Advert, PeerId};

use super::control::Assignment;
use super::coordinator::{self, Placement};
use crate::events::short_id;
use crate::pipeline::PlanRoute;
pub(crate) use actions::{Action, StageOrder};
pub(crate) use inputs::{Input, StageReport, Tick};

mod actions;
mod inputs;
mod layouts;
mod links;
mod plans;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod ticks;

/// Milliseconds since the driver started: the machine's only notion of time.
pub(crate) type Millis = u64;

/// What a machine is told at start and never changes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// This node.
    pub(crate) local: PeerId,
    /// The model's sha256 (lowercase hex).
    pub(crate) sha256: String,
    /// This software's version; only nodes of the same version plan together.
    pub(crate) version: String,
    /// The model's sizes and costs, for the planner.
    pub(crate) profile: ModelProfile,
    /// How the coordinator splits layers.
    pub(crate) placement: Placement,
    /// Quiet time after a join or leave before the coordinator replans.
    pub(crate) replan_delay: Millis,
    /// The straggler policy's thresholds.
    pub(crate) straggler: StragglerConfig,
}

/// The plan requests run on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Active {
    pub(crate) assignment: Assignment,
    /// Where its first stage accepts activations.
    pub(crate) first: SocketAddr,
}

/// What the API and `shoal status` see of the machine.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// This node's advert as last published.
    pub(crate) advert: Advert,
    /// The other members.
    pub(crate) members: Vec<Advert>,
    pub(crate) active: Option<Active>,
    pub(crate) pending: Option<Assignment>,
    /// Why the model cannot be placed, while that holds.
    pub(crate) unplaceable: Option<String>,
    /// This node could not load its part of the pending plan.
    pub(crate) load_error: Option<String>,
    /// Plans that became active after the first one.
    pub(crate) replans: u64,
    /// What heads follow.
    pub(crate) route: PlanRoute,
}

/// A stage this node runs, as the machine tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    epoch: u64,
    /// The layers it runs.
    layers: [u32; 2],
    /// Consecutive ticks it has been superseded with no session open.
    idle_ticks: u32,
}

/// Ticks a superseded stage must be idle before it is stopped.
const RETIRE_AFTER_IDLE_TICKS: u32 = 2;

/// How long a lost data link keeps two nodes apart in plans: long enough that a link that
/// keeps failing does not break plan after plan, short enough that a repaired one is used
/// again the same hour.
const UNREACHABLE_FOR: Millis = 5 * 60 * 1000;

/// A node's view of the cluster and its part in it.
pub(crate) struct Cluster {
    cfg: Config,
    members: BTreeMap<PeerId, Advert>,
    advert: Advert,
    active: Option<Active>,
    pending: Option<Assignment>,
    unplaceable: Option<String>,
    load_error: Option<String>,
    replans: u64,
    route: PlanRoute,
    /// Newest epoch seen in any plan message or advert.
    highest_epoch: u64,
    /// When the coordinator should (re)plan next.
    replan_at: Option<Millis>,
    /// Plans this node made as coordinator, by epoch (the straggler policy's predictions).
    made: BTreeMap<u64, Plan>,
    /// The straggler policy, while this node coordinates an active plan it made.
    monitor: Option<Monitor>,
    /// Per member, the decode step count last fed to the monitor.
    seen_steps: HashMap<String, u64>,
    /// The stages this node runs (loaded, not yet stopped).
    stages: Vec<Running>,
    /// When each recent plan was received, to report how long it took to become active.
    assigned_at: HashMap<u64, Millis>,
    /// Set by a straggler decision that moves layers in place: the next plan keeps the
    /// active one's stages, within this tolerance of the best.
    rebalance: Option<f64>,
    /// Recent round-trip samples of this node's links, by peer ([`links`]).
    link_samples: links::Samples,
    /// Peers this node's stages lost the link to, and when; reported in its advert until
    /// [`UNREACHABLE_FOR`] has passed.
    unreachable: BTreeMap<PeerId, Millis>,
}

impl Cluster {
    /// A machine for a node whose first advert is `advert`; the actions publish nothing yet
    /// (the driver published the advert), they arm the first plan.
    pub(crate) fn new(cfg: Config, advert: Advert, now: Millis) -> Cluster {
        let mut machine = Cluster {
            cfg,
            members: BTreeMap::new(),
            advert,
            active: None,
            pending: None,
            unplaceable: None,
            load_error: None,
            replans: 0,
            route: PlanRoute::default(),
            highest_epoch: 0,
            replan_at: None,
            made: BTreeMap::new(),
            monitor: None,
            seen_steps: HashMap::new(),
            stages: Vec::new(),
            assigned_at: HashMap::new(),
            unreachable: BTreeMap::new(),
            rebalance: None,
            link_samples: Default::default(),
        };
        // A node alone still plans for itself.
        machine.arm_replan(now);
        machine
    }

    /// Acts on `input` at time `now`.
    pub(crate) fn handle(&mut self, input: Input, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Joined(a) => {
                out.push(Action::Event(format!(
                    "{} joined ({} threads, {} MiB{})",
                    short_id(&a.peer_id.to_string()),
                    a.threads,
                    a.memory_budget_bytes >> 20,
                    if a.seed_addr.is_some() {
                        ", holds the model file"
                    } else {
                        ""
                    }
                )));
                self.members.insert(a.peer_id, a);
                self.arm_replan(now);
            }
            Input::Left(peer) => self.left(peer, now, &mut out),
            Input::Updated(a) => self.updated(a, now),
            Input::Resync(all) => {
                self.members = all.into_iter().map(|a| (a.peer_id, a)).collect();
                self.members.remove(&self.cfg.local);
                self.arm_replan(now);
            }
            Input::Control { from, message } => self.on_control(from, message, now, &mut out),
            Input::StageLoaded { epoch, addr } => self.loaded(epoch, addr, &mut out),
            Input::StageFailed { epoch, error } => {
                out.push(Action::Event(format!(
                    "cannot load my layers for plan {epoch}: {error}"
                )));
                self.load_error = Some(format!("loading layers for plan {epoch}: {error}"));
            }
            Input::NextHopLost { epoch, next } => self.next_hop_lost(epoch, next, now, &mut out),
            Input::Tick(tick) => self.tick(tick, now, &mut out),
            Input::Timer => {
                if self.replan_at.is_some_and(|at| at <= now) {
                    self.replan_at = None;
                    self.replan(now, &mut out);
                }
            }
        }
        self.check_activation(now, &mut out);
        out
    }

    /// When the machine wants [`Input::Timer`] next.
    pub(crate) fn deadline(&self) -> Option<Millis> {
        self.replan_at
    }

    /// What heads follow: the active plan, and which plans are broken.
    pub(crate) fn route(&self) -> PlanRoute {
        self.route
    }

    /// The machine's state for the API.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            advert: self.advert.clone(),
            members: self.members.values().cloned().collect(),
            active: self.active.clone(),
            pending: self.pending.clone(),
            unplaceable: self.unplaceable.clone(),
            load_error: self.load_error.clone(),
            replans: self.replans,
            route: self.route,
        }
    }

    /// Every advert, this node's included.
    fn adverts(&self) -> Vec<Advert> {
        let mut all: Vec<Advert> = self.members.values().cloned().collect();
        all.push(self.advert.clone());
        all
    }

    fn is_coordinator(&self) -> bool {
        coordinator::coordinator(&self.adverts(), &self.cfg.sha256, &self.cfg.version)
            == Some(self.cfg.local.to_string())
    }

    fn arm_replan(&mut self, now: Millis) {
        let delay = self.cfg.replan_delay;
        // Debounce: a burst of joins moves the deadline, but never past twice the delay.
        self.replan_at = Some(match self.replan_at {
            Some(prev) => (now + delay).min(prev + delay),
            None => now + delay,
        });
    }

    fn left(&mut self, peer: PeerId, now: Millis, out: &mut Vec<Action>) {
        let id = peer.to_string();
        let ran = self.active.as_ref().and_then(|a| {
            let stage = a.assignment.stages.iter().find(|s| s.peer == id)?;
            Some((a.assignment.epoch, stage.layers))
        });
        out.push(Action::Event(match ran {
            Some((epoch, l)) => format!(
                "{} left; it ran layers {}..{} of plan {epoch}",
                short_id(&id),
                l[0],
                l[1]
            ),
            None => format!("{} left", short_id(&id)),
        }));
        if let Some((epoch, _)) = ran {
            debug!(epoch, %peer, "a node of the active plan left; its requests move on");
            self.route.broken = self.route.broken.max(epoch);
        }
        self.members.remove(&peer);
        self.arm_replan(now);
    }

    fn updated(&mut self, advert: Advert, now: Millis) {
        self.highest_epoch = self.highest_epoch.max(advert.state.epoch);
        // Only a link newly lost is urgent; one that comes back waits for the next replan.
        let links_changed = self
            .members
            .get(&advert.peer_id)
            .is_some_and(|old| links::links_changed(old, &advert));
        let newly_unreachable = match self.members.get(&advert.peer_id) {
            Some(old) => advert
                .state
                .unreachable
                .iter()
                .any(|p| !old.state.unreachable.contains(p)),
            None => !advert.state.unreachable.is_empty(),
        };
        let old = self.members.insert(advert.peer_id, advert.clone());
        self.coordinator_says(old.as_ref(), &advert);
        // A member lagging behind the current plan missed a message: resend. One ahead of it
        // follows a plan made while this node was away (paused, cut off): the coordinator
        // must plan again, over everyone. A member that lost a link: plan around it now.
        let current = self.current_epoch();
        if self.is_coordinator() {
            if newly_unreachable {
                self.replan_at = Some(now);
            } else if advert.state.epoch != current || links_changed {
                self.arm_replan(now);
            }
        }
    }

    /// The pending plan's epoch, else the active one's, else 0.
    fn current_epoch(&self) -> u64 {
        self.pending
            .as_ref()
            .map(|a| a.epoch)
            .or(self.active.as_ref().map(|a| a.assignment.epoch))
            .unwrap_or(0)
    }

    fn active_epoch(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.assignment.epoch)
    }

    /// A stage of `epoch` lost its next hop: that plan is broken (its requests move on), and
    /// the peer behind it is reported unreachable so the coordinator plans around the link.
    fn next_hop_lost(&mut self, epoch: u64, next: SocketAddr, now: Millis, out: &mut Vec<Action>) {
        let peer = self
            .members
            .values()
            .find(|a| a.state.stage_addr == Some(next))
            .map(|a| a.peer_id);
        if let Some(active) = self.active.as_ref().filter(|a| a.assignment.epoch == epoch) {
            self.route.broken = self.route.broken.max(active.assignment.epoch);
        }
        // A superseded plan's next stage may have stopped to make room for the new plan: not
        // evidence against the link.
        let superseded = epoch < self.current_epoch();
        let Some(peer) = peer.filter(|_| !superseded) else {
            return;
        };
        if self.unreachable.insert(peer, now).is_none() {
            out.push(Action::Event(format!(
                "lost the data link to {} (plan {epoch}); planning around it",
                short_id(&peer.to_string())
            )));
            self.advert.state.unreachable = self.unreachable.keys().copied().collect();
            out.push(Action::Publish(Box::new(self.advert.clone())));
            if self.is_coordinator() {
                self.replan_at = Some(now);
            }
        }
    }

    /// Forgets links lost longer ago than [`UNREACHABLE_FOR`]: the next plan may use them.
    fn expire_unreachable(&mut self, now: Millis, out: &mut Vec<Action>) {
        let before = self.unreachable.len();
        self.unreachable
            .retain(|_, &mut at| now.saturating_sub(at) < UNREACHABLE_FOR);
        if self.unreachable.len() != before {
            self.advert.state.unreachable = self.unreachable.keys().copied().collect();
            out.push(Action::Publish(Box::new(self.advert.clone())));
        }
    }
}
