//! Settings of the libp2p discovery service.

use std::time::Duration;

use libp2p::Multiaddr;

use super::error::StartError;
use crate::cluster_key::ClusterKey;

/// Settings of [`spawn`](super::swarm::spawn). `Default` gives production values
/// listening on all IPv4 interfaces on a random port with mDNS on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and re-dial while disconnected (for networks
    /// multicast does not reach). A `/p2p/<id>` suffix is optional.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers by mDNS on the local link. libp2p mDNS ignores loopback,
    /// so single-host setups turn it off and use `bootstrap`.
    pub mdns: bool,
    /// A peer that has not answered for this long is dropped from the view.
    pub liveness_timeout: Duration,
    /// How often the local advert and peer list are re-sent to every peer, to
    /// heal lost peer-exchange messages.
    pub refresh_interval: Duration,
    /// How long a request (advert push or message) waits for its acknowledgement.
    pub request_timeout: Duration,
    /// Largest message payload accepted by `send_to`/`broadcast`, in bytes.
    pub max_message_bytes: usize,
    /// Capacity of the membership event channel; slow subscribers lag and
    /// should resync from `members()`.
    pub event_capacity: usize,
    /// Capacity of the inbound message queue.
    pub inbox_capacity: usize,
    /// Capacity of the command channel from handles to the event loop.
    pub command_capacity: usize,
    /// Protocol version string reported by identify; peers with another one
    /// are still connected but can be filtered by the layer above via adverts.
    pub agent_version: String,
    /// The private cluster's key. With one, every connection runs libp2p pnet under a
    /// pre-shared key derived from it, so a peer without the key never connects (mDNS finds
    /// it, the handshake fails). `None` is an open cluster.
    pub cluster_key: Option<ClusterKey>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4([0, 0, 0, 0].into()))
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            bootstrap: Vec::new(),
            mdns: true,
            liveness_timeout: Duration::from_secs(3),
            refresh_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_message_bytes: 4 * 1024 * 1024,
            event_capacity: 256,
            inbox_capacity: 64,
            command_capacity: 64,
            agent_version: concat!("shoal/", env!("CARGO_PKG_VERSION")).to_owned(),
            cluster_key: None,
        }
    }
}

impl Config {
    /// Single-host settings for tests: listen on 127.0.0.1, mDNS off, the given
    /// bootstrap peers and liveness timeout.
    pub fn loopback(bootstrap: Vec<Multiaddr>, liveness_timeout: Duration) -> Self {
        Self {
            listen: vec![Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4([127, 0, 0, 1].into()))
                .with(libp2p::multiaddr::Protocol::Tcp(0))],
            bootstrap,
            mdns: false,
            liveness_timeout,
            ..Self::default()
        }
    }

    /// Checks the values that would make the service misbehave.
    pub(crate) fn validate(&self) -> Result<(), StartError> {
        if self.listen.is_empty() {
            return Err(StartError::InvalidConfig("listen must not be empty"));
        }
        if self.liveness_timeout < Duration::from_millis(100) {
            return Err(StartError::InvalidConfig(
                "liveness_timeout must be at least 100 ms",
            ));
        }
        if self.refresh_interval.is_zero() || self.request_timeout.is_zero() {
            return Err(StartError::InvalidConfig(
                "refresh_interval and request_timeout must be positive",
            ));
        }
        if self.event_capacity == 0 || self.inbox_capacity == 0 || self.command_capacity == 0 {
            return Err(StartError::InvalidConfig(
                "channel capacities must be positive",
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_LIMIT {
            return Err(StartError::InvalidConfig(
                "max_message_bytes must be in 1..=64 MiB",
            ));
        }
        Ok(())
    }
}

/// Hard ceiling on `max_message_bytes`: a request is buffered whole in memory.
const MAX_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;
