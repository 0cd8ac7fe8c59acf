//! Once a second: this node's step report, the coordinator's straggler policy, and stages of
//! older plans that have gone idle.

use tracing::info;

use super::{Action, Cluster, Millis, Tick, RETIRE_AFTER_IDLE_TICKS};

impl Cluster {
    pub(super) fn tick(&mut self, tick: Tick, now: Millis, out: &mut Vec<Action>) {
        let active = self.active_epoch();
        self.report_steps(&tick, active, out);
        self.measured_links(&tick.link_rtts, now, out);
        self.watch_stragglers(active, now, out);
        // Stop stages of older plans once their last request has finished.
        for r in &mut self.stages {
            let open = tick
                .stages
                .iter()
                .find(|s| s.epoch == r.epoch)
                .map_or(0, |s| s.open_sessions);
            if r.epoch < active && open == 0 {
                r.idle_ticks += 1;
            } else {
                r.idle_ticks = 0;
            }
        }
        self.retire_where(|r| r.idle_ticks >= RETIRE_AFTER_IDLE_TICKS, out);
        self.expire_unreachable(now, out);
    }

    /// Publishes how fast this node's stage of the active plan runs when it ran more steps,
    /// and the process's CPU quota when it changed.
    fn report_steps(&mut self, tick: &Tick, active: u64, out: &mut Vec<Action>) {
        let state = &mut self.advert.state;
        let quota_changed = state.cpu_quota_milli != tick.cpu_quota_milli;
        state.cpu_quota_milli = tick.cpu_quota_milli;
        let steps = tick
            .stages
            .iter()
            .find(|s| s.epoch == active && state.epoch == active)
            .filter(|s| s.steps != state.steps);
        if let Some(s) = steps {
            state.steps = s.steps;
            state.step_us = s.step_us;
        }
        if steps.is_some() || quota_changed {
            out.push(Action::Publish(Box::new(self.advert.clone())));
        }
    }

    /// The coordinator's straggler policy: feeds the members' step times to the monitor and
    /// replans on its decisions (a slow stage gets fewer layers, a recovered one its share
    /// back).
    fn watch_stragglers(&mut self, active: u64, now: Millis, out: &mut Vec<Action>) {
        if !self.is_coordinator() {
            self.monitor = None;
            return;
        }
        let adverts = self.adverts();
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
            out.push(Action::Event(format!("straggler policy: {d:?}")));
        }
        if !decisions.is_empty() {
            if decisions.iter().all(|d| d.moves_in_place()) {
                self.rebalance = Some(self.cfg.straggler.rebalance_tolerance);
            }
            self.replan_at = Some(now);
        }
    }
}
