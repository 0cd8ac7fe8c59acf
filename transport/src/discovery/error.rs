//! Errors of the discovery operations, one enum per operation.

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Why a discovery service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration value is out of range; the text names it.
    #[error("invalid discovery config: {0}")]
    InvalidConfig(&'static str),
    /// Building the libp2p transport or behaviour failed.
    #[error("building the libp2p swarm failed: {0}")]
    Build(String),
    /// The transport refused to listen on an address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: Multiaddr,
        /// What the transport said.
        reason: String,
    },
    /// No listen address was reported in time after `listen_on`.
    #[error("no listen address reported within the start timeout")]
    ListenTimeout,
}

/// Why a command to the discovery service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The service has shut down; no further command can succeed.
    #[error("the discovery service has stopped")]
    Stopped,
    /// The advert names another peer than the local node.
    #[error("the advert's peer id is not the local peer id")]
    ForeignAdvert,
}

/// Why a message was not acknowledged by its recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The local service has shut down.
    #[error("the discovery service has stopped")]
    Stopped,
    /// Too many sends are awaiting acknowledgement; retry later.
    #[error("too many unacknowledged sends")]
    Overloaded,
    /// The payload is larger than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer could not be reached (no address, dial failed, or unknown peer).
    #[error("peer unreachable")]
    Unreachable,
    /// No answer within the request timeout.
    #[error("no acknowledgement within the request timeout")]
    Timeout,
    /// The connection closed before the acknowledgement arrived.
    #[error("connection closed before the acknowledgement")]
    ConnectionClosed,
    /// The peer does not speak the discovery protocol.
    #[error("peer does not support the discovery protocol")]
    UnsupportedProtocol,
    /// Transport-level failure; the text is the underlying error.
    #[error("transport error: {0}")]
    Io(String),
    /// The peer answered but refused the message.
    #[error("rejected by peer: {0}")]
    Rejected(RejectReason),
}

/// Why a peer refused a request; travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// The recipient's inbox is full (it is not keeping up).
    #[error("inbox full")]
    InboxFull,
    /// The recipient's application no longer reads its inbox.
    #[error("inbox closed")]
    InboxClosed,
    /// An advert claimed a peer id other than the sender's.
    #[error("advert names another peer")]
    ForeignAdvert,
}
