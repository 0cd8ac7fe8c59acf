//! When a link's measured cost has changed enough to replan. Pure: the caller passes time
//! in and replans when [`LinkWatch::evaluate`] names a pair.
//!
//! Link probes are noisy and a replan moves weights, so a pair counts as changed only when
//! its hop cost (`rtt/2 + bytes/bandwidth` for one hidden state) differs from the one the
//! current plan was priced with by more than `relative` × that cost AND more than
//! `absolute_ms`, in every sample for `hold_ms` (one sample back inside the band starts the
//! hold again). A pair reported down, or back up, counts once it has stayed so for
//! `down_hold_ms`. After the replan, [`LinkWatch::set_planned`] takes the new baseline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{DeviceGraph, Link, LinkState};

/// Thresholds of the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Change of the hop cost, as a fraction of the planned cost, that may matter.
    pub relative: f64,
    /// Change of the hop cost in milliseconds that may matter (both must be exceeded).
    pub absolute_ms: f64,
    /// How long every sample must show the change.
    pub hold_ms: u64,
    /// How long a pair must stay down (or back up) before it counts.
    pub down_hold_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            relative: 0.5,
            absolute_ms: 0.5,
            hold_ms: 5_000,
            down_hold_ms: 1_000,
        }
    }
}

/// Whether `new` prices a hop of `bytes` materially differently from `old` (`None`: not
/// measured, priced by the default link if any).
pub fn materially_different(
    old: Option<LinkState>,
    new: Option<LinkState>,
    bytes: u64,
    config: &Config,
) -> bool {
    match (old, new) {
        (Some(LinkState::Up(a)), Some(LinkState::Up(b))) => {
            let (a, b) = (a.hop_ms(bytes), b.hop_ms(bytes));
            let diff = (a - b).abs();
            diff > config.relative * a && diff > config.absolute_ms
        }
        (None, None) | (Some(LinkState::Down), Some(LinkState::Down)) => false,
        _ => true,
    }
}

#[derive(Debug, Clone)]
struct Pair {
    /// What the current plan was priced with.
    planned: Option<LinkState>,
    /// The latest sample.
    latest: Option<LinkState>,
    /// Since when every sample has differed materially from `planned`.
    since_ms: Option<u64>,
}

/// Tracks the links of the fleet against those the current plan was priced with.
#[derive(Debug, Clone)]
pub struct LinkWatch {
    config: Config,
    bytes: u64,
    default_link: Option<Link>,
    pairs: BTreeMap<(String, String), Pair>,
}

impl LinkWatch {
    /// A watch over hops of `bytes` (one hidden state), where unmeasured pairs are priced
    /// with `default_link` as the planner prices them.
    pub fn new(config: Config, bytes: u64, default_link: Option<Link>) -> Self {
        Self {
            config,
            bytes,
            default_link,
            pairs: BTreeMap::new(),
        }
    }

    /// Takes every link of `graph` as the baseline (call with the graph a plan was made
    /// from); pending changes are dropped.
    pub fn set_planned(&mut self, graph: &DeviceGraph) {
        self.pairs.clear();
        for d in graph.devices() {
            for (to, state) in graph.links_from(&d.id) {
                self.pairs.insert(
                    (d.id.clone(), to.to_owned()),
                    Pair {
                        planned: Some(state),
                        latest: Some(state),
                        since_ms: None,
                    },
                );
            }
        }
    }

    /// Records a measurement of the pair `from -> to` at `at_ms` (`LinkState::Down` for a
    /// failed probe).
    pub fn observe(&mut self, from: &str, to: &str, state: LinkState, at_ms: u64) {
        let default = self.default_link.map(LinkState::Up);
        let pair = self
            .pairs
            .entry((from.to_owned(), to.to_owned()))
            .or_insert(Pair {
                planned: default,
                latest: default,
                since_ms: None,
            });
        pair.latest = Some(state);
        if materially_different(pair.planned, pair.latest, self.bytes, &self.config) {
            pair.since_ms.get_or_insert(at_ms);
        } else {
            pair.since_ms = None;
        }
    }

    /// The pairs whose change has held long enough, in order: replan with the latest
    /// measurements, then call [`LinkWatch::set_planned`].
    pub fn evaluate(&self, now_ms: u64) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter(|(_, p)| {
                let hold = match (p.planned, p.latest) {
                    (Some(LinkState::Up(_)), Some(LinkState::Up(_))) => self.config.hold_ms,
                    _ => self.config.down_hold_ms,
                };
                p.since_ms
                    .is_some_and(|since| now_ms.saturating_sub(since) >= hold)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Device;

    const BYTES: u64 = 2304;

    fn link(rtt_ms: f64) -> Link {
        Link {
            rtt_ms,
            bandwidth_bytes_per_s: 1e8,
        }
    }

    fn watch() -> LinkWatch {
        let mut g = DeviceGraph::new();
        for id in ["a", "b"] {
            g.upsert_device(Device::new(id, 1 << 30, 1.0, 1.0, None))
                .unwrap();
        }
        g.set_link("a", "b", link(2.0)).unwrap();
        let mut w = LinkWatch::new(Config::default(), BYTES, Some(link(1.0)));
        w.set_planned(&g);
        w
    }

    #[test]
    fn small_or_short_changes_do_not_count() {
        let mut w = watch();
        // 2 ms rtt -> 1.02 ms hop. 1.4x is under the relative threshold.
        for t in (0..20_000).step_by(500) {
            w.observe("a", "b", LinkState::Up(link(2.8)), t);
        }
        assert!(w.evaluate(20_000).is_empty());
        // 3x for 4 s only, then back inside the band: the hold starts again.
        for t in (20_000..24_000).step_by(500) {
            w.observe("a", "b", LinkState::Up(link(6.0)), t);
        }
        assert!(w.evaluate(24_000).is_empty());
        w.observe("a", "b", LinkState::Up(link(2.2)), 24_500);
        for t in (25_000..29_500).step_by(500) {
            w.observe("a", "b", LinkState::Up(link(6.0)), t);
        }
        assert!(w.evaluate(29_500).is_empty());
    }

    #[test]
    fn a_lasting_change_counts_after_the_hold() {
        let mut w = watch();
        for t in (0..=5_000).step_by(500) {
            w.observe("a", "b", LinkState::Up(link(6.0)), t);
            let due = w.evaluate(t);
            assert_eq!(due.is_empty(), t < 5_000, "at {t}: {due:?}");
        }
        // A tiny absolute change is not material even if relatively large.
        let old = Some(LinkState::Up(link(0.01)));
        let new = Some(LinkState::Up(link(0.05)));
        assert!(!materially_different(old, new, BYTES, &Config::default()));
    }

    #[test]
    fn down_and_new_pairs_count_after_their_hold() {
        let mut w = watch();
        w.observe("b", "a", LinkState::Down, 0);
        assert!(w.evaluate(500).is_empty());
        assert_eq!(w.evaluate(1_000), vec![("b".to_owned(), "a".to_owned())]);
        // A pair never measured was priced with the default link (1 ms rtt).
        w.observe("a", "c", LinkState::Up(link(1.2)), 0);
        assert!(!w
            .evaluate(10_000)
            .contains(&("a".to_owned(), "c".to_owned())));
        w.observe("a", "c", LinkState::Up(link(9.0)), 10_000);
        assert!(w
            .evaluate(15_000)
            .contains(&("a".to_owned(), "c".to_owned())));
    }
}
