//! Straggler policy: decides, from timestamped measurements, when a stage is too slow, dead
//! or healthy again. Pure: the caller passes time in and acts on the returned decisions.
//!
//! Per device the monitor knows the nominal decode step time the plan predicted (with any
//! slowdown it asked for divided back out). A stage is a straggler when its step times over
//! the last `window_ms` (at least `min_samples` of them) are mostly slow: the lower quartile
//! reaches `slow_factor` × nominal; the median is reported as its slowdown. It is recovered
//! only after the upper quartile stays under `recover_factor` × nominal for
//! `recover_hold_ms` (hysteresis: 2x to flag, 1.3x to clear; quartiles ignore short spikes). A device whose last
//! step or heartbeat is older than `heartbeat_timeout_ms` is dead.
//!
//! Decisions: [`Decision::Rebalance`] (replan with the device's cost × slowdown, see
//! [`Monitor::apply`]), [`Decision::Evict`] (replan without it) and [`Decision::Restore`]
//! (replan with its nominal cost). A rebalance or restore keeps the current stages and moves
//! the fewest layers that bring the prediction within [`Config::rebalance_tolerance`] of the
//! best those stages allow ([`crate::planner::rebalance`]): a stage at half speed keeps the
//! share it can still run, and only a dead device loses everything. A straggler planned out entirely has
//! no steps to judge; it is restored after `recover_hold_ms` alive. Each such restore that
//! is followed by the device being flagged again doubles its next hold (up to 32×), so a
//! persistently slow device is tried again after 10 s, 20 s, 40 s … rather than every 10 s;
//! a restore backed by fast steps resets it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::StragglerError;
use crate::plan::Plan;
use crate::planner::PlanRequest;

/// Thresholds of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Step time / nominal that most of the window (its lower quartile) must reach to flag a
    /// straggler.
    pub slow_factor: f64,
    /// Step time / nominal that most of the window (its upper quartile) must stay under for a
    /// straggler to count as recovering.
    pub recover_factor: f64,
    /// Sliding window of step samples, in milliseconds.
    pub window_ms: u64,
    /// Samples needed in the window before judging speed.
    pub min_samples: usize,
    /// How long a device must stay recovered (or alive, after death) before it is restored.
    pub recover_hold_ms: u64,
    /// Silence after which a device is dead.
    pub heartbeat_timeout_ms: u64,
    /// Relative change of a straggler's slowdown that warrants another rebalance.
    pub rebalance_change: f64,
    /// Cap on stored samples per device (bounds memory whatever the step rate).
    pub max_samples: usize,
    /// How far above the best split of the current stages a rebalance may stay, as a
    /// fraction, to move fewer layers (see [`crate::planner::rebalance`]). 0.15 keeps a
    /// stage at half speed at a share that costs the token at most 15 %.
    pub rebalance_tolerance: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            slow_factor: 2.0,
            recover_factor: 1.3,
            window_ms: 5_000,
            min_samples: 5,
            recover_hold_ms: 10_000,
            heartbeat_timeout_ms: 3_000,
            rebalance_change: 0.25,
            max_samples: 256,
            rebalance_tolerance: 0.15,
        }
    }
}

/// What the monitor believes about a device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Health {
    /// Running at its predicted speed (or not judged yet).
    Healthy,
    /// Slower than `slow_factor`; planned with its cost × `slowdown`.
    Straggling {
        /// Measured median / nominal step time when last reported.
        slowdown: f64,
    },
    /// Back under `recover_factor` since `since_ms`; still planned with `slowdown`.
    Recovering {
        /// The slowdown still applied.
        slowdown: f64,
        /// When it went under the recovery threshold.
        since_ms: u64,
    },
    /// Silent since `since_ms` (detected then); evicted.
    Dead {
        /// When death was detected.
        since_ms: u64,
    },
    /// Was dead, heard from again since `since_ms`; still evicted until the hold passes.
    Returning {
        /// When it was first heard from again.
        since_ms: u64,
    },
}

/// An action the caller should take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// Replan with this device's cost scaled by `slowdown`.
    Rebalance {
        /// Peer id.
        device: String,
        /// Measured median / nominal step time.
        slowdown: f64,
    },
    /// Replan without this device (it stopped responding).
    Evict {
        /// Peer id.
        device: String,
    },
    /// Replan with this device at its nominal cost again.
    Restore {
        /// Peer id.
        device: String,
    },
}

impl Decision {
    /// Whether the replan this decision calls for keeps the current stages and moves the
    /// fewest layers ([`crate::planner::rebalance`]) rather than planning afresh: true for a
    /// slowdown or a restore, false for an eviction.
    pub fn moves_in_place(&self) -> bool {
        !matches!(self, Decision::Evict { .. })
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    /// Predicted decode step ms at nominal speed; `None` when the device runs no stage.
    nominal_ms: Option<f64>,
    samples: VecDeque<(u64, f64)>,
    last_seen_ms: u64,
    health: Health,
    /// Restores without evidence (the device was planned out) since its last restore backed
    /// by fast steps: each doubles the hold before the next one.
    blind_restores: u32,
}

impl Tracked {
    fn new(nominal_ms: Option<f64>, now_ms: u64) -> Self {
        Self {
            nominal_ms,
            samples: VecDeque::new(),
            last_seen_ms: now_ms,
            health: Health::Healthy,
            blind_restores: 0,
        }
    }
}

/// Most doublings of the hold before a blind restore (32 × `recover_hold_ms`).
const MAX_BACKOFF_SHIFT: u32 = 5;

/// Tracks the stages of a plan and turns measurements into [`Decision`]s.
#[derive(Debug, Clone)]
pub struct Monitor {
    config: Config,
    devices: BTreeMap<String, Tracked>,
    /// When [`Monitor::evaluate`] last ran.
    last_eval_ms: Option<u64>,
}

impl Monitor {
    /// Starts tracking every stage of `plan`, all healthy and last seen at `now_ms`.
    pub fn new(config: Config, plan: &Plan, now_ms: u64) -> Self {
        let mut m = Self {
            config,
            devices: BTreeMap::new(),
            last_eval_ms: None,
        };
        m.set_plan(plan, now_ms);
        m
    }

    /// Switches to a new plan: nominal step times are re-derived, old samples (taken under
    /// another assignment) dropped. Devices the plan no longer uses stay tracked so a dead or
    /// slowed device can still be restored.
    pub fn set_plan(&mut self, plan: &Plan, now_ms: u64) {
        for t in self.devices.values_mut() {
            t.nominal_ms = None;
            t.samples.clear();
        }
        for stage in &plan.stages {
            let nominal = stage.busy_ms / stage.slowdown;
            let t = self
                .devices
                .entry(stage.device.clone())
                .or_insert_with(|| Tracked::new(None, now_ms));
            t.nominal_ms = Some(nominal);
        }
    }

    /// Records that `device` took `step_ms` of compute for one decode token at `at_ms`.
    /// A step is also a sign of life.
    pub fn record_step(
        &mut self,
        device: &str,
        at_ms: u64,
        step_ms: f64,
    ) -> Result<(), StragglerError> {
        if !(step_ms.is_finite() && step_ms >= 0.0) {
            return Err(StragglerError::InvalidStep(step_ms));
        }
        let max = self.config.max_samples;
        let t = self.tracked(device)?;
        t.last_seen_ms = t.last_seen_ms.max(at_ms);
        if t.samples.len() >= max {
            t.samples.pop_front();
        }
        t.samples.push_back((at_ms, step_ms));
        Ok(())
    }

    /// Records a heartbeat from `device` at `at_ms`.
    pub fn record_heartbeat(&mut self, device: &str, at_ms: u64) -> Result<(), StragglerError> {
        let t = self.tracked(device)?;
        t.last_seen_ms = t.last_seen_ms.max(at_ms);
        Ok(())
    }

    /// Advances every device's state to `now_ms` and returns the decisions, in device order.
    ///
    /// Meant to be called often (every second or so). When the previous call is more than
    /// `heartbeat_timeout_ms` ago, the caller itself was not running (a stopped process or
    /// container): it could not hear anyone, so every device's silence restarts from
    /// `now_ms` instead of all of them being declared dead at once.
    pub fn evaluate(&mut self, now_ms: u64) -> Vec<Decision> {
        let c = &self.config;
        let stalled = self
            .last_eval_ms
            .is_some_and(|last| now_ms.saturating_sub(last) > c.heartbeat_timeout_ms);
        self.last_eval_ms = Some(now_ms);
        if stalled {
            for t in self.devices.values_mut() {
                t.last_seen_ms = t.last_seen_ms.max(now_ms);
            }
        }
        let mut out = Vec::new();
        for (id, t) in &mut self.devices {
            let horizon = now_ms.saturating_sub(c.window_ms);
            t.samples.retain(|&(at, _)| at >= horizon);
            let alive = now_ms.saturating_sub(t.last_seen_ms) <= c.heartbeat_timeout_ms;
            let r = ratios(t, c.min_samples);
            // Flag only when most of the window is slow, clear only when most of it is fast.
            let slow = r.filter(|r| r.low >= c.slow_factor).map(|r| r.median);
            let fast = r.is_some_and(|r| r.high < c.recover_factor);
            let held = |since: u64| now_ms.saturating_sub(since) >= c.recover_hold_ms;
            let backoff = 1u64 << t.blind_restores.min(MAX_BACKOFF_SHIFT);
            let held_blind = |since: u64| {
                now_ms.saturating_sub(since) >= c.recover_hold_ms.saturating_mul(backoff)
            };
            let (next, decision) = match t.health {
                Health::Dead { .. } if alive => (Health::Returning { since_ms: now_ms }, None),
                Health::Dead { since_ms } => (Health::Dead { since_ms }, None),
                Health::Returning { .. } if !alive => (Health::Dead { since_ms: now_ms }, None),
                Health::Returning { since_ms } if held(since_ms) => {
                    (Health::Healthy, Some(restore(id)))
                }
                h @ Health::Returning { .. } => (h, None),
                _ if !alive => {
                    t.samples.clear();
                    let evict = Decision::Evict { device: id.clone() };
                    (Health::Dead { since_ms: now_ms }, Some(evict))
                }
                Health::Healthy => match slow {
                    Some(m) => (Health::Straggling { slowdown: m }, Some(rebalance(id, m))),
                    None => (Health::Healthy, None),
                },
                Health::Straggling { slowdown } => match slow {
                    _ if fast => (
                        Health::Recovering {
                            slowdown,
                            since_ms: now_ms,
                        },
                        None,
                    ),
                    Some(m) if changed(m, slowdown, c) => {
                        (Health::Straggling { slowdown: m }, Some(rebalance(id, m)))
                    }
                    // Planned out entirely: nothing to measure, give it another chance.
                    None if t.nominal_ms.is_none() => (
                        Health::Recovering {
                            slowdown,
                            since_ms: now_ms,
                        },
                        None,
                    ),
                    _ => (Health::Straggling { slowdown }, None),
                },
                Health::Recovering { slowdown, since_ms } => match slow {
                    Some(m) if changed(m, slowdown, c) => {
                        (Health::Straggling { slowdown: m }, Some(rebalance(id, m)))
                    }
                    _ if r.is_some() && !fast => (Health::Straggling { slowdown }, None),
                    _ if held(since_ms) && r.is_some() => {
                        t.blind_restores = 0;
                        (Health::Healthy, Some(restore(id)))
                    }
                    _ if held_blind(since_ms) && t.nominal_ms.is_none() => {
                        t.blind_restores = t.blind_restores.saturating_add(1);
                        (Health::Healthy, Some(restore(id)))
                    }
                    _ => (Health::Recovering { slowdown, since_ms }, None),
                },
            };
            t.health = next;
            out.extend(decision);
        }
        out
    }

    /// Current belief about `device`.
    pub fn health(&self, device: &str) -> Option<Health> {
        self.devices.get(device).map(|t| t.health)
    }

    /// Writes the monitor's view into a planning request: slowdowns of stragglers (also
    /// while recovering) and exclusion of dead or returning devices. Healthy devices are
    /// removed from both, so restores take effect.
    pub fn apply(&self, request: &mut PlanRequest) {
        for (id, t) in &self.devices {
            request.slowdown.remove(id);
            request.exclude.remove(id);
            match t.health {
                Health::Straggling { slowdown } | Health::Recovering { slowdown, .. } => {
                    request.slowdown.insert(id.clone(), slowdown);
                }
                Health::Dead { .. } | Health::Returning { .. } => {
                    request.exclude.insert(id.clone());
                }
                Health::Healthy => {}
            }
        }
    }

    fn tracked(&mut self, device: &str) -> Result<&mut Tracked, StragglerError> {
        self.devices
            .get_mut(device)
            .ok_or_else(|| StragglerError::UnknownDevice(device.to_owned()))
    }
}

/// Step times in the window relative to nominal: lower quartile, median, upper quartile.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    low: f64,
    median: f64,
    high: f64,
}

/// Quartiles of the window's step times over nominal, if there is enough evidence.
fn ratios(t: &Tracked, min_samples: usize) -> Option<Ratios> {
    let nominal = t.nominal_ms.filter(|n| *n > 0.0)?;
    if t.samples.len() < min_samples.max(1) {
        return None;
    }
    let mut v: Vec<f64> = t.samples.iter().map(|s| s.1).collect();
    v.sort_by(f64::total_cmp);
    // Nearest-rank quantile; `v` is non-empty.
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] / nominal;
    Some(Ratios {
        low: q(0.25),
        median: q(0.5),
        high: q(0.75),
    })
}

fn changed(new: f64, old: f64, c: &Config) -> bool {
    (new - old).abs() > c.rebalance_change * old
}

fn rebalance(id: &str, slowdown: f64) -> Decision {
    Decision::Rebalance {
        device: id.to_owned(),
        slowdown,
    }
}

fn restore(id: &str) -> Decision {
    Decision::Restore {
        device: id.to_owned(),
    }
}
