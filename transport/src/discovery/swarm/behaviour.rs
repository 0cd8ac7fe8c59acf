//! The libp2p transport, behaviour stack and swarm construction.
//!
//! Adverts and plan messages travel over request-response rather than
//! gossipsub: clusters are small (a handful to a few tens of nodes) and fully
//! meshed anyway (every stage talks to its neighbours), so a direct push to
//! each peer reaches everyone in one round trip, without gossipsub's mesh
//! warm-up and heartbeat delay, and each push is individually acknowledged,
//! which plan distribution needs (`broadcast` reports delivered/failed per
//! peer). Gossipsub's fan-out savings only matter at sizes we do not target.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, mdns, noise, ping, tcp, yamux, PeerId, Swarm, SwarmBuilder};

use super::super::config::Config;
use super::super::error::StartError;
use super::super::wire::{codec, Request, Response, PROTOCOL};

/// Identify protocol version; peers announcing another are not our cluster.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";
/// Connections stay open while idle: liveness, not idleness, decides when a
/// peer is gone.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Bound on a new connection's pnet, noise and yamux handshakes.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// TCP, then (in a private cluster) libp2p pnet under the pre-shared key, then noise and
/// yamux. pnet encrypts everything after a nonce exchange with the key, so a peer without
/// it fails the noise handshake that follows: mDNS may find it, but it never connects.
fn tcp_transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let noise = noise::Config::new(key)?;
    Ok(match psk {
        None => secure(tcp, noise),
        Some(psk) => secure(
            tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
            noise,
        ),
    })
}

/// Noise and yamux over any byte-stream transport, with a bound on the whole upgrade so a
/// peer that accepts TCP and then stays silent cannot hold a dial.
fn secure<T>(transport: T, noise: noise::Config) -> Boxed<(PeerId, StreamMuxerBox)>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    transport
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(UPGRADE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed()
}

/// Builds a TCP (+ pnet) + noise + yamux swarm on tokio with the discovery behaviours.
pub(crate) fn build_swarm(
    config: &Config,
    keypair: Keypair,
) -> Result<Swarm<Behaviour>, StartError> {
    let liveness = config.liveness_timeout;
    let psk = config
        .cluster_key
        .as_ref()
        .map(|key| PreSharedKey::new(key.derive("libp2p pnet")));
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| tcp_transport(key, psk))
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
            let rpc = request_response::Behaviour::with_codec(
                codec(config.max_message_bytes),
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
