//! What the machine is told: membership, plan messages, stage news, ticks, its timer.

use std::net::SocketAddr;

use transport::discovery::{Advert, PeerId};

use super::super::control::Control;

/// Something that happened, for the machine to act on.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// A peer became a member.
    Joined(Advert),
    /// A member left (or stopped answering).
    Left(PeerId),
    /// A member published a new advert.
    Updated(Advert),
    /// The membership view as it stands (after missed events).
    Resync(Vec<Advert>),
    /// A plan message from a peer.
    Control {
        /// Who sent it.
        from: PeerId,
        /// What it said.
        message: Control,
    },
    /// This node's stage for `epoch` loaded and listens at `addr`.
    StageLoaded {
        /// Its plan.
        epoch: u64,
        /// Where it accepts activations.
        addr: SocketAddr,
    },
    /// This node could not load its stage for `epoch`.
    StageFailed {
        /// Its plan.
        epoch: u64,
        /// Why.
        error: String,
    },
    /// This node's stage of `epoch` lost the link to its next stage at `next`.
    NextHopLost {
        /// The plan of the stage that lost it.
        epoch: u64,
        /// The next stage's address.
        next: SocketAddr,
    },
    /// A second passed: what this node's stages did meanwhile.
    Tick(Tick),
    /// The replan deadline ([`Cluster::deadline`]) passed.
    Timer,
}

/// What a tick reports about this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tick {
    /// Per running stage: its plan's epoch, its open sessions, its decode steps so far and
    /// their median time per position (microseconds).
    pub(crate) stages: Vec<StageReport>,
    /// The process's CPU quota in thousandths of a core, if it has one.
    pub(crate) cpu_quota_milli: Option<u32>,
    /// Round-trip times (microseconds) of the links this node's stages send on, by
    /// destination address.
    pub(crate) link_rtts: Vec<(SocketAddr, u64)>,
}

/// One running stage, as a tick sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StageReport {
    pub(crate) epoch: u64,
    pub(crate) open_sessions: usize,
    pub(crate) steps: u64,
    pub(crate) step_us: Option<u64>,
}
