//! Measured links: this node publishes the round-trip times its stages' links see, with
//! hysteresis, and the coordinator replans when a member's published link cost changed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use transport::discovery::{Advert, LinkMeasure, PeerId};

use super::{Action, Cluster, Millis};

/// A link's cost must move by this share of its last published value...
const RELATIVE_CHANGE: f64 = 0.25;
/// ...and by at least this many microseconds, before it is published again.
const ABSOLUTE_CHANGE_US: u64 = 2000;
/// A link's cost is the least of its last this many samples (one a second): QUIC's
/// estimate includes the time a busy receiver takes to acknowledge, which the path does
/// not cost; the minimum over a window keeps the path's own delay.
const WINDOW: usize = 10;

/// Recent samples per peer.
pub(super) type Samples = HashMap<PeerId, VecDeque<u64>>;

impl Cluster {
    /// Folds this tick's link round-trip times (by destination address) into this node's
    /// advert; publishes when one is new or changed materially.
    pub(super) fn measured_links(
        &mut self,
        rtts: &[(SocketAddr, u64)],
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let mut changed = false;
        for &(addr, sample) in rtts {
            let Some(peer) = self.member_at(addr) else {
                continue;
            };
            let window = self.link_samples.entry(peer).or_default();
            if window.len() == WINDOW {
                window.pop_front();
            }
            window.push_back(sample);
            let rtt_us = window.iter().copied().min().unwrap_or(sample);
            let links = &mut self.advert.state.links;
            match links.iter_mut().find(|l| l.peer == peer) {
                Some(l) if !material(l.rtt_us, rtt_us) => {}
                Some(l) => {
                    l.rtt_us = rtt_us;
                    l.measured_at_ms = now;
                    changed = true;
                }
                None => {
                    links.push(LinkMeasure {
                        peer,
                        rtt_us,
                        bytes_per_sec: None,
                        measured_at_ms: now,
                    });
                    changed = true;
                }
            }
        }
        // Links to members that left are no longer this node's to report.
        let before = self.advert.state.links.len();
        let members = &self.members;
        self.advert
            .state
            .links
            .retain(|l| members.contains_key(&l.peer));
        changed |= self.advert.state.links.len() != before;
        self.link_samples.retain(|p, _| members.contains_key(p));
        if changed {
            out.push(Action::Publish(Box::new(self.advert.clone())));
            // Other members' changes reach the coordinator as adverts; its own, here.
            if self.is_coordinator() {
                self.arm_replan(now);
            }
        }
    }

    /// The member whose head or stage listens at `addr`.
    fn member_at(&self, addr: SocketAddr) -> Option<PeerId> {
        self.members
            .values()
            .find(|a| a.state.stage_addr == Some(addr) || a.data_addr == addr)
            .map(|a| a.peer_id)
    }
}

/// Whether a member's new advert changes a link cost the plan was priced with.
pub(super) fn links_changed(old: &Advert, new: &Advert) -> bool {
    new.state.links.iter().any(|l| {
        old.state
            .links
            .iter()
            .find(|o| o.peer == l.peer)
            .is_none_or(|o| o.rtt_us != l.rtt_us)
    })
}

fn material(old_us: u64, new_us: u64) -> bool {
    let delta = old_us.abs_diff(new_us);
    delta >= ABSOLUTE_CHANGE_US && delta as f64 >= RELATIVE_CHANGE * old_us as f64
}

#[cfg(test)]
mod tests {
    use super::super::sim::Sim;
    use super::super::{Input, Tick};
    use super::material;
    use crate::cluster::control::Assignment;
    use crate::cluster::coordinator::Placement;

    /// Three nodes plan two stages; the first stage's link to the second turns slow (30 ms)
    /// and it publishes the measurement. Returns the plans before and after, and the pair.
    fn slow_link(placement: Placement) -> (Assignment, Assignment, String, String) {
        let mut sim = Sim::new(placement);
        for _ in 0..3 {
            sim.add(120, 0.2);
        }
        sim.run(2000);
        let plan = sim.agreed().unwrap();
        assert_eq!(plan.stages.len(), 2, "{plan:?}");
        let a = plan.stages[0].peer.parse().unwrap();
        let b = plan.stages[1].peer.clone();
        let next = sim.nodes[&a].stages[&plan.epoch].next.expect("routed");
        let tick = Tick {
            link_rtts: vec![(next, 30_000)],
            ..Tick::default()
        };
        sim.input(a, Input::Tick(tick));
        sim.run(3000);
        let published = &sim.nodes[&a].machine.advert.state.links;
        assert_eq!(published.len(), 1, "{published:?}");
        assert_eq!(
            (published[0].peer.to_string(), published[0].rtt_us),
            (b.clone(), 30_000)
        );
        (plan, sim.agreed().unwrap(), a.to_string(), b)
    }

    fn follows(plan: &Assignment, a: &str, b: &str) -> bool {
        plan.stages
            .windows(2)
            .any(|w| w[0].peer == a && w[1].peer == b)
    }

    /// The coordinator plans around a link measured slow: the two no longer follow each
    /// other.
    #[test]
    fn a_slow_link_is_published_and_planned_around() {
        let (plan, replanned, a, b) = slow_link(Placement::Planned);
        assert!(replanned.epoch > plan.epoch, "{replanned:?}");
        assert!(!follows(&replanned, &a, &b), "{replanned:?}");
    }

    /// The link-blind baseline sees the same measurement and keeps its plan.
    #[test]
    fn a_link_blind_coordinator_keeps_the_slow_link() {
        let (plan, after, a, b) = slow_link(Placement::LinkBlind);
        assert!(after.same_layout(&plan), "{after:?}");
        assert!(follows(&after, &a, &b), "{after:?}");
    }

    #[test]
    fn only_material_changes_count() {
        assert!(!material(300, 1900), "under two milliseconds apart");
        assert!(!material(30_000, 33_000), "10% of a 30 ms link");
        assert!(material(2_000, 30_000));
        assert!(material(30_000, 2_000));
    }
}
