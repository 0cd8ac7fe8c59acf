//! What discovery reports to the layer above: membership changes and inbound messages.

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::advert::Advert;

/// A change in the membership view.
///
/// A peer is a member while it is connected, answers liveness checks and has
/// published an advert. Each peer id has at most one entry: a restart with the
/// same identity shows up as one `Updated` (if the old entry was still present)
/// or one `Joined` (if it had already left).
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipEvent {
    /// A peer published its first advert, or came back after it had left.
    Joined(Advert),
    /// A member published a changed advert, or restarted with the same identity.
    Updated(Advert),
    /// A member disconnected or stopped answering within the liveness timeout.
    Left(PeerId),
}

impl MembershipEvent {
    /// The peer the event is about.
    pub fn peer_id(&self) -> PeerId {
        match self {
            Self::Joined(advert) | Self::Updated(advert) => advert.peer_id,
            Self::Left(peer) => *peer,
        }
    }
}

/// An opaque message (e.g. a serialized plan) received from a peer.
///
/// The sender got its acknowledgement when this was queued, so "delivered"
/// means "handed to this node's application", not "acted upon".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// Authenticated sender.
    pub from: PeerId,
    /// The bytes as sent.
    pub payload: Vec<u8>,
}

/// Bounded queue of inbound messages; when it is full, senders get
/// [`SendError::Rejected`](super::SendError::Rejected) with
/// [`RejectReason::InboxFull`](super::RejectReason::InboxFull).
pub type Inbox = mpsc::Receiver<InboundMessage>;

/// Outcome of [`Discovery::broadcast`](super::Discovery::broadcast): one entry per
/// member the message was addressed to.
#[derive(Debug, Default)]
pub struct BroadcastReport {
    /// Members that acknowledged the message.
    pub delivered: Vec<PeerId>,
    /// Members that did not, with the reason.
    pub failed: Vec<(PeerId, super::SendError)>,
}

impl BroadcastReport {
    /// True when every addressed member acknowledged.
    pub fn all_delivered(&self) -> bool {
        self.failed.is_empty()
    }
}
