//! What the API sees of a running node: its head (on the active plan), its drafter, and
//! the cluster as it stands.

use std::sync::Arc;

use tokio::sync::watch;
use transport::discovery::PeerId;

use super::machine::Snapshot;
use super::snapshot;
use super::view::ClusterView;
use super::view::ModelSummary;
use crate::backend::{Backend, ModelInfo};
use crate::metrics::Metrics;
use crate::pipeline::PlanRoute;
use crate::pipeline::{Head, Plans};

/// What the API reads of a running node.
pub(crate) struct Shared {
    pub(crate) local: PeerId,
    pub(crate) model: ModelInfo,
    pub(crate) summary: ModelSummary,
    /// This node's head: `None` on a node that does not serve the API.
    pub(crate) head: Option<Head>,
    pub(crate) metrics: Arc<Metrics>,
    /// The cluster machine's state, as the driver last published it.
    pub(crate) snapshot: watch::Receiver<Snapshot>,
    /// The active plan and the broken ones, for heads that replay broken requests.
    pub(crate) route: watch::Receiver<PlanRoute>,
    /// Tokens this node's head generated, sampled once a second.
    pub(crate) tokens: super::rate::TokenRate,
    /// How requests draft tokens.
    pub(crate) speculate: crate::speculate::Mode,
    pub(crate) draft: Option<crate::speculate::DraftModel>,
}

pub(super) struct NodeBackend(pub(super) Arc<Shared>);

impl Backend for NodeBackend {
    fn model(&self) -> &ModelInfo {
        &self.0.model
    }

    fn head(&self) -> Result<Head, String> {
        let snapshot = self.0.snapshot.borrow();
        match &snapshot.active {
            // The plan lost a stage and the rest cannot hold the model: refuse at once.
            Some(active)
                if snapshot.unplaceable.is_some()
                    && snapshot.route.broken >= active.assignment.epoch =>
            {
                Err(snapshot::why_not_serving(&snapshot))
            }
            Some(_) if self.0.head.is_none() => {
                Err("this node does not serve the API (it runs with --no-api)".into())
            }
            Some(active) => Ok(self
                .0
                .head
                .as_ref()
                .expect("checked above")
                .via(active.first)
                .with_plans(Plans::new(self.0.route.clone()))),
            None => Err(snapshot::why_not_serving(&snapshot)),
        }
    }

    fn drafter(&self, prompt: &[u32]) -> Option<crate::speculate::Drafter> {
        use crate::speculate::{Drafter, Mode, Ngram};
        match (self.0.speculate, &self.0.draft) {
            (Mode::Ngram, _) => Some(Drafter::Ngram(Ngram::new(prompt))),
            (Mode::Draft, Some(model)) => Some(Drafter::Model(model.session(prompt))),
            _ => None,
        }
    }

    fn view(&self) -> ClusterView {
        let shared = &self.0;
        snapshot::view(
            &shared.snapshot.borrow(),
            shared.local,
            &shared.summary,
            shared.head.as_ref(),
            shared.metrics.events().recent(),
            shared.tokens.per_second(),
        )
    }
}
