//! Prefix reuse at this node's head: requests that resumed from a cache the stages kept,
//! kept caches a stage no longer held, and the prompt positions not computed again.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::Metrics;

/// The prefix-reuse counters (no labels).
pub(super) struct PrefixMetrics {
    hits: Counter,
    misses: Counter,
    reused: Counter,
}

impl PrefixMetrics {
    /// Registers the counters in `registry`.
    pub(super) fn register(registry: &mut Registry) -> PrefixMetrics {
        let m = PrefixMetrics {
            hits: Counter::default(),
            misses: Counter::default(),
            reused: Counter::default(),
        };
        registry.register(
            "prefix_cache_hits",
            "Requests that resumed from a kept cache on every stage instead of prefilling its positions",
            m.hits.clone(),
        );
        registry.register(
            "prefix_cache_misses",
            "Requests whose kept cache a stage no longer held (evicted, restarted); they prefilled in full",
            m.misses.clone(),
        );
        registry.register(
            "prefix_reused_positions",
            "Prompt positions resumed from kept caches instead of computed",
            m.reused.clone(),
        );
        m
    }
}

impl Metrics {
    /// A request resumed `positions` positions from a kept cache.
    pub fn prefix_reused(&self, positions: usize) {
        self.prefix.hits.inc();
        self.prefix.reused.inc_by(positions as u64);
    }

    /// A request's kept cache was missing on a stage.
    pub fn prefix_missed(&self) {
        self.prefix.misses.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_is_counted() {
        let m = Metrics::new();
        m.prefix_reused(400);
        m.prefix_reused(100);
        m.prefix_missed();
        let text = m.encode();
        assert!(text.contains("shoal_prefix_cache_hits_total 2"));
        assert!(text.contains("shoal_prefix_cache_misses_total 1"));
        assert!(text.contains("shoal_prefix_reused_positions_total 500"));
    }
}
