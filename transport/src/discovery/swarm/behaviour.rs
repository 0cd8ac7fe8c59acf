//! The libp2p behaviour stack and swarm construction.
//!
//! Adverts and plan messages travel over request-response rather than
//! gossipsub: clusters are small (a handful to a few tens of nodes) and fully
//! meshed anyway (every stage talks to its neighbours), so a direct push to
//! each peer reaches everyone in one round trip, without gossipsub's mesh
//! warm-up and heartbeat delay, and each push is individually acknowledged,
//! which plan distribution needs (`broadcast` reports delivered/failed per
//! peer). Gossipsub's fan-out savings only matter at sizes we do not target.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, mdns, noise, ping, tcp, yamux, Swarm, SwarmBuilder};

use super::super::config::Config;
use super::super::error::StartError;
use super::super::wire::{Request, Response, PROTOCOL};

/// Identify protocol version; peers announcing another are not our cluster.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";
/// Connections stay open while idle: liveness, not idleness, decides when a
/// peer is gone.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Slack added to a request's maximum payload for the envelope around it.
const ENVELOPE_SLACK: u64 = 64 * 1024;

/// Every protocol a discovery node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Learns each peer's listen addresses (for peer exchange).
    pub(crate) identify: identify::Behaviour,
    /// Liveness: a successful ping refreshes the peer's last-seen time.
    pub(crate) ping: ping::Behaviour,
    /// LAN discovery, off when `Config::mdns` is false.
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Advert pushes, peer exchange and application messages.
    pub(crate) rpc: cbor::Behaviour<Request, Response>,
}

/// Builds a TCP + noise + yamux swarm on tokio with the discovery behaviours.
pub(crate) fn build_swarm(
    config: &Config,
    keypair: Keypair,
) -> Result<Swarm<Behaviour>, StartError> {
    let liveness = config.liveness_timeout;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| StartError::Build(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mdns = if config.mdns {
                let mdns_config = mdns::Config {
                    // Re-query often enough that a node missing the first
                    // exchange still joins within a few seconds.
                    query_interval: Duration::from_secs(2),
                    ttl: Duration::from_secs(30),
                    ..mdns::Config::default()
                };
                Some(mdns::tokio::Behaviour::new(mdns_config, peer_id)?)
            } else {
                None
            };
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(config.agent_version.clone())
                    .with_push_listen_addr_updates(true),
            );
            // Three pings per timeout: one lost probe does not evict a peer.
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(liveness / 3)
                    .with_timeout(liveness),
            );
            let max = config.max_message_bytes as u64 + ENVELOPE_SLACK;
            let codec = cbor::codec::Codec::default()
                .set_request_size_maximum(max)
                .set_response_size_maximum(ENVELOPE_SLACK);
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(config.request_timeout),
            );
            Ok(Behaviour {
                identify,
                ping,
                mdns: mdns.into(),
                rpc,
            })
        })
        .map_err(|e| StartError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}
