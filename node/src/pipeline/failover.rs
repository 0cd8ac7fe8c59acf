//! What a head needs to survive a stage that dies mid-request: which plan is active, and
//! which plans have lost a stage.
//!
//! The cluster agent publishes a [`PlanRoute`] on a watch channel. A request runs on the
//! active plan; if that plan is marked broken (a node of it left) or stops answering, the
//! head waits for a newer plan and replays the request there — prompt plus every token
//! generated so far, as one prefill — then keeps decoding from the exact next position.
//! Tokens already given to the caller are neither repeated nor changed: the new stages
//! rebuild their KV cache from the replay, and sampling state never left the head.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::error::PipelineError;

/// The cluster's routing state as the head sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanRoute {
    /// Epoch of the active plan (0: none yet).
    pub epoch: u64,
    /// Where its first stage accepts activations.
    pub first: Option<SocketAddr>,
    /// Every plan with an epoch up to this one has lost a stage.
    pub broken: u64,
    /// The nodes left cannot hold the model: no healthy plan is coming until that changes.
    pub unplaceable: bool,
}

impl PlanRoute {
    fn usable(&self, failed: Option<u64>) -> Option<(u64, SocketAddr)> {
        let newer = self.epoch > self.broken && failed.is_none_or(|f| self.epoch > f);
        self.first
            .filter(|_| newer)
            .map(|first| (self.epoch, first))
    }
}

/// A subscription to the cluster's [`PlanRoute`].
#[derive(Clone, Debug)]
pub struct Plans(watch::Receiver<PlanRoute>);

impl Plans {
    /// Wraps the agent's channel.
    pub fn new(rx: watch::Receiver<PlanRoute>) -> Plans {
        Plans(rx)
    }

    /// The active plan if it is healthy and newer than `failed`; otherwise waits up to `wait`
    /// for one.
    pub(crate) async fn healthy(
        &mut self,
        failed: Option<u64>,
        wait: Duration,
    ) -> Result<(u64, SocketAddr), PipelineError> {
        let settled = self
            .0
            .wait_for(|r| r.usable(failed).is_some() || (r.unplaceable && r.epoch <= r.broken));
        match tokio::time::timeout(wait, settled).await {
            Ok(Ok(route)) => match route.usable(failed) {
                Some(found) => Ok(found),
                // Fail fast: waiting would only run out the clock.
                None => Err(PipelineError::Unplaceable),
            },
            _ => Err(PipelineError::NoPlan(wait)),
        }
    }

    /// Resolves once plan `epoch` is marked broken (never, if the agent is gone).
    pub(crate) async fn broken(&mut self, epoch: u64) {
        if self.0.wait_for(|r| r.broken >= epoch).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_waits_for_a_plan_newer_than_the_broken_one() {
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let (tx, rx) = watch::channel(PlanRoute {
            epoch: 3,
            first: Some(addr(1)),
            broken: 0,
            unplaceable: false,
        });
        let mut plans = Plans::new(rx);
        assert_eq!(
            plans.healthy(None, Duration::ZERO).await.unwrap(),
            (3, addr(1))
        );
        tx.send_modify(|r| r.broken = 3);
        let mut watcher = plans.clone();
        tokio::time::timeout(Duration::from_secs(1), watcher.broken(3))
            .await
            .expect("marked broken");
        assert!(plans
            .healthy(Some(3), Duration::from_millis(10))
            .await
            .is_err());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(PlanRoute {
                epoch: 4,
                first: Some(addr(2)),
                broken: 3,
                unplaceable: false,
            });
        });
        assert_eq!(
            plans
                .healthy(Some(3), Duration::from_secs(5))
                .await
                .unwrap(),
            (4, addr(2))
        );
    }
}
