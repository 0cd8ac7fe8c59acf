//! What the machine asks its driver to do.

use std::net::SocketAddr;

use transport::discovery::{Advert, PeerId};

use super::super::control::Control;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Publish this node's advert (newest last: a later one supersedes an earlier one).
    Publish(Box<Advert>),
    /// Send a plan message to every member.
    Broadcast(Control),
    /// Send a plan message to one member.
    Send(PeerId, Control),
    /// Load this node's stage of a plan (answer with [`Input::StageLoaded`] or
    /// [`Input::StageFailed`]).
    LoadStage(StageOrder),
    /// Move this node's running stage of plan `from` to `order`'s plan as it is (it serves
    /// it unchanged: same layers, same place in the ring); answer with
    /// [`Input::StageLoaded`] at its address.
    AdoptStage {
        /// The plan it ran for.
        from: u64,
        /// The plan it runs for now.
        order: StageOrder,
    },
    /// Point this node's stage of `epoch` at the next stage.
    RouteStage {
        /// Its plan.
        epoch: u64,
        /// Where the next stage listens.
        next: SocketAddr,
    },
    /// Stop this node's stage of `epoch` (superseded and idle, or never activated).
    StopStage {
        /// Its plan.
        epoch: u64,
    },
    /// Record an event for `shoal status`.
    Event(String),
    /// A new plan became active after an earlier one (for the metrics).
    Replanned,
}

/// Which stage to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageOrder {
    /// Its plan.
    pub(crate) epoch: u64,
    /// Its layers, `[start, end)`.
    pub(crate) layers: [u32; 2],
    /// Its index in the plan.
    pub(crate) index: usize,
    /// Whether it is the plan's last stage (it answers each session's head).
    pub(crate) last: bool,
    /// The node of the previous stage (exempt from the per-peer session bound).
    pub(crate) previous: Option<String>,
}
