//! Cluster discovery and membership.
//!
//! Nodes find each other by mDNS on a LAN or through static bootstrap peers,
//! form a full mesh of libp2p connections, push their [`Advert`]s to every
//! peer, and keep a live view of the members. The layer above sees it through
//! the [`Discovery`] trait, implemented by the libp2p service ([`swarm`]) and
//! by an in-memory network for deterministic tests ([`memory`]).
//!
//! Membership rule: a peer is a member while it is connected, has answered a
//! liveness check within `liveness_timeout`, and has published an advert.

mod advert;
mod config;
mod error;
mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod membership;
pub mod memory;
pub mod swarm;
mod wire;

use std::future::Future;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::broadcast;

pub use advert::{Advert, AdvertState, LayerCost, LinkMeasure, Platform};
pub use config::Config;
pub use error::{DiscoveryError, RejectReason, SendError, StartError};
pub use event::{BroadcastReport, InboundMessage, Inbox, MembershipEvent};
pub use libp2p::identity::Keypair;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};

/// A cloneable handle on a running discovery service.
///
/// Inbound messages arrive on the [`Inbox`] returned when the service starts;
/// there is one inbox per node because messages are acknowledged once.
pub trait Discovery: Clone + Send + Sync + 'static {
    /// Identity of the local node.
    fn local_peer_id(&self) -> PeerId;

    /// Subscribes to membership changes from now on. The channel is bounded: a
    /// subscriber that falls behind gets `RecvError::Lagged` and should resync
    /// from [`members`](Self::members).
    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent>;

    /// The current members other than the local node, ordered by peer id.
    fn members(&self) -> Arc<Vec<Advert>>;

    /// Publishes (or replaces) the local advert and pushes it to every peer.
    fn publish(&self, advert: Advert) -> impl Future<Output = Result<(), DiscoveryError>> + Send;

    /// Sends an opaque message to one peer and waits for its acknowledgement.
    fn send_to(
        &self,
        peer: PeerId,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// Sends `payload` to every current member concurrently and reports, per
    /// member, whether it acknowledged.
    fn broadcast(&self, payload: Vec<u8>) -> impl Future<Output = BroadcastReport> + Send {
        let this = self.clone();
        async move {
            let peers: Vec<PeerId> = this.members().iter().map(|a| a.peer_id).collect();
            let sends = peers
                .iter()
                .map(|peer| this.send_to(*peer, payload.clone()));
            let results = join_all(sends).await;
            let mut report = BroadcastReport::default();
            for (peer, result) in peers.into_iter().zip(results) {
                match result {
                    Ok(()) => report.delivered.push(peer),
                    Err(e) => report.failed.push((peer, e)),
                }
            }
            report
        }
    }
}
