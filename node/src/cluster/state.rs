//! What a node knows about the plans, shared by its agent (which changes it) and its API
//! (which reads it). Guarded by a plain mutex, never held across an await.

use std::net::SocketAddr;
use std::time::Instant;

use transport::discovery::Advert;

use super::control::Assignment;

/// The plan requests run on.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub(crate) assignment: Assignment,
    /// Where the first stage accepts activations.
    pub(crate) first: SocketAddr,
}

#[derive(Debug)]
pub(crate) struct State {
    /// The newest plan all of whose stages are ready.
    pub(crate) active: Option<Active>,
    /// A newer plan whose stages are loading.
    pub(crate) pending: Option<Assignment>,
    /// Why the model cannot be placed (from the coordinator), while that holds.
    pub(crate) unplaceable: Option<String>,
    /// This node could not load its part of the pending plan.
    pub(crate) load_error: Option<String>,
    /// Plans that became active after the first one.
    pub(crate) replans: u64,
    /// This node's advert as last published.
    pub(crate) advert: Advert,
    /// Tokens generated through this node's head, sampled once a second: (time, total).
    pub(crate) token_samples: std::collections::VecDeque<(Instant, u64)>,
}

impl State {
    pub(crate) fn new(advert: Advert) -> State {
        State {
            active: None,
            pending: None,
            unplaceable: None,
            load_error: None,
            replans: 0,
            advert,
            token_samples: Default::default(),
        }
    }

    /// Tokens per second over the sampled window.
    pub(crate) fn tokens_per_s(&self) -> f64 {
        match (self.token_samples.front(), self.token_samples.back()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}
