//! Waiting for in-process cluster nodes to agree on one ready plan.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::backend::Backend;
use shoal::cluster::{ClusterState, ClusterView};

/// Waits until every node is ready on the same plan epoch and `want` holds for each view;
/// returns the views. Panics with every node's state, problem and plan after `within`.
pub(crate) async fn agree(
    backends: &[Arc<dyn Backend>],
    within: Duration,
    want: impl Fn(&ClusterView) -> bool,
) -> Vec<ClusterView> {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<ClusterView> = backends.iter().map(|b| b.view()).collect();
        let epochs: Vec<Option<u64>> = views
            .iter()
            .map(|v| v.plan.as_ref().map(|p| p.epoch))
            .collect();
        if views
            .iter()
            .all(|v| v.state == ClusterState::Ready && want(v))
            && epochs.windows(2).all(|w| w[0] == w[1])
        {
            return views;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement within {within:?}: {:#?}",
            views
                .iter()
                .map(|v| (
                    &v.state,
                    &v.problem,
                    v.plan.as_ref().map(|p| (p.epoch, &p.stages))
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
