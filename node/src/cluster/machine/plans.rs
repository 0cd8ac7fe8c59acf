//! Plans: the coordinator makes them, every node loads its part, reports ready, and
//! activates a plan once every stage of it is ready.

use std::collections::HashMap;
use std::net::SocketAddr;

use scheduler::straggler::Monitor;
use tracing::{debug, info, warn};
use transport::discovery::{Advert, AdvertState, PeerId};

use super::super::control::{Assignment, Control};
use super::super::coordinator;
use super::layouts::{my_order, owners, unchanged_tail};
use super::{Action, Active, Cluster, Millis, Running};
use crate::events::{moved_layers, short_id};

impl Cluster {
    /// The device graph of the members' adverts, as the coordinator plans over it: whether
    /// each serves the API (and so holds a head), what its process measured as overhead, and
    /// the links it measured; a lost data link is a link down.
    fn graph(&self, adverts: &[Advert]) -> scheduler::DeviceGraph {
        let facts = |a: &Advert| coordinator::NodeFacts {
            serves_api: a.state.serves_api,
            overhead_bytes: a.state.overhead_bytes,
            head_ms: a.state.head_ms,
            ..Default::default()
        };
        let mut links = coordinator::link_reports(adverts);
        if self.cfg.placement == coordinator::Placement::LinkBlind {
            links.retain(|r| r.link.is_none());
        }
        coordinator::device_graph(adverts, &self.cfg.sha256, &self.cfg.version, facts, &links)
    }

    /// A member's own verdict while the plan it runs on is broken: the coordinator's may be
    /// slow to come (it may not have seen the loss yet, or not know it coordinates now), and
    /// the planner gives every node the same answer from the same adverts.
    fn judge_placement(&mut self) {
        let broken = self
            .active
            .as_ref()
            .is_none_or(|a| self.route.broken >= a.assignment.epoch);
        let adverts = self.adverts();
        let coordinator = coordinator::coordinator(&adverts, &self.cfg.sha256, &self.cfg.version);
        let Some(coordinator) = coordinator.filter(|_| broken) else {
            return;
        };
        let graph = self.graph(&adverts);
        let whole = |r: &mut scheduler::PlanRequest| r.config.allow_slices = false;
        let placement = self.cfg.placement;
        let planned = coordinator::assign(
            &graph,
            &self.cfg.profile,
            &coordinator,
            0,
            placement,
            whole,
            None,
        );
        if let Err(e) = planned {
            self.unplaceable = Some(e.to_string());
            self.route.unplaceable = true;
        }
    }

    /// The coordinator's job: plan, and tell everyone if anything changed. Other members
    /// judge only whether the model can be placed at all.
    pub(super) fn replan(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.is_coordinator() {
            self.judge_placement();
            return;
        }
        let adverts = self.adverts();
        let graph = self.graph(&adverts);
        let epoch = adverts
            .iter()
            .map(|a| a.state.epoch)
            .chain([self.highest_epoch, self.current_epoch()])
            .max()
            .unwrap_or(0)
            + 1;
        let local = self.cfg.local.to_string();
        let monitor = self.monitor.as_ref();
        let adjust = |request: &mut scheduler::PlanRequest| {
            // Stages do not run vocabulary slices yet: every head holds its output whole.
            request.config.allow_slices = false;
            if let Some(m) = monitor {
                m.apply(request);
            }
        };
        // The current plan stays unless it broke, no longer fits, or a fresh one beats it
        // clearly; a straggler decision that moves layers in place keeps its stages.
        let rebalance = self.rebalance.take();
        let epoch_now = self.current_epoch();
        let current = self
            .made
            .get(&epoch_now)
            .filter(|_| self.route.broken < epoch_now)
            .map(|plan| coordinator::Current { plan, rebalance });
        let planned = coordinator::assign(
            &graph,
            &self.cfg.profile,
            &local,
            epoch,
            self.cfg.placement,
            adjust,
            current,
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
                self.unplaceable = Some(reason.clone());
                self.route.unplaceable = true;
                self.tell_unplaceable(Some(reason), out);
                return;
            }
        };
        self.tell_unplaceable(None, out);
        let current = self
            .pending
            .clone()
            .or(self.active.as_ref().map(|a| a.assignment.clone()));
        // The same layout as this node's plan changes nothing, unless members already follow
        // a newer plan made without this node (it was paused or cut off and its plan's
        // stages elsewhere are gone): then the layout goes out again under the new epoch.
        let ahead = |c: &Assignment| adverts.iter().any(|a| a.state.epoch > c.epoch);
        if let Some(current) = current.filter(|c| c.same_layout(&assignment) && !ahead(c)) {
            // Nothing to change; make sure nobody missed the current plan.
            for advert in adverts.iter().filter(|a| a.state.epoch < current.epoch) {
                if advert.peer_id != self.cfg.local {
                    out.push(Action::Send(
                        advert.peer_id,
                        Control::Assign(current.clone()),
                    ));
                }
            }
            return;
        }
        info!(
            epoch,
            stages = ?assignment.stages.iter().map(|s| (short_id(&s.peer), s.layers)).collect::<Vec<_>>(),
            predicted_ms_per_token = assignment.predicted_ms_per_token,
            "new plan"
        );
        out.push(Action::Broadcast(Control::Assign(assignment.clone())));
        self.assign(assignment, now, out);
    }

    pub(super) fn on_control(
        &mut self,
        from: PeerId,
        message: Control,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        match message {
            Control::Assign(a) if a.model_sha256 != self.cfg.sha256 => {
                warn!(%from, "ignored a plan for another model");
            }
            Control::Assign(a) if a.coordinator != from.to_string() => {
                warn!(%from, "ignored a plan relayed by a node that did not make it");
            }
            Control::Assign(a) if a.epoch <= self.current_epoch() => {
                debug!(%from, epoch = a.epoch, "ignored a stale plan");
            }
            Control::Assign(a) => self.assign(a, now, out),
        }
    }

    /// The coordinator's verdict on placing the model goes into its advert: a level the
    /// members read (see [`Cluster::coordinator_says`]), not a message one could miss.
    fn tell_unplaceable(&mut self, reason: Option<String>, out: &mut Vec<Action>) {
        if self.advert.state.unplaceable != reason {
            self.advert.state.unplaceable = reason;
            out.push(Action::Publish(Box::new(self.advert.clone())));
        }
    }

    /// A member follows the coordinator's verdict: unplaceable while its advert says so;
    /// cleared when the advert no longer does (a plan follows, or members come and go).
    pub(super) fn coordinator_says(&mut self, old: Option<&Advert>, advert: &Advert) {
        let coordinator =
            coordinator::coordinator(&self.adverts(), &self.cfg.sha256, &self.cfg.version);
        if coordinator != Some(advert.peer_id.to_string()) || self.is_coordinator() {
            return;
        }
        match &advert.state.unplaceable {
            Some(reason) => {
                self.unplaceable = Some(reason.clone());
                self.route.unplaceable = true;
            }
            None if old.is_some_and(|o| o.state.unplaceable.is_some()) => {
                self.unplaceable = None;
                self.route.unplaceable = false;
            }
            None => {}
        }
    }

    /// A new plan: load this node's part and say so.
    fn assign(&mut self, a: Assignment, now: Millis, out: &mut Vec<Action>) {
        self.highest_epoch = self.highest_epoch.max(a.epoch);
        self.assigned_at
            .retain(|&e, _| e >= a.epoch.saturating_sub(4));
        self.assigned_at.insert(a.epoch, now);
        self.pending = Some(a.clone());
        self.unplaceable = None;
        self.route.unplaceable = false;
        self.load_error = None;
        let local = self.cfg.local.to_string();
        // Stages loaded for a plan that never became active are of no use now.
        let active = self.active_epoch();
        self.retire_where(|r| r.epoch > active && r.epoch < a.epoch, out);
        let Some(order) = my_order(&a, &local) else {
            self.publish(a.epoch, true, None, out);
            return;
        };
        // This node's stage of the active plan moves to the new plan as it is when the new
        // plan changes nothing from it on down the ring (its layers, its upstream, and every
        // later stage): no load, no second copy of its weights, its open sessions keep
        // running, and its route stays the same (the later stages are kept alike).
        let tail_kept = self
            .active
            .as_ref()
            .is_some_and(|old| unchanged_tail(&old.assignment, &a, &local));
        let kept = tail_kept
            .then(|| self.stages.iter().position(|r| r.epoch == active))
            .flatten();
        if let Some(i) = kept {
            let kept = self.stages.remove(i);
            let [first, end] = order.layers;
            info!(epoch = a.epoch, from = kept.epoch, layers = ?order.layers, "keeping my stage");
            out.push(Action::Event(format!(
                "kept my stage of plan {} (layers {first}..{end}) for plan {}",
                kept.epoch, a.epoch
            )));
            out.push(Action::AdoptStage {
                from: kept.epoch,
                order,
            });
            self.publish(a.epoch, false, None, out);
            return;
        }
        if !self.has_room_for(order.layers) {
            // The old part and the new do not fit together: the old goes first (its open
            // sessions fail back to their heads), and its requests replay on the new plan
            // once it is active.
            out.push(Action::Event(format!(
                "stopped my stages of older plans to make room for plan {}",
                a.epoch
            )));
            if let Some(active) = &self.active {
                self.route.broken = self.route.broken.max(active.assignment.epoch);
            }
            self.retire_where(|_| true, out);
        }
        info!(epoch = a.epoch, layers = ?order.layers, "loading my stage");
        out.push(Action::LoadStage(order));
        self.publish(a.epoch, false, None, out);
    }

    /// Whether this node's budget holds `layers` beside the stages it runs now, as the
    /// planner counts memory: the measured overhead, the head where the API is served, and
    /// each part's weights with its KV.
    fn has_room_for(&self, layers: [u32; 2]) -> bool {
        let p = &self.cfg.profile;
        let part = |l: [u32; 2]| p.range_bytes(l[0]..l[1]);
        let state = &self.advert.state;
        let fixed = state
            .overhead_bytes
            .unwrap_or(scheduler::DEFAULT_OVERHEAD_BYTES)
            + if state.serves_api {
                p.output_bytes()
            } else {
                0
            };
        let held: u64 = self.stages.iter().map(|r| part(r.layers)).sum();
        fixed + held + part(layers) <= self.advert.memory_budget_bytes
    }

    /// This node's stage of `epoch` is ready at `addr`.
    pub(super) fn loaded(&mut self, epoch: u64, addr: SocketAddr, out: &mut Vec<Action>) {
        if self.pending.as_ref().map(|a| a.epoch) != Some(epoch) {
            debug!(epoch, "a stage loaded for a superseded plan; stopping it");
            out.push(Action::StopStage { epoch });
            return;
        }
        info!(epoch, %addr, "my stage is ready");
        let local = self.cfg.local.to_string();
        if let Some(order) = self.pending.as_ref().and_then(|a| my_order(a, &local)) {
            self.stages.push(Running {
                epoch,
                layers: order.layers,
                idle_ticks: 0,
            });
        }
        self.publish(epoch, true, Some(addr), out);
    }

    /// Publishes this node's plan state (step counts restart with every plan).
    fn publish(
        &mut self,
        epoch: u64,
        ready: bool,
        stage_addr: Option<SocketAddr>,
        out: &mut Vec<Action>,
    ) {
        let state = std::mem::take(&mut self.advert.state);
        self.advert.state = AdvertState {
            epoch,
            ready,
            stage_addr,
            steps: 0,
            step_us: None,
            ..state
        };
        out.push(Action::Publish(Box::new(self.advert.clone())));
    }

    /// Activates the pending plan once every stage of it has reported ready.
    pub(super) fn check_activation(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(pending) = self.pending.clone() else {
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
                Some(st) if st.epoch == pending.epoch && st.ready => match st.stage_addr {
                    Some(addr) => addrs.push(addr),
                    None => return,
                },
                _ => return,
            }
        }
        if let Some(i) = pending.stage_of(&self.cfg.local.to_string()) {
            if let Some(&next) = addrs.get(i + 1) {
                out.push(Action::RouteStage {
                    epoch: pending.epoch,
                    next,
                });
            }
        }
        if let Some(plan) = self.made.get(&pending.epoch) {
            match self.monitor.as_mut() {
                Some(m) => m.set_plan(plan, now),
                None => self.monitor = Some(Monitor::new(self.cfg.straggler.clone(), plan, now)),
            }
            self.seen_steps.clear();
        }
        if self.active.is_some() {
            self.replans += 1;
            out.push(Action::Replanned);
        }
        let old = self
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
            .map(|t| {
                let s = now.saturating_sub(t) as f64 / 1e3;
                format!(" {s:.2} s after it was assigned")
            })
            .unwrap_or_default();
        out.push(Action::Event(format!(
            "plan {} active{took}: {}{}",
            pending.epoch,
            stages.join(", "),
            if old.is_empty() || moved.is_empty() {
                String::new()
            } else {
                format!("; moved {}", moved.join(", "))
            }
        )));
        info!(epoch = pending.epoch, first = %addrs[0], "plan active");
        self.route.epoch = pending.epoch;
        self.route.first = Some(addrs[0]);
        self.active = Some(Active {
            assignment: pending,
            first: addrs[0],
        });
        self.pending = None;
    }

    /// Stops the stages `done` picks.
    pub(super) fn retire_where(&mut self, done: impl Fn(&Running) -> bool, out: &mut Vec<Action>) {
        self.stages.retain(|r| {
            if done(r) {
                info!(epoch = r.epoch, "retiring a stage of an older plan");
                out.push(Action::StopStage { epoch: r.epoch });
                false
            } else {
                true
            }
        });
    }
}
